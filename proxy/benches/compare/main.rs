//! `cargo bench -p blockproxy --bench compare [-- --quick] [--bandwidth-kbps N] [--runs N] ...`
//!
//! Measures blockproxy against its peers in one run, on one machine and one data set, and prints
//! ratios (see README, "Benchmarks"). Peers, all real processes on loopback:
//! - MinIO behind a toxiproxy WAN (25 ms each way = 50 ms RTT, bandwidth cap per connection);
//! - `blockproxy serve`: one proxy, and a group of 3 (routed by the client library's rendezvous
//!   function, and through the client library itself);
//! - Debian's nginx with `proxy_cache` in front of the same MinIO (proxy/benches/nginx.conf.template);
//! - for figure 9, a TLS proxy and nginx's TLS listener, with one self-signed certificate ([`tls`]);
//! - aws-sdk-s3 straight to MinIO across the WAN.
//!
//! Every HTTP peer gets the same load generator ([`load`]): a closed loop of hyper requests at a
//! stated concurrency. Each figure is measured `runs` times, the peers interleaved within each run,
//! and reported as the median with min and max. A table goes to stdout and JSON to
//! `target/bench/compare-<unix time>.json`.

mod load;
mod minimal_server;
mod mount;
mod paced;
mod peers;
mod scale;
mod tls;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use blockproxy::client::rendezvous::{self, Node};
use blockproxy::client::{Client, ClientConfig};
use blockproxy::protocol::{
    BlockKey, CHECKSUM_HEADER, Checksum, DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation, VolumeId,
};
use blockproxy_testenv::Tls;
use bytes::Bytes;
use http::Uri;
use hyper_util::client::legacy::connect::Connect;
use load::{Http, LoadResult, closed_loop, for_each, http_client};
use peers::{BlockProxy, Nginx, PREFIX, TOKEN, VOLUME, Wan, cpu_tree_secs, rss_kib, rss_tree_kib};
use rand::RngCore;
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;
const LARGE: usize = 4 * MIB;
const SMALL: usize = 64 * 1024;
const WRITE: usize = MIB;
/// Figure 4's paced writes send their body at this rate (about a 1.6 Gbit/s link).
const PACE_BYTES_PER_SEC: f64 = 200e6;
const COLD: usize = MIB;
const STARTUP_BLOCK: usize = 4096;

#[derive(Debug, Clone)]
struct Params {
    quick: bool,
    runs: usize,
    duration: Duration,
    concurrency_large: usize,
    concurrency_small: usize,
    large_blocks: usize,
    small_blocks: usize,
    cold_reads: usize,
    writes: usize,
    startup_blocks: usize,
    one_way_ms: u64,
    bandwidth_kbps: u64,
    figures: Vec<u32>,
    out: PathBuf,
}

impl Params {
    fn parse() -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
        let quick = env("BLOCKPROXY_BENCH_QUICK").is_some_and(|v| v != "0") || args.iter().any(|a| a == "--quick");
        args.retain(|a| a != "--quick");
        let mut p = Self {
            quick,
            runs: if quick { 3 } else { 5 },
            duration: Duration::from_secs(if quick { 3 } else { 5 }),
            concurrency_large: 8,
            concurrency_small: 32,
            large_blocks: if quick { 32 } else { 64 },
            small_blocks: if quick { 512 } else { 2048 },
            cold_reads: if quick { 8 } else { 16 },
            writes: if quick { 12 } else { 24 },
            startup_blocks: 100_000,
            one_way_ms: 25,
            // 500 Mbit/s per connection.
            bandwidth_kbps: 62_500,
            figures: (1..=9).collect(),
            out: Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join("target/bench"),
        };
        if let Some(v) = env("BLOCKPROXY_BENCH_BANDWIDTH_KBPS") {
            p.bandwidth_kbps = v.parse().context("BLOCKPROXY_BENCH_BANDWIDTH_KBPS")?;
        }
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--runs" => p.runs = value()?.parse()?,
                "--duration-secs" => p.duration = Duration::from_secs_f64(value()?.parse()?),
                "--bandwidth-kbps" => p.bandwidth_kbps = value()?.parse()?,
                "--startup-blocks" => p.startup_blocks = value()?.parse()?,
                "--concurrency-large" => p.concurrency_large = value()?.parse()?,
                "--concurrency-small" => p.concurrency_small = value()?.parse()?,
                "--out" => p.out = value()?.into(),
                "--figures" => {
                    p.figures = value()?.split(',').map(|f| f.trim().parse()).collect::<Result<_, _>>()?;
                }
                "--help" | "-h" => {
                    println!(
                        "compare [--quick] [--runs N] [--duration-secs S] [--bandwidth-kbps KB/s (0 = uncapped)] \
                         [--startup-blocks N] [--figures 1,2,..] [--concurrency-large N] [--concurrency-small N] [--out DIR]\n\
                         env: BLOCKPROXY_BENCH_QUICK=1, BLOCKPROXY_BENCH_BANDWIDTH_KBPS, BLOCKPROXY_NGINX"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        if p.runs == 0 {
            bail!("--runs must be at least 1");
        }
        Ok(p)
    }

    fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "runs": self.runs,
            "durationSecs": self.duration.as_secs_f64(),
            "concurrencyLarge": self.concurrency_large,
            "concurrencySmall": self.concurrency_small,
            "largeBlocks": self.large_blocks,
            "largeBlockBytes": LARGE,
            "smallBlocks": self.small_blocks,
            "smallBlockBytes": SMALL,
            "coldReadsPerRun": self.cold_reads,
            "coldBlockBytes": COLD,
            "writesPerRun": self.writes,
            "writeBlockBytes": WRITE,
            "startupBlocks": self.startup_blocks,
            "startupBlockBytes": STARTUP_BLOCK,
            "wanRttMs": self.one_way_ms * 2,
            "wanBandwidthKBps": self.bandwidth_kbps,
            "figures": self.figures,
            "trustedForMs": peers::TRUSTED_FOR_MS,
        })
    }
}

/// Per-run values of every metric, by name.
#[derive(Default)]
struct Results(BTreeMap<String, Vec<f64>>);

impl Results {
    fn push(&mut self, name: &str, v: f64) {
        self.0.entry(name.to_owned()).or_default().push(v);
    }

    fn summary(&self, name: &str) -> Option<(f64, f64, f64)> {
        let mut v = self.0.get(name)?.clone();
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some((median, v[0], v[n - 1]))
    }

    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, values) in &self.0 {
            let (median, min, max) = self.summary(k).unwrap_or((f64::NAN, f64::NAN, f64::NAN));
            m.insert(k.clone(), json!({"median": median, "min": min, "max": max, "runs": values}));
        }
        Value::Object(m)
    }
}

fn random_block(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

fn uris(urls: impl Iterator<Item = String>) -> Result<Arc<Vec<Uri>>> {
    Ok(Arc::new(urls.map(|u| u.parse()).collect::<Result<Vec<Uri>, _>>()?))
}

/// The S3 credentials of the bench's mount sidecar.
const SIDECAR_KEY: &str = "bench-sidecar";

/// Closed-loop GETs over `targets` (key `i` → `targets[i % len]`), with the bearer token.
async fn get_load<C: Connect + Clone + Send + Sync + 'static>(
    http: &Http<C>,
    targets: &Arc<Vec<Uri>>,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let (http, targets) = (http.clone(), Arc::clone(targets));
    closed_loop(concurrency, duration, move |i| {
        let (http, targets) = (http.clone(), Arc::clone(&targets));
        async move { load::get(&http, &targets[i as usize % targets.len()], Some(TOKEN)).await }
    })
    .await
}

/// The same load generator speaking S3: SigV4-signed GetObjects of `targets` (path style) on the
/// mount sidecar's S3 endpoint. Against [`get_load`] on the group, only the sidecar differs.
async fn s3_signed_load(
    http: &Http,
    targets: &Arc<Vec<Uri>>,
    signer: &Arc<load::S3Signer>,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let (http, targets, signer) = (http.clone(), Arc::clone(targets), Arc::clone(signer));
    closed_loop(concurrency, duration, move |i| {
        let (http, targets, signer) = (http.clone(), Arc::clone(&targets), Arc::clone(&signer));
        async move { load::s3_get(&http, &targets[i as usize % targets.len()], &signer).await }
    })
    .await
}

/// The same load through the client library (`Client::get`, rendezvous routing inside).
async fn client_load(client: &Client, keys: &Arc<Vec<BlockKey>>, concurrency: usize, duration: Duration) -> LoadResult {
    let (client, keys) = (client.clone(), Arc::clone(keys));
    closed_loop(concurrency, duration, move |i| {
        let (client, keys) = (client.clone(), Arc::clone(&keys));
        async move {
            let f = client.get(&keys[i as usize % keys.len()], None).await?.context("block not found")?;
            Ok(f.data.len() as u64)
        }
    })
    .await
}

/// The same load as an application sees it: aws-sdk-s3 GetObject through the mount sidecar's S3
/// endpoint (bucket = volume, the same keys).
async fn s3_load(
    s3: &aws_sdk_s3::Client,
    keys: &Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let (s3, keys) = (s3.clone(), Arc::clone(keys));
    closed_loop(concurrency, duration, move |i| {
        let (s3, keys) = (s3.clone(), Arc::clone(&keys));
        async move {
            let o = s3.get_object().bucket(VOLUME).key(&keys[i as usize % keys.len()]).send().await?;
            Ok(o.body.collect().await?.into_bytes().len() as u64)
        }
    })
    .await
}

/// The CPU time a server's process tree (nginx: master and workers) uses under one load. On
/// these 2 cores the load generator competes with the server, so requests/s depend on both;
/// the server's own CPU per request does not.
struct CpuMeter {
    pid: Option<u32>,
    start: Option<f64>,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> Self {
        Self { pid, start: pid.and_then(cpu_tree_secs) }
    }

    /// Seconds of CPU the process tree used since [`Self::start`].
    fn used_secs(self) -> Option<f64> {
        Some(self.pid.and_then(cpu_tree_secs)? - self.start?)
    }
}

/// One server's share of [`interleaved_get_loads`]: its two halves pooled, and the CPU its
/// process tree used while they ran.
struct Interleaved {
    load: LoadResult,
    cpu_secs: Option<f64>,
}

impl Interleaved {
    /// Microseconds of the server's CPU per request of its load.
    fn cpu_us_per_request(&self) -> Option<f64> {
        (self.load.requests > 0).then(|| self.cpu_secs.map(|s| s * 1e6 / self.load.requests as f64)).flatten()
    }
}

