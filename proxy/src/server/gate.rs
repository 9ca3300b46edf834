//! The write gate: the fence between accepting writes and draining or shutting down.
//!
//! A write (PUT or DELETE) passes the gate before it reads its body and holds a [`WritePass`]
//! until its answer is decided. Closing the gate refuses every later write at once, and the
//! writes already inside are counted, so a drain (or shutdown) reports `done` only when no write
//! can still be acknowledged: none is inside, and everything acknowledged is flushed.

use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Draining,
    ShuttingDown,
}

#[derive(Debug, Default)]
struct State {
    closed: Option<Closed>,
    inside: u64,
}

#[derive(Debug, Default)]
pub struct WriteGate {
    state: Mutex<State>,
    left: Notify,
}

/// Held by a write while it runs; leaving the gate is counted when it is dropped.
#[derive(Debug)]
pub struct WritePass {
    gate: Arc<WriteGate>,
}

impl Drop for WritePass {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.inside -= 1;
        if s.inside == 0 {
            self.gate.left.notify_waiters();
        }
    }
}

impl WriteGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a write in, or says why not.
    pub fn enter(self: &Arc<Self>) -> Result<WritePass, Closed> {
        let mut s = self.lock();
        if let Some(why) = s.closed {
            return Err(why);
        }
        s.inside += 1;
        Ok(WritePass { gate: Arc::clone(self) })
    }

    /// Refuses every later write. A shutdown overrides a drain in what refusals say.
    pub fn close(&self, why: Closed) -> bool {
        let mut s = self.lock();
        let first = s.closed.is_none();
        if first || why == Closed::ShuttingDown {
            s.closed = Some(why);
        }
        first
    }

    pub fn closed(&self) -> Option<Closed> {
        self.lock().closed
    }

    /// Writes that passed the gate and have not been answered yet.
    pub fn inside(&self) -> u64 {
        self.lock().inside
    }

    /// Waits until no write is inside (call after [`WriteGate::close`]).
    pub async fn wait_empty(&self) {
        loop {
            let left = self.left.notified();
            if self.inside() == 0 {
                return;
            }
            left.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_refuses_new_writes_and_waits_for_those_inside() {
        let gate = Arc::new(WriteGate::default());
        let pass = gate.enter().unwrap();
        assert!(gate.close(Closed::Draining));
        assert_eq!(gate.enter().unwrap_err(), Closed::Draining);
        assert_eq!(gate.inside(), 1);
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.wait_empty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a write is still inside");
        drop(pass);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(!gate.close(Closed::ShuttingDown));
        assert_eq!(gate.closed(), Some(Closed::ShuttingDown));
    }
}
