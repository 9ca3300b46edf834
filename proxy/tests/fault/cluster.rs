//! The system under test: MinIO, toxiproxy, two groups of `blockproxy serve` processes, and the
//! clients' discovery files.

use crate::client_support::{GroupSpec, PREFIX, TOKEN, VOLUME, discovery, minio_store, write_discovery};
use anyhow::{Context, Result, bail};
use blockproxy::protocol::{DRAIN_PATH, DrainStatus};
use blockproxy::store::{DynStore, Store};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Minio, Toxiproxy, eventually};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Groups and their sizes: the first is the group of 3 of issue 9; the second is where the
/// nemesis switches clients to.
pub const GROUPS: [(&str, usize); 2] = [("a", 3), ("b", 2)];
pub const ADMIN_TOKEN: &str = "fault-admin-token";
/// The toxiproxy link of the clients' direct-store fallback (cut with the store).
pub const CLIENT_STORE_LINK: &str = "client-store";
/// On SIGTERM the proxies flush this long; the nemesis waits a little longer for the exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Which groups a client's discovery file lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Both,
    Only(usize),
}

/// One proxy, with the toxiproxy links in front of it (clients -> proxy) and behind it
/// (proxy -> MinIO).
pub struct FaultProxy {
    pub name: String,
    pub group: usize,
    pub proc: Blockproxy,
    pub dir: PathBuf,
    /// The toxiproxy link the clients use, and its address.
    pub client_link: String,
    pub client_addr: String,
    pub store_link: String,
    /// How many times its cache folder was replaced after a drain (the operator's new PVC).
    pub replaced: usize,
    http: reqwest::Client,
}

impl FaultProxy {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proc.addr())
    }

    /// Dirty blocks left, from `/metrics`.
    pub async fn dirty_blocks(&self) -> Result<f64> {
        let text = self.http.get(self.url("/metrics")).send().await?.error_for_status()?.text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix("blockproxy_cache_dirty_blocks ")?.trim().parse().ok())
            .context("no blockproxy_cache_dirty_blocks metric")
    }

    /// The drain API: `start` begins a drain (the operator's call before it removes a proxy),
    /// otherwise this reads its progress.
    pub async fn drain(&self, start: bool) -> Result<DrainStatus> {
        let url = self.url(DRAIN_PATH);
        let request = if start { self.http.post(url) } else { self.http.get(url) };
        Ok(request.bearer_auth(ADMIN_TOKEN).send().await?.error_for_status()?.json().await?)
    }

    /// After a drain finished: the proxy is deleted with its cache (the operator deletes the Pod
    /// and its PVC) and a new one starts on an empty cache at the same address. The old folder
    /// is kept beside it for inspection.
    pub async fn replace_after_drain(&mut self) -> Result<()> {
        self.proc.kill();
        self.replaced += 1;
        let cache = self.dir.join("cache");
        std::fs::rename(&cache, self.dir.join(format!("cache-drained-{}", self.replaced)))
            .with_context(|| format!("moving {} away", cache.display()))?;
        self.proc.restart().await?;
        Ok(())
    }
}

pub struct Cluster {
    pub minio: Minio,
    pub toxi: Toxiproxy,
    pub proxies: Vec<FaultProxy>,
    /// One discovery file per client, so the nemesis can move clients one at a time.
    pub discovery_files: Vec<PathBuf>,
    pub client_store_endpoint: String,
}

