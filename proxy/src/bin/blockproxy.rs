//! `blockproxy`: the caching block proxy server.

use blockproxy::config::{LogFormat, ProxyArgs};
use clap::{Parser, Subcommand};

/// jemalloc, for a lower and steadier RSS than glibc's per-thread arenas, and the same allocator
/// in the musl image as in the tests and the bench (ADR 0010).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "blockproxy",
    version,
    about = "A writeback caching block proxy between on-prem compute and object storage"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "BLOCKPROXY_LOG_FORMAT", value_enum, default_value_t, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the block API: cache blocks on local disk, write back to the object store.
    Serve(Box<ProxyArgs>),
    /// Start 3 proxies on the local store and an S3 endpoint in front, all on this machine.
    Quickstart(blockproxy::quickstart::QuickstartArgs),
    /// GET a health URL and exit 0 on a 2xx answer, 1 otherwise: an exec probe for images with
    /// no shell or curl (the injected sidecar's startup probe uses it on its loopback endpoint).
    Probe(Probe),
}

#[derive(clap::Args)]
struct Probe {
    /// The URL to GET, e.g. http://127.0.0.1:9000/_blockproxy/readyz.
    url: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// Runs a probe: the answer's status line goes to stdout (kubelet shows it on failure).
async fn probe(p: Probe) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(p.timeout).build()?;
    let response = client.get(&p.url).send().await?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{status} {}", body.trim());
    anyhow::ensure!(status.is_success(), "{} answered {status}", p.url);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    blockproxy::telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => blockproxy::server::run(*args, blockproxy::telemetry::shutdown_signal()).await,
        Command::Quickstart(args) => blockproxy::quickstart::run(args, blockproxy::telemetry::shutdown_signal()).await,
        Command::Probe(p) => probe(p).await,
    }
}
