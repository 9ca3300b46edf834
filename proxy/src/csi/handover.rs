//! Passing the mounted `/dev/fuse` descriptor from the CSI plugin to the sidecar: one Unix socket,
//! one connection, one byte with the descriptor attached (`SCM_RIGHTS`). See ADR 0008.

use anyhow::Context;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often both sides look for the other's socket or directory.
const POLL: Duration = Duration::from_millis(200);

/// Waits (up to `wait`) for `dir` to exist, listens on `dir/name`, gives `fd` to the first
/// process that connects, then removes the socket. The plugin's copy of `fd` is closed when this
/// returns, so the sidecar's is the only one: when the sidecar exits the kernel ends the mount
/// (ENOTCONN), rather than leaving the app's calls hanging on a server that is gone.
pub async fn serve_once(dir: PathBuf, name: String, fd: OwnedFd, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    while !dir.is_dir() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the directory {} (the pod's hand-over emptyDir) did not appear within {wait:?}",
            dir.display()
        );
        tokio::time::sleep(POLL).await;
    }
    let shown = dir.join(&name);
    let dir_fd = std::fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let path = short_path(&dir_fd, &name);
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", shown.display()))?;
    // The sidecar runs as another, unprivileged user.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
    let _ = std::fs::remove_file(&path);
    let (stream, _) = accepted
        .map_err(|_| anyhow::anyhow!("no sidecar connected to {} within {wait:?}", shown.display()))?
        .with_context(|| format!("accepting on {}", shown.display()))?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    send_fd(&stream, fd.as_fd())?;
    Ok(())
}

/// Waits (up to `wait`) for the plugin's socket at `path`, then receives the descriptor.
pub async fn receive(path: &Path, wait: Duration) -> anyhow::Result<OwnedFd> {
    let deadline = tokio::time::Instant::now() + wait;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (if d.as_os_str().is_empty() { Path::new(".") } else { d }, n),
        _ => anyhow::bail!("{} is not a socket path", path.display()),
    };
    let stream = loop {
        let attempt = match std::fs::File::open(dir) {
            Ok(dir_fd) => tokio::net::UnixStream::connect(short_path(&dir_fd, name)).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!("no /dev/fuse descriptor offered at {} within {wait:?} (is the blockproxy CSI plugin running on this node, and does the pod have the inline volume?)", path.display())
                });
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || recv_fd(&stream)).await?
}

/// `/proc/self/fd/N/name` for `name` in the open directory `dir`: a socket's path must fit in
/// 108 bytes, and the kubelet's pod directories (`/var/lib/kubelet/pods/<uid>/volumes/...`) do not.
fn short_path(dir: &std::fs::File, name: impl AsRef<std::ffi::OsStr>) -> PathBuf {
    use std::os::fd::AsRawFd;
    Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name.as_ref())
}

fn send_fd(stream: &impl AsFd, fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    anyhow::ensure!(control.push(SendAncillaryMessage::ScmRights(&fds)), "control buffer too small");
    sendmsg(stream, &[IoSlice::new(b"F")], &mut control, SendFlags::NOSIGNAL).context("sending the descriptor")?;
    Ok(())
}

fn recv_fd(stream: &impl AsFd) -> anyhow::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    recvmsg(stream, &mut [IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .context("receiving the descriptor")?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    anyhow::bail!("the plugin closed the connection without passing a descriptor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    /// A descriptor crosses the socket: what is written through the received copy is in the file.
    #[tokio::test]
    async fn a_descriptor_crosses_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        // Longer than a socket path may be, as the kubelet's pod directories are.
        let sock_dir = dir.path().join("x".repeat(60)).join("later-".repeat(10));
        std::fs::create_dir(sock_dir.parent().unwrap()).unwrap();
        let server = tokio::spawn(serve_once(
            sock_dir.clone(),
            "v.sock".into(),
            OwnedFd::from(file.try_clone().unwrap()),
            Duration::from_secs(30),
        ));
        // The directory appears after the plugin started waiting, as an emptyDir may.
        tokio::time::sleep(POLL).await;
        std::fs::create_dir(&sock_dir).unwrap();
        let fd = receive(&sock_dir.join("v.sock"), Duration::from_secs(30)).await.unwrap();
        server.await.unwrap().unwrap();
        assert!(!sock_dir.join("v.sock").exists(), "the socket is removed once served");
        std::fs::File::from(fd).write_all(b"through the socket").unwrap();
        let mut got = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the socket");
    }

    #[tokio::test]
    async fn no_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let fd = OwnedFd::from(tempfile::tempfile().unwrap());
        let err =
            serve_once(dir.path().join("never"), "v.sock".into(), fd, Duration::from_millis(10)).await.unwrap_err();
        assert!(err.to_string().contains("did not appear"), "{err}");
    }
}
