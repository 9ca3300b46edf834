//! The embedded local-directory store (`file:///path`): `<root>/<bucket>/<key>` holds the bytes and
//! `<root>/.versions/<bucket>/<key>` the write version. For running without a cloud (quickstart,
//! tests of pure data-plane logic). Like MinIO in FS mode, a key cannot be both an object and a
//! "directory" of other objects (`a` and `a/b`); that conflict is reported as an error.

use super::{ListedObject, Store, StoreError, StoredBlock};
use async_trait::async_trait;
use bytes::Bytes;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn data_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    fn version_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(".versions").join(bucket).join(key)
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.display().to_string(), source }
}

/// Write to a temporary sibling, then rename, so a reader never sees a partial object.
async fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io_err("mkdir", parent))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("block"),
        rand::random::<u64>()
    ));
    tokio::fs::write(&tmp, data).await.map_err(io_err("write", &tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(io_err("rename", path))
}

#[async_trait]
impl Store for LocalDirStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let path = self.data_path(bucket, key);
        let data = match tokio::fs::read(&path).await {
            Ok(d) => d,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let version = self.head_version(bucket, key).await?.unwrap_or(0);
        Ok(Some(StoredBlock { data: data.into(), version }))
    }

    async fn head_version(&self, bucket: &str, key: &str) -> Result<Option<u64>, StoreError> {
        let data_path = self.data_path(bucket, key);
        match tokio::fs::metadata(&data_path).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => return Ok(None),
            Err(e) => return Err(io_err("stat", &data_path)(e)),
        }
        let path = self.version_path(bucket, key);
        match tokio::fs::read_to_string(&path).await {
            Ok(s) => Ok(Some(s.trim().parse().unwrap_or(0))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Some(0)),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    async fn put(&self, bucket: &str, key: &str, data: Bytes, version: u64) -> Result<(), StoreError> {
        // The version is written first: a crash in between leaves a newer version next to older
        // bytes, which only makes a later flush of those bytes' real version be re-sent.
        write_atomic(&self.version_path(bucket, key), version.to_string().as_bytes()).await?;
        write_atomic(&self.data_path(bucket, key), &data).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        for path in [self.data_path(bucket, key), self.version_path(bucket, key)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {}
                Err(e) => return Err(io_err("delete", &path)(e)),
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let root = self.root.join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            while let Some(entry) = rd.next_entry().await.map_err(io_err("list", &dir))? {
                let path = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue; // temporary files
                }
                let ft = entry.file_type().await.map_err(io_err("stat", &path))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&root) {
                    let key = rel.to_string_lossy().into_owned();
                    if key.starts_with(prefix) {
                        let size = entry.metadata().await.map_err(io_err("stat", &path))?.len();
                        out.push(ListedObject { key, size });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path());
        assert!(store.get("b", "p/k1").await.unwrap().is_none());
        store.put("b", "p/k1", Bytes::from_static(b"one"), 7).await.unwrap();
        store.put("b", "p/k2", Bytes::from_static(b"two!"), 8).await.unwrap();
        let got = store.get("b", "p/k1").await.unwrap().unwrap();
        assert_eq!((&got.data[..], got.version), (&b"one"[..], 7));
        let listed = store.list("b", "p/").await.unwrap();
        assert_eq!(listed.iter().map(|o| (o.key.as_str(), o.size)).collect::<Vec<_>>(), [("p/k1", 3), ("p/k2", 4)]);
        store.delete("b", "p/k1").await.unwrap();
        store.delete("b", "p/k1").await.unwrap();
        assert!(store.head_version("b", "p/k1").await.unwrap().is_none());
    }
}
