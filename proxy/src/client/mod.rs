//! The client half of the data plane, used by the `blockproxy-mount` sidecar:
//!
//! - [`discovery`]: the discovery file, re-read when it changes (last good kept when malformed);
//! - [`probe`]: RTT probes of every proxy of every group, feeding [`selection`] (hysteresis);
//! - [`rendezvous`]: the pure weighted HRW ranking of a group's proxies for a block;
//! - [`transport`]: pooled HTTP(S) to the proxies, trusting each group's CA bundle;
//! - [`version`]: the monotonic write-version clock;
//! - this module: [`Client`], which routes each block request to its owner in the chosen group
//!   and fails over to the next proxy, the next group, and finally the object store.
//!
//! The consistency contract it keeps is docs/adr/0002-consistency-contract.md.

pub mod discovery;
pub mod info;
pub mod metrics;
pub mod probe;
pub mod recent;
pub mod rendezvous;
pub mod selection;
pub mod transport;
pub mod version;

mod arriving;
mod calls;
mod chunks;
mod direct;
mod listing;
mod objects;
mod ops;
mod read_ahead;
mod small;

pub use arriving::{Feed, PutData, arriving};
pub use chunks::Chunks;
pub use info::ObjectInfo;
pub use listing::{ListEntry, ListPage};
pub use objects::{ObjectRead, Upload};
pub use read_ahead::PIECE as READ_PIECE;
pub use transport::{Fetched, Written};

use crate::budget::QueuedBudget;
use crate::protocol::{DiscoveryDocument, DiscoveryEndpoint, VolumeId};
use crate::store::{DynStore, StoreError};
use metrics::ClientMetrics;
use selection::{GroupRtt, Hysteresis, Selector};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use version::VersionClock;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("discovery file {path}: {reason}")]
    Discovery { path: String, reason: String },
    #[error("TLS client set-up failed: {reason}")]
    Tls { reason: String },
    #[error("{message}")]
    Rejected { status: u16, message: String },
    #[error("range not satisfiable: {0}")]
    RangeNotSatisfiable(String),
    /// The object changed while it was being read (its blocks no longer match the version the
    /// read started with); a new read sees the new version. Never served as a mix.
    #[error("{key} changed while it was being read; read it again")]
    Changed { key: String },
    /// The multipart upload does not exist (finished, aborted, expired, or another key's).
    #[error("no such upload: {0}")]
    NoSuchUpload(String),
    #[error(
        "{op} failed: no proxy of any group answered after {attempts} attempts, and there are no direct object-store \
         credentials to fall back on; last error: {last}"
    )]
    Unreachable { op: &'static str, attempts: u32, last: String },
    #[error("object store: {0}")]
    Store(#[source] StoreError),
    /// A write was overtaken by a newer version of the block, and retrying with newer versions
    /// kept losing (another writer keeps writing the same key).
    #[error("the write was not applied: the block holds a newer version {current}")]
    Superseded { current: u64 },
    /// Every reachable copy is older than this client's own last write of the key: serving one
    /// would go back in time, so the read fails until the newer copy is reachable again.
    #[error(
        "{key}: every reachable copy is older than this client's last write (version {want}); the newer copy is on \
         an unreachable proxy"
    )]
    Stale { key: String, want: u64 },
}

impl ClientError {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Discovery { .. } => "discovery",
            Self::Tls { .. } => "tls",
            Self::Rejected { .. } => "rejected",
            Self::RangeNotSatisfiable(_) => "range",
            Self::Changed { .. } => "changed",
            Self::NoSuchUpload(_) => "no_such_upload",
            Self::Unreachable { .. } => "unreachable",
            Self::Store(_) => "store",
            Self::Superseded { .. } => "superseded",
            Self::Stale { .. } => "stale",
        }
    }
}

