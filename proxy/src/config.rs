//! Command-line configuration of the `blockproxy` server. Flags follow the reference product's
//! proxy settings (bind address, disk folder, quota, sync, writeback...), in Rust style, each with
//! an environment variable so a Pod spec can use either.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Address to serve the block API, health and metrics on.
    #[arg(long, env = "BLOCKPROXY_BIND_ADDR", default_value = "0.0.0.0:8443")]
    pub bind_addr: SocketAddr,

    /// Folder for the block cache (a local NVMe disk). Dirty blocks live here until flushed.
    #[arg(long, env = "BLOCKPROXY_DISK_FOLDER", default_value = "/cache")]
    pub disk_folder: PathBuf,

    /// Cache size limit: a percentage of the disk folder's filesystem ("90%") or a size
    /// ("600Gi", "500G", "1048576"). Counts clean and dirty blocks.
    #[arg(long, env = "BLOCKPROXY_DISK_QUOTA", default_value = "90%", value_parser = parse_quota)]
    pub disk_quota: Quota,

    /// Fsync every block file and its directory before acknowledging a write, so acknowledged
    /// blocks also survive power loss (slower writes). See the durability contract in README.
    #[arg(long, env = "BLOCKPROXY_SYNC")]
    pub sync: bool,

    /// Write every block through to the object store before acknowledging it (no writeback).
    #[arg(long, env = "BLOCKPROXY_NO_WRITEBACK")]
    pub no_writeback: bool,

    /// Maximum parallel flushes to the object store; 0 picks 4 per CPU (at most 64).
    #[arg(long, env = "BLOCKPROXY_WRITEBACK_ACTIVE", default_value_t = 0)]
    pub writeback_active: usize,

    /// Pause in milliseconds after each flush, per flush worker, to throttle a shared WAN link.
    #[arg(long, env = "BLOCKPROXY_WRITEBACK_DELAY", default_value_t = 0)]
    pub writeback_delay: u64,

    /// Maximum block operations in flight (disk and store); 0 picks 64 per CPU.
    #[arg(long, env = "BLOCKPROXY_MAX_BOPS", default_value_t = 0)]
    pub max_bops: usize,

    /// Largest accepted block body ("64Mi", bytes). Larger PUTs get 413.
    #[arg(long, env = "BLOCKPROXY_MAX_BLOCK_SIZE", default_value = "64Mi", value_parser = parse_size)]
    pub max_block_size: u64,

    /// Request bytes held in memory at once (block bodies being received or served), across all
    /// requests. A request that cannot fit within a short wait gets 503 + Retry-After. Must be at
    /// least --max-block-size.
    #[arg(long, env = "BLOCKPROXY_MAX_INFLIGHT_BYTES", default_value = "1Gi", value_parser = parse_size)]
    pub max_inflight_bytes: u64,

    /// Block files kept open between cache hits, so that a hit needs no open, header read or
    /// close (like nginx's open_file_cache, but never stale: a file is let go of when its block
    /// is written, flushed, evicted or dropped). At most half the open-file limit
    /// (RLIMIT_NOFILE, raised to its hard limit at start); 0 turns it off.
    #[arg(long, env = "BLOCKPROXY_OPEN_FILES", default_value_t = crate::cache::DEFAULT_HELD_FILES)]
    pub open_files: usize,

    /// How far ahead of this proxy's clock a client's x-blockproxy-version may be. Further ahead
    /// is refused with 400, so a forged or broken client cannot push versions out of reach.
    #[arg(long, env = "BLOCKPROXY_MAX_VERSION_AHEAD", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_version_ahead: Duration,

    /// A clean cached block is served for this long after the proxy last saw it match the store;
    /// the next read then asks the store (one HEAD) whether it changed. This bounds how long a
    /// write made through another proxy (failover) or behind the cache stays invisible here.
    /// A volume's `metadataTtlMs` in the volumes file (VolumeProxyGroup `metadataTTL`) overrides it.
    #[arg(long, env = "BLOCKPROXY_METADATA_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,

    /// A connection must send its request headers within this time (slow clients otherwise hold
    /// connections and permits forever).
    #[arg(long, env = "BLOCKPROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A TLS handshake must finish within this time.
    #[arg(long, env = "BLOCKPROXY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// A request body that sends nothing for this long is abandoned with 408.
    #[arg(long, env = "BLOCKPROXY_BODY_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_idle_timeout: Duration,

    /// PEM certificate chain to serve. Without it (and without --no-tls) a self-signed
    /// certificate is generated and written to <disk-folder>/tls/.
    #[arg(long, env = "BLOCKPROXY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for --tls-cert-file.
    #[arg(long, env = "BLOCKPROXY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Serve plain HTTP. Only behind a TLS-terminating proxy or on loopback.
    #[arg(long, env = "BLOCKPROXY_NO_TLS", conflicts_with_all = ["tls_cert_file", "tls_key_file"])]
    pub no_tls: bool,

    /// Copy hits through the proxy's memory instead of sending them from the cache file with
    /// sendfile(2) on plain-HTTP/1 connections (TLS and HTTP/2 always copy). For comparison and as
    /// an escape hatch.
    #[arg(long, env = "BLOCKPROXY_NO_SENDFILE")]
    pub no_sendfile: bool,

    /// YAML file listing the volumes served (id, bucket, prefix, token). Reloaded on change.
    #[arg(long, env = "BLOCKPROXY_VOLUMES_FILE")]
    pub volumes_file: PathBuf,

    /// File holding the admin bearer token for the drain API. Without it drain is disabled.
    #[arg(long, env = "BLOCKPROXY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// On SIGTERM: how long to keep flushing dirty blocks before exiting. Whatever is left is
    /// flushed after the next start.
    #[arg(long, env = "BLOCKPROXY_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Multipart uploads staged on this proxy and left unfinished this long are removed (checked
    /// at start and periodically), giving their disk space back.
    #[arg(long, env = "BLOCKPROXY_UPLOAD_EXPIRY", default_value = "7d", value_parser = humantime::parse_duration)]
    pub upload_expiry: Duration,

    /// How often to check the volumes file for changes.
    #[arg(long, env = "BLOCKPROXY_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
}

