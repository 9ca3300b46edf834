//! Object-store backends behind one trait. The store knows nothing of the cache: it moves whole
//! objects and byte ranges of them, each object tagged with the write version that produced it,
//! the CRC32C its writer computed (see the consistency ADR) and its attributes
//! (docs/adr/0004-object-model.md).
//!
//! Writes that must not overtake a newer version go through [`put_unless_newer`],
//! [`put_file_unless_newer`] and [`delete_unless_newer`] ([`conditional`]), the one place that
//! decides, from what the store holds, whether a version may be written; the write itself is
//! conditional at the store ([`Precondition`]), so a concurrent writer in between makes it fail
//! instead of being overwritten.
//!
//! ETags are kept exactly as the store answers them: quoted (`"…"`), as S3 sends them in
//! headers. Every backend answers quoted ETags and accepts them back in conditions.

mod azure;
mod conditional;
mod gcs;
mod http;
mod local;
mod local_path;
#[cfg(test)]
pub(crate) mod memory;
mod s3;
mod s3_etag;

pub use azure::{AzureCredentials, AzureStore, AzureStoreConfig};
pub use blockproxy_protocol::ObjectAttrs;
pub use conditional::{
    Conditional, TOMBSTONE_PREFIX, delete_unless_newer, is_tombstone_key, put_file_at_unless_newer,
    put_file_unless_newer, put_unless_newer,
};
pub use gcs::{GCS_ENDPOINT, GcsCredentials, GcsStore, GcsStoreConfig};
pub use local::LocalDirStore;
pub use s3::{S3Store, S3StoreConfig};
pub use s3_etag::S3ETag;

use crate::protocol::crc;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Page size of [`Store::list`] (S3's own maximum).
pub const LIST_PAGE_SIZE: u32 = 1000;

/// A whole object as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredBlock {
    pub data: Bytes,
    /// The write version recorded with the object; 0 for objects written by something else.
    pub version: u64,
    /// The CRC32C of `data`: the writer's, verified against the bytes, or computed on fetch for an
    /// object written by another tool.
    pub crc32c: u32,
    /// The store's ETag of this object (quoted).
    pub etag: String,
    /// The S3 ETag its writer recorded (quoted), where the store's own ETag is another thing
    /// ([`S3ETag`]); `None` on S3 and for objects written by another tool.
    pub s3_etag: Option<String>,
    pub last_modified: SystemTime,
    pub attrs: ObjectAttrs,
}

impl StoredBlock {
    /// The ETag to answer S3 clients.
    pub fn client_etag(&self) -> &str {
        self.s3_etag.as_deref().unwrap_or(&self.etag)
    }

    /// Its attributes, as a HEAD would answer them.
    pub fn info(&self) -> ObjectInfo {
        ObjectInfo {
            size: self.data.len() as u64,
            etag: self.etag.clone(),
            s3_etag: self.s3_etag.clone(),
            version: self.version,
            last_modified: self.last_modified,
            attrs: self.attrs.clone(),
            crc32c: Some(self.crc32c),
        }
    }
}

/// What [`Store::get_small`] found under a key.
#[derive(Debug, Clone)]
pub enum SmallObject {
    /// The whole object: it has at most the bytes asked for.
    Whole(StoredBlock),
    /// A larger object: only its attributes.
    Large(ObjectInfo),
}

/// [`Store::get_first`] in two requests, for stores that cannot answer it in one.
pub async fn get_first_by_head<S: Store + ?Sized>(
    store: &S,
    bucket: &str,
    key: &str,
    len: u64,
) -> Result<Option<StoredRange>, StoreError> {
    let Some(info) = store.head(bucket, key).await? else { return Ok(None) };
    if info.size <= len {
        // Whole: read (and verified) as one object; it may have changed since the HEAD.
        return Ok(store.get(bucket, key).await?.map(|b| {
            let info = b.info();
            let data = b.data.slice(..(len.min(b.data.len() as u64)) as usize);
            StoredRange { data, info }
        }));
    }
    let etag = info.etag.clone();
    store.get_range(bucket, key, 0..len, Some(&etag)).await
}

