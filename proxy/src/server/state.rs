//! Shared state of a running proxy.

use super::volumes::Volumes;
use crate::cache::flight::SingleFlight;
use crate::cache::{Cache, FetchKey};
use crate::metrics::Metrics;
use crate::store::{DynStore, StoredBlock};
use crate::writeback::Writeback;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub type FetchResult = Result<Option<Arc<StoredBlock>>, Arc<str>>;

pub struct AppState {
    pub volumes: Arc<Volumes>,
    pub cache: Arc<Cache>,
    pub store: DynStore,
    pub writeback: Arc<Writeback>,
    pub metrics: Arc<Metrics>,
    pub fetches: SingleFlight<FetchKey, FetchResult>,
    pub bops: tokio::sync::Semaphore,
    pub max_block_size: u64,
    /// `--no-writeback`: write through to the store before acknowledging.
    pub write_through: bool,
    pub admin_token: Option<String>,
    /// A drain was requested: refuse writes, flush everything.
    pub draining: AtomicBool,
    /// SIGTERM received: refuse writes while shutting down.
    pub shutting_down: AtomicBool,
    pub clock: VersionClock,
}

impl AppState {
    pub fn accepting_writes(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Write versions assigned by this proxy: nanoseconds since the epoch, strictly increasing, so a
/// later request always gets a larger version (and versions from different proxies compare by
/// wall-clock time, see the consistency ADR).
#[derive(Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let candidate = now.max(prev + 1);
            match self.last.compare_exchange(prev, candidate, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return candidate,
                Err(actual) => prev = actual,
            }
        }
    }

    /// Makes sure later versions exceed one seen from a client.
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        let c = VersionClock::default();
        let a = c.next();
        c.observe(a + 1_000_000_000_000);
        let b = c.next();
        assert!(b > a + 1_000_000_000_000);
        assert!(c.next() > b);
    }
}
