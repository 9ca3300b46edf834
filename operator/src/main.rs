//! `blockproxy-operator`: parse flags, set up logs, run.

use blockproxy_operator::cli::Args;
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blockproxy_operator::cli::main(Args::parse()).await
}