/// [`Store::get_block`] in two requests: the size from a HEAD, then the range pinned to the
/// ETag that HEAD saw.
pub async fn get_block_by_head<S: Store + ?Sized>(
    store: &S,
    bucket: &str,
    key: &str,
    start: u64,
    len: u64,
    if_match: Option<&str>,
) -> Result<Option<StoredRange>, StoreError> {
    let Some(info) = store.head(bucket, key).await? else { return Ok(None) };
    if if_match.is_some_and(|e| e != info.etag) {
        return Err(StoreError::PreconditionFailed { op: "GET", bucket: bucket.into(), key: key.into() });
    }
    let range = start..info.size.min(start.saturating_add(len));
    check_range(bucket, key, &(start..start.max(range.end)), info.size)?;
    store.get_range(bucket, key, range, Some(&info.etag)).await
}

/// [`Store::get_small`] in two requests, for stores that cannot answer it in one.
pub async fn get_small_by_head<S: Store + ?Sized>(
    store: &S,
    bucket: &str,
    key: &str,
    max: u64,
) -> Result<Option<SmallObject>, StoreError> {
    let Some(info) = store.head(bucket, key).await? else { return Ok(None) };
    if info.size > max {
        return Ok(Some(SmallObject::Large(info)));
    }
    // Replaced by a larger object between the two requests: still only its attributes.
    Ok(store
        .get(bucket, key)
        .await?
        .map(|b| if b.data.len() as u64 > max { SmallObject::Large(b.info()) } else { SmallObject::Whole(b) }))
}

/// What the store holds under a key, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Identifies this exact object (quoted: the S3 ETag; the local store's own token). A
    /// conditional write or a pinned ranged read names it to fail when the object changed.
    pub etag: String,
    /// The S3 ETag its writer recorded (quoted), where the store's own ETag is another thing
    /// ([`S3ETag`]); `None` on S3 and for objects written by another tool.
    pub s3_etag: Option<String>,
    /// The recorded write version; 0 for objects written by something else.
    pub version: u64,
    pub last_modified: SystemTime,
    pub attrs: ObjectAttrs,
    /// The writer's checksum of the whole object; `None` for objects written by another tool.
    pub crc32c: Option<u32>,
}

impl ObjectInfo {
    /// The ETag to answer S3 clients.
    pub fn client_etag(&self) -> &str {
        self.s3_etag.as_deref().unwrap_or(&self.etag)
    }
}

/// A byte range of an object, and the object it was cut from.
#[derive(Debug, Clone)]
pub struct StoredRange {
    /// Exactly the requested bytes.
    pub data: Bytes,
    pub info: ObjectInfo,
}

/// What a writer records with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    pub version: u64,
    pub crc32c: u32,
    /// Recorded by stores whose own ETag is not the S3 one; `None` when unknown.
    pub s3_etag: Option<S3ETag>,
}

impl ObjectMeta {
    pub fn for_data(version: u64, data: &[u8]) -> Self {
        Self { version, crc32c: crc::crc32c(data), s3_etag: Some(S3ETag::of_data(data)) }
    }
}

/// The condition a store write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition<'a> {
    /// The key must not exist (`If-None-Match: *`).
    Absent,
    /// The object must still be the one with this ETag (`If-Match`).
    Matches(&'a str),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// Quoted, as [`ObjectInfo::etag`].
    pub etag: String,
    pub last_modified: SystemTime,
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    /// Where the next page starts (its `start_after`) when the listing is truncated. A page may be
    /// short, even empty, and still truncated (tombstones are left out of pages).
    pub next_start_after: Option<String>,
}

