//! Attributes of clean store objects, as the store's HEAD answered them, trusted for the metadata
//! TTL: a HEAD at the home, or a block miss, of an object not cached here costs at most one store
//! HEAD per TTL. Bounded: past [`MAX_ENTRIES`] the oldest answers are dropped.

use crate::cache::BlockId;
use crate::store::ObjectInfo;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct MetaCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), (ObjectInfo, Instant, u64)>,
    /// Insertion order, for the bound.
    order: BTreeMap<u64, (String, String)>,
    tick: u64,
}

fn key(id: &BlockId) -> (String, String) {
    (id.volume.to_string(), id.key.to_string())
}

impl MetaCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object's attributes if they were fetched less than `ttl` ago.
    pub fn get(&self, id: &BlockId, ttl: Duration) -> Option<ObjectInfo> {
        let inner = self.lock();
        inner.entries.get(&key(id)).filter(|(_, at, _)| at.elapsed() < ttl).map(|(i, _, _)| i.clone())
    }

    pub fn put(&self, id: &BlockId, info: ObjectInfo) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let k = key(id);
        if let Some((_, _, old)) = inner.entries.insert(k.clone(), (info, Instant::now(), tick)) {
            inner.order.remove(&old);
        }
        inner.order.insert(tick, k);
        while inner.entries.len() > MAX_ENTRIES {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            inner.entries.remove(&oldest);
        }
    }

    /// Drops what is known of an object (it changed, or this proxy wrote it).
    pub fn forget(&self, id: &BlockId) {
        let mut inner = self.lock();
        if let Some((_, _, tick)) = inner.entries.remove(&key(id)) {
            inner.order.remove(&tick);
        }
    }
}
