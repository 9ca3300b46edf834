//! An in-memory [`Store`] for unit tests of the logic above stores: honours preconditions like S3
//! does, and lets a test run a concurrent writer's change right after a read (a lost race).

use super::{
    ListPage, ListedObject, ObjectAttrs, ObjectInfo, ObjectMeta, Precondition, Store, StoreError, StoredBlock,
    StoredRange, check_parts, check_range, verify_fetched, without_tombstones,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

type Hook = Box<dyn Fn(&MemoryStore) + Send + Sync>;

#[derive(Clone)]
struct Object {
    data: Bytes,
    meta: ObjectMeta,
    /// Quoted, unique per write (as if every write had new content).
    etag: String,
    attrs: ObjectAttrs,
    last_modified: SystemTime,
    /// The part sizes it was uploaded in (one part for a plain PUT).
    part_sizes: Vec<u64>,
}

impl Object {
    fn info(&self) -> ObjectInfo {
        ObjectInfo {
            size: self.data.len() as u64,
            etag: self.etag.clone(),
            // Its ETags are not S3's, so it records the writer's, as GCS and Azure do.
            s3_etag: self.meta.s3_etag.map(|e| e.quoted()),
            version: self.meta.version,
            last_modified: self.last_modified,
            attrs: self.attrs.clone(),
            crc32c: Some(self.meta.crc32c),
        }
    }
}

#[derive(Default)]
pub struct MemoryStore {
    /// (bucket, key) -> object
    objects: Mutex<BTreeMap<(String, String), Object>>,
    next_etag: Mutex<u64>,
    once_after_head: Mutex<Option<Hook>>,
    always_after_head: Mutex<Option<Hook>>,
    once_after_put: Mutex<Option<Hook>>,
    /// (key, delay, hook) for the next HEAD of that key: see [`MemoryStore::slow_next_head_of`].
    slow_head: Mutex<Option<(String, Duration, Hook)>>,
    /// As MinIO does: DELETE removes the object whatever `If-Match` says.
    ignore_delete_conditions: AtomicBool,
}

impl MemoryStore {
    /// Writes an object unconditionally, as a concurrent writer would.
    pub fn force(&self, bucket: &str, key: &str, data: &[u8], version: u64) {
        let meta = ObjectMeta::for_data(version, data);
        self.insert(bucket, key, Bytes::copy_from_slice(data), meta, &ObjectAttrs::default(), vec![data.len() as u64]);
    }

    /// Runs `f` once, right after the next HEAD answers.
    pub fn after_next_head(&self, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.once_after_head.lock().unwrap() = Some(Box::new(f));
    }

    /// Runs `f` after every HEAD.
    pub fn always_after_head(&self, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.always_after_head.lock().unwrap() = Some(Box::new(f));
    }

    /// Runs `f` once, right after the next successful PUT.
    pub fn after_next_put(&self, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.once_after_put.lock().unwrap() = Some(Box::new(f));
    }

    /// The next HEAD of `key` reads the object, then `f` runs (another writer), and the read is
    /// answered `delay` later: a slow request whose answer is stale when it arrives.
    pub fn slow_next_head_of(&self, key: &str, delay: Duration, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.slow_head.lock().unwrap() = Some((key.to_owned(), delay, Box::new(f)));
    }

    /// Makes DELETE ignore its ETag condition, as MinIO does.
    pub fn ignore_delete_conditions(&self) {
        self.ignore_delete_conditions.store(true, Ordering::SeqCst);
    }

    /// Removes an object unconditionally, as a delete that ignores its condition would.
    pub fn remove(&self, bucket: &str, key: &str) {
        self.objects.lock().unwrap().remove(&(bucket.into(), key.into()));
    }

    /// The part sizes the object was uploaded in (one part for a plain PUT).
    pub fn part_sizes(&self, bucket: &str, key: &str) -> Option<Vec<u64>> {
        self.object(bucket, key).map(|o| o.part_sizes)
    }

    fn object(&self, bucket: &str, key: &str) -> Option<Object> {
        self.objects.lock().unwrap().get(&(bucket.into(), key.into())).cloned()
    }

    fn insert(&self, bucket: &str, key: &str, data: Bytes, meta: ObjectMeta, attrs: &ObjectAttrs, parts: Vec<u64>) {
        let etag = {
            let mut n = self.next_etag.lock().unwrap();
            *n += 1;
            format!("\"etag-{n}\"")
        };
        let object =
            Object { data, meta, etag, attrs: attrs.clone(), last_modified: SystemTime::now(), part_sizes: parts };
        self.objects.lock().unwrap().insert((bucket.into(), key.into()), object);
    }

    fn after_put(&self) {
        if let Some(f) = self.once_after_put.lock().unwrap().take() {
            f(self);
        }
    }

    fn check(&self, op: &'static str, bucket: &str, key: &str, cond: Precondition<'_>) -> Result<(), StoreError> {
        let holds = match (cond, self.object(bucket, key)) {
            (Precondition::Absent, None) => true,
            (Precondition::Matches(want), Some(have)) => want == have.etag,
            _ => false,
        };
        if holds { Ok(()) } else { Err(StoreError::PreconditionFailed { op, bucket: bucket.into(), key: key.into() }) }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let Some(o) = self.object(bucket, key) else { return Ok(None) };
        let crc32c = verify_fetched(bucket, key, &o.data, Some(o.meta.crc32c))?;
        Ok(Some(StoredBlock {
            data: o.data,
            version: o.meta.version,
            crc32c,
            etag: o.etag,
            s3_etag: o.meta.s3_etag.map(|e| e.quoted()),
            last_modified: o.last_modified,
            attrs: o.attrs,
        }))
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        let Some(o) = self.object(bucket, key) else { return Ok(None) };
        if let Some(etag) = if_match {
            self.check("GET", bucket, key, Precondition::Matches(etag))?;
        }
        check_range(bucket, key, &range, o.data.len() as u64)?;
        let data = o.data.slice(range.start as usize..range.end as usize);
        Ok(Some(StoredRange { data, info: o.info() }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let info = self.object(bucket, key).map(|o| o.info());
        let slow = {
            let mut slot = self.slow_head.lock().unwrap();
            if slot.as_ref().is_some_and(|(k, ..)| k == key) { slot.take() } else { None }
        };
        if let Some((_, delay, f)) = slow {
            f(self);
            tokio::time::sleep(delay).await;
        }
        if let Some(f) = self.once_after_head.lock().unwrap().take() {
            f(self);
        }
        if let Some(f) = self.always_after_head.lock().unwrap().as_ref() {
            f(self);
        }
        Ok(info)
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
        self.check("PUT", bucket, key, cond)?;
        let len = data.len() as u64;
        self.insert(bucket, key, data, meta, attrs, vec![len]);
        self.after_put();
        Ok(())
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
        let mut data = std::fs::read(path).map_err(|source| StoreError::Io {
            op: "read",
            path: path.display().to_string(),
            source,
        })?;
        data.drain(..(offset as usize).min(data.len()));
        check_parts(bucket, key, data.len() as u64, part_sizes)?;
        // Checked when the upload completes, as S3 checks a conditional CompleteMultipartUpload.
        self.check("PUT", bucket, key, cond)?;
        self.insert(bucket, key, data.into(), meta, attrs, part_sizes.to_vec());
        self.after_put();
        Ok(())
    }

    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        if self.object(bucket, key).is_none() {
            return Ok(());
        }
        if self.deletes_are_conditional() {
            self.check("DELETE", bucket, key, Precondition::Matches(etag))?;
        }
        self.remove(bucket, key);
        Ok(())
    }

    fn deletes_are_conditional(&self) -> bool {
        !self.ignore_delete_conditions.load(Ordering::SeqCst)
    }

    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        let objects = self.objects.lock().unwrap();
        let mut matching = objects
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix) && start_after.is_none_or(|a| k.as_str() > a));
        let page: Vec<ListedObject> = matching
            .by_ref()
            .take(max_keys as usize)
            .map(|((_, k), o)| ListedObject {
                key: k.clone(),
                size: o.data.len() as u64,
                etag: o.etag.clone(),
                last_modified: o.last_modified,
            })
            .collect();
        let next_start_after = match matching.next() {
            Some(_) => page.last().map(|o| o.key.clone()),
            None => None,
        };
        Ok(ListPage { objects: without_tombstones(page), next_start_after })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_cover_every_key_once_in_order_without_tombstones() {
        let store = MemoryStore::default();
        for i in 0..25 {
            store.force("b", &format!("p/{i:03}"), b"x", 1);
        }
        store.force("b", ".blockproxy-tombstones/p/000", b"", 2);
        store.force("b", "q/other", b"x", 1);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_page("b", "", after.as_deref(), 10).await.unwrap();
            seen.extend(page.objects.into_iter().map(|o| o.key));
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut want: Vec<String> = (0..25).map(|i| format!("p/{i:03}")).collect();
        want.push("q/other".into());
        assert_eq!(seen, want);
        assert_eq!(store.list("b", "p/").await.unwrap().len(), 25);
    }

    #[tokio::test]
    async fn ranged_reads_are_pinned_to_an_etag() {
        let store = MemoryStore::default();
        store.force("b", "k", b"0123456789", 1);
        let etag = store.head("b", "k").await.unwrap().unwrap().etag;
        let got = store.get_range("b", "k", 2..5, Some(&etag)).await.unwrap().unwrap();
        assert_eq!((&got.data[..], got.info.size), (&b"234"[..], 10));
        assert!(matches!(store.get_range("b", "k", 8..11, None).await, Err(StoreError::InvalidRange { .. })));
        store.force("b", "k", b"9876543210", 2);
        let stale = store.get_range("b", "k", 2..5, Some(&etag)).await.unwrap_err();
        assert!(matches!(stale, StoreError::PreconditionFailed { .. }), "{stale}");
        assert!(store.get_range("b", "missing", 0..1, None).await.unwrap().is_none());
    }
}