/// How the caller should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// May succeed later (network, throttling, store down, credentials being rotated): retry
    /// with backoff.
    Transient,
    /// This request can never succeed as it is (an invalid or conflicting key, a permission error
    /// on the key's path, corrupt data): retrying cannot help.
    Permanent,
    /// A conditional write found the object changed since it was read: read again and decide.
    PreconditionFailed,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with a retryable error.
    #[error("object store request {op} {bucket}/{key} failed: {message}")]
    Request { op: &'static str, bucket: String, key: String, message: String },
    /// The store refused the request for a reason that retrying cannot change.
    #[error("object store refused {op} {bucket}/{key} (HTTP {status}): {message}")]
    Refused { op: &'static str, bucket: String, key: String, status: u16, message: String },
    /// A conditional write lost against a concurrent change of the object.
    #[error("object store {op} {bucket}/{key}: the object changed since it was read (precondition failed)")]
    PreconditionFailed { op: &'static str, bucket: String, key: String },
    /// Conditional writes kept losing against concurrent writers.
    #[error("object store {op} {bucket}/{key}: still contended after {attempts} conditional attempts")]
    Contended { op: &'static str, bucket: String, key: String, attempts: u32 },
    /// The fetched bytes do not match the checksum their writer recorded.
    #[error("object {bucket}/{key} is corrupt in the store: recorded crc32c {expected:08x}, data has {actual:08x}")]
    Corrupt { bucket: String, key: String, expected: u32, actual: u32 },
    /// A ranged read reaching past the end of the object (or starting at it).
    #[error("object {bucket}/{key}: range {start}..{end} is beyond its end (size {size:?})")]
    InvalidRange { bucket: String, key: String, start: u64, end: u64, size: Option<u64> },
    /// Part sizes of a file upload that do not add up to the file, or a part too small.
    #[error("upload of {bucket}/{key}: {message}")]
    InvalidParts { bucket: String, key: String, message: String },
    /// Local-directory store I/O failure.
    #[error("local store {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Request { .. } => "request",
            Self::Refused { .. } => "refused",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::Contended { .. } => "contended",
            Self::Corrupt { .. } => "corrupt",
            Self::InvalidRange { .. } => "invalid_range",
            Self::InvalidParts { .. } => "invalid_parts",
            Self::Io { source, .. } if io_class(source) == ErrorClass::Permanent => "io_permanent",
            Self::Io { .. } => "io",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Request { .. } | Self::Contended { .. } => ErrorClass::Transient,
            Self::Refused { .. } | Self::Corrupt { .. } | Self::InvalidRange { .. } | Self::InvalidParts { .. } => {
                ErrorClass::Permanent
            }
            Self::PreconditionFailed { .. } => ErrorClass::PreconditionFailed,
            Self::Io { source, .. } => io_class(source),
        }
    }
}

/// Local file-system errors tied to the key's own path (`x` and `x/y`, a name too long, a
/// directory without permission) never go away by retrying; anything else (a full or failing
/// disk) may.
fn io_class(e: &std::io::Error) -> ErrorClass {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotADirectory | IsADirectory | InvalidFilename | PermissionDenied | AlreadyExists | InvalidInput
        | ReadOnlyFilesystem => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The whole object, or `None` when it does not exist. Verifies the writer's checksum when
    /// the object carries one: a mismatch is [`StoreError::Corrupt`], never data.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError>;
    /// Exactly the bytes `range` of the object (fetching only them), or `None` when the object
    /// does not exist. With `if_match`, [`StoreError::PreconditionFailed`] when the object is no
    /// longer the one with that ETag; [`StoreError::InvalidRange`] when the range reaches past
    /// its end. The writer's checksum covers the whole object and is not checked here.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError>;
    /// The whole object when it has at most `max` bytes, else only its attributes; `None` when
    /// it does not exist. Verifies the writer's checksum as [`Store::get`] does. A store that can
    /// answer with one request overrides this: a cold read of a small object then costs one
    /// round trip across the WAN, not a HEAD and a GET.
    async fn get_small(&self, bucket: &str, key: &str, max: u64) -> Result<Option<SmallObject>, StoreError> {
        get_small_by_head(self, bucket, key, max).await
    }
    /// The object's first `len` bytes (all of it when it is no longer) and its attributes;
    /// `None` when it does not exist. When they are the whole object, the writer's checksum is
    /// verified as [`Store::get`] does. One request where the store allows, as
    /// [`Store::get_small`].
    async fn get_first(&self, bucket: &str, key: &str, len: u64) -> Result<Option<StoredRange>, StoreError> {
        get_first_by_head(self, bucket, key, len).await
    }
    /// Up to `len` bytes from `start` (fewer at the object's end) and its attributes, or `None`
    /// when it does not exist; pinned to `if_match` as [`Store::get_range`] is.
    /// [`StoreError::InvalidRange`] when `start` is past the end (byte 0 of an empty object is
    /// an empty read). Unlike `get_range` it needs no size beforehand, so where the store cuts a
    /// range at the end itself it is one request: a cold block read without a HEAD.
    async fn get_block(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        get_block_by_head(self, bucket, key, start, len, if_match).await
    }
    /// The object's size, ETag, version, attributes..., or `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    /// Writes the whole object with `meta` and `attrs`, only if `cond` still holds; otherwise
    /// [`StoreError::PreconditionFailed`]. Use [`put_unless_newer`] rather than calling this.
    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError>;
    /// Writes the file at `path` as one object, uploaded in parts of `part_sizes` (which add up
    /// to the file's size; one part is a plain conditional PUT), with `meta` and `attrs`, only if
    /// `cond` still holds when the object is published; otherwise
    /// [`StoreError::PreconditionFailed`] and nothing is published. Never holds more than one
    /// part in memory. Use [`put_file_unless_newer`] rather than calling this.
    #[allow(clippy::too_many_arguments)]
    async fn put_file_if(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        part_sizes: &[u64],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.put_file_at_if(bucket, key, path, 0, part_sizes, meta, attrs, cond).await
    }
    /// [`Store::put_file_if`] of the bytes of the file from `offset` to its end: the cache's
    /// block files start with their header.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(), StoreError>;
    /// Deletes the object only if it is still the one with `etag` (where the store supports
    /// conditional deletes, see the backend); deleting a missing object succeeds. Use
    /// [`delete_unless_newer`] rather than calling this.
    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError>;
    /// Whether [`Store::delete_if`] is refused when the object changed since its ETag was read.
    /// When it is not (MinIO ignores `If-Match` on DeleteObject, and an S3 endpoint may be MinIO),
    /// [`put_unless_newer`] watches for a delete that was already on its way (ADR 0001).
    fn deletes_are_conditional(&self) -> bool {
        false
    }
    /// Up to `max_keys` objects whose key starts with `prefix` and sorts after `start_after`, in
    /// key order; delete tombstones are never listed.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError>;
    /// Every object whose key starts with `prefix`, in key order (page by page).
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(bucket, prefix, after.as_deref(), LIST_PAGE_SIZE).await?;
            out.extend(page.objects);
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }
    /// Human-readable description for logs (never contains credentials).
    fn describe(&self) -> String;
}

