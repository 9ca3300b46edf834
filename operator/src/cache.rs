//! The operator's view of the cluster-wide kinds (Nodes, PVs, ProxyGroups, VolumeProxyGroups):
//! one watch per kind keeps a reflector store, and the same watch triggers the controllers. A
//! reconcile reads these stores instead of LISTing every Node and PV of a large cluster.

use crate::Error;
use crate::crd::{ProxyGroup, VolumeProxyGroup};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::fmt::Debug;
use std::future::Future;
use tokio::sync::watch as flag;

/// Objects a trigger may hold before the watch waits for its controller to take them.
const TRIGGER_BUFFER: usize = 1024;

/// Set once a watch's first LIST is complete in its store.
///
/// Not `Store::wait_until_ready`: kube 5 keeps one waker for all its waiters (a oneshot
/// receiver), so with several tasks waiting (the controller's runner and a reconcile) only the
/// last one is woken and the others wait forever. A reconcile stuck that way never publishes
/// its volume (seen in the chart test).
#[derive(Clone)]
pub struct Ready(flag::Receiver<bool>);

impl Ready {
    async fn wait(&self) -> Result<(), Error> {
        self.0.clone().wait_for(|r| *r).await.map(drop).map_err(|_| Error::CacheGone)
    }
}

/// A watched kind: its store, when the store is ready, and what it triggers.
pub struct Watched<K: Resource<DynamicType = ()> + 'static, T, D> {
    pub store: Store<K>,
    pub ready: Ready,
    /// One stream per controller it triggers: every object the watch applied or deleted.
    pub triggers: Vec<T>,
    /// Drives the watch. It must run on its own (not only through a controller): a trigger
    /// nobody reads would otherwise stop the store from filling.
    pub drive: D,
}

/// The stores the reconcilers read. The stores are private: the only way to read them is
/// [`Cache::view`], which waits until every store holds a complete initial LIST, so a reconcile
/// can never see an empty cluster and act on it (drain every proxy, unpublish every volume).
#[derive(Clone)]
pub struct Cache {
    /// Placement reads only a Node's name, labels and deletion: its metadata is all we keep.
    nodes: (Store<PartialObjectMeta<Node>>, Ready),
    pvs: (Store<PersistentVolume>, Ready),
    groups: (Store<ProxyGroup>, Ready),
    volumes: (Store<VolumeProxyGroup>, Ready),
}

/// A snapshot of the watched kinds, taken once every store was ready.
pub struct View {
    pub nodes: Vec<Node>,
    pub pvs: Vec<PersistentVolume>,
    pub groups: Vec<ProxyGroup>,
    pub volumes: Vec<VolumeProxyGroup>,
}

impl Cache {
    pub fn new(
        nodes: (Store<PartialObjectMeta<Node>>, Ready),
        pvs: (Store<PersistentVolume>, Ready),
        groups: (Store<ProxyGroup>, Ready),
        volumes: (Store<VolumeProxyGroup>, Ready),
    ) -> Self {
        Self { nodes, pvs, groups, volumes }
    }

    /// Waits until every store is ready, then copies them. After a watch restarts, a store keeps
    /// its old content until the new LIST is complete (kube swaps it in at once), so a ready
    /// store is never seen half-filled.
    pub async fn view(&self) -> Result<View, Error> {
        let (n, p, g, v) =
            futures::join!(self.nodes.1.wait(), self.pvs.1.wait(), self.groups.1.wait(), self.volumes.1.wait());
        n.and(p).and(g).and(v)?;
        Ok(View {
            nodes: self
                .nodes
                .0
                .state()
                .iter()
                .map(|n| Node { metadata: n.metadata.clone(), ..Node::default() })
                .collect(),
            pvs: copy(self.pvs.0.state()),
            groups: copy(self.groups.0.state()),
            volumes: copy(self.volumes.0.state()),
        })
    }
}

fn copy<K: Clone>(objects: Vec<std::sync::Arc<K>>) -> Vec<K> {
    objects.into_iter().map(|o| (*o).clone()).collect()
}

