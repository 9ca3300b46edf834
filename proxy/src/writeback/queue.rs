//! The writeback queue's bookkeeping: which blocks wait, which are being flushed, and which were
//! written again while in flight. One block is never flushed by two workers at once, so an older
//! version can never land in the store after a newer one from this proxy.

use crate::cache::BlockId;
use std::collections::{HashSet, VecDeque};

#[derive(Debug, Default)]
pub struct FlushQueue {
    pending: VecDeque<BlockId>,
    queued: HashSet<BlockId>,
    in_flight: HashSet<BlockId>,
    /// Written again while in flight: flushed again once the current flush finishes.
    rewritten: HashSet<BlockId>,
}

impl FlushQueue {
    /// Queues a block; returns whether a worker should be woken.
    pub fn push(&mut self, id: BlockId) -> bool {
        if self.in_flight.contains(&id) {
            self.rewritten.insert(id);
            false
        } else if self.queued.insert(id.clone()) {
            self.pending.push_back(id);
            true
        } else {
            false
        }
    }

    /// Takes the next block to flush and marks it in flight.
    pub fn pop(&mut self) -> Option<BlockId> {
        let id = self.pending.pop_front()?;
        self.queued.remove(&id);
        self.in_flight.insert(id.clone());
        Some(id)
    }

    /// Ends a flush. Returns true when the block must be queued again.
    pub fn finish(&mut self, id: &BlockId, still_dirty: bool) -> bool {
        self.in_flight.remove(id);
        let again = self.rewritten.remove(id) || still_dirty;
        again && self.push(id.clone())
    }

    /// Blocks waiting or being flushed.
    pub fn depth(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockproxy_protocol::{BlockKey, VolumeId};

    fn id(k: &str) -> BlockId {
        BlockId { volume: VolumeId::parse("v").unwrap(), key: BlockKey::parse(k).unwrap() }
    }

    #[test]
    fn a_block_is_never_in_flight_twice() {
        let mut q = FlushQueue::default();
        assert!(q.push(id("a")));
        assert!(!q.push(id("a")), "deduplicated while pending");
        let a = q.pop().unwrap();
        assert!(!q.push(id("a")), "in flight: remembered, not queued");
        assert!(q.pop().is_none());
        assert!(q.finish(&a, false), "rewritten while in flight: queued again");
        assert_eq!(q.pop(), Some(id("a")));
        assert!(!q.finish(&id("a"), false));
        assert_eq!(q.depth(), 0);
    }
}
