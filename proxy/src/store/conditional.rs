//! The one decision of whether a version may be written to the store: read what the store holds,
//! skip when it is newer, otherwise write on condition that it is still what was read, and on a
//! lost race read again. Writeback, write-through and the client's direct-store path all use it,
//! so two writers of one key converge on the newest version in whatever order they run.

use super::{ErrorClass, ObjectAttrs, ObjectMeta, Precondition, Store, StoreError};
use bytes::Bytes;
use std::path::Path;

/// Lost races in a row before giving up on this attempt (the caller retries later).
const MAX_CONDITIONAL_ATTEMPTS: u32 = 8;

/// Where a delete leaves its version (an empty object at `.blockproxy-tombstones/{key}`, outside
/// every volume's prefix). Without it, an older write of the key that reaches the store after the
/// delete (held dirty by a proxy that was cut off while the delete went elsewhere) would find the
/// key absent and bring it back; with it, that write is recognised as older and skipped.
pub const TOMBSTONE_PREFIX: &str = blockproxy_protocol::RESERVED_KEY_PREFIX;

fn tombstone_key(key: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{key}")
}

/// Whether a listed store key is a delete's tombstone rather than an object.
pub fn is_tombstone_key(key: &str) -> bool {
    key.starts_with(TOMBSTONE_PREFIX)
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// The store now holds this version (or, for a delete, no object that is older).
    Applied,
    /// The store holds a newer version; nothing was written.
    StoreNewer { store_version: u64 },
}

fn lost_race(op: &str, bucket: &str, key: &str, version: u64) {
    tracing::debug!(op, bucket, key, version, "conditional store write lost a race with another writer; reading again");
}

/// Writes `data` as version `meta.version` unless the store holds a newer version. Holding the
/// same version counts as applied (a retry after a crash or a lost answer).
pub async fn put_unless_newer(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    data: Bytes,
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
) -> Result<Conditional, StoreError> {
    put_versioned(store, bucket, key, Payload::Bytes(&data), meta, attrs, true).await
}

/// [`put_unless_newer`] for an object held in a file, uploaded in parts of `part_sizes`
/// ([`Store::put_file_if`]).
pub async fn put_file_unless_newer(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    path: &Path,
    part_sizes: &[u64],
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
) -> Result<Conditional, StoreError> {
    put_file_at_unless_newer(store, bucket, key, path, 0, part_sizes, meta, attrs).await
}

/// [`put_file_unless_newer`] of the file's bytes from `offset` on ([`Store::put_file_at_if`]).
#[allow(clippy::too_many_arguments)]
pub async fn put_file_at_unless_newer(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    path: &Path,
    offset: u64,
    part_sizes: &[u64],
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
) -> Result<Conditional, StoreError> {
    put_versioned(store, bucket, key, Payload::File { path, offset, part_sizes }, meta, attrs, true).await
}

/// What a conditional write uploads.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Bytes(&'a Bytes),
    File { path: &'a Path, offset: u64, part_sizes: &'a [u64] },
}

/// `tombstones`: whether an absent key's tombstone is consulted (not for tombstones themselves).
async fn put_versioned(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    payload: Payload<'_>,
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
    tombstones: bool,
) -> Result<Conditional, StoreError> {
    for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
        let current = store.head(bucket, key).await?;
        let cond = match &current {
            Some(s) if s.version > meta.version => return Ok(Conditional::StoreNewer { store_version: s.version }),
            Some(s) if s.version == meta.version => return Ok(Conditional::Applied),
            Some(s) => Precondition::Matches(&s.etag),
            None => {
                if tombstones
                    && let Some(t) = store.head(bucket, &tombstone_key(key)).await?
                    && t.version > meta.version
                {
                    return Ok(Conditional::StoreNewer { store_version: t.version });
                }
                Precondition::Absent
            }
        };
        let put = match payload {
            Payload::Bytes(data) => store.put_if(bucket, key, data.clone(), meta, attrs, cond).await,
            Payload::File { path, offset, part_sizes } => {
                store.put_file_at_if(bucket, key, path, offset, part_sizes, meta, attrs, cond).await
            }
        };
        match put {
            Ok(()) => return Ok(Conditional::Applied),
            Err(e) if e.class() == ErrorClass::PreconditionFailed => lost_race("PUT", bucket, key, meta.version),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended {
        op: "PUT",
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        attempts: MAX_CONDITIONAL_ATTEMPTS,
    })
}

