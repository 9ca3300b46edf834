//! `blockproxy`: the caching block proxy server.

use blockproxy::config::{LogFormat, ProxyArgs};
use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    blockproxy::telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => blockproxy::server::run(*args, blockproxy::telemetry::shutdown_signal()).await,
        Command::Quickstart(args) => blockproxy::quickstart::run(args, blockproxy::telemetry::shutdown_signal()).await,
    }
}
