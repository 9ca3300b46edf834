//! The embedded local-directory store (`file:///path`), for running without a cloud (quickstart,
//! tests of pure data-plane logic).
//!
//! On-disk format:
//! - `<root>/<bucket>/<path of key>`: the object's bytes, a plain file that any tool can read.
//!   Any S3 key has a path of its own, safe and readable (`photos/img 1.jpg` is
//!   `photos%/img 1.jpg`): see `local_path` for the encoding.
//! - Two user extended attributes on that file: `user.blockproxy.version` (the write version, in
//!   decimal) and `user.blockproxy.crc32c` (the writer's checksum, 8 hex digits). A file without
//!   them was written by something else: version 0, accepted as it is. A third,
//!   `user.blockproxy.attrs`, holds the object's attributes as JSON (absent: none). Last-modified
//!   is the file's mtime.
//! - `<root>/.blockproxy/tmp/`: objects being written. `<root>/.blockproxy/locks/`: lock files.
//!
//! A write goes to a temporary file, which gets its attributes and is fsynced, then is renamed
//! into place, and the directory is fsynced. Bytes, version and checksum belong to one inode, so
//! they become visible together with the rename: a crash leaves the old object or the new one,
//! never new bytes under an old version or the reverse. A write returns (and a flush counts as
//! applied) only once all of it is durable.
//!
//! Conditional writes and deletes compare the current object with what the caller read while
//! holding an exclusive `flock` on the key's lock file (one of [`LOCK_STRIPES`]), so writers in
//! several processes sharing the folder are ordered as S3's `If-Match` orders them. The ETag is
//! `"<inode>-<version>-<crc32c>"` (quoted, as S3's): every write is a new inode. It is not an MD5:
//! only S3 stores give S3-compatible ETags. A file upload copies the file into a temporary file
//! (its parts are only checked, the local store has no parts) and installs it like any write.
//!
//! A key can be both an object and a "directory" of other objects (`a` and `a/b`): directories
//! have names of their own (`a%`). The filesystem must support user xattrs
//! (ext4, xfs, btrfs, and tmpfs since Linux 6.6 do); [`LocalDirStore::open`] checks it.

use super::{
    ListPage, ListedObject, ObjectAttrs, ObjectInfo, ObjectMeta, Precondition, S3ETag, Store, StoreError, StoredBlock,
    StoredRange, check_parts, check_range, verify_fetched, without_tombstones,
};
use crate::protocol::crc;
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const VERSION_XATTR: &str = "user.blockproxy.version";
const CRC32C_XATTR: &str = "user.blockproxy.crc32c";
const ATTRS_XATTR: &str = "user.blockproxy.attrs";
const S3_ETAG_XATTR: &str = "user.blockproxy.etag";
/// Lock files; writers of different keys rarely wait for each other.
const LOCK_STRIPES: u32 = 64;
/// Temporary files older than this at open are leftovers of a crash (a live writer is faster).
const STALE_TMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.display().to_string(), source }
}

