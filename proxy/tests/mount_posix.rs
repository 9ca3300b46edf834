//! The FUSE frontend (`blockproxy-mount --mount-point`) as a real process over a real group of
//! proxies and MinIO, judged by tools nobody here wrote: cp, dd, sha256sum, cmp, diff, ls -R, rm,
//! mkdir, rmdir, mv, tar, git and Python. The contract is docs/SEMANTICS.md. Every mount is
//! detached at the end, also when a test fails.

mod client_support;

use anyhow::{Context, Result};
use blockproxy_testenv::{Blockproxy, Minio, Tool, tool_path};
use client_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Detaches a mount point when dropped (declare it after the sidecar: it is dropped first).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let bin = tool_path(Tool::Fusermount).unwrap_or_else(|_| "fusermount3".into());
        let _ = Command::new(bin).arg("-u").arg("-z").arg(&self.0).output();
    }
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*want) && l.contains(" blockproxy:vol1 ")))
}

/// A group of three proxies in front of MinIO, and its discovery file.
struct Group {
    minio: Minio,
    _proxies: Vec<Proxy>,
    discovery: PathBuf,
}

async fn group(root: &Path) -> Result<Group> {
    group_with_quota(root, "2Gi").await
}

/// [`group`] with the given `--disk-quota` per proxy.
async fn group_with_quota(root: &Path, quota: &str) -> Result<Group> {
    let minio = Minio::start().await?;
    let volumes = write_volumes_file(root, minio.bucket())?;
    let mut proxies = Vec::new();
    let mut addrs = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let p = Proxy::start_with_args(name, root, &volumes, &minio.endpoint(), &minio, quota, &[]).await?;
        addrs.push(p.addr.to_string());
        proxies.push(p);
    }
    let file = root.join("discovery.json");
    write_discovery(
        &file,
        &discovery(minio.bucket(), Some(minio.endpoint()), &[GroupSpec { name: "g".into(), addresses: addrs }]),
    )?;
    Ok(Group { minio, _proxies: proxies, discovery: file })
}

/// A sidecar serving a mount point; dropping it detaches the mount, then kills the process.
struct Pod {
    _unmount: Unmount,
    sidecar: Blockproxy,
}

/// Starts `blockproxy-mount --mount-point dir` and waits until the directory is served.
async fn mount(root: &Path, g: &Group, dir: &Path) -> Result<Pod> {
    mount_with(root, g, dir, &[]).await
}

/// [`mount`], the sidecar started with `extra` arguments too.
async fn mount_with(root: &Path, g: &Group, dir: &Path, extra: &[&str]) -> Result<Pod> {
    // The sidecar mounts through fusermount3 (Debian fuse3); without it, say how to get it.
    tool_path(Tool::Fusermount)?;
    // A dead mount answers ENOTCONN to stat, and then EEXIST to mkdir.
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    let dir_arg = dir.to_str().context("a UTF-8 temporary path")?;
    let args: Vec<&str> = ["--mount-point", dir_arg].into_iter().chain(extra.iter().copied()).collect();
    let sidecar = start_sidecar(root, &g.discovery, &g.minio, &args).await?;
    let pod = Pod { _unmount: Unmount(dir.to_owned()), sidecar };
    let mounted =
        wait_until(&format!("{} is mounted", dir.display()), Duration::from_secs(30), || async { is_mounted(dir) })
            .await;
    with_logs(&[&pod], mounted)?;
    Ok(pod)
}

/// On failure, the sidecars' warnings and errors are part of the error.
fn with_logs<T>(pods: &[&Pod], r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        let mut logs = String::new();
        for (i, pod) in pods.iter().enumerate() {
            let text = pod.sidecar.log_text();
            let notable: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            logs += &format!("--- sidecar {i} ({})\n{}\n", pod.sidecar.log_dir().display(), notable.join("\n"));
        }
        e.context(logs)
    })
}

/// Runs a bash script (`set -euo pipefail`) with `vars` in its environment; fails with its output.
fn bash(script: &str, vars: &[(&str, &Path)]) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running bash")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "the script failed ({}):\n{text}", out.status);
    Ok(text)
}

fn tmp_root() -> Result<tempfile::TempDir> {
    // Canonical, so that the mount table shows the same path.
    let t = tempfile::tempdir()?;
    anyhow::ensure!(t.path().canonicalize()? == t.path(), "the temporary directory is a symlink");
    Ok(t)
}

