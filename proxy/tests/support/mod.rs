//! Shared harness for the proxy's integration tests: starts the real `blockproxy` binary against a
//! real MinIO (through toxiproxy), and talks to it over HTTP like a client would.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod raw;

use anyhow::{Context, Result, bail};
use blockproxy::protocol::{CHECKSUM_HEADER, Checksum, DrainStatus, VERSION_HEADER};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Minio, Toxiproxy, eventually};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const VOLUME: &str = "vol1";
pub const TOKEN: &str = "volume-token-1";
pub const ADMIN_TOKEN: &str = "admin-token-1";
pub const PREFIX: &str = "pfx";

/// MinIO with toxiproxy in front of it: the proxy talks to the store through `store_proxy`.
pub struct Backend {
    pub minio: Minio,
    pub toxi: Toxiproxy,
    pub store_addr: SocketAddr,
}

pub const STORE_PROXY: &str = "store";

impl Backend {
    pub async fn start() -> Result<Self> {
        let minio = Minio::start().await?;
        let toxi = Toxiproxy::start().await?;
        let store_addr = toxi.create_proxy(STORE_PROXY, &minio.addr().to_string()).await?;
        Ok(Self { minio, toxi, store_addr })
    }

    pub async fn object(&self, key: &str) -> Result<Option<Bytes>> {
        let s3 = self.minio.s3_client();
        match s3.get_object().bucket(self.minio.bucket()).key(format!("{PREFIX}/{key}")).send().await {
            Ok(o) => Ok(Some(o.body.collect().await?.into_bytes())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    /// MinIO's own count of GetObject requests, from its live v3 API metrics.
    pub async fn store_get_count(&self) -> Result<u64> {
        self.store_api_count("GetObject").await
    }

    /// MinIO's own count of requests of one S3 API (`GetObject`, `HeadObject`...).
    pub async fn store_api_count(&self, api: &str) -> Result<u64> {
        let url = format!("{}/minio/metrics/v3/api/requests", self.minio.endpoint());
        let text = reqwest::get(&url).await?.error_for_status()?.text().await?;
        let name = format!("name=\"{api}\"");
        Ok(text
            .lines()
            .filter(|l| l.starts_with("minio_api_requests_total{") && l.contains(&name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }
}

/// How a test wants the proxy started.
#[derive(Clone)]
pub struct ProxyOptions {
    pub quota: String,
    pub sync: bool,
    pub no_writeback: bool,
    pub extra: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self { quota: "1Gi".into(), sync: false, no_writeback: false, extra: vec![] }
    }
}

/// The real `blockproxy` binary (started by the testenv's [`Blockproxy`]). Killed with SIGKILL on
/// drop.
pub struct ProxyProcess {
    proc: Blockproxy,
    pub addr: SocketAddr,
    /// Options for the next (re)start.
    pub opts: ProxyOptions,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    store: StoreFlags,
}

/// How the proxy reaches its store.
#[derive(Clone)]
pub enum StoreFlags {
    /// MinIO (or a toxiproxy link to it, or `file:///...`) with MinIO's keys.
    S3 { endpoint: String, keys: (String, String) },
    /// A GCS emulator.
    Gcs { endpoint: String },
    /// An Azure emulator, the account's credentials in a file.
    Azure { endpoint: String, credentials_file: PathBuf },
}

impl ProxyProcess {
    pub async fn start(backend: &Backend, dir: &Path, opts: ProxyOptions) -> Result<Self> {
        Self::start_with_store(backend, dir, opts, format!("http://{}", backend.store_addr)).await
    }

    /// Like [`ProxyProcess::start`], with another `--store-endpoint` (another toxiproxy link to
    /// MinIO, or `file:///...`); the bucket keeps MinIO's name.
    pub async fn start_with_store(
        backend: &Backend,
        dir: &Path,
        opts: ProxyOptions,
        store_endpoint: String,
    ) -> Result<Self> {
        let keys = (backend.minio.access_key().to_owned(), backend.minio.secret_key().to_owned());
        Self::start_on(dir, opts, backend.minio.bucket(), StoreFlags::S3 { endpoint: store_endpoint, keys }).await
    }

    /// The proxy on any store (`bucket` in it).
    pub async fn start_on(dir: &Path, opts: ProxyOptions, bucket: &str, store: StoreFlags) -> Result<Self> {
        std::fs::write(dir.join("volumes.yaml"), volumes_yaml(&[(VOLUME, bucket, TOKEN)]))?;
        std::fs::write(dir.join("admin-token"), ADMIN_TOKEN)?;
        let command = serve_command(
            BlockproxyCommand::serve(env!("CARGO_BIN_EXE_blockproxy"), "blockproxy", &dir.join("cache"))?,
            dir,
            &opts,
            &store,
        );
        let proc = Blockproxy::start(command).await?;
        Ok(Self {
            addr: proc.addr(),
            proc,
            dir: dir.to_path_buf(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            opts,
            store,
        })
    }

    /// Everything the proxy logged, across restarts.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn volumes_file(&self) -> PathBuf {
        self.dir.join("volumes.yaml")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn block_url(&self, key: &str) -> String {
        self.url(&format!("/v1/volumes/{VOLUME}/blocks/{key}"))
    }

    /// SIGKILL, like a crash: nothing is flushed, nothing is cleaned up.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Kills the process if it runs and starts it again with [`ProxyProcess::opts`].
    pub async fn restart(&mut self) -> Result<()> {
        // Same address as before: clients and tests keep talking to it.
        let base =
            BlockproxyCommand::serve_at(env!("CARGO_BIN_EXE_blockproxy"), "blockproxy", self.addr, &self.cache_dir());
        self.proc.set_command(serve_command(base, &self.dir, &self.opts, &self.store));
        self.proc.restart().await?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.proc.stop_with("TERM", timeout).await
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub async fn put(&self, key: &str, data: &[u8]) -> Result<reqwest::Response> {
        Ok(self
            .http
            .put(self.block_url(key))
            .bearer_auth(TOKEN)
            .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
            .body(data.to_vec())
            .send()
            .await?)
    }

    /// PUT that must be acknowledged; returns the version.
    pub async fn put_ok(&self, key: &str, data: &[u8]) -> Result<u64> {
        let r = self.put(key, data).await?;
        if r.status() != 200 {
            bail!("PUT {key}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        version_of(&r)
    }

    pub async fn get(&self, key: &str) -> Result<reqwest::Response> {
        Ok(self.http.get(self.block_url(key)).bearer_auth(TOKEN).send().await?)
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        let r = self.get(key).await?;
        match r.status().as_u16() {
            200 => Ok(Some(r.bytes().await?)),
            404 => Ok(None),
            s => bail!("GET {key}: {s} {}", r.text().await.unwrap_or_default()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<reqwest::Response> {
        Ok(self.http.delete(self.block_url(key)).bearer_auth(TOKEN).send().await?)
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.http.get(self.url("/metrics")).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The counter `name` once it reads `want`, or its last reading after 5 s. For counters a
    /// response's writer adds to after its bytes leave: the client can have every byte, and
    /// scrape, before the count lands.
    pub async fn counter_once_at(&self, name: &str, want: f64) -> Result<f64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.metric(name).await?;
            if got == want || std::time::Instant::now() > deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn drain_status(&self) -> Result<DrainStatus> {
        Ok(self
            .http
            .get(self.url("/v1/admin/drain"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until no dirty block is left.
    pub async fn wait_flushed(&self, timeout: Duration) -> Result<()> {
        eventually(timeout, Duration::from_millis(100), || async {
            let dirty = self.metric("blockproxy_cache_dirty_blocks").await?;
            if dirty > 0.0 {
                bail!("{dirty} dirty blocks left");
            }
            Ok(())
        })
        .await
    }
}

/// Sends a raw HTTP/1.1 request line as given (no client-side path normalisation) and returns
/// the status code.
pub async fn raw_status(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("no status line in {text:?}"))
}

/// The `serve` flags of these tests: the volumes file, the admin token, MinIO through toxiproxy.
fn serve_command(base: BlockproxyCommand, dir: &Path, opts: &ProxyOptions, store: &StoreFlags) -> BlockproxyCommand {
    let mut command = base
        .no_tls()
        .args(["--disk-quota", opts.quota.as_str()])
        .volumes_file(&dir.join("volumes.yaml"))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .args(["--reload-interval", "200ms"])
        .args(&opts.extra)
        .env("RUST_LOG", "info,blockproxy=debug");
    command = match store {
        StoreFlags::S3 { endpoint, keys: (access_key, secret_key) } => {
            command.s3_store(endpoint, access_key, secret_key)
        }
        StoreFlags::Gcs { endpoint } => command.gcs_store(endpoint),
        StoreFlags::Azure { endpoint, credentials_file } => command.azure_store(endpoint, credentials_file),
    };
    if opts.sync {
        command = command.arg("--sync");
    }
    if opts.no_writeback {
        command = command.arg("--no-writeback");
    }
    command
}

pub fn version_of(r: &reqwest::Response) -> Result<u64> {
    r.headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .context("response has no version header")
}

pub fn volumes_yaml(volumes: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("volumes:\n");
    for (id, bucket, token) in volumes {
        s.push_str(&format!("- {{id: {id}, bucket: {bucket}, prefix: {PREFIX}, token: {token}}}\n"));
    }
    s
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    v
}

impl ProxyProcess {
    /// PUT of exactly `version` (as a read repair carries an old copy: `x-blockproxy-repair`), for
    /// tests that need an older version to reach a proxy after a newer one.
    pub async fn put_exact_version(&self, key: &str, data: &[u8], version: u64) -> Result<reqwest::Response> {
        Ok(self
            .http
            .put(self.block_url(key))
            .bearer_auth(TOKEN)
            .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
            .header(VERSION_HEADER, version.to_string())
            .header(blockproxy::protocol::REPAIR_HEADER, "1")
            .body(data.to_vec())
            .send()
            .await?)
    }

    /// PUT into another volume than [`VOLUME`]; must be acknowledged.
    pub async fn put_ok_in(&self, volume: &str, token: &str, key: &str, data: &[u8]) -> Result<u64> {
        let r = self
            .http
            .put(self.url(&format!("/v1/volumes/{volume}/blocks/{key}")))
            .bearer_auth(token)
            .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
            .body(data.to_vec())
            .send()
            .await?;
        if r.status() != 200 {
            bail!("PUT {volume}/{key}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        version_of(&r)
    }

    /// Starts a drain (admin API) and returns its first status.
    pub async fn start_drain(&self) -> Result<DrainStatus> {
        Ok(self
            .http
            .post(self.url("/v1/admin/drain"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// A local-directory store folder as a `--store-endpoint` value.
pub fn file_store_endpoint(folder: &Path) -> String {
    format!("file://{}", folder.display())
}

impl Backend {
    /// Writes `{PREFIX}/{key}` straight into MinIO, as a writer that bypasses the proxies would.
    pub async fn put_object(&self, key: &str, data: &[u8]) -> Result<()> {
        let s3 = self.minio.s3_client();
        s3.put_object()
            .bucket(self.minio.bucket())
            .key(format!("{PREFIX}/{key}"))
            .body(data.to_vec().into())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}

/// A size-limited tmpfs mounted by the test (the tests run as root), so that a real filesystem
/// runs out of space. Unmounted on drop; drop it after the process using it is gone.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    pub fn new(path: &Path, size_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs on {} failed ({status}); this test needs root", path.display());
        }
        Ok(Self { path: path.to_path_buf() })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy, so a file still held open by a dying process cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Multipart staging at the home proxy (`/v1/volumes/{VOLUME}/uploads/{key}`), as a client does it.
impl ProxyProcess {
    pub fn upload_url(&self, key: &str) -> String {
        self.url(&format!("/v1/volumes/{VOLUME}/uploads/{key}"))
    }

    /// Creates an upload with these headers (attributes); returns its id.
    pub async fn create_upload(&self, key: &str, headers: &[(&str, &str)]) -> Result<String> {
        let mut req = self.http.post(self.upload_url(key)).bearer_auth(TOKEN);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await?;
        if r.status() != 200 {
            bail!("create upload {key}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(r.json::<blockproxy::protocol::UploadCreated>().await?.upload_id)
    }

    /// Stages one part; returns the response (its `etag` header is the part's ETag).
    pub async fn put_part(&self, key: &str, upload: &str, n: u32, data: &[u8]) -> Result<reqwest::Response> {
        Ok(self
            .http
            .put(self.upload_url(key))
            .query(&[("uploadId", upload), ("partNumber", &n.to_string())])
            .bearer_auth(TOKEN)
            .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
            .body(data.to_vec())
            .send()
            .await?)
    }

    /// Stages `data` cut into parts of `part_size`; returns the parts' ETags in order.
    pub async fn put_parts(&self, key: &str, upload: &str, data: &[u8], part_size: usize) -> Result<Vec<String>> {
        let mut etags = Vec::new();
        for (i, chunk) in data.chunks(part_size).enumerate() {
            let r = self.put_part(key, upload, i as u32 + 1, chunk).await?;
            if r.status() != 200 {
                bail!("part {}: {} {}", i + 1, r.status(), r.text().await.unwrap_or_default());
            }
            etags.push(r.headers()["etag"].to_str()?.to_owned());
        }
        Ok(etags)
    }

    /// Completes an upload with these parts (numbered from 1, with their ETags).
    pub async fn complete_upload(&self, key: &str, upload: &str, etags: &[String]) -> Result<reqwest::Response> {
        let parts = etags
            .iter()
            .enumerate()
            .map(|(i, e)| blockproxy::protocol::CompletePart { part_number: i as u32 + 1, etag: Some(e.clone()) })
            .collect();
        let body = blockproxy::protocol::CompleteUpload { parts, version: None };
        Ok(self
            .http
            .post(self.upload_url(key))
            .query(&[("uploadId", upload)])
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await?)
    }

    /// GET of a block of a clean object, pinned to the store's ETag.
    pub async fn get_block(&self, key: &str, index: u64, block_size: u64, etag: &str) -> Result<reqwest::Response> {
        Ok(self.block_request(key, index, block_size, etag).send().await?)
    }

    /// Bytes `range` (object offsets) of block `index`, pinned to `etag`.
    pub async fn get_block_part(
        &self,
        key: &str,
        index: u64,
        block_size: u64,
        etag: &str,
        range: std::ops::Range<usize>,
    ) -> Result<reqwest::Response> {
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        Ok(self.block_request(key, index, block_size, etag).header("range", header).send().await?)
    }

    fn block_request(&self, key: &str, index: u64, block_size: u64, etag: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.block_url(key))
            .query(&[("block", index), ("blockSize", block_size)])
            .bearer_auth(TOKEN)
            .header("if-match", etag)
    }

    /// GET of the bytes `range` (inclusive end excluded) of an object at its home.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<usize>) -> Result<reqwest::Response> {
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        Ok(self.http.get(self.block_url(key)).bearer_auth(TOKEN).header("range", header).send().await?)
    }

    pub async fn head(&self, key: &str) -> Result<reqwest::Response> {
        Ok(self.http.head(self.block_url(key)).bearer_auth(TOKEN).send().await?)
    }
}

impl Backend {
    /// HEAD of `{PREFIX}/{key}` in MinIO.
    pub async fn head_object(&self, key: &str) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        let s3 = self.minio.s3_client();
        match s3.head_object().bucket(self.minio.bucket()).key(format!("{PREFIX}/{key}")).send().await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }
}

/// Where the local-directory store keeps a key made of plain segments (no `%`, no leading `.`):
/// every directory's name ends in `%` (`proxy/src/store/local_path.rs`).
pub fn local_store_path(key: &str) -> std::path::PathBuf {
    let segments: Vec<&str> = key.split('/').collect();
    let (file, dirs) = segments.split_last().unwrap_or((&"", &[]));
    dirs.iter().map(|d| format!("{d}%")).chain([file.to_string()]).collect()
}
