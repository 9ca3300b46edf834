//! A real MinIO server with random credentials and one bucket.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use rand::distr::{Alphanumeric, SampleString};
use tempfile::TempDir;

use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;
use crate::tools::{Tool, tool_path};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The region the S3 clients sign for.
pub const REGION: &str = "us-east-1";

/// A running MinIO on `127.0.0.1`, with a data folder of its own; stopped on drop.
#[derive(Debug)]
pub struct Minio {
    // The process drops first, then its data, then the log folder.
    process: Process,
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
    bucket: String,
    data: TempDir,
    logs: LogDir,
}

impl Minio {
    /// Starts MinIO with random root credentials, waits until it is ready and creates the bucket
    /// [`Minio::bucket`]. Its Prometheus metrics are public (no token needed).
    pub async fn start() -> Result<Self> {
        crate::init_crypto();
        let logs = LogDir::new()?;
        let data = tempfile::Builder::new().prefix("testenv-minio-").tempdir()?;
        let port = free_port()?;
        let console_port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let access_key = format!("testenv{}", random(8).to_lowercase());
        let secret_key = random(32);
        let process = Process::spawn(
            "minio",
            &tool_path(Tool::Minio)?,
            [
                "server".to_owned(),
                "--quiet".to_owned(),
                "--address".to_owned(),
                addr.to_string(),
                "--console-address".to_owned(),
                format!("127.0.0.1:{console_port}"),
                data.path().join("data").display().to_string(),
            ],
            &[
                ("MINIO_ROOT_USER", &access_key),
                ("MINIO_ROOT_PASSWORD", &secret_key),
                ("MINIO_BROWSER", "off"),
                ("MINIO_UPDATE", "off"),
                ("MINIO_PROMETHEUS_AUTH_TYPE", "public"),
                ("HOME", &data.path().display().to_string()),
            ],
            &logs,
        )?;
        let minio = Self { process, addr, access_key, secret_key, bucket: "blockproxy-test".to_owned(), data, logs };
        minio.wait_ready().await?;
        let s3 = minio.s3_client();
        s3.create_bucket()
            .bucket(&minio.bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {}", minio.bucket))?;
        Ok(minio)
    }

    async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let url = format!("{}/minio/health/ready", self.endpoint());
        eventually(READY_TIMEOUT, Duration::from_millis(100), || async {
            self.process.ensure_running()?;
            let status = http.get(&url).send().await?.status();
            if !status.is_success() {
                bail!("GET {url}: {status}");
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            anyhow!(
                "minio did not become ready: {e:#}\nlogs in {}:\n{}",
                self.logs.path().display(),
                self.logs.tail(30)
            )
        })
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root access key.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The root secret key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The folder with MinIO's log.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// The folder MinIO stores its objects in.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// An S3 client for this server: path-style, region us-east-1, the root credentials.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        self.s3_client_for(&self.endpoint())
    }

    /// An S3 client with this server's credentials for another `endpoint`, e.g. a toxiproxy
    /// proxy in front of this server (`http://127.0.0.1:<port>`).
    pub fn s3_client_for(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let credentials = Credentials::new(&self.access_key, &self.secret_key, None, None, "blockproxy-testenv");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(REGION))
            .credentials_provider(credentials)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// MinIO's cluster metrics in the Prometheus text format (`/minio/v2/metrics/cluster`), e.g.
    /// `minio_s3_requests_total`.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/minio/v2/metrics/cluster", self.endpoint());
        let response = reqwest::get(&url).await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        Ok(text)
    }
}

fn random(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}