impl Cluster {
    pub async fn start(root: &Path, clients: usize) -> Result<Self> {
        let minio = Minio::start().await?;
        let toxi = Toxiproxy::start().await?;
        let volumes = root.join("volumes.yaml");
        std::fs::write(
            &volumes,
            format!("volumes:\n- {{id: {VOLUME}, bucket: {}, prefix: {PREFIX}, token: {TOKEN}}}\n", minio.bucket()),
        )?;
        let admin_token = root.join("admin-token");
        std::fs::write(&admin_token, ADMIN_TOKEN)?;
        let mut proxies = Vec::new();
        for (group, (group_name, size)) in GROUPS.iter().enumerate() {
            for i in 0..*size {
                let name = format!("{group_name}{i}");
                let store_link = format!("store-{name}");
                let store_addr = toxi.create_proxy(&store_link, &minio.addr().to_string()).await?;
                let dir = root.join(&name);
                std::fs::create_dir_all(&dir)?;
                let command = BlockproxyCommand::serve(env!("CARGO_BIN_EXE_blockproxy"), &name, &dir.join("cache"))?
                    .no_tls()
                    .args(["--disk-quota", "1Gi", "--reload-interval", "500ms"])
                    .arg(format!("--shutdown-grace={}s", SHUTDOWN_GRACE.as_secs()))
                    .volumes_file(&volumes)
                    .arg("--admin-token-file")
                    .arg(&admin_token)
                    .s3_store(&format!("http://{store_addr}"), minio.access_key(), minio.secret_key())
                    .env("RUST_LOG", "info,blockproxy=debug");
                let proc = Blockproxy::start(command).await?;
                let client_link = format!("to-{name}");
                let client_addr = toxi.create_proxy(&client_link, &proc.addr().to_string()).await?.to_string();
                let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
                proxies.push(FaultProxy {
                    name,
                    group,
                    proc,
                    dir,
                    client_link,
                    client_addr,
                    store_link,
                    replaced: 0,
                    http,
                });
            }
        }
        let client_store_endpoint =
            format!("http://{}", toxi.create_proxy(CLIENT_STORE_LINK, &minio.addr().to_string()).await?);
        let mut cluster = Self {
            minio,
            toxi,
            proxies,
            discovery_files: (0..clients).map(|c| root.join(format!("discovery-{c}.json"))).collect(),
            client_store_endpoint,
        };
        for c in 0..clients {
            cluster.set_membership(c, Membership::Both)?;
        }
        Ok(cluster)
    }

    /// Rewrites client `client`'s discovery file (atomically, as kubelet swaps a ConfigMap).
    pub fn set_membership(&mut self, client: usize, membership: Membership) -> Result<()> {
        let groups: Vec<GroupSpec> = GROUPS
            .iter()
            .enumerate()
            .filter(|(g, _)| membership == Membership::Both || membership == Membership::Only(*g))
            .map(|(g, (name, _))| GroupSpec {
                name: (*name).to_owned(),
                addresses: self.proxies.iter().filter(|p| p.group == g).map(|p| p.client_addr.clone()).collect(),
            })
            .collect();
        write_discovery(&self.discovery_files[client], &discovery(self.minio.bucket(), None, &groups))
    }

    /// The object store as the clients' direct fallback reaches it (through its toxiproxy link).
    pub async fn client_store(&self) -> DynStore {
        let store = blockproxy::store::S3Store::new(blockproxy::store::S3StoreConfig {
            endpoint: Some(self.client_store_endpoint.clone()),
            region: "us-east-1".into(),
            path_style: true,
            credentials: Some((self.minio.access_key().into(), self.minio.secret_key().into())),
            sse: false,
        })
        .await;
        Arc::new(store)
    }

    /// Every link up, every toxic gone, every proxy running.
    pub async fn heal(&mut self) -> Result<()> {
        self.toxi.reset().await?;
        for p in &mut self.proxies {
            if !p.proc.is_running() {
                p.proc.restart().await?;
            }
        }
        Ok(())
    }

    /// Waits until no proxy holds a dirty block.
    pub async fn wait_flushed(&self, timeout: Duration) -> Result<()> {
        eventually(timeout, Duration::from_millis(250), || async {
            for p in &self.proxies {
                let dirty = p.dirty_blocks().await?;
                if dirty > 0.0 {
                    bail!("{} still holds {dirty} dirty blocks", p.name);
                }
            }
            Ok(())
        })
        .await
    }

    /// The value MinIO itself holds for `key`, and its recorded version.
    pub async fn in_store(&self, key: &str) -> Result<Option<(bytes::Bytes, u64)>> {
        let store = minio_store(&self.minio).await;
        Ok(store.get(self.minio.bucket(), &format!("{PREFIX}/{key}")).await?.map(|b| (b.data, b.version)))
    }
}
