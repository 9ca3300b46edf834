//! Multipart staging on the object's home proxy (ADR 0004): each upload is a folder under
//! `uploads/` of the cache folder, on the same disk as `dirty/`, so completing it is a local copy
//! and one rename.
//!
//! ```text
//! uploads/<id>/upload.json        volume, key, attributes, creation time (the upload exists)
//! uploads/<id>/part-<n>.<rand>    a part's bytes, written whole before its record names it
//! uploads/<id>/part-<n>.json      the part's record: data file, size, MD5, CRC32C (its commit)
//! uploads/<id>/completed.json     the answer of a completed upload (a retried Complete repeats it)
//! ```
//!
//! Records are written to a temporary name and renamed, so a crash leaves a part either recorded
//! whole or not at all. Nothing here is ever visible as an object: only the cache's commit (the
//! rename of the assembled file into `dirty/`) is. Upload ids are 32 hex digits, checked before
//! they become a path.

use blockproxy_protocol::{ObjectAttrs, UploadCompleted};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DIR: &str = "uploads";
const UPLOAD_FILE: &str = "upload.json";
const COMPLETED_FILE: &str = "completed.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadMeta {
    pub volume: String,
    pub key: String,
    #[serde(default)]
    pub attrs: ObjectAttrs,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartRecord {
    pub part_number: u32,
    /// The data file's name inside the upload folder.
    pub file: String,
    pub size: u64,
    /// Hex MD5 of the part (its S3 ETag, unquoted).
    pub md5: String,
    pub crc32c: u32,
}

/// The staging area. Blocking I/O: call from `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Staging {
    root: PathBuf,
    sync: bool,
}

