//! `blockproxy-mount`: the sidecar beside the app container. It reads the discovery file, chooses
//! the lowest-RTT group, routes blocks by rendezvous hashing with failover ([`crate::client`]), and
//! serves the volume as an S3-compatible endpoint on localhost ([`s3`]), and with `--mount-point`
//! also as a directory through FUSE ([`crate::mount`]).
//!
//! Admin endpoints on the same port (bucket names cannot start with `_`, so they never clash):
//! `/_blockproxy/healthz`, `/_blockproxy/readyz`, `/_blockproxy/metrics`, `/_blockproxy/status`.

mod conditions;
mod errors;
mod expect;
mod listing;
pub mod s3;
mod writes;

use crate::client::{Client, ClientConfig, selection::Hysteresis};
use crate::config::{StoreArgs, parse_size};
use crate::protocol::VolumeId;
use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ADMIN_PREFIX: &str = "/_blockproxy";

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// The volume to serve; S3 clients use it as the bucket name.
    #[arg(long, env = "BLOCKPROXY_VOLUME_ID", value_parser = parse_volume)]
    pub volume_id: VolumeId,

    /// The discovery document (the operator's ConfigMap, mounted as a file). Re-read on change.
    #[arg(long, env = "BLOCKPROXY_DISCOVERY_FILE", default_value = "/etc/blockproxy/discovery/discovery.json")]
    pub discovery_file: PathBuf,

    /// File holding the volume's bearer token for the proxies.
    #[arg(long, env = "BLOCKPROXY_TOKEN_FILE")]
    pub token_file: PathBuf,

    /// Where to serve the S3 endpoint (keep it on loopback: it is the app's private endpoint).
    #[arg(long, env = "BLOCKPROXY_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// Access key S3 clients sign with.
    #[arg(long, env = "BLOCKPROXY_S3_ACCESS_KEY", default_value = "blockproxy")]
    pub s3_access_key: String,

    /// Secret key S3 clients sign with.
    #[arg(long, env = "BLOCKPROXY_S3_SECRET_KEY", default_value = "blockproxy", hide_env_values = true)]
    pub s3_secret_key: String,

    /// Largest part an S3 client may send in one UploadPart ("64Mi"): a part is held in memory
    /// until its home proxy has it (the proxies' --max-block-size must allow it too). Objects
    /// themselves may be up to 5 TiB; single PUTs up to 5 GiB, sent on as 8 MiB parts.
    #[arg(long, env = "BLOCKPROXY_MAX_PART_SIZE", default_value = "64Mi", value_parser = parse_size)]
    pub max_part_size: u64,

    /// The most memory all reads together hold in blocks fetched and not yet taken by their
    /// clients ("128Mi"). A large read fetches up to 4 blocks ahead from several proxies at
    /// once; under this bound fetches ahead queue for it, and a read whose client waits, with the
    /// budget full, fetches its next block in 1 MiB pieces (so memory is at most this plus 1 MiB
    /// per read in progress).
    #[arg(long, env = "BLOCKPROXY_READ_AHEAD_BYTES", default_value = "128Mi", value_parser = parse_size)]
    pub read_ahead_bytes: u64,

    /// The most memory all writes together hold in bodies read from S3 clients and not yet
    /// answered by their proxy ("128Mi"). A PutObject holds up to two 8 MiB parts, an UploadPart
    /// its whole part; under this bound writes wait their turn before reading their body (a part
    /// larger than the bound takes all of it).
    #[arg(long, env = "BLOCKPROXY_WRITE_BUFFER_BYTES", default_value = "128Mi", value_parser = parse_size)]
    pub write_buffer_bytes: u64,

    /// Go directly to the object store when no proxy is reachable (and list it directly),
    /// using the AWS default credential chain. Without it, listings go through a proxy. Implied by --store-credentials-file and by a
    /// file:// store endpoint.
    #[arg(long, env = "BLOCKPROXY_DIRECT_STORE")]
    pub direct_store: bool,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub fuse: crate::mount::FuseArgs,

    /// How often every proxy is probed.
    #[arg(long, env = "BLOCKPROXY_PROBE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,

    /// Pings per proxy per probe round (the median counts).
    #[arg(long, env = "BLOCKPROXY_PROBE_SAMPLES", default_value_t = 3)]
    pub probe_samples: usize,

    /// Probe rounds another group must be clearly faster before the sidecar switches to it.
    #[arg(long, env = "BLOCKPROXY_SWITCH_ROUNDS", default_value_t = 3)]
    pub switch_rounds: u32,

    /// Timeout of one ping.
    #[arg(long, env = "BLOCKPROXY_PROBE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,

    /// Timeout of one block request.
    #[arg(long, env = "BLOCKPROXY_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Passes over all proxies, groups and the store before a request fails.
    #[arg(long, env = "BLOCKPROXY_RETRIES", default_value_t = 3)]
    pub retries: u32,

    /// How long reads from a proxy that came back or was added are checked for newer versions
    /// elsewhere (see docs/adr/0002-consistency-contract.md).
    #[arg(long, env = "BLOCKPROXY_RECOVERY_WINDOW", default_value = "120s", value_parser = humantime::parse_duration)]
    pub recovery_window: Duration,

    /// An S3 connection must send its request headers within this time; a stalled one is
    /// closed (counted in `blockproxy_client_s3_timeouts_total`).
    #[arg(long, env = "BLOCKPROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// On SIGTERM: how long the S3 requests in flight may take to finish before the sidecar
    /// exits anyway (a client that stopped reading a response must not hold it forever).
    #[arg(long, env = "BLOCKPROXY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long to wait for the token and discovery files to appear before giving up ("0s": fail
    /// at once with the reason). The webhook sets an hour: a Pod may start before its
    /// VolumeProxyGroup is accepted, and its files appear then.
    #[arg(long, env = "BLOCKPROXY_WAIT_FOR_FILES", default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait_for_files: Duration,
}

