//! The local disk cache: block files (see [`disk`]), the in-memory [`index`] with quota and LRU
//! eviction, and [`flight`] for single-flight misses. It knows nothing of HTTP or of the store.
//!
//! Invariants:
//! - A block is in at most one area: `dirty/` (acknowledged, unflushed, never evicted) or `clean/`.
//! - A file is renamed into place only once complete, so a crash leaves either the old or the new
//!   version of a block, never a torn one (with `sync`, also across power loss).
//! - A write only replaces an entry holding an older version (last writer wins by version).

pub mod buffers;
pub mod disk;
pub mod epoch;
pub mod file_sums;
pub mod flight;
pub mod held;
pub mod index;
mod quarantine;
pub mod staging;

pub use disk::{BlockHeader, StripeHeader};
pub use epoch::FetchKey;
pub use held::HeldFile;
pub use index::{BlockId, Stripe, Usage};

use crate::protocol::crc;
use blockproxy_protocol::ObjectAttrs;
use buffers::BufferPool;
use bytes::Bytes;
use disk::{Area, FormatError, Layout};
use epoch::RemovalEpochs;
use index::{AdmitError, Entry, EntryState, Index};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("dirty data would exceed the cache quota; retry when writeback has caught up")]
    DirtyQuota,
    #[error("no evictable space left in the cache")]
    NoSpace,
    /// The filesystem is full before the quota is: `--disk-quota` is larger than the free space.
    #[error("the cache disk is full (during {op}: {source}); retry when writeback has caught up")]
    DiskFull {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cache I/O failed during {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("unflushed block {volume}/{key} is corrupt on disk ({reason})")]
    CorruptDirty { volume: String, key: String, reason: String },
}

impl CacheError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::DirtyQuota => "dirty_quota",
            Self::NoSpace => "no_space",
            Self::DiskFull { .. } => "disk_full",
            Self::Io { .. } => "io",
            Self::CorruptDirty { .. } => "corrupt_dirty",
        }
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> CacheError {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => CacheError::DiskFull { op, source },
        _ => CacheError::Io { op, source },
    }
}

impl From<AdmitError> for CacheError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::DirtyQuota => Self::DirtyQuota,
            AdmitError::NoSpace => Self::NoSpace,
        }
    }
}

/// The MD5 of a write's data, hashing until first awaited, then kept.
enum Md5Later {
    Hashing(std::pin::Pin<Box<dyn Future<Output = io::Result<[u8; 16]>> + Send>>),
    Done([u8; 16]),
}

impl Md5Later {
    async fn digest(&mut self) -> io::Result<[u8; 16]> {
        let d = match self {
            Md5Later::Done(d) => return Ok(*d),
            Md5Later::Hashing(f) => f.await?,
        };
        *self = Md5Later::Done(d);
        Ok(d)
    }
}

/// A write (or delete) to persist as dirty.
#[derive(Debug, Clone)]
pub struct DirtyWrite {
    pub id: BlockId,
    pub bucket: String,
    pub store_key: String,
    pub version: u64,
    /// `None` is a delete (tombstone).
    pub data: Option<Bytes>,
    /// The version's S3 ETag (unquoted; empty for a delete).
    pub etag: String,
    pub attrs: ObjectAttrs,
    /// Part sizes of the store upload; empty means one part.
    pub parts: Vec<u64>,
}

/// What is known of a block fetched from the store, kept in its file's header.
#[derive(Debug, Clone, Default)]
pub struct FetchedMeta {
    /// The store's ETag (unquoted) the block is pinned to.
    pub etag: String,
    /// The S3 ETag (unquoted) recorded with the object, where it is not the store's ETag.
    pub s3_etag: Option<String>,
    pub attrs: ObjectAttrs,
    /// The whole object's size, for a striped block.
    pub object_size: u64,
    /// The store's Last-Modified, in nanoseconds since the Unix epoch.
    pub modified_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Committed,
    /// The cache already holds this or a newer version; the write is ordered before it.
    Superseded {
        current: u64,
    },
}

#[derive(Debug, Clone)]
pub enum Lookup {
    /// `crc32c` is the verified checksum of `data`, so callers need not compute it again.
    Hit {
        /// The commit record: ETag, attributes, part sizes.
        header: Box<BlockHeader>,
        data: Bytes,
        version: u64,
        dirty: bool,
        crc32c: u32,
        /// For a clean block, when the store was last known to hold this version.
        validated: Option<Instant>,
    },
    /// A delete is pending writeback: the block is gone, whatever the store still says.
    Deleted,
    Miss,
    /// The cached copy failed verification and was dropped; fetch it again.
    DroppedCorrupt,
}

/// A dirty block's file opened (and verified) by [`Cache::open_dirty`].
#[derive(Debug)]
pub struct DirtyFile {
    pub header: BlockHeader,
    pub file: std::fs::File,
    pub data_offset: u64,
    /// The data, when it was small enough to read into memory.
    pub data: Option<Bytes>,
}

/// A block file opened by [`Cache::open_block`].
#[derive(Debug)]
pub struct OpenBlock {
    pub header: Arc<BlockHeader>,
    /// Shared with the index entry while it holds the file open (see [`held`]).
    pub file: Arc<std::fs::File>,
    /// Where the data starts in the file.
    pub data_offset: u64,
    /// The data, when the file was small enough to read whole; not verified yet.
    pub data: Option<Bytes>,
    pub dirty: bool,
    /// A read in this process verified this clean file's CRC32C: it may be served without
    /// checking again (ADR 0001, item 6). Always false for a dirty block.
    pub checked: bool,
    /// Which file of the block this is, for [`Cache::mark_checked`].
    pub serial: u64,
    /// For a clean block, when the store was last known to hold this version.
    pub validated: Option<Instant>,
    /// For a clean block, the store object's ETag (unquoted) when known.
    pub store_etag: Option<String>,
    held: Arc<HeldFile>,
}

impl OpenBlock {
    /// The block of index entry `entry`, in the open file `held` (`data`: its bytes, when read).
    fn of(held: &Arc<HeldFile>, entry: &Entry, data: Option<Bytes>) -> Self {
        Self {
            held: Arc::clone(held),
            header: Arc::clone(&held.header),
            file: Arc::clone(&held.file),
            data_offset: held.data_offset,
            data,
            dirty: entry.is_dirty(),
            checked: entry.checked,
            serial: entry.serial,
            validated: entry.validated,
            store_etag: entry.store_etag.clone(),
        }
    }