/// Whether `id` is an upload id this proxy could have made (and so a safe path component).
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Staging {
    pub fn open(cache_root: &Path, sync: bool) -> io::Result<Self> {
        let root = cache_root.join(DIR);
        std::fs::create_dir_all(&root)?;
        Ok(Self { root, sync })
    }

    fn dir(&self, id: &str) -> io::Result<PathBuf> {
        if !valid_upload_id(id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such upload"));
        }
        Ok(self.root.join(id))
    }

    /// Writes `bytes` to `dir/name` atomically (temporary file, rename; fsync with `sync`).
    fn write_record(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = dir.join(format!(".{name}.{:016x}", rand::random::<u64>()));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if self.sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(name))?;
        if self.sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn create(&self, volume: &str, key: &str, attrs: &ObjectAttrs) -> io::Result<String> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let dir = self.root.join(&id);
        std::fs::create_dir(&dir)?;
        let meta =
            UploadMeta { volume: volume.to_owned(), key: key.to_owned(), attrs: attrs.clone(), created_ms: now_ms() };
        self.write_record(&dir, UPLOAD_FILE, &serde_json::to_vec(&meta)?)?;
        Ok(id)
    }

    /// The upload's record, or `None` when there is no such upload.
    pub fn meta(&self, id: &str) -> io::Result<Option<UploadMeta>> {
        let Ok(dir) = self.dir(id) else { return Ok(None) };
        match std::fs::read(dir.join(UPLOAD_FILE)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A fresh data file for part `n` of upload `id` (its name, and its path).
    pub fn part_file(&self, id: &str, n: u32) -> io::Result<(String, PathBuf)> {
        let name = format!("part-{n:05}.{:016x}", rand::random::<u64>());
        let path = self.dir(id)?.join(&name);
        Ok((name, path))
    }

    /// Records a part whose data file is complete (and synced by the writer with `sync`).
    /// Returns the size of the part it replaced, if any, whose data file is removed.
    pub fn record_part(&self, id: &str, rec: &PartRecord) -> io::Result<Option<u64>> {
        let dir = self.dir(id)?;
        let name = format!("part-{:05}.json", rec.part_number);
        let old = self.part(id, rec.part_number)?;
        self.write_record(&dir, &name, &serde_json::to_vec(rec)?)?;
        Ok(old.map(|o| {
            let _ = std::fs::remove_file(dir.join(&o.file));
            o.size
        }))
    }

    pub fn part(&self, id: &str, n: u32) -> io::Result<Option<PartRecord>> {
        let dir = self.dir(id)?;
        match std::fs::read(dir.join(format!("part-{n:05}.json"))) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every recorded part, by part number.
    pub fn parts(&self, id: &str) -> io::Result<Vec<PartRecord>> {
        let dir = self.dir(id)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("part-").and_then(|r| r.strip_suffix(".json"))
                && let Ok(n) = n.parse()
                && let Some(rec) = self.part(id, n)?
            {
                out.push(rec);
            }
        }
        out.sort_by_key(|p| p.part_number);
        Ok(out)
    }

    pub fn data_path(&self, id: &str, rec: &PartRecord) -> io::Result<PathBuf> {
        Ok(self.dir(id)?.join(&rec.file))
    }

    /// The answer of a completed upload, if it completed.
    pub fn completed(&self, id: &str) -> io::Result<Option<UploadCompleted>> {
        let Ok(dir) = self.dir(id) else { return Ok(None) };
        match std::fs::read(dir.join(COMPLETED_FILE)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the answer of a committed upload and removes its parts (the folder stays, small,
    /// until expiry, so a retried Complete gets the same answer). Returns the bytes freed.
    pub fn mark_completed(&self, id: &str, done: &UploadCompleted) -> io::Result<u64> {
        let dir = self.dir(id)?;
        self.write_record(&dir, COMPLETED_FILE, &serde_json::to_vec(done)?)?;
        self.remove_data(&dir)
    }

    /// Removes an upload (abort, expiry). Returns the staged bytes freed.
    pub fn remove(&self, id: &str) -> io::Result<u64> {
        let dir = self.dir(id)?;
        let freed = self.remove_data(&dir)?;
        std::fs::remove_dir_all(&dir)?;
        Ok(freed)
    }

    /// Removes every part data file of an upload folder (records stay): the staged bytes freed.
    fn remove_data(&self, dir: &Path) -> io::Result<u64> {
        let mut freed = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("part-") && !name.ends_with(".json") {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(freed)
    }

    /// Writes the object's file for `parts` of upload `id` to `out` (the cache's `tmp/`): the
    /// header, then each part's bytes copied on the disk (`copy_file_range` where the kernel has
    /// it, never through memory whole), fsynced with `sync`. Returns the file's size. A failure
    /// removes what it wrote.
    pub fn assemble(&self, id: &str, parts: &[PartRecord], header: &super::BlockHeader, out: &Path) -> io::Result<u64> {
        let written = (|| {
            let mut f = File::create(out)?;
            let encoded = header.encode();
            f.write_all(&encoded)?;
            let mut size = encoded.len() as u64;
            for p in parts {
                let mut src = File::open(self.data_path(id, p)?)?;
                let copied = io::copy(&mut src, &mut f)?;
                if copied != p.size {
                    return Err(io::Error::other(format!(
                        "part {} has {copied} bytes, recorded {}",
                        p.part_number, p.size
                    )));
                }
                size += copied;
            }
            if self.sync {
                f.sync_all()?;
            }
            Ok(size)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(out);
        }
        written
    }

    /// Every upload folder: id, creation time (from its record, else the folder's mtime), and the
    /// bytes of part data it holds.
    pub fn list(&self) -> io::Result<Vec<(String, SystemTime, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if !valid_upload_id(&id) {
                continue;
            }
            let created = match self.meta(&id) {
                Ok(Some(m)) => UNIX_EPOCH + Duration::from_millis(m.created_ms),
                _ => entry.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH),
            };
            let mut bytes = 0;
            for f in std::fs::read_dir(entry.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("part-") && !name.ends_with(".json") {
                    bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
            out.push((id, created, bytes));
        }
        Ok(out)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_recorded_replaced_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let st = Staging::open(dir.path(), false).unwrap();
        let id = st.create("v", "a/b", &ObjectAttrs::default()).unwrap();
        assert!(valid_upload_id(&id));
        assert_eq!(st.meta(&id).unwrap().unwrap().key, "a/b");
        let write = |n: u32, data: &[u8]| {
            let (file, path) = st.part_file(&id, n).unwrap();
            std::fs::write(&path, data).unwrap();
            let rec = PartRecord { part_number: n, file, size: data.len() as u64, md5: String::new(), crc32c: 0 };
            st.record_part(&id, &rec).unwrap()
        };
        assert_eq!(write(2, b"bb"), None);
        assert_eq!(write(1, b"a"), None);
        assert_eq!(write(2, b"BBB"), Some(2), "a replaced part gives its bytes back");
        let parts = st.parts(&id).unwrap();
        assert_eq!(parts.iter().map(|p| (p.part_number, p.size)).collect::<Vec<_>>(), [(1, 1), (2, 3)]);
        assert_eq!(st.list().unwrap().iter().map(|l| l.2).sum::<u64>(), 4, "only live part data counts");
        assert_eq!(st.remove(&id).unwrap(), 4);
        assert!(st.meta(&id).unwrap().is_none());
    }

    #[test]
    fn ids_that_are_not_ours_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let st = Staging::open(dir.path(), false).unwrap();
        for bad in ["../../etc", "", "ABCDEF0123456789ABCDEF0123456789", "0123456789abcdef0123456789abcde/"] {
            assert!(st.meta(bad).unwrap().is_none(), "{bad}");
            assert!(st.part_file(bad, 1).is_err(), "{bad}");
        }
    }
}
