//! Real S3 clients that nobody here wrote judge the object model end to end (issue 10, "Tests"):
//! rclone with its default settings, s3fs-fuse, the aws CLI and boto3 talk to the mount sidecar
//! (`blockproxy-mount`) in front of a group of 3 real proxies over a real MinIO, and MinIO itself
//! is checked with the aws CLI.
//!
//! The tests take turns ([`serial`]): they move gigabytes over one disk and two cores. The big
//! sizes are the issue's (5 GiB, 2 GiB, 512 MiB); a developer on a small disk can lower them with
//! `BLOCKPROXY_TEST_HUGE_MIB`, `BLOCKPROXY_TEST_STRIPED_MIB` and `BLOCKPROXY_TEST_CRASH_MIB`
//! (every run prints the sizes and timings it saw).

mod client_support;
mod s3_clients_support;

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use blockproxy_testenv::{Tool, eventually, tool_path};
use client_support::{VOLUME, metric_sum};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use s3_clients_support::data::{self, GIB, KIB, MIB};
use s3_clients_support::*;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Fails the test instead of hanging CI when a client never returns.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.with_context(|| format!("{what} did not finish within {limit:?}"))?
}

// ---- rclone and aws s3 sync over a tree of awkward names ------------------------------------

const TREE_FILES: usize = 1_000;
/// Name parts real data has: spaces, `+=@%:~#;,()`, non-ASCII.
const SEGMENTS: &[&str] = &[
    "with space",
    "plus+sign",
    "a=b",
    "user@host",
    "100%",
    "12:30",
    "~tilde",
    "#hash",
    "semi;colon",
    "a,b",
    "(paren)",
    "café",
    "日本語",
    "Ελληνικά",
    "😀 emoji",
    "all +=@%:~#;,() of them",
];

/// The tree's relative paths: nested up to 3 levels, and every 50th under 4 components of about
/// 190 bytes each (a key of about 800 bytes).
fn tree_paths() -> Vec<String> {
    (0..TREE_FILES)
        .map(|i| {
            let n = SEGMENTS.len();
            let mut parts: Vec<String> = if i % 50 == 7 {
                (0..4).map(|j| long_component(SEGMENTS[(i + j) % n], 190)).collect()
            } else {
                (0..i % 4).map(|j| SEGMENTS[(i / 4 + j * 3) % n].to_owned()).collect()
            };
            parts.push(format!("{} {i:04}{}", SEGMENTS[(i * 7) % n], [".bin", ".txt", ""][i % 3]));
            parts.join("/")
        })
        .collect()
}

/// `segment` repeated up to about `bytes` bytes (cut at a character boundary).
fn long_component(segment: &str, bytes: usize) -> String {
    let mut out = String::new();
    for c in segment.chars().cycle() {
        if out.len() + c.len_utf8() > bytes {
            break;
        }
        out.push(c);
    }
    out
}

/// Sizes from 0 to 2 MiB, mostly small, and three files above the 8 MiB part size.
fn tree_size(i: usize) -> u64 {
    match (i, i % 20) {
        (100, _) => 9 * MIB,
        (500, _) => 12 * MIB + 3,
        (900, _) => 20 * MIB + 17,
        (_, 0) => 0,
        (_, 1..=14) => (i as u64 * 37) % (8 * KIB),
        (_, 15..=18) => (i as u64 * 1_009) % (256 * KIB),
        _ => (i as u64 * 65_537) % (2 * MIB),
    }
}

fn write_tree(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for (i, rel) in tree_paths().iter().enumerate() {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        let size = tree_size(i);
        std::fs::write(&path, data::content(1_000 + i as u64, size)).with_context(|| format!("writing {rel}"))?;
        total += size;
    }
    Ok(total)
}