impl LocalDirStore {
    /// Opens (creating) the store folder, checks that its filesystem keeps user xattrs, and
    /// removes temporary files left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in [store.tmp_dir(), store.root.join(".blockproxy").join("locks")] {
            std::fs::create_dir_all(&dir).map_err(io_err("mkdir", &dir))?;
        }
        let probe = store.tmp_path();
        let checked = File::create(&probe).and_then(|f| {
            rustix::fs::fsetxattr(&f, VERSION_XATTR, b"0", rustix::fs::XattrFlags::empty()).map_err(Into::into)
        });
        let _ = std::fs::remove_file(&probe);
        checked.map_err(|e| StoreError::Io {
            op: "set a user xattr (the local store needs a filesystem with user extended attributes)",
            path: store.root.display().to_string(),
            source: e,
        })?;
        store.remove_stale_tmp();
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".blockproxy").join("tmp")
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp_dir().join(format!("{:016x}", rand::random::<u64>()))
    }

    fn remove_stale_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else { return };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn data_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(super::local_path::key_path(key))
    }

    /// Holds an exclusive lock for `bucket/key` until dropped (the lock dies with the file).
    fn lock(&self, bucket: &str, key: &str) -> Result<File, StoreError> {
        let stripe = crc::crc32c(format!("{bucket}/{key}").as_bytes()) % LOCK_STRIPES;
        let path = self.root.join(".blockproxy").join("locks").join(format!("{stripe:02}"));
        let file =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err("lock", &path))?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(file)
    }

    fn head_sync(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.data_path(bucket, key);
        let Some(file) = open_object(&path).map_err(io_err("open", &path))? else { return Ok(None) };
        info_of(&file).map(Some).map_err(io_err("stat", &path))
    }

    fn get_sync(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let path = self.data_path(bucket, key);
        let Some(mut file) = open_object(&path).map_err(io_err("open", &path))? else { return Ok(None) };
        // Attributes and bytes come from the one open inode, so they always belong together.
        let info = info_of(&file).map_err(io_err("read xattr", &path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err("read", &path))?;
        let crc32c = verify_fetched(bucket, key, &data, info.crc32c)?;
        let ObjectInfo { version, etag, s3_etag, last_modified, attrs, .. } = info;
        Ok(Some(StoredBlock { data: data.into(), version, crc32c, etag, s3_etag, last_modified, attrs }))
    }

    fn get_range_sync(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        let path = self.data_path(bucket, key);
        let Some(mut file) = open_object(&path).map_err(io_err("open", &path))? else { return Ok(None) };
        let info = info_of(&file).map_err(io_err("read xattr", &path))?;
        if let Some(etag) = if_match
            && !precondition_holds(Precondition::Matches(etag), Some(&info))
        {
            return Err(StoreError::PreconditionFailed { op: "GET", bucket: bucket.into(), key: key.into() });
        }
        check_range(bucket, key, &range, info.size)?;
        let mut data = vec![0; (range.end - range.start) as usize];
        file.seek(SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(io_err("read", &path))?;
        Ok(Some(StoredRange { data: data.into(), info }))
    }

    fn put_sync(
        &self,
        bucket: &str,
        key: &str,
        data: &[u8],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let written = write_tmp(&tmp, &mut &data[..], meta, attrs).map_err(io_err("write", &tmp));
        self.install(written, &tmp, bucket, key, cond)
    }

    #[allow(clippy::too_many_arguments)]
    fn put_file_sync(
        &self,
        bucket: &str,
        key: &str,
        source: &Path,
        offset: u64,
        part_sizes: &[u64],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(source).map_err(io_err("open", source))?;
        let len = file.metadata().map_err(io_err("stat", source))?.len().saturating_sub(offset);
        file.seek(SeekFrom::Start(offset)).map_err(io_err("seek", source))?;
        check_parts(bucket, key, len, part_sizes)?;
        let tmp = self.tmp_path();
        let written = write_tmp(&tmp, &mut file, meta, attrs).map_err(io_err("write", &tmp));
        self.install(written, &tmp, bucket, key, cond)
    }

    /// Renames the written temporary file into place if `cond` holds; removes it otherwise.
    fn install(
        &self,
        written: Result<(), StoreError>,
        tmp: &Path,
        bucket: &str,
        key: &str,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let installed = written.and_then(|()| {
            let _lock = self.lock(bucket, key)?;
            let current = self.head_sync(bucket, key)?;
            if !precondition_holds(cond, current.as_ref()) {
                return Err(StoreError::PreconditionFailed { op: "PUT", bucket: bucket.into(), key: key.into() });
            }
            let path = self.data_path(bucket, key);
            let parent = path.parent().unwrap_or(&self.root);
            create_dirs_durably(&self.root, parent).map_err(io_err("mkdir", parent))?;
            std::fs::rename(tmp, &path).map_err(io_err("rename", &path))?;
            sync_dir(parent).map_err(io_err("fsync dir", parent))
        });
        if installed.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        installed
    }

    fn delete_sync(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        let _lock = self.lock(bucket, key)?;
        let Some(current) = self.head_sync(bucket, key)? else { return Ok(()) };
        if !precondition_holds(Precondition::Matches(etag), Some(&current)) {
            return Err(StoreError::PreconditionFailed { op: "DELETE", bucket: bucket.into(), key: key.into() });
        }
        let path = self.data_path(bucket, key);
        std::fs::remove_file(&path).map_err(io_err("delete", &path))?;
        let parent = path.parent().unwrap_or(&self.root);
        sync_dir(parent).map_err(io_err("fsync dir", parent))?;
        // Empty directories left behind would make the key `a` impossible after `a/b` is gone.
        let bucket_dir = self.root.join(bucket);
        let mut dir = parent;
        while dir != bucket_dir && std::fs::remove_dir(dir).is_ok() {
            dir = dir.parent().unwrap_or(bucket_dir.as_path());
        }
        Ok(())
    }

    fn list_sync(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let root = self.root.join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("list", &dir))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(io_err("stat", &path))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(key) = path.strip_prefix(&root).ok().and_then(super::local_path::path_key)
                    && key.starts_with(prefix)
                {
                    let size = entry.metadata().map_err(io_err("stat", &path))?.len();
                    out.push(ListedObject { key, size, etag: String::new(), last_modified: SystemTime::UNIX_EPOCH });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// A page of [`Self::list_sync`] (which walks the whole prefix: fine for a local folder),
    /// with each listed object's ETag and mtime.
    fn list_page_sync(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        let all = self.list_sync(bucket, prefix)?;
        let mut after = all.into_iter().filter(|o| start_after.is_none_or(|a| o.key.as_str() > a)).peekable();
        let mut objects = Vec::new();
        let mut last = None;
        while objects.len() < max_keys as usize
            && let Some(o) = after.next()
        {
            last = Some(o.key.clone());
            // Gone since the walk: not listed.
            if let Some(info) = self.head_sync(bucket, &o.key)? {
                objects.push(ListedObject { etag: info.etag, last_modified: info.last_modified, size: info.size, ..o });
            }
        }
        let next_start_after = after.peek().and(last);
        Ok(ListPage { objects: without_tombstones(objects), next_start_after })
    }
}

/// A precondition that can move to a blocking task (`None`: absent), and back.
fn owned(cond: Precondition<'_>) -> Option<String> {
    match cond {
        Precondition::Absent => None,
        Precondition::Matches(etag) => Some(etag.to_owned()),
    }
}

fn borrowed(cond: &Option<String>) -> Precondition<'_> {
    cond.as_deref().map_or(Precondition::Absent, Precondition::Matches)
}

/// Runs blocking file-system work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io { op: "run blocking task", path: String::new(), source: io::Error::other(e) })
    })
}

