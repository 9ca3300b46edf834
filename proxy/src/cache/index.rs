//! The in-memory index of cached blocks: state, accounting against the quota, and LRU order of
//! clean blocks. Pure data structure; the caller does the file I/O it asks for. An entry may hold
//! its block's open file for hits ([`super::held`]), which closes when the entry goes.

use super::file_sums::FileSumsCell;
use super::held::{HeldFile, HeldOrder};
use blockproxy_protocol::{BlockKey, VolumeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub volume: VolumeId,
    pub key: BlockKey,
    /// `None` for the object itself (what writes, flushes and home reads use); `Some` for one
    /// striped block of a clean store object, cached pinned to the store's ETag (ADR 0004).
    pub stripe: Option<Stripe>,
}

/// Block `index` of an object cut at `block_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stripe {
    pub index: u64,
    pub block_size: u64,
}

impl BlockId {
    pub fn object(volume: VolumeId, key: BlockKey) -> Self {
        Self { volume, key, stripe: None }
    }
}

#[cfg(test)]
impl BlockId {
    /// A block of volume `v`, for tests.
    pub(crate) fn of_test_volume(key: &str) -> Self {
        Self::object(VolumeId::parse("v").unwrap(), BlockKey::parse(key).unwrap())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Clean,
    /// Acknowledged, not yet in the store. `tombstone` marks a pending delete.
    Dirty {
        since: Instant,
        tombstone: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// File name inside the area (see `disk::Layout`).
    pub name: String,
    /// Bytes the file takes on disk (header + data).
    pub file_size: u64,
    pub data_len: u64,
    pub version: u64,
    pub state: EntryState,
    /// For a clean entry: when the store was last known to hold this version (fetched, flushed or
    /// revalidated). `None` when unknown, as for entries found on disk at start.
    pub validated: Option<Instant>,
    /// The version's S3 ETag (unquoted), as in the file's header; empty when unknown.
    pub etag: String,
    /// For a clean entry: the store object's own ETag (unquoted) as last seen, which block reads
    /// pin to. Unknown after a flush or a restart until the store is asked (one HEAD).
    pub store_etag: Option<String>,
    /// Tells this file apart from any later one of the same block (set by [`Index::insert`]).
    pub serial: u64,
    /// A read in this process verified the file's CRC32C (clean blocks only): later hits serve
    /// it unverified (ADR 0001, item 6).
    pub checked: bool,
    /// This file, open, for hits ([`Index::hold`]); goes with the entry.
    pub held: Option<Arc<HeldFile>>,
    /// The CRC32Cs of this clean file's blocks and pieces, once a read of a part of it needed
    /// them ([`Index::file_sums`]); goes with the entry, so a later file of the block has its own.
    pub file_sums: Option<Arc<FileSumsCell>>,
    /// When the entry was last used (inserted or hit).
    lru_tick: u64,
    /// The tick a clean entry is filed under in the LRU order: its last use when filed, which a
    /// hit leaves behind (see [`Index::evict`]).
    lru_slot: u64,
}

impl Entry {
    pub fn new(name: String, file_size: u64, data_len: u64, version: u64, state: EntryState) -> Self {
        Self {
            name,
            file_size,
            data_len,
            version,
            state,
            validated: None,
            etag: String::new(),
            store_etag: None,
            serial: 0,
            checked: false,
            held: None,
            file_sums: None,
            lru_tick: 0,
            lru_slot: 0,
        }
    }

    pub fn with_etag(mut self, etag: impl Into<String>) -> Self {
        self.etag = etag.into();
        self
    }

    /// The same entry, known to match the store as of `at`.
    pub fn validated_at(mut self, at: Instant) -> Self {
        self.validated = Some(at);
        self
    }

    pub fn is_dirty(&self) -> bool {
        matches!(self.state, EntryState::Dirty { .. })
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self.state, EntryState::Dirty { tombstone: true, .. })
    }
}

/// Why space could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// Dirty bytes would exceed the quota: back-pressure until writeback catches up.
    DirtyQuota,
    /// Not enough evictable clean bytes.
    NoSpace,
}

