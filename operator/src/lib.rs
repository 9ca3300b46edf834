//! blockproxy's control plane: the `ProxyGroup` and `VolumeProxyGroup` custom resources and their
//! reconcilers. Reconcilers are pure planning functions (`proxygroup::build`, `volume`) plus one
//! apply/prune mechanism (`apply`).

pub mod apply;
pub mod cache;
pub mod crd;
pub mod meta;
pub mod proxygroup;
pub mod volume;

/// Every way a reconcile step can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Get {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating status of {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serialising an object: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("issuing TLS material: {0}")]
    Tls(#[source] rcgen::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("waiting for {0} proxies to drain")]
    DrainPending(usize),
    #[error("cannot drain: {0}")]
    DrainBlocked(String),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("a watch of the cluster stopped before its first LIST completed")]
    CacheGone,
}

impl Error {
    /// The API error inside, if any.
    fn kube_error(&self) -> Option<&kube::Error> {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::Apply { source, .. }
            | Self::Delete { source, .. }
            | Self::List { source, .. }
            | Self::Get { source, .. }
            | Self::Status { source, .. } => Some(source),
            Self::Finalizer(f) => match f.as_ref() {
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => Some(e),
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.kube_error(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The API server refused for lack of permission: an RBAC bug, not a transient error.
    pub fn is_forbidden(&self) -> bool {
        matches!(self.kube_error(), Some(kube::Error::Api(s)) if s.code == 403)
    }

    /// A stable label for metrics and Events.
    pub fn metric_label(&self) -> &'static str {
        if self.is_forbidden() {
            return "forbidden";
        }
        match self {
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::List { .. } => "list",
            Self::Get { .. } => "get",
            Self::Status { .. } => "status",
            Self::Serialize(_) => "serialize",
            Self::Tls(_) => "tls",
            Self::Finalizer(_) => "finalizer",
            Self::DrainPending(_) => "drain_pending",
            Self::DrainBlocked(_) => "drain_blocked",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::CacheGone => "cache_gone",
        }
    }
}

pub mod cli;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod run;
pub mod sidecar_resources;
pub mod tls;
pub mod webhook;
