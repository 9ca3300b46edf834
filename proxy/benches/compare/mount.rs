//! Figure 7: one large file as an application reads it, sequentially in 1 MiB reads, once its
//! blocks are cached on the group's proxies:
//! - through the FUSE mount (`blockproxy-mount --mount-point`, a real process on the group),
//!   read by fio;
//! - through the mount sidecar's S3 endpoint (aws-sdk-s3 GetObject, the body streamed);
//! - as a local file of the same size on this machine's disk, read by fio.
//!
//! fio drops the file's pages from the page cache before each read (`invalidate=1`), so the
//! mount and the local file are read from their sources, not from memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Tool, tool_path};
use serde_json::Value;

use crate::peers::{PREFIX, TOKEN, VOLUME};

/// The mount process and where it serves the volume. The mount is detached when dropped.
pub struct Mount {
    pub dir: PathBuf,
    _process: Blockproxy,
}

/// A `blockproxy-mount` process on the group in `discovery_file`, named `name`.
fn mount_command(root: &Path, name: &str, discovery_file: &Path) -> Result<BlockproxyCommand> {
    let token = root.join(format!("{name}-token"));
    std::fs::write(&token, TOKEN)?;
    Ok(BlockproxyCommand::mount(env!("CARGO_BIN_EXE_blockproxy-mount"), name, VOLUME)?
        .discovery(discovery_file, &token)
        .ready_within(Duration::from_secs(30), Duration::from_millis(50)))
}

/// The mount sidecar serving only its S3 endpoint (no FUSE mount), signed with `key` as both
/// access and secret key; `name` tells its files apart, `extra` are further flags.
pub async fn start_sidecar(
    root: &Path,
    name: &str,
    discovery_file: &Path,
    key: &str,
    extra: &[&str],
) -> Result<Blockproxy> {
    let command = mount_command(root, name, discovery_file)?
        .args(["--s3-access-key", key, "--s3-secret-key", key])
        .args(extra.iter().copied());
    Blockproxy::start(command).await
}

impl Mount {
    pub async fn start(root: &Path, discovery_file: &Path) -> Result<Self> {
        tool_path(Tool::Fusermount)?;
        let dir = root.join("mnt");
        std::fs::create_dir_all(&dir)?;
        let dir_arg = dir.to_str().context("a UTF-8 bench directory")?;
        let command = mount_command(root, "bench-mount", discovery_file)?.args(["--mount-point", dir_arg]);
        let process = Blockproxy::start(command).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&dir) {
            if Instant::now() > deadline {
                bail!("{} was not mounted within 30 s", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { dir, _process: process })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let bin = tool_path(Tool::Fusermount).unwrap_or_else(|_| "fusermount3".into());
        let _ = std::process::Command::new(bin).arg("-u").arg("-z").arg(&self.dir).output();
    }
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*want)))
}

/// Runs one fio job on `file` (`rw`: `write` or `read`, 1 MiB blocks, one thread) and returns
/// its throughput in MiB/s.
pub fn fio(file: &Path, size: u64, rw: &str) -> Result<f64> {
    let out = std::process::Command::new(tool_path(Tool::Fio)?)
        .arg("--name=f7")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--rw={rw}"))
        .args(["--bs=1M", "--ioengine=psync", "--invalidate=1", "--fallocate=none", "--output-format=json"])
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio {rw} of {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    let doc: Value = serde_json::from_slice(&out.stdout).context("fio's JSON output")?;
    let job = &doc["jobs"][0];
    if job["error"].as_i64() != Some(0) {
        bail!("fio {rw} of {}: error {}", file.display(), job["error"]);
    }
    let side = if rw == "write" { "write" } else { "read" };
    let bw = job[side]["bw_bytes"].as_f64().context("fio reported no bandwidth")?;
    Ok(bw / (1 << 20) as f64)
}

/// GETs the whole object through an S3 endpoint, streaming the body; returns MiB/s.
pub async fn s3_read_mib_s(s3: &aws_sdk_s3::Client, key: &str, size: u64) -> Result<f64> {
    let t0 = Instant::now();
    let mut o = s3.get_object().bucket(VOLUME).key(key).send().await?;
    let mut n = 0u64;
    while let Some(chunk) = o.body.try_next().await? {
        n += chunk.len() as u64;
    }
    if n != size {
        bail!("GET {key} through the sidecar gave {n} of {size} bytes");
    }
    Ok(n as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64())
}

/// The peak of one of a sidecar's gauges, sampled every 20 ms until [`GaugePeak::finish`].
struct GaugePeak {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl GaugePeak {
    fn start(metrics_url: &str, gauge: &'static str) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (done, url) = (done.clone(), metrics_url.to_owned());
            async move {
                let mut peak = 0f64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(crate::peers::metric_at(&url, gauge).await.unwrap_or(0.0));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                peak
            }
        });
        Self { done, task }
    }

    /// The peak, in MiB.
    async fn finish(self) -> Result<f64> {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await? / (1 << 20) as f64)
    }
}