const BATTERY: &str = r#"
cd "$W"
mkdir -p src/tree/a/b src/tree/c
head -c 3000000 /dev/urandom > src/tree/a/b/blob.bin
echo hello > src/tree/c/hello.txt
for i in $(seq 1 30); do echo "file $i" > "src/tree/a/f$i.txt"; done

# cp and sha256sum; stat shows the real size.
cp src/tree/a/b/blob.bin "$M/blob.bin"
[ "$(sha256sum < src/tree/a/b/blob.bin)" = "$(sha256sum < "$M/blob.bin")" ]
[ "$(stat -c %s "$M/blob.bin")" = 3000000 ]

# dd in 64 KiB writes; a random read in the middle.
dd if=/dev/urandom of=dd.want bs=65536 count=80 status=none
dd if=dd.want of="$M/dd.bin" bs=65536 status=none
cmp dd.want "$M/dd.bin"
dd if="$M/dd.bin" of=part.got bs=4096 skip=300 count=10 status=none
dd if=dd.want of=part.want bs=4096 skip=300 count=10 status=none
cmp part.want part.got

# mkdir, tar x of a tree, diff -r and ls -R against the source.
mkdir "$M/made"
[ -d "$M/made" ]
tar -C src -cf tree.tar tree
tar -C "$M/made" -xf tree.tar
diff -r src/tree "$M/made/tree"
diff <(cd src && ls -R tree) <(cd "$M/made" && ls -R tree)

# mv of a file (copy + delete) and of a directory (EXDEV: mv copies the tree itself).
mv "$M/blob.bin" "$M/made/moved.bin"
[ ! -e "$M/blob.bin" ]
cmp src/tree/a/b/blob.bin "$M/made/moved.bin"
mv "$M/made/tree/c" "$M/made/c2"
[ "$(cat "$M/made/c2/hello.txt")" = hello ]
[ ! -e "$M/made/tree/c" ]

# Overwrite with O_TRUNC; appending to existing data and links are refused.
echo new > "$M/made/c2/hello.txt"
[ "$(cat "$M/made/c2/hello.txt")" = new ]
if echo more >> "$M/made/c2/hello.txt"; then echo "append accepted"; exit 1; fi
if ln -s target "$M/link" 2>/dev/null; then echo "symlink accepted"; exit 1; fi

# rm, rmdir (refused while not empty).
mkdir "$M/empty"
rmdir "$M/empty"
[ ! -e "$M/empty" ]
if rmdir "$M/made" 2> rmdir.err; then echo "rmdir of a full directory"; exit 1; fi
grep -q "not empty" rmdir.err
rm "$M/dd.bin"
[ ! -e "$M/dd.bin" ]
rm -r "$M/made/tree/a/b"
[ ! -e "$M/made/tree/a/b" ]
[ -e "$M/made/tree/a/f1.txt" ]

# git clone of a local repository into the mount.
git init -q -b main repo
git -C repo -c user.email=t@example.com -c user.name=t commit -q --allow-empty -m empty
echo content > repo/r.txt
mkdir repo/sub
echo deep > repo/sub/d.txt
git -C repo add .
git -C repo -c user.email=t@example.com -c user.name=t commit -q -m init
git clone -q "file://$W/repo" "$M/clone"
[ "$(cat "$M/clone/sub/d.txt")" = deep ]
[ -z "$(git -C "$M/clone" status --porcelain)" ]
git -C "$M/clone" log --oneline > log.txt
grep -q init log.txt
git -C "$M/clone" fsck --no-progress
"#;

const PYTHON: &str = r#"
import errno, os, sys
m = sys.argv[1]
d = os.path.join(m, "py")
p = os.path.join(d, "data.bin")
os.makedirs(d)
data = os.urandom(1_000_000)
with open(p, "wb") as f:
    f.write(data[:500_000])
    f.write(data[500_000:])
    f.flush()
    os.fsync(f.fileno())
with open(p, "rb") as f:
    assert f.read() == data
    f.seek(123_456)
    assert f.read(1000) == data[123_456:124_456]
assert os.path.getsize(p) == len(data)
assert os.listdir(d) == ["data.bin"], os.listdir(d)
with open(p, "w") as f:
    f.write("text")
assert open(p).read() == "text"
try:
    open(p, "r+b")
    raise SystemExit("in-place update accepted")
except OSError as e:
    assert e.errno == errno.EPERM, e
# A directory of more than one listing page (1000 keys) with a subdirectory in the middle.
big = os.path.join(m, "many")
os.mkdir(big)
names = ["f%05d" % i for i in range(1100)]
for n in names:
    open(os.path.join(big, n), "wb").close()