/// The same closed-loop GET load on each server of `servers` (its targets, and the pid whose CPU
/// to count), interleaved: each runs twice for half of `duration`, in the mirrored order
/// A B C C B A, and its halves are pooled. This VM's speed drifts over seconds, and figures used
/// to measure blockproxy and nginx 15 s apart, with other loads between them. Side by side, the
/// servers meet about the same machine; in the mirrored order each sits at the same mean time, so
/// a drift that is linear in time drops out of their ratios.
async fn interleaved_get_loads<const N: usize, C: Connect + Clone + Send + Sync + 'static>(
    http: &Http<C>,
    servers: [(&Arc<Vec<Uri>>, Option<u32>); N],
    concurrency: usize,
    duration: Duration,
) -> [Interleaved; N] {
    let mut out: [Interleaved; N] =
        std::array::from_fn(|_| Interleaved { load: LoadResult::default(), cpu_secs: Some(0.0) });
    let order = (0..N).chain((0..N).rev());
    for i in order {
        let (targets, pid) = servers[i];
        let cpu = CpuMeter::start(pid);
        let half = get_load(http, targets, concurrency, duration / 2).await;
        let used = cpu.used_secs();
        let slot = &mut out[i];
        slot.load = std::mem::take(&mut slot.load).pooled(half);
        slot.cpu_secs = slot.cpu_secs.zip(used).map(|(a, b)| a + b);
    }
    out
}

/// Figures 1 and 2's plain servers side by side ([`interleaved_get_loads`]): blockproxy, nginx
/// and the minimal server, in that order. Records the peak RSS of blockproxy and nginx under
/// their loads as `rss_mib.{blockproxy,nginx}.{what}` and their ratio; fails if a load failed.
/// Returns the three results and nginx's peak RSS (the sidecar's is compared with it).
#[allow(clippy::too_many_arguments)]
async fn plain_servers_side_by_side(
    http: &Http,
    (bp, nginx): (&BlockProxy, &Nginx),
    targets: [&Arc<Vec<Uri>>; 3],
    concurrency: usize,
    duration: Duration,
    what: &str,
    size: &str,
    r: &mut Results,
) -> Result<([Interleaved; 3], f64)> {
    let (bp_sampler, nginx_sampler) = (RssSampler::start(bp.pid(), false), RssSampler::start(nginx.pid(), true));
    let [b, n, m] = targets;
    let loads = interleaved_get_loads(http, [(b, bp.pid()), (n, nginx.pid()), (m, None)], concurrency, duration).await;
    let (bp_rss, nginx_rss) = (bp_sampler.finish().await, nginx_sampler.finish().await);
    r.push(&format!("rss_mib.blockproxy.{what}"), bp_rss);
    r.push(&format!("rss_mib.nginx.{what}"), nginx_rss);
    r.push(&format!("rss.ratio.{what}"), bp_rss / nginx_rss);
    for (server, run) in ["blockproxy", "nginx", "minimal server"].iter().zip(&loads) {
        check(&format!("{server} {size}"), &run.load)?;
    }
    Ok((loads, nginx_rss))
}