fn parse_volume(s: &str) -> Result<VolumeId, String> {
    VolumeId::parse(s).map_err(|e| e.to_string())
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the volume token file {} (--token-file)", path.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(!token.is_empty(), "the volume token file {} is empty", path.display());
    Ok(token)
}

/// Builds the client from the arguments (validating the discovery file and token).
pub async fn client_from_args(args: &MountArgs) -> anyhow::Result<Client> {
    let token = read_token(&args.token_file)?;
    let doc = crate::client::discovery::load(&args.discovery_file, &args.volume_id)?;
    let mut store_args = args.store.clone();
    if store_args.store_endpoint.is_none() {
        store_args.store_endpoint = doc.store.endpoint.clone();
    }
    if let Some(region) = &doc.store.region
        && args.store.store_region == "us-east-1"
    {
        store_args.store_region = region.clone();
    }
    if store_args.store_provider.is_none()
        && let Some(p) = &doc.store.provider
    {
        let provider = <crate::config::StoreProvider as clap::ValueEnum>::from_str(p, true)
            .map_err(|_| anyhow::anyhow!("the discovery document's store provider {p:?} is unknown"))?;
        store_args.store_provider = Some(provider);
    }
    // Addressed as the proxies address it (MinIO needs path style).
    store_args.store_path_style |= doc.store.path_style;
    let local = store_args.store_endpoint.as_deref().is_some_and(|e| e.starts_with("file://"));
    let direct = if args.direct_store || store_args.store_credentials_file.is_some() || local {
        Some(crate::server::build_store(&store_args).await.context("setting up direct object-store access")?)
    } else {
        None
    };
    let mut cfg = ClientConfig::new(args.volume_id.clone(), args.discovery_file.clone(), token);
    cfg.probe_interval = args.probe_interval;
    cfg.probe_samples = args.probe_samples;
    cfg.probe_timeout = args.probe_timeout;
    cfg.request_timeout = args.request_timeout;
    cfg.retries = args.retries;
    cfg.recovery_window = args.recovery_window;
    cfg.hysteresis = Hysteresis { rounds: args.switch_rounds.max(1), ..Hysteresis::default() };
    cfg.direct_store = direct;
    cfg.read_ahead_bytes = args.read_ahead_bytes;
    cfg.write_buffer_bytes = args.write_buffer_bytes;
    Ok(Client::start(cfg).await?)
}

/// The HTTP app: admin routes plus the S3 service for everything else.
pub fn app(client: Client, access_key: &str, secret_key: &str, max_part_size: u64) -> Router {
    let mut builder = s3s::service::S3ServiceBuilder::new(s3::VolumeS3::new(client.clone(), max_part_size));
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let service = axum::error_handling::HandleError::new(service, |e: s3s::HttpError| async move {
        tracing::warn!(error = ?e, "S3 request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
    });
    Router::new()
        .route(&format!("{ADMIN_PREFIX}/healthz"), get(|| async { "ok" }))
        .route(&format!("{ADMIN_PREFIX}/readyz"), get(readyz))
        .route(&format!("{ADMIN_PREFIX}/metrics"), get(metrics))
        .route(&format!("{ADMIN_PREFIX}/status"), get(status))
        .with_state(client)
        .fallback_service(service)
        .layer(axum::middleware::from_fn(expect::close_after_unanswered_expect))
}

async fn readyz(State(c): State<Client>) -> Response {
    if c.ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no proxy group is reachable and there is no direct store access")
            .into_response()
    }
}

async fn metrics(State(c): State<Client>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], c.metrics().render()).into_response()
}

async fn status(State(c): State<Client>) -> Response {
    axum::Json(c.status()).into_response()
}

