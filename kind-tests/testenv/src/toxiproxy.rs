//! A real toxiproxy server and a small client for its HTTP API.
//!
//! Toxics are added to the `downstream` direction (upstream server -> client), so they delay or
//! throttle the responses; use [`Toxiproxy::add_toxic`] for anything else.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;
use crate::tools::{Tool, tool_path};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running toxiproxy server on `127.0.0.1`; stopped on drop.
#[derive(Debug)]
pub struct Toxiproxy {
    process: Process,
    api: ToxiproxyApi,
    logs: LogDir,
}

/// A client of a toxiproxy server's HTTP API (a local [`Toxiproxy`]'s, or one running in a
/// cluster, reached through a [`crate::cluster::Forward`]).
#[derive(Debug, Clone)]
pub struct ToxiproxyApi {
    api: String,
    http: reqwest::Client,
}

impl std::ops::Deref for Toxiproxy {
    type Target = ToxiproxyApi;

    fn deref(&self) -> &ToxiproxyApi {
        &self.api
    }
}

#[derive(Deserialize)]
struct ProxyResponse {
    listen: String,
}

impl Toxiproxy {
    /// Starts toxiproxy-server and waits until its API answers.
    pub async fn start() -> Result<Self> {
        crate::init_crypto();
        let logs = LogDir::new()?;
        let port = free_port()?;
        let process = Process::spawn(
            "toxiproxy",
            &tool_path(Tool::Toxiproxy)?,
            ["-host".to_owned(), "127.0.0.1".to_owned(), "-port".to_owned(), port.to_string()],
            &[],
            &logs,
        )?;
        let toxiproxy = Self { process, api: ToxiproxyApi::new(&format!("http://127.0.0.1:{port}"))?, logs };
        eventually(READY_TIMEOUT, Duration::from_millis(50), || async {
            toxiproxy.process.ensure_running()?;
            toxiproxy.api.version().await.map(drop)
        })
        .await
        .map_err(|e| {
            anyhow!(
                "toxiproxy did not become ready: {e:#}\nlogs in {}:\n{}",
                toxiproxy.logs.path().display(),
                toxiproxy.logs.tail(30)
            )
        })?;
        Ok(toxiproxy)
    }

    /// The folder with toxiproxy's log.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Creates the proxy `name` that forwards a free loopback port to `upstream`
    /// (`host:port`), and returns the address it listens on.
    pub async fn create_proxy(&self, name: &str, upstream: &str) -> Result<SocketAddr> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        self.api.create_proxy_on(name, &listen, upstream).await
    }
}

impl ToxiproxyApi {
    /// A client of the API at `url` (`http://host:port`).
    pub fn new(url: &str) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self { api: url.trim_end_matches('/').to_owned(), http })
    }

    /// The API's base URL.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    /// The server's version (also a readiness check).
    pub async fn version(&self) -> Result<String> {
        let url = format!("{}/version", self.api);
        Ok(check(self.http.get(&url).send().await, &url).await?.text().await?)
    }

    /// Creates the proxy `name` listening on `listen` (`ip:port`) and forwarding to `upstream`,
    /// and returns the address it listens on.
    pub async fn create_proxy_on(&self, name: &str, listen: &str, upstream: &str) -> Result<SocketAddr> {
        let body = json!({ "name": name, "listen": listen, "upstream": upstream, "enabled": true });
        let response: ProxyResponse = self.post("/proxies", &body).await?.json().await?;
        response.listen.parse().with_context(|| format!("proxy {name} listens on {:?}", response.listen))
    }

    /// The toxics of `proxy`, as toxiproxy's JSON.
    pub async fn toxics(&self, proxy: &str) -> Result<Value> {
        let url = format!("{}/proxies/{proxy}/toxics", self.api);
        Ok(check(self.http.get(&url).send().await, &url).await?.json().await?)
    }

    /// Adds a latency toxic to `proxy`: every response chunk is delayed by `latency_ms`
    /// plus or minus up to `jitter_ms`. Returns the toxic's name, for [`Toxiproxy::remove_toxic`].
    pub async fn add_latency(&self, proxy: &str, latency_ms: u64, jitter_ms: u64) -> Result<String> {
        self.add_toxic(
            proxy,
            json!({
                "name": "latency_downstream",
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": { "latency": latency_ms, "jitter": jitter_ms },
            }),
        )
        .await
    }

    /// Adds a latency toxic to the requests through `proxy`: they reach the upstream
    /// `latency_ms` late, while its answers come back at once. Returns the toxic's name.
    pub async fn add_request_latency(&self, proxy: &str, latency_ms: u64) -> Result<String> {
        self.add_toxic(
            proxy,
            json!({
                "name": "latency_upstream",
                "type": "latency",
                "stream": "upstream",
                "toxicity": 1.0,
                "attributes": { "latency": latency_ms, "jitter": 0 },
            }),
        )
        .await
    }

    /// Adds a bandwidth toxic to `proxy`: responses flow at no more than `kb_per_second`
    /// kilobytes per second. Returns the toxic's name.
    pub async fn add_bandwidth(&self, proxy: &str, kb_per_second: u64) -> Result<String> {
        self.add_toxic(
            proxy,
            json!({
                "name": "bandwidth_downstream",
                "type": "bandwidth",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": { "rate": kb_per_second },
            }),
        )
        .await
    }

    /// Adds any toxic, given as toxiproxy's JSON (`name`, `type`, `stream`, `toxicity`,
    /// `attributes`). Returns the toxic's name.
    pub async fn add_toxic(&self, proxy: &str, toxic: Value) -> Result<String> {
        let created: Value = self.post(&format!("/proxies/{proxy}/toxics"), &toxic).await?.json().await?;
        created["name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("toxiproxy returned a toxic without a name: {created}"))
    }

    /// Removes the toxic `toxic` from `proxy`.
    pub async fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<()> {
        let url = format!("{}/proxies/{proxy}/toxics/{toxic}", self.api);
        check(self.http.delete(&url).send().await, &url).await?;
        Ok(())
    }

    /// Takes `proxy` down (`true`: it closes its connections and refuses new ones, like a cut
    /// link) or brings it back up (`false`).
    pub async fn set_down(&self, proxy: &str, down: bool) -> Result<()> {
        self.post(&format!("/proxies/{proxy}"), &json!({ "enabled": !down })).await?;
        Ok(())
    }

    /// Enables every proxy and removes every toxic.
    pub async fn reset(&self) -> Result<()> {
        self.post("/reset", &json!({})).await?;
        Ok(())
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.api);
        check(self.http.post(&url).json(body).send().await, &url).await
    }
}

async fn check(response: reqwest::Result<reqwest::Response>, url: &str) -> Result<reqwest::Response> {
    let response = response.with_context(|| format!("toxiproxy API {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("toxiproxy API {url}: {status}: {text}");
    }
    Ok(response)
}
