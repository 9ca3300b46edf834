//! The set-up of the real-client tests: a group of 3 real proxies over a real MinIO with the mount
//! sidecar in front, and the clients (aws CLI, boto3, rclone, s3fs) run as child processes whose
//! failures say which command failed and what it printed.
#![allow(dead_code)]

pub mod data;

use crate::client_support::{
    GroupSpec, PREFIX, Proxy, TOKEN, VOLUME, discovery, sidecar_command, sidecar_endpoint, write_discovery,
    write_volumes_file,
};
use anyhow::{Context, Result, bail, ensure};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Minio, Tool, eventually, tool_path};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::process::Command;

/// The credentials S3 clients sign with at the sidecar (its defaults).
pub const SIDECAR_KEY: &str = "blockproxy";

/// Serialises the tests of one binary: they move gigabytes and share one disk and two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// `name` from the environment as a number of MiB, or `default_mib`: lets a developer shrink the
/// big objects on a small disk (the run prints the sizes it used).
pub fn size_mib_from_env(name: &str, default_mib: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default_mib) * data::MIB
}

/// MinIO, 3 proxies (plain HTTP, loopback) and the sidecar for [`VOLUME`].
pub struct Group {
    pub sidecar: Blockproxy,
    pub proxies: Vec<Proxy>,
    pub minio: Minio,
    pub endpoint: String,
    // Dropped last: the processes above use it.
    pub root: TempDir,
}

impl Group {
    /// Starts everything; each proxy gets `--disk-quota=<quota>` and `proxy_args`. Returns once the
    /// sidecar routes through the group (not the store fallback).
    pub async fn start(quota: &str, proxy_args: &[&str]) -> Result<Self> {
        Self::start_with(quota, proxy_args, |sidecar| sidecar).await
    }

    /// [`Group::start`] for a test of the sidecar's memory: `sidecar_args` set its budgets, and
    /// its allocator gives freed pages back at once, so that its peak RSS counts the bytes it
    /// held. The product's allocator keeps freed pages for reuse for up to a second (ADR 0010);
    /// in the burst of 64 GETs of the read budget's test that added 50 to 85 MiB to what the
    /// reads held, varying from run to run.
    pub async fn start_for_sidecar_memory(quota: &str, sidecar_args: &[&str]) -> Result<Self> {
        Self::start_with(quota, &[], |sidecar| {
            sidecar.args(sidecar_args).env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
        })
        .await
    }

    async fn start_with(
        quota: &str,
        proxy_args: &[&str],
        sidecar: impl FnOnce(BlockproxyCommand) -> BlockproxyCommand,
    ) -> Result<Self> {
        let started = Instant::now();
        let minio = Minio::start().await?;
        let root = tempfile::Builder::new().prefix("s3-clients-").tempdir()?;
        let volumes = write_volumes_file(root.path(), minio.bucket())?;
        let mut proxies = Vec::new();
        for name in ["p1", "p2", "p3"] {
            proxies.push(
                Proxy::start_with_args(name, root.path(), &volumes, &minio.endpoint(), &minio, quota, proxy_args)
                    .await?,
            );
        }
        let disc = root.path().join("discovery.json");
        let addresses = proxies.iter().map(|p| p.addr.to_string()).collect();
        write_discovery(
            &disc,
            &discovery(minio.bucket(), Some(minio.endpoint()), &[GroupSpec { name: "g".into(), addresses }]),
        )?;
        let sidecar = Blockproxy::start(sidecar(sidecar_command(root.path(), &disc, &minio)?)).await?;
        let endpoint = sidecar_endpoint(&sidecar);
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
            let status: serde_json::Value =
                http.get(format!("{endpoint}/_blockproxy/status")).send().await?.json().await?;
            ensure!(status["chosenGroup"] == "g", "the sidecar has not chosen the group yet: {status}");
            Ok(())
        })
        .await?;
        println!("group of 3 proxies + sidecar at {endpoint} ready in {:.1?}", started.elapsed());
        Ok(Self { sidecar, proxies, minio, endpoint, root })
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The store key of the volume's object `key`.
    pub fn store_key(&self, key: &str) -> String {
        format!("{PREFIX}/{key}")
    }

    /// The aws CLI against the sidecar.
    pub fn aws(&self) -> Command {
        aws_command(&self.endpoint, SIDECAR_KEY, SIDECAR_KEY)
    }

    /// The aws CLI against MinIO itself (bucket [`Minio::bucket`], keys under [`PREFIX`]).
    pub fn aws_minio(&self) -> Command {
        aws_command(&self.minio.endpoint(), self.minio.access_key(), self.minio.secret_key())
    }

    /// Waits until no proxy holds a dirty (acknowledged, unflushed) object; all must run.
    pub async fn wait_flushed(&self, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        eventually(timeout, Duration::from_millis(250), || async {
            for p in &self.proxies {
                let url = format!("http://{}/v1/volumes/{VOLUME}/dirty?prefix=", p.addr);
                let body: serde_json::Value =
                    http.get(&url).bearer_auth(TOKEN).send().await?.error_for_status()?.json().await?;
                let keys = body["keys"].as_array().with_context(|| format!("{url}: no 'keys' in {body}"))?;
                ensure!(keys.is_empty(), "{} still has {} dirty keys, e.g. {}", p.name, keys.len(), keys[0]);
            }
            Ok(())
        })
        .await
        .context("waiting for the proxies to flush")?;
        println!("flushed in {:.1?}", started.elapsed());
        Ok(())
    }

    /// Peak resident memory (VmHWM, KiB) of the sidecar and of each proxy, by name.
    pub fn peak_rss_kib(&self) -> Result<Vec<(String, u64)>> {
        let mut out =
            vec![("sidecar".to_owned(), vm_hwm_kib(self.sidecar.pid().context("the sidecar is not running")?)?)];
        for p in &self.proxies {
            out.push((p.name.clone(), vm_hwm_kib(p.pid().with_context(|| format!("{} is not running", p.name))?)?));
        }
        Ok(out)
    }
}

