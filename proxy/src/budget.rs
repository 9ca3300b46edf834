//! A bound on bytes held in memory at once: the proxy's request bytes (`--max-inflight-bytes`),
//! and the client's read-ahead (`--read-ahead-bytes`) and write buffers (`--write-buffer-bytes`,
//! [`crate::client`]).
//!
//! In the proxy, a PUT reserves its Content-Length (or the largest block size when it has none)
//! before it reads its body; a GET reserves the block's size before it reads it from disk.
//! Counting requests alone is not enough: `--max-bops` times a 64 MiB block is many GiB. A
//! request that cannot get its bytes within a short wait is answered 503 with Retry-After, so
//! memory stays bounded and the client backs off instead of piling up. The client's budgets
//! queue instead ([`QueuedBudget`]): its callers are the application's own reads and writes.

use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Permits are counted in units of this many bytes, so 64 GiB still fits a u32 permit count.
const UNIT: u64 = 4096;

pub struct ByteBudget {
    sem: Arc<Semaphore>,
    total_units: u32,
    wait: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{bytes} more bytes in flight would exceed --max-inflight-bytes ({limit}); retry shortly")]
pub struct OverBudget {
    pub bytes: u64,
    pub limit: u64,
}

impl ByteBudget {
    pub fn new(limit_bytes: u64, wait: Duration) -> Self {
        let total_units = u32::try_from(limit_bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1);
        Self { sem: Arc::new(Semaphore::new(total_units as usize)), total_units, wait }
    }

    pub fn limit_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> u64 {
        (u64::from(self.total_units) - self.sem.available_permits() as u64) * UNIT
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.total_units)
    }

    /// Reserves `bytes` (at most the whole budget), waiting a little for others to finish.
    pub async fn reserve(&self, bytes: u64) -> Result<SemaphorePermit<'_>, OverBudget> {
        let units = self.units(bytes);
        // Most reservations fit at once: skip arming the timer (a hit's hot path).
        if let Ok(permit) = self.sem.try_acquire_many(units) {
            return Ok(permit);
        }
        match tokio::time::timeout(self.wait, self.sem.acquire_many(units)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(OverBudget { bytes, limit: self.limit_bytes() }),
        }
    }

    /// Reserves `bytes` (at most the whole budget) if they are free now.
    pub fn try_reserve_owned(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_many_owned(self.units(bytes)).ok()
    }

    /// Reserves `bytes` (at most the whole budget) for as long as it takes, in turn with the
    /// other waiters; the permit outlives the borrow (it travels with a stream).
    pub async fn reserve_owned(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = self.units(bytes);
        // The semaphore is never closed, so acquiring only ends with a permit.
        self.sem.clone().acquire_many_owned(units).await.expect("the budget's semaphore is never closed")
    }
}

/// A budget whose takers wait their turn for as long as it takes, counting how often they had to
/// (the metric an operator watches to see the bound slowing the application down).
pub struct QueuedBudget {
    budget: ByteBudget,
    waits: IntCounter,
}

impl QueuedBudget {
    pub fn new(bytes: u64, waits: IntCounter) -> Arc<Self> {
        // `reserve_owned` never times out, so the proxy's short wait is unused.
        Arc::new(Self { budget: ByteBudget::new(bytes, Duration::ZERO), waits })
    }

    /// Bytes held right now.
    pub fn in_use(&self) -> u64 {
        self.budget.in_use()
    }

    /// Takes `bytes` (at most the whole budget) if they are free now, without waiting or
    /// counting a wait.
    pub fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        self.budget.try_reserve_owned(bytes)
    }

    /// Gives back what `held` holds beyond `bytes`: a take sized before its real size was known.
    pub fn keep_only(&self, held: &mut OwnedSemaphorePermit, bytes: u64) {
        let keep = self.budget.units(bytes) as usize;
        if let Some(extra) = held.num_permits().checked_sub(keep).filter(|n| *n > 0) {
            drop(held.split(extra));
        }
    }

    /// Takes `bytes` (at most the whole budget), in turn with the other takers; they go back
    /// when the permit is dropped.
    pub async fn take(&self, bytes: u64) -> OwnedSemaphorePermit {
        match self.budget.try_reserve_owned(bytes) {
            Some(p) => p,
            None => {
                self.waits.inc();
                self.budget.reserve_owned(bytes).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_beyond_the_limit_wait_then_fail_and_release_on_drop() {
        let b = ByteBudget::new(1 << 20, Duration::from_millis(50));
        let first = b.reserve(768 << 10).await.unwrap();
        assert_eq!(b.in_use(), 768 << 10);
        assert!(b.reserve(768 << 10).await.is_err(), "over the limit while the first is held");
        drop(first);
        assert_eq!(b.in_use(), 0);
        let huge = b.reserve(u64::MAX).await.expect("a request larger than the budget takes all of it");
        assert_eq!(b.in_use(), b.limit_bytes());
        drop(huge);
    }

    #[test]
    fn a_take_sized_too_large_gives_back_what_it_does_not_keep() {
        let b = QueuedBudget::new(1 << 20, IntCounter::new("waits", "waits").unwrap());
        let mut held = b.try_take(1 << 20).expect("free");
        assert!(b.try_take(1).is_none(), "the whole budget is held");
        b.keep_only(&mut held, 10_000);
        assert_eq!(b.in_use(), 3 * UNIT, "10,000 bytes keep three units");
        b.keep_only(&mut held, 1 << 20);
        assert_eq!(b.in_use(), 3 * UNIT, "keeping more than is held takes nothing");
        drop(held);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn owned_reservations_wait_their_turn_until_bytes_are_released() {
        let b = Arc::new(ByteBudget::new(1 << 20, Duration::ZERO));
        let first = b.reserve_owned(1 << 20).await;
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.reserve_owned(4096).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing is left while the first holds the whole budget");
        drop(first);
        let second = waiter.await.unwrap();
        assert_eq!(b.in_use(), 4096);
        drop(second);
        assert_eq!(b.in_use(), 0);
    }
}
