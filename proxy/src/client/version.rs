//! Write versions: every PUT and DELETE the client sends carries a version from a clock it keeps
//! monotonic (`max(now in ns, last + 1)`), so a later write of this client always wins, whichever
//! proxy, group or store it lands on. See docs/adr/0002-consistency-contract.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct VersionClock {
    last: AtomicU64,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl VersionClock {
    /// A version larger than every version this clock handed out or observed.
    pub fn next(&self) -> u64 {
        let now = now_nanos();
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let v = now.max(last.saturating_add(1));
            match self.last.compare_exchange(last, v, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return v,
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock past a version seen elsewhere (a read, a proxy's answer).
    pub fn observe(&self, v: u64) {
        self.last.fetch_max(v, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase_even_past_observed_future_ones() {
        let c = VersionClock::default();
        let a = c.next();
        let b = c.next();
        assert!(b > a);
        c.observe(u64::MAX / 2 + now_nanos());
        let d = c.next();
        assert!(d > u64::MAX / 2);
    }
}
