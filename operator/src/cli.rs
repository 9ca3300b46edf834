//! Command line of `blockproxy-operator` (every flag also reads an environment variable).

use crate::controller::Config;
use crate::lease::LeaseConfig;
use crate::metrics::Metrics;
use crate::run::{Settings, run};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "blockproxy-operator", version, about = "Runs blockproxy ProxyGroups and publishes VolumeProxyGroups")]
pub struct Args {
    /// Namespace the operator and the proxies run in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "blockproxy-system")]
    pub namespace: String,
    /// This replica's identity for leader election and Events.
    #[arg(long, env = "POD_NAME", default_value = "blockproxy-operator")]
    pub identity: String,
    /// Proxy image used when a ProxyGroup does not set `spec.image`.
    #[arg(long, env = "BLOCKPROXY_PROXY_IMAGE", default_value = "ghcr.io/blockproxy/blockproxy:latest")]
    pub proxy_image: String,
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "BLOCKPROXY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Elect a leader with a Lease, so several replicas can run and only one reconciles.
    #[arg(long, env = "BLOCKPROXY_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "BLOCKPROXY_LEASE_NAME", default_value = "blockproxy-operator")]
    pub lease_name: String,
    /// Lease duration in seconds (a dead leader is replaced after this long).
    #[arg(long, env = "BLOCKPROXY_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_seconds: u64,
    /// Seconds between reconciles of an unchanged object.
    #[arg(long, env = "BLOCKPROXY_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(5..))]
    pub resync_seconds: u64,
    /// Seconds between refreshes of each proxy's cache and dirty bytes in its group's status.
    #[arg(long, env = "BLOCKPROXY_STATS_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..))]
    pub stats_seconds: u64,
    /// Serve the mutating admission webhook that injects the blockproxy-mount sidecar.
    #[arg(long, env = "BLOCKPROXY_WEBHOOK", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook: bool,
    /// Address of the admission webhook (HTTPS).
    #[arg(long, env = "BLOCKPROXY_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Folder with the webhook's `tls.crt` and `tls.key`.
    #[arg(long, env = "BLOCKPROXY_WEBHOOK_CERT_DIR", default_value = "/etc/blockproxy/webhook")]
    pub webhook_cert_dir: std::path::PathBuf,
    /// Image of the injected sidecar; defaults to the proxy image.
    #[arg(long, env = "BLOCKPROXY_SIDECAR_IMAGE")]
    pub sidecar_image: Option<String>,
    /// The injected sidecar's CPU request for Pods without the
    /// `blockproxy.io/sidecar-cpu-request` annotation (default 50m); likewise the three below.
    #[arg(long, env = "BLOCKPROXY_SIDECAR_CPU_REQUEST")]
    pub sidecar_cpu_request: Option<String>,
    /// The sidecar's CPU limit (default: none).
    #[arg(long, env = "BLOCKPROXY_SIDECAR_CPU_LIMIT")]
    pub sidecar_cpu_limit: Option<String>,
    /// The sidecar's memory request (default 64Mi).
    #[arg(long, env = "BLOCKPROXY_SIDECAR_MEMORY_REQUEST")]
    pub sidecar_memory_request: Option<String>,
    /// The sidecar's memory limit (default: none; at least 128Mi). It also sizes the sidecar's
    /// read and write budgets to fit inside it (docs/adr/0018).
    #[arg(long, env = "BLOCKPROXY_SIDECAR_MEMORY_LIMIT")]
    pub sidecar_memory_limit: Option<String>,
    /// Log format; `text` is the default on a terminal, `json` otherwise.
    #[arg(long, env = "BLOCKPROXY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Args {
    /// The operator's settings; an error for flags that cannot work (bad sidecar defaults).
    pub fn settings(&self) -> Result<Settings, String> {
        let sidecar_resources = crate::sidecar_resources::ResourceDefaults::new(
            self.sidecar_cpu_request.as_deref(),
            self.sidecar_cpu_limit.as_deref(),
            self.sidecar_memory_request.as_deref(),
            self.sidecar_memory_limit.as_deref(),
        )?;
        Ok(Settings {
            controllers: Config {
                namespace: self.namespace.clone(),
                proxy_image: self.proxy_image.clone(),
                instance: self.identity.clone(),
                resync: Duration::from_secs(self.resync_seconds),
                drain_poll: Duration::from_secs(2),
                stats_interval: Duration::from_secs(self.stats_seconds),
            },
            lease: self.leader_elect.then(|| LeaseConfig {
                namespace: self.namespace.clone(),
                name: self.lease_name.clone(),
                identity: self.identity.clone(),
                duration: Duration::from_secs(self.lease_seconds),
                renew: Duration::from_secs((self.lease_seconds / 3).max(1)),
            }),
            admin_addr: Some(self.admin_addr),
            webhook: self.webhook.then(|| crate::run::WebhookSettings {
                addr: self.webhook_addr,
                cert_file: self.webhook_cert_dir.join("tls.crt"),
                key_file: self.webhook_cert_dir.join("tls.key"),
                sidecar_image: self.sidecar_image.clone().unwrap_or_else(|| self.proxy_image.clone()),
                sidecar_resources,
            }),
        })
    }
}

fn init_logs(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { builder.json().init() } else { builder.init() }
}

/// Resolves on the first SIGTERM or Ctrl-C; the one signal watcher every task shares.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Installs rustls' ring provider as the process default; the dependency graph may enable more
/// than one provider, and then rustls cannot choose by itself.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn main(args: Args) -> ExitCode {
    init_crypto();
    init_logs(args.log_format);
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "bad flags");
            return ExitCode::from(2);
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes client (in-cluster config or KUBECONFIG)");
            return ExitCode::from(2);
        }
    };
    match run(client, settings, Metrics::default(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    fn settings(extra: &[&str]) -> Result<crate::run::Settings, String> {
        let args = ["blockproxy-operator", "--webhook", "true"].iter().chain(extra);
        Args::try_parse_from(args).expect("flags parse").settings()
    }

    #[test]
    fn sidecar_resource_defaults_reach_the_webhook_and_bad_ones_stop_the_operator() {
        let s = settings(&["--sidecar-memory-limit", "256Mi", "--sidecar-cpu-request", "100m"]).unwrap();
        let want = crate::sidecar_resources::ResourceDefaults::new(Some("100m"), None, None, Some("256Mi")).unwrap();
        assert_eq!(s.webhook.expect("webhook on").sidecar_resources, want);
        let Err(err) = settings(&["--sidecar-memory-limit", "100Mi"]) else {
            panic!("a default memory limit below the 128Mi minimum was accepted")
        };
        assert!(err.contains("--sidecar-") && err.contains("128 MiB"), "{err}");
    }
}