/// Client settings. [`ClientConfig::new`] gives production defaults; tests shorten the intervals.
#[derive(Clone)]
pub struct ClientConfig {
    pub volume: VolumeId,
    pub discovery_file: PathBuf,
    /// The volume's bearer token.
    pub token: String,
    /// How often every proxy is probed.
    pub probe_interval: Duration,
    /// Pings per proxy per round; the proxy's RTT is their median.
    pub probe_samples: usize,
    pub probe_timeout: Duration,
    pub connect_timeout: Duration,
    /// Whole-request timeout of block operations.
    pub request_timeout: Duration,
    pub hysteresis: Hysteresis,
    /// How long a proxy that came back (or was added) has its reads checked against the next
    /// proxy in rendezvous order, the other groups and the store. See the consistency ADR.
    pub recovery_window: Duration,
    /// Passes over all targets before giving up.
    pub retries: u32,
    /// First back-off between passes (doubles each pass).
    pub retry_backoff: Duration,
    /// How often the discovery file is checked for changes.
    pub discovery_interval: Duration,
    /// Direct object-store access for the last-resort fallback and for listings. Bucket and
    /// prefix come from the discovery document.
    pub direct_store: Option<DynStore>,
    /// How many keys this client remembers its last write of, for read-your-writes (ADR 0002).
    pub recent_writes: usize,
    /// The most bytes all reads together hold in blocks fetched ahead of their readers
    /// ([`read_ahead`], ADR 0016).
    pub read_ahead_bytes: u64,
    /// The most bytes all writes together hold while their bodies are read and sent on
    /// ([`Client::write_budget`]).
    pub write_buffer_bytes: u64,
}

pub use blockproxy_protocol::{DEFAULT_READ_AHEAD_BYTES, DEFAULT_WRITE_BUFFER_BYTES};

impl ClientConfig {
    pub fn new(volume: VolumeId, discovery_file: PathBuf, token: String) -> Self {
        Self {
            volume,
            discovery_file,
            token,
            probe_interval: Duration::from_secs(2),
            probe_samples: 3,
            probe_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(120),
            hysteresis: Hysteresis::default(),
            recovery_window: Duration::from_secs(120),
            retries: 3,
            retry_backoff: Duration::from_millis(200),
            discovery_interval: Duration::from_secs(1),
            direct_store: None,
            recent_writes: 100_000,
            read_ahead_bytes: DEFAULT_READ_AHEAD_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
        }
    }
}

struct Group {
    name: String,
    scheme: String,
    ca_bundle: Option<String>,
    server_name: Option<String>,
    http: reqwest::Client,
    endpoints: Vec<DiscoveryEndpoint>,
}

struct Topology {
    doc: Arc<DiscoveryDocument>,
    groups: Vec<Group>,
}

#[derive(Debug, Default, Clone)]
struct ProxyHealth {
    down_since: Option<Instant>,
    recovering_since: Option<Instant>,
    rtt: Option<Duration>,
    last_error: Option<String>,
}

type ProxyId = (String, String);

struct Inner {
    cfg: ClientConfig,
    topology: RwLock<Arc<Topology>>,
    health: Mutex<HashMap<ProxyId, ProxyHealth>>,
    selector: Mutex<Selector>,
    last_round: Mutex<Vec<GroupRtt>>,
    rounds: std::sync::atomic::AtomicU64,
    clock: VersionClock,
    /// This client's last write per key, for read-your-writes.
    recent: recent::RecentWrites,
    /// Keys whose reads skip the HEAD ([`small`]).
    small: small::SmallKeys,
    read_budget: Arc<QueuedBudget>,
    write_budget: Arc<QueuedBudget>,
    metrics: ClientMetrics,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Routes a volume's block requests to proxies. Cheap to clone; background tasks (discovery
/// watcher, prober) stop when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

/// Current view, for `/status`, readiness and tests.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub volume: String,
    pub chosen_group: Option<String>,
    pub probe_rounds: u64,
    pub direct_store: bool,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    pub name: String,
    pub rtt_ms: Option<f64>,
    pub proxies: Vec<ProxyStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub address: String,
    pub up: bool,
    /// Published as draining: read from, never written to (ADR 0002).
    pub draining: bool,
    pub recovering: bool,
    pub rtt_ms: Option<f64>,
    pub last_error: Option<String>,
}