/// An aws CLI command for `endpoint`, isolated from any user configuration.
pub fn aws_command(endpoint: &str, access_key: &str, secret_key: &str) -> Command {
    let mut cmd = Command::new(tool_path(Tool::Aws).expect("the aws CLI (make tools)"));
    cmd.arg("--endpoint-url")
        .arg(endpoint)
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `cmd` to its end; fails with the command line, exit status and the tails of its output
/// when it does not exit 0.
pub async fn run(what: &str, cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("{what}: could not run {line}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}) after {:.1?}: {line}\n{}", out.status, started.elapsed(), output_tails(&out));
    }
    Ok(out)
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    std::iter::once(std.get_program()).chain(std.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// The last lines of a child's stdout and stderr.
pub fn output_tails(out: &Output) -> String {
    format!("--- stdout (tail):\n{}\n--- stderr (tail):\n{}", tail(&out.stdout, 40), tail(&out.stderr, 40))
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Streams object `seed` of `len` bytes into `aws s3 cp - <dest>` (the CLI's default multipart
/// upload from stdin: nothing is staged on disk). Returns the sha256 of what was sent and the
/// CLI's output, whatever its exit status.
pub async fn aws_upload_stream(mut cmd: Command, dest: &str, seed: u64, len: u64) -> Result<(String, Output)> {
    cmd.args(["s3", "cp", "--only-show-errors", "--expected-size", &len.to_string(), "-", dest]);
    let line = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {line}"))?;
    let stdin = child.stdin.take().context("stdin")?;
    let feed = tokio::spawn(data::write_content(seed, len, stdin));
    let out = child.wait_with_output().await?;
    // A CLI that gave up closes its stdin: the writer's error then only repeats the CLI's.
    let sha = match feed.await? {
        Ok(sha) => sha,
        Err(e) if !out.status.success() => format!("(not all sent: {e:#})"),
        Err(e) => return Err(e.context(format!("{line} exited 0 but did not read all of its input"))),
    };
    Ok((sha, out))
}

/// `aws s3 cp <src> -`, hashing what it prints; returns (bytes, sha256).
pub async fn aws_download_stream(mut cmd: Command, src: &str) -> Result<(u64, String)> {
    cmd.args(["s3", "cp", "--only-show-errors", src, "-"]);
    let line = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {line}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let hashed = data::hash_stream(stdout).await;
    let out = child.wait_with_output().await?;
    ensure!(out.status.success(), "{line} failed ({}):\n{}", out.status, output_tails(&out));
    hashed
}

/// VmHWM (peak resident set, KiB) of a running process.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// Fails with a clear message, instead of a client failing on a full disk halfway, when the
/// folder's file system has less than `need` bytes free.
pub fn ensure_free_space(dir: &Path, need: u64, why: &str) -> Result<()> {
    let free = fs4::available_space(dir).with_context(|| format!("free space of {}", dir.display()))?;
    ensure!(
        free >= need,
        "{why} needs about {} MiB free under {}, only {} MiB are (lower the size with the variable named above)",
        need / data::MIB,
        dir.display(),
        free / data::MIB
    );
    Ok(())
}

/// A fresh folder under the group's root.
pub fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
