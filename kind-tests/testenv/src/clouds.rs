//! The cloud store emulators: [`Azurite`] (Azure Blob) and [`FakeGcs`] (fake-gcs-server, GCS's
//! JSON API), each on a free loopback port with one bucket, in memory, stopped on drop.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::distr::{Alphanumeric, SampleString};

use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;
use crate::tools::{Tool, tool_path};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "blockproxy-test";

/// Waits until `url` answers (any HTTP status) while `process` runs.
async fn wait_answers(process: &Process, logs: &LogDir, what: &str, url: &str) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    eventually(READY_TIMEOUT, Duration::from_millis(100), || async {
        process.ensure_running()?;
        http.get(url).send().await?;
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{what} did not start: {e:#}\nlogs in {}:\n{}", logs.path().display(), logs.tail(30)))
}

/// A running Azurite Blob service with a random account and key, and one container.
#[derive(Debug)]
pub struct Azurite {
    process: Process,
    addr: SocketAddr,
    account: String,
    key: String,
    logs: LogDir,
}

impl Azurite {
    pub async fn start() -> Result<Self> {
        let logs = LogDir::new()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let account = format!("testenv{}", Alphanumeric.sample_string(&mut rand::rng(), 8).to_lowercase());
        let key = B64.encode(rand::random::<[u8; 32]>());
        let accounts = format!("{account}:{key}");
        let path = std::env::var("PATH").unwrap_or_default();
        let process = Process::spawn(
            "azurite",
            &tool_path(Tool::Azurite)?,
            [
                "--blobHost".to_owned(),
                "127.0.0.1".to_owned(),
                "--blobPort".to_owned(),
                addr.port().to_string(),
                "--inMemoryPersistence".to_owned(),
                "--disableTelemetry".to_owned(),
                "--skipApiVersionCheck".to_owned(),
            ],
            &[("AZURITE_ACCOUNTS", &accounts), ("PATH", &path)],
            &logs,
        )?;
        let azurite = Self { process, addr, account, key, logs };
        wait_answers(&azurite.process, &azurite.logs, "azurite", &format!("http://{}/", azurite.addr)).await?;
        azurite.create_container().await?;
        Ok(azurite)
    }

    /// `PUT ?restype=container`, signed with the account key (Shared Key).
    async fn create_container(&self) -> Result<()> {
        let date = httpdate_now();
        let path = format!("/{}/{BUCKET}", self.account);
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2021-08-06\n/{}{path}\nrestype:container",
            self.account
        );
        let key = B64.decode(&self.key)?;
        let sig = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), to_sign.as_bytes());
        let resp = reqwest::Client::new()
            .put(format!("http://{}{path}?restype=container", self.addr))
            .header("x-ms-date", date)
            .header("x-ms-version", "2021-08-06")
            .header("authorization", format!("SharedKey {}:{}", self.account, B64.encode(sig.as_ref())))
            .send()
            .await
            .context("creating the Azurite container")?;
        if !resp.status().is_success() {
            bail!("creating the Azurite container: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// The account's blob endpoint, `http://127.0.0.1:<port>/<account>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/{}", self.addr, self.account)
    }

    /// The server's address (for a toxiproxy link in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The account key (base64).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The proxy's `--store-credentials-file` for this account (YAML).
    pub fn credentials_yaml(&self) -> String {
        format!("account_name: {}\naccount_key: {}\n", self.account, self.key)
    }

    /// The container created at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }
}

fn httpdate_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// Creates `bucket` in the fake-gcs-server at `endpoint` (JSON API); one that exists already
/// (409) is fine, so a timed-out attempt can be repeated.
pub async fn create_gcs_bucket(endpoint: &str, bucket: &str) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=blockproxy-test"))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .context("creating the fake-gcs-server bucket")?;
    if !resp.status().is_success() && resp.status() != reqwest::StatusCode::CONFLICT {
        bail!("creating the fake-gcs-server bucket: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    Ok(())
}

/// A running fake-gcs-server (plain HTTP, in memory) with one bucket.
#[derive(Debug)]
pub struct FakeGcs {
    process: Process,
    addr: SocketAddr,
    logs: LogDir,
}

impl FakeGcs {
    pub async fn start() -> Result<Self> {
        let logs = LogDir::new()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let process = Process::spawn(
            "fake-gcs-server",
            &tool_path(Tool::FakeGcs)?,
            [
                "-scheme".to_owned(),
                "http".to_owned(),
                "-backend".to_owned(),
                "memory".to_owned(),
                "-host".to_owned(),
                "127.0.0.1".to_owned(),
                "-port".to_owned(),
                addr.port().to_string(),
                "-public-host".to_owned(),
                addr.to_string(),
                "-external-url".to_owned(),
                format!("http://{addr}"),
                "-log-level".to_owned(),
                "warn".to_owned(),
            ],
            &[],
            &logs,
        )?;
        let gcs = Self { process, addr, logs };
        wait_answers(&gcs.process, &gcs.logs, "fake-gcs-server", &format!("{}/_internal/healthcheck", gcs.endpoint()))
            .await?;
        create_gcs_bucket(&gcs.endpoint(), BUCKET).await?;
        Ok(gcs)
    }

    /// The server's address (for a toxiproxy link in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (JSON API at `/storage/v1`, uploads at `/upload/storage/v1`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }
}