impl Client {
    /// Loads the discovery file (it must be valid at start), runs a first probe round so the
    /// first requests already go to the best group, and starts the watcher and the prober.
    pub async fn start(cfg: ClientConfig) -> Result<Self, ClientError> {
        let doc = discovery::load(&cfg.discovery_file, &cfg.volume)?;
        let topology = build_topology(Arc::new(doc.clone()), None, cfg.connect_timeout)?;
        let metrics = ClientMetrics::new();
        let inner = Arc::new(Inner {
            read_budget: QueuedBudget::new(cfg.read_ahead_bytes, metrics.read_ahead_waits_total.clone()),
            write_budget: QueuedBudget::new(cfg.write_buffer_bytes, metrics.write_buffer_waits_total.clone()),
            topology: RwLock::new(Arc::new(topology)),
            health: Mutex::default(),
            selector: Mutex::new(Selector::new(cfg.hysteresis)),
            last_round: Mutex::default(),
            rounds: Default::default(),
            clock: VersionClock::default(),
            recent: recent::RecentWrites::new(cfg.recent_writes),
            small: small::SmallKeys::default(),
            metrics,
            cfg,
        });
        tracing::info!(
            volume = %inner.cfg.volume,
            groups = doc.groups.len(),
            direct_store = inner.cfg.direct_store.is_some(),
            "client starting"
        );
        inner.probe_round().await;

        let (tx, mut rx) = watch::channel(Arc::new(doc));
        let errors_inner = Arc::clone(&inner);
        let watcher = tokio::spawn(discovery::watch_file(
            inner.cfg.discovery_file.clone(),
            inner.cfg.volume.clone(),
            inner.cfg.discovery_interval,
            tx,
            move |_| errors_inner.metrics.discovery_errors_total.inc(),
        ));
        let apply_inner = Arc::clone(&inner);
        let applier = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let doc = Arc::clone(&rx.borrow_and_update());
                if let Err(e) = apply_inner.apply_document(doc) {
                    tracing::warn!(error = %e, "cannot use the new discovery document; keeping the last good one");
                }
            }
        });
        let prober_inner = Arc::clone(&inner);
        let prober = tokio::spawn(async move {
            let mut tick = tokio::time::interval(prober_inner.cfg.probe_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                prober_inner.probe_round().await;
            }
        });
        Ok(Self { inner, _tasks: Arc::new(Tasks(vec![watcher, applier, prober])) })
    }

    pub fn volume(&self) -> &VolumeId {
        &self.inner.cfg.volume
    }

    pub fn metrics(&self) -> &ClientMetrics {
        // Read from the budget itself: a permit handed to a waiter that then went ahead without
        // it (its reader came to wait for it) goes back with no code of ours running.
        self.inner.metrics.read_ahead_bytes.set(self.inner.read_budget.in_use() as i64);
        self.inner.metrics.write_buffer_bytes.set(self.inner.write_budget.in_use() as i64);
        &self.inner.metrics
    }

    /// The bound on what writes hold in memory: a caller that buffers a body before handing it
    /// to [`Client::put_object`] or [`Client::upload_part`] takes its bytes here first and keeps
    /// the permit until the write is answered.
    pub fn write_budget(&self) -> &Arc<QueuedBudget> {
        &self.inner.write_budget
    }

    /// The longest key the volume's store prefix leaves room for.
    pub fn max_key_len(&self) -> usize {
        self.inner.topology().doc.store.max_key_len()
    }

    /// True once a group is chosen, or direct store access is possible.
    pub fn ready(&self) -> bool {
        self.inner.selector_current().is_some() || self.inner.cfg.direct_store.is_some()
    }

    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Runs one probe round now (tests and readiness use it; the prober runs on its own).
    pub async fn probe_now(&self) {
        self.inner.probe_round().await;
    }
}