/// Deletes the object unless the store holds a version newer than `version`. The delete names the
/// ETag that was read; see [`Store::delete_if`] for stores that ignore it on DELETE.
pub async fn delete_unless_newer(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    version: u64,
) -> Result<Conditional, StoreError> {
    // The tombstone goes first: from then on no older write can recreate the key. A newer
    // tombstone already there is fine (a newer delete); the object is still removed if older.
    let marker = ObjectMeta::for_data(version, b"");
    let empty = Bytes::new();
    put_versioned(store, bucket, &tombstone_key(key), Payload::Bytes(&empty), marker, &ObjectAttrs::default(), false)
        .await?;
    for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
        let Some(current) = store.head(bucket, key).await? else { return Ok(Conditional::Applied) };
        if current.version > version {
            return Ok(Conditional::StoreNewer { store_version: current.version });
        }
        match store.delete_if(bucket, key, &current.etag).await {
            Ok(()) => return Ok(Conditional::Applied),
            Err(e) if e.class() == ErrorClass::PreconditionFailed => lost_race("DELETE", bucket, key, version),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended {
        op: "DELETE",
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        attempts: MAX_CONDITIONAL_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// A file of `len` bytes (the same byte repeated) in a temporary folder.
    fn file_of(dir: &tempfile::TempDir, name: &str, len: usize, byte: u8) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, vec![byte; len]).unwrap();
        path
    }

    fn meta(version: u64, data: &[u8]) -> ObjectMeta {
        ObjectMeta::for_data(version, data)
    }

    async fn stored(store: &MemoryStore) -> Option<(Vec<u8>, u64)> {
        store.get("b", "k").await.unwrap().map(|b| (b.data.to_vec(), b.version))
    }

    #[tokio::test]
    async fn the_newer_version_wins_in_either_order() {
        for order in [[1u64, 2], [2, 1]] {
            let store = MemoryStore::default();
            for v in order {
                let data = Bytes::from(format!("v{v}"));
                put_unless_newer(&store, "b", "k", data.clone(), meta(v, &data), &ObjectAttrs::default())
                    .await
                    .unwrap();
            }
            assert_eq!(stored(&store).await, Some((b"v2".to_vec(), 2)), "order {order:?}");
        }
    }

    #[tokio::test]
    async fn an_older_write_reports_the_newer_store_version() {
        let store = MemoryStore::default();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"new"), meta(5, b"new"), &ObjectAttrs::default())
            .await
            .unwrap();
        let got =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"old"), meta(3, b"old"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(got, Conditional::StoreNewer { store_version: 5 });
        let again =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"new"), meta(5, b"new"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(again, Conditional::Applied, "the same version again is idempotent");
    }

    #[tokio::test]
    async fn a_write_landing_between_read_and_write_is_not_overwritten_by_an_older_one() {
        let store = MemoryStore::default();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"v1"), meta(1, b"v1"), &ObjectAttrs::default())
            .await
            .unwrap();
        // Another writer installs version 9 right after our HEAD: our If-Match must fail, and the
        // re-read must see 9 and give up.
        store.after_next_head(|s| s.force("b", "k", b"v9", 9));
        let got =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v4"), meta(4, b"v4"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(got, Conditional::StoreNewer { store_version: 9 });
        assert_eq!(stored(&store).await, Some((b"v9".to_vec(), 9)));
    }

    #[tokio::test]
    async fn a_racing_first_write_is_not_overwritten_by_an_older_one() {
        let store = MemoryStore::default();
        store.after_next_head(|s| s.force("b", "k", b"v9", 9));
        let got =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v4"), meta(4, b"v4"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(got, Conditional::StoreNewer { store_version: 9 });
    }

    #[tokio::test]
    async fn deletes_never_remove_a_newer_version() {
        let store = MemoryStore::default();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"v7"), meta(7, b"v7"), &ObjectAttrs::default())
            .await
            .unwrap();
        assert_eq!(
            delete_unless_newer(&store, "b", "k", 6).await.unwrap(),
            Conditional::StoreNewer { store_version: 7 }
        );
        assert!(stored(&store).await.is_some());
        store.after_next_head(|s| s.force("b", "k", b"v9", 9));
        assert_eq!(
            delete_unless_newer(&store, "b", "k", 8).await.unwrap(),
            Conditional::StoreNewer { store_version: 9 }
        );
        assert_eq!(delete_unless_newer(&store, "b", "k", 10).await.unwrap(), Conditional::Applied);
        assert!(stored(&store).await.is_none());
        assert_eq!(delete_unless_newer(&store, "b", "k", 11).await.unwrap(), Conditional::Applied, "already gone");
    }

    #[tokio::test]
    async fn a_write_older_than_a_delete_never_brings_the_key_back() {
        // A proxy cut off while it held v6 dirty flushes it after v8's delete reached the store.
        let store = MemoryStore::default();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"v5"), meta(5, b"v5"), &ObjectAttrs::default())
            .await
            .unwrap();
        assert_eq!(delete_unless_newer(&store, "b", "k", 8).await.unwrap(), Conditional::Applied);
        let late =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v6"), meta(6, b"v6"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(late, Conditional::StoreNewer { store_version: 8 });
        assert!(stored(&store).await.is_none(), "the deleted key came back");
        // A write newer than the delete creates the key again; an older delete keeps the newer tombstone.
        let newer =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v9"), meta(9, b"v9"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(newer, Conditional::Applied);
        assert_eq!(stored(&store).await, Some((b"v9".to_vec(), 9)));
        assert_eq!(
            delete_unless_newer(&store, "b", "k", 7).await.unwrap(),
            Conditional::StoreNewer { store_version: 9 }
        );
        assert!(is_tombstone_key(&tombstone_key("k")) && !is_tombstone_key("k"));
    }

    #[tokio::test]
    async fn endless_contention_is_a_transient_error() {
        let store = MemoryStore::default();
        // Another writer replaces the (older) object after every one of our reads.
        store.always_after_head(|s| s.force("b", "k", b"x", 3));
        let err =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v5"), meta(5, b"v5"), &ObjectAttrs::default())
                .await
                .unwrap_err();
        assert!(matches!(err, StoreError::Contended { .. }) && err.class() == ErrorClass::Transient, "{err}");
    }

    #[tokio::test]
    async fn file_uploads_follow_the_same_ordering() {
        let dir = tempfile::tempdir().unwrap();
        let min = blockproxy_protocol::MIN_PART_SIZE as usize;
        let (new, old) = (file_of(&dir, "new", min + 3, b'n'), file_of(&dir, "old", min + 3, b'o'));
        let parts = [min as u64, 3];
        let attrs = ObjectAttrs { content_type: Some("text/plain".into()), ..Default::default() };
        let store = MemoryStore::default();
        let put = |path: std::path::PathBuf, version: u64| {
            let meta = ObjectMeta::for_data(version, &std::fs::read(&path).unwrap());
            let (store, attrs) = (&store, &attrs);
            async move { put_file_unless_newer(store, "b", "k", &path, &parts, meta, attrs).await.unwrap() }
        };
        assert_eq!(put(new.clone(), 5).await, Conditional::Applied);
        assert_eq!(put(old.clone(), 4).await, Conditional::StoreNewer { store_version: 5 });
        // A newer writer lands between our read and our upload: the upload fails and is skipped.
        store.after_next_head(|s| s.force("b", "k", b"v9", 9));
        assert_eq!(put(old, 6).await, Conditional::StoreNewer { store_version: 9 });
        assert_eq!(stored(&store).await, Some((b"v9".to_vec(), 9)));
        assert_eq!(put(new, 10).await, Conditional::Applied);
        let got = store.get("b", "k").await.unwrap().unwrap();
        assert_eq!((got.data.len(), got.version, got.attrs), (min + 3, 10, attrs.clone()));
        assert_eq!(store.part_sizes("b", "k"), Some(parts.to_vec()));
    }
}