pub type DynStore = Arc<dyn Store>;

/// Checks fetched bytes against the checksum their writer recorded (`None`: written by another
/// tool, accepted as it is). Returns the checksum to carry with the block.
pub(crate) fn verify_fetched(bucket: &str, key: &str, data: &[u8], recorded: Option<u32>) -> Result<u32, StoreError> {
    let actual = crc::crc32c(data);
    match recorded {
        Some(expected) if expected != actual => {
            Err(StoreError::Corrupt { bucket: bucket.to_owned(), key: key.to_owned(), expected, actual })
        }
        _ => Ok(actual),
    }
}

/// Checks that `part_sizes` cut a file of `file_len` bytes into parts S3 accepts: at least one,
/// adding up to the file, every part but the last at least [`MIN_PART_SIZE`] (one part may be
/// anything up to S3's single-PUT limit), at most [`MAX_PARTS`].
///
/// [`MIN_PART_SIZE`]: blockproxy_protocol::MIN_PART_SIZE
/// [`MAX_PARTS`]: blockproxy_protocol::MAX_PARTS
pub(crate) fn check_parts(bucket: &str, key: &str, file_len: u64, part_sizes: &[u64]) -> Result<(), StoreError> {
    use blockproxy_protocol::{MAX_PARTS, MIN_PART_SIZE};
    let sum: u64 = part_sizes.iter().sum();
    let problem = if part_sizes.is_empty() || part_sizes.len() > MAX_PARTS as usize {
        Some(format!("{} parts (1 to {MAX_PARTS} allowed)", part_sizes.len()))
    } else if sum != file_len {
        Some(format!("part sizes add up to {sum} bytes, the file has {file_len}"))
    } else if part_sizes.len() > 1 && part_sizes[..part_sizes.len() - 1].iter().any(|&p| p < MIN_PART_SIZE) {
        Some(format!("a part other than the last is below {MIN_PART_SIZE} bytes"))
    } else {
        None
    };
    match problem {
        Some(message) => Err(StoreError::InvalidParts { bucket: bucket.to_owned(), key: key.to_owned(), message }),
        None => Ok(()),
    }
}