/// One watch (`events`, from `watcher`) feeding a store and `triggers` controller triggers
/// (for `Controller::for_stream` / `watches_stream`).
pub fn watch<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    triggers: usize,
) -> Watched<K, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static, impl Future<Output = ()> + Send>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let (ready_tx, ready_rx) = flag::channel(false);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..triggers).map(|_| mpsc::channel::<K>(TRIGGER_BUFFER)).unzip();
    let kind = K::kind(&()).into_owned();
    let drive = async move {
        // managedFields are never read and are a large part of every object kept.
        let events = events.modify(|o| o.meta_mut().managed_fields = None).default_backoff().reflect(writer);
        // After `reflect`: the store holds the complete LIST when InitDone passes here.
        let events = events.inspect(move |e| {
            if matches!(e, Ok(watcher::Event::InitDone)) {
                ready_tx.send_replace(true);
            }
        });
        // Deleted objects trigger too: a Node going away must re-plan its group's proxies.
        let mut objects = std::pin::pin!(events.touched_objects());
        let mut txs = txs;
        while let Some(item) = objects.next().await {
            match item {
                // A controller that stopped (shutdown) dropped its trigger: nothing to tell it.
                Ok(obj) => {
                    for tx in &mut txs {
                        let _ = tx.send(obj.clone()).await;
                    }
                }
                // The watcher retries with backoff; the store keeps its last content meanwhile.
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
            }
        }
    };
    Watched { store, ready: Ready(ready_rx), triggers: rxs.into_iter().map(|rx| rx.map(Ok)).collect(), drive }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    type Feed<K> = mpsc::UnboundedSender<Result<Event<K>, watcher::Error>>;

    /// A watch fed by the test instead of an API server, driven in the background.
    fn fed<K>() -> (Feed<K>, (Store<K>, Ready))
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::unbounded();
        let w = watch(rx, 0);
        tokio::spawn(w.drive);
        (tx, (w.store, w.ready))
    }

    fn list<K>(feed: &Feed<K>, objs: Vec<K>) {
        feed.unbounded_send(Ok(Event::Init)).unwrap();
        for o in objs {
            feed.unbounded_send(Ok(Event::InitApply(o))).unwrap();
        }
        feed.unbounded_send(Ok(Event::InitDone)).unwrap();
    }

    fn node(name: &str) -> PartialObjectMeta<Node> {
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
            .unwrap()
    }

    struct Fixture {
        nodes: Feed<PartialObjectMeta<Node>>,
        pvs: Feed<PersistentVolume>,
        groups: Feed<ProxyGroup>,
        volumes: Feed<VolumeProxyGroup>,
        cache: Cache,
    }

    fn fixture() -> Fixture {
        let (nodes, n) = fed();
        let (pvs, p) = fed();
        let (groups, g) = fed();
        let (volumes, v) = fed();
        Fixture { nodes, pvs, groups, volumes, cache: Cache::new(n, p, g, v) }
    }

    /// Waits without a deadline being part of the result: the bound only keeps a broken build
    /// from hanging the suite.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f).await.expect("a view that never came")
    }

    /// A reconcile must not get a view while any store is still on its first LIST: it would see
    /// no Nodes (or no PVs) and plan to drain every proxy.
    #[tokio::test]
    async fn view_waits_for_every_store() {
        let f = fixture();
        let waiting = tokio::spawn({
            let cache = f.cache.clone();
            async move { cache.view().await }
        });
        list(&f.pvs, vec![]);
        list(&f.groups, vec![]);
        list(&f.volumes, vec![]);
        // The Node LIST has started but not finished.
        f.nodes.unbounded_send(Ok(Event::Init)).unwrap();
        f.nodes.unbounded_send(Ok(Event::InitApply(node("a")))).unwrap();
        // Let the watches take every event sent so far.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(f.cache.view().now_or_never().is_none(), "a view while the Node store was not ready");
        assert!(!waiting.is_finished(), "a view while the Node store was not ready");
        f.nodes.unbounded_send(Ok(Event::InitApply(node("b")))).unwrap();
        f.nodes.unbounded_send(Ok(Event::InitDone)).unwrap();
        let view = bounded(waiting).await.unwrap().unwrap();
        let mut names: Vec<_> = view.nodes.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    /// Every waiter is woken, not only the last one to wait (what `Store::wait_until_ready`
    /// gets wrong): here a reconcile of each controller waits at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_waiter_gets_its_view() {
        let f = fixture();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let cache = f.cache.clone();
                tokio::spawn(async move { cache.view().await.map(|v| v.groups.len()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await; // let them all wait first
        list(&f.nodes, vec![]);
        list(&f.pvs, vec![]);
        list(&f.volumes, vec![]);
        list(&f.groups, vec![]);
        for w in waiters {
            assert_eq!(bounded(w).await.unwrap().unwrap(), 0);
        }
    }

    /// After a watch restart the store keeps its old content until the new LIST is complete.
    #[tokio::test]
    async fn relist_never_shows_a_half_filled_store() {
        let f = fixture();
        list(&f.nodes, vec![node("a"), node("b")]);
        list(&f.pvs, vec![]);
        list(&f.groups, vec![]);
        list(&f.volumes, vec![]);
        assert_eq!(bounded(f.cache.view()).await.unwrap().nodes.len(), 2);
        f.nodes.unbounded_send(Ok(Event::Init)).unwrap();
        f.nodes.unbounded_send(Ok(Event::InitApply(node("a")))).unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let view = bounded(f.cache.view()).await.unwrap();
        assert_eq!(view.nodes.len(), 2, "the old content stays until the relist is done");
    }

    #[tokio::test]
    async fn a_watch_gone_before_its_list_is_an_error_not_an_empty_view() {
        let f = fixture();
        list(&f.pvs, vec![]);
        list(&f.groups, vec![]);
        list(&f.volumes, vec![]);
        drop(f.nodes); // the watch's stream ends: its drive returns and drops the flag
        assert!(matches!(bounded(f.cache.view()).await, Err(Error::CacheGone)));
    }
}
