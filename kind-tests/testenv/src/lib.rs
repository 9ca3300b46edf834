//! Starts the real components blockproxy's tests run against, each on free loopback ports with
//! temporary folders of its own, and stops them when dropped (also when the test panics):
//!
//! - [`ControlPlane`]: etcd + kube-apiserver (optionally kube-controller-manager and
//!   kube-scheduler), with an admin client, ServiceAccount clients and CRD installation;
//! - [`Minio`]: an S3 server with a bucket and an `aws-sdk-s3` client;
//! - [`Azurite`] and [`FakeGcs`]: the Azure Blob and GCS emulators, each with a bucket;
//! - [`Toxiproxy`]: latency, bandwidth limits and cuts between two endpoints;
//! - [`Helm`]: the helm binary, pointed at a control plane;
//! - [`Cluster`]: a real multi-node cluster (kubelets, containerd, CNI, kube-proxy, CoreDNS) in
//!   private namespaces, or the one `KUBECONFIG` names.
//! - [`Blockproxy`]: the `blockproxy` binary itself (built by cargo, its path given by the caller).
//!
//! The binaries come from `hack/tools.sh` (`make tools`), see [`tools`]. Each component logs to
//! `target/testenv-logs/<test-name>-<pid>-<n>/`; a failing test prints that folder and the tail of
//! its logs.

pub mod blockproxy;
pub mod certs;
pub mod clouds;
pub mod cluster;
pub mod control_plane;
pub mod eventually;
pub mod helm;
pub mod logs;
pub mod minio;
pub mod ports;
pub mod process;
pub mod tools;
pub mod toxiproxy;

pub use blockproxy::{Blockproxy, BlockproxyCommand, Tls};
pub use clouds::{Azurite, FakeGcs, create_gcs_bucket};
pub use cluster::{Cluster, ClusterBuilder};
pub use control_plane::{ControlPlane, ControlPlaneBuilder};
pub use eventually::eventually;
pub use helm::{Helm, HelmOutput};
pub use minio::Minio;
pub use tools::{Tool, tool_path};
pub use toxiproxy::{Toxiproxy, ToxiproxyApi};

#[doc(hidden)]
pub use anyhow;

/// Installs rustls' ring crypto provider as the process default (once; later calls do nothing).
///
/// The dependency graph enables both ring and aws-lc-rs in rustls, so rustls cannot pick a
/// default by itself, and kube's TLS setup needs one. Every component calls this on start.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