#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<BlockId, Entry>,
    lru: BTreeMap<u64, BlockId>,
    tick: u64,
    quota: u64,
    used_bytes: u64,
    reserved_bytes: u64,
    dirty_bytes: u64,
    dirty_blocks: u64,
    /// Parts of unfinished multipart uploads on disk: never evictable, held to the quota like
    /// dirty data.
    staged_bytes: u64,
    held: HeldOrder,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub quota: u64,
    pub used_bytes: u64,
    pub dirty_bytes: u64,
    pub dirty_blocks: u64,
    pub blocks: u64,
    pub staged_bytes: u64,
    /// Block files held open for hits.
    pub open_files: u64,
}

impl Index {
    /// The highest version per volume among the entries.
    pub fn max_versions(&self) -> HashMap<VolumeId, u64> {
        let mut out: HashMap<VolumeId, u64> = HashMap::new();
        for (id, e) in &self.entries {
            let v = out.entry(id.volume.clone()).or_default();
            *v = (*v).max(e.version);
        }
        out
    }

    pub fn new(quota: u64) -> Self {
        Self { quota, ..Default::default() }
    }

    /// Keeps `file` open with entry `serial` of `id`, if that is still the entry; the entry that
    /// has held its file longest lets go of it when more than the capacity would. Returns
    /// whether the file is held.
    pub fn hold(&mut self, id: &BlockId, serial: u64, file: Arc<HeldFile>) -> bool {
        let cap = self.held.capacity;
        let Some(e) = self.entries.get_mut(id).filter(|e| e.serial == serial && cap > 0) else { return false };
        if e.held.is_some() {
            return true;
        }
        e.held = Some(file);
        self.held.count += 1;
        self.held.order.push_back((id.clone(), serial));
        self.let_go_over(cap);
        self.entries.get(id).is_some_and(|e| e.held.is_some())
    }

    /// Lets at most `capacity` entries hold their open file (0: none) from now on.
    pub fn set_held_files(&mut self, capacity: usize) {
        self.held.capacity = capacity;
        self.let_go_over(capacity);
    }

    /// The entries that have held their file longest let go of it until at most `cap` hold one.
    /// Items of entries replaced or removed meanwhile are dropped on the way: the order stays
    /// within twice the capacity.
    fn let_go_over(&mut self, cap: usize) {
        while self.held.count > cap || self.held.order.len() > 2 * cap {
            let Some((old, old_serial)) = self.held.order.pop_front() else { break };
            if let Some(e) = self.entries.get_mut(&old).filter(|e| e.serial == old_serial)
                && e.held.take().is_some()
            {
                self.held.count -= 1;
            }
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            quota: self.quota,
            used_bytes: self.used_bytes,
            dirty_bytes: self.dirty_bytes,
            dirty_blocks: self.dirty_blocks,
            blocks: self.entries.len() as u64,
            staged_bytes: self.staged_bytes,
            open_files: self.held.count as u64,
        }
    }

