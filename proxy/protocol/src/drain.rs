//! Admin API documents: drain progress and the dirty-key listing.

use serde::{Deserialize, Serialize};

/// Answer of `GET|POST /v1/admin/drain` (`GET` reports without starting a drain: the operator
/// reads every proxy's cache figures from it). `done` is true once a drain was requested, no write is
/// still running (none can be acknowledged any more), no dirty block is left, and none is
/// quarantined: the proxy can then be removed without losing an acknowledged write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    pub draining: bool,
    /// Writes that were let in before the drain started and are not answered yet. Each is either
    /// refused or becomes a dirty block before it is acknowledged.
    #[serde(default)]
    pub in_flight_writes: u64,
    pub dirty_blocks: u64,
    pub dirty_bytes: u64,
    pub done: bool,
    /// Dirty blocks that can never be flushed as they are, moved to the cache's `quarantine/`
    /// folder. They exist only on this proxy's disk, so they hold up `done` until an operator has
    /// recovered them (README, "Recovering quarantined blocks").
    #[serde(default)]
    pub quarantined_blocks: u64,
    /// Bytes of the cache disk in use (clean, dirty and staged upload parts), and the quota they
    /// may reach: the operator shows them per proxy in the group's status.
    #[serde(default)]
    pub cache_bytes: u64,
    #[serde(default)]
    pub quota_bytes: u64,
    /// The newest flush error since the last successful flush (why a drain stalls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_flush_error: Option<String>,
}

/// Answer of `GET /v1/volumes/{volume}/dirty?prefix=`: keys acknowledged but not yet in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirtyKeys {
    pub keys: Vec<DirtyKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirtyKey {
    pub key: String,
    pub size: u64,
    /// True for a pending delete (the key will disappear from the store).
    pub deleted: bool,
    pub version: u64,
    /// The version's S3 ETag, quoted (absent for deletes and blocks written before ETags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// When the version was written, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_ms: Option<u64>,
}

/// Answer of `GET /v1/volumes/{volume}/objects?prefix=`: the objects the store holds under the
/// volume's prefix (keys relative to it), as the proxy lists them for clients that have no store
/// credentials. Unflushed writes are not included: merge with [`DirtyKeys`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreObjects {
    pub objects: Vec<StoreObject>,
    /// Set when the listing was cut at `maxKeys`: pass it as `startAfter` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreObject {
    pub key: String,
    pub size: u64,
    /// The store's ETag, quoted as S3 lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The store's Last-Modified, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_ms: Option<u64>,
}