/// Checks a requested range against the object's size.
pub(crate) fn check_range(bucket: &str, key: &str, range: &Range<u64>, size: u64) -> Result<(), StoreError> {
    if range.start > range.end || range.end > size || (range.start == size && size > 0) {
        return Err(StoreError::InvalidRange {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            start: range.start,
            end: range.end,
            size: Some(size),
        });
    }
    Ok(())
}

/// Leaves delete tombstones out of a listing.
pub(crate) fn without_tombstones(objects: Vec<ListedObject>) -> Vec<ListedObject> {
    objects.into_iter().filter(|o| !is_tombstone_key(&o.key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let io = |kind| StoreError::Io { op: "write", path: "p".into(), source: std::io::Error::from(kind) };
        assert_eq!(io(std::io::ErrorKind::NotADirectory).class(), ErrorClass::Permanent);
        assert_eq!(io(std::io::ErrorKind::PermissionDenied).class(), ErrorClass::Permanent);
        assert_eq!(io(std::io::ErrorKind::StorageFull).class(), ErrorClass::Transient);
        assert_eq!(io(std::io::ErrorKind::Interrupted).metric_label(), "io");
        assert_eq!(io(std::io::ErrorKind::IsADirectory).metric_label(), "io_permanent");
        let pf = StoreError::PreconditionFailed { op: "PUT", bucket: "b".into(), key: "k".into() };
        assert_eq!(pf.class(), ErrorClass::PreconditionFailed);
        let range = StoreError::InvalidRange { bucket: "b".into(), key: "k".into(), start: 5, end: 9, size: Some(6) };
        assert_eq!((range.class(), range.metric_label()), (ErrorClass::Permanent, "invalid_range"));
    }

    #[test]
    fn part_sizes_must_cut_the_file_as_s3_accepts() {
        let min = blockproxy_protocol::MIN_PART_SIZE;
        assert!(check_parts("b", "k", 0, &[0]).is_ok());
        assert!(check_parts("b", "k", 3, &[3]).is_ok());
        assert!(check_parts("b", "k", 2 * min + 1, &[min, min, 1]).is_ok());
        for (len, parts) in [(3, vec![]), (3, vec![2]), (4, vec![2, 2]), (min + 1, vec![min, 2])] {
            let err = check_parts("b", "k", len, &parts).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidParts { .. }) && err.class() == ErrorClass::Permanent,
                "{parts:?}"
            );
        }
    }

    #[test]
    fn ranges_must_lie_within_the_object() {
        assert!(check_range("b", "k", &(0..10), 10).is_ok());
        assert!(check_range("b", "k", &(9..10), 10).is_ok());
        assert!(check_range("b", "k", &(0..0), 0).is_ok(), "an empty range of an empty object");
        #[allow(clippy::reversed_empty_ranges)]
        for r in [0..11, 10..10, 10..12, 5..4] {
            assert!(matches!(check_range("b", "k", &r, 10), Err(StoreError::InvalidRange { .. })), "{r:?}");
        }
    }

    #[test]
    fn fetched_data_must_match_its_recorded_checksum() {
        let sum = crc::crc32c(b"data");
        assert_eq!(verify_fetched("b", "k", b"data", Some(sum)).unwrap(), sum);
        assert_eq!(verify_fetched("b", "k", b"data", None).unwrap(), sum, "foreign objects are accepted");
        let err = verify_fetched("b", "k", b"dat4", Some(sum)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }) && err.class() == ErrorClass::Permanent);
    }
}
