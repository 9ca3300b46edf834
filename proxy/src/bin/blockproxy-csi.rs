//! `blockproxy-csi`: the CSI node plugin (a privileged DaemonSet). See `blockproxy::csi`.

use blockproxy::config::LogFormat;
use blockproxy::csi::CsiArgs;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "blockproxy-csi",
    version,
    about = "CSI node plugin for blockproxy volumes: mounts /dev/fuse for a Pod's inline volume and hands the descriptor to the Pod's unprivileged blockproxy-mount sidecar",
    long_about = "CSI node plugin for blockproxy volumes (driver blockproxy.io, ephemeral inline volumes).\n\n\
For each Pod volume `csi: {driver: blockproxy.io, volumeAttributes: {volumeID: VOL}}`, the kubelet calls \
NodePublishVolume: the plugin opens /dev/fuse, mounts it at the volume's target path and offers the \
descriptor on the Unix socket VOL.sock in the Pod's emptyDir `blockproxy-fuse-handover` (the webhook adds \
it, and runs the sidecar with --fuse-fd-socket). The sidecar serves the filesystem; the plugin keeps no copy, \
so if the sidecar exits the mount answers ENOTCONN until the Pod is recreated (docs/SEMANTICS.md). \
The plugin registers itself with the kubelet through its plugins_registry directory. Needs root, /dev/fuse \
and the kubelet's directory mounted with Bidirectional propagation."
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "BLOCKPROXY_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    csi: CsiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    blockproxy::telemetry::init(cli.log_format);
    blockproxy::csi::run(cli.csi, blockproxy::telemetry::shutdown_signal()).await
}
