//! The writeback engine: flushes dirty blocks to the store with bounded concurrency
//! (`active` workers) and optional pacing (`delay`). Every flush is conditional at the store
//! ([`put_unless_newer`], [`delete_unless_newer`]), so an older version never overwrites a newer
//! one, whichever proxy flushes it (see docs/adr/0002-consistency-contract.md).
//!
//! Failures are classified ([`ErrorClass`]). A transient one is retried with capped, jittered
//! exponential backoff, forever, the block waiting for its retry time in the queue rather than on
//! a worker. A permanent one (the store refuses the key for good) or a dirty block corrupt on disk
//! is quarantined ([`Cache::quarantine_dirty`]): kept on disk, out of the way of every other flush.

mod queue;

use crate::cache::{BlockId, Cache, CacheError, FlushOutcome};
use crate::metrics::Metrics;
use crate::store::{
    Conditional, DynStore, ErrorClass, ObjectMeta, S3ETag, StoreError, delete_unless_newer, put_file_at_unless_newer,
    put_unless_newer,
};
use queue::{FlushQueue, Next};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// One-part objects up to this size are flushed from memory with a single PUT; larger ones, and
/// every object of several parts, are uploaded from their file.
const IN_MEMORY_FLUSH: u64 = 16 << 20;

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
    /// The newest failed flush since the last successful one (the drain status shows it, so
    /// whoever waits for a drain sees why it stalls).
    last_error: Mutex<Option<String>>,
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

    fn class(&self) -> ErrorClass {
        match self {
            Self::Store(e) => e.class(),
            Self::Cache(CacheError::CorruptDirty { .. }) => ErrorClass::Permanent,
            Self::Cache(_) => ErrorClass::Transient,
        }
    }
}

