//! The operator's view of the cluster-wide kinds (Nodes, PVs, ProxyGroups, VolumeProxyGroups):
//! one watch per kind keeps a reflector store, and the same watch triggers the controllers. A
//! reconcile reads these stores instead of LISTing every Node and PV of a large cluster.

use crate::Error;
use crate::crd::{ProxyGroup, VolumeProxyGroup};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use std::fmt::Debug;
use std::future::Future;

/// Objects a trigger may hold before the watch waits for its controller to take them.
const TRIGGER_BUFFER: usize = 1024;

/// The stores the reconcilers read. The stores are private: the only way to read them is
/// [`Cache::view`], which waits until every store holds a complete initial LIST, so a reconcile
/// can never see an empty cluster and act on it (drain every proxy, unpublish every volume).
#[derive(Clone)]
pub struct Cache {
    nodes: Store<Node>,
    pvs: Store<PersistentVolume>,
    groups: Store<ProxyGroup>,
    volumes: Store<VolumeProxyGroup>,
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
        nodes: Store<Node>,
        pvs: Store<PersistentVolume>,
        groups: Store<ProxyGroup>,
        volumes: Store<VolumeProxyGroup>,
    ) -> Self {
        Self { nodes, pvs, groups, volumes }
    }

    /// Waits until every store is ready, then copies them. After a watch restarts, a store keeps
    /// its old content until the new LIST is complete (kube swaps it in at once), so a ready
    /// store is never seen half-filled.
    pub async fn view(&self) -> Result<View, Error> {
        let (n, p, g, v) = futures::join!(
            self.nodes.wait_until_ready(),
            self.pvs.wait_until_ready(),
            self.groups.wait_until_ready(),
            self.volumes.wait_until_ready(),
        );
        n.and(p).and(g).and(v).map_err(|_| Error::CacheGone)?;
        Ok(View {
            nodes: copy(self.nodes.state()),
            pvs: copy(self.pvs.state()),
            groups: copy(self.groups.state()),
            volumes: copy(self.volumes.state()),
        })
    }
}

fn copy<K: Clone>(objects: Vec<std::sync::Arc<K>>) -> Vec<K> {
    objects.into_iter().map(|o| (*o).clone()).collect()
}

/// One watch of `api`: returns its store, `triggers` streams that each see every object the
/// watch applies or deletes (for `Controller::for_stream` / `watches_stream`), and the future
/// that drives the watch. That future must run on its own (not only through a controller): a
/// trigger nobody reads would otherwise stop the store from filling.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    triggers: usize,
) -> (Store<K>, Vec<impl Stream<Item = Result<K, watcher::Error>> + Send + 'static>, impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..triggers).map(|_| mpsc::channel::<K>(TRIGGER_BUFFER)).unzip();
    let kind = K::kind(&()).into_owned();
    let drive = async move {
        // Deleted objects trigger too: a Node going away must re-plan its group's proxies.
        let mut objects = std::pin::pin!(watcher(api, config).default_backoff().reflect(writer).touched_objects());
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
    (reader, rxs.into_iter().map(|rx| rx.map(Ok)).collect(), drive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use kube::runtime::watcher::Event;

    fn ready<K>(w: &mut reflector::store::Writer<K>, objs: Vec<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        w.apply_watcher_event(&Event::Init);
        for o in objs {
            w.apply_watcher_event(&Event::InitApply(o));
        }
        w.apply_watcher_event(&Event::InitDone);
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    /// A reconcile must not get a view while any store is still on its first LIST: it would see
    /// no Nodes (or no PVs) and plan to drain every proxy.
    #[test]
    fn view_waits_for_every_store() {
        let (nodes, mut nw) = reflector::store::<Node>();
        let (pvs, mut pw) = reflector::store::<PersistentVolume>();
        let (groups, mut gw) = reflector::store::<ProxyGroup>();
        let (volumes, mut vw) = reflector::store::<VolumeProxyGroup>();
        let cache = Cache::new(nodes, pvs, groups, volumes);
        assert!(cache.view().now_or_never().is_none(), "a view before any store was ready");
        ready(&mut pw, vec![]);
        ready(&mut gw, vec![]);
        ready(&mut vw, vec![]);
        // The Node LIST has started but not finished: its objects must not be visible yet.
        nw.apply_watcher_event(&Event::Init);
        nw.apply_watcher_event(&Event::InitApply(node("a")));
        assert!(cache.view().now_or_never().is_none(), "a view while the Node store was not ready");
        nw.apply_watcher_event(&Event::InitApply(node("b")));
        nw.apply_watcher_event(&Event::InitDone);
        let view = cache.view().now_or_never().expect("every store is ready").unwrap();
        let mut names: Vec<_> = view.nodes.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    /// After a watch restart the store keeps its old content until the new LIST is complete.
    #[test]
    fn relist_never_shows_a_half_filled_store() {
        let (nodes, mut nw) = reflector::store::<Node>();
        let (pvs, mut pw) = reflector::store::<PersistentVolume>();
        let (groups, mut gw) = reflector::store::<ProxyGroup>();
        let (volumes, mut vw) = reflector::store::<VolumeProxyGroup>();
        let cache = Cache::new(nodes, pvs, groups, volumes);
        ready(&mut nw, vec![node("a"), node("b")]);
        ready(&mut pw, vec![]);
        ready(&mut gw, vec![]);
        ready(&mut vw, vec![]);
        nw.apply_watcher_event(&Event::Init);
        nw.apply_watcher_event(&Event::InitApply(node("a")));
        let view = cache.view().now_or_never().expect("ready").unwrap();
        assert_eq!(view.nodes.len(), 2, "the old content stays until the relist is done");
    }

    #[test]
    fn a_dropped_watch_is_an_error_not_an_empty_view() {
        let (nodes, nw) = reflector::store::<Node>();
        let (pvs, mut pw) = reflector::store::<PersistentVolume>();
        let (groups, mut gw) = reflector::store::<ProxyGroup>();
        let (volumes, mut vw) = reflector::store::<VolumeProxyGroup>();
        let cache = Cache::new(nodes, pvs, groups, volumes);
        ready(&mut pw, vec![]);
        ready(&mut gw, vec![]);
        ready(&mut vw, vec![]);
        drop(nw);
        let res = cache.view().now_or_never().expect("a dropped writer ends the wait");
        assert!(matches!(res, Err(Error::CacheGone)));
    }
}