    /// The response headers made from this file's header, once per open file (see
    /// [`HeldFile::reply_headers`]).
    pub fn reply_headers(&self) -> &OnceLock<held::ReplyHeaders> {
        &self.held.reply_headers
    }
}

/// What [`Cache::block_crc32c`] knows of a block of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSum {
    Crc32c(u32),
    /// The file is no longer the entry's, or its blocks were summed at another size.
    Unknown,
    /// The file failed its checksum and was dropped: do not serve it.
    Dropped,
}

/// What [`Cache::file_sums`] found for a file.
enum Sums {
    Made(Arc<file_sums::FileSums>),
    /// The file is no longer the entry's, or the entry is dirty (checked whole on each read).
    Unknown,
    /// The file failed its checksum and was dropped.
    Dropped,
}

/// A range of a clean file, checked by [`Cache::check_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedRange {
    /// The pieces around it matched the sums made from the checked file: the range's CRC32C,
    /// and its bytes when they were read in one read (at most a chunk with the pieces around).
    Checked { crc32c: u32, data: Option<Bytes> },
    /// The file is no longer the entry's: nothing to check it against.
    Unknown,
    /// The file had rotted: it was dropped, so the read goes on to another copy.
    Dropped,
}

#[derive(Debug)]
pub enum Opened {
    Block(Box<OpenBlock>),
    /// A delete is pending writeback.
    Deleted,
    /// Not cached (or its clean copy failed verification and was dropped).
    Miss,
}

/// What happened when a dirty block was sent to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// The store now holds this version (or the delete was applied).
    Applied,
    /// The store already held a newer version, so this one was skipped and dropped from the cache.
    StoreNewer,
}

/// What the start-up scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub dirty: Vec<BlockId>,
    pub clean_blocks: u64,
    /// Unreadable files: clean ones are deleted, dirty ones moved to `quarantine/` for inspection.
    pub corrupt_files: u64,
}

pub struct Cache {
    layout: Layout,
    sync: bool,
    index: Mutex<Index>,
    /// Bumped, under the index lock, whenever this proxy changes a block's stored value (see
    /// [`epoch`]). A store fetch that started before a bump must not cache what it read, or a
    /// deleted or overwritten block could come back.
    epochs: RemovalEpochs,
    /// Newest quarantined version per block (see [`quarantine`]).
    quarantined: Mutex<std::collections::HashMap<BlockId, u64>>,
    buffers: Arc<BufferPool>,
}

/// Block files up to this size are opened and read on the async task that asks, as nginx reads
/// its cache files without `aio`: from the page cache or NVMe such a read takes microseconds,
/// less than the two thread hand-offs of the blocking pool (profiled: those hand-offs were a
/// fifth of a 64 KiB hit's CPU). Of larger files a hit reads the header only, on the task too,
/// and streams the data in reads of this size (or sends it with `sendfile`, ADR 0012).
pub const INLINE_READ_MAX: u64 = 256 * 1024;

/// Block files kept open for hits by default (see [`held`]; `--open-files`).
pub const DEFAULT_HELD_FILES: usize = 4096;

/// Clean block files taken out of the index and set aside under the index lock (see
/// [`Layout::set_aside`]), to be deleted outside it.
#[must_use = "set-aside files are deleted with Cache::delete_set_aside"]
struct SetAside(Vec<PathBuf>);

impl Cache {
    /// Opens the cache folder and rebuilds the index from the block files (blocking I/O).
    pub fn open(folder: &Path, quota: u64, sync: bool) -> io::Result<(Self, Recovery)> {
        let layout = Layout::new(folder, sync)?;
        let mut index = Index::new(quota);
        index.set_held_files(DEFAULT_HELD_FILES);
        let mut recovery = Recovery::default();
        let now = SystemTime::now();
        let instant_now = Instant::now();
        let age = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default()
        };

        for path in disk::list_area(&layout.area_dir(Area::Dirty))? {
            match disk::read_header(&path)? {
                Ok((h, size)) => {
                    let Some(id) = block_id(&h) else { continue };
                    let since = instant_now.checked_sub(age(&path)).unwrap_or(instant_now);
                    let entry = Entry::new(
                        file_name(&path),
                        size,
                        h.data_len,
                        h.version,
                        EntryState::Dirty { since, tombstone: h.tombstone },
                    )
                    .with_etag(h.etag.clone());
                    index.insert(id.clone(), entry, 0);
                    recovery.dirty.push(id);
                }
                Err(e) => {
                    recovery.corrupt_files += 1;
                    let quarantine = layout.root().join(quarantine::DIR);
                    std::fs::create_dir_all(&quarantine)?;
                    tracing::error!(path = %path.display(), error = %e, "unreadable dirty block moved to quarantine/");
                    // Never over an earlier quarantined file of the same block.
                    let name = format!("{}.unreadable-{:08x}", file_name(&path), rand::random::<u32>());
                    std::fs::rename(&path, quarantine.join(name))?;
                }
            }
        }

