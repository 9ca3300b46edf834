//! Keys last seen at most one block long, so that a read of one can skip its HEAD: a GET of the
//! first block carries the version and size a HEAD would, and for such a key it is the whole
//! object. Only a hint: a wrong one costs a request, never a wrong answer (the reader checks the
//! size it gets). Bounded and lock-free: a fixed table of key hashes, a newer key taking an older
//! one's slot.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 1 << 14;

pub struct SmallKeys {
    hasher: std::collections::hash_map::RandomState,
    slots: Box<[AtomicU64]>,
}

impl Default for SmallKeys {
    fn default() -> Self {
        Self { hasher: Default::default(), slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl SmallKeys {
    /// The key's slot and its non-zero tag (zero marks an empty slot).
    fn slot(&self, key: &str) -> (&AtomicU64, u64) {
        let h = self.hasher.hash_one(key);
        (&self.slots[h as usize % SLOTS], h.max(1))
    }

    pub fn contains(&self, key: &str) -> bool {
        let (slot, tag) = self.slot(key);
        slot.load(Ordering::Relaxed) == tag
    }

    pub fn remember(&self, key: &str) {
        let (slot, tag) = self.slot(key);
        slot.store(tag, Ordering::Relaxed);
    }

    pub fn forget(&self, key: &str) {
        let (slot, tag) = self.slot(key);
        let _ = slot.compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets() {
        let s = SmallKeys::default();
        assert!(!s.contains("a"));
        s.remember("a");
        assert!(s.contains("a") && !s.contains("b"));
        s.forget("b");
        assert!(s.contains("a"));
        s.forget("a");
        assert!(!s.contains("a"));
    }
}
