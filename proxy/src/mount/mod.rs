//! The volume as a directory through FUSE (issue 13): `blockproxy-mount --mount-point DIR`
//! serves it next to the S3 endpoint, on the same client. The library choice is ADR 0006; what
//! each file operation means is docs/SEMANTICS.md.
//!
//! - [`fs`]: the FUSE adapter (each kernel request becomes a task on the tokio runtime);
//! - [`inodes`], [`dirs`], [`reader`], [`writer`], [`errno`]: the parts, tested without a kernel.

mod dirs;
mod errno;
mod fs;
mod inodes;
mod reader;
mod writer;

use crate::client::Client;
use anyhow::Context;
use clap::Args;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// ENOTCONN: what a FUSE mount whose server died answers.
const ENOTCONN: i32 = 107;

#[derive(Debug, Clone, Args)]
pub struct FuseArgs {
    /// Also serve the volume as a directory here, through FUSE (see docs/SEMANTICS.md).
    #[arg(long, env = "BLOCKPROXY_MOUNT_POINT", conflicts_with = "fuse_fd_socket")]
    pub mount_point: Option<PathBuf>,

    /// Serve the volume on a FUSE mount someone else made: take its /dev/fuse descriptor from the
    /// blockproxy CSI plugin on this Unix socket (waits for it to appear). No privilege, no
    /// fusermount3 needed. The mount dies with this process (ENOTCONN): see docs/SEMANTICS.md.
    #[arg(long, env = "BLOCKPROXY_FUSE_FD_SOCKET")]
    pub fuse_fd_socket: Option<PathBuf>,

    /// How long `--fuse-fd-socket` waits for the plugin's socket.
    #[arg(long, env = "BLOCKPROXY_FUSE_FD_WAIT", value_parser = humantime::parse_duration, default_value = "5m")]
    pub fuse_fd_wait: std::time::Duration,

    /// Threads reading FUSE requests from the kernel (each with its own /dev/fuse descriptor).
    #[arg(long, env = "BLOCKPROXY_FUSE_THREADS", default_value_t = 4)]
    pub fuse_threads: usize,

    /// Let other users (the app container's) use the mount (needs `user_allow_other` in
    /// /etc/fuse.conf unless run as root).
    #[arg(long, env = "BLOCKPROXY_ALLOW_OTHER")]
    pub allow_other: bool,

    /// Owner shown for every file and directory; default: the mount point's owner.
    #[arg(long, env = "BLOCKPROXY_MOUNT_UID")]
    pub uid: Option<u32>,

    /// Group shown for every file and directory; default: the mount point's group.
    #[arg(long, env = "BLOCKPROXY_MOUNT_GID")]
    pub gid: Option<u32>,
}

/// A mounted volume; [`Mounted::unmount`] detaches it.
pub struct Mounted {
    session: fuser::BackgroundSession,
    /// None when the mount is the CSI plugin's (`--fuse-fd-socket`): only it can unmount.
    mount_point: Option<PathBuf>,
}

/// The mount options both ways of mounting share.
fn config(client: &Client, args: &FuseArgs) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("blockproxy:{}", client.volume())),
        fuser::MountOption::Subtype("blockproxy".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(args.fuse_threads.max(1));
    config.clone_fd = true;
    config
}

