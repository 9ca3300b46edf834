//! This client's own recent writes, so that a read never returns something older than what this
//! client last wrote or deleted, whichever proxy, group or store answers it (ADR 0002: read your
//! writes). Bounded: the oldest entries are forgotten first, and the ADR states the bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The last write this client made to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub deleted: bool,
}

/// What a read found, judged against this client's last write of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// As new as our last write, or we have none: serve it.
    Fresh,
    /// Older than our last delete: the key is gone.
    Deleted,
    /// Older than (or missing) our last write: look for the newer copy elsewhere.
    Stale { want: u64 },
}

#[derive(Debug)]
pub struct RecentWrites {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_key: HashMap<String, Written>,
    order: VecDeque<String>,
}

impl RecentWrites {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::default(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an acknowledged write or delete.
    pub fn record(&self, key: &str, w: Written) {
        let mut inner = self.lock();
        match inner.by_key.get_mut(key) {
            Some(cur) => {
                if w.version >= cur.version {
                    *cur = w;
                }
            }
            None => {
                inner.by_key.insert(key.to_owned(), w);
                inner.order.push_back(key.to_owned());
                while inner.order.len() > self.capacity {
                    if let Some(old) = inner.order.pop_front() {
                        inner.by_key.remove(&old);
                    }
                }
            }
        }
    }

    /// Judges a read of `key` that found `found` (the version read, `None` for not found).
    pub fn judge(&self, key: &str, found: Option<u64>) -> Judgement {
        let Some(w) = self.lock().by_key.get(key).copied() else { return Judgement::Fresh };
        match (w.deleted, found) {
            (true, Some(v)) if v < w.version => Judgement::Deleted,
            (true, _) => Judgement::Fresh,
            (false, Some(v)) if v >= w.version => Judgement::Fresh,
            (false, _) => Judgement::Stale { want: w.version },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_judged_against_the_last_own_write() {
        let r = RecentWrites::new(10);
        assert_eq!(r.judge("k", Some(1)), Judgement::Fresh, "no write of ours: anything goes");
        r.record("k", Written { version: 10, deleted: false });
        assert_eq!(r.judge("k", Some(10)), Judgement::Fresh);
        assert_eq!(r.judge("k", Some(11)), Judgement::Fresh);
        assert_eq!(r.judge("k", Some(9)), Judgement::Stale { want: 10 });
        assert_eq!(r.judge("k", None), Judgement::Stale { want: 10 });
        r.record("k", Written { version: 5, deleted: true });
        assert_eq!(r.judge("k", Some(9)), Judgement::Stale { want: 10 }, "an older record never replaces a newer");
        r.record("k", Written { version: 20, deleted: true });
        assert_eq!(r.judge("k", Some(10)), Judgement::Deleted);
        assert_eq!(r.judge("k", None), Judgement::Fresh);
        assert_eq!(r.judge("k", Some(21)), Judgement::Fresh, "someone wrote after our delete");
    }

    #[test]
    fn the_oldest_keys_are_forgotten_beyond_capacity() {
        let r = RecentWrites::new(2);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            r.record(k, Written { version: 10 + i as u64, deleted: false });
        }
        assert_eq!(r.judge("a", None), Judgement::Fresh, "forgotten");
        assert_eq!(r.judge("c", None), Judgement::Stale { want: 12 });
    }
}
