//! Admin API documents: drain progress and the dirty-key listing.

use serde::{Deserialize, Serialize};

/// Answer of `GET|POST /v1/admin/drain`. `done` is true once a drain was requested, no write is
/// still running (none can be acknowledged any more), and no dirty block is left: the proxy can
/// then be removed without losing an acknowledged write.
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
}

/// Answer of `GET /v1/volumes/{volume}/objects?prefix=`: the objects the store holds under the
/// volume's prefix (keys relative to it), as the proxy lists them for clients that have no store
/// credentials. Unflushed writes are not included: merge with [`DirtyKeys`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreObjects {
    pub objects: Vec<StoreObject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreObject {
    pub key: String,
    pub size: u64,
}