/// What `readers` ranged GETs of one file at once through the sidecar measured.
pub struct ConcurrentReads {
    pub mib_s: f64,
    /// The peak of the sidecar's `blockproxy_client_read_ahead_bytes` while they ran, in MiB.
    pub read_ahead_peak_mib: f64,
    /// How many read-ahead fetches waited for `--read-ahead-bytes` meanwhile.
    pub read_ahead_waits: f64,
    /// How many blocks were read in pieces meanwhile, the budget being full (ADR 0019).
    pub read_pieces: f64,
}

/// Reads `key` (`size` bytes) through the sidecar as `readers` ranged GETs at once, each of an
/// equal share, sampling the sidecar's read-ahead gauge at `metrics_url` every 20 ms meanwhile.
pub async fn concurrent_s3_reads(
    s3: &aws_sdk_s3::Client,
    metrics_url: &str,
    key: &str,
    size: u64,
    readers: u64,
) -> Result<ConcurrentReads> {
    use crate::peers::metric_at;
    const WAITS: &str = "blockproxy_client_read_ahead_waits_total";
    const PIECES: &str = "blockproxy_client_read_pieces_total";
    let waits_before = metric_at(metrics_url, WAITS).await?;
    let pieces_before = metric_at(metrics_url, PIECES).await?;
    let peak = GaugePeak::start(metrics_url, "blockproxy_client_read_ahead_bytes");
    let share = size.div_ceil(readers);
    let t0 = Instant::now();
    let reads = (0..readers).map(|i| {
        let (first, last) = (i * share, ((i + 1) * share).min(size) - 1);
        async move {
            let mut o = s3.get_object().bucket(VOLUME).key(key).range(format!("bytes={first}-{last}")).send().await?;
            let mut n = 0u64;
            while let Some(chunk) = o.body.try_next().await? {
                n += chunk.len() as u64;
            }
            anyhow::ensure!(n == last + 1 - first, "a ranged GET of {key} through the sidecar gave {n} bytes");
            Ok::<_, anyhow::Error>(n)
        }
    });
    let total: u64 = futures::future::try_join_all(reads).await?.into_iter().sum();
    let mib_s = total as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64();
    Ok(ConcurrentReads {
        mib_s,
        read_ahead_peak_mib: peak.finish().await?,
        read_ahead_waits: metric_at(metrics_url, WAITS).await? - waits_before,
        read_pieces: metric_at(metrics_url, PIECES).await? - pieces_before,
    })
}

/// What `writers` PutObjects at once through the sidecar measured.
pub struct ConcurrentWrites {
    pub mib_s: f64,
    /// The peak of the sidecar's `blockproxy_client_write_buffer_bytes` while they ran, in MiB.
    pub write_buffer_peak_mib: f64,
    /// How many parts waited for `--write-buffer-bytes` meanwhile.
    pub write_buffer_waits: f64,
}

/// PUTs `writers` objects of `data` at once through the sidecar (keys `{prefix}-{i}`), sampling
/// its write-buffer gauge at `metrics_url` every 20 ms meanwhile.
pub async fn concurrent_s3_writes(
    s3: &aws_sdk_s3::Client,
    metrics_url: &str,
    prefix: &str,
    data: &bytes::Bytes,
    writers: u64,
) -> Result<ConcurrentWrites> {
    use crate::peers::metric_at;
    const WAITS: &str = "blockproxy_client_write_buffer_waits_total";
    let waits_before = metric_at(metrics_url, WAITS).await?;
    let peak = GaugePeak::start(metrics_url, "blockproxy_client_write_buffer_bytes");
    let t0 = Instant::now();
    let puts = (0..writers)
        .map(|i| s3.put_object().bucket(VOLUME).key(format!("{prefix}-{i}")).body(data.clone().into()).send());
    futures::future::try_join_all(puts).await?;
    let mib_s = (writers * data.len() as u64) as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64();
    Ok(ConcurrentWrites {
        mib_s,
        write_buffer_peak_mib: peak.finish().await?,
        write_buffer_waits: metric_at(metrics_url, WAITS).await? - waits_before,
    })
}

/// Waits until the store holds `key` whole (loopback client, not across the WAN).
pub async fn until_in_store(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, size: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let head = s3.head_object().bucket(bucket).key(format!("{PREFIX}/{key}")).send().await;
        if head.is_ok_and(|h| h.content_length() == Some(size as i64)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{key} did not reach the store within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
