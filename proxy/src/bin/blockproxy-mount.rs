//! `blockproxy-mount`: the mount sidecar, serving one volume as an S3 endpoint on localhost.

use blockproxy::config::LogFormat;
use blockproxy::sidecar::MountArgs;
use clap::Parser;

/// The proxy's allocator (ADR 0010): the sidecar runs in every workload Pod, so its RSS counts.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "blockproxy-mount",
    version,
    about = "Serve a blockproxy volume as an S3-compatible endpoint on localhost"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "BLOCKPROXY_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    mount: Box<MountArgs>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    blockproxy::telemetry::init(cli.log_format);
    blockproxy::sidecar::run(*cli.mount, blockproxy::telemetry::shutdown_signal()).await
}