/// Which kind of object store the proxy writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreProvider {
    /// S3 or an S3-compatible store (MinIO, Ceph RGW, OCI and GCS through their S3 endpoints).
    S3,
    /// Google Cloud Storage through its JSON API.
    Gcs,
    /// Azure Blob Storage (block blobs).
    Azure,
    /// A local directory (`--store-endpoint file:///path`).
    Local,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The kind of store. Without it: `local` for a file:// endpoint, `s3` otherwise.
    #[arg(long, env = "BLOCKPROXY_STORE_PROVIDER", value_enum)]
    pub store_provider: Option<StoreProvider>,

    /// Object store endpoint: an S3-compatible URL (http(s)://minio:9000), file:///path for the
    /// embedded local-directory store, or an emulator's URL for gcs/azure. Empty means the
    /// provider's public endpoint (AWS S3, storage.googleapis.com, <account>.blob.core.windows.net).
    #[arg(long, env = "BLOCKPROXY_STORE_ENDPOINT")]
    pub store_endpoint: Option<String>,

    /// Object store region.
    #[arg(long, env = "BLOCKPROXY_STORE_REGION", default_value = "us-east-1")]
    pub store_region: String,

    /// Use path-style bucket addressing (MinIO, Ceph RGW).
    #[arg(long, env = "BLOCKPROXY_STORE_PATH_STYLE")]
    pub store_path_style: bool,

    /// The store's credentials. s3: YAML with `access_key_id` and `secret_access_key` (without
    /// it the AWS default chain: environment, profile, instance role). gcs: a service-account JSON
    /// key (without it the metadata server, i.e. workload identity; with a custom endpoint and no
    /// file, no credentials). azure: YAML with `account_name` and `account_key` or `sas_token`.
    #[arg(long, env = "BLOCKPROXY_STORE_CREDENTIALS_FILE")]
    pub store_credentials_file: Option<PathBuf>,

    /// Ask the store to encrypt objects at rest (SSE-S3).
    #[arg(long, env = "BLOCKPROXY_STORE_SSE")]
    pub store_sse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quota {
    Percent(f64),
    Bytes(u64),
}

impl Quota {
    /// Resolves the quota to bytes against the filesystem holding `folder`.
    pub fn resolve(self, folder: &Path) -> std::io::Result<u64> {
        match self {
            Self::Bytes(b) => Ok(b),
            Self::Percent(p) => {
                let total = fs4::total_space(folder)?;
                Ok((total as f64 * p / 100.0) as u64)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

pub fn parse_quota(s: &str) -> Result<Quota, String> {
    if let Some(p) = s.trim().strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage like \"90%\""))?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!("percentage {p} must be in (0, 100]"));
        }
        return Ok(Quota::Percent(p));
    }
    parse_size(s).map(Quota::Bytes)
}

pub use blockproxy_protocol::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotas() {
        assert_eq!(parse_quota("90%").unwrap(), Quota::Percent(90.0));
        assert_eq!(parse_quota("600Gi").unwrap(), Quota::Bytes(600 << 30));
        for bad in ["", "0", "abc", "10Zi", "101%", "0%", "-5%", "99999999999999999999"] {
            assert!(parse_quota(bad).is_err(), "{bad:?}");
        }
    }
}
