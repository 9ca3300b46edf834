//! Shared state of a running proxy.

use super::clock::VolumeClocks;
use super::gate::WriteGate;
use super::metacache::MetaCache;
use super::reads::StripeResult;
use super::volumes::Volumes;
use crate::budget::ByteBudget;
use crate::cache::flight::SingleFlight;
use crate::cache::staging::Staging;
use crate::cache::{BlockId, Cache, FetchKey};
use crate::metrics::Metrics;
use crate::store::{DynStore, SmallObject, StoredRange};
use crate::writeback::Writeback;
use std::sync::Arc;
use std::time::Duration;

pub type FetchResult = Result<Option<Arc<SmallObject>>, Arc<str>>;
pub type FirstResult = Result<Option<Arc<StoredRange>>, Arc<str>>;

pub struct AppState {
    pub volumes: Arc<Volumes>,
    pub cache: Arc<Cache>,
    pub store: DynStore,
    pub writeback: Arc<Writeback>,
    pub metrics: Arc<Metrics>,
    pub fetches: SingleFlight<FetchKey, FetchResult>,
    /// Block reads from the store, by block and the ETag they are pinned to.
    pub stripe_fetches: SingleFlight<(FetchKey, String), StripeResult>,
    /// Reads of an object's first bytes with its attributes, keyed by how many bytes.
    pub first_fetches: SingleFlight<(FetchKey, u64), FirstResult>,
    /// Revalidations started ahead of a clean block's TTL, one per block at a time.
    pub revalidations: SingleFlight<BlockId, ()>,
    /// Attributes of clean objects, as the store last answered a HEAD.
    pub meta: MetaCache,
    /// Multipart uploads being staged on this proxy.
    pub staging: Staging,
    pub bops: tokio::sync::Semaphore,
    /// Request bytes held in memory at once.
    pub budget: ByteBudget,
    pub max_block_size: u64,
    /// How long a clean cached block is served before the store is asked whether it changed.
    pub metadata_ttl: Duration,
    /// A request body that sends nothing for this long is abandoned.
    pub body_idle_timeout: Duration,
    /// `--no-writeback`: write through to the store before acknowledging.
    pub write_through: bool,
    pub admin_token: Option<String>,
    /// Closed by a drain or by SIGTERM; counts the writes still running.
    pub gate: Arc<WriteGate>,
    pub clocks: VolumeClocks,
}
