//! Single-flight: concurrent requests for one key share one in-flight operation. The operation runs
//! as its own task, so it completes (and fills the cache) even if every waiter goes away.

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self { inflight: Arc::default() }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Returns the result of `make()` for `key`, starting it only if no call for `key` is in
    /// flight. `on_abort` turns a panicked task into a value.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F, on_abort: fn(String) -> V) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join_or_start(key, make, on_abort).await
    }

    /// Starts `make()` for `key` unless a call for `key` is in flight, without waiting for it.
    pub fn start<F>(&self, key: K, make: impl FnOnce() -> F, on_abort: fn(String) -> V)
    where
        F: Future<Output = V> + Send + 'static,
    {
        // The operation is its own task: dropping the flight does not stop it.
        drop(self.join_or_start(key, make, on_abort));
    }

    fn join_or_start<F>(&self, key: K, make: impl FnOnce() -> F, on_abort: fn(String) -> V) -> Flight<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&key) {
            return f.clone();
        }
        let fut = make();
        let map_ref = Arc::clone(&self.inflight);
        let task_key = key.clone();
        let handle = tokio::spawn(async move {
            let v = fut.await;
            map_ref.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_key);
            v
        });
        let flight = async move { handle.await.unwrap_or_else(|e| on_abort(e.to_string())) }.boxed().shared();
        map.insert(key, flight.clone());
        flight
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_started_flight_runs_once_and_to_its_end_with_nobody_waiting() {
        let sf: SingleFlight<&'static str, ()> = SingleFlight::default();
        let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
        for _ in 0..3 {
            let (runs, gate) = (runs.clone(), gate.clone());
            sf.start(
                "k",
                || async move {
                    gate.notified().await;
                    runs.fetch_add(1, Ordering::SeqCst);
                },
                |_| (),
            );
        }
        assert_eq!(sf.in_flight(), 1);
        gate.notify_one();
        while sf.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_execution() {
        let sf: Arc<SingleFlight<&'static str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                sf.run(
                    "k",
                    || async move {
                        gate.notified().await;
                        runs.fetch_add(1, Ordering::SeqCst) + 100
                    },
                    |_| 0,
                )
                .await
            }));
        }
        while sf.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 100);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }
}
