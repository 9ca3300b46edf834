//! Keys last seen at most one block long, and how long, so that a read of one can skip its HEAD
//! and take only that many bytes of the read budget: a GET of the first block carries the
//! version and size a HEAD would, and for such a key it is the whole object. Only a hint: a
//! wrong one costs a request or a piece, never a wrong answer (the reader checks the size it
//! gets). Bounded and lock-free: a fixed table of key hashes, a newer key taking an older one's
//! slot.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 1 << 14;
/// A slot's tag half; the other half is the size.
const TAG: u64 = !(u32::MAX as u64);

/// A slot holds a key's tag in its high half and its size in its low half; zero marks an empty
/// slot. Sizes are at most a block (64 MiB), so they fit.
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
    /// The key's slot and its non-zero tag, already in the high half.
    fn slot(&self, key: &str) -> (&AtomicU64, u64) {
        let h = self.hasher.hash_one(key);
        (&self.slots[h as usize % SLOTS], (h | 1 << 32) & TAG)
    }

    /// The size the key had when last seen small.
    pub fn size_of(&self, key: &str) -> Option<u64> {
        let (slot, tag) = self.slot(key);
        let v = slot.load(Ordering::Relaxed);
        (v & TAG == tag).then_some(v & !TAG)
    }

    /// Remembers `key` at `size` bytes; a size beyond 4 GiB is not small, and forgets it.
    pub fn remember(&self, key: &str, size: u64) {
        let (slot, tag) = self.slot(key);
        match u32::try_from(size) {
            Ok(size) => slot.store(tag | u64::from(size), Ordering::Relaxed),
            Err(_) => self.forget(key),
        }
    }

    pub fn forget(&self, key: &str) {
        let (slot, tag) = self.slot(key);
        let v = slot.load(Ordering::Relaxed);
        if v & TAG == tag {
            let _ = slot.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_sizes_and_forgets() {
        let s = SmallKeys::default();
        assert_eq!(s.size_of("a"), None);
        s.remember("a", 65_536);
        assert_eq!((s.size_of("a"), s.size_of("b")), (Some(65_536), None));
        s.remember("a", 7);
        assert_eq!(s.size_of("a"), Some(7), "the latest size");
        s.forget("b");
        assert_eq!(s.size_of("a"), Some(7));
        s.forget("a");
        assert_eq!(s.size_of("a"), None);
        s.remember("c", 0);
        assert_eq!(s.size_of("c"), Some(0), "an empty key is still a tagged slot");
        s.remember("d", 5 << 30);
        assert_eq!(s.size_of("d"), None, "beyond a slot's size half");
    }
}
