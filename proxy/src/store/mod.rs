//! Object-store backends behind one trait. The store knows nothing of the cache: it moves whole
//! blocks, each tagged with the write version that produced it (see the consistency ADR).

mod local;
mod s3;

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
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transient or unknown failure: retry with backoff.
    #[error("object store request {op} {bucket}/{key} failed: {message}")]
    Request { op: &'static str, bucket: String, key: String, message: String },
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
            Self::Io { .. } => "io",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The block, or `None` when the object does not exist.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError>;
    /// The version of the stored object, or `None` when it does not exist.
    async fn head_version(&self, bucket: &str, key: &str) -> Result<Option<u64>, StoreError>;
    /// Writes the whole block, recording `version` with it.
    async fn put(&self, bucket: &str, key: &str, data: Bytes, version: u64) -> Result<(), StoreError>;
    /// Deletes the object; deleting a missing object succeeds.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError>;
    /// Human-readable description for logs (never contains credentials).
    fn describe(&self) -> String;
}

pub type DynStore = Arc<dyn Store>;
