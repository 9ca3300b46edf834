//! The writeback engine: flushes dirty blocks to the store with bounded concurrency
//! (`active` workers), optional pacing (`delay`), and retries with capped, jittered exponential
//! backoff, forever. Flushes are conditional on the store's version, so an older version never
//! overwrites a newer one (see docs/adr/0002-consistency-contract.md).

mod queue;

use crate::cache::{BlockId, Cache, CacheError, FlushOutcome};
use crate::metrics::Metrics;
use crate::store::{DynStore, StoreError};
use queue::FlushQueue;
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone)]
pub struct WritebackConfig {
    pub active: usize,
    pub delay: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            active: 8,
            delay: Duration::ZERO,
            backoff_base: Duration::from_millis(100),
            // Short enough that writeback resumes within seconds of the store coming back.
            backoff_max: Duration::from_secs(5),
        }
    }
}

pub struct Writeback {
    cache: Arc<Cache>,
    store: DynStore,
    metrics: Arc<Metrics>,
    cfg: WritebackConfig,
    queue: Mutex<FlushQueue>,
    wake: Notify,
    /// Signalled on every finished flush, for waiters on progress (drain, shutdown).
    progress: Notify,
}

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl FlushError {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Store(e) => e.metric_label(),
            Self::Cache(e) => e.metric_label(),
        }
    }
}

impl Writeback {
    pub fn new(cache: Arc<Cache>, store: DynStore, metrics: Arc<Metrics>, cfg: WritebackConfig) -> Arc<Self> {
        Arc::new(Self {
            cache,
            store,
            metrics,
            cfg,
            queue: Mutex::default(),
            wake: Notify::new(),
            progress: Notify::new(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, FlushQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a dirty block for flushing.
    pub fn enqueue(&self, id: BlockId) {
        let wake = self.queue().push(id);
        self.metrics.writeback_queue_depth.set(self.queue().depth() as i64);
        if wake {
            self.wake.notify_one();
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.queue().depth()
    }

    /// Starts the workers. They stop when `stop` becomes true, abandoning (not losing) whatever
    /// is still dirty: it stays on disk and is flushed after the next start.
    pub fn spawn_workers(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.cfg.active.max(1))
            .map(|_| {
                let this = Arc::clone(self);
                let stop = stop.clone();
                tokio::spawn(async move { this.worker(stop).await })
            })
            .collect()
    }

    async fn worker(&self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let next = self.queue().pop();
            let Some(id) = next else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                    // Notify::notify_one stores a permit, but a bounded wait also covers wake-ups
                    // consumed by a worker that then found the queue empty.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let still_dirty = self.flush_with_retry(&id, &mut stop).await;
            let again = self.queue().finish(&id, still_dirty.unwrap_or(true));
            self.metrics.writeback_queue_depth.set(self.queue().depth() as i64);
            if again {
                self.wake.notify_one();
            }
            self.progress.notify_waiters();
            if !self.cfg.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Flushes one block until it succeeds or the worker is stopped. Returns whether the block is
    /// still dirty afterwards, or `None` when stopped first.
    async fn flush_with_retry(&self, id: &BlockId, stop: &mut watch::Receiver<bool>) -> Option<bool> {
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            match self.flush_once(id).await {
                Ok(still_dirty) => {
                    self.metrics.writeback_flush_seconds.observe(started.elapsed().as_secs_f64());
                    return Some(still_dirty);
                }
                Err(e) => {
                    self.metrics.writeback_flush_errors_total.with_label_values(&[e.metric_label()]).inc();
                    let wait = backoff(attempt, self.cfg.backoff_base, self.cfg.backoff_max);
                    tracing::warn!(volume = %id.volume, key = %id.key, attempt, retry_in = ?wait, error = %e, "flush failed; will retry");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        return None;
                    }
                }
            }
        }
    }

    async fn flush_once(&self, id: &BlockId) -> Result<bool, FlushError> {
        let Some((header, data)) = self.cache.read_dirty(id).await? else {
            // Already flushed or replaced; a replacement is queued by its writer.
            return Ok(false);
        };
        let store_version = self.store.head_version(&header.bucket, &header.store_key).await?;
        let outcome = match store_version {
            Some(v) if v > header.version => {
                tracing::info!(volume = %id.volume, key = %id.key, ours = header.version, store = v, "store holds a newer version; skipping flush");
                self.metrics.writeback_skipped_newer_total.inc();
                FlushOutcome::StoreNewer
            }
            _ if header.tombstone => {
                self.store.delete(&header.bucket, &header.store_key).await?;
                FlushOutcome::Applied
            }
            Some(v) if v == header.version => FlushOutcome::Applied, // flushed before a crash
            _ => {
                let len = data.len() as u64;
                self.store.put(&header.bucket, &header.store_key, data, header.version).await?;
                self.metrics.writeback_bytes_total.inc_by(len);
                FlushOutcome::Applied
            }
        };
        self.metrics.writeback_flushes_total.inc();
        tracing::debug!(volume = %id.volume, key = %id.key, version = header.version, ?outcome, "flushed");
        Ok(self.cache.complete_flush(id, header.version, outcome))
    }

    /// Waits until no dirty block is left, or until `deadline`. Returns whether everything flushed.
    pub async fn wait_clean(&self, deadline: Instant) -> bool {
        loop {
            let progressed = self.progress.notified();
            if self.cache.usage().dirty_blocks == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(200)), progressed).await;
        }
    }
}

/// Capped exponential backoff with full jitter.
fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let cap = exp.min(max);
    let millis = cap.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        assert!(backoff(0, base, max) <= base);
        assert!(backoff(3, base, max) >= Duration::from_millis(400));
        for attempt in [10, 20, 1000, u32::MAX] {
            let b = backoff(attempt, base, max);
            assert!(b <= max && b >= max / 2, "{b:?}");
        }
    }
}
