//! The writeback queue's bookkeeping: which blocks wait, which wait for a retry time, which are
//! being flushed, and which were written again while in flight. One block is never flushed by two
//! workers at once, so an older version can never land in the store after a newer one from this
//! proxy. A block whose flush failed waits for its retry time *in the queue*, not on a worker, so
//! one failing key never holds up the others.

use crate::cache::BlockId;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct FlushQueue {
    pending: VecDeque<BlockId>,
    /// Failed blocks by retry time (the sequence number keeps equal times apart).
    delayed: BTreeSet<(Instant, u64, BlockId)>,
    delayed_seq: u64,
    /// Pending or delayed.
    queued: HashSet<BlockId>,
    in_flight: HashSet<BlockId>,
    /// Written again while in flight: flushed again once the current flush finishes.
    rewritten: HashSet<BlockId>,
    /// Failed attempts in a row, for the backoff.
    failures: HashMap<BlockId, u32>,
}

/// What to do with a block after a flush attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Flushed (or quarantined), nothing left to do unless written again meanwhile.
    Done,
    /// Still dirty (a newer version arrived): flush again now.
    Again,
    /// Failed: try again at this time.
    RetryAt(Instant),
}

impl FlushQueue {
    /// Queues a block; returns whether a worker should be woken. A block waiting for its retry
    /// time keeps waiting.
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

    /// Takes the next block to flush (moving those whose retry time has come to the back of the
    /// line) and marks it in flight.
    pub fn pop(&mut self, now: Instant) -> Option<BlockId> {
        while let Some(first) = self.delayed.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, _, id)) = self.delayed.pop_first() {
                self.pending.push_back(id);
            }
        }
        let id = self.pending.pop_front()?;
        self.queued.remove(&id);
        self.in_flight.insert(id.clone());
        Some(id)
    }

    /// The earliest retry time of a waiting block.
    pub fn next_retry(&self) -> Option<Instant> {
        self.delayed.first().map(|d| d.0)
    }

    /// Counts a failed attempt; returns how many failed in a row (1 for the first).
    pub fn record_failure(&mut self, id: &BlockId) -> u32 {
        let n = self.failures.entry(id.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Ends a flush attempt. Returns whether a worker should be woken.
    pub fn finish(&mut self, id: &BlockId, next: Next) -> bool {
        self.in_flight.remove(id);
        let rewritten = self.rewritten.remove(id);
        match next {
            // A newer write may succeed where the failed one did not: no reason to wait.
            Next::RetryAt(_) if rewritten => self.push(id.clone()),
            Next::RetryAt(at) => {
                self.queued.insert(id.clone());
                self.delayed_seq += 1;
                self.delayed.insert((at, self.delayed_seq, id.clone()));
                false
            }
            Next::Again => {
                self.failures.remove(id);
                self.push(id.clone())
            }
            Next::Done => {
                self.failures.remove(id);
                rewritten && self.push(id.clone())
            }
        }
    }

    /// Blocks waiting, waiting for a retry, or being flushed.
    pub fn depth(&self) -> usize {
        self.pending.len() + self.delayed.len() + self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockproxy_protocol::{BlockKey, VolumeId};
    use std::time::Duration;

    fn id(k: &str) -> BlockId {
        BlockId::object(VolumeId::parse("v").unwrap(), BlockKey::parse(k).unwrap())
    }

    #[test]
    fn a_block_is_never_in_flight_twice() {
        let now = Instant::now();
        let mut q = FlushQueue::default();
        assert!(q.push(id("a")));
        assert!(!q.push(id("a")), "deduplicated while pending");
        let a = q.pop(now).unwrap();
        assert!(!q.push(id("a")), "in flight: remembered, not queued");
        assert!(q.pop(now).is_none());
        assert!(q.finish(&a, Next::Done), "rewritten while in flight: queued again");
        assert_eq!(q.pop(now), Some(id("a")));
        assert!(!q.finish(&id("a"), Next::Done));
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn a_failed_block_waits_without_holding_up_the_others() {
        let now = Instant::now();
        let mut q = FlushQueue::default();
        q.push(id("bad"));
        q.push(id("good"));
        let bad = q.pop(now).unwrap();
        assert_eq!(q.record_failure(&bad), 1);
        assert!(!q.finish(&bad, Next::RetryAt(now + Duration::from_secs(5))));
        assert!(!q.push(id("bad")), "a new write of a waiting block does not jump its retry time");
        assert_eq!(q.pop(now), Some(id("good")));
        q.finish(&id("good"), Next::Done);
        assert_eq!(q.pop(now), None, "the failed block waits for its time");
        assert_eq!((q.depth(), q.next_retry()), (1, Some(now + Duration::from_secs(5))));
        assert_eq!(q.pop(now + Duration::from_secs(5)), Some(id("bad")));
        assert_eq!(q.record_failure(&bad), 2, "failures in a row are counted");
        q.finish(&bad, Next::Done);
        q.push(id("bad"));
        let bad = q.pop(now).unwrap();
        assert_eq!(q.record_failure(&bad), 1, "a success resets the count");
    }

    #[test]
    fn a_block_rewritten_during_a_failed_flush_is_retried_at_once() {
        let now = Instant::now();
        let mut q = FlushQueue::default();
        q.push(id("a"));
        let a = q.pop(now).unwrap();
        q.push(id("a"));
        assert!(q.finish(&a, Next::RetryAt(now + Duration::from_secs(60))));
        assert_eq!(q.pop(now), Some(id("a")));
    }
}