/// Serves the FUSE mount whose descriptor the CSI plugin offers at `socket` (ADR 0008).
pub async fn serve_handed_over(client: Client, args: &FuseArgs, socket: &Path) -> anyhow::Result<Mounted> {
    // The plugin offers the descriptor once, and a FUSE connection cannot be taken over by a new
    // server (the kernel's INIT handshake and inode numbers belonged to the old one): a restarted
    // sidecar says so at once instead of waiting for a socket that will never come again.
    let taken = taken_marker(socket);
    anyhow::ensure!(
        !taken.exists(),
        "the CSI plugin handed this Pod's /dev/fuse descriptor to an earlier blockproxy-mount, which exited: \
         the mount is dead (ENOTCONN) until the Pod is recreated (docs/SEMANTICS.md, \"When the sidecar restarts\")"
    );
    tracing::info!(socket = %socket.display(), "waiting for the CSI plugin's /dev/fuse descriptor");
    let fd = crate::csi::handover::receive(socket, args.fuse_fd_wait).await?;
    std::fs::write(&taken, b"").with_context(|| format!("writing {}", taken.display()))?;
    let uid = args.uid.unwrap_or_else(|| rustix::process::geteuid().as_raw());
    let gid = args.gid.unwrap_or_else(|| rustix::process::getegid().as_raw());
    let fs = fs::VolumeFs::new(client.clone(), tokio::runtime::Handle::current(), uid, gid);
    let mut config = config(&client, args);
    // The plugin mounted with allow_other; the app container runs as another user.
    config.acl = fuser::SessionACL::All;
    // Threads share the one descriptor: a clone would need /dev/fuse, which this container lacks.
    config.clone_fd = false;
    let acl = config.acl;
    // The handshake reads the kernel's INIT, queued since the plugin's mount(2).
    let session = tokio::task::spawn_blocking(move || fuser::Session::from_fd(fs, fd, acl, config))
        .await?
        .context("the FUSE handshake on the handed-over descriptor")?;
    let session = session.spawn().context("starting the FUSE session threads")?;
    tracing::info!(threads = args.fuse_threads, "serving the CSI plugin's mount");
    Ok(Mounted { session, mount_point: None })
}

/// Mounts the volume at `args.mount_point`. A dead mount left there by a previous process
/// (ENOTCONN) is detached first, so a restarted sidecar serves the same directory again.
pub fn mount(client: Client, args: &FuseArgs, mount_point: &Path) -> anyhow::Result<Mounted> {
    if std::fs::metadata(mount_point).is_err_and(|e| e.raw_os_error() == Some(ENOTCONN)) {
        tracing::warn!(mount_point = %mount_point.display(), "a dead mount is in the way (its server exited): detaching it");
        lazy_unmount(mount_point)?;
    }
    let meta = std::fs::metadata(mount_point)
        .with_context(|| format!("the mount point {} (--mount-point)", mount_point.display()))?;
    anyhow::ensure!(meta.is_dir(), "the mount point {} is not a directory", mount_point.display());
    let uid = args.uid.unwrap_or(meta.uid());
    let gid = args.gid.unwrap_or(meta.gid());
    let fs = fs::VolumeFs::new(client.clone(), tokio::runtime::Handle::current(), uid, gid);
    let config = config(&client, args);
    let session = fuser::spawn_mount(fs, mount_point, &config)
        .with_context(|| format!("mounting the volume at {}", mount_point.display()))?;
    tracing::info!(mount_point = %mount_point.display(), threads = args.fuse_threads, "volume mounted");
    Ok(Mounted { session, mount_point: Some(mount_point.to_owned()) })
}

impl Mounted {
    /// Unmounts; when files are still open (busy), detaches lazily so the process can exit.
    /// A handed-over mount is left to the plugin: the threads end with the process, and the
    /// kernel then fails the app's calls with ENOTCONN.
    pub async fn unmount(self) {
        let Some(mp) = self.mount_point.clone() else {
            return;
        };
        let session = self.session;
        let done = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!(mount_point = %mp.display(), result = ?done, "unmount failed: detaching lazily");
            if let Err(e) = lazy_unmount(&mp) {
                tracing::warn!(error = %e, "lazy unmount failed");
            }
        }
    }
}

/// `<socket>.taken`, next to the hand-over socket (the Pod's emptyDir, which outlives the sidecar).
fn taken_marker(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".taken");
    PathBuf::from(name)
}

/// `fusermount3 -u -z` (or `fusermount` where only FUSE 2 is installed).
fn lazy_unmount(mount_point: &Path) -> anyhow::Result<()> {
    for bin in ["fusermount3", "fusermount"] {
        match std::process::Command::new(bin).arg("-u").arg("-z").arg(mount_point).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => anyhow::bail!("{bin} -u -z {}: {}", mount_point.display(), String::from_utf8_lossy(&out.stderr)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(format!("running {bin}")),
        }
    }
    anyhow::bail!("neither fusermount3 nor fusermount is installed")
}
