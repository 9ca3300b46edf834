//! Removal epochs fence store fetches against removals. A fetch notes its block's epoch when it
//! starts; every change this proxy makes to the block's stored value (a flushed write or delete,
//! a write-through, a block found superseded in the store) bumps it. A fetch whose epoch has moved
//! on may hold a value older than an acknowledged write or delete: it must not be cached, and no
//! later read may join it.
//!
//! Epochs are striped over a fixed number of slots by a hash of the block, so memory stays bounded
//! and a flush of one block does not fence fetches of every other; two blocks sharing a slot cost
//! only a skipped cache fill or a second fetch, never a stale read.

use super::index::BlockId;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 4096;

pub struct RemovalEpochs {
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Default for RemovalEpochs {
    fn default() -> Self {
        Self { slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(), hasher: RandomState::new() }
    }
}

impl RemovalEpochs {
    pub fn get(&self, id: &BlockId) -> u64 {
        self.slot(id).load(Ordering::SeqCst)
    }

    pub fn bump(&self, id: &BlockId) {
        self.slot(id).fetch_add(1, Ordering::SeqCst);
    }

    fn slot(&self, id: &BlockId) -> &AtomicU64 {
        &self.slots[self.hasher.hash_one(id) as usize % SLOTS]
    }
}

/// A block and its removal epoch when a store fetch of it started. Single-flight fetches are keyed
/// by it, so a read never joins a fetch that started before a removal the read must observe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchKey {
    pub id: BlockId,
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: &str) -> BlockId {
        BlockId::of_test_volume(k)
    }

    #[test]
    fn a_bump_moves_its_own_block_on_and_leaves_almost_every_other_alone() {
        let epochs = RemovalEpochs::default();
        let before = epochs.get(&id("a"));
        epochs.bump(&id("a"));
        assert_ne!(epochs.get(&id("a")), before);
        let moved = (0..1000).filter(|i| epochs.get(&id(&format!("other{i}"))) != 0).count();
        assert!(moved <= 5, "{moved} of 1000 other blocks were fenced by one bump");
    }
}
