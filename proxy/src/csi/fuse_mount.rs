//! What the privileged plugin does to the node: open `/dev/fuse`, mount it at the pod's target
//! path, and detach it again. The filesystem itself is served by the sidecar (ADR 0008).

use anyhow::Context;
use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Mounts a fresh FUSE connection at `target` and returns its `/dev/fuse` descriptor, the only
/// one: whoever holds it serves the mount. `allow_other` because the app container's user is not
/// the mounter (root); the filesystem shows every file as owned by the sidecar's `--uid/--gid`.
pub fn mount(target: &Path, source: &str, read_only: bool) -> anyhow::Result<OwnedFd> {
    std::fs::create_dir_all(target).with_context(|| format!("creating the target path {}", target.display()))?;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("opening /dev/fuse (the plugin needs it mounted in, and to be privileged)")?;
    let fd = OwnedFd::from(dev);
    let data = CString::new(format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other", fd.as_raw_fd()))?;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount(source, target, "fuse.blockproxy", flags, data.as_c_str())
        .with_context(|| format!("mount(2) of fuse at {}", target.display()))?;
    Ok(fd)
}

/// Whether something is mounted exactly at `target` (from /proc/self/mountinfo).
pub fn is_mount_point(target: &Path) -> anyhow::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let want = target.to_string_lossy();
    Ok(info.lines().any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want)))
}

/// Detaches whatever is mounted at `target` (lazily: the app may still hold files open) and
/// removes the directory. Nothing mounted and no directory is success: the kubelet retries.
pub fn unmount(target: &Path) -> anyhow::Result<()> {
    while is_mount_point(target)? {
        rustix::mount::unmount(target, UnmountFlags::DETACH)
            .with_context(|| format!("umount -l {}", target.display()))?;
    }
    match std::fs::remove_dir(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the target path {}", target.display()))
        }
        _ => Ok(()),
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(field.get(i + 1..i + 4).unwrap_or(""), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/tail\"), r"/tail\");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_mount_point(dir.path()).unwrap());
    }

    #[test]
    fn unmounting_nothing_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("never-mounted");
        unmount(&gone).unwrap();
        std::fs::create_dir(&gone).unwrap();
        unmount(&gone).unwrap();
        assert!(!gone.exists());
    }
}
