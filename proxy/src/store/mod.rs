//! Object-store backends behind one trait. The store knows nothing of the cache: it moves whole
//! blocks, each tagged with the write version that produced it and the CRC32C its writer computed
//! (see the consistency ADR).
//!
//! Writes that must not overtake a newer version go through [`put_unless_newer`] and
//! [`delete_unless_newer`] ([`conditional`]), the one place that decides, from what the store
//! holds, whether a version may be written; the write itself is conditional at the store
//! ([`Precondition`]), so a concurrent writer in between makes it fail instead of being overwritten.

mod conditional;
mod local;
#[cfg(test)]
pub(crate) mod memory;
mod s3;

pub use conditional::{Conditional, TOMBSTONE_PREFIX, delete_unless_newer, is_tombstone_key, put_unless_newer};
pub use local::LocalDirStore;
pub use s3::{S3Store, S3StoreConfig};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// A block as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredBlock {
    pub data: Bytes,
    /// The write version recorded with the object; 0 for objects written by something else.
    pub version: u64,
    /// The CRC32C of `data`: the writer's, verified against the bytes, or computed on fetch for an
    /// object written by another tool.
    pub crc32c: u32,
}

/// What a writer records with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    pub version: u64,
    pub crc32c: u32,
}

impl ObjectMeta {
    pub fn for_data(version: u64, data: &[u8]) -> Self {
        Self { version, crc32c: crc32c::crc32c(data) }
    }
}

/// What the store holds under a key, as far as ordering is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectState {
    /// 0 for objects written by something else.
    pub version: u64,
    /// Identifies this exact object (the S3 ETag; the local store's own token). A conditional
    /// write names it to fail when the object changed since it was read.
    pub etag: String,
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
            Self::Io { source, .. } if io_class(source) == ErrorClass::Permanent => "io_permanent",
            Self::Io { .. } => "io",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Request { .. } | Self::Contended { .. } => ErrorClass::Transient,
            Self::Refused { .. } | Self::Corrupt { .. } => ErrorClass::Permanent,
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
    /// The block, or `None` when the object does not exist. Verifies the writer's checksum when
    /// the object carries one: a mismatch is [`StoreError::Corrupt`], never data.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError>;
    /// The object's version and ETag, or `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectState>, StoreError>;
    /// Writes the whole block with `meta`, only if `cond` still holds; otherwise
    /// [`StoreError::PreconditionFailed`]. Use [`put_unless_newer`] rather than calling this.
    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError>;
    /// Deletes the object only if it is still the one with `etag` (where the store supports
    /// conditional deletes, see the backend); deleting a missing object succeeds. Use
    /// [`delete_unless_newer`] rather than calling this.
    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError>;
    /// Human-readable description for logs (never contains credentials).
    fn describe(&self) -> String;
}

pub type DynStore = Arc<dyn Store>;

/// Checks fetched bytes against the checksum their writer recorded (`None`: written by another
/// tool, accepted as it is). Returns the checksum to carry with the block.
pub(crate) fn verify_fetched(bucket: &str, key: &str, data: &[u8], recorded: Option<u32>) -> Result<u32, StoreError> {
    let actual = crc32c::crc32c(data);
    match recorded {
        Some(expected) if expected != actual => {
            Err(StoreError::Corrupt { bucket: bucket.to_owned(), key: key.to_owned(), expected, actual })
        }
        _ => Ok(actual),
    }
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
    }

    #[test]
    fn fetched_data_must_match_its_recorded_checksum() {
        let sum = crc32c::crc32c(b"data");
        assert_eq!(verify_fetched("b", "k", b"data", Some(sum)).unwrap(), sum);
        assert_eq!(verify_fetched("b", "k", b"data", None).unwrap(), sum, "foreign objects are accepted");
        let err = verify_fetched("b", "k", b"dat4", Some(sum)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }) && err.class() == ErrorClass::Permanent);
    }
}