    /// Looks a block up and marks it recently used.
    pub fn touch(&mut self, id: &BlockId) -> Option<&Entry> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(id)?;
        // Only the entry records the use: eviction files it anew when it comes to it, so that a
        // hit costs no change to the LRU order.
        entry.lru_tick = tick;
        Some(entry)
    }

    pub fn get(&self, id: &BlockId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Records that the clean file `serial` of `id` was verified; a later file of the block is
    /// not.
    pub fn mark_checked(&mut self, id: &BlockId, serial: u64) {
        if let Some(e) = self.entries.get_mut(id)
            && e.serial == serial
            && !e.is_dirty()
        {
            e.checked = true;
        }
    }

    /// The cell for the part sums of the clean file `serial` of `id`, made on first use; `None`
    /// when that file is no longer the entry's (or the block is dirty).
    pub fn file_sums(&mut self, id: &BlockId, serial: u64) -> Option<Arc<FileSumsCell>> {
        let e = self.entries.get_mut(id).filter(|e| e.serial == serial && !e.is_dirty())?;
        Some(Arc::clone(e.file_sums.get_or_insert_with(Default::default)))
    }

    /// Reserves `size` bytes for a new file, evicting least-recently-used clean blocks as needed.
    /// Returns the evicted blocks, whose files the caller deletes. Dirty blocks are never evicted.
    pub fn reserve(&mut self, size: u64, dirty: bool) -> Result<Vec<(BlockId, Entry)>, AdmitError> {
        if dirty && self.dirty_bytes + self.staged_bytes + size > self.quota {
            return Err(AdmitError::DirtyQuota);
        }
        let needed = (self.used_bytes + self.staged_bytes + self.reserved_bytes + size).saturating_sub(self.quota);
        let clean_bytes = self.used_bytes - self.dirty_bytes;
        if needed > clean_bytes {
            return Err(if dirty { AdmitError::DirtyQuota } else { AdmitError::NoSpace });
        }
        let evicted = self.evict(needed);
        self.reserved_bytes += size;
        Ok(evicted)
    }

    /// Evicts least-recently-used clean blocks until at least `bytes` are freed, or none is left.
    /// Returns them; the caller deletes their files.
    ///
    /// An entry is filed in the LRU order under its last use when it was filed; a hit only
    /// records its new use in the entry. So the first entry in the order may have been used
    /// since: it is filed again under that use, and the next one looked at. One whose use is
    /// the tick it is filed under is then the least recently used: every other entry is filed
    /// under a later tick, and was last used at or after it.
    pub fn evict(&mut self, bytes: u64) -> Vec<(BlockId, Entry)> {
        let mut evicted = Vec::new();
        let mut freed = 0;
        while freed < bytes {
            let Some((slot, id)) = self.lru.pop_first() else { break };
            if let Some(entry) = self.entries.get_mut(&id)
                && entry.lru_tick != slot
            {
                entry.lru_slot = entry.lru_tick;
                self.lru.insert(entry.lru_slot, id);
                continue;
            }
            if let Some(entry) = self.remove(&id) {
                freed += entry.file_size;
                evicted.push((id, entry));
            }
        }
        evicted
    }

    /// Takes `size` bytes of quota for staged upload data (evicting clean blocks as needed), or
    /// refuses like a dirty write.
    pub fn stage(&mut self, size: u64) -> Result<Vec<(BlockId, Entry)>, AdmitError> {
        let evicted = self.reserve(size, true)?;
        self.reserved_bytes -= size;
        self.staged_bytes += size;
        Ok(evicted)
    }

    /// Counts staged bytes that are on disk already (found at start).
    pub fn stage_found(&mut self, size: u64) {
        self.staged_bytes += size;
    }

    /// Gives staged bytes back (the staging was removed, or became a dirty file).
    pub fn unstage(&mut self, size: u64) {
        self.staged_bytes = self.staged_bytes.saturating_sub(size);
    }

    pub fn release(&mut self, reserved: u64) {
        self.reserved_bytes = self.reserved_bytes.saturating_sub(reserved);
    }

    /// Inserts (or replaces) an entry, turning `reserved` bytes of reservation into usage.
    /// Returns the replaced entry, whose file the caller deletes if it differs.
    pub fn insert(&mut self, id: BlockId, mut entry: Entry, reserved: u64) -> Option<Entry> {
        self.release(reserved);
        let old = self.remove(&id);
        self.tick += 1;
        (entry.lru_tick, entry.lru_slot) = (self.tick, self.tick);
        entry.serial = self.tick;
        entry.checked = false;
        entry.file_sums = None;
        // Only entries in the index are counted as holding a file; a new one starts without.
        entry.held = None;
        self.used_bytes += entry.file_size;
        if entry.is_dirty() {
            self.dirty_bytes += entry.file_size;
            self.dirty_blocks += 1;
        } else {
            self.lru.insert(entry.lru_slot, id.clone());
        }
        self.entries.insert(id, entry);
        old
    }

    pub fn remove(&mut self, id: &BlockId) -> Option<Entry> {
        let mut entry = self.entries.remove(id)?;
        // The file closes before the caller deletes it.
        if entry.held.take().is_some() {
            self.held.count -= 1;
        }
        self.used_bytes -= entry.file_size;
        if entry.is_dirty() {
            self.dirty_bytes -= entry.file_size;
            self.dirty_blocks -= 1;
        } else {
            self.lru.remove(&entry.lru_slot);
        }
        Some(entry)
    }

    /// Marks a dirty entry clean if it still holds `version`. Returns whether it did.
    pub fn mark_clean(&mut self, id: &BlockId, version: u64) -> bool {
        match self.entries.get(id) {
            Some(e) if e.is_dirty() && !e.is_tombstone() && e.version == version => {}
            _ => return false,
        }
        let mut entry = self.remove(id).expect("checked above");
        entry.state = EntryState::Clean;
        entry.validated = Some(Instant::now());
        self.insert(id.clone(), entry, 0);
        true
    }

    /// Records that the store still holds `version` of a clean entry, as of `at`, as the object
    /// with `store_etag`.
    pub fn mark_validated(&mut self, id: &BlockId, version: u64, at: Instant, store_etag: &str) {
        if let Some(e) = self.entries.get_mut(id)
            && !e.is_dirty()
            && e.version == version
        {
            e.validated = Some(at);
            e.store_etag = Some(store_etag.to_owned());
        }
    }

    /// Dirty entries of a volume whose key starts with `prefix`, in key order.
    pub fn dirty_under(&self, volume: &VolumeId, prefix: &str) -> Vec<(BlockId, Entry)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(id, e)| {
                e.is_dirty() && id.stripe.is_none() && &id.volume == volume && id.key.as_str().starts_with(prefix)
            })
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn oldest_dirty(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                EntryState::Dirty { since, .. } => Some(since),
                EntryState::Clean => None,
            })
            .min()
    }

    pub fn dirty_ids(&self) -> Vec<BlockId> {
        self.entries.iter().filter(|(_, e)| e.is_dirty()).map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: &str) -> BlockId {
        BlockId::of_test_volume(k)
    }

    fn clean(size: u64) -> Entry {
        Entry::new("n".into(), size, size, 1, EntryState::Clean)
    }

    fn dirty(size: u64) -> Entry {
        Entry::new("n".into(), size, size, 1, EntryState::Dirty { since: Instant::now(), tombstone: false })
    }

    fn held_file() -> (Arc<std::fs::File>, Arc<HeldFile>) {
        let file = Arc::new(std::fs::File::open("/dev/null").unwrap());
        let header = Arc::new(crate::cache::disk::tests::header());
        (Arc::clone(&file), Arc::new(HeldFile::new(file, header, 0)))
    }

    fn serial(idx: &Index, k: &str) -> u64 {
        idx.get(&id(k)).unwrap().serial
    }

    #[test]
    fn at_most_the_capacity_of_entries_hold_a_file_and_the_longest_held_lets_go_first() {
        let mut idx = Index::new(1000);
        idx.set_held_files(2);
        let mut files = Vec::new();
        for k in ["a", "b", "c"] {
            idx.insert(id(k), clean(10), 0);
            let (file, held) = held_file();
            assert!(idx.hold(&id(k), serial(&idx, k), held));
            files.push(file);
        }
        assert_eq!(idx.usage().open_files, 2);
        assert!(idx.get(&id("a")).unwrap().held.is_none(), "a held its file longest");
        assert_eq!(Arc::strong_count(&files[0]), 1, "a's file is closed");
        assert!(idx.get(&id("c")).unwrap().held.is_some());
        idx.set_held_files(0);
        assert_eq!(idx.usage().open_files, 0);
        assert!(files.iter().all(|f| Arc::strong_count(f) == 1));
        assert!(!idx.hold(&id("a"), serial(&idx, "a"), held_file().1), "capacity 0 holds nothing");
    }

    #[test]
    fn a_held_file_goes_with_its_entry_when_it_is_replaced_removed_flushed_or_evicted() {
        let mut idx = Index::new(100);
        idx.set_held_files(10);
        let hold = |idx: &mut Index, k: &str| {
            let (file, held) = held_file();
            assert!(idx.hold(&id(k), serial(idx, k), held));
            file
        };
        idx.insert(id("replaced"), clean(10), 0);
        let f = hold(&mut idx, "replaced");
        let old = serial(&idx, "replaced");
        idx.insert(id("replaced"), clean(10), 0);
        assert_eq!(Arc::strong_count(&f), 1, "a new file of the block lets go of the old one");
        assert!(!idx.hold(&id("replaced"), old, held_file().1), "a file of a replaced entry is not held");

        idx.insert(id("removed"), clean(10), 0);
        let f = hold(&mut idx, "removed");
        drop(idx.remove(&id("removed")));
        assert_eq!(Arc::strong_count(&f), 1);

        idx.insert(id("flushed"), dirty(10), 0);
        let f = hold(&mut idx, "flushed");
        assert!(idx.mark_clean(&id("flushed"), 1));
        assert_eq!(Arc::strong_count(&f), 1, "a flushed block is a new entry (a new serial)");

        idx.insert(id("evicted"), clean(10), 0);
        let f = hold(&mut idx, "evicted");
        drop(idx.evict(100));
        assert_eq!(Arc::strong_count(&f), 1);
        assert_eq!(idx.usage().open_files, 0);
    }

    #[test]
    fn evicts_least_recently_used_clean_blocks_only() {
        let mut idx = Index::new(100);
        for k in ["a", "b", "c"] {
            idx.reserve(30, false).unwrap();
            idx.insert(id(k), clean(30), 30);
        }
        idx.touch(&id("a")); // b is now the oldest
        let evicted = idx.reserve(30, true).unwrap();
        assert_eq!(evicted.iter().map(|(i, _)| i.key.as_str()).collect::<Vec<_>>(), ["b"]);
        idx.insert(id("d"), dirty(30), 30);
        assert_eq!(idx.usage().used_bytes, 90);
        // Needs 70: only a and c (60) are clean, so the reservation fails and nothing is evicted.
        assert_eq!(idx.reserve(80, false).unwrap_err(), AdmitError::NoSpace);
        assert_eq!(idx.usage().blocks, 3);
    }

    proptest::proptest! {
        /// Hits record their use in the entry alone (the order is mended at eviction): whatever
        /// the inserts, hits and removals, eviction takes the clean entry used longest ago.
        #[test]
        fn eviction_takes_the_clean_entry_used_longest_ago(
            ops in proptest::collection::vec((0u8..4, 0u8..8), 1..200),
        ) {
            let mut idx = Index::new(u64::MAX);
            // The model: each clean entry's last use, in a clock of its own.
            let mut used: HashMap<String, u64> = HashMap::new();
            for (clock, (op, k)) in (0u64..).zip(ops) {
                let k = format!("k{k}");
                match op {
                    0 => {
                        idx.insert(id(&k), clean(1), 0);
                        used.insert(k, clock);
                    }
                    1 => {
                        let hit = idx.touch(&id(&k)).is_some();
                        proptest::prop_assert_eq!(hit, used.contains_key(&k));
                        if let Some(t) = used.get_mut(&k) {
                            *t = clock;
                        }
                    }
                    2 => {
                        idx.remove(&id(&k));
                        used.remove(&k);
                    }
                    _ => {
                        let evicted: Vec<_> = idx.evict(1).into_iter().map(|(i, _)| i.key.to_string()).collect();
                        let oldest = used.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
                        proptest::prop_assert_eq!(evicted.first().cloned(), oldest.clone());
                        if let Some(k) = oldest {
                            used.remove(&k);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dirty_quota_gives_back_pressure() {
        let mut idx = Index::new(100);
        idx.reserve(60, true).unwrap();
        idx.insert(id("a"), dirty(60), 60);
        assert_eq!(idx.reserve(50, true).unwrap_err(), AdmitError::DirtyQuota);
        assert!(idx.mark_clean(&id("a"), 1));
        assert!(!idx.mark_clean(&id("a"), 1));
        assert_eq!(idx.usage().dirty_bytes, 0);
        // Now the 60 clean bytes can be evicted for a dirty write.
        assert_eq!(idx.reserve(50, true).unwrap().len(), 1);
    }

    #[test]
    fn evict_frees_at_least_what_is_asked_oldest_first_and_never_dirty() {
        let mut idx = Index::new(1000);
        idx.insert(id("d"), dirty(10), 0);
        for k in ["a", "b", "c"] {
            idx.insert(id(k), clean(30), 0);
        }
        let evicted: Vec<_> = idx.evict(40).into_iter().map(|(i, _)| i.key.to_string()).collect();
        assert_eq!(evicted, ["a", "b"]);
        assert_eq!(idx.evict(1000).len(), 1, "only c is left to evict; d is dirty");
        assert_eq!(idx.usage().used_bytes, 10);
    }

    #[test]
    fn staged_upload_bytes_count_against_the_quota_like_dirty_data() {
        let mut idx = Index::new(100);
        idx.insert(id("c"), clean(40), 0);
        assert_eq!(idx.stage(70).unwrap().len(), 1, "clean data is evicted for staging");
        assert_eq!(idx.reserve(40, true).unwrap_err(), AdmitError::DirtyQuota);
        assert_eq!(idx.stage(40).unwrap_err(), AdmitError::DirtyQuota);
        idx.unstage(70);
        assert!(idx.reserve(40, true).is_ok());
    }

    #[test]
    fn mark_clean_ignores_superseded_versions() {
        let mut idx = Index::new(100);
        let mut e = dirty(10);
        e.version = 5;
        idx.insert(id("a"), e, 0);
        assert!(!idx.mark_clean(&id("a"), 4));
        assert!(idx.get(&id("a")).unwrap().is_dirty());
    }
}
