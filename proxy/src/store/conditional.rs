//! The one decision of whether a version may be written to the store: read what the store holds,
//! skip when it is newer, otherwise write on condition that it is still what was read, and on a
//! lost race read again. Writeback, write-through and the client's direct-store path all use it,
//! so two writers of one key converge on the newest version in whatever order they run.

use super::{ErrorClass, ObjectAttrs, ObjectMeta, Precondition, Store, StoreError};
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Lost races in a row before giving up on this attempt (the caller retries later).
const MAX_CONDITIONAL_ATTEMPTS: u32 = 8;

/// Where DELETE ignores its `If-Match` (MinIO), a delete sends its DELETE at most a deadline
/// after its tombstone was written; later, it writes the tombstone again and reads the key again.
/// The deadline is this, or four of the store's round trips when they are slower, and the
/// tombstone records it ([`DEADLINE_METADATA`]) for the puts that watch for the delete.
const MIN_DELETE_DEADLINE: Duration = Duration::from_secs(2);

/// The tombstone's user metadata field holding its delete's deadline, in milliseconds.
const DEADLINE_METADATA: &str = "blockproxy-delete-deadline-ms";

/// How long after an older delete's tombstone was written (on the store's clock) a put watches
/// for that delete's DELETE landing on it: twice the deadline (the DELETE's sending and its
/// travel, each within the deadline) and 2 s for Last-Modified's one-second resolution.
fn late_delete_window(deadline: Duration) -> Duration {
    deadline * 2 + Duration::from_secs(2)
}

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
    put_versioned(store, bucket, key, Payload::Bytes(&data), meta, attrs).await
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
    put_versioned(store, bucket, key, Payload::File { path, offset, part_sizes }, meta, attrs).await
}

/// What a conditional write uploads.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Bytes(&'a Bytes),
    File { path: &'a Path, offset: u64, part_sizes: &'a [u64] },
}