os.makedirs(os.path.join(big, "f00500.d", "deep"))
open(os.path.join(big, "f00500.d", "deep", "x"), "wb").close()
listed = sorted(os.listdir(big))
assert listed == sorted(names + ["f00500.d"]), (len(listed), listed[:3], listed[-3:])
os.rename(p, p + ".2")
assert not os.path.exists(p) and open(p + ".2").read() == "text"
os.remove(p + ".2")
os.rmdir(d)
assert not os.path.exists(d)
print("python ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_tools_work_through_the_mount_and_files_land_in_minio_byte_identical() -> Result<()> {
    let root = tmp_root()?;
    let g = group(root.path()).await?;
    let (m1, m2, work) = (root.path().join("mnt1"), root.path().join("mnt2"), root.path().join("work"));
    std::fs::create_dir_all(&work)?;
    let pod1 = mount(root.path(), &g, &m1).await?;
    let pod2 = mount(root.path(), &g, &m2).await?;

    with_logs(&[&pod1, &pod2], bash(BATTERY, &[("M", &m1), ("W", &work)]))?;
    let py = Command::new("python3").arg("-c").arg(PYTHON).arg(&m1).output()?;
    assert!(
        py.status.success(),
        "python: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );

    // Read-after-write across pods of the group: a close on one mount, then a read on the other.
    bash(
        r#"for i in 1 2 3; do echo "round $i" > "$M/cross.txt"; [ "$(cat "$N/cross.txt")" = "round $i" ]; done"#,
        &[("M", &m1), ("N", &m2)],
    )?;

    // Files written through the mount land in MinIO byte-identical at {prefix}/{path}.
    let src = work.join("src/tree");
    for (key, local) in [
        ("made/moved.bin", src.join("a/b/blob.bin")),
        ("made/tree/a/f7.txt", src.join("a/f7.txt")),
        ("clone/sub/d.txt", work.join("repo/sub/d.txt")),
    ] {
        let want = std::fs::read(&local)?;
        wait_until(&format!("{key} is in MinIO as written"), Duration::from_secs(60), || async {
            in_minio(&g.minio, key).await.ok().flatten().is_some_and(|(d, _)| d == want)
        })
        .await?;
    }
    wait_until("mkdir's marker is in MinIO and deleted files are gone", Duration::from_secs(60), || async {
        in_minio(&g.minio, "made/").await.ok().flatten().is_some()
            && in_minio(&g.minio, "dd.bin").await.is_ok_and(|o| o.is_none())
            && in_minio(&g.minio, "blob.bin").await.is_ok_and(|o| o.is_none())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sidecar_crash_the_mount_fails_with_enotconn_until_the_restarted_sidecar_serves_it_again() -> Result<()>
{
    let root = tmp_root()?;
    let g = group(root.path()).await?;
    let m = root.path().join("mnt");
    let mut pod = mount(root.path(), &g, &m).await?;

    std::fs::write(m.join("kept.txt"), b"closed before the crash")?;
    let open_before = std::fs::File::open(m.join("kept.txt"))?;
    pod.sidecar.kill();
    let err = std::fs::metadata(m.join("kept.txt")).expect_err("a dead mount answers nothing");
    assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");

    pod.sidecar.restart().await?;
    wait_until("the restarted sidecar serves the mount", Duration::from_secs(30), || async {
        std::fs::read(m.join("kept.txt")).is_ok_and(|d| d == b"closed before the crash")
    })
    .await?;
    std::fs::write(m.join("after.txt"), b"written after the restart")?;
    let mut names: Vec<String> = std::fs::read_dir(&m)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["after.txt", "kept.txt"]);
    // A descriptor of the dead mount stays dead: the app must open the file again.
    use std::io::Read;
    let mut buf = Vec::new();
    assert!((&open_before).read_to_end(&mut buf).is_err(), "a descriptor of the old mount still read");
    Ok(())
}

/// Files over one 8 MiB part go up as multipart uploads staged on their home proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_written_as_multipart_uploads_and_read_back_striped() -> Result<()> {
    let root = tmp_root()?;
    let g = group(root.path()).await?;
    let (m, work) = (root.path().join("mnt"), root.path().join("work"));
    std::fs::create_dir_all(&work)?;
    let _pod = mount(root.path(), &g, &m).await?;
    bash(
        r#"
        cd "$W"
        head -c 41943040 /dev/urandom > big.want
        dd if=big.want of="$M/big.bin" bs=1M status=none
        [ "$(stat -c %s "$M/big.bin")" = 41943040 ]
        [ "$(sha256sum < big.want)" = "$(sha256sum < "$M/big.bin")" ]
        dd if="$M/big.bin" of=tail.got bs=1M skip=37 status=none
        dd if=big.want of=tail.want bs=1M skip=37 status=none
        cmp tail.want tail.got
        "#,
        &[("M", &m), ("W", &work)],
    )?;
    let want = std::fs::read(work.join("big.want"))?;
    wait_until("big.bin is in MinIO as written", Duration::from_secs(90), || async {
        in_minio(&g.minio, "big.bin").await.ok().flatten().is_some_and(|(d, _)| d == want)
    })
    .await?;

    // docs/SEMANTICS.md: a handle reads the version it opened, never a mix. Once the file is
    // replaced, that handle reads the old bytes while the old version is in the store (big.bin,
    // striped reads), or fails with EIO (at once for a version only at its home: fresh.bin);
    // opening it again reads the new one.
    // Replaced through another pod's mount: through the same mount, the kernel's page cache of
    // the file's one inode shows the new bytes to every handle, as on a local file system.
    let other = root.path().join("mnt2");
    let _pod2 = mount(root.path(), &g, &other).await?;
    let py = Command::new("python3").arg("-c").arg(REPLACED_WHILE_OPEN).arg(&m).arg(&other).output()?;
    let out = format!("{}{}", String::from_utf8_lossy(&py.stdout), String::from_utf8_lossy(&py.stderr));
    assert!(py.status.success(), "{out}");
    assert!(out.lines().any(|l| l == "fresh.bin: EIO after replace"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("big.bin: ")), "{out}");
    Ok(())
}

/// Several large files written at once through a mount with a small write budget: the parts
/// being sent queue for it (ADR 0017), and every file lands whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_at_once_queue_for_the_write_budget_and_land_whole() -> Result<()> {
    let root = tmp_root()?;
    let g = group(root.path()).await?;
    let (m, work) = (root.path().join("mnt"), root.path().join("work"));
    std::fs::create_dir_all(&work)?;
    // Two 8 MiB parts: each file sends one while it fills the next, six files at once.
    let pod = mount_with(root.path(), &g, &m, &["--write-buffer-bytes", "16Mi"]).await?;
    let written = bash(
        r#"
        cd "$W"
        for i in 1 2 3 4 5 6; do head -c 29360128 /dev/urandom > "f$i.want"; done
        for i in 1 2 3 4 5 6; do dd if="f$i.want" of="$M/f$i.bin" bs=1M status=none & done
        wait
        for i in 1 2 3 4 5 6; do cmp "f$i.want" "$M/f$i.bin"; done
        "#,
        &[("M", &m), ("W", &work)],
    );
    with_logs(&[&pod], written)?;
    let metrics = reqwest::get(format!("http://{}/_blockproxy/metrics", pod.sidecar.addr())).await?.text().await?;
    let waits = metric_sum(&metrics, "blockproxy_client_write_buffer_waits_total");
    assert!(waits > 0.0, "six files of four parts each never waited for a budget of two parts");
    assert_eq!(metric_sum(&metrics, "blockproxy_client_write_buffer_bytes"), 0.0, "every part gave its bytes back");
    for i in 1..=6 {
        let want = std::fs::read(work.join(format!("f{i}.want")))?;
        wait_until(&format!("f{i}.bin is in MinIO as written"), Duration::from_secs(90), || async {
            in_minio(&g.minio, &format!("f{i}.bin")).await.ok().flatten().is_some_and(|(d, _)| d == want)
        })
        .await?;
    }
    Ok(())
}

const REPLACED_WHILE_OPEN: &str = r#"
import errno, os, sys
m, other = sys.argv[1], sys.argv[2]
def check(name, size):
    path = os.path.join(m, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    with open(path, "rb") as f:
        before = f.read()
    old = open(path, "rb", buffering=0)
    old.read(4096)
    new = os.urandom(size)
    with open(os.path.join(other, name), "wb") as f:
        f.write(new)
    at = size - (1 << 20)
    old.seek(at)
    try:
        got = old.read(4096)
        if got != before[at:at + 4096]:
            which = "the new version's" if got == new[at:at + 4096] else f"{len(got)} unknown"
            sys.exit(f"{name}: the old handle read {which} bytes, not those of the version it opened")
        print(f"{name}: the old version after replace")
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        print(f"{name}: EIO after replace")
    with open(path, "rb") as f:
        f.seek(size - (1 << 20))
        assert f.read(4096) == new[size - (1 << 20):size - (1 << 20) + 4096], f"{name}: reopened, not the new bytes"
check("big.bin", 41943040)
check("fresh.bin", 12 << 20)
"#;

/// `blockproxy quickstart --mount DIR`, as the README runs it: a file written in the directory
/// is the volume's object, in the local store after Ctrl-C, and the mount is gone after exit.
/// fio as the judge of a 2 GiB file: written sequentially through one mount with a checksum in
/// every 64 KiB, then, once flushed, read through another pod's mount sequentially (the owners
/// fetch their blocks from the store) and at random (from their caches), every byte verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_verifies_a_2_gib_file_written_through_one_mount_and_read_through_another() -> Result<()> {
    const SIZE: u64 = 2 << 30;
    let fio = tool_path(Tool::Fio)?;
    let root = tmp_root()?;
    // The home proxy holds the whole object until it is flushed.
    let g = group_with_quota(root.path(), "4Gi").await?;
    let (m1, m2, work) = (root.path().join("mnt1"), root.path().join("mnt2"), root.path().join("work"));
    std::fs::create_dir_all(&work)?;
    let pod1 = mount(root.path(), &g, &m1).await?;
    let pod2 = mount(root.path(), &g, &m2).await?;
    let job = |mount: &Path, jobs: &str| {
        format!(
            "[global]\nfilename={}/fio.bin\nsize={SIZE}\nioengine=psync\nverify=crc32c\nverify_interval=64k\n\
             fallocate=none\n{jobs}",
            mount.display()
        )
    };
    let run = |name: &str, text: String, readonly: bool| -> Result<String> {
        let file = work.join(name);
        std::fs::write(&file, text)?;
        let mut cmd = Command::new(&fio);
        cmd.arg("--output-format=terse").arg(&file);
        if readonly {
            cmd.arg("--readonly");
        }
        let out = cmd.output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let ran = if out.status.success() { Ok(text) } else { Err(anyhow::anyhow!("fio {name} failed:\n{text}")) };
        with_logs(&[&pod1, &pod2], ran)
    };
    run("write.fio", job(&m1, "[write]\nrw=write\nbs=1M\ndo_verify=0\n"), false)?;
    let store = minio_store(&g.minio).await;
    wait_until("fio.bin is in MinIO whole", Duration::from_secs(300), || async {
        use blockproxy::store::Store;
        store.head(g.minio.bucket(), &format!("{PREFIX}/fio.bin")).await.ok().flatten().is_some_and(|o| o.size == SIZE)
    })
    .await?;
    let reads = "[seqread]\nrw=read\nbs=1M\n[randread]\nstonewall\nrw=randread\nbs=64k\nio_size=64M\n";
    let out = run("read.fio", job(&m2, reads), true)?;
    // Terse output: one line per job, field 5 is the job's error number.
    let errors: Vec<&str> = out.lines().filter_map(|l| l.split(';').nth(4)).collect();
    assert_eq!(errors, ["0", "0"], "both read jobs ran without error:\n{out}");
    Ok(())
}

/// The pjdfstest cases that apply to the mount (docs/SEMANTICS.md, "pjdfstest"): the error
/// codes of every operation on missing, wrong-type and existing paths, and what the mount does
/// support (mkdir, rmdir, unlink, open, rename of files, truncate to 0). Left out: cases needing
/// fifos, sockets, devices, symlinks or hard links, permission bits, owners, time stamps of
/// directories and ctime, names longer than 255 bytes, and reading a file after its unlink.
const PJDFSTEST_CASES: &[&str] = &[
    "chmod::efault_path",
    "chmod::enoent_comp",
    "chmod::enoent_named_file",
    "chmod::enotdir_component::regular",
    "chmod::failed_chmod_unchanged_ctime::dir",
    "chmod::failed_chmod_unchanged_ctime::regular",
    "chown::efault_path",
    "chown::enoent_comp",
    "chown::enoent_named_file",
    "chown::enotdir_component::regular",
    "chown::lchown::efault_path",
    "chown::lchown::enoent_comp",
    "chown::lchown::enoent_named_file",
    "chown::lchown::enotdir_component::regular",
    "ftruncate::einval_negative_length",
    "ftruncate::unchanged_ctime_failed",
    "link::eexist_dest_exists::dir",
    "link::eexist_dest_exists::regular",
    "link::efault_either",
    "link::enoent_named_file",
    "link::enoent_source_not_exists",
    "link::enotdir_component_either::regular",
    "link::unchanged_ctime_fails::regular",
    "mkdir::eexist_file_exists::dir",
    "mkdir::eexist_file_exists::regular",
    "mkdir::efault_path",
    "mkdir::enoent_comp",
    "mkdir::enotdir_component::regular",
    "mkfifo::eexist_file_exists::dir",
    "mkfifo::eexist_file_exists::regular",
    "mkfifo::efault_path",
    "mkfifo::enoent_comp",
    "mkfifo::enotdir_component::regular",
    "mknod::eexist_file_exists::dir",
    "mknod::eexist_file_exists::regular",
    "mknod::efault_path",
    "mknod::enoent_comp",
    "mknod::enotdir_comp_char_block::regular",
    "mknod::enotdir_component::regular",
    "mknod::privileged::eexist_file_exists::dir",
    "mknod::privileged::eexist_file_exists::regular",
    "open::eexist_file_exists::dir",
    "open::eexist_file_exists::regular",
    "open::efault_path",
    "open::einval_invalid_combination",
    "open::eisdir",
    "open::enoent_comp",
    "open::enoent_named_file",
    "open::exists_no_update",
    "rename::efault_either",
    "rename::einval_ebusy_dot_dotdot",
    "rename::einval_parent_from_subdir_to",
    "rename::eisdir_to_dir_from_not_dir::regular",
    "rename::enoent_named_file",
    "rename::enotdir_component_either::regular",
    "rename::enotdir_from_dir_to_not_dir::regular",
    "rmdir::ebusy",
    "rmdir::eexist_enotempty_dotdot",
    "rmdir::eexist_enotempty_non_empty_dir::dir",
    "rmdir::eexist_enotempty_non_empty_dir::regular",
    "rmdir::efault_path",
    "rmdir::einval_dot",
    "rmdir::enoent_named_file",
    "rmdir::enotdir_component::regular",
    "rmdir::remove_dir",
    "symlink::eexist_file_exists::dir",
    "symlink::eexist_file_exists::regular",
    "symlink::efault_either",
    "symlink::enoent_comp",
    "symlink::enotdir_component::regular",
    "truncate::efault_path",
    "truncate::einval_negative_length",
    "truncate::eisdir",
    "truncate::enoent_comp",
    "truncate::enoent_named_file",
    "truncate::enotdir_component::regular",
    "truncate::unchanged_ctime_failed",
    "unlink::efault_path",
    "unlink::enoent_named_file",
    "unlink::enotdir_component::regular",
    "unlink::remove_type::regular",
];

/// pjdfstest, a POSIX file system test suite nobody here wrote, as a judge of the mount: every
/// case of [`PJDFSTEST_CASES`] passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_cases_that_apply_pass_on_the_mount() -> Result<()> {
    let pjdfstest = tool_path(Tool::Pjdfstest)?;
    let root = tmp_root()?;
    let g = group(root.path()).await?;
    let m = root.path().join("mnt");
    let pod = mount(root.path(), &g, &m).await?;
    std::fs::create_dir(m.join("pjd"))?;
    // Users that exist on Debian, for the cases that switch identity.
    let config = root.path().join("pjdfstest.toml");
    std::fs::write(
        &config,
        "[features]\n[settings]\nnaptime = 0.001\n[dummy_auth]\n\
         entries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"], [\"bin\", \"bin\"]]\n",
    )?;
    let out = Command::new(&pjdfstest)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(m.join("pjd"))
        // Patterns match as substrings (`link::x` runs `unlink::x` too): only the listed cases
        // are judged, not the exit status.
        .args(PJDFSTEST_CASES)
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let passed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace).filter(|(_, r)| r.trim() == "ok").map(|(n, _)| n))
        .collect();
    let failed: Vec<&&str> = PJDFSTEST_CASES.iter().filter(|c| !passed.contains(c)).collect();
    let judged =
        if failed.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("pjdfstest cases failed: {failed:?}\n{text}")) };
    with_logs(&[&pod], judged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_mounts_the_demo_volume() -> Result<()> {
    use blockproxy::store::{LocalDirStore, Store};
    use blockproxy_testenv::BlockproxyCommand;
    let root = tmp_root()?;
    let m = root.path().join("demo");
    std::fs::create_dir(&m)?;
    let _unmount = Unmount(m.clone());
    let port = free_port();
    let mut quickstart = Blockproxy::start(
        BlockproxyCommand::new(env!("CARGO_BIN_EXE_blockproxy"), "quickstart", ["quickstart", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--dir")
            .arg(root.path().join("qs"))
            .arg("--mount")
            .arg(&m)
            .ready_url(&format!("http://127.0.0.1:{port}/_blockproxy/readyz")),
    )
    .await?;
    wait_until("the quickstart volume is mounted", Duration::from_secs(30), || async {
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| t.contains(" blockproxy:demo "))
    })
    .await?;
    std::fs::create_dir(m.join("docs"))?;
    std::fs::write(m.join("docs/hi.txt"), "hi from the mount\n")?;
    assert_eq!(std::fs::read_to_string(m.join("docs/hi.txt"))?, "hi from the mount\n");
    let status = quickstart.stop_with("INT", Duration::from_secs(60)).await?;
    assert!(status.success(), "quickstart exited with {status}: {}", quickstart.log_text());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")?.contains(&format!(" {} ", m.display())), "still mounted");
    let store = LocalDirStore::open(root.path().join("qs/store"))?;
    let stored = store.get("quickstart-bucket", "volumes/demo/docs/hi.txt").await?.context("hi.txt in the store")?;
    assert_eq!(&stored.data[..], b"hi from the mount\n");
    Ok(())
}

// --- The CSI hand-over (ADR 0008): `blockproxy-csi` mounts, the sidecar serves the descriptor. ---

mod csi {
    use super::*;
    use blockproxy::csi::proto::csi::{
        GetPluginInfoRequest, NodeGetInfoRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
        VolumeCapability, identity_client::IdentityClient, node_client::NodeClient, volume_capability,
    };
    use blockproxy::csi::proto::registration::{InfoRequest, registration_client::RegistrationClient};
    use blockproxy_testenv::BlockproxyCommand;
    use std::collections::HashMap;

    /// A gRPC channel over a Unix socket, as the kubelet dials a CSI endpoint; retried until the
    /// plugin listens.
    async fn dial(socket: &Path) -> Result<tonic::transport::Channel> {
        let mut last = None;
        for _ in 0..200 {
            let path = socket.to_owned();
            let connector = tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            });
            match tonic::transport::Endpoint::try_from("http://localhost")?.connect_with_connector(connector).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow::anyhow!("dialing {}: {last:?}", socket.display()))
    }

    /// The kubelet's directory layout for one Pod with an inline volume `data` and the webhook's
    /// hand-over emptyDir, which the kubelet creates before it publishes the volume.
    struct KubeletPod {
        kubelet: PathBuf,
        uid: String,
        target: PathBuf,
        handover: PathBuf,
    }

    fn kubelet_pod(root: &Path) -> Result<KubeletPod> {
        let kubelet = root.join("kubelet");
        let uid = "6c1f0e2a-0000-4000-8000-000000000001".to_owned();
        let pod = kubelet.join("pods").join(&uid).join("volumes");
        let target = pod.join("kubernetes.io~csi/data/mount");
        let handover = pod.join("kubernetes.io~empty-dir").join(blockproxy::csi::HANDOVER_VOLUME);
        std::fs::create_dir_all(target.parent().context("a parent")?)?;
        std::fs::create_dir_all(&handover)?;
        Ok(KubeletPod { kubelet, uid, target, handover })
    }

    fn publish_request(pod: &KubeletPod) -> NodePublishVolumeRequest {
        let ctx: HashMap<String, String> = [
            ("volumeID", VOLUME),
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.uid", &pod.uid),
            ("csi.storage.k8s.io/pod.name", "app"),
            ("csi.storage.k8s.io/pod.namespace", "default"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        NodePublishVolumeRequest {
            volume_id: format!("csi-{}", pod.uid),
            target_path: pod.target.to_string_lossy().into_owned(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(volume_capability::AccessMode {
                    mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            volume_context: ctx,
            ..Default::default()
        }
    }

    /// The whole node path: the kubelet's calls to the plugin, the sidecar taking the descriptor,
    /// an unprivileged app user writing and reading files that land in MinIO, a sidecar crash
    /// (the documented ENOTCONN), and unpublish (idempotent).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_csi_plugin_mounts_and_the_sidecar_serves_the_handed_over_descriptor() -> Result<()> {
        let root = tmp_root()?;
        // The app runs as nobody: it must be able to walk to the mount.
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let g = group(root.path()).await?;
        let pod = kubelet_pod(root.path())?;
        let _unmount = Unmount(pod.target.clone());
        let csi_sock = root.path().join("plugins/blockproxy.io/csi.sock");
        let reg_sock = root.path().join("plugins_registry/blockproxy.io-reg.sock");
        let _plugin = Blockproxy::start(
            BlockproxyCommand::new(env!("CARGO_BIN_EXE_blockproxy-csi"), "csi", ["--node-id", "node-a"])
                .arg("--csi-socket")
                .arg(&csi_sock)
                .arg("--registration-socket")
                .arg(&reg_sock)
                .arg("--kubelet-dir")
                .arg(&pod.kubelet),
        )
        .await?;

        // Registration, as the kubelet's plugin watcher does it.
        let info = RegistrationClient::new(dial(&reg_sock).await?).get_info(InfoRequest {}).await?.into_inner();
        assert_eq!((info.r#type.as_str(), info.name.as_str()), ("CSIPlugin", blockproxy::csi::DRIVER_NAME));
        assert_eq!(Path::new(&info.endpoint), csi_sock);
        let channel = dial(&csi_sock).await?;
        let name =
            IdentityClient::new(channel.clone()).get_plugin_info(GetPluginInfoRequest {}).await?.into_inner().name;
        assert_eq!(name, blockproxy::csi::DRIVER_NAME);
        let mut node = NodeClient::new(channel);
        assert_eq!(node.node_get_info(NodeGetInfoRequest {}).await?.into_inner().node_id, "node-a");

        node.node_publish_volume(publish_request(&pod)).await?;
        assert!(is_mounted(&pod.target), "published but not mounted");
        // The kubelet retries: a second publish of a mounted target is success, not a new mount.
        node.node_publish_volume(publish_request(&pod)).await?;

        let socket = pod.handover.join(blockproxy::csi::socket_name(VOLUME));
        let socket_arg = socket.to_str().context("a UTF-8 path")?;
        let sidecar = start_sidecar(root.path(), &g.discovery, &g.minio, &["--fuse-fd-socket", socket_arg]).await?;
        let work = root.path().join("work");
        std::fs::create_dir(&work)?;
        std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let app = r#"
            [ "$(id -u)" = 65534 ]
            head -c 2000000 /dev/urandom > "$W/blob.bin"
            mkdir "$M/dir"
            cp "$W/blob.bin" "$M/dir/blob.bin"
            cmp "$W/blob.bin" "$M/dir/blob.bin"
            echo "from an unprivileged app" > "$M/hello.txt"
            [ "$(cat "$M/hello.txt")" = "from an unprivileged app" ]
            ls "$M/dir" | grep -qx blob.bin
        "#;
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-euo", "pipefail", "-c", app])
            .env("M", &pod.target)
            .env("W", &work)
            .output()?;
        let logs = format!(
            "{}{}\nsidecar:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            sidecar.log_text()
        );
        anyhow::ensure!(out.status.success(), "the app's script failed: {logs}");

        let want = std::fs::read(work.join("blob.bin"))?;
        wait_until("dir/blob.bin is in MinIO as written", Duration::from_secs(60), || async {
            in_minio(&g.minio, "dir/blob.bin").await.ok().flatten().is_some_and(|(d, _)| d == want)
        })
        .await?;

        // The plugin keeps no copy of the descriptor: the sidecar gone, the mount answers ENOTCONN.
        let mut sidecar = sidecar;
        sidecar.kill();
        let err = std::fs::metadata(pod.target.join("hello.txt")).expect_err("a dead mount answers nothing");
        assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");
        // The restarted sidecar cannot take over the dead connection: it fails at once, saying why.
        let restarted = sidecar.restart().await;
        assert!(restarted.is_err(), "a restarted sidecar claims to serve a dead mount");
        assert!(sidecar.log_text().contains("until the Pod is recreated"), "{}", sidecar.log_text());
        let err = std::fs::metadata(&pod.target).expect_err("still dead");
        assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");

        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: format!("csi-{}", pod.uid),
            target_path: pod.target.to_string_lossy().into_owned(),
        })
        .await?;
        assert!(!is_mounted(&pod.target), "still mounted after unpublish");
        assert!(!pod.target.exists(), "the target directory is left behind");
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: format!("csi-{}", pod.uid),
            target_path: pod.target.to_string_lossy().into_owned(),
        })
        .await
        .context("a second unpublish (the kubelet retries) is success")?;
        Ok(())
    }
}