/// Runs the sidecar until `shutdown` resolves.
pub async fn run(args: MountArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        () = wait_for_files(&args) => {}
        () = &mut shutdown => return Ok(()),
    }
    let client = client_from_args(&args).await?;
    // What the memory limit must hold (ADR 0018); the webhook may have sized these to it.
    tracing::info!(
        read_ahead_bytes = args.read_ahead_bytes,
        write_buffer_bytes = args.write_buffer_bytes,
        max_part_size = args.max_part_size,
        "memory budgets"
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the S3 endpoint on {}", args.listen))?;
    let mounted = match (&args.fuse.mount_point, &args.fuse.fuse_fd_socket) {
        (Some(dir), _) => Some(crate::mount::mount(client.clone(), &args.fuse, dir)?),
        (None, Some(socket)) => Some(crate::mount::serve_handed_over(client.clone(), &args.fuse, socket).await?),
        (None, None) => None,
    };
    let limits = EndpointLimits { header_read_timeout: args.header_read_timeout, shutdown_grace: args.shutdown_grace };
    let served =
        serve(listener, client, &args.s3_access_key, &args.s3_secret_key, args.max_part_size, limits, shutdown).await;
    if let Some(m) = mounted {
        m.unmount().await;
    }
    served
}

/// Waits (at most `--wait-for-files`) until the token file has a token and the discovery file
/// exists; past that, starting fails with the reason. In a Pod they are the
/// volume's Secret and ConfigMap, mounted optional: a Pod started before its VolumeProxyGroup was
/// accepted gets them later, and waiting (not serving, so the startup probe holds the app back)
/// beats crash-looping on a missing file.
async fn wait_for_files(args: &MountArgs) {
    let present = || {
        std::fs::read_to_string(&args.token_file).is_ok_and(|t| !t.trim().is_empty()) && args.discovery_file.exists()
    };
    let mut waited = Duration::ZERO;
    while !present() && waited < args.wait_for_files {
        if waited.as_secs().is_multiple_of(60) {
            tracing::warn!(
                token_file = %args.token_file.display(),
                discovery_file = %args.discovery_file.display(),
                volume = %args.volume_id,
                waited_s = waited.as_secs(),
                "waiting for the volume's token and discovery files (is a VolumeProxyGroup for this volume accepted in this namespace?)"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += Duration::from_secs(1);
    }
}

/// How the S3 endpoint bounds slow clients: as the proxy's listener does, which serves it. The
/// default (the quickstart's) is the flags' defaults; a test ties them.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), shutdown_grace: Duration::from_secs(10) }
    }
}

/// Serves an already-built client on `listener` (the quickstart uses this) until `shutdown`,
/// then lets requests in flight finish for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: Client,
    access_key: &str,
    secret_key: &str,
    max_part_size: u64,
    limits: EndpointLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let status = client.status();
    tracing::info!(
        addr = %addr,
        volume = %client.volume(),
        chosen_group = ?status.chosen_group,
        direct_store = status.direct_store,
        "S3 endpoint serving; the bucket name is the volume id"
    );
    let timeouts = client.metrics().s3_timeouts_total.clone();
    let app = app(client, access_key, secret_key, max_part_size);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    // The proxy's listener: TCP_NODELAY, HTTP/1.1 and h2c, the header timeout, the bounded grace.
    let limits = crate::server::listener::Limits {
        tls: None,
        header_read_timeout: limits.header_read_timeout,
        // Unused: the endpoint serves plain HTTP on the Pod's loopback (`tls: None`).
        tls_handshake_timeout: limits.header_read_timeout,
        grace: limits.shutdown_grace,
        sendfile: None,
    };
    crate::server::listener::serve(listener, app, limits, timeouts, stopped).await;
    tracing::info!("S3 endpoint stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MountArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountArgs,
    }

    #[test]
    fn the_memory_and_endpoint_flags_default_to_the_library_and_quickstart_values() {
        let cli = Cli::try_parse_from(["blockproxy-mount", "--volume-id", "vol1", "--token-file", "/token"]).unwrap();
        assert_eq!(cli.mount.read_ahead_bytes, crate::client::DEFAULT_READ_AHEAD_BYTES);
        assert_eq!(cli.mount.write_buffer_bytes, crate::client::DEFAULT_WRITE_BUFFER_BYTES);
        assert_eq!(cli.mount.max_part_size, blockproxy_protocol::DEFAULT_MAX_PART_SIZE);
        let limits = super::EndpointLimits::default();
        assert_eq!(
            (limits.header_read_timeout, limits.shutdown_grace),
            (cli.mount.header_read_timeout, cli.mount.shutdown_grace),
            "the quickstart's endpoint limits are the sidecar flags' defaults"
        );
        let cli = Cli::try_parse_from([
            "m",
            "--volume-id",
            "v",
            "--token-file",
            "/t",
            "--read-ahead-bytes",
            "1Gi",
            "--write-buffer-bytes",
            "16Mi",
        ])
        .unwrap();
        assert_eq!((cli.mount.read_ahead_bytes, cli.mount.write_buffer_bytes), (1 << 30, 16 << 20));
    }
}