fn build_topology(
    doc: Arc<DiscoveryDocument>,
    previous: Option<&Topology>,
    connect_timeout: Duration,
) -> Result<Topology, ClientError> {
    let mut groups = Vec::with_capacity(doc.groups.len());
    for g in &doc.groups {
        let reuse = previous
            .and_then(|p| {
                p.groups
                    .iter()
                    .find(|o| o.scheme == g.scheme && o.ca_bundle == g.ca_bundle && o.server_name == g.server_name)
            })
            .map(|o| o.http.clone());
        let http = match reuse {
            Some(h) => h,
            None => transport::http_client(g.ca_bundle.as_deref(), g.server_name.as_deref(), connect_timeout)?,
        };
        groups.push(Group {
            name: g.name.clone(),
            scheme: g.scheme.clone(),
            ca_bundle: g.ca_bundle.clone(),
            server_name: g.server_name.clone(),
            http,
            endpoints: g.endpoints.clone(),
        });
    }
    Ok(Topology { doc, groups })
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

impl Inner {
    fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn selector_current(&self) -> Option<String> {
        self.selector.lock().unwrap_or_else(|e| e.into_inner()).current().map(str::to_owned)
    }

    fn apply_document(&self, doc: Arc<DiscoveryDocument>) -> Result<(), ClientError> {
        let old = self.topology();
        let new = build_topology(doc, Some(&old), self.cfg.connect_timeout)?;
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = std::collections::HashSet::new();
        for g in &new.groups {
            for e in &g.endpoints {
                let id = (g.name.clone(), e.address.clone());
                let known =
                    old.groups.iter().any(|o| o.name == g.name && o.endpoints.iter().any(|oe| oe.address == e.address));
                if !known {
                    tracing::info!(group = %g.name, proxy = %e.address, "proxy added; checking its reads against the previous owner for the recovery window");
                    health.entry(id.clone()).or_default().recovering_since = Some(Instant::now());
                }
                keep.insert(id);
            }
        }
        health.retain(|id, _| keep.contains(id));
        drop(health);
        *self.topology.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }

    fn proxy_call<'a>(&'a self, group: &'a Group, address: &str, timeout: Duration) -> transport::ProxyCall<'a> {
        transport::ProxyCall {
            http: &group.http,
            base: format!("{}://{}", group.scheme, address),
            token: &self.cfg.token,
            volume: &self.cfg.volume,
            timeout,
        }
    }

    fn is_down(&self, group: &str, address: &str) -> bool {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.get(&(group.to_owned(), address.to_owned())).is_some_and(|p| p.down_since.is_some())
    }

    fn is_recovering(&self, group: &str, address: &str) -> bool {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.get(&(group.to_owned(), address.to_owned()))
            .and_then(|p| p.recovering_since)
            .is_some_and(|t| t.elapsed() < self.cfg.recovery_window)
    }

    fn mark_down(&self, group: &str, address: &str, why: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let p = h.entry((group.to_owned(), address.to_owned())).or_default();
        p.last_error = Some(why.to_owned());
        if p.down_since.is_none() {
            p.down_since = Some(Instant::now());
            p.recovering_since = None;
            tracing::warn!(
                group,
                proxy = address,
                error = why,
                "proxy marked down; its blocks go to the next proxy in rendezvous order"
            );
            self.metrics.proxy_up.with_label_values(&[group, address]).set(0);
        }
    }

    fn status(&self) -> Status {
        let topo = self.topology();
        let round = self.last_round.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Status {
            volume: self.cfg.volume.to_string(),
            chosen_group: self.selector_current(),
            probe_rounds: self.rounds.load(std::sync::atomic::Ordering::SeqCst),
            direct_store: self.cfg.direct_store.is_some(),
            groups: topo
                .groups
                .iter()
                .map(|g| GroupStatus {
                    name: g.name.clone(),
                    rtt_ms: round.iter().find(|r| r.name == g.name).and_then(|r| r.rtt).map(ms),
                    proxies: g
                        .endpoints
                        .iter()
                        .map(|e| {
                            let h = health.get(&(g.name.clone(), e.address.clone())).cloned().unwrap_or_default();
                            ProxyStatus {
                                address: e.address.clone(),
                                up: h.down_since.is_none(),
                                draining: e.draining,
                                recovering: h.recovering_since.is_some_and(|t| t.elapsed() < self.cfg.recovery_window),
                                rtt_ms: h.rtt.map(ms),
                                last_error: h.last_error,
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