        // Oldest first, so the LRU order approximates the one before the restart.
        let mut clean: Vec<(Duration, PathBuf)> =
            disk::list_area(&layout.area_dir(Area::Clean))?.into_iter().map(|p| (age(&p), p)).collect();
        clean.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, path) in clean {
            let header = disk::read_header(&path)?;
            let id = header.as_ref().ok().and_then(|(h, _)| block_id(h));
            match (header, id) {
                (Ok((h, size)), Some(id)) if index.get(&id).is_none() && !h.tombstone => {
                    let entry = Entry::new(file_name(&path), size, h.data_len, h.version, EntryState::Clean)
                        .with_etag(h.etag.clone());
                    index.insert(id, entry, 0);
                    recovery.clean_blocks += 1;
                }
                (Ok(_), Some(_)) => std::fs::remove_file(&path)?, // superseded by a dirty version
                _ => {
                    recovery.corrupt_files += 1;
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let quarantined = Mutex::new(quarantine::scan(layout.root())?);
        let cache = Self {
            layout,
            sync,
            index: Mutex::new(index),
            epochs: RemovalEpochs::default(),
            quarantined,
            buffers: Default::default(),
        };
        Ok((cache, recovery))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way that loses
        // data (files are the source of truth), so keep serving.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn usage(&self) -> Usage {
        self.index().usage()
    }

    pub fn oldest_dirty_age(&self) -> Option<Duration> {
        self.index().oldest_dirty().map(|t| t.elapsed())
    }

    pub fn dirty_ids(&self) -> Vec<BlockId> {
        self.index().dirty_ids()
    }

    /// Dirty entries under a key prefix, in key order (data length, version, ETag, whether it is
    /// a pending delete).
    pub fn dirty_under(&self, volume: &blockproxy_protocol::VolumeId, prefix: &str) -> Vec<(BlockId, index::Entry)> {
        self.index().dirty_under(volume, prefix)
    }

    /// The version the cache holds for a block, if any.
    pub fn version_of(&self, id: &BlockId) -> Option<u64> {
        self.index().get(id).map(|e| e.version)
    }

    /// The data length of a cached block, if any (to reserve memory before reading it).
    pub fn size_of(&self, id: &BlockId) -> Option<u64> {
        self.index().get(id).map(|e| e.data_len)
    }

    /// The highest version held per volume, clean or dirty (seeds the version clocks at start).
    pub fn max_versions(&self) -> std::collections::HashMap<blockproxy_protocol::VolumeId, u64> {
        self.index().max_versions()
    }

    /// Persists a write as dirty. Returns once the block is on disk (and fsynced with `sync`).
    pub async fn write_dirty(&self, w: DirtyWrite) -> Result<WriteOutcome, CacheError> {
        self.write_dirty_with(w, None, None).await
    }

    /// [`Cache::write_dirty`] for a one-part write whose ETag, the MD5 of its data, `md5` is still
    /// hashing (`w.etag` is ignored). The data is written to disk while the hash finishes, and the
    /// header, which holds the ETag, last: the ack waits for the slower of the two, not their sum.
    /// Returns the outcome and the MD5.
    pub async fn write_dirty_hashing(
        &self,
        mut w: DirtyWrite,
        md5: impl Future<Output = io::Result<[u8; 16]>> + Send + 'static,
        data_crc32c: u32,
    ) -> Result<(WriteOutcome, [u8; 16]), CacheError> {
        // Holds the room of the hex MD5 that replaces it: the header's length is known up front.
        w.etag = "0".repeat(32);
        let mut pending = Md5Later::Hashing(Box::pin(md5));
        let outcome = self.write_dirty_with(w, Some(&mut pending), Some(data_crc32c)).await?;
        Ok((outcome, pending.digest().await.map_err(io_err("hash the data"))?))
    }

    /// `data_crc32c`: the data's CRC32C when the caller computed it already (a write's ack
    /// path passes over the body once for it, not once per use).
    async fn write_dirty_with(
        &self,
        w: DirtyWrite,
        md5: Option<&mut Md5Later>,
        data_crc32c: Option<u32>,
    ) -> Result<WriteOutcome, CacheError> {
        let data = w.data.clone().unwrap_or_default();
        let mut header = BlockHeader {
            volume: w.id.volume.to_string(),
            key: w.id.key.to_string(),
            bucket: w.bucket,
            store_key: w.store_key,
            version: w.version,
            data_crc32c: data_crc32c.unwrap_or_else(|| crc::crc32c(&data)),
            data_len: data.len() as u64,
            tombstone: w.data.is_none(),
            etag: w.etag,
            modified_ns: w.version,
            attrs: w.attrs,
            parts: w.parts,
            stripe: None,
            store_etag: None,
        };
        let file_size = header.encode().len() as u64 + data.len() as u64;
        if let Some(current) = self.superseding_version(&w.id, w.version) {
            return Ok(WriteOutcome::Superseded { current });
        }
        let evicted = self.reserve(file_size, true)?;
        self.delete_set_aside(evicted).await;

        let name = name_of(&w.id);
        let tmp = match self.write_tmp(&mut header, data, file_size, Area::Dirty, &name, md5).await {
            Ok(t) => t,
            Err(e) => {
                self.index().release(file_size);
                return Err(e);
            }
        };
        self.install_dirty(&w.id, tmp, &header, file_size).await
    }

    /// A fresh path under `tmp/` (emptied at start) to build a file in, on the cache's disk.
    pub fn tmp_path(&self) -> PathBuf {
        self.layout.tmp_path()
    }

    /// Commits a complete block file built in `tmp` (header then data, fsynced by the caller with
    /// `sync`) as the dirty version of `id`, like [`Cache::write_dirty`]: the rename into `dirty/`
    /// is the commit. The file is removed when it is not committed.
    ///
    /// `replaces_staged` staged bytes (the upload parts the file was assembled from) count as the
    /// file's from now on, so an object is counted once, not twice, against the quota; the parts
    /// stay counted when the file is not committed. Until the caller deletes the parts, the disk
    /// holds both: at most one object's size above the quota.
    pub async fn commit_dirty_file(
        &self,
        id: &BlockId,
        tmp: PathBuf,
        header: &BlockHeader,
        file_size: u64,
        replaces_staged: u64,
    ) -> Result<WriteOutcome, CacheError> {
        let reserved = {
            let mut index = self.index();
            index.unstage(replaces_staged);
            match index.reserve(file_size, true) {
                Ok(evicted) => self.set_aside(&index, evicted),
                Err(e) => {
                    index.stage_found(replaces_staged);
                    drop(index);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
        };
        self.delete_set_aside(reserved).await;
        let name = name_of(id);
        let fanout = {
            let (layout, name) = (self.layout.clone(), name.clone());
            tokio::task::spawn_blocking(move || layout.ensure_fanout(Area::Dirty, &name)).await
        };
        if let Err(e) = fanout.map_err(io::Error::other).and_then(|r| r) {
            let mut index = self.index();
            index.release(file_size);
            index.stage_found(replaces_staged);
            drop(index);
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("create directory")(e));
        }
        let outcome = self.install_dirty(id, tmp, header, file_size).await;
        if !matches!(outcome, Ok(WriteOutcome::Committed)) {
            self.index().stage_found(replaces_staged);
        }
        outcome
    }

    /// Renames a complete dirty file into place unless a newer version is there already; `file_size`
    /// bytes are reserved by the caller and become usage (or are released).
    async fn install_dirty(
        &self,
        id: &BlockId,
        tmp: PathBuf,
        header: &BlockHeader,
        file_size: u64,
    ) -> Result<WriteOutcome, CacheError> {
        let name = name_of(id);
        let installed = {
            let mut index = self.index();
            match index.get(id) {
                Some(e) if e.version >= header.version => {
                    let current = e.version;
                    index.release(file_size);
                    drop(index);
                    let _ = std::fs::remove_file(&tmp);
                    return Ok(WriteOutcome::Superseded { current });
                }
                _ => {}
            }
            // Renames are short metadata operations; holding the lock orders them with flushes.
            match self.layout.install(&tmp, Area::Dirty, &name) {
                Ok(path) => {
                    let state = EntryState::Dirty { since: Instant::now(), tombstone: header.tombstone };
                    let entry = Entry::new(name.clone(), file_size, header.data_len, header.version, state)
                        .with_etag(header.etag.clone());
                    if let Some(old) = index.insert(id.clone(), entry, file_size)
                        && !old.is_dirty()
                    {
                        let _ = std::fs::remove_file(self.layout.path(Area::Clean, &old.name));
                    }
                    Ok(path)
                }
                Err(e) => {
                    index.release(file_size);
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        };
        let path = installed.map_err(io_err("install"))?;
        if self.sync {
            let layout = self.layout.clone();
            tokio::task::spawn_blocking(move || layout.sync_installed(&path))
                .await
                .map_err(|e| io_err("fsync dir")(io::Error::other(e)))?
                .map_err(io_err("fsync dir"))?;
        }
        Ok(WriteOutcome::Committed)
    }

    fn superseding_version(&self, id: &BlockId, version: u64) -> Option<u64> {
        self.index().get(id).map(|e| e.version).filter(|v| *v >= version)
    }

    /// Writes a block file to `tmp/` and creates its fan-out directory, off the runtime. When the
    /// disk fills up before the quota does, evicts clean blocks for the file's size and tries once
    /// more; a full disk with nothing evictable is [`CacheError::DiskFull`]. With `md5` still
    /// hashing, writes the data while it finishes and then puts its hex in `header.etag`.
    async fn write_tmp(
        &self,
        header: &mut BlockHeader,
        data: Bytes,
        file_size: u64,
        area: Area,
        name: &str,
        md5: Option<&mut Md5Later>,
    ) -> Result<PathBuf, CacheError> {
        let first = match md5 {
            Some(md5) => self.try_write_tmp_hashing(header, data.clone(), area, name, md5).await,
            None => self.try_write_tmp(header, data.clone(), area, name).await,
        };
        let err = match first {
            Err(e @ CacheError::DiskFull { .. }) => e,
            other => return other,
        };
        let (count, evicted) = {
            let mut index = self.index();
            let evicted = index.evict(file_size);
            (evicted.len(), self.set_aside(&index, evicted))
        };
        if count == 0 {
            tracing::warn!(error = %err, "the cache disk is full below --disk-quota and holds no evictable block");
            return Err(err);
        }
        tracing::warn!(
            evicted = count,
            "the cache disk is full below --disk-quota; evicted clean blocks to make room (lower --disk-quota)"
        );
        self.delete_set_aside(evicted).await;
        self.try_write_tmp(header, data, area, name).await
    }

    async fn try_write_tmp(
        &self,
        header: &BlockHeader,
        data: Bytes,
        area: Area,
        name: &str,
    ) -> Result<PathBuf, CacheError> {
        let (layout, header, name) = (self.layout.clone(), header.clone(), name.to_owned());
        // Only dirty blocks are acknowledged, so only they need to reach the disk before the ack.
        let sync = self.sync && area == Area::Dirty;
        tokio::task::spawn_blocking(move || {
            layout.ensure_fanout(area, &name).map_err(io_err("create directory"))?;
            layout.write_tmp(&header, &data, sync).map_err(io_err("write"))
        })
        .await
        .map_err(|e| io_err("write")(io::Error::other(e)))?
    }

    /// [`Cache::try_write_tmp`] while `md5` hashes: the data goes to disk beside the hash, behind
    /// room for the header, which is written once the hash is in `header.etag`.
    async fn try_write_tmp_hashing(
        &self,
        header: &mut BlockHeader,
        data: Bytes,
        area: Area,
        name: &str,
        md5: &mut Md5Later,
    ) -> Result<PathBuf, CacheError> {
        let room = header.encode().len() as u64;
        let (layout, name) = (self.layout.clone(), name.to_owned());
        let data_written = tokio::task::spawn_blocking(move || {
            layout.ensure_fanout(area, &name).map_err(io_err("create directory"))?;
            layout.write_tmp_data_at(room, &data).map_err(io_err("write"))
        });
        let (written, digest) = tokio::join!(data_written, md5.digest());
        let written = written.map_err(|e| io_err("write")(io::Error::other(e))).and_then(|r| r);
        let digest = match digest {
            Ok(d) => d,
            Err(e) => {
                if let Ok((path, _)) = &written {
                    let _ = std::fs::remove_file(path);
                }
                return Err(io_err("hash the data")(e));
            }
        };
        header.etag = hex::encode(digest);
        let (path, file) = written?;
        let (layout, header) = (self.layout.clone(), header.clone());
        let sync = self.sync && area == Area::Dirty;
        tokio::task::spawn_blocking(move || layout.finish_tmp(&path, file, &header, room, sync).map(|()| path))
            .await
            .map_err(|e| io_err("write")(io::Error::other(e)))?
            .map_err(io_err("write"))
    }

    /// The key for a store fetch of `id` that starts now: single-flight fetches are keyed by it,
    /// and [`Cache::insert_clean`] caches what the fetch read only if no removal came between.
    pub fn fetch_key(&self, id: &BlockId) -> FetchKey {
        FetchKey { id: id.clone(), epoch: self.epochs.get(id) }
    }

    /// Records that the store still holds `version` of a clean block (a revalidation), as the
    /// object with `store_etag` (unquoted).
    pub fn mark_validated(&self, id: &BlockId, version: u64, at: Instant, store_etag: &str) {
        self.index().mark_validated(id, version, at, store_etag);
    }

    /// Drops a clean block (write-through overwrite or delete). Dirty blocks are never dropped.
    pub fn invalidate(&self, id: &BlockId) {
        let mut index = self.index();
        if let Some(e) = index.get(id).filter(|e| !e.is_dirty()).cloned() {
            index.remove(id);
            let _ = std::fs::remove_file(self.layout.path(Area::Clean, &e.name));
        }
        self.epochs.bump(id);
    }

    /// Caches a block fetched from the store, unless the cache holds it already (a write that
    /// raced the fetch wins), a removal happened since the fetch started, or there is no evictable
    /// room (the block is then served uncached).
    pub async fn insert_clean(
        &self,
        fetch: FetchKey,
        bucket: &str,
        store_key: &str,
        data: Bytes,
        version: u64,
        meta: FetchedMeta,
    ) {
        let id = fetch.id;
        let header = BlockHeader {
            volume: id.volume.to_string(),
            key: id.key.to_string(),
            bucket: bucket.to_owned(),
            store_key: store_key.to_owned(),
            version,
            data_crc32c: crc::crc32c(&data),
            data_len: data.len() as u64,
            tombstone: false,
            // What S3 clients are answered, and what the copy is pinned to when that differs.
            etag: meta.s3_etag.clone().unwrap_or_else(|| meta.etag.clone()),
            store_etag: meta.s3_etag.as_ref().filter(|e| **e != meta.etag).map(|_| meta.etag.clone()),
            modified_ns: meta.modified_ns,
            attrs: meta.attrs,
            parts: Vec::new(),
            stripe: id.stripe.map(|s| StripeHeader {
                index: s.index,
                block_size: s.block_size,
                object_size: meta.object_size,
            }),
        };
        let file_size = header.encode().len() as u64 + data.len() as u64;
        if self.index().get(&id).is_some() {
            return;
        }
        let Ok(evicted) = self.reserve(file_size, false) else { return };
        self.delete_set_aside(evicted).await;
        let name = name_of(&id);
        let tmp = match self.write_tmp(&mut header.clone(), data, file_size, Area::Clean, &name, None).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "could not cache fetched block");
                self.index().release(file_size);
                return;
            }
        };
        let mut index = self.index();
        if index.get(&id).is_some() || self.epochs.get(&id) != fetch.epoch {
            index.release(file_size);
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        match self.layout.install(&tmp, Area::Clean, &name) {
            Ok(_) => {
                let mut entry = Entry::new(name, file_size, header.data_len, version, EntryState::Clean)
                    .with_etag(header.etag.clone());
                entry.store_etag = Some(header.pinned_etag().to_owned());
                index.insert(id, entry.validated_at(Instant::now()), file_size);
            }
            Err(e) => {
                index.release(file_size);
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(error = %e, "could not cache fetched block");
            }
        }
    }

    /// Reads a block from disk, verifying it. A clean block that fails verification is dropped
    /// (and reported as a miss, so it is refetched); a dirty one is an error, never served.
    pub async fn read(&self, id: &BlockId) -> Result<Lookup, CacheError> {
        // A concurrent flush may rename the file between lookup and open: retry a few times.
        for _ in 0..4 {
            let Some(entry) = self.index().touch(id).cloned() else { return Ok(Lookup::Miss) };
            if entry.is_tombstone() {
                return Ok(Lookup::Deleted);
            }
            let area = if entry.is_dirty() { Area::Dirty } else { Area::Clean };
            let path = self.layout.path(area, &entry.name);
            let read = tokio::task::spawn_blocking(move || disk::read_block(&path))
                .await
                .map_err(|e| io_err("read")(io::Error::other(e)))?;
            match read {
                Ok(Ok((h, data))) if h.version == entry.version => {
                    let (crc32c, version) = (h.data_crc32c, h.version);
                    return Ok(Lookup::Hit {
                        header: Box::new(h),
                        data,
                        version,
                        dirty: entry.is_dirty(),
                        crc32c,
                        validated: entry.validated,
                    });
                }
                Ok(Ok(_)) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read")(e)),
                Ok(Err(format_err)) => return self.on_corrupt(id, &entry, format_err),
            }
        }
        Ok(Lookup::Miss)
    }

    /// Opens a block's file and reads its header, and its data too when the file is at most
    /// `read_whole` bytes (0: never; HEAD and ranges of large objects stream from the open file).
    /// The open file stays readable whatever renames or replaces it later. Everything is read on
    /// the calling task (see [`INLINE_READ_MAX`]): a file larger than `read_whole` only has its
    /// header read, a few KiB; callers keep `read_whole` at most [`INLINE_READ_MAX`].
    pub async fn open_block(&self, id: &BlockId, read_whole: u64) -> Result<Opened, CacheError> {
        for _ in 0..4 {
            let entry = {
                let mut index = self.index();
                let Some(entry) = index.touch(id) else { return Ok(Opened::Miss) };
                if entry.is_tombstone() {
                    return Ok(Opened::Deleted);
                }
                // A hit on a held file copies no more of the entry than the answer needs.
                if let Some(held) = &entry.held {
                    return Ok(Opened::Block(Box::new(OpenBlock::of(held, entry, None))));
                }
                entry.clone()
            };
            let area = if entry.is_dirty() { Area::Dirty } else { Area::Clean };
            let path = self.layout.path(area, &entry.name);
            let buffers = Arc::clone(&self.buffers);
            let open = move || {
                let mut file = disk::open_to_read(&path)?;
                Ok::<_, io::Error>(disk::read_block_of(&mut file, read_whole, &buffers)?.map(|h| (file, h)))
            };
            match open() {
                Ok(Ok((file, disk::ReadBlock { header, data_offset, file_size, data })))
                    if header.version == entry.version =>
                {
                    if file_size != data_offset + header.data_len {
                        return self.on_corrupt(id, &entry, FormatError::DataChecksum).map(|_| Opened::Miss);
                    }
                    let held = Arc::new(HeldFile::new(Arc::new(file), Arc::new(header), data_offset));
                    self.index().hold(id, entry.serial, Arc::clone(&held));
                    return Ok(Opened::Block(Box::new(OpenBlock::of(&held, &entry, data))));
                }
                Ok(Ok(_)) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read")(e)),
                Ok(Err(format_err)) => return self.on_corrupt(id, &entry, format_err).map(|_| Opened::Miss),
            }
        }
        Ok(Opened::Miss)
    }

    /// The CRC32C of block `index` (blocks of `block_size` bytes) of the clean file `ob`, which
    /// holds its object whole (ADR 0024). The first call for a file reads it once and checks it
    /// against its header; a file that fails is dropped.
    pub async fn block_crc32c(
        &self,
        id: &BlockId,
        ob: &OpenBlock,
        index: u64,
        block_size: u64,
    ) -> Result<BlockSum, CacheError> {
        Ok(match self.file_sums(id, ob, Some(block_size)).await? {
            Sums::Made(sums) => sums.of_block(index, block_size).map_or(BlockSum::Unknown, BlockSum::Crc32c),
            Sums::Unknown => BlockSum::Unknown,
            Sums::Dropped => BlockSum::Dropped,
        })
    }

    /// Checks the bytes `range` (data offsets) of the clean file `ob` against the sums of its
    /// pieces (ADR 0025): the whole pieces around the range are read through one chunk-sized
    /// buffer and checked against the CRC32Cs that the file's first such check made from data
    /// that matched the file's checksum. A file that rotted since is dropped. The caller serves
    /// the range from the read that checked it when there was one read, else streams it from the
    /// open file, as any hit. `block_size`: the blocks a whole-object file is read in, whose sums
    /// the same pass makes for later block reads (ADR 0024).
    pub async fn check_range(
        &self,
        id: &BlockId,
        ob: &OpenBlock,
        range: std::ops::Range<u64>,
        block_size: Option<u64>,
    ) -> Result<CheckedRange, CacheError> {
        let sums = match self.file_sums(id, ob, block_size).await? {
            Sums::Made(sums) => sums,
            Sums::Unknown => return Ok(CheckedRange::Unknown),
            Sums::Dropped => return Ok(CheckedRange::Dropped),
        };
        let cover = sums.cover(&range);
        let (file, buffers, data_offset) = (Arc::clone(&ob.file), Arc::clone(&self.buffers), ob.data_offset);
        // A small file opened with its data read already is checked from that data.
        let in_memory = ob.data.clone();
        let in_one_read = cover.end - cover.start <= INLINE_READ_MAX;
        let check = move || {
            use std::os::unix::fs::FileExt;
            let mut kept = None;
            let crc = sums.check_range(&range, INLINE_READ_MAX, |at, len| {
                let bytes = match &in_memory {
                    Some(data) => data.slice(at as usize..at as usize + len),
                    None => buffers.read(len, |buf| file.read_exact_at(buf, data_offset + at))?,
                };
                kept = in_one_read.then(|| bytes.clone());
                Ok(bytes)
            })?;
            let within = (range.start - cover.start) as usize..(range.end - cover.start) as usize;
            std::io::Result::Ok(crc.map(|crc32c| (crc32c, kept.map(|b| b.slice(within)))))
        };
        // A small range is read on this task, as small hits are; a larger one on the blocking
        // pool, through one chunk-sized buffer, and then streamed from the file.
        let checked = if in_one_read {
            check()
        } else {
            tokio::task::spawn_blocking(check).await.map_err(|e| io_err("read")(io::Error::other(e)))?
        }
        .map_err(io_err("read"))?;
        match checked {
            Some((crc32c, data)) => Ok(CheckedRange::Checked { crc32c, data }),
            None => {
                self.drop_rotten(id, ob)?;
                Ok(CheckedRange::Dropped)
            }
        }
    }

    /// The sums of the clean file `ob` (see [`file_sums`]), made by the first call for it in this
    /// process, which reads the file once and checks it against its header: with the block sums
    /// at `block_size` when that call asks for them.
    async fn file_sums(&self, id: &BlockId, ob: &OpenBlock, block_size: Option<u64>) -> Result<Sums, CacheError> {
        let Some(cell) = self.index().file_sums(id, ob.serial) else { return Ok(Sums::Unknown) };
        let (file, offset) = (Arc::clone(&ob.file), ob.data_offset);
        let (len, expected) = (ob.header.data_len, ob.header.data_crc32c);
        // The error is `None` when the data does not match the header's checksum.
        let made = cell
            .get_or_try_init(|| async move {
                // Through one chunk-sized buffer, as a first read checks a block (ADR 0020).
                let mut buf = vec![0u8; len.clamp(1, INLINE_READ_MAX) as usize];
                let sums = tokio::task::spawn_blocking(move || {
                    disk::part_crc32cs(&file, offset, len, block_size, file_sums::PIECE, &mut buf)
                })
                .await
                .map_err(|e| io_err("read")(io::Error::other(e)))?
                .map_err(io_err("read"))?;
                match sums {
                    (whole, blocks, pieces) if whole == expected => {
                        Ok(Arc::new(file_sums::FileSums::new(len, block_size, blocks, pieces)))
                    }
                    _ => Err(None),
                }
            })
            .await;
        match made {
            Ok(sums) => {
                self.mark_checked(id, ob.serial);
                Ok(Sums::Made(Arc::clone(sums)))
            }
            Err(Some(e)) => Err(e),
            Err(None) => {
                self.drop_rotten(id, ob)?;
                Ok(Sums::Dropped)
            }
        }
    }

    /// Drops the clean file `ob` of `id`, which failed a check, if it is still the entry's.
    fn drop_rotten(&self, id: &BlockId, ob: &OpenBlock) -> Result<(), CacheError> {
        let entry = self.index().get(id).filter(|e| e.serial == ob.serial).cloned();
        if let Some(entry) = entry {
            self.on_corrupt(id, &entry, FormatError::DataChecksum)?;
        }
        Ok(())
    }

    /// Keeps at most `n` block files open for hits (see [`held`]; 0: none).
    pub fn set_held_files(&self, n: usize) {
        self.index().set_held_files(n);
    }

    /// Records that a read verified the clean file `serial` of `id` (see [`OpenBlock::checked`]).
    pub fn mark_checked(&self, id: &BlockId, serial: u64) {
        self.index().mark_checked(id, serial);
    }

    /// The pool that hits read into.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.buffers
    }

    /// Opens a dirty block's file for its flush and verifies its CRC32C (streaming, so any size),
    /// reading its data into memory too when it is one part of at most `in_memory` bytes. The
    /// open file keeps this version readable whatever replaces it meanwhile.
    pub async fn open_dirty(&self, id: &BlockId, in_memory: u64) -> Result<Option<DirtyFile>, CacheError> {
        let Some(entry) = self.index().get(id).filter(|e| e.is_dirty()).cloned() else { return Ok(None) };
        let path = self.layout.path(Area::Dirty, &entry.name);
        let read = tokio::task::spawn_blocking(move || disk::open_verified(&path, in_memory))
            .await
            .map_err(|e| io_err("read")(io::Error::other(e)))?;
        match read {
            Ok(Ok((header, file, data_offset, data))) => Ok(Some(DirtyFile { header, file, data_offset, data })),
            // Replaced by a newer write between lookup and open: the caller re-queues.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read")(e)),
            Ok(Err(e)) => Err(CacheError::CorruptDirty {
                volume: id.volume.to_string(),
                key: id.key.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Reserves quota for `size` bytes of staged upload data (never evicted), or refuses like a
    /// dirty write would.
    pub async fn stage(&self, size: u64) -> Result<(), CacheError> {
        let evicted = {
            let mut index = self.index();
            let evicted = index.stage(size)?;
            self.set_aside(&index, evicted)
        };
        self.delete_set_aside(evicted).await;
        Ok(())
    }

    /// Counts staged data found on disk at start (whatever the quota says: it is there).
    pub fn account_staged(&self, size: u64) {
        let mut index = self.index();
        index.stage_found(size);
    }

    /// Gives back quota of staged data that was removed.
    pub fn unstage(&self, size: u64) {
        self.index().unstage(size);
    }

    /// Whether the cache syncs acknowledged data (`--sync`).
    pub fn sync(&self) -> bool {
        self.sync
    }

    /// The cache folder (staging lives below it, on the same disk).
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    fn on_corrupt(&self, id: &BlockId, entry: &Entry, err: FormatError) -> Result<Lookup, CacheError> {
        if entry.is_dirty() {
            tracing::error!(volume = %id.volume, key = %id.key, error = %err, "unflushed block failed verification");
            return Err(CacheError::CorruptDirty {
                volume: id.volume.to_string(),
                key: id.key.to_string(),
                reason: err.to_string(),
            });
        }
        tracing::warn!(volume = %id.volume, key = %id.key, error = %err, "cached block failed verification; dropping it");
        let mut index = self.index();
        if index.get(id).is_some_and(|e| e.version == entry.version && !e.is_dirty()) {
            index.remove(id);
            let _ = std::fs::remove_file(self.layout.path(Area::Clean, &entry.name));
        }
        Ok(Lookup::DroppedCorrupt)
    }

    /// The dirty block to flush (header with its store location, and data), if still dirty.
    pub async fn read_dirty(&self, id: &BlockId) -> Result<Option<(BlockHeader, Bytes)>, CacheError> {
        let Some(entry) = self.index().get(id).filter(|e| e.is_dirty()).cloned() else { return Ok(None) };
        let path = self.layout.path(Area::Dirty, &entry.name);
        let read = tokio::task::spawn_blocking(move || disk::read_block(&path))
            .await
            .map_err(|e| io_err("read")(io::Error::other(e)))?;
        match read {
            Ok(Ok((h, data))) => Ok(Some((h, data))),
            // Replaced by a newer write between lookup and open: the caller re-queues.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read")(e)),
            Ok(Err(e)) => Err(CacheError::CorruptDirty {
                volume: id.volume.to_string(),
                key: id.key.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Records a finished flush of `version`. Returns whether the block is still dirty (a newer
    /// write arrived meanwhile) and so needs another flush.
    pub fn complete_flush(&self, id: &BlockId, version: u64, outcome: FlushOutcome) -> bool {
        let mut index = self.index();
        let Some(entry) = index.get(id).cloned() else { return false };
        if entry.version != version || !entry.is_dirty() {
            return entry.is_dirty();
        }
        // The store's value changed (or was found newer): a fetch that started before now may
        // hold the old one, and the clean copy kept below may be evicted before that fetch ends.
        self.epochs.bump(id);
        let dirty_path = self.layout.path(Area::Dirty, &entry.name);
        if outcome == FlushOutcome::Applied && !entry.is_tombstone() {
            index.mark_clean(id, version);
            if let Err(e) = self.layout.install(&dirty_path, Area::Clean, &entry.name) {
                tracing::warn!(error = %e, "could not move flushed block to clean/; dropping it from the cache");
                index.remove(id);
                let _ = std::fs::remove_file(&dirty_path);
            }
        } else {
            index.remove(id);
            let _ = std::fs::remove_file(&dirty_path);
        }
        false
    }

    /// Reserves room for a new file. The clean blocks evicted for it are set aside under the
    /// index lock, so deleting them later can never hit a newer file installed under their name.
    fn reserve(&self, size: u64, dirty: bool) -> Result<SetAside, AdmitError> {
        let mut index = self.index();
        let evicted = index.reserve(size, dirty)?;
        Ok(self.set_aside(&index, evicted))
    }

    /// Sets aside the files of clean entries just taken out of `index`, whose lock the caller holds.
    fn set_aside(&self, _locked: &Index, evicted: Vec<(BlockId, Entry)>) -> SetAside {
        let mut paths = Vec::with_capacity(evicted.len());
        for (_, entry) in evicted {
            match self.layout.set_aside(Area::Clean, &entry.name) {
                Ok(Some(path)) => paths.push(path),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not set an evicted block aside; deleting it in place");
                    let _ = std::fs::remove_file(self.layout.path(Area::Clean, &entry.name));
                }
            }
        }
        SetAside(paths)
    }

    async fn delete_set_aside(&self, set_aside: SetAside) {
        if set_aside.0.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for p in set_aside.0 {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn block_id(h: &BlockHeader) -> Option<BlockId> {
    Some(BlockId {
        volume: blockproxy_protocol::VolumeId::parse(&h.volume).ok()?,
        key: blockproxy_protocol::BlockKey::parse(&h.key).ok()?,
        stripe: h.stripe.map(|s| Stripe { index: s.index, block_size: s.block_size }),
    })
}

/// The file name of a block: a hash of volume and key (and which stripe), never the key itself.
fn name_of(id: &BlockId) -> String {
    match id.stripe {
        None => Layout::file_name(id.volume.as_str(), id.key.as_str()),
        Some(s) => {
            Layout::file_name(id.volume.as_str(), &format!("{}\0{}\0{}", id.key.as_str(), s.index, s.block_size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: &str) -> BlockId {
        BlockId::of_test_volume(k)
    }

    fn open() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = Cache::open(dir.path(), 1 << 20, false).unwrap();
        (dir, cache)
    }

    async fn fetched(cache: &Cache, id: &BlockId, data: &'static [u8], version: u64) {
        cache
            .insert_clean(
                cache.fetch_key(id),
                "bucket",
                "pfx/a",
                Bytes::from_static(data),
                version,
                FetchedMeta::default(),
            )
            .await;
    }

    /// Evicts every clean block, as a reservation of the whole quota would, and gives the room
    /// back. Returns what the eviction set aside, for the caller to delete when it chooses.
    fn evict_all(cache: &Cache) -> SetAside {
        let quota = cache.usage().quota;
        let evicted = cache.reserve(quota, false).unwrap();
        cache.index().release(quota);
        evicted
    }

    async fn hit(cache: &Cache, id: &BlockId) -> Option<(Bytes, u64)> {
        match cache.read(id).await.unwrap() {
            Lookup::Hit { data, version, .. } => Some((data, version)),
            Lookup::Miss => None,
            other => panic!("{other:?}"),
        }
    }

    /// A write of `data` (a delete when `None`) as `version`, without attributes.
    fn write_of(a: &BlockId, version: u64, data: Option<&'static [u8]>) -> DirtyWrite {
        DirtyWrite {
            id: a.clone(),
            bucket: "bucket".into(),
            store_key: "pfx/a".into(),
            version,
            data: data.map(Bytes::from_static),
            etag: String::new(),
            attrs: ObjectAttrs::default(),
            parts: Vec::new(),
        }
    }

    /// What [`Cache::open_block`] serves: version and data, read from the open file.
    async fn opened(cache: &Cache, id: &BlockId) -> Option<(u64, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        match cache.open_block(id, 0).await.unwrap() {
            Opened::Block(ob) => {
                let mut data = vec![0u8; ob.header.data_len as usize];
                ob.file.read_exact_at(&mut data, ob.data_offset).unwrap();
                Some((ob.header.version, data))
            }
            Opened::Miss => None,
            Opened::Deleted => panic!("deleted"),
        }
    }

    #[tokio::test]
    async fn hits_reuse_the_held_file_until_the_block_is_replaced_or_evicted() {
        let (_dir, cache) = open();
        let a = id("a");
        fetched(&cache, &a, b"old", 1).await;
        assert_eq!(opened(&cache, &a).await, Some((1, b"old".to_vec())));
        assert_eq!(cache.usage().open_files, 1);
        // Gone from the folder behind the cache's back: the next hit does not open it again.
        let name = cache.index().get(&a).unwrap().name.clone();
        std::fs::remove_file(cache.layout.path(Area::Clean, &name)).unwrap();
        assert_eq!(opened(&cache, &a).await, Some((1, b"old".to_vec())), "served from the held file");
        // A write replaces the entry, and the held file with it; so does its flush.
        let write = write_of(&a, 2, Some(b"new"));
        assert_eq!(cache.write_dirty(write).await.unwrap(), WriteOutcome::Committed);
        assert_eq!(opened(&cache, &a).await, Some((2, b"new".to_vec())));
        assert_eq!(cache.usage().open_files, 1);
        cache.complete_flush(&a, 2, FlushOutcome::Applied);
        assert_eq!(cache.usage().open_files, 0, "the flush let go of the dirty file");
        assert_eq!(opened(&cache, &a).await, Some((2, b"new".to_vec())));
        cache.delete_set_aside(evict_all(&cache)).await;
        assert_eq!(cache.usage().open_files, 0);
        assert_eq!(opened(&cache, &a).await, None);
    }

    #[tokio::test]
    async fn an_eviction_never_deletes_a_newer_file_installed_under_the_same_name() {
        let (_dir, cache) = open();
        let a = id("a");
        fetched(&cache, &a, b"old", 1).await;
        let evicted = evict_all(&cache);
        // Fetched again, and installed under the same file name, before the eviction's deletion.
        fetched(&cache, &a, b"new", 2).await;
        cache.delete_set_aside(evicted).await;
        assert_eq!(hit(&cache, &a).await, Some((Bytes::from_static(b"new"), 2)));
    }

    #[tokio::test]
    async fn a_fetch_started_before_a_flushed_overwrite_is_not_cached_or_joined_after_it() {
        let (_dir, cache) = open();
        let a = id("a");
        let before = cache.fetch_key(&a);
        let write = write_of(&a, 2, Some(b"new"));
        assert_eq!(cache.write_dirty(write).await.unwrap(), WriteOutcome::Committed);
        assert!(!cache.complete_flush(&a, 2, FlushOutcome::Applied));
        assert_ne!(cache.fetch_key(&a), before, "a read after the flush would join the older fetch");
        // The flushed block is evicted; then the older fetch ends, with the value it read before.
        cache.delete_set_aside(evict_all(&cache)).await;
        cache.insert_clean(before, "bucket", "pfx/a", Bytes::from_static(b"old"), 1, FetchedMeta::default()).await;
        assert_eq!(hit(&cache, &a).await, None, "the older fetch's value was cached after a newer flush");
    }

    #[tokio::test]
    async fn a_fetch_started_before_a_flushed_delete_is_not_cached_or_joined_after_it() {
        let (_dir, cache) = open();
        let a = id("a");
        let before = cache.fetch_key(&a);
        let delete = write_of(&a, 2, None);
        assert_eq!(cache.write_dirty(delete).await.unwrap(), WriteOutcome::Committed);
        assert!(!cache.complete_flush(&a, 2, FlushOutcome::Applied));
        assert_ne!(cache.fetch_key(&a), before, "a read after the flush would join the older fetch");
        cache.insert_clean(before, "bucket", "pfx/a", Bytes::from_static(b"old"), 1, FetchedMeta::default()).await;
        assert_eq!(hit(&cache, &a).await, None, "the older fetch's value was cached after the delete");
    }

    fn one_part_write(a: &BlockId, data: &'static [u8], etag: String) -> DirtyWrite {
        DirtyWrite { etag, ..write_of(a, 7, Some(data)) }
    }

    #[tokio::test]
    async fn a_write_whose_md5_is_still_hashing_leaves_the_file_a_write_with_its_etag_leaves() {
        use md5::{Digest, Md5};
        let (a, data) = (id("a"), b"the data of a one-part write".as_slice());
        let md5: [u8; 16] = Md5::digest(data).into();
        let (_known_dir, known) = open();
        let (_hashing_dir, hashing) = open();
        assert_eq!(
            known.write_dirty(one_part_write(&a, data, hex::encode(md5))).await.unwrap(),
            WriteOutcome::Committed
        );
        // The hash ends well after the data is on disk: the header is written last.
        let late = async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(md5)
        };
        let (outcome, got) = hashing
            .write_dirty_hashing(one_part_write(&a, data, String::new()), late, crc::crc32c(data))
            .await
            .unwrap();
        assert_eq!((outcome, got), (WriteOutcome::Committed, md5));
        let file = |c: &Cache| std::fs::read(c.layout.path(Area::Dirty, &name_of(&a))).unwrap();
        assert_eq!(file(&hashing), file(&known), "the block files differ");
        let (header, read) = hashing.read_dirty(&a).await.unwrap().unwrap();
        assert_eq!((header.etag, read.as_ref()), (hex::encode(md5), data));
    }

    #[tokio::test]
    async fn a_write_whose_hash_fails_commits_nothing_and_leaves_no_file() {
        let (dir, cache) = open();
        let a = id("a");
        let failed = async { Err(io::Error::other("the hashing thread panicked")) };
        let err = cache
            .write_dirty_hashing(one_part_write(&a, b"data", String::new()), failed, crc::crc32c(b"data"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("hash"), "{err}");
        assert!(cache.read_dirty(&a).await.unwrap().is_none(), "a block without its ETag was committed");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "its temporary file is left");
        assert_eq!(cache.usage().used_bytes, 0, "its space is still reserved");
    }
}