fn rclone(group: &Group) -> Result<Command> {
    let mut cmd = Command::new(tool_path(Tool::Rclone)?);
    // An environment-variable remote with only what any S3 user sets: everything else is rclone's
    // default (no list_version, no no_check_bucket, default chunk sizes and cutoffs).
    cmd.env("RCLONE_CONFIG", group.path().join("rclone-none.conf"))
        .env("RCLONE_CONFIG_BP_TYPE", "s3")
        .env("RCLONE_CONFIG_BP_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BP_ENDPOINT", &group.endpoint)
        .env("RCLONE_CONFIG_BP_ACCESS_KEY_ID", SIDECAR_KEY)
        .env("RCLONE_CONFIG_BP_SECRET_ACCESS_KEY", SIDECAR_KEY)
        .env("LC_ALL", "C.UTF-8")
        // rclone cannot use a custom CA bundle with its own HTTP transport (and needs none here).
        .env_remove("AWS_CA_BUNDLE");
    Ok(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_with_default_settings_and_aws_s3_sync_copy_a_tree_of_awkward_names_without_differences() -> Result<()> {
    let _serial = serial().await;
    within(Duration::from_secs(900), "the tree test", async {
        let group = Group::start("2Gi", &[]).await?;
        let src = fresh_dir(group.path(), "tree")?;
        let bytes = write_tree(&src)?;
        println!(
            "tree: {TREE_FILES} files, {bytes} bytes, longest path {} bytes",
            tree_paths().iter().map(String::len).max().unwrap_or(0)
        );

        let t = Instant::now();
        run("rclone copy", rclone(&group)?.arg("copy").arg(&src).arg(format!("bp:{VOLUME}/rclone"))).await?;
        println!("rclone copy: {:.1?}", t.elapsed());
        let t = Instant::now();
        let check =
            run("rclone check", rclone(&group)?.arg("check").arg(&src).arg(format!("bp:{VOLUME}/rclone"))).await?;
        println!("rclone check: {:.1?}: {}", t.elapsed(), String::from_utf8_lossy(&check.stderr).trim());

        let t = Instant::now();
        let remote = format!("s3://{VOLUME}/awssync/");
        run("aws s3 sync up", group.aws().args(["s3", "sync", "--only-show-errors"]).arg(&src).arg(&remote)).await?;
        println!("aws s3 sync up: {:.1?}", t.elapsed());
        let down = fresh_dir(group.path(), "down")?;
        let t = Instant::now();
        run("aws s3 sync down", group.aws().args(["s3", "sync", "--only-show-errors"]).arg(&remote).arg(&down)).await?;
        println!("aws s3 sync down: {:.1?}", t.elapsed());
        run(
            "diff -r of the tree and what aws s3 sync brought back",
            Command::new("diff").arg("-r").arg(&src).arg(&down),
        )
        .await?;
        Ok(())
    })
    .await
}

// ---- s3fs-fuse --------------------------------------------------------------------------------

/// An s3fs process in the foreground and its mount point; unmounted on drop, also when the test
/// fails (a stale FUSE mount would outlive the test).
struct S3fsMount {
    mount_point: PathBuf,
    log: PathBuf,
    child: tokio::process::Child,
    mounted: bool,
}

impl S3fsMount {
    async fn start(group: &Group) -> Result<Self> {
        ensure!(
            Path::new("/dev/fuse").exists(),
            "FUSE is unavailable: /dev/fuse does not exist, so s3fs cannot mount (load the fuse module, or give the \
             container --device /dev/fuse --cap-add SYS_ADMIN)"
        );
        let s3fs = tool_path(Tool::S3fs)?;
        tool_path(Tool::Fusermount)?;
        let mount_point = fresh_dir(group.path(), "mnt")?;
        let passwd = group.path().join("s3fs-passwd");
        std::fs::write(&passwd, format!("{SIDECAR_KEY}:{SIDECAR_KEY}\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600))?;
        let log = group.path().join("s3fs.log");
        let child = Command::new(s3fs)
            .arg(VOLUME)
            .arg(&mount_point)
            .arg("-f")
            .args(["-o", &format!("url={}", group.endpoint), "-o", "use_path_request_style"])
            .args(["-o", &format!("passwd_file={}", passwd.display()), "-o", "dbglevel=warn"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("spawning s3fs")?;
        let mut mount = Self { mount_point, log, child, mounted: false };
        let wanted = mount.mount_point.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
            if mounts.lines().any(|l| l.split(' ').nth(4) == Some(&wanted)) {
                mount.mounted = true;
                return Ok(mount);
            }
            if let Some(status) = mount.child.try_wait()? {
                bail!("s3fs exited ({status}) without mounting the sidecar's endpoint; its log:\n{}", mount.log_text());
            }
            ensure!(Instant::now() < deadline, "s3fs did not mount within 30 s; its log:\n{}", mount.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let out = std::process::Command::new(tool_path(Tool::Fusermount)?).arg("-u").arg(&self.mount_point).output()?;
        if !out.status.success() {
            // Lazy, so that the folder is released once nothing uses it.
            let _ = std::process::Command::new(tool_path(Tool::Fusermount)?).arg("-uz").arg(&self.mount_point).status();
            self.mounted = false;
            bail!("fusermount -u {} failed: {}", self.mount_point.display(), String::from_utf8_lossy(&out.stderr));
        }
        self.mounted = false;
        Ok(())
    }
}

impl Drop for S3fsMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("{e:#}");
        }
        let _ = self.child.start_kill();
    }
}

/// What the s3fs test writes through the mount: (path, size).
const S3FS_FILES: &[(&str, u64)] = &[
    ("nested/top level.txt", 1_000),
    ("nested/a b/empty", 0),
    ("nested/a b/c+d/日本/medium.bin", 3 * MIB),
    ("nested/a b/c+d/big.bin", 20 * MIB + 5),
];

/// Writes, reads back, lists (`ls -R`) and removes the files through the mount (blocking I/O).
fn exercise_mount(mnt: &Path) -> Result<String> {
    for (i, (rel, size)) in S3FS_FILES.iter().enumerate() {
        let path = mnt.join(rel);
        std::fs::create_dir_all(path.parent().context("parent")?).with_context(|| format!("mkdir -p for {rel}"))?;
        std::fs::write(&path, data::content(2_000 + i as u64, *size)).with_context(|| format!("writing {rel}"))?;
    }
    for (i, (rel, size)) in S3FS_FILES.iter().enumerate() {
        let got = std::fs::read(mnt.join(rel)).with_context(|| format!("reading {rel} back"))?;
        ensure!(
            got.len() as u64 == *size && data::sha256_hex(&got) == data::sha256_of(2_000 + i as u64, *size),
            "{rel}: read back {} bytes that differ from the {size} bytes written",
            got.len()
        );
    }
    let ls = std::process::Command::new("ls").env("LC_ALL", "C.UTF-8").arg("-R").arg(mnt.join("nested")).output()?;
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    ensure!(ls.status.success(), "ls -R failed: {}", String::from_utf8_lossy(&ls.stderr));
    let mut names = BTreeSet::new();
    for (rel, _) in S3FS_FILES {
        names.extend(rel.split('/').skip(1));
    }
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !listing.lines().any(|l| l.split('/').any(|p| p.trim_end_matches(':') == **n)))
        .collect();
    ensure!(missing.is_empty(), "ls -R of the mount misses {missing:?}:\n{listing}");
    std::fs::remove_dir_all(mnt.join("nested")).context("rm -r nested through the mount")?;
    let left: Vec<_> = std::fs::read_dir(mnt)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    ensure!(left.is_empty(), "after rm -r the mount still shows {left:?}");
    Ok(listing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3fs_mounts_the_endpoint_and_writes_reads_lists_and_removes_nested_files() -> Result<()> {
    let _serial = serial().await;
    let group = Group::start("2Gi", &[]).await?;
    let mut mount = S3fsMount::start(&group).await?;
    let mnt = mount.mount_point.clone();
    let t = Instant::now();
    let listing = within(Duration::from_secs(300), "the file operations through s3fs", async {
        tokio::task::spawn_blocking(move || exercise_mount(&mnt)).await?
    })
    .await
    .map_err(|e| e.context(format!("s3fs log:\n{}", mount.log_text())))?;
    println!("s3fs write, read, ls -R, rm -r: {:.1?}\n{listing}", t.elapsed());
    // What s3fs removed is gone for other clients too.
    let out = run(
        "aws s3api list-objects-v2 after rm -r",
        group.aws().args(["s3api", "list-objects-v2", "--bucket", VOLUME, "--prefix", "nested/"]),
    )
    .await?;
    let left = String::from_utf8_lossy(&out.stdout);
    ensure!(!left.contains("\"Key\""), "objects left under nested/ after rm -r through s3fs: {left}");
    mount.unmount()
}

// ---- a 5 GiB object: aws CLI up, boto3 down, bounded memory ---------------------------------

const BOTO3_DOWNLOAD: &str = r#"
import sys, boto3
ep, bucket, key, dest = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="blockproxy", aws_secret_access_key="blockproxy", region_name="us-east-1")
s3.download_file(bucket, key, dest)
"#;

/// Streaming must not hold anything like the object in memory: a bound far below its size.
const PEAK_RSS_BOUND_KIB: u64 = 1024 * 1024;

fn print_rss(label: &str, rss: &[(String, u64)]) {
    let line: Vec<String> = rss.iter().map(|(n, k)| format!("{n} {} MiB", k / 1024)).collect();
    println!("peak RSS (VmHWM) {label}: {}", line.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_gib_object_goes_up_with_the_aws_cli_and_down_with_boto3_byte_identical_in_bounded_memory() -> Result<()> {
    let _serial = serial().await;
    let size = size_mib_from_env("BLOCKPROXY_TEST_HUGE_MIB", 5 * 1024);
    // The home proxy holds the whole object (staged, then committed) until it is flushed.
    let quota = format!("{}Mi", size / MIB * 5 / 2 + 1024);
    within(Duration::from_secs(1800), "the 5 GiB test", async {
        let group = Group::start(&quota, &[]).await?;
        // The home proxy's copy, MinIO's and the downloaded file, plus cached blocks.
        let why = format!("BLOCKPROXY_TEST_HUGE_MIB={}", size / MIB);
        ensure_free_space(group.path(), 3 * size + 2 * GIB, &why)?;
        let key = "huge/object.bin";
        println!("object of {size} bytes ({:.2} GiB)", size as f64 / GIB as f64);

        let t = Instant::now();
        let (sent, out) = aws_upload_stream(group.aws(), &format!("s3://{VOLUME}/{key}"), 5, size).await?;
        ensure!(out.status.success(), "aws s3 cp of {size} bytes failed ({}):\n{}", out.status, output_tails(&out));
        let up = t.elapsed();
        println!("aws s3 cp up: {up:.1?} ({:.0} MiB/s)", size as f64 / MIB as f64 / up.as_secs_f64());
        print_rss("after the upload", &group.peak_rss_kib()?);

        let dest = group.path().join("huge.down");
        let t = Instant::now();
        let python = tool_path(Tool::Python)?;
        run(
            "boto3 download_file",
            Command::new(python)
                .args(["-c", BOTO3_DOWNLOAD, &group.endpoint, VOLUME, key])
                .arg(&dest)
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        )
        .await?;
        let down = t.elapsed();
        println!("boto3 download_file: {down:.1?} ({:.0} MiB/s)", size as f64 / MIB as f64 / down.as_secs_f64());
        let hashed = dest.clone();
        let (got_len, got) = tokio::task::spawn_blocking(move || data::sha256_file(&hashed)).await??;
        std::fs::remove_file(&dest)?;
        ensure!(got_len == size && got == sent, "boto3 got {got_len} bytes with sha256 {got}, sent {size} with {sent}");
        let rss = group.peak_rss_kib()?;
        print_rss("after the download", &rss);

        // In MinIO: one plain object of the full size, byte-identical, and no upload left behind.
        let t = Instant::now();
        let store_key = group.store_key(key);
        let bucket = group.minio.bucket().to_owned();
        let flush_limit = Duration::from_secs(120 + size / (20 * MIB));
        eventually(flush_limit, Duration::from_secs(2), || async {
            let out = run(
                "aws s3api head-object on MinIO",
                group.aws_minio().args(["s3api", "head-object", "--bucket", &bucket, "--key", &store_key]),
            )
            .await?;
            let head: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(head["ContentLength"] == size, "MinIO has {head}, not yet {size} bytes");
            Ok(())
        })
        .await
        .context("the object never reached MinIO whole")?;
        println!("in MinIO {:.1?} after the download", t.elapsed());
        let prefix = group.store_key("huge/");
        let out = run(
            "aws s3api list-objects-v2 on MinIO",
            group.aws_minio().args(["s3api", "list-objects-v2", "--bucket", &bucket, "--prefix", &prefix]),
        )
        .await?;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let objects: Vec<(String, u64)> = listed["Contents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| (o["Key"].as_str().unwrap_or("").to_owned(), o["Size"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            objects == vec![(store_key.clone(), size)],
            "MinIO under {prefix}: {objects:?}, want one object of {size} bytes"
        );
        let out = run(
            "aws s3api list-multipart-uploads on MinIO",
            group.aws_minio().args(["s3api", "list-multipart-uploads", "--bucket", &bucket, "--prefix", &prefix]),
        )
        .await?;
        let pending = String::from_utf8_lossy(&out.stdout);
        ensure!(!pending.contains("\"UploadId\""), "store multipart uploads left behind: {pending}");
        let t = Instant::now();
        let (minio_len, minio_sha) =
            aws_download_stream(group.aws_minio(), &format!("s3://{bucket}/{store_key}")).await?;
        println!("read back from MinIO: {:.1?}", t.elapsed());
        ensure!(
            minio_len == size && minio_sha == sent,
            "MinIO holds {minio_len} bytes with sha256 {minio_sha}, sent {size} with {sent}"
        );

        let over: Vec<_> = rss.iter().filter(|(_, k)| *k >= PEAK_RSS_BOUND_KIB).collect();
        ensure!(
            over.is_empty(),
            "peak RSS not bounded while {size} bytes streamed through: {over:?} KiB (bound {PEAK_RSS_BOUND_KIB} KiB)"
        );
        Ok(())
    })
    .await
}

// ---- a 2 GiB object from the bucket, read through every proxy -------------------------------

/// Bytes each proxy answered to clients, from its /metrics.
async fn served_bytes(group: &Group) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for p in &group.proxies {
        out.push(metric_sum(&p.metrics().await?, "blockproxy_cache_served_bytes_total"));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_object_written_by_another_tool_is_read_through_every_proxy_of_the_group() -> Result<()> {
    let _serial = serial().await;
    let size = size_mib_from_env("BLOCKPROXY_TEST_STRIPED_MIB", 2 * 1024);
    within(Duration::from_secs(900), "the striped read test", async {
        let group = Group::start("3Gi", &[]).await?;
        // MinIO's copy and the blocks cached by the proxies.
        let why = format!("BLOCKPROXY_TEST_STRIPED_MIB={}", size / MIB);
        ensure_free_space(group.path(), 2 * size + GIB, &why)?;
        let key = "striped/object.bin";
        let bucket = group.minio.bucket().to_owned();
        let t = Instant::now();
        let (sent, out) =
            aws_upload_stream(group.aws_minio(), &format!("s3://{bucket}/{}", group.store_key(key)), 11, size).await?;
        ensure!(out.status.success(), "aws s3 cp into MinIO failed ({}):\n{}", out.status, output_tails(&out));
        println!("{size} bytes put into MinIO directly: {:.1?}", t.elapsed());

        let before = served_bytes(&group).await?;
        let t = Instant::now();
        let (got_len, got) = aws_download_stream(group.aws(), &format!("s3://{VOLUME}/{key}")).await?;
        let took = t.elapsed();
        ensure!(got_len == size && got == sent, "read {got_len} bytes with sha256 {got}, MinIO has {size} with {sent}");
        let after = served_bytes(&group).await?;
        let deltas: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: f64 = deltas.iter().sum();
        let shares: Vec<String> = group
            .proxies
            .iter()
            .zip(&deltas)
            .map(|(p, d)| format!("{} {:.0} MiB ({:.1}%)", p.name, d / MIB as f64, 100.0 * d / total.max(1.0)))
            .collect();
        println!(
            "read through the sidecar in {took:.1?} ({:.0} MiB/s); served by {}",
            size as f64 / MIB as f64 / took.as_secs_f64(),
            shares.join(", ")
        );
        ensure!(
            total >= size as f64,
            "the proxies served {total} bytes of the {size} read: the rest bypassed the group"
        );
        for (p, d) in group.proxies.iter().zip(&deltas) {
            ensure!(
                *d >= 0.2 * total,
                "{} served only {:.1}% of the bytes (want ≥ 20% each): {}",
                p.name,
                100.0 * d / total,
                shares.join(", ")
            );
        }
        Ok(())
    })
    .await
}

// ---- an object replaced behind the cache --------------------------------------------------

const REPLACED_SIZE: u64 = 24 * MIB;
/// The unit whose hash is checked: small enough that a mix of any two blocks shows.
const HASH_UNIT: u64 = 256 * KIB;
const METADATA_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Old,
    New,
    /// Per hash unit: `o` old, `n` new, `?` neither.
    Mixed(String),
    Error(String),
}

fn unit_hashes(seed: u64) -> Vec<String> {
    data::content(seed, REPLACED_SIZE).chunks(HASH_UNIT as usize).map(data::sha256_hex).collect()
}

fn classify(body: &[u8], old: &[String], new: &[String]) -> Seen {
    if body.len() as u64 != REPLACED_SIZE {
        return Seen::Mixed(format!("{} bytes instead of {REPLACED_SIZE}", body.len()));
    }
    let pattern: String = body
        .chunks(HASH_UNIT as usize)
        .enumerate()
        .map(|(i, c)| {
            let h = data::sha256_hex(c);
            if h == old[i] {
                'o'
            } else if h == new[i] {
                'n'
            } else {
                '?'
            }
        })
        .collect();
    if pattern.chars().all(|c| c == 'o') {
        Seen::Old
    } else if pattern.chars().all(|c| c == 'n') {
        Seen::New
    } else {
        Seen::Mixed(pattern)
    }
}

struct Read {
    reader: usize,
    start: Instant,
    end: Instant,
    seen: Seen,
}

fn sidecar_s3(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(SIDECAR_KEY, SIDECAR_KEY, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Many large PutObjects at once through a sidecar with a small write budget: writes queue for
/// it instead of each holding its parts (the sidecar's memory stays bounded), the bytes held never
/// pass it, and every object reads back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_queue_for_the_write_buffer_budget_and_all_land_intact() -> Result<()> {
    let _serial = serial().await;
    within(Duration::from_secs(300), "the write budget test", async {
        const BUDGET: u64 = 24 * MIB;
        const PUTS: u64 = 16;
        const SIZE: u64 = 20 * MIB;
        let group = Group::start_for_sidecar_memory("2Gi", &["--write-buffer-bytes", "24Mi"]).await?;
        let metrics_url = format!("{}/_blockproxy/metrics", group.endpoint);
        let scrape = move |metric: &'static str| {
            let url = metrics_url.clone();
            async move { anyhow::Ok(metric_sum(&reqwest::get(&url).await?.text().await?, metric)) }
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (stop, scrape) = (stop.clone(), scrape.clone());
            async move {
                let mut peak = 0f64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(scrape("blockproxy_client_write_buffer_bytes").await?);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                anyhow::Ok(peak)
            }
        });
        let puts: Vec<_> = (0..PUTS)
            .map(|i| {
                let s3 = sidecar_s3(&group.endpoint);
                tokio::spawn(async move {
                    s3.put_object()
                        .bucket(VOLUME)
                        .key(format!("budget/{i}"))
                        .body(data::content(400 + i, SIZE).into())
                        .send()
                        .await
                        .with_context(|| format!("PUT budget/{i}"))
                })
            })
            .collect();
        for put in puts {
            put.await??;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.await??;
        let waits = scrape("blockproxy_client_write_buffer_waits_total").await?;
        let rss = group.sidecar.pid().map(vm_hwm_kib).transpose()?.unwrap_or_default();
        println!(
            "{PUTS} PUTs of {SIZE} bytes at once: write buffer peak {peak} of {BUDGET}, {waits} waits; sidecar peak RSS {rss} KiB"
        );
        ensure!(waits > 0.0, "{PUTS} writes of three parts never waited for a budget of three parts");
        ensure!(peak > 0.0 && peak <= BUDGET as f64, "write buffer peak {peak}, budget {BUDGET}");
        ensure!(scrape("blockproxy_client_write_buffer_bytes").await? == 0.0, "every write gave its bytes back");
        // Memory follows the budget: a part's bytes must not outlive its share of it. The rest
        // is the process itself, within what a memory limit keeps for it (ADR 0018), though
        // this is a debug build: 77 MiB in all here. A write that kept its first part to the
        // end held 16 x 8 MiB more.
        const PROCESS: u64 = blockproxy::protocol::SIDECAR_BASE_MEMORY;
        ensure!(
            rss * 1024 <= BUDGET + PROCESS,
            "sidecar peak RSS {rss} KiB, above the {BUDGET}-byte budget and {PROCESS} bytes for the process"
        );
        let s3 = sidecar_s3(&group.endpoint);
        for i in 0..PUTS {
            let got = s3.get_object().bucket(VOLUME).key(format!("budget/{i}")).send().await?.body.collect().await?;
            ensure!(got.into_bytes() == data::content(400 + i, SIZE), "budget/{i} read back differs");
        }
        Ok(())
    })
    .await
}

/// Many GetObjects of a large object at once through a sidecar with a small read budget: the
/// sidecar's memory stays within the budget plus one 1 MiB piece per GET (ADR 0019), not a
/// 4 MiB block per GET, and every GET returns the object byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_hold_the_read_budget_and_a_piece_each_and_all_read_intact() -> Result<()> {
    let _serial = serial().await;
    within(Duration::from_secs(300), "the read budget test", async {
        const BUDGET: u64 = 8 * MIB;
        const GETS: u64 = 64;
        const SIZE: u64 = 16 * MIB;
        let piece = blockproxy::client::READ_PIECE;
        let group = Group::start_for_sidecar_memory("2Gi", &["--read-ahead-bytes", "8Mi"]).await?;
        // Written to the store behind the cache, so that the sidecar's memory is the reads' alone.
        let want = data::content(700, SIZE);
        let minio = group.minio.s3_client();
        let store_key = group.store_key("read-budget/big");
        minio.put_object().bucket(group.minio.bucket()).key(&store_key).body(want.clone().into()).send().await?;
        let gets: Vec<_> = (0..GETS)
            .map(|_| {
                let s3 = sidecar_s3(&group.endpoint);
                tokio::spawn(async move {
                    let got = s3.get_object().bucket(VOLUME).key("read-budget/big").send().await?;
                    anyhow::Ok(got.body.collect().await?.into_bytes())
                })
            })
            .collect();
        for get in gets {
            ensure!(get.await?? == want, "a GET returned other bytes");
        }
        let metrics = reqwest::get(format!("{}/_blockproxy/metrics", group.endpoint)).await?.text().await?;
        let pieces = metric_sum(&metrics, "blockproxy_client_read_pieces_total");
        let rss = group.sidecar.pid().map(vm_hwm_kib).transpose()?.unwrap_or_default();
        println!("{GETS} GETs of {SIZE} bytes at once: {pieces} blocks read in pieces; sidecar peak RSS {rss} KiB");
        ensure!(pieces > 0.0, "{GETS} GETs never filled a budget of two blocks");
        // The process itself as in the PUT test above: 92 to 100 MiB in all here. A GET that
        // held the block it waits for whole held up to 64 x 4 MiB more (ADR 0019).
        const PROCESS: u64 = blockproxy::protocol::SIDECAR_BASE_MEMORY;
        let bound = BUDGET + GETS * piece + PROCESS;
        ensure!(
            rss * 1024 <= bound,
            "sidecar peak RSS {rss} KiB, above the budget, a piece per GET and the process ({bound} bytes)"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_mix_when_an_object_is_replaced_behind_the_cache_and_see_the_new_one_within_the_ttl()
-> Result<()> {
    let _serial = serial().await;
    within(Duration::from_secs(300), "the replaced-object test", async {
        let ttl = format!("{}ms", METADATA_TTL.as_millis());
        let group = Group::start("2Gi", &["--metadata-ttl", &ttl]).await?;
        let key = "replaced/object.bin";
        let (old_seed, new_seed) = (300, 301);
        let (old, new) = (unit_hashes(old_seed), unit_hashes(new_seed));
        let minio = group.minio.s3_client();
        let store_key = group.store_key(key);
        let put = |seed: u64| {
            minio
                .put_object()
                .bucket(group.minio.bucket())
                .key(&store_key)
                .body(data::content(seed, REPLACED_SIZE).into())
                .send()
        };
        put(old_seed).await.context("putting the old version into MinIO")?;

        let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for reader in 0..3 {
            let (s3, reads, stop, old, new) =
                (sidecar_s3(&group.endpoint), reads.clone(), stop.clone(), old.clone(), new.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = Instant::now();
                    let seen = match s3.get_object().bucket(VOLUME).key(key).send().await {
                        Ok(o) => match o.body.collect().await {
                            Ok(body) => classify(&body.into_bytes(), &old, &new),
                            Err(e) => Seen::Error(format!("reading the body: {e}")),
                        },
                        Err(e) => Seen::Error(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
                    };
                    reads.lock().unwrap().push(Read { reader, start, end: Instant::now(), seen });
                }
            }));
        }
        let count = |what: &dyn Fn(&Read) -> bool| reads.lock().unwrap().iter().filter(|r| what(r)).count();
        eventually(Duration::from_secs(60), Duration::from_millis(50), || async {
            ensure!(count(&|r| r.seen == Seen::Old) >= 6, "fewer than 6 reads of the old version so far");
            Ok(())
        })
        .await?;

        let put_start = Instant::now();
        put(new_seed).await.context("replacing the object in MinIO")?;
        let put_done = Instant::now();
        let deadline = put_done + METADATA_TTL + Duration::from_secs(1);
        eventually(Duration::from_secs(60), Duration::from_millis(50), || async {
            ensure!(Instant::now() > deadline + Duration::from_secs(2), "still within the TTL window");
            ensure!(count(&|r| r.start > deadline) >= 6, "fewer than 6 reads started after the TTL + 1 s");
            Ok(())
        })
        .await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.await?;
        }

        let reads = reads.lock().unwrap();
        let at = |t: Instant| {
            if t >= put_done { format!("+{:.3?}", t - put_done) } else { format!("-{:.3?}", put_done - t) }
        };
        let describe =
            |r: &Read| format!("reader {} {}..{} (vs the replace): {:?}", r.reader, at(r.start), at(r.end), r.seen);
        let mixes: Vec<String> = reads.iter().filter(|r| matches!(r.seen, Seen::Mixed(_))).map(describe).collect();
        let early_new: Vec<String> =
            reads.iter().filter(|r| r.end < put_start && r.seen != Seen::Old).map(describe).collect();
        let late_old: Vec<String> =
            reads.iter().filter(|r| r.start > deadline && r.seen != Seen::New).map(describe).collect();
        let errors = reads.iter().filter(|r| matches!(r.seen, Seen::Error(_))).count();
        println!(
            "{} reads: {} old, {} new, {} errors, {} mixed; TTL {METADATA_TTL:?}",
            reads.len(),
            reads.iter().filter(|r| r.seen == Seen::Old).count(),
            reads.iter().filter(|r| r.seen == Seen::New).count(),
            errors,
            mixes.len()
        );
        ensure!(mixes.is_empty(), "reads that mixed the two versions:\n{}", mixes.join("\n"));
        ensure!(
            early_new.is_empty(),
            "reads before the replace that did not see the old version:\n{}",
            early_new.join("\n")
        );
        ensure!(
            late_old.is_empty(),
            "reads started more than the TTL + 1 s after the replace that did not see the new version:\n{}",
            late_old.join("\n")
        );
        Ok(())
    })
    .await
}

// ---- kill -9 of each proxy during concurrent 512 MiB uploads -----------------------------------

const CRASH_KEYS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_kill_9_of_each_proxy_and_unacknowledged_ones_never_appear_partial() -> Result<()>
{
    let _serial = serial().await;
    let size = size_mib_from_env("BLOCKPROXY_TEST_CRASH_MIB", 512);
    let seed: u64 =
        std::env::var("BLOCKPROXY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!(
        "seed {seed} (BLOCKPROXY_TEST_SEED={seed} repeats the kill schedule); {CRASH_KEYS} uploads of {size} bytes"
    );
    within(Duration::from_secs(1200), "the kill -9 test", async {
        let mut group = Group::start("3Gi", &[]).await?;
        // Each upload staged on its home and its copy in MinIO.
        let why = format!("BLOCKPROXY_TEST_CRASH_MIB={}", size / MIB);
        ensure_free_space(group.path(), 2 * CRASH_KEYS as u64 * size + GIB, &why)?;
        let keys: Vec<String> = (0..CRASH_KEYS).map(|k| format!("crash/obj-{k}")).collect();
        let (v0_len, v0_seed, v1_seed) = (MIB + 7, |k: usize| 400 + k as u64, |k: usize| 500 + k as u64);
        // A complete older version of every key first: an unacknowledged upload may leave it.
        for (k, key) in keys.iter().enumerate() {
            let (_, out) = aws_upload_stream(group.aws(), &format!("s3://{VOLUME}/{key}"), v0_seed(k), v0_len).await?;
            ensure!(out.status.success(), "the first version of {key} failed:\n{}", output_tails(&out));
        }
        group.wait_flushed(Duration::from_secs(120)).await?;

        let t0 = Instant::now();
        let uploads: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let (cmd, dest) = (group.aws(), format!("s3://{VOLUME}/{key}"));
                tokio::spawn(async move { aws_upload_stream(cmd, &dest, v1_seed(k), size).await })
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..group.proxies.len()).collect();
        order.shuffle(&mut rng);
        let mut kills = Vec::new();
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
            if uploads.iter().all(|u| u.is_finished()) {
                break;
            }
            let p = &mut group.proxies[order[i % order.len()]];
            p.kill();
            kills.push(format!("{} at {:.1?}", p.name, t0.elapsed()));
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
            p.restart().await.with_context(|| format!("restarting {} on its disk", p.name))?;
        }
        let mut acked = Vec::new();
        for (key, upload) in keys.iter().zip(uploads) {
            let (_, out) = upload.await??;
            let ok = out.status.success();
            let stderr = String::from_utf8_lossy(&out.stderr);
            println!(
                "{key}: {}",
                if ok { "acknowledged".to_owned() } else { format!("failed ({}): {}", out.status, stderr.trim()) }
            );
            acked.push(ok);
        }
        println!("uploads done in {:.1?}; kill -9: {}", t0.elapsed(), kills.join(", "));
        // The CLI retries what a kill interrupts: with none acknowledged there is nothing to judge.
        ensure!(acked.iter().any(|a| *a), "no upload was acknowledged (see their errors above)");
        let killed: BTreeSet<&str> = kills.iter().filter_map(|k| k.split(' ').next()).collect();
        ensure!(
            killed.len() == group.proxies.len(),
            "the uploads finished before every proxy was killed (kills: {kills:?}); raise BLOCKPROXY_TEST_CRASH_MIB"
        );

        group.wait_flushed(Duration::from_secs(120 + CRASH_KEYS as u64 * size / (20 * MIB))).await?;
        let bucket = group.minio.bucket().to_owned();
        let prefix = group.store_key("crash/");
        let out = run(
            "aws s3api list-objects-v2 on MinIO",
            group.aws_minio().args(["s3api", "list-objects-v2", "--bucket", &bucket, "--prefix", &prefix]),
        )
        .await?;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let in_minio: BTreeSet<String> = listed["Contents"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["Key"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let want: BTreeSet<String> = keys.iter().map(|k| group.store_key(k)).collect();
        ensure!(in_minio == want, "MinIO under {prefix} holds {in_minio:?}, want exactly {want:?}");
        for (k, key) in keys.iter().enumerate() {
            let (len, sha) =
                aws_download_stream(group.aws_minio(), &format!("s3://{bucket}/{}", group.store_key(key))).await?;
            let v1 = data::sha256_of(v1_seed(k), size);
            let v0 = data::sha256_of(v0_seed(k), v0_len);
            if acked[k] {
                ensure!(
                    sha == v1,
                    "{key} was acknowledged, yet MinIO holds {len} bytes with sha256 {sha}, not the {size} acknowledged"
                );
            } else {
                ensure!(
                    sha == v1 || sha == v0,
                    "{key} (not acknowledged) is partial in MinIO: {len} bytes, sha256 {sha}"
                );
            }
            println!("{key}: MinIO holds the {} version", if sha == v1 { "new" } else { "older" });
        }
        Ok(())
    })
    .await
}
