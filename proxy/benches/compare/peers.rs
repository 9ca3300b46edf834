//! The peers the benchmark measures, all real processes on loopback: MinIO behind a toxiproxy WAN,
//! the `blockproxy` binary, and Debian's nginx with `proxy_cache` (plain HTTP, and HTTPS for
//! figure 9).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use blockproxy_testenv::ports::free_port;
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Minio, Tls, Toxiproxy};
use serde_json::json;

pub const VOLUME: &str = "vol1";
pub const TOKEN: &str = "bench-token";
pub const PREFIX: &str = "bench";
const WAN: &str = "wan";

/// MinIO with a toxiproxy WAN in front of it: `one_way_ms` of latency in each direction, and an
/// optional bandwidth cap (KB/s, each direction, per connection as toxiproxy applies it).
pub struct Wan {
    pub minio: Minio,
    _toxi: Toxiproxy,
    pub addr: SocketAddr,
}

impl Wan {
    pub async fn start(one_way_ms: u64, bandwidth_kbps: u64) -> Result<Self> {
        let minio = Minio::start().await?;
        let toxi = Toxiproxy::start().await?;
        let addr = toxi.create_proxy(WAN, &minio.addr().to_string()).await?;
        toxi.add_latency(WAN, one_way_ms, 0).await?;
        toxi.add_toxic(
            WAN,
            json!({"name": "latency_upstream", "type": "latency", "stream": "upstream",
                   "toxicity": 1.0, "attributes": {"latency": one_way_ms, "jitter": 0}}),
        )
        .await?;
        if bandwidth_kbps > 0 {
            toxi.add_bandwidth(WAN, bandwidth_kbps).await?;
            toxi.add_toxic(
                WAN,
                json!({"name": "bandwidth_upstream", "type": "bandwidth", "stream": "upstream",
                       "toxicity": 1.0, "attributes": {"rate": bandwidth_kbps}}),
            )
            .await?;
        }
        let wan = Self { minio, _toxi: toxi, addr };
        wan.allow_anonymous_reads().await?;
        Ok(wan)
    }

    /// The store endpoint across the WAN.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// aws-sdk-s3 across the WAN (the "direct" peer).
    pub fn direct_s3(&self) -> aws_sdk_s3::Client {
        self.minio.s3_client_for(&self.endpoint())
    }

    /// aws-sdk-s3 on loopback, bypassing the WAN (loading data, checking what reached the store).
    pub fn local_s3(&self) -> aws_sdk_s3::Client {
        self.minio.s3_client()
    }

    /// aws-sdk-s3 for another S3 endpoint (the mount sidecar's) with its own keys.
    pub fn s3_client_with(&self, endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(access_key, secret_key, None, None, "bench"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// A public-read bucket policy, so nginx fetches objects without SigV4.
    async fn allow_anonymous_reads(&self) -> Result<()> {
        let bucket = self.minio.bucket();
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [format!("arn:aws:s3:::{bucket}/*")],
            }],
        });
        self.local_s3()
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .context("setting the public-read bucket policy")?;
        Ok(())
    }
}

/// A `blockproxy serve` process with its own cache folder (started by the testenv's
/// [`Blockproxy`]). Killed (SIGKILL) on drop.
pub struct BlockProxy {
    pub name: String,
    proc: Blockproxy,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    scheme: &'static str,
}

/// How long both caches trust a cached object before asking the store: nginx's
/// `proxy_cache_valid 200 1h` (nginx.conf.template), and blockproxy's volume `metadataTtlMs`.
/// The default TTL (1 s) makes a block read less often than once a second wait a WAN round trip
/// to be revalidated, which nginx with this configuration never does; hits are compared at equal
/// freshness.
pub const TRUSTED_FOR_MS: u64 = 3_600_000;

impl BlockProxy {
    /// Starts a plain-HTTP proxy for [`VOLUME`] on `store_endpoint`; `extra` are more `serve` flags.
    pub async fn start(name: &str, root: &Path, wan: &Wan, store_endpoint: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with_tls(name, root, wan, store_endpoint, extra, Tls::Off).await
    }

    /// [`BlockProxy::start`] serving its clients with `tls` (e.g. `Tls::Files` for figure 9).
    pub async fn start_with_tls(
        name: &str,
        root: &Path,
        wan: &Wan,
        store_endpoint: &str,
        extra: &[&str],
        tls: Tls,
    ) -> Result<Self> {
        let scheme = if matches!(tls, Tls::Off) { "http" } else { "https" };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let volumes = dir.join("volumes.yaml");
        std::fs::write(
            &volumes,
            format!(
                "volumes:\n- {{id: {VOLUME}, bucket: {}, prefix: {PREFIX}, token: {TOKEN}, metadataTtlMs: {TRUSTED_FOR_MS}}}\n",
                wan.minio.bucket()
            ),
        )?;
        let command = BlockproxyCommand::serve(env!("CARGO_BIN_EXE_blockproxy"), name, &dir.join("cache"))?
            .tls(tls)
            .args(["--disk-quota", "8Gi"])
            .volumes_file(&volumes)
            .s3_store(store_endpoint, wan.minio.access_key(), wan.minio.secret_key())
            .args(extra)
            // Like nginx's `access_log off`: no per-request logging in the measured path.
            .env("RUST_LOG", "warn")
            // Start-up with many cached blocks is measured: poll often, wait long.
            .ready_within(Duration::from_secs(300), Duration::from_millis(2));
        let proc = Blockproxy::start(command).await?;
        Ok(Self { name: name.into(), addr: proc.addr(), proc, dir, scheme })
    }