/// The object's file, or `None` when there is no object (a missing file, a directory, or a path
/// through a file).
fn open_object(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) if f.metadata()?.is_file() => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_xattr(file: &File, name: &str) -> io::Result<Option<String>> {
    let mut buf = [0u8; 32];
    match rustix::fs::fgetxattr(file, name, &mut buf[..]) {
        Ok(n) => Ok(std::str::from_utf8(&buf[..n]).ok().map(str::to_owned)),
        Err(e) if e == rustix::io::Errno::NODATA => Ok(None),
        // Longer than any value of ours: not ours.
        Err(e) if e == rustix::io::Errno::RANGE => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The object's attributes (none when not recorded or unreadable as ours).
fn read_attrs(file: &File) -> io::Result<ObjectAttrs> {
    let size = match rustix::fs::fgetxattr_query(file, ATTRS_XATTR) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NODATA => return Ok(ObjectAttrs::default()),
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; size];
    let n = rustix::fs::fgetxattr(file, ATTRS_XATTR, &mut buf[..])?;
    Ok(serde_json::from_slice(&buf[..n]).unwrap_or_default())
}

/// The recorded version and checksum; `None` each when not recorded (a foreign file).
fn read_meta(file: &File) -> io::Result<(Option<u64>, Option<u32>)> {
    let version = read_xattr(file, VERSION_XATTR)?.and_then(|v| v.parse().ok());
    let crc = read_xattr(file, CRC32C_XATTR)?.and_then(|v| u32::from_str_radix(&v, 16).ok());
    Ok((version, crc))
}

fn info_of(file: &File) -> io::Result<ObjectInfo> {
    let (version, crc32c) = read_meta(file)?;
    let stat = file.metadata()?;
    let version = version.unwrap_or(0);
    Ok(ObjectInfo {
        size: stat.len(),
        etag: format!("\"{}-{version}-{:08x}\"", stat.ino(), crc32c.unwrap_or(0)),
        s3_etag: read_xattr(file, S3_ETAG_XATTR)?.and_then(|e| S3ETag::parse(&e)).map(|e| e.quoted()),
        version,
        last_modified: stat.modified()?,
        attrs: read_attrs(file)?,
        crc32c,
    })
}

/// ETags are compared without their quotes, so a caller's unquoted ETag works too.
fn precondition_holds(cond: Precondition<'_>, current: Option<&ObjectInfo>) -> bool {
    let bare = |e: &str| e.trim_matches('"').to_owned();
    match (cond, current) {
        (Precondition::Absent, None) => true,
        (Precondition::Matches(etag), Some(s)) => etag == "*" || bare(&s.etag) == bare(etag),
        _ => false,
    }
}

fn write_tmp(tmp: &Path, data: &mut impl Read, meta: ObjectMeta, attrs: &ObjectAttrs) -> io::Result<()> {
    let mut f = File::create(tmp)?;
    io::copy(data, &mut f)?;
    let flags = rustix::fs::XattrFlags::empty();
    rustix::fs::fsetxattr(&f, VERSION_XATTR, meta.version.to_string().as_bytes(), flags)?;
    rustix::fs::fsetxattr(&f, CRC32C_XATTR, format!("{:08x}", meta.crc32c).as_bytes(), flags)?;
    if let Some(etag) = meta.s3_etag {
        rustix::fs::fsetxattr(&f, S3_ETAG_XATTR, etag.to_string().as_bytes(), flags)?;
    }
    if *attrs != ObjectAttrs::default() {
        let json = serde_json::to_vec(attrs).map_err(io::Error::other)?;
        rustix::fs::fsetxattr(&f, ATTRS_XATTR, &json, flags)?;
    }
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents below `base`, fsyncing each new directory's parent so
/// the new entries survive power loss.
fn create_dirs_durably(base: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| p.starts_with(base)).unwrap_or(base);
    if parent != dir {
        create_dirs_durably(base, parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Store for LocalDirStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || this.get_sync(&bucket, &key)).await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        let (this, bucket, key, if_match) =
            (self.clone(), bucket.to_owned(), key.to_owned(), if_match.map(str::to_owned));
        blocking(move || this.get_range_sync(&bucket, &key, range, if_match.as_deref())).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || this.head_sync(&bucket, &key)).await
    }

    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let (this, bucket, key, attrs, cond) =
            (self.clone(), bucket.to_owned(), key.to_owned(), attrs.clone(), owned(cond));
        blocking(move || this.put_sync(&bucket, &key, &data, meta, &attrs, borrowed(&cond))).await
    }

    async fn put_file_at_if(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        offset: u64,
        part_sizes: &[u64],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let (this, bucket, key, attrs, cond) =
            (self.clone(), bucket.to_owned(), key.to_owned(), attrs.clone(), owned(cond));
        let (path, parts) = (path.to_owned(), part_sizes.to_vec());
        blocking(move || this.put_file_sync(&bucket, &key, &path, offset, &parts, meta, &attrs, borrowed(&cond))).await
    }

    /// The delete checks the ETag under the key's lock.
    fn deletes_are_conditional(&self) -> bool {
        true
    }

    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        let (this, bucket, key, etag) = (self.clone(), bucket.to_owned(), key.to_owned(), etag.to_owned());
        blocking(move || this.delete_sync(&bucket, &key, &etag)).await
    }

    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        let (this, bucket, prefix, after) =
            (self.clone(), bucket.to_owned(), prefix.to_owned(), start_after.map(str::to_owned));
        blocking(move || this.list_page_sync(&bucket, &prefix, after.as_deref(), max_keys)).await
    }

    /// One walk of the folder rather than one per page.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let (this, bucket, prefix) = (self.clone(), bucket.to_owned(), prefix.to_owned());
        blocking(move || Ok(this.list_page_sync(&bucket, &prefix, None, u32::MAX)?.objects)).await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Conditional, ErrorClass, delete_unless_newer, put_unless_newer};
    use std::io::Write;

    async fn put(store: &LocalDirStore, key: &str, data: &'static [u8], version: u64) -> Conditional {
        put_unless_newer(
            store,
            "b",
            key,
            Bytes::from_static(data),
            ObjectMeta::for_data(version, data),
            &ObjectAttrs::default(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        assert!(store.get("b", "p/k1").await.unwrap().is_none());
        put(&store, "p/k1", b"one", 7).await;
        put(&store, "p/k2", b"two!", 8).await;
        let got = store.get("b", "p/k1").await.unwrap().unwrap();
        assert_eq!((&got.data[..], got.version, got.crc32c), (&b"one"[..], 7, crc::crc32c(b"one")));
        let listed = store.list("b", "p/").await.unwrap();
        assert_eq!(listed.iter().map(|o| (o.key.as_str(), o.size)).collect::<Vec<_>>(), [("p/k1", 3), ("p/k2", 4)]);
        assert_eq!(delete_unless_newer(&store, "b", "p/k1", 9).await.unwrap(), Conditional::Applied);
        assert_eq!(delete_unless_newer(&store, "b", "p/k1", 9).await.unwrap(), Conditional::Applied);
        assert!(store.head("b", "p/k1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn version_and_checksum_live_on_the_data_file_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        put(&store, "k", b"bytes", 42).await;
        let file = File::open(dir.path().join("b/k")).unwrap();
        assert_eq!(read_meta(&file).unwrap(), (Some(42), Some(crc::crc32c(b"bytes"))));
        // Nothing but the object and the store's own folder: no side file to get out of step.
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [".blockproxy", "b"]);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "no temporary file left");
    }

    #[tokio::test]
    async fn corruption_in_the_store_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        put(&store, "k", b"good bytes", 3).await;
        // Flip a byte in place (same inode, attributes kept), as a failing disk would.
        let path = dir.path().join("b/k");
        let mut f = File::options().write(true).open(&path).unwrap();
        f.write_all(b"G").unwrap();
        let err = store.get("b", "k").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn files_written_by_other_tools_are_served_as_version_0() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/foreign"), b"theirs").unwrap();
        let got = store.get("b", "foreign").await.unwrap().unwrap();
        assert_eq!((&got.data[..], got.version, got.crc32c), (&b"theirs"[..], 0, crc::crc32c(b"theirs")));
        assert_eq!(put(&store, "foreign", b"ours", 1).await, Conditional::Applied, "any version is newer");
    }

    #[tokio::test]
    async fn a_stale_condition_fails_and_an_older_version_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        put(&store, "k", b"v1", 1).await;
        let read = store.head("b", "k").await.unwrap().unwrap();
        let none = ObjectAttrs::default();
        put(&store, "k", b"v5", 5).await;
        let stale = store.put_if(
            "b",
            "k",
            Bytes::from_static(b"v3"),
            ObjectMeta::for_data(3, b"v3"),
            &none,
            Precondition::Matches(&read.etag),
        );
        assert_eq!(stale.await.unwrap_err().class(), ErrorClass::PreconditionFailed);
        assert_eq!(store.delete_if("b", "k", &read.etag).await.unwrap_err().class(), ErrorClass::PreconditionFailed);
        let absent = store.put_if(
            "b",
            "k",
            Bytes::from_static(b"v3"),
            ObjectMeta::for_data(3, b"v3"),
            &none,
            Precondition::Absent,
        );
        assert_eq!(absent.await.unwrap_err().class(), ErrorClass::PreconditionFailed);
        assert_eq!(put(&store, "k", b"v3", 3).await, Conditional::StoreNewer { store_version: 5 });
        assert_eq!(store.get("b", "k").await.unwrap().unwrap().version, 5);
    }

    /// The key names of issue 10: every one is stored, read and listed as itself, next to the
    /// others (`a` and `a/b` both).
    fn issue_10_keys() -> Vec<String> {
        let mut keys: Vec<String> =
            ["with space", "plus+sign", "eq=sign", "at@sign", "100%", "co:lon", "ti~lde", "hash#tag", "ünï/日本語"]
                .map(String::from)
                .into();
        keys.push(format!("long/{}", "k".repeat(crate::protocol::MAX_KEY_LEN - 5)));
        keys.extend(["a".to_owned(), "a/b".to_owned()]);
        keys
    }

    #[tokio::test]
    async fn any_s3_key_round_trips_and_lists_as_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let mut keys = issue_10_keys();
        keys.extend(["./x", "a/../b", "a//b", "/lead", "trail/", ".hidden"].map(String::from));
        for (i, key) in keys.iter().enumerate() {
            let data = Bytes::from(format!("object {i}: {key}"));
            let meta = ObjectMeta::for_data(i as u64 + 1, &data);
            let put = put_unless_newer(&store, "b", key, data, meta, &ObjectAttrs::default()).await.unwrap();
            assert_eq!(put, Conditional::Applied, "{key}");
        }
        for (i, key) in keys.iter().enumerate() {
            let got = store.get("b", key).await.unwrap().unwrap_or_else(|| panic!("{key:?} is missing"));
            assert_eq!(got.data, format!("object {i}: {key}").as_bytes(), "{key:?}");
        }
        let mut sorted = keys.clone();
        sorted.sort();
        let listed: Vec<String> = store.list("b", "").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(listed, sorted);
        let under_a: Vec<String> = store.list("b", "a/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(under_a, sorted.iter().filter(|k| k.starts_with("a/")).cloned().collect::<Vec<_>>());
        // Nothing escaped the bucket's folder.
        let mut top: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        top.sort();
        assert_eq!(top, [".blockproxy", "b"]);
    }

    #[tokio::test]
    async fn deleting_an_object_keeps_its_namesake_directory_and_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        put(&store, "a", b"file", 1).await;
        put(&store, "a/b", b"below", 2).await;
        delete_unless_newer(&store, "b", "a/b", 3).await.unwrap();
        assert_eq!(&store.get("b", "a").await.unwrap().unwrap().data[..], b"file");
        put(&store, "a/b", b"again", 4).await;
        delete_unless_newer(&store, "b", "a", 5).await.unwrap();
        assert_eq!(&store.get("b", "a/b").await.unwrap().unwrap().data[..], b"again");
        let listed = store.list("b", "").await.unwrap().into_iter().map(|o| o.key);
        let objects: Vec<String> = listed.filter(|k| !crate::store::is_tombstone_key(k)).collect();
        assert_eq!(objects, ["a/b"]);
    }

    fn attrs() -> ObjectAttrs {
        ObjectAttrs {
            content_type: Some("text/csv".into()),
            content_encoding: Some("gzip".into()),
            cache_control: Some("no-cache".into()),
            content_disposition: Some("inline".into()),
            user_metadata: [("owner".to_owned(), "team a".to_owned())].into(),
        }
    }

    /// A file of `len` bytes of varied content.
    fn file_of(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    #[tokio::test]
    async fn attributes_round_trip_through_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path().join("store")).unwrap();
        let data = Bytes::from_static(b"a,b");
        store
            .put_if("b", "one", data.clone(), ObjectMeta::for_data(1, &data), &attrs(), Precondition::Absent)
            .await
            .unwrap();
        let min = blockproxy_protocol::MIN_PART_SIZE;
        let (path, bytes) = file_of(dir.path(), "f", min as usize + 10);
        let meta = ObjectMeta::for_data(2, &bytes);
        store.put_file_if("b", "two", &path, &[min, 10], meta, &attrs(), Precondition::Absent).await.unwrap();
        for key in ["one", "two"] {
            let head = store.head("b", key).await.unwrap().unwrap();
            assert_eq!(head.attrs, attrs(), "{key}");
            let got = store.get("b", key).await.unwrap().unwrap();
            assert_eq!((got.attrs, got.etag, got.last_modified), (attrs(), head.etag, head.last_modified), "{key}");
        }
        // No attributes: nothing recorded, none read back.
        put(&store, "plain", b"x", 3).await;
        assert_eq!(store.head("b", "plain").await.unwrap().unwrap().attrs, ObjectAttrs::default());
    }

    #[tokio::test]
    async fn ranged_reads_are_pinned_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        put(&store, "k", b"0123456789", 1).await;
        let info = store.head("b", "k").await.unwrap().unwrap();
        assert!(info.etag.starts_with('"') && info.etag.ends_with('"') && info.size == 10, "{info:?}");
        let got = store.get_range("b", "k", 3..7, Some(&info.etag)).await.unwrap().unwrap();
        assert_eq!((&got.data[..], got.info), (&b"3456"[..], info.clone()));
        for beyond in [8..11, 10..11] {
            let err = store.get_range("b", "k", beyond.clone(), None).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidRange { .. }), "{beyond:?}: {err}");
        }
        put(&store, "k", b"abcdefghij", 2).await;
        let err = store.get_range("b", "k", 3..7, Some(&info.etag)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::PreconditionFailed, "{err}");
        assert!(store.get_range("b", "missing", 0..1, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_file_upload_is_byte_identical_and_published_only_under_its_condition() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path().join("store")).unwrap();
        let min = blockproxy_protocol::MIN_PART_SIZE;
        let parts = [min, min + 1, 1000];
        let (path, data) = file_of(dir.path(), "f", parts.iter().sum::<u64>() as usize);
        let meta = ObjectMeta::for_data(4, &data);
        let none = ObjectAttrs::default();
        put(&store, "k", b"old", 1).await;
        let read = store.head("b", "k").await.unwrap().unwrap().etag;
        put(&store, "k", b"newer", 2).await;
        let lost = store.put_file_if("b", "k", &path, &parts, meta, &none, Precondition::Matches(&read)).await;
        assert_eq!(lost.unwrap_err().class(), ErrorClass::PreconditionFailed);
        let absent = store.put_file_if("b", "k", &path, &parts, meta, &none, Precondition::Absent).await;
        assert_eq!(absent.unwrap_err().class(), ErrorClass::PreconditionFailed);
        assert_eq!(&store.get("b", "k").await.unwrap().unwrap().data[..], b"newer");
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "no temporary file left");

        let bad = store.put_file_if("b", "k", &path, &[min, 1000], meta, &none, Precondition::Absent).await;
        assert!(matches!(bad, Err(StoreError::InvalidParts { .. })), "{bad:?}");
        let current = store.head("b", "k").await.unwrap().unwrap().etag;
        store.put_file_if("b", "k", &path, &parts, meta, &none, Precondition::Matches(&current)).await.unwrap();
        let got = store.get("b", "k").await.unwrap().unwrap();
        assert!(got.data[..] == data[..] && got.version == 4, "the stored object differs from the file");
    }

    #[tokio::test]
    async fn listing_pages_cover_every_key_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let mut keys: Vec<String> = (0..25).map(|i| format!("p/{}/{i}", i % 3)).collect();
        for k in &keys {
            put(&store, k, b"x", 1).await;
        }
        put(&store, ".blockproxy-tombstones/p/0/0", b"", 2).await;
        keys.sort();
        let (mut listed, mut after) = (Vec::new(), None);
        loop {
            let page = store.list_page("b", "", after.as_deref(), 10).await.unwrap();
            listed.extend(page.objects);
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), keys);
        for o in &listed {
            let head = store.head("b", &o.key).await.unwrap().unwrap();
            assert_eq!((o.size, &o.etag, o.last_modified), (1, &head.etag, head.last_modified), "{}", o.key);
        }
        assert_eq!(store.list("b", "p/1/").await.unwrap().len(), keys.iter().filter(|k| k.starts_with("p/1/")).count());
    }
}
