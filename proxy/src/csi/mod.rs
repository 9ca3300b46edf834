//! `blockproxy-csi`: the privileged CSI node plugin of issue 13 (ADR 0008). For a Pod's inline
//! volume (`csi: {driver: blockproxy.io, volumeAttributes: {volumeID: ...}}`) it mounts
//! `/dev/fuse` at the volume's target path and hands the descriptor to the Pod's unprivileged
//! `blockproxy-mount` sidecar, which serves the filesystem on it.
//!
//! - [`node`]: the CSI Identity and Node services the kubelet calls;
//! - [`registration`]: the kubelet's plugin registration service (no node-driver-registrar);
//! - [`authority_shim`]: the relay in front of it that makes the kubelet's requests acceptable to h2;
//! - [`fuse_mount`]: mount(2) and umount(2) of the FUSE connection;
//! - [`handover`]: the descriptor over a Unix socket (`SCM_RIGHTS`), both sides.

pub mod authority_shim;
pub mod fuse_mount;
pub mod handover;
pub mod node;
pub mod registration;

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The generated gRPC code of proto/csi.proto and proto/pluginregistration.proto.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub mod csi {
        tonic::include_proto!("csi.v1");
    }
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

pub use blockproxy_protocol::{
    CSI_DRIVER_NAME as DRIVER_NAME, CSI_HANDOVER_MOUNT_PATH as HANDOVER_MOUNT_PATH,
    CSI_HANDOVER_VOLUME as HANDOVER_VOLUME, CSI_VOLUME_ID_ATTRIBUTE as VOLUME_ID_ATTRIBUTE,
    csi_socket_name as socket_name,
};
/// The kubelet's pod information (CSIDriver `podInfoOnMount: true`).
const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

#[derive(Debug, Clone, Args)]
pub struct CsiArgs {
    /// The CSI endpoint the kubelet calls (Identity and Node services).
    #[arg(long, env = "BLOCKPROXY_CSI_SOCKET", default_value = "/var/lib/kubelet/plugins/blockproxy.io/csi.sock")]
    pub csi_socket: PathBuf,

    /// The kubelet plugin registration socket to create (the kubelet watches its directory and
    /// then calls the CSI endpoint).
    #[arg(
        long,
        env = "BLOCKPROXY_CSI_REGISTRATION_SOCKET",
        default_value = "/var/lib/kubelet/plugins_registry/blockproxy.io-reg.sock"
    )]
    pub registration_socket: PathBuf,

    /// Do not create the registration socket (a node-driver-registrar registers the plugin).
    #[arg(long, env = "BLOCKPROXY_CSI_NO_REGISTRATION")]
    pub no_registration: bool,

    /// This node's name, reported to the kubelet (NodeGetInfo).
    #[arg(long, env = "NODE_NAME")]
    pub node_id: String,

    /// The kubelet's root directory, as this container sees it (mounted with Bidirectional
    /// propagation): the pods' hand-over emptyDirs are under `<dir>/pods/<uid>/volumes/`.
    #[arg(long, env = "BLOCKPROXY_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,

    /// How long a mounted descriptor waits for the Pod's sidecar to take it; then the volume is
    /// unmounted (the app sees an empty, dead directory: ENOTCONN).
    #[arg(long, env = "BLOCKPROXY_CSI_HANDOVER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10m")]
    pub handover_timeout: Duration,
}

/// Serves the CSI endpoint (and the registration socket) until `shutdown` resolves.
pub async fn run(
    args: CsiArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let csi = listen(&args.csi_socket)?;
    let node = node::NodeService::new(args.node_id.clone(), args.kubelet_dir.clone(), args.handover_timeout);
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let csi_server = tonic::transport::Server::builder()
        .add_service(proto::csi::identity_server::IdentityServer::new(node::IdentityService))
        .add_service(proto::csi::node_server::NodeServer::new(node))
        .serve_with_incoming_shutdown(incoming(csi), shutdown.clone());
    tracing::info!(endpoint = %args.csi_socket.display(), node = %args.node_id, "CSI node plugin serving");
    if args.no_registration {
        return csi_server.await.context("the CSI endpoint");
    }
    let reg = listen(&args.registration_socket)?;
    let reg_server = tonic::transport::Server::builder()
        .add_service(proto::registration::registration_server::RegistrationServer::new(
            registration::RegistrationService::new(args.csi_socket.clone()),
        ))
        .serve_with_incoming_shutdown(incoming_through_shim(reg), shutdown);
    tracing::info!(socket = %args.registration_socket.display(), "registering with the kubelet");
    let (a, b) = tokio::join!(csi_server, reg_server);
    a.context("the CSI endpoint")?;
    b.context("the registration socket")?;
    let _ = std::fs::remove_file(&args.registration_socket);
    Ok(())
}

/// Binds a Unix socket, replacing a stale one left by a previous process.
fn listen(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

fn incoming(
    l: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>> + Send + 'static {
    futures::stream::unfold(l, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

/// Accepts the kubelet's registration connections and hands tonic the far end of an in-process
/// pipe, with [`authority_shim::relay`] rewriting `:authority` in between (ADR 0008).
fn incoming_through_shim(
    l: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::io::DuplexStream>> + Send + 'static {
    futures::stream::unfold(l, |l| async move {
        let next = l.accept().await.map(|(kubelet, _)| {
            let (ours, tonic_side) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                if let Err(e) = authority_shim::relay(kubelet, ours).await {
                    tracing::warn!(error = %format!("{e:#}"), "registration connection ended with an error");
                }
            });
            tonic_side
        });
        Some((next, l))
    })
}
