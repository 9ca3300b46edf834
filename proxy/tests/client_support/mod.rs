//! Shared harness of the client, sidecar and quickstart tests: real `blockproxy serve` processes,
//! a real MinIO, toxiproxy links, discovery files, and in-process clients with short intervals.
#![allow(dead_code)]

use anyhow::Result;
use blockproxy::client::{Client, ClientConfig, selection::Hysteresis};
use blockproxy::protocol::{BlockKey, DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation, VolumeId};
use blockproxy::store::{S3Store, S3StoreConfig};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Minio, Tls, Toxiproxy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const VOLUME: &str = "vol1";
pub const TOKEN: &str = "s3cr3t-token";
pub const PREFIX: &str = "volumes/vol1";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `blockproxy serve` process (started by the testenv's [`Blockproxy`]). Killed on drop.
pub struct Proxy {
    pub name: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    proc: Blockproxy,
}

impl Proxy {
    pub async fn start(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
    ) -> Result<Self> {
        Self::start_with(name, root, volumes_file, store_endpoint, minio, false).await
    }

    /// Serves TLS with the given certificate and key files.
    pub async fn start_with_tls_files(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
        cert: &Path,
        key: &Path,
    ) -> Result<Self> {
        let tls = Tls::Files { cert: cert.to_owned(), key: key.to_owned() };
        Self::start_tls(name, root, volumes_file, store_endpoint, minio, tls).await
    }

    /// With `tls`, the proxy serves a generated self-signed certificate (`<dir>/cache/tls/selfsigned.crt`).
    pub async fn start_with(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
        tls: bool,
    ) -> Result<Self> {
        let tls = if tls { Tls::SelfSigned } else { Tls::Off };
        Self::start_tls(name, root, volumes_file, store_endpoint, minio, tls).await
    }

    async fn start_tls(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
        tls: Tls,
    ) -> Result<Self> {
        Self::start_full(name, root, volumes_file, store_endpoint, minio, tls, "2Gi", &[]).await
    }

    /// Plain HTTP, with the given `--disk-quota` and extra flags.
    pub async fn start_with_args(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
        quota: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_full(name, root, volumes_file, store_endpoint, minio, Tls::Off, quota, extra).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_full(
        name: &str,
        root: &Path,
        volumes_file: &Path,
        store_endpoint: &str,
        minio: &Minio,
        tls: Tls,
        quota: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let command = BlockproxyCommand::serve(env!("CARGO_BIN_EXE_blockproxy"), name, &dir.join("cache"))?
            .tls(tls)
            .arg(format!("--disk-quota={quota}"))
            .arg("--shutdown-grace=2s")
            .args(extra)
            .volumes_file(volumes_file)
            .s3_store(store_endpoint, minio.access_key(), minio.secret_key())
            .ready_path("/v1/ping")
            .ready_within(Duration::from_secs(20), Duration::from_millis(50));
        let proc = Blockproxy::start(command).await?;
        Ok(Self { name: name.into(), addr: proc.addr(), dir, proc })
    }

    /// Kills the process (SIGKILL) and starts it again on the same folder and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart().await?;
        Ok(())
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// The process id while it runs (for /proc/<pid>/status).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The proxy's Prometheus metrics (plain HTTP proxies only).
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.addr);
        Ok(reqwest::get(&url).await?.error_for_status()?.text().await?)
    }

    /// GETs a block straight from this proxy (no client routing).
    pub async fn get_direct(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        let url = format!("http://{}/v1/volumes/{VOLUME}/blocks/{key}", self.addr);
        let r = reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let r = r.error_for_status()?;
        let v = r
            .headers()
            .get("x-blockproxy-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Some((r.bytes().await?.to_vec(), v)))
    }
}

/// The mount sidecar (`blockproxy-mount`, the S3 endpoint for [`VOLUME`]) in front of the groups
/// of `discovery_file`, through the testenv's [`Blockproxy`]; with MinIO's credentials it goes
/// directly to the store when no proxy answers. S3 clients sign with `blockproxy`/`blockproxy`.
/// Killed on drop.
pub async fn start_sidecar(root: &Path, discovery_file: &Path, minio: &Minio, extra: &[&str]) -> Result<Blockproxy> {
    Blockproxy::start(sidecar_command(root, discovery_file, minio)?.args(extra)).await
}

/// The command [`start_sidecar`] runs, for a test that adds to it.
pub fn sidecar_command(root: &Path, discovery_file: &Path, minio: &Minio) -> Result<BlockproxyCommand> {
    let token = root.join("sidecar-token");
    std::fs::write(&token, TOKEN)?;
    let creds = root.join("sidecar-store-creds.yaml");
    std::fs::write(
        &creds,
        format!("access_key_id: {}\nsecret_access_key: {}\n", minio.access_key(), minio.secret_key()),
    )?;
    let command = BlockproxyCommand::mount(env!("CARGO_BIN_EXE_blockproxy-mount"), "sidecar", VOLUME)?
        .discovery(discovery_file, &token)
        .args(["--probe-interval", "250ms", "--store-path-style"])
        .arg("--store-credentials-file")
        .arg(&creds)
        .ready_within(Duration::from_secs(20), Duration::from_millis(50));
    Ok(command)
}

/// The sidecar's S3 endpoint URL.
pub fn sidecar_endpoint(sidecar: &Blockproxy) -> String {
    format!("http://{}", sidecar.addr())
}

pub fn write_volumes_file(root: &Path, bucket: &str) -> Result<PathBuf> {
    let path = root.join("volumes.yaml");
    std::fs::write(
        &path,
        format!("volumes:\n- {{id: {VOLUME}, bucket: {bucket}, prefix: {PREFIX}, token: {TOKEN}}}\n"),
    )?;
    Ok(path)
}

/// A group as the discovery document lists it: name and the addresses clients use.
pub struct GroupSpec {
    pub name: String,
    pub addresses: Vec<String>,
}

pub fn discovery(bucket: &str, store_endpoint: Option<String>, groups: &[GroupSpec]) -> DiscoveryDocument {
    DiscoveryDocument {
        volume_id: VolumeId::parse(VOLUME).unwrap(),
        store: StoreLocation {
            bucket: bucket.into(),
            prefix: PREFIX.into(),
            endpoint: store_endpoint,
            region: None,
            provider: None,
            path_style: false,
        },
        block_size: blockproxy::protocol::DEFAULT_BLOCK_SIZE,
        metadata_ttl_ms: blockproxy::protocol::DEFAULT_METADATA_TTL_MS,
        groups: groups
            .iter()
            .map(|g| DiscoveryGroup {
                name: g.name.clone(),
                provider_code: "s3".into(),
                region_code: g.name.clone(),
                scheme: "http".into(),
                ca_bundle: None,
                server_name: None,
                endpoints: g
                    .addresses
                    .iter()
                    .map(|a| DiscoveryEndpoint { address: a.clone(), node: None, weight: 1, draining: false })
                    .collect(),
            })
            .collect(),
    }
}

/// Writes the document atomically (like kubelet's symlink swap: readers never see half a file).
pub fn write_discovery(path: &Path, doc: &DiscoveryDocument) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_json_pretty())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub async fn minio_store(minio: &Minio) -> S3Store {
    S3Store::new(S3StoreConfig {
        endpoint: Some(minio.endpoint()),
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some((minio.access_key().into(), minio.secret_key().into())),
        sse: false,
    })
    .await
}