    /// SIGKILL, then start again; returns the start-up time (spawn until `/readyz` is 200).
    pub async fn restart(&mut self) -> Result<Duration> {
        self.proc.restart().await
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn block_url(&self, key: &str) -> String {
        block_url(&self.base(), key)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// The value of an unlabelled metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        metric_at(&format!("{}/metrics", self.base()), name).await.with_context(|| format!("on {}", self.name))
    }
}

/// The value of the unlabelled metric `name` in the Prometheus text at `url`.
pub async fn metric_at(url: &str, name: &str) -> Result<f64> {
    // The TLS proxy's certificate is the bench's own; only the load generator checks it.
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    let text = http.get(url).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("metric {name} not found at {url}"))
}

/// The block API URL of `key` on the server at `base` (`http(s)://addr`; nginx serves the same
/// paths).
pub fn block_url(base: &str, key: &str) -> String {
    format!("{base}/v1/volumes/{VOLUME}/blocks/{key}")
}

/// nginx with `proxy_cache`, from `proxy/benches/nginx.conf.template`, in the foreground.
pub struct Nginx {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The HTTPS listener (same server, same cache), with the bench's certificate.
    pub tls_addr: SocketAddr,
    pub dir: PathBuf,
}

const NGINX_TEMPLATE: &str = include_str!("../nginx.conf.template");

impl Nginx {
    /// Starts nginx; its HTTPS listener serves `cert` (PEM certificate and key files).
    pub async fn start(root: &Path, wan: &Wan, cert: &crate::tls::CertFiles) -> Result<Self> {
        let dir = root.join("nginx");
        let cache = dir.join("cache");
        for d in [&dir, &cache, &dir.join("client_body"), &dir.join("proxy_temp")] {
            std::fs::create_dir_all(d)?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // Workers must be able to write the cache: as root, keep them root (the folders are ours).
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let conf = NGINX_TEMPLATE
            .replace("{{USER_DIRECTIVE}}", if is_root { "user root;" } else { "" })
            .replace("{{DIR}}", &dir.display().to_string())
            .replace("{{CACHE_DIR}}", &cache.display().to_string())
            .replace("{{LISTEN}}", &addr.to_string())
            .replace("{{TLS_LISTEN}}", &tls_addr.to_string())
            .replace("{{TLS_CERT}}", &cert.cert.display().to_string())
            .replace("{{TLS_KEY}}", &cert.key.display().to_string())
            .replace("{{UPSTREAM}}", &wan.addr.to_string())
            .replace("{{VOLUME}}", VOLUME)
            .replace("{{BUCKET}}", wan.minio.bucket())
            .replace("{{PREFIX}}", PREFIX);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nginx (run hack/nginx.sh to install it)")?;
        let mut n = Self { child: Some(child), addr, tls_addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() || TcpStream::connect(tls_addr).is_err() {
            if let Some(c) = n.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "nginx exited with {status}: {}",
                    std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(n)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn block_url(&self, key: &str) -> String {
        block_url(&format!("http://{}", self.addr), key)
    }

    pub fn tls_block_url(&self, key: &str) -> String {
        block_url(&format!("https://{}", self.tls_addr), key)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGQUIT is nginx's graceful stop; the master takes its workers along.
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `BLOCKPROXY_NGINX`, else `nginx` on PATH, else Debian's `/usr/sbin/nginx`.
pub fn nginx_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BLOCKPROXY_NGINX") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// Resident set size of `pid` in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// RSS of `pid` plus its direct children (nginx's master and workers), in KiB.
pub fn rss_tree_kib(pid: u32) -> Option<u64> {
    Some(rss_kib(pid)? + children(pid).into_iter().filter_map(rss_kib).sum::<u64>())
}

/// The CPU time, user and system, that `pid` and its direct children have used, in seconds. A
/// process's own figure includes its threads that have ended.
pub fn cpu_tree_secs(pid: u32) -> Option<f64> {
    // /proc reports CPU times in USER_HZ, 100 a second on every Linux ABI.
    const TICKS_PER_SEC: f64 = 100.0;
    let ticks = |pid: u32| {
        let fields = stat_fields(pid)?;
        // utime and stime: fields 14 and 15 of stat, 12th and 13th after the command name.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let total = ticks(pid)? + children(pid).into_iter().filter_map(ticks).sum::<u64>();
    Some(total as f64 / TICKS_PER_SEC)
}

/// The fields of `/proc/PID/stat` after the parenthesised command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The direct children of `pid` (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}