/// A failed attempt, with the dirty version it was about (when known).
struct Failed {
    version: Option<u64>,
    error: FlushError,
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
            last_error: Mutex::default(),
        })
    }

    /// The newest flush error since the last successful flush, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
            let (next, retry_at) = {
                let mut q = self.queue();
                (q.pop(Instant::now()), q.next_retry())
            };
            let Some(id) = next else {
                // Notify::notify_one stores a permit, but a bounded wait also covers wake-ups
                // consumed by a worker that then found the queue empty.
                let idle = retry_at.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()));
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(idle.min(Duration::from_secs(1))) => {}
                }
                continue;
            };
            let started = Instant::now();
            let next = match self.flush_once(&id).await {
                Ok(still_dirty) => {
                    self.metrics.writeback_flush_seconds.observe(started.elapsed().as_secs_f64());
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if still_dirty { Next::Again } else { Next::Done }
                }
                Err(failed) => self.on_failure(&id, failed),
            };
            let wake = self.queue().finish(&id, next);
            self.metrics.writeback_queue_depth.set(self.queue().depth() as i64);
            if wake {
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

    /// Decides what a failed flush attempt leads to: a retry later, or quarantine.
    fn on_failure(&self, id: &BlockId, failed: Failed) -> Next {
        let e = &failed.error;
        self.metrics.writeback_flush_errors_total.with_label_values(&[e.metric_label()]).inc();
        if e.class() == ErrorClass::Permanent
            && let Some(version) = failed.version
        {
            match self.cache.quarantine_dirty(id, version) {
                Ok(Some(path)) => {
                    self.metrics.writeback_quarantined_total.inc();
                    tracing::error!(volume = %id.volume, key = %id.key, version, error = %e, file = %path.display(), "block can never be flushed; quarantined (kept on disk, see README: Recovering quarantined blocks)");
                    return Next::Done;
                }
                // A newer write replaced it meanwhile: that one gets its own flush.
                Ok(None) => return Next::Again,
                Err(qe) => {
                    tracing::error!(volume = %id.volume, key = %id.key, version, error = %e, quarantine_error = %qe, "block can never be flushed and could not be quarantined; will retry");
                }
            }
        }
        // Bounded: it travels in Events and conditions.
        let error: String = format!("{}: {e}", id.key).chars().take(400).collect();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        let attempt = self.queue().record_failure(id);
        let wait = backoff(attempt - 1, self.cfg.backoff_base, self.cfg.backoff_max);
        tracing::warn!(volume = %id.volume, key = %id.key, attempt, retry_in = ?wait, error = %e, "flush failed; will retry");
        Next::RetryAt(Instant::now() + wait)
    }

    async fn flush_once(&self, id: &BlockId) -> Result<bool, Failed> {
        let tried = self.cache.version_of(id);
        let opened =
            self.cache.open_dirty(id, IN_MEMORY_FLUSH).await.map_err(|e| Failed { version: tried, error: e.into() })?;
        let Some(dirty) = opened else {
            // Already flushed or replaced; a replacement is queued by its writer.
            return Ok(false);
        };
        let header = &dirty.header;
        let failed = |e: StoreError| Failed { version: Some(header.version), error: e.into() };
        let (bucket, key) = (&header.bucket, &header.store_key);
        let len = header.data_len;
        let meta =
            ObjectMeta { version: header.version, crc32c: header.data_crc32c, s3_etag: S3ETag::parse(&header.etag) };
        let store = self.store.as_ref();
        let done = match &dirty.data {
            _ if header.tombstone => delete_unless_newer(store, bucket, key, header.version).await,
            // One small part: one conditional PUT from memory.
            Some(data) => put_unless_newer(store, bucket, key, data.clone(), meta, &header.attrs).await,
            None => {
                // The parts the client sent, read from the open file: the store's ETag is the
                // one the write was answered with. Through /proc, the store reads this version
                // even if a newer write replaces the file meanwhile.
                use std::os::fd::AsRawFd;
                let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dirty.file.as_raw_fd()));
                let parts = if header.parts.is_empty() { vec![len] } else { header.parts.clone() };
                put_file_at_unless_newer(store, bucket, key, &path, dirty.data_offset, &parts, meta, &header.attrs)
                    .await
            }
        }
        .map_err(failed)?;
        let outcome = match done {
            Conditional::Applied => {
                if !header.tombstone {
                    self.metrics.writeback_bytes_total.inc_by(len);
                }
                FlushOutcome::Applied
            }
            Conditional::StoreNewer { store_version } => {
                tracing::info!(volume = %id.volume, key = %id.key, ours = header.version, store = store_version, "store holds a newer version; skipping flush");
                self.metrics.writeback_skipped_newer_total.inc();
                FlushOutcome::StoreNewer
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
    use crate::cache::DirtyWrite;
    use crate::store::memory::MemoryStore;
    use crate::store::{ListPage, ObjectAttrs, ObjectInfo, Precondition, Store, StoredBlock, StoredRange};
    use async_trait::async_trait;
    use blockproxy_protocol::{BlockKey, VolumeId};
    use bytes::Bytes;
    use std::ops::Range;
    use std::path::Path;

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

    /// A store that refuses writes of keys starting with `transient/` (as if down for them) or
    /// `permanent/` (as if the key were invalid), and otherwise behaves.
    #[derive(Default)]
    struct Refusing(MemoryStore);

    #[async_trait]
    impl Store for Refusing {
        async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
            self.0.get(bucket, key).await
        }
        async fn get_range(
            &self,
            bucket: &str,
            key: &str,
            range: Range<u64>,
            if_match: Option<&str>,
        ) -> Result<Option<StoredRange>, StoreError> {
            self.0.get_range(bucket, key, range, if_match).await
        }
        async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
            self.0.head(bucket, key).await
        }
        async fn put_if(
            &self,
            bucket: &str,
            key: &str,
            data: Bytes,
            meta: ObjectMeta,
            attrs: &ObjectAttrs,
            cond: Precondition<'_>,
        ) -> Result<(), StoreError> {
            let (b, k) = (bucket.to_owned(), key.to_owned());
            if key.starts_with("transient/") {
                return Err(StoreError::Request { op: "PUT", bucket: b, key: k, message: "503 SlowDown".into() });
            }
            if key.starts_with("permanent/") {
                let message = "KeyTooLongError".into();
                return Err(StoreError::Refused { op: "PUT", bucket: b, key: k, status: 400, message });
            }
            self.0.put_if(bucket, key, data, meta, attrs, cond).await
        }
        async fn put_file_at_if(
            &self,
            bucket: &str,
            key: &str,
            path: &Path,
            offset: u64,
            part_sizes: &[u64],
            meta: ObjectMeta,
            attrs: &ObjectAttrs,
            cond: Precondition<'_>,
        ) -> Result<(), StoreError> {
            self.0.put_file_at_if(bucket, key, path, offset, part_sizes, meta, attrs, cond).await
        }
        async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
            self.0.delete_if(bucket, key, etag).await
        }
        async fn list_page(
            &self,
            bucket: &str,
            prefix: &str,
            start_after: Option<&str>,
            max_keys: u32,
        ) -> Result<ListPage, StoreError> {
            self.0.list_page(bucket, prefix, start_after, max_keys).await
        }
        fn describe(&self) -> String {
            "refusing".into()
        }
    }

    async fn write(cache: &Cache, key: &str, version: u64) -> BlockId {
        let id = BlockId::object(VolumeId::parse("v").unwrap(), BlockKey::parse(key).unwrap());
        let data = Some(Bytes::from(format!("{key} v{version}")));
        let w = DirtyWrite {
            id: id.clone(),
            bucket: "b".into(),
            store_key: key.into(),
            version,
            data,
            etag: String::new(),
            attrs: ObjectAttrs::default(),
            parts: Vec::new(),
        };
        cache.write_dirty(w).await.unwrap();
        id
    }

    #[tokio::test]
    async fn failing_keys_never_hold_up_the_others_on_a_single_worker() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(dir.path(), 1 << 30, false).unwrap().0);
        let store = Arc::new(Refusing::default());
        let metrics = Arc::new(Metrics::new());
        let cfg = WritebackConfig { active: 1, backoff_base: Duration::from_millis(50), ..Default::default() };
        let wb = Writeback::new(Arc::clone(&cache), store.clone(), Arc::clone(&metrics), cfg);
        // The failing keys come first, so a worker stuck on them would flush nothing else.
        let mut ids = vec![write(&cache, "transient/a", 1).await, write(&cache, "permanent/a", 1).await];
        for i in 0..10 {
            ids.push(write(&cache, &format!("good/{i}"), 1).await);
        }
        for id in ids {
            wb.enqueue(id);
        }
        let (_stop_tx, stop) = watch::channel(false);
        let _workers = wb.spawn_workers(stop);

        // Only the transiently failing block stays dirty: it is retried, forever.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cache.usage().dirty_blocks > 1 {
            assert!(Instant::now() < deadline, "stuck with {:?}", cache.usage());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..10 {
            assert!(store.get("b", &format!("good/{i}")).await.unwrap().is_some(), "good/{i} flushed");
        }
        assert_eq!(cache.quarantined_blocks(), 1, "the permanent failure is quarantined");
        assert_eq!(metrics.writeback_quarantined_total.get(), 1);
        assert_eq!(cache.dirty_ids().len(), 1);
        let before = metrics.writeback_flush_errors_total.with_label_values(&["request"]).get();
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics.writeback_flush_errors_total.with_label_values(&["request"]).get() < before + 2 {
            assert!(Instant::now() < deadline, "the transient failure is retried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.quarantined_blocks(), 1, "a transient failure is never quarantined");
    }

    #[tokio::test]
    async fn an_object_of_several_parts_is_flushed_in_those_parts_with_its_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(dir.path(), 1 << 30, false).unwrap().0);
        let store = Arc::new(MemoryStore::default());
        let wb =
            Writeback::new(Arc::clone(&cache), store.clone(), Arc::new(Metrics::new()), WritebackConfig::default());
        let min = blockproxy_protocol::MIN_PART_SIZE;
        let data = Bytes::from((0..2 * min + 7).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let parts = vec![min, min, 7];
        let attrs = ObjectAttrs { content_type: Some("text/plain".into()), ..Default::default() };
        let id = BlockId::object(VolumeId::parse("v").unwrap(), BlockKey::parse("big").unwrap());
        let w = DirtyWrite {
            id: id.clone(),
            bucket: "b".into(),
            store_key: "pfx/big".into(),
            version: 3,
            data: Some(data.clone()),
            etag: String::new(),
            attrs: attrs.clone(),
            parts: parts.clone(),
        };
        cache.write_dirty(w).await.unwrap();
        assert!(!wb.flush_once(&id).await.map_err(|f| f.error).unwrap(), "nothing left dirty");
        let got = store.get("b", "pfx/big").await.unwrap().unwrap();
        assert_eq!((got.data, got.version, got.attrs), (data, 3, attrs));
        assert_eq!(store.part_sizes("b", "pfx/big"), Some(parts));
    }

    #[tokio::test]
    async fn an_older_flush_never_replaces_a_newer_object_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(dir.path(), 1 << 30, false).unwrap().0);
        let store = Arc::new(MemoryStore::default());
        store.force("b", "k", b"newer, from another proxy", 9);
        let wb =
            Writeback::new(Arc::clone(&cache), store.clone(), Arc::new(Metrics::new()), WritebackConfig::default());
        let id = write(&cache, "k", 5).await;
        assert!(!wb.flush_once(&id).await.map_err(|f| f.error).unwrap(), "nothing left dirty");
        assert_eq!(store.get("b", "k").await.unwrap().unwrap().version, 9);
        assert_eq!(cache.version_of(&id), None, "the superseded block left the cache");
    }
}