pub fn fast_config(discovery_file: &Path) -> ClientConfig {
    let mut cfg = ClientConfig::new(VolumeId::parse(VOLUME).unwrap(), discovery_file.to_owned(), TOKEN.into());
    cfg.probe_interval = Duration::from_millis(250);
    cfg.probe_samples = 3;
    cfg.probe_timeout = Duration::from_millis(800);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(10);
    cfg.retries = 1;
    cfg.retry_backoff = Duration::from_millis(50);
    cfg.discovery_interval = Duration::from_millis(100);
    cfg.hysteresis = Hysteresis { rounds: 3, ..Hysteresis::default() };
    cfg
}

pub async fn start_client(cfg: ClientConfig) -> Result<Client> {
    Ok(Client::start(cfg).await?)
}

pub fn key(s: &str) -> BlockKey {
    BlockKey::parse(s).unwrap()
}

/// The object's bytes and recorded version in MinIO, if present.
pub async fn in_minio(minio: &Minio, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
    let store = minio_store(minio).await;
    use blockproxy::store::Store;
    Ok(store.get(minio.bucket(), &format!("{PREFIX}/{key}")).await?.map(|b| (b.data.to_vec(), b.version)))
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Toxiproxy links from the clients to each proxy, by proxy name.
pub async fn link(toxi: &Toxiproxy, name: &str, upstream: SocketAddr) -> Result<String> {
    Ok(toxi.create_proxy(name, &upstream.to_string()).await?.to_string())
}

pub fn arc_store(s: S3Store) -> Arc<dyn blockproxy::store::Store> {
    Arc::new(s)
}

/// The sum of every sample of `metric` (all label sets) in a Prometheus text page; 0 when it has
/// none yet (a labelled counter appears with its first sample).
pub fn metric_sum(text: &str, metric: &str) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        sum += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    }
    sum
}