async fn put_versioned(
    store: &dyn Store,
    bucket: &str,
    key: &str,
    payload: Payload<'_>,
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
) -> Result<Conditional, StoreError> {
    for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
        let current = store.head(bucket, key).await?;
        let cond = match &current {
            Some(s) if s.version > meta.version => return Ok(Conditional::StoreNewer { store_version: s.version }),
            // Written already (a retry after a crash or a lost answer); it may still need watching.
            Some(s) if s.version == meta.version => None,
            Some(s) => Some(Precondition::Matches(&s.etag)),
            None => {
                if let Some(t) = store.head(bucket, &tombstone_key(key)).await?
                    && t.version > meta.version
                {
                    return Ok(Conditional::StoreNewer { store_version: t.version });
                }
                Some(Precondition::Absent)
            }
        };
        if let Some(cond) = cond {
            let put = match payload {
                Payload::Bytes(data) => store.put_if(bucket, key, data.clone(), meta, attrs, cond).await,
                Payload::File { path, offset, part_sizes } => {
                    store.put_file_at_if(bucket, key, path, offset, part_sizes, meta, attrs, cond).await
                }
            };
            match put {
                Ok(()) => {}
                Err(e) if e.class() == ErrorClass::PreconditionFailed => {
                    lost_race("PUT", bucket, key, meta.version);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if store.deletes_are_conditional() || survives_older_deletes(store, bucket, key, meta.version).await? {
            return Ok(Conditional::Applied);
        }
        tracing::warn!(
            bucket,
            key,
            version = meta.version,
            "an older delete removed this write after it landed (the store ignores If-Match on DELETE); writing it again"
        );
    }
    Err(StoreError::Contended {
        op: "PUT",
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        attempts: MAX_CONDITIONAL_ATTEMPTS,
    })
}

/// After a put of `version` landed where DELETE ignores `If-Match`: whether it still stands once
/// no older delete can land on it any more. A delete that read the key's previous ETag before
/// this put would otherwise remove it (the fault test hit this on MinIO, ADR 0001). Such a delete
/// wrote its tombstone before reading the key, and sends its DELETE within the deadline that the
/// tombstone records, so once [`late_delete_window`] has passed since the tombstone was written,
/// what is still there stays.
async fn survives_older_deletes(store: &dyn Store, bucket: &str, key: &str, version: u64) -> Result<bool, StoreError> {
    let Some(tombstone) = store.head(bucket, &tombstone_key(key)).await? else { return Ok(true) };
    if tombstone.version > version {
        // A newer delete: it is right to remove this write.
        return Ok(true);
    }
    let deadline = tombstone
        .attrs
        .user_metadata
        .get(DEADLINE_METADATA)
        .and_then(|ms| ms.parse().ok())
        .map_or(MIN_DELETE_DEADLINE, Duration::from_millis);
    let stands = |o: Option<super::ObjectInfo>| o.is_some_and(|o| o.version >= version);
    let Some(ours) = store.head(bucket, key).await? else { return Ok(false) };
    let since = ours.last_modified.duration_since(tombstone.last_modified).unwrap_or_default();
    if let Some(wait) = late_delete_window(deadline).checked_sub(since) {
        tracing::debug!(bucket, key, version, ?wait, "a delete of this key is recent; watching for it to land");
        tokio::time::sleep(wait).await;
        return Ok(stands(store.head(bucket, key).await?));
    }
    Ok(stands(Some(ours)))
}

/// Writes the key's tombstone, now, with the newer of its version and `version`; returns the
/// deadline it records for this delete.
async fn write_tombstone(store: &dyn Store, bucket: &str, key: &str, version: u64) -> Result<Duration, StoreError> {
    let tombstone = tombstone_key(key);
    for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
        let asked = Instant::now();
        let current = store.head(bucket, &tombstone).await?;
        let deadline = MIN_DELETE_DEADLINE.max(asked.elapsed() * 4);
        let mut attrs = ObjectAttrs::default();
        attrs.user_metadata.insert(DEADLINE_METADATA.into(), deadline.as_millis().to_string());
        // Never lowers a newer delete's version; rewriting an existing one dates it now, which
        // the deadline below relies on.
        let newest = current.as_ref().map_or(version, |t| t.version.max(version));
        let cond = current.as_ref().map_or(Precondition::Absent, |t| Precondition::Matches(&t.etag));
        let marker = ObjectMeta::for_data(newest, b"");
        match store.put_if(bucket, &tombstone, Bytes::new(), marker, &attrs, cond).await {
            Ok(()) => return Ok(deadline),
            Err(e) if e.class() == ErrorClass::PreconditionFailed => lost_race("PUT", bucket, &tombstone, version),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended {
        op: "PUT",
        bucket: bucket.to_owned(),
        key: tombstone,
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
    for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
        // The tombstone goes first: from then on no older write can recreate the key. A newer
        // tombstone already there is fine (a newer delete); the object is still removed if older.
        let deadline = write_tombstone(store, bucket, key, version).await?;
        let written = Instant::now();
        let Some(current) = store.head(bucket, key).await? else { return Ok(Conditional::Applied) };
        if current.version > version {
            return Ok(Conditional::StoreNewer { store_version: current.version });
        }
        if !store.deletes_are_conditional() && written.elapsed() > deadline {
            // A put may have landed since, and stopped watching for this delete: read again.
            tracing::debug!(bucket, key, version, "delete slower than its deadline; writing its tombstone again");
            continue;
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

    /// MinIO ignores `If-Match` on DELETE. A delete of v6 read the key's v5 ETag; a put of v7 then
    /// replaced v5; the delete's DELETE lands after that put. The put must still stand.
    /// (Real time: the put watches for [`late_delete_window`].)
    #[tokio::test]
    async fn a_delete_landing_after_a_newer_put_does_not_remove_it_where_deletes_ignore_if_match() {
        let store = MemoryStore::default();
        store.ignore_delete_conditions();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"v5"), meta(5, b"v5"), &ObjectAttrs::default())
            .await
            .unwrap();
        store.force("b", &tombstone_key("k"), b"", 6);
        store.after_next_put(|s| s.remove("b", "k"));
        let put =
            put_unless_newer(&store, "b", "k", Bytes::from_static(b"v7"), meta(7, b"v7"), &ObjectAttrs::default())
                .await
                .unwrap();
        assert_eq!(put, Conditional::Applied);
        assert_eq!(stored(&store).await, Some((b"v7".to_vec(), 7)), "the late delete removed an acknowledged write");
    }

    /// The other side of the same race: a delete whose read of the key answers after its deadline
    /// does not act on that read (a newer put may have landed and stopped watching for it).
    #[tokio::test]
    async fn a_delete_slower_than_its_deadline_reads_the_key_again() {
        let store = MemoryStore::default();
        store.ignore_delete_conditions();
        put_unless_newer(&store, "b", "k", Bytes::from_static(b"v5"), meta(5, b"v5"), &ObjectAttrs::default())
            .await
            .unwrap();
        // The delete's HEAD reads v5; v7 is written meanwhile; the answer arrives late.
        store.slow_next_head_of("k", MIN_DELETE_DEADLINE + Duration::from_millis(500), |s| s.force("b", "k", b"v7", 7));
        assert_eq!(
            delete_unless_newer(&store, "b", "k", 6).await.unwrap(),
            Conditional::StoreNewer { store_version: 7 }
        );
        assert_eq!(stored(&store).await, Some((b"v7".to_vec(), 7)));
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
