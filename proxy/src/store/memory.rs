//! An in-memory [`Store`] for unit tests of the logic above stores: honours preconditions like S3
//! does, and lets a test run a concurrent writer's change right after a read (a lost race).

use super::{ListedObject, ObjectMeta, ObjectState, Precondition, Store, StoreError, StoredBlock, verify_fetched};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;

type Hook = Box<dyn Fn(&MemoryStore) + Send + Sync>;
/// (bucket, key) -> (bytes, metadata, ETag)
type Objects = BTreeMap<(String, String), (Bytes, ObjectMeta, String)>;

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<Objects>,
    next_etag: Mutex<u64>,
    once_after_head: Mutex<Option<Hook>>,
    always_after_head: Mutex<Option<Hook>>,
}

impl MemoryStore {
    /// Writes an object unconditionally, as a concurrent writer would.
    pub fn force(&self, bucket: &str, key: &str, data: &[u8], version: u64) {
        let etag = self.new_etag();
        let meta = ObjectMeta::for_data(version, data);
        self.objects.lock().unwrap().insert((bucket.into(), key.into()), (Bytes::copy_from_slice(data), meta, etag));
    }

    /// Runs `f` once, right after the next HEAD answers.
    pub fn after_next_head(&self, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.once_after_head.lock().unwrap() = Some(Box::new(f));
    }

    /// Runs `f` after every HEAD.
    pub fn always_after_head(&self, f: impl Fn(&MemoryStore) + Send + Sync + 'static) {
        *self.always_after_head.lock().unwrap() = Some(Box::new(f));
    }

    fn new_etag(&self) -> String {
        let mut n = self.next_etag.lock().unwrap();
        *n += 1;
        format!("\"etag-{n}\"")
    }

    fn current_etag(&self, bucket: &str, key: &str) -> Option<String> {
        self.objects.lock().unwrap().get(&(bucket.into(), key.into())).map(|o| o.2.clone())
    }

    fn check(&self, op: &'static str, bucket: &str, key: &str, cond: Precondition<'_>) -> Result<(), StoreError> {
        let holds = match (cond, self.current_etag(bucket, key)) {
            (Precondition::Absent, None) => true,
            (Precondition::Matches(want), Some(have)) => want == have,
            _ => false,
        };
        if holds { Ok(()) } else { Err(StoreError::PreconditionFailed { op, bucket: bucket.into(), key: key.into() }) }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let Some((data, meta, _)) = self.objects.lock().unwrap().get(&(bucket.into(), key.into())).cloned() else {
            return Ok(None);
        };
        let crc32c = verify_fetched(bucket, key, &data, Some(meta.crc32c))?;
        Ok(Some(StoredBlock { data, version: meta.version, crc32c }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectState>, StoreError> {
        let state = self
            .objects
            .lock()
            .unwrap()
            .get(&(bucket.into(), key.into()))
            .map(|(_, meta, etag)| ObjectState { version: meta.version, etag: etag.clone() });
        if let Some(f) = self.once_after_head.lock().unwrap().take() {
            f(self);
        }
        if let Some(f) = self.always_after_head.lock().unwrap().as_ref() {
            f(self);
        }
        Ok(state)
    }

    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.check("PUT", bucket, key, cond)?;
        let etag = self.new_etag();
        self.objects.lock().unwrap().insert((bucket.into(), key.into()), (data, meta, etag));
        Ok(())
    }

    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        if self.current_etag(bucket, key).is_none() {
            return Ok(());
        }
        self.check("DELETE", bucket, key, Precondition::Matches(etag))?;
        self.objects.lock().unwrap().remove(&(bucket.into(), key.into()));
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), (d, _, _))| ListedObject { key: k.clone(), size: d.len() as u64 })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