/// Samples the RSS (KiB) of a process tree every 50 ms until stopped; returns the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: Option<u32>, tree: bool) -> Self {
        let (stop, max) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = pid.and_then(|p| if tree { rss_tree_kib(p) } else { rss_kib(p) }) {
                    m.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { stop, max, task }
    }

    async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Reads every file of at least `min_len` bytes under `dir` sequentially (1 MiB reads, one
/// thread), pass after pass, for `duration`; returns MiB/s. The limit of serving those bytes.
fn raw_read_mib_s(dir: &Path, min_len: u64, duration: Duration) -> Result<f64> {
    fn walk(dir: &Path, min_len: u64, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                walk(&e.path(), min_len, out)?;
            } else if ty.is_file() && e.metadata()?.len() >= min_len {
                out.push(e.path());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, min_len, &mut files)?;
    if files.is_empty() {
        bail!("no cached block files of {min_len}+ bytes under {}", dir.display());
    }
    files.sort();
    let mut buf = vec![0u8; MIB];
    let (start, mut bytes) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        for f in &files {
            let mut file = std::fs::File::open(f)?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    Ok(bytes as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

async fn put_store(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: Bytes) -> Result<()> {
    s3.put_object()
        .bucket(bucket)
        .key(format!("{PREFIX}/{key}"))
        .body(ByteStream::from(data))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok(())
}

/// When each key under `prefix` first appeared in the store, watched until `n` keys did (or
/// 120 s passed): one listing at a time, every 5 ms on loopback. One request per key in flight
/// (about 20 at a time, each every 5 ms) would load MinIO while the next acks are measured.
fn watch_store(
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    n: usize,
) -> tokio::task::JoinHandle<BTreeMap<String, Instant>> {
    tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        let start = Instant::now();
        while seen.len() < n && start.elapsed() < Duration::from_secs(120) {
            if let Ok(page) = s3.list_objects_v2().bucket(&bucket).prefix(&prefix).send().await {
                let now = Instant::now();
                for key in page.contents().iter().filter_map(|o| o.key()) {
                    seen.entry(key.to_owned()).or_insert(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

/// Waits (at most `limit`) until none of `proxies` holds an unflushed block; returns how many
/// still do. A write figure starts from settled proxies, so that no phase measures the flush of
/// the one before it.
async fn settle(proxies: &[&BlockProxy], limit: Duration) -> Result<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let mut dirty = 0.0;
        for p in proxies {
            dirty += p.metric("blockproxy_cache_dirty_blocks").await?;
        }
        if dirty == 0.0 || Instant::now() >= deadline {
            return Ok(dirty);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cache misses counted by the proxies (to show measured reads were hits).
async fn misses(proxies: &[&BlockProxy]) -> f64 {
    let mut total = 0.0;
    for p in proxies {
        total += p.metric("blockproxy_cache_misses_total").await.unwrap_or(f64::NAN);
    }
    total
}

fn put_headers(data: &[u8]) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {TOKEN}")), (CHECKSUM_HEADER, Checksum::crc32c(data).to_string())]
}

/// Writes `n` blocks one at a time through a proxy; pushes ack latencies (ms) and, per block, the
/// time from ack until the object is in the store (listed every 5 ms on loopback).
async fn proxy_writes(
    http: &Http,
    proxy: &BlockProxy,
    wan: &Wan,
    tag: &str,
    n: usize,
    data: &Bytes,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut acks = Vec::new();
    let headers = put_headers(data);
    let prefix = format!("{PREFIX}/w-{tag}-");
    let watch = watch_store(wan.local_s3(), wan.minio.bucket().to_owned(), prefix.clone(), n);
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let key = format!("w-{tag}-{i}");
        let uri: Uri = proxy.block_url(&key).parse()?;
        let t0 = Instant::now();
        load::put(http, &uri, &headers, data.clone()).await?;
        let at = Instant::now();
        acks.push((at - t0).as_micros() as u64);
        acked.insert(format!("{PREFIX}/{key}"), at);
    }
    let seen = watch.await?;
    let mut visible = Vec::new();
    for (key, at) in &acked {
        let in_store = seen.get(key).with_context(|| format!("{key} did not reach the store within 120 s"))?;
        visible.push(in_store.saturating_duration_since(*at).as_micros() as u64);
    }
    acks.sort_unstable();
    visible.sort_unstable();
    Ok((acks, visible))
}

/// `perf record` (software cpu-clock event, so it works in VMs without PMU access) of `pid`.
fn perf_record(pid: u32, data: &Path) -> Result<std::process::Child> {
    perf_record_with(&["-F", "999", "-g", "-p", &pid.to_string()], data)
}

fn perf_record_with(args: &[&str], data: &Path) -> Result<std::process::Child> {
    let child = std::process::Command::new("perf")
        .args(["record", "-e", "cpu-clock"])
        .args(args)
        .arg("-o")
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

fn perf_stop(mut perf: std::process::Child) -> Result<()> {
    std::process::Command::new("kill").args(["-INT", &perf.id().to_string()]).status()?;
    perf.wait()?;
    Ok(())
}

fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    load::percentile(sorted_us, p) / 1000.0
}

fn check(what: &str, r: &LoadResult) -> Result<()> {
    if r.errors > 0 || r.requests == 0 {
        bail!("{what}: {} errors in {} requests; first: {:?}", r.errors, r.requests, r.first_error);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    blockproxy_testenv::init_crypto();
    let p = Params::parse()?;
    let wall = Instant::now();
    eprintln!("compare: {:?}", p.to_json());
    let root = tempfile::Builder::new().prefix("blockproxy-bench-").tempdir()?;
    let mut r = Results::default();
    let mut notes: Vec<String> = Vec::new();

    // ---- set-up: the store behind the WAN, the data set, the peers ----
    let wan = Wan::start(p.one_way_ms, p.bandwidth_kbps).await?;
    let bucket = wan.minio.bucket().to_owned();
    let local = wan.local_s3();
    let large_keys: Vec<String> = (0..p.large_blocks).map(|i| format!("large/{i}")).collect();
    let small_keys: Vec<String> = (0..p.small_blocks).map(|i| format!("small/{i}")).collect();
    eprintln!("loading {} x 4 MiB and {} x 64 KiB blocks into MinIO", p.large_blocks, p.small_blocks);
    for (keys, size) in [(&large_keys, LARGE), (&small_keys, SMALL)] {
        for_each(keys.len() as u64, 8, |i| {
            let (local, bucket, key) = (&local, &bucket, &keys[i as usize]);
            async move { put_store(local, bucket, key, random_block(size)).await }
        })
        .await?;
    }
    let cold_peers = ["blockproxy", "direct", "nginx", "sidecar"];
    let cold_block = random_block(COLD);
    for run in 0..p.runs {
        for peer in cold_peers {
            for i in 0..p.cold_reads {
                put_store(&local, &bucket, &format!("cold/{peer}/{run}/{i}"), cold_block.clone()).await?;
            }
        }
    }

    let wan_endpoint = wan.endpoint();
    let bp = BlockProxy::start("bp1", root.path(), &wan, &wan_endpoint, &[]).await?;
    let mut group = Vec::new();
    for i in 0..3 {
        group.push(BlockProxy::start(&format!("group-{i}"), root.path(), &wan, &wan_endpoint, &[]).await?);
    }
    // One certificate for figure 9: nginx's TLS listener and the TLS proxy both serve it.
    let cert = tls::CertFiles::generate(&root.path().join("tls"))?;
    let nginx = Nginx::start(root.path(), &wan, &cert).await?;
    let minimal_files: Vec<(String, usize)> =
        large_keys.iter().map(|k| (k.clone(), LARGE)).chain(small_keys.iter().map(|k| (k.clone(), SMALL))).collect();
    let minimal = minimal_server::MinimalServer::start(&root.path().join("minimal-server"), &minimal_files)?;
    let group_addrs: Vec<String> = group.iter().map(|g| g.addr.to_string()).collect();
    let nodes: Vec<Node<'_>> = group_addrs.iter().map(|a| Node { address: a, weight: 1 }).collect();
    let route = |key: &str| -> String {
        let owner = rendezvous::owner(VOLUME, key, &nodes).unwrap_or(0);
        group[owner].block_url(key)
    };

    // The client library, pointed at the group by a discovery file (plain HTTP on loopback).
    let discovery = discovery_doc(&bucket, &group_addrs)?;
    let discovery_file = root.path().join("discovery.json");
    std::fs::write(&discovery_file, discovery.to_json_pretty())?;
    let client =
        Client::start(ClientConfig::new(VolumeId::parse(VOLUME)?, discovery_file.clone(), TOKEN.into())).await?;
    // The application's path: the mount sidecar's S3 endpoint, as it ships (the blockproxy-mount
    // binary in its own process, its allocator and runtime), on the same discovery file.
    let sidecar = mount::start_sidecar(root.path(), "bench-sidecar", &discovery_file, SIDECAR_KEY, &[]).await?;
    let sidecar_endpoint = format!("http://{}", sidecar.addr());
    let sidecar_s3 = wan.s3_client_with(&sidecar_endpoint, SIDECAR_KEY, SIDECAR_KEY);
    let (s3_large, s3_small) = (Arc::new(large_keys.clone()), Arc::new(small_keys.clone()));
    let sidecar_uris = |keys: &[String]| uris(keys.iter().map(|k| format!("{sidecar_endpoint}/{VOLUME}/{k}")));
    let (signed_large, signed_small) = (sidecar_uris(&large_keys)?, sidecar_uris(&small_keys)?);
    let signer = Arc::new(load::S3Signer::new(SIDECAR_KEY, SIDECAR_KEY));

    let http = http_client(p.concurrency_small.max(p.concurrency_large) * 2);
    let targets = |keys: &[String]| -> Result<[Arc<Vec<Uri>>; 3]> {
        Ok([
            uris(keys.iter().map(|k| bp.block_url(k)))?,
            uris(keys.iter().map(|k| route(k)))?,
            uris(keys.iter().map(|k| nginx.block_url(k)))?,
        ])
    };
    let [bp_large, group_large, nginx_large] = targets(&large_keys)?;
    let [bp_small, group_small, nginx_small] = targets(&small_keys)?;
    let (minimal_large, minimal_small) =
        (uris(large_keys.iter().map(|k| minimal.url(k)))?, uris(small_keys.iter().map(|k| minimal.url(k)))?);
    let lib_large = Arc::new(large_keys.iter().map(|k| BlockKey::parse(k)).collect::<Result<Vec<_>, _>>()?);
    let lib_small = Arc::new(small_keys.iter().map(|k| BlockKey::parse(k)).collect::<Result<Vec<_>, _>>()?);

    // Warm every cache the same way: one read-through pass of every block across the WAN.
    eprintln!("warming the caches (one read-through pass per peer across the WAN)");
    for set in [&bp_large, &group_large, &nginx_large, &bp_small, &group_small, &nginx_small] {
        load::get_each(&http, set, TOKEN).await?;
    }
    // nginx must now answer from its cache.
    let probe = http.get(nginx_large[0].clone()).await?;
    let status = probe.headers().get("x-cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if status != "HIT" {
        notes.push(format!("nginx answered a warmed block with X-Cache-Status {status:?}"));
    }
    drop(probe);
    // What the cache fill left behind, so that the figures below show what serving hits adds.
    if let Some(kib) = bp.pid().and_then(rss_kib) {
        r.push("rss_mib.blockproxy.after_warm", kib as f64 / 1024.0);
    }
    if let Some(kib) = nginx.pid().and_then(rss_tree_kib) {
        r.push("rss_mib.nginx.after_warm", kib as f64 / 1024.0);
    }

    let all_proxies: Vec<&BlockProxy> = std::iter::once(&bp).chain(group.iter()).collect();
    let misses_before = misses(&all_proxies).await;

    let want = |n: u32| p.figures.contains(&n);
    let d = p.duration;
    // ---- figure 1: cache-hit throughput, 4 MiB ----
    if want(1) {
        eprintln!("figure 1: 4 MiB cache hits, concurrency {}", p.concurrency_large);
        let c = p.concurrency_large;
        for run in 0..p.runs {
            let targets = [&bp_large, &nginx_large, &minimal_large];
            let ([b, n, cl], nginx_rss) =
                plain_servers_side_by_side(&http, (&bp, &nginx), targets, c, d, "large_load", "4 MiB", &mut r).await?;
            let (b, n, cl) = (b.load, n.load, cl.load);
            let g = get_load(&http, &group_large, c, d).await;
            check("group of 3 4 MiB", &g)?;
            let l = client_load(&client, &lib_large, c, d).await;
            check("group of 3 (client library) 4 MiB", &l)?;
            let sampler = RssSampler::start(sidecar.pid(), false);
            let a = s3_load(&sidecar_s3, &s3_large, c, d).await;
            check("group of 3 (sidecar S3) 4 MiB", &a)?;
            let sg = s3_signed_load(&http, &signed_large, &signer, c, d).await;
            check("group of 3 (sidecar S3, load generator) 4 MiB", &sg)?;
            let sidecar_rss = sampler.finish().await;
            r.push("rss_mib.sidecar.large_load", sidecar_rss);
            r.push("rss.ratio.sidecar_large_load", sidecar_rss / nginx_rss);
            r.push("f1.mib_s.minimal_server", cl.mib_per_s());
            r.push("f1.ratio.blockproxy_over_minimal_server", b.mib_per_s() / cl.mib_per_s());
            r.push("f1.ratio.nginx_over_minimal_server", n.mib_per_s() / cl.mib_per_s());
            let cache_dir = bp.cache_dir();
            let raw = tokio::task::spawn_blocking(move || raw_read_mib_s(&cache_dir, LARGE as u64, d)).await??;
            eprintln!(
                "  run {run}: blockproxy {:.0} MiB/s, group {:.0}, client lib {:.0}, sidecar S3 aws-sdk-s3 {:.0}, sidecar S3 load generator {:.0}, nginx {:.0}, minimal server {:.0}, raw disk read {:.0}",
                b.mib_per_s(),
                g.mib_per_s(),
                l.mib_per_s(),
                a.mib_per_s(),
                sg.mib_per_s(),
                n.mib_per_s(),
                cl.mib_per_s(),
                raw
            );
            r.push("f1.mib_s.blockproxy", b.mib_per_s());
            r.push("f1.mib_s.group3", g.mib_per_s());
            r.push("f1.mib_s.group3_client_lib", l.mib_per_s());
            r.push("f1.mib_s.group3_sidecar_s3", a.mib_per_s());
            r.push("f1.ratio.sidecar_s3_over_group3", a.mib_per_s() / g.mib_per_s());
            r.push("f1.ratio.sidecar_s3_over_blockproxy", a.mib_per_s() / b.mib_per_s());
            r.push("f1.mib_s.group3_sidecar_s3_loadgen", sg.mib_per_s());
            r.push("f1.ratio.sidecar_s3_loadgen_over_group3", sg.mib_per_s() / g.mib_per_s());
            r.push("f1.ratio.sidecar_s3_loadgen_over_blockproxy", sg.mib_per_s() / b.mib_per_s());
            r.push("f1.mib_s.nginx", n.mib_per_s());
            r.push("f1.mib_s.raw_disk_read", raw);
            r.push("f1.ratio.blockproxy_over_nginx", b.mib_per_s() / n.mib_per_s());
            r.push("f1.ratio.group3_over_nginx", g.mib_per_s() / n.mib_per_s());
            r.push("f1.ratio.blockproxy_over_raw", b.mib_per_s() / raw);
            r.push("f1.p99_ms.blockproxy", b.percentile_ms(99.0));
            r.push("f1.p99_ms.nginx", n.percentile_ms(99.0));
        }
    }

    // Optional: a CPU profile of blockproxy serving 4 MiB hits (BLOCKPROXY_BENCH_PERF=1).
    if std::env::var_os("BLOCKPROXY_BENCH_PERF").is_some_and(|v| v != "0")
        && let Some(pid) = bp.pid()
    {
        std::fs::create_dir_all(&p.out)?;
        for (name, targets, c) in [("large", &bp_large, p.concurrency_large), ("small", &bp_small, p.concurrency_small)]
        {
            let data = p.out.join(format!("perf-blockproxy-{name}.data"));
            let perf = perf_record(pid, &data)?;
            let res = get_load(&http, targets, c, d).await;
            perf_stop(perf)?;
            eprintln!(
                "  perf: {name} blocks {:.0} req/s while profiled; `perf report -i {}`",
                res.req_per_s(),
                data.display()
            );
        }
    }

    // ---- figure 2: cache-hit req/s and p99, 64 KiB ----
    if want(2) {
        eprintln!("figure 2: 64 KiB cache hits, concurrency {}", p.concurrency_small);
        let c = p.concurrency_small;
        for run in 0..p.runs {
            let targets = [&bp_small, &nginx_small, &minimal_small];
            let ([b, n, cl], nginx_rss) =
                plain_servers_side_by_side(&http, (&bp, &nginx), targets, c, d, "small_load", "64 KiB", &mut r).await?;
            let (bp_cpu, nginx_cpu) = (b.cpu_us_per_request(), n.cpu_us_per_request());
            let (b, n, cl) = (b.load, n.load, cl.load);
            let g = get_load(&http, &group_small, c, d).await;
            check("group of 3 64 KiB", &g)?;
            let l = client_load(&client, &lib_small, c, d).await;
            check("group of 3 (client library) 64 KiB", &l)?;
            let sampler = RssSampler::start(sidecar.pid(), false);
            let a = s3_load(&sidecar_s3, &s3_small, c, d).await;
            check("group of 3 (sidecar S3) 64 KiB", &a)?;
            let sg = s3_signed_load(&http, &signed_small, &signer, c, d).await;
            check("group of 3 (sidecar S3, load generator) 64 KiB", &sg)?;
            let sidecar_rss = sampler.finish().await;
            r.push("rss_mib.sidecar.small_load", sidecar_rss);
            r.push("rss.ratio.sidecar_small_load", sidecar_rss / nginx_rss);
            r.push("f2.req_s.minimal_server", cl.req_per_s());
            r.push("f2.p99_ms.minimal_server", cl.percentile_ms(99.0));
            r.push("f2.ratio.blockproxy_over_minimal_server_req_s", b.req_per_s() / cl.req_per_s());
            r.push("f2.ratio.nginx_over_minimal_server_req_s", n.req_per_s() / cl.req_per_s());
            eprintln!(
                "  run {run}: req/s blockproxy {:.0}, group {:.0}, client lib {:.0}, sidecar S3 aws-sdk-s3 {:.0}, sidecar S3 load generator {:.0}, nginx {:.0}, minimal server {:.0}; p99 ms blockproxy {:.2}, nginx {:.2}",
                b.req_per_s(),
                g.req_per_s(),
                l.req_per_s(),
                a.req_per_s(),
                sg.req_per_s(),
                n.req_per_s(),
                cl.req_per_s(),
                b.percentile_ms(99.0),
                n.percentile_ms(99.0)
            );
            r.push("f2.req_s.blockproxy", b.req_per_s());
            r.push("f2.req_s.group3", g.req_per_s());
            r.push("f2.req_s.group3_client_lib", l.req_per_s());
            r.push("f2.req_s.group3_sidecar_s3", a.req_per_s());
            r.push("f2.p99_ms.group3_sidecar_s3", a.percentile_ms(99.0));
            r.push("f2.ratio.sidecar_s3_over_group3_req_s", a.req_per_s() / g.req_per_s());
            r.push("f2.req_s.group3_sidecar_s3_loadgen", sg.req_per_s());
            r.push("f2.p99_ms.group3_sidecar_s3_loadgen", sg.percentile_ms(99.0));
            r.push("f2.ratio.sidecar_s3_loadgen_over_group3_req_s", sg.req_per_s() / g.req_per_s());
            r.push("f2.req_s.nginx", n.req_per_s());
            r.push("f2.p99_ms.blockproxy", b.percentile_ms(99.0));
            r.push("f2.p99_ms.group3", g.percentile_ms(99.0));
            r.push("f2.p99_ms.group3_client_lib", l.percentile_ms(99.0));
            r.push("f2.p99_ms.nginx", n.percentile_ms(99.0));
            r.push("f2.p50_ms.blockproxy", b.percentile_ms(50.0));
            r.push("f2.p50_ms.nginx", n.percentile_ms(50.0));
            r.push("f2.ratio.blockproxy_over_nginx_req_s", b.req_per_s() / n.req_per_s());
            r.push("f2.ratio.blockproxy_over_nginx_p99", b.percentile_ms(99.0) / n.percentile_ms(99.0));
            if let (Some(bp_cpu), Some(nginx_cpu)) = (bp_cpu, nginx_cpu) {
                r.push("f2.cpu_us_per_req.blockproxy", bp_cpu);
                r.push("f2.cpu_us_per_req.nginx", nginx_cpu);
                r.push("f2.ratio.blockproxy_over_nginx_cpu_per_req", bp_cpu / nginx_cpu);
            }
        }
        // Optional: CPU profiles of the sidecar S3 path on 64 KiB and 4 MiB hits
        // (BLOCKPROXY_BENCH_PERF=1): the sidecar process under the load generator speaking S3, and
        // the whole machine (how the CPU splits between processes).
        if std::env::var_os("BLOCKPROXY_BENCH_PERF").is_some_and(|v| v != "0")
            && let Some(pid) = sidecar.pid()
        {
            std::fs::create_dir_all(&p.out)?;
            for (name, targets, c) in
                [("small", &signed_small, p.concurrency_small), ("large", &signed_large, p.concurrency_large)]
            {
                let me = p.out.join(format!("perf-sidecar-{name}.data"));
                let all = p.out.join(format!("perf-system-{name}.data"));
                let perf = [perf_record(pid, &me)?, perf_record_with(&["-F", "999", "-a"], &all)?];
                let res = s3_signed_load(&http, targets, &signer, c, d).await;
                for pr in perf {
                    perf_stop(pr)?;
                }
                eprintln!(
                    "  perf: sidecar S3 {name} blocks {:.0} req/s while profiled; `perf report -i {}` (and {})",
                    res.req_per_s(),
                    me.display(),
                    all.display()
                );
            }
        }
    }

    // ---- figure 9: the hits of figures 1 and 2 over TLS, blockproxy against nginx ----
    if want(9) {
        eprintln!("figure 9: 4 MiB and 64 KiB cache hits over TLS");
        let tls_files = Tls::Files { cert: cert.cert.clone(), key: cert.key.clone() };
        let bp_tls = BlockProxy::start_with_tls("bp-tls", root.path(), &wan, &wan_endpoint, &[], tls_files).await?;
        let client_tls = cert.client_config()?;
        let https = load::https_client(p.concurrency_small.max(p.concurrency_large) * 2, client_tls.clone());
        // Before any TLS connection to nginx: kTLS sockets are counted when they are set up.
        let ktls_before = tls::ktls_tx_sockets();
        for (peer, addr) in [("blockproxy", bp_tls.addr), ("nginx", nginx.tls_addr)] {
            notes.push(format!("figure 9 negotiated with {peer}: {}", tls::negotiated(&client_tls, addr).await?));
        }
        let tls_targets = |keys: &[String]| -> Result<[Arc<Vec<Uri>>; 2]> {
            Ok([uris(keys.iter().map(|k| bp_tls.block_url(k)))?, uris(keys.iter().map(|k| nginx.tls_block_url(k)))?])
        };
        let [bpt_large, ngt_large] = tls_targets(&large_keys)?;
        let [bpt_small, ngt_small] = tls_targets(&small_keys)?;
        // Warmed like the others, one read pass; nginx's TLS listener shares the warm cache of the
        // plain one, so its pass only opens connections.
        for set in [&bpt_large, &ngt_large, &bpt_small, &ngt_small] {
            load::get_each(&https, set, TOKEN).await?;
        }
        let tls_misses_before = misses(&[&bp_tls]).await;
        let (cl, cs) = (p.concurrency_large, p.concurrency_small);
        for run in 0..p.runs {
            let [b4, n4] = interleaved_get_loads(&https, [(&bpt_large, None), (&ngt_large, None)], cl, d).await;
            let (b4, n4) = (b4.load, n4.load);
            check("blockproxy TLS 4 MiB", &b4)?;
            check("nginx TLS 4 MiB", &n4)?;
            let [b64, n64] = interleaved_get_loads(&https, [(&bpt_small, None), (&ngt_small, None)], cs, d).await;
            let (b64, n64) = (b64.load, n64.load);
            check("blockproxy TLS 64 KiB", &b64)?;
            check("nginx TLS 64 KiB", &n64)?;
            eprintln!(
                "  run {run}: 4 MiB MiB/s blockproxy {:.0}, nginx {:.0}; 64 KiB req/s blockproxy {:.0}, nginx {:.0}; p99 ms blockproxy {:.2}, nginx {:.2}",
                b4.mib_per_s(),
                n4.mib_per_s(),
                b64.req_per_s(),
                n64.req_per_s(),
                b64.percentile_ms(99.0),
                n64.percentile_ms(99.0)
            );
            for (peer, large, small) in [("blockproxy", &b4, &b64), ("nginx", &n4, &n64)] {
                r.push(&format!("f9.mib_s.{peer}"), large.mib_per_s());
                r.push(&format!("f9.large_p99_ms.{peer}"), large.percentile_ms(99.0));
                r.push(&format!("f9.req_s.{peer}"), small.req_per_s());
                r.push(&format!("f9.p99_ms.{peer}"), small.percentile_ms(99.0));
                r.push(&format!("f9.p50_ms.{peer}"), small.percentile_ms(50.0));
            }
            r.push("f9.ratio.blockproxy_over_nginx_mib_s", b4.mib_per_s() / n4.mib_per_s());
            r.push("f9.ratio.blockproxy_over_nginx_req_s", b64.req_per_s() / n64.req_per_s());
            r.push("f9.ratio.blockproxy_over_nginx_p99", b64.percentile_ms(99.0) / n64.percentile_ms(99.0));
        }
        let tls_misses = misses(&[&bp_tls]).await - tls_misses_before;
        if tls_misses != 0.0 {
            notes.push(format!("{tls_misses} cache misses on the TLS proxy during figure 9 (expected 0)"));
        }
        // blockproxy (rustls) never uses kernel TLS, so new kTLS sockets are nginx's.
        notes.push(match (ktls_before, tls::ktls_tx_sockets()) {
            (_, None) => "figure 9: nginx encrypted in user space (OpenSSL): this kernel has no TLS module \
                          (no /proc/net/tls_stat), so `ssl_conf_command Options KTLS` had no effect"
                .to_owned(),
            (before, Some(after)) => {
                format!("figure 9: {} kernel TLS sockets set up during the figure (nginx)", after - before.unwrap_or(0))
            }
        });
    }

    let hit_misses = misses(&all_proxies).await - misses_before;
    if hit_misses != 0.0 {
        notes.push(format!("{hit_misses} cache misses on the proxies during figures 1-2 (expected 0)"));
    }

    let direct = wan.direct_s3();
    // Open the direct client's connection first, as the proxies' store connections are open.
    direct.head_bucket().bucket(&bucket).send().await.context("HEAD bucket across the WAN")?;
    // ---- figure 3: cold reads (misses) across the WAN ----
    if want(3) {
        eprintln!("figure 3: cold 1 MiB reads across the WAN, one at a time");
        for run in 0..p.runs {
            let mut lat: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for peer in cold_peers {
                for i in 0..p.cold_reads {
                    let key = format!("cold/{peer}/{run}/{i}");
                    let t0 = Instant::now();
                    let n = match peer {
                        "blockproxy" => load::get(&http, &bp.block_url(&key).parse()?, Some(TOKEN)).await?,
                        "nginx" => load::get(&http, &nginx.block_url(&key).parse()?, None).await?,
                        // The application's path: the load generator speaking S3 to the sidecar.
                        "sidecar" => {
                            let uri = format!("{sidecar_endpoint}/{VOLUME}/{key}").parse()?;
                            load::s3_get(&http, &uri, &signer).await?
                        }
                        _ => {
                            let o = direct.get_object().bucket(&bucket).key(format!("{PREFIX}/{key}")).send().await?;
                            o.body.collect().await?.into_bytes().len() as u64
                        }
                    };
                    lat.entry(peer).or_default().push(t0.elapsed().as_micros() as u64);
                    if n != COLD as u64 {
                        bail!("cold read of {key} via {peer}: {n} bytes");
                    }
                }
            }
            for v in lat.values_mut() {
                v.sort_unstable();
            }
            let p50 = |peer: &str| pct_ms(&lat[peer], 50.0);
            eprintln!(
                "  run {run}: p50 ms blockproxy {:.1}, direct {:.1}, nginx {:.1}, sidecar S3 {:.1}",
                p50("blockproxy"),
                p50("direct"),
                p50("nginx"),
                p50("sidecar")
            );
            for peer in cold_peers {
                r.push(&format!("f3.p50_ms.{peer}"), p50(peer));
                r.push(&format!("f3.max_ms.{peer}"), pct_ms(&lat[peer], 100.0));
            }
            r.push("f3.ratio.blockproxy_over_direct_p50", p50("blockproxy") / p50("direct"));
            r.push("f3.ratio.nginx_over_direct_p50", p50("nginx") / p50("direct"));
            r.push("f3.ratio.sidecar_over_direct_p50", p50("sidecar") / p50("direct"));
        }
    }

    // ---- figure 4: write-ack latency, 1 MiB ----
    // Before figures 7 and 8: after them, the gigabytes they move through MinIO and the disk
    // still slowed these acks (proxy p50 6.9 ms in a full run against 2.6 to 4.1 ms alone).
    if want(4) {
        eprintln!("figure 4: 1 MiB writes one at a time: blockproxy writeback (sync off, on) vs direct PUT");
        let bp_sync = BlockProxy::start("bp-sync", root.path(), &wan, &wan_endpoint, &["--sync"]).await?;
        let paced_http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let data = random_block(WRITE);
        put_store(&direct, &bucket, "w-warm", data.clone()).await?;
        // Every proxy a phase of this figure writes to: each phase starts once they are all
        // settled, and measures its own writes' flush beside its acks, not the previous phase's.
        let writers: Vec<&BlockProxy> = [&bp, &bp_sync].into_iter().chain(group.iter()).collect();
        let mut unsettled = 0.0f64;
        let mut settled = async || -> Result<()> {
            unsettled = unsettled.max(settle(&writers, Duration::from_secs(60)).await?);
            Ok(())
        };
        for run in 0..p.runs {
            settled().await?;
            let (acks_off, vis_off) = proxy_writes(&http, &bp, &wan, &format!("off-{run}"), p.writes, &data).await?;
            settled().await?;
            let (acks_on, vis_on) = proxy_writes(&http, &bp_sync, &wan, &format!("on-{run}"), p.writes, &data).await?;
            let mut direct_acks = Vec::new();
            for i in 0..p.writes {
                let t0 = Instant::now();
                put_store(&direct, &bucket, &format!("w-direct-{run}-{i}"), data.clone()).await?;
                direct_acks.push(t0.elapsed().as_micros() as u64);
            }
            direct_acks.sort_unstable();
            // The sidecar's second hop alone: the client library, in this process, writing to
            // the group. What the sidecar adds over it is its S3 front (receive, SigV4, relay).
            settled().await?;
            let mut library_acks = Vec::new();
            for i in 0..p.writes {
                let key = BlockKey::parse(&format!("w-library-{run}-{i}"))?;
                let t0 = Instant::now();
                client
                    .put_object(&key, data.clone().into(), &Default::default(), &[])
                    .await
                    .context("PUT through the library")?;
                library_acks.push(t0.elapsed().as_micros() as u64);
            }
            library_acks.sort_unstable();
            // The application's path: an S3 PutObject through the mount sidecar to the group.
            settled().await?;
            let mut sidecar_acks = Vec::new();
            for i in 0..p.writes {
                let t0 = Instant::now();
                sidecar_s3
                    .put_object()
                    .bucket(VOLUME)
                    .key(format!("w-sidecar-{run}-{i}"))
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .context("PUT through the sidecar")?;
                sidecar_acks.push(t0.elapsed().as_micros() as u64);
            }
            sidecar_acks.sort_unstable();
            // The same write with its body paced (ADR 0022): through the sidecar, which relays
            // it to its proxy as it arrives, and straight to one proxy, one hop.
            settled().await?;
            let (mut paced_sidecar, mut paced_proxy) = (Vec::new(), Vec::new());
            for i in 0..p.writes {
                let url = format!("{sidecar_endpoint}/{VOLUME}/w-paced-sidecar-{run}-{i}");
                let headers = signer.headers("PUT", &url.parse()?)?;
                paced_sidecar.push(paced::put(&paced_http, &url, &headers, &data, PACE_BYTES_PER_SEC).await?);
                let url = bp.block_url(&format!("w-paced-proxy-{run}-{i}"));
                let headers: Vec<(String, String)> =
                    put_headers(&data).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                paced_proxy.push(paced::put(&paced_http, &url, &headers, &data, PACE_BYTES_PER_SEC).await?);
            }
            let sorted = |v: &[paced::PacedAck], f: fn(&paced::PacedAck) -> u64| {
                let mut out: Vec<u64> = v.iter().map(f).collect();
                out.sort_unstable();
                out
            };
            let (sidecar_tail, proxy_tail) =
                (sorted(&paced_sidecar, |a| a.after_last_byte_us), sorted(&paced_proxy, |a| a.after_last_byte_us));
            let (sidecar_total, proxy_total) =
                (sorted(&paced_sidecar, |a| a.total_us), sorted(&paced_proxy, |a| a.total_us));
            eprintln!(
                "  run {run}: paced at {:.0} MB/s, p50 ms after the last byte: sidecar S3 {:.2}, one proxy {:.2} (whole PUT {:.2} and {:.2})",
                PACE_BYTES_PER_SEC / 1e6,
                pct_ms(&sidecar_tail, 50.0),
                pct_ms(&proxy_tail, 50.0),
                pct_ms(&sidecar_total, 50.0),
                pct_ms(&proxy_total, 50.0)
            );
            for (name, v) in [
                ("sidecar_s3", &sidecar_tail),
                ("proxy", &proxy_tail),
                ("sidecar_s3_whole", &sidecar_total),
                ("proxy_whole", &proxy_total),
            ] {
                r.push(&format!("f4.paced_p50_ms.{name}"), pct_ms(v, 50.0));
            }
            r.push(
                "f4.ratio.paced_sidecar_over_proxy_after_last_byte",
                pct_ms(&sidecar_tail, 50.0) / pct_ms(&proxy_tail, 50.0),
            );
            eprintln!(
                "  run {run}: sidecar S3 PUT ack p50/p99 ms {:.2}/{:.2}; its library hop alone {:.2}/{:.2}",
                pct_ms(&sidecar_acks, 50.0),
                pct_ms(&sidecar_acks, 99.0),
                pct_ms(&library_acks, 50.0),
                pct_ms(&library_acks, 99.0)
            );
            eprintln!(
                "  run {run}: ack p50/p99 ms: sync off {:.2}/{:.2}, sync on {:.2}/{:.2}, direct {:.1}/{:.1}; ack->store p50 {:.1}/{:.1}",
                pct_ms(&acks_off, 50.0),
                pct_ms(&acks_off, 99.0),
                pct_ms(&acks_on, 50.0),
                pct_ms(&acks_on, 99.0),
                pct_ms(&direct_acks, 50.0),
                pct_ms(&direct_acks, 99.0),
                pct_ms(&vis_off, 50.0),
                pct_ms(&vis_on, 50.0)
            );
            for (name, v) in [
                ("sync_off", &acks_off),
                ("sync_on", &acks_on),
                ("direct", &direct_acks),
                ("sidecar_s3", &sidecar_acks),
                ("library", &library_acks),
            ] {
                r.push(&format!("f4.ack_p50_ms.{name}"), pct_ms(v, 50.0));
                r.push(&format!("f4.ack_p99_ms.{name}"), pct_ms(v, 99.0));
            }
            for (name, v) in [("sync_off", &acks_off), ("sync_on", &acks_on), ("sidecar_s3", &sidecar_acks)] {
                r.push(&format!("f4.ratio.{name}_over_direct_p50"), pct_ms(v, 50.0) / pct_ms(&direct_acks, 50.0));
                r.push(&format!("f4.ratio.{name}_over_direct_p99"), pct_ms(v, 99.0) / pct_ms(&direct_acks, 99.0));
            }
            for (name, v) in [("sync_off", &vis_off), ("sync_on", &vis_on)] {
                r.push(&format!("f4.ack_to_store_p50_ms.{name}"), pct_ms(v, 50.0));
                r.push(&format!("f4.ack_to_store_p99_ms.{name}"), pct_ms(v, 99.0));
            }
        }
        if unsettled > 0.0 {
            notes.push(format!("figure 4: a phase started with {unsettled} blocks still dirty after 60 s"));
        }
        drop(bp_sync);
    }

    // ---- figure 7: a large file through the mount, the sidecar's S3 endpoint, a local file ----
    if want(7) {
        let size: u64 = if p.quick { 512 << 20 } else { 2 << 30 };
        eprintln!("figure 7: a {} MiB file read sequentially: mount vs sidecar S3 vs local file", size >> 20);
        let m = mount::Mount::start(root.path(), &discovery_file).await?;
        let (in_mount, local_file) = (m.dir.join("f7.bin"), root.path().join("f7-local.bin"));
        let written = {
            let (f, l) = (in_mount.clone(), local_file.clone());
            tokio::task::spawn_blocking(move || {
                Ok::<_, anyhow::Error>((mount::fio(&f, size, "write")?, mount::fio(&l, size, "write")?))
            })
            .await??
        };
        eprintln!("  written: mount {:.0} MiB/s, local file {:.0} MiB/s", written.0, written.1);
        r.push("f7.write_mib_s.mount", written.0);
        r.push("f7.write_mib_s.local_file", written.1);
        mount::until_in_store(&local, &bucket, "f7.bin", size).await?;
        // One pass caches every block on its owner (ranged GETs across the WAN).
        let f = in_mount.clone();
        let warm = tokio::task::spawn_blocking(move || mount::fio(&f, size, "read")).await??;
        eprintln!("  first read through the mount (blocks fetched across the WAN): {warm:.0} MiB/s");
        r.push("f7.first_read_mib_s.mount", warm);
        // The peers an application could read it from instead: one proxy (the client library on
        // a group of one, so every block comes from it), nginx, the store across the WAN. Each
        // is read once first, to fill its cache.
        let single_file = root.path().join("discovery-single.json");
        std::fs::write(&single_file, discovery_doc(&bucket, &[bp.addr.to_string()])?.to_json_pretty())?;
        let single = Client::start(ClientConfig::new(VolumeId::parse(VOLUME)?, single_file, TOKEN.into())).await?;
        let single_first = client_read_mib_s(&single, "f7.bin", size).await?;
        let nginx_url: Uri = nginx.block_url("f7.bin").parse()?;
        let timed_get = |uri: Uri| {
            let http = http.clone();
            async move {
                let t0 = Instant::now();
                let n = load::get(&http, &uri, None).await?;
                Ok::<_, anyhow::Error>(n as f64 / MIB as f64 / t0.elapsed().as_secs_f64())
            }
        };
        let nginx_first = timed_get(nginx_url.clone()).await?;
        let t0 = Instant::now();
        let o = direct.get_object().bucket(&bucket).key(format!("{PREFIX}/f7.bin")).send().await?;
        let n = o.body.collect().await?.into_bytes().len() as u64;
        let direct_mib_s = n as f64 / MIB as f64 / t0.elapsed().as_secs_f64();
        eprintln!(
            "  first reads: one proxy {single_first:.0} MiB/s, nginx {nginx_first:.0}; the store across the WAN {direct_mib_s:.0}"
        );
        r.push("f7.read_mib_s.direct_store", direct_mib_s);
        for run in 0..p.runs {
            let (f, l) = (in_mount.clone(), local_file.clone());
            let (mnt, loc) = tokio::task::spawn_blocking(move || {
                Ok::<_, anyhow::Error>((mount::fio(&f, size, "read")?, mount::fio(&l, size, "read")?))
            })
            .await??;
            let s3 = mount::s3_read_mib_s(&sidecar_s3, "f7.bin", size).await?;
            let one = client_read_mib_s(&single, "f7.bin", size).await?;
            let grp = client_read_mib_s(&client, "f7.bin", size).await?;
            let ngx = timed_get(nginx_url.clone()).await?;
            eprintln!(
                "  run {run}: MiB/s mount {mnt:.0}, sidecar S3 {s3:.0}, group (client library) {grp:.0}, one proxy {one:.0}, nginx {ngx:.0}, local file {loc:.0}"
            );
            r.push("f7.read_mib_s.mount", mnt);
            r.push("f7.read_mib_s.sidecar_s3", s3);
            r.push("f7.read_mib_s.group3_client_lib", grp);
            r.push("f7.read_mib_s.one_proxy", one);
            r.push("f7.read_mib_s.nginx", ngx);
            r.push("f7.ratio.sidecar_s3_over_one_proxy", s3 / one);
            r.push("f7.ratio.sidecar_s3_over_group3", s3 / grp);
            r.push("f7.ratio.sidecar_s3_over_nginx", s3 / ngx);
            r.push("f7.ratio.sidecar_s3_over_direct_store", s3 / direct_mib_s);
            r.push("f7.read_mib_s.local_file", loc);
            r.push("f7.ratio.mount_over_sidecar_s3", mnt / s3);
            r.push("f7.ratio.mount_over_local_file", mnt / loc);
        }
        // Many large reads at once through the sidecar: its read-ahead (4 blocks ahead per
        // read) is bounded by one budget for all reads, --read-ahead-bytes (ADR 0016). The peer:
        // a second sidecar whose budget is too large to bind (what there was before it).
        const READERS: u64 = 16;
        // Both run with the default block size; the first with the default budget.
        let budget = blockproxy::client::DEFAULT_READ_AHEAD_BYTES as f64 / MIB as f64;
        let block = blockproxy::protocol::DEFAULT_BLOCK_SIZE as f64 / MIB as f64;
        let unbounded = mount::start_sidecar(
            root.path(),
            "bench-sidecar-unbounded",
            &discovery_file,
            SIDECAR_KEY,
            &["--read-ahead-bytes", "64Gi"],
        )
        .await?;
        let unbounded_s3 = wan.s3_client_with(&format!("http://{}", unbounded.addr()), SIDECAR_KEY, SIDECAR_KEY);
        for (name, proc, s3) in [("bounded", &sidecar, &sidecar_s3), ("unbounded", &unbounded, &unbounded_s3)] {
            let sampler = RssSampler::start(proc.pid(), false);
            let metrics_url = format!("http://{}/_blockproxy/metrics", proc.addr());
            let c = mount::concurrent_s3_reads(s3, &metrics_url, "f7.bin", size, READERS).await?;
            let rss = sampler.finish().await;
            eprintln!(
                "  {READERS} ranged GETs at once, sidecar {name}: {:.0} MiB/s; read-ahead peak {:.1} MiB ({:.0} fetches waited for the budget, {:.0} blocks read in pieces); sidecar max RSS {rss:.1} MiB",
                c.mib_s, c.read_ahead_peak_mib, c.read_ahead_waits, c.read_pieces,
            );
            r.push(&format!("f7.concurrent.mib_s.{name}"), c.mib_s);
            r.push(&format!("f7.concurrent.read_ahead_peak_mib.{name}"), c.read_ahead_peak_mib);
            r.push(&format!("f7.concurrent.read_ahead_waits.{name}"), c.read_ahead_waits);
            r.push(&format!("f7.concurrent.read_pieces.{name}"), c.read_pieces);
            r.push(&format!("f7.concurrent.rss_mib.{name}"), rss);
        }
        // COMPUTED: what the bounded sidecar may hold (the budget and, past it, a piece per read:
        // ADR 0019), and what 5 blocks per read come to.
        let piece = (blockproxy::client::READ_PIECE as f64 / MIB as f64).min(block);
        r.push("f7.concurrent.bound_mib", budget + READERS as f64 * piece);
        r.push("f7.concurrent.unbounded_mib", READERS as f64 * 5.0 * block);
        // Many PutObjects at once (16 MiB: two 8 MiB parts, the second read while the first is
        // sent; 32 of them could hold 512 MiB), all within --write-buffer-bytes (ADR 0017). Two
        // fresh sidecars, as shipped and with a budget that never binds, so that their RSS is the
        // writes' alone (an allocator keeps what the reads above freed).
        const WRITERS: u64 = 32;
        let object = random_block(16 << 20);
        let mut write_sidecars = Vec::new();
        for (name, args) in [("bounded", &[][..]), ("unbounded", &["--write-buffer-bytes", "64Gi"][..])] {
            let proc = mount::start_sidecar(
                root.path(),
                &format!("bench-sidecar-puts-{name}"),
                &discovery_file,
                SIDECAR_KEY,
                args,
            )
            .await?;
            let s3 = wan.s3_client_with(&format!("http://{}", proc.addr()), SIDECAR_KEY, SIDECAR_KEY);
            write_sidecars.push((name, proc, s3));
        }
        for (name, proc, s3) in &write_sidecars {
            let sampler = RssSampler::start(proc.pid(), false);
            let metrics_url = format!("http://{}/_blockproxy/metrics", proc.addr());
            let w = mount::concurrent_s3_writes(s3, &metrics_url, &format!("f7-put-{name}"), &object, WRITERS).await?;
            let rss = sampler.finish().await;
            eprintln!(
                "  {WRITERS} PUTs of 16 MiB at once, sidecar {name}: {:.0} MiB/s; write buffer peak {:.1} MiB ({:.0} parts waited for the budget); sidecar max RSS {rss:.1} MiB",
                w.mib_s, w.write_buffer_peak_mib, w.write_buffer_waits,
            );
            r.push(&format!("f7.concurrent_puts.mib_s.{name}"), w.mib_s);
            r.push(&format!("f7.concurrent_puts.write_buffer_peak_mib.{name}"), w.write_buffer_peak_mib);
            r.push(&format!("f7.concurrent_puts.write_buffer_waits.{name}"), w.write_buffer_waits);
            r.push(&format!("f7.concurrent_puts.rss_mib.{name}"), rss);
            // The next figures start with these writes flushed, not flushing.
            let left = settle(&group.iter().collect::<Vec<_>>(), Duration::from_secs(120)).await?;
            if left > 0.0 {
                notes.push(format!("figure 7: {left} blocks still dirty 120 s after the concurrent PUTs"));
            }
        }
        // COMPUTED: the write budget, and what two 8 MiB parts per PUT come to.
        r.push("f7.concurrent_puts.bound_mib", blockproxy::client::DEFAULT_WRITE_BUFFER_BYTES as f64 / MIB as f64);
        r.push("f7.concurrent_puts.unbounded_mib", WRITERS as f64 * 16.0);
        drop(write_sidecars);
        drop(unbounded);
        drop(m);
        std::fs::remove_file(&local_file)?;
    }

    // ---- figure 8: the group as it grows, on running proxies ----
    if want(8) {
        eprintln!("figure 8: a group growing from 1 to 4 proxies: hit rate after each join, 4 MiB hits");
        let s = scale::Scale {
            root: root.path(),
            wan: &wan,
            store_endpoint: &wan_endpoint,
            http: &http,
            large_keys: &large_keys,
            small_keys: &small_keys,
            concurrency: p.concurrency_large,
            duration: d,
        };
        scale::figure8(s, &mut r).await?;
    }

    drop(client);
    drop(group);
    drop(nginx);

    // ---- figure 5: rendezvous movement, 4 -> 5 proxies ----
    if want(5) {
        eprintln!("figure 5: rendezvous movement when a proxy joins a group of 4");
        let addrs: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:8443")).collect();
        let four: Vec<Node<'_>> = addrs[..4].iter().map(|a| Node { address: a, weight: 1 }).collect();
        let five: Vec<Node<'_>> = addrs.iter().map(|a| Node { address: a, weight: 1 }).collect();
        const KEYS: usize = 100_000;
        let (mut moved, mut elsewhere) = (0usize, 0usize);
        for i in 0..KEYS {
            let key = format!("blocks/{i}");
            let (before, after) = (rendezvous::owner(VOLUME, &key, &four), rendezvous::owner(VOLUME, &key, &five));
            if before != after {
                moved += 1;
                if after != Some(4) {
                    elsewhere += 1;
                }
            }
        }
        r.push("f5.moved_fraction", moved as f64 / KEYS as f64);
        r.push("f5.ideal_fraction", 0.2);
        r.push("f5.ratio.moved_over_ideal", moved as f64 / KEYS as f64 / 0.2);
        r.push("f5.moved_between_old_proxies", elsewhere as f64);
    }

    // ---- figure 6: start-up time with 100,000 cached blocks ----
    if want(6) {
        eprintln!("figure 6: start-up with {} cached 4 KiB blocks", p.startup_blocks);
        let mut bp_start =
            BlockProxy::start("bp-startup", root.path(), &wan, &wan.minio.endpoint(), &["--writeback-active", "64"])
                .await?;
        let small_block = random_block(STARTUP_BLOCK);
        let headers = Arc::new(put_headers(&small_block));
        let fill = Instant::now();
        let put_http = http_client(32);
        for_each(p.startup_blocks as u64, 32, |i| {
            let (http, headers, data) = (&put_http, Arc::clone(&headers), small_block.clone());
            let uri: Result<Uri, _> = bp_start.block_url(&format!("many/{}/{i}", i % 100)).parse();
            async move { load::put(http, &uri?, &headers, data).await }
        })
        .await?;
        let fill_secs = fill.elapsed().as_secs_f64();
        // Let writeback flush them, so they are clean cached blocks (bounded wait).
        let dirty = settle(&[&bp_start], Duration::from_secs(if p.quick { 120 } else { 240 })).await?;
        let flush_secs = fill.elapsed().as_secs_f64() - fill_secs;
        if dirty > 0.0 {
            notes.push(format!("start-up figure: {dirty} of the blocks were still dirty (unflushed) at restart"));
        }
        r.push("f6.startup.fill_puts_per_s", p.startup_blocks as f64 / fill_secs);
        r.push("f6.startup.flush_secs", flush_secs);
        r.push("f6.startup.dirty_at_restart", dirty);
        for _ in 0..p.runs {
            let t = bp_start.restart().await?;
            let blocks = bp_start.metric("blockproxy_cache_blocks").await?;
            r.push("f6.startup_ms", t.as_secs_f64() * 1000.0);
            r.push("f6.startup.cached_blocks", blocks);
            r.push("rss_mib.blockproxy.after_startup", bp_start.pid().and_then(rss_kib).unwrap_or(0) as f64 / 1024.0);
        }
        drop(bp_start);
    }
    drop(bp);

    let wall_secs = wall.elapsed().as_secs_f64();
    print_table(&p, &r, &notes, wall_secs);
    std::fs::create_dir_all(&p.out)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let path = p.out.join(format!("compare-{stamp}.json"));
    let doc = json!({
        "benchmark": "compare",
        "unixTime": stamp,
        "machine": machine(),
        "params": p.to_json(),
        "wallSecs": wall_secs,
        "notes": notes,
        "results": r.to_json(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("JSON: {}", path.display());
    Ok(())
}

/// A discovery document for the bench's volume, served by the proxies at `addrs` (plain HTTP).
fn discovery_doc(bucket: &str, addrs: &[String]) -> Result<DiscoveryDocument> {
    Ok(DiscoveryDocument {
        volume_id: VolumeId::parse(VOLUME)?,
        store: StoreLocation {
            bucket: bucket.to_owned(),
            prefix: PREFIX.into(),
            endpoint: None,
            region: None,
            provider: None,
            path_style: false,
        },
        block_size: blockproxy::protocol::DEFAULT_BLOCK_SIZE,
        metadata_ttl_ms: peers::TRUSTED_FOR_MS,
        groups: vec![DiscoveryGroup {
            name: "bench".into(),
            provider_code: "s3".into(),
            region_code: "local".into(),
            scheme: "http".into(),
            ca_bundle: None,
            server_name: None,
            endpoints: addrs
                .iter()
                .map(|a| DiscoveryEndpoint { address: a.clone(), node: None, weight: 1, draining: false })
                .collect(),
        }],
    })
}

/// Reads a whole object through the client library (striped over its group), streaming it;
/// returns MiB/s.
async fn client_read_mib_s(client: &Client, key: &str, size: u64) -> Result<f64> {
    use futures::TryStreamExt;
    let t0 = Instant::now();
    let read = client.read_object(&BlockKey::parse(key)?, None).await?.with_context(|| format!("{key} is missing"))?;
    let n = read.body.try_fold(0u64, |n, chunk| async move { Ok(n + chunk.len() as u64) }).await?;
    if n != size {
        bail!("read {n} of {size} bytes of {key} through the client library");
    }
    Ok(n as f64 / MIB as f64 / t0.elapsed().as_secs_f64())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
    });
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "nginx": std::process::Command::new(peers::nginx_binary()).arg("-v").output().ok()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned()),
    })
}

fn print_table(p: &Params, r: &Results, notes: &[String], wall_secs: f64) {
    let fmt = |name: &str| match r.summary(name) {
        Some((m, lo, hi)) => format!("{} [{} .. {}]", num(m), num(lo), num(hi)),
        None => "n/a".into(),
    };
    println!();
    println!(
        "blockproxy compare: {} core(s), {} runs x {:.0} s per load, WAN {} ms RTT, {} per connection{}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        p.runs,
        p.duration.as_secs_f64(),
        p.one_way_ms * 2,
        if p.bandwidth_kbps == 0 { "uncapped".to_owned() } else { format!("{} KB/s", p.bandwidth_kbps) },
        if p.quick { " (--quick)" } else { "" }
    );
    println!("values: median [min .. max] over runs; ratios are computed per run, then summarised");
    println!(
        "both caches trust a cached object for {} s before asking the store (nginx proxy_cache_valid, \
         blockproxy metadataTtlMs)",
        peers::TRUSTED_FOR_MS / 1000
    );
    let rows: &[(&str, &str, &str)] = &[
        ("1 hit 4MiB c=CL", "blockproxy MiB/s", "f1.mib_s.blockproxy"),
        ("", "group of 3 (rendezvous) MiB/s", "f1.mib_s.group3"),
        ("", "group of 3 (client library) MiB/s", "f1.mib_s.group3_client_lib"),
        ("", "group of 3 (sidecar, aws-sdk-s3) MiB/s", "f1.mib_s.group3_sidecar_s3"),
        ("", "nginx proxy_cache MiB/s", "f1.mib_s.nginx"),
        ("", "raw sequential disk read MiB/s", "f1.mib_s.raw_disk_read"),
        ("", "minimal sendfile server MiB/s", "f1.mib_s.minimal_server"),
        ("", "RATIO blockproxy / minimal server", "f1.ratio.blockproxy_over_minimal_server"),
        ("", "RATIO nginx / minimal server", "f1.ratio.nginx_over_minimal_server"),
        ("", "RATIO blockproxy / nginx", "f1.ratio.blockproxy_over_nginx"),
        ("", "RATIO group of 3 / nginx", "f1.ratio.group3_over_nginx"),
        ("", "RATIO blockproxy / raw read", "f1.ratio.blockproxy_over_raw"),
        ("", "RATIO sidecar S3 / group of 3", "f1.ratio.sidecar_s3_over_group3"),
        ("", "RATIO sidecar S3 / one proxy", "f1.ratio.sidecar_s3_over_blockproxy"),
        ("", "group of 3 (sidecar, load generator) MiB/s", "f1.mib_s.group3_sidecar_s3_loadgen"),
        ("", "RATIO sidecar S3 (load gen) / group of 3", "f1.ratio.sidecar_s3_loadgen_over_group3"),
        ("", "RATIO sidecar S3 (load gen) / one proxy", "f1.ratio.sidecar_s3_loadgen_over_blockproxy"),
        ("2 hit 64KiB c=CS", "blockproxy req/s", "f2.req_s.blockproxy"),
        ("", "group of 3 (rendezvous) req/s", "f2.req_s.group3"),
        ("", "group of 3 (client library) req/s", "f2.req_s.group3_client_lib"),
        ("", "group of 3 (sidecar, aws-sdk-s3) req/s", "f2.req_s.group3_sidecar_s3"),
        ("", "nginx req/s", "f2.req_s.nginx"),
        ("", "blockproxy p99 ms", "f2.p99_ms.blockproxy"),
        ("", "nginx p99 ms", "f2.p99_ms.nginx"),
        ("", "minimal sendfile server req/s", "f2.req_s.minimal_server"),
        ("", "minimal server p99 ms", "f2.p99_ms.minimal_server"),
        ("", "RATIO blockproxy / minimal server req/s", "f2.ratio.blockproxy_over_minimal_server_req_s"),
        ("", "RATIO nginx / minimal server req/s", "f2.ratio.nginx_over_minimal_server_req_s"),
        ("", "RATIO blockproxy / nginx req/s", "f2.ratio.blockproxy_over_nginx_req_s"),
        ("", "RATIO blockproxy / nginx p99", "f2.ratio.blockproxy_over_nginx_p99"),
        ("", "blockproxy CPU us per request", "f2.cpu_us_per_req.blockproxy"),
        ("", "nginx CPU us per request (master and workers)", "f2.cpu_us_per_req.nginx"),
        ("", "RATIO blockproxy / nginx CPU per request", "f2.ratio.blockproxy_over_nginx_cpu_per_req"),
        ("", "sidecar S3 p99 ms", "f2.p99_ms.group3_sidecar_s3"),
        ("", "RATIO sidecar S3 / group of 3 req/s", "f2.ratio.sidecar_s3_over_group3_req_s"),
        ("", "group of 3 (sidecar, load generator) req/s", "f2.req_s.group3_sidecar_s3_loadgen"),
        ("", "sidecar S3 (load generator) p99 ms", "f2.p99_ms.group3_sidecar_s3_loadgen"),
        ("", "RATIO sidecar S3 (load gen) / group of 3 req/s", "f2.ratio.sidecar_s3_loadgen_over_group3_req_s"),
        ("3 miss 1MiB c=1", "blockproxy p50 ms", "f3.p50_ms.blockproxy"),
        ("", "direct aws-sdk-s3 p50 ms", "f3.p50_ms.direct"),
        ("", "nginx p50 ms", "f3.p50_ms.nginx"),
        ("", "RATIO blockproxy / direct", "f3.ratio.blockproxy_over_direct_p50"),
        ("", "RATIO nginx / direct", "f3.ratio.nginx_over_direct_p50"),
        ("", "sidecar S3 (load generator) p50 ms", "f3.p50_ms.sidecar"),
        ("", "RATIO sidecar S3 / direct", "f3.ratio.sidecar_over_direct_p50"),
        ("4 write 1MiB c=1", "blockproxy ack p50 ms (sync off)", "f4.ack_p50_ms.sync_off"),
        ("", "blockproxy ack p99 ms (sync off)", "f4.ack_p99_ms.sync_off"),
        ("", "blockproxy ack p50 ms (--sync)", "f4.ack_p50_ms.sync_on"),
        ("", "blockproxy ack p99 ms (--sync)", "f4.ack_p99_ms.sync_on"),
        ("", "direct PUT p50 ms", "f4.ack_p50_ms.direct"),
        ("", "direct PUT p99 ms", "f4.ack_p99_ms.direct"),
        ("", "sidecar S3 PUT ack p50 ms (group of 3)", "f4.ack_p50_ms.sidecar_s3"),
        ("", "sidecar S3 PUT ack p99 ms", "f4.ack_p99_ms.sidecar_s3"),
        ("", "its library hop alone, ack p50 ms", "f4.ack_p50_ms.library"),
        ("", "paced 200 MB/s: sidecar S3, ms after last byte", "f4.paced_p50_ms.sidecar_s3"),
        ("", "paced 200 MB/s: one proxy, ms after last byte", "f4.paced_p50_ms.proxy"),
        ("", "RATIO paced sidecar / one proxy, after last byte", "f4.ratio.paced_sidecar_over_proxy_after_last_byte"),
        ("", "paced 200 MB/s: sidecar S3 whole PUT p50 ms", "f4.paced_p50_ms.sidecar_s3_whole"),
        ("", "paced 200 MB/s: one proxy whole PUT p50 ms", "f4.paced_p50_ms.proxy_whole"),
        ("", "RATIO sidecar S3 / direct p50", "f4.ratio.sidecar_s3_over_direct_p50"),
        ("", "RATIO sync off / direct p50", "f4.ratio.sync_off_over_direct_p50"),
        ("", "RATIO sync off / direct p99", "f4.ratio.sync_off_over_direct_p99"),
        ("", "RATIO --sync / direct p50", "f4.ratio.sync_on_over_direct_p50"),
        ("", "RATIO --sync / direct p99", "f4.ratio.sync_on_over_direct_p99"),
        ("", "ack -> in store p50 ms (sync off)", "f4.ack_to_store_p50_ms.sync_off"),
        ("", "ack -> in store p99 ms (sync off)", "f4.ack_to_store_p99_ms.sync_off"),
        ("", "ack -> in store p50 ms (--sync)", "f4.ack_to_store_p50_ms.sync_on"),
        ("", "ack -> in store p99 ms (--sync)", "f4.ack_to_store_p99_ms.sync_on"),
        ("5 rendezvous 4->5", "fraction of keys moved (COMPUTED)", "f5.moved_fraction"),
        ("", "RATIO moved / ideal 1/5", "f5.ratio.moved_over_ideal"),
        ("", "keys moved between old proxies", "f5.moved_between_old_proxies"),
        ("6 footprint", "blockproxy RSS MiB after warming", "rss_mib.blockproxy.after_warm"),
        ("", "nginx RSS MiB (all procs) after warming", "rss_mib.nginx.after_warm"),
        ("", "blockproxy max RSS MiB, 4 MiB load", "rss_mib.blockproxy.large_load"),
        ("", "nginx max RSS MiB (all procs), 4 MiB", "rss_mib.nginx.large_load"),
        ("", "RATIO blockproxy / nginx RSS, 4 MiB", "rss.ratio.large_load"),
        ("", "blockproxy max RSS MiB, 64 KiB load", "rss_mib.blockproxy.small_load"),
        ("", "nginx max RSS MiB (all procs), 64 KiB", "rss_mib.nginx.small_load"),
        ("", "RATIO blockproxy / nginx RSS, 64 KiB", "rss.ratio.small_load"),
        ("", "sidecar max RSS MiB, 4 MiB S3 loads", "rss_mib.sidecar.large_load"),
        ("", "RATIO sidecar / nginx RSS, 4 MiB", "rss.ratio.sidecar_large_load"),
        ("", "sidecar max RSS MiB, 64 KiB S3 loads", "rss_mib.sidecar.small_load"),
        ("", "RATIO sidecar / nginx RSS, 64 KiB", "rss.ratio.sidecar_small_load"),
        ("", "start-up ms, N cached blocks", "f6.startup_ms"),
        ("", "blocks in cache after start-up", "f6.startup.cached_blocks"),
        ("", "blockproxy RSS MiB after start-up", "rss_mib.blockproxy.after_startup"),
        ("7 file, 1 MiB seq", "mount (fio) MiB/s", "f7.read_mib_s.mount"),
        ("", "sidecar S3 (aws-sdk-s3) MiB/s", "f7.read_mib_s.sidecar_s3"),
        ("", "group of 3 (client library) MiB/s", "f7.read_mib_s.group3_client_lib"),
        ("", "one proxy (client library) MiB/s", "f7.read_mib_s.one_proxy"),
        ("", "nginx MiB/s", "f7.read_mib_s.nginx"),
        ("", "the store across the WAN MiB/s (1 read)", "f7.read_mib_s.direct_store"),
        ("", "local file (fio) MiB/s", "f7.read_mib_s.local_file"),
        ("", "RATIO sidecar S3 / one proxy", "f7.ratio.sidecar_s3_over_one_proxy"),
        ("", "RATIO sidecar S3 / group of 3", "f7.ratio.sidecar_s3_over_group3"),
        ("", "RATIO sidecar S3 / nginx", "f7.ratio.sidecar_s3_over_nginx"),
        ("", "RATIO sidecar S3 / store across WAN", "f7.ratio.sidecar_s3_over_direct_store"),
        ("", "RATIO mount / sidecar S3", "f7.ratio.mount_over_sidecar_s3"),
        ("", "RATIO mount / local file", "f7.ratio.mount_over_local_file"),
        ("", "16 ranged GETs at once, sidecar MiB/s", "f7.concurrent.mib_s.bounded"),
        ("", "  unbounded sidecar (budget 64 GiB) MiB/s", "f7.concurrent.mib_s.unbounded"),
        ("", "  read-ahead peak MiB", "f7.concurrent.read_ahead_peak_mib.bounded"),
        ("", "  unbounded: read-ahead peak MiB", "f7.concurrent.read_ahead_peak_mib.unbounded"),
        ("", "  fetches that waited for the budget", "f7.concurrent.read_ahead_waits.bounded"),
        ("", "  blocks read in pieces (budget full)", "f7.concurrent.read_pieces.bounded"),
        ("", "  sidecar max RSS MiB", "f7.concurrent.rss_mib.bounded"),
        ("", "  unbounded: sidecar max RSS MiB", "f7.concurrent.rss_mib.unbounded"),
        ("", "  bound MiB (COMPUTED: budget + 16 pieces)", "f7.concurrent.bound_mib"),
        ("", "  5 blocks per read MiB (COMPUTED)", "f7.concurrent.unbounded_mib"),
        ("", "32 PUTs of 16 MiB at once, sidecar MiB/s", "f7.concurrent_puts.mib_s.bounded"),
        ("", "  write buffer peak MiB", "f7.concurrent_puts.write_buffer_peak_mib.bounded"),
        ("", "  parts that waited for the budget", "f7.concurrent_puts.write_buffer_waits.bounded"),
        ("", "  sidecar max RSS MiB", "f7.concurrent_puts.rss_mib.bounded"),
        ("", "  unbounded: MiB/s", "f7.concurrent_puts.mib_s.unbounded"),
        ("", "  unbounded: write buffer peak MiB", "f7.concurrent_puts.write_buffer_peak_mib.unbounded"),
        ("", "  unbounded: sidecar max RSS MiB", "f7.concurrent_puts.rss_mib.unbounded"),
        ("", "  bound MiB (COMPUTED: the budget)", "f7.concurrent_puts.bound_mib"),
        ("", "  two parts per PUT MiB (COMPUTED)", "f7.concurrent_puts.unbounded_mib"),
        ("", "first read through the mount MiB/s", "f7.first_read_mib_s.mount"),
        ("", "write through the mount MiB/s", "f7.write_mib_s.mount"),
        ("", "write of the local file MiB/s", "f7.write_mib_s.local_file"),
        ("8 group grows", "1 proxy: 4 MiB hits MiB/s", "f8.mib_s.n1"),
        ("", "2 proxies: MiB/s", "f8.mib_s.n2"),
        ("", "3 proxies: MiB/s", "f8.mib_s.n3"),
        ("", "4 proxies: MiB/s", "f8.mib_s.n4"),
        ("", "4 proxies: MiB/s per proxy", "f8.mib_s_per_proxy.n4"),
        ("", "hit rate right after the 2nd joins", "f8.hit_rate_after_join.n2"),
        ("", "hit rate right after the 3rd joins", "f8.hit_rate_after_join.n3"),
        ("", "hit rate right after the 4th joins", "f8.hit_rate_after_join.n4"),
        ("", "RATIO hit rate / ideal, 4th joins", "f8.ratio.hit_rate_over_ideal.n4"),
        ("9 TLS 4MiB c=CL", "blockproxy MiB/s", "f9.mib_s.blockproxy"),
        ("", "nginx MiB/s", "f9.mib_s.nginx"),
        ("", "RATIO blockproxy / nginx", "f9.ratio.blockproxy_over_nginx_mib_s"),
        ("9 TLS 64KiB c=CS", "blockproxy req/s", "f9.req_s.blockproxy"),
        ("", "nginx req/s", "f9.req_s.nginx"),
        ("", "blockproxy p99 ms", "f9.p99_ms.blockproxy"),
        ("", "nginx p99 ms", "f9.p99_ms.nginx"),
        ("", "RATIO blockproxy / nginx req/s", "f9.ratio.blockproxy_over_nginx_req_s"),
        ("", "RATIO blockproxy / nginx p99", "f9.ratio.blockproxy_over_nginx_p99"),
    ];
    println!("{:<18} {:<38} median [min .. max]", "figure", "metric");
    for (fig, label, key) in rows {
        let fig = fig.replace("CL", &p.concurrency_large.to_string()).replace("CS", &p.concurrency_small.to_string());
        let label = label.replace("N cached", &format!("{} cached", p.startup_blocks));
        if !fig.is_empty() {
            println!("{}", "-".repeat(96));
        }
        println!("{fig:<18} {label:<38} {}", fmt(key));
    }
    println!("{}", "-".repeat(96));
    for n in notes {
        println!("note: {n}");
    }
    println!("wall time {wall_secs:.0} s");
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
