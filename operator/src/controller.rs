//! The two controllers (ProxyGroup, VolumeProxyGroup), sharing one context and one shutdown.

use crate::apply::{self, Desired};
use crate::cache::{self, Cache};
use crate::crd::conditions::{self as c, Cond};
use crate::crd::{ProxyGroup, VolumeProxyGroup, VolumeProxyGroupStatus};
use crate::meta::{self, FIELD_MANAGER, PG_FINALIZER, VPG_FINALIZER};
use crate::metrics::Metrics;
use crate::proxygroup::build::{self, DrainState, Inputs, TlsMaterial};
use crate::{Error, tls, volume};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the proxies (and the operator) run in.
    pub namespace: String,
    /// Proxy image when a group does not set one.
    pub proxy_image: String,
    /// Identity for Events (the Pod name).
    pub instance: String,
    /// How often a healthy object is reconciled anyway.
    pub resync: Duration,
    /// How often a draining group re-checks its proxies.
    pub drain_poll: Duration,
    /// How often a group's status gets fresh cache figures from its proxies.
    pub stats_interval: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Key the per-volume tokens are derived from.
    pub token_key: Vec<u8>,
    /// Consecutive failures per object, for exponential backoff.
    pub failures: Backoff,
    /// Rate limit of progress Events.
    pub progress_events: Throttle,
    /// Watched Nodes, PVs and groups.
    pub cache: Cache,
    /// One lock per volume (`namespace/volume id`): see [`sync_volume`].
    pub volume_locks: KeyedLocks,
}

/// Capped exponential backoff per object: 1s, 2s, 4s, ... up to 5 minutes; reset on success.
/// The lock is never held across an await.
#[derive(Default)]
pub struct Backoff(std::sync::Mutex<BTreeMap<String, u32>>);

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(300);

    pub fn next(&self, key: &str) -> Duration {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Self::MAX)
    }

    pub fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// At most one progress Event (Draining, DrainBlocked) per proxy this often.
pub const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Lets a keyed action happen at most once per period. The lock is never held across an await.
#[derive(Default)]
pub struct Throttle(std::sync::Mutex<BTreeMap<String, Instant>>);

impl Throttle {
    /// True (and remembered) when `key` was not allowed within the last `every`.
    pub fn allow(&self, key: &str, every: Duration) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match m.get(key) {
            Some(last) if now.duration_since(*last) < every => false,
            _ => {
                m.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// One async lock per key. Reconciles of different objects that write one shared object take
/// its key's lock, so they run one at a time. A key's entry goes when nobody holds or awaits it.
#[derive(Default)]
pub struct KeyedLocks(std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Only the map holds these: no guard, no waiter, and no one can clone one now.
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Name of the Secret (in the operator's namespace) holding the volume-token key.
pub const TOKEN_KEY_SECRET: &str = "blockproxy-volume-token-key";

/// Reads or creates a Secret with one random key, returning its value. Losing a create race is
/// fine: the winner's value is read back.
async fn generated_secret(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    labels: BTreeMap<String, String>,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..2 {
        let existing = api.get_opt(name).await.map_err(|e| Error::Get { what: format!("Secret {name}"), source: e })?;
        if let Some(v) = existing.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(key)) {
            return Ok(String::from_utf8_lossy(&v.0).into_owned());
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let value = hex::encode(raw);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                labels: Some(labels.clone()),
                owner_references: owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([(key.to_owned(), value.clone())])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(value),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                return Err(Error::Apply { kind: "Secret".into(), name: name.to_owned(), source: e });
            }
        }
    }
    Err(Error::InvalidSpec(format!("Secret {name} has no key {key}")))
}

/// The key every volume token is derived from.
pub async fn load_token_key(client: &Client, ns: &str) -> Result<Vec<u8>, Error> {
    let labels = BTreeMap::from([(meta::MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())]);
    generated_secret(client, ns, TOKEN_KEY_SECRET, "key", labels, None).await.map(String::into_bytes)
}

/// Publishes an Event about `reference`. `pod` names the proxy Pod it concerns (in the
/// operator's namespace), set as the related object: the recorder folds events with the same
/// reason, action and objects into one series that keeps its first note, so events about
/// different proxies must differ in their related object.
async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
    pod: Option<&str>,
) {
    let secondary = pod.map(|name| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ctx.config.namespace.clone()),
        name: Some(name.to_owned()),
        ..Default::default()
    });
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary,
    };
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}

async fn list<K>(api: Api<K>, lp: &ListParams) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    api.list(lp)
        .await
        .map(|l| l.items)
        .map_err(|e| Error::List { kind: K::kind(&Default::default()).into_owned(), source: e })
}

/// Server-side apply of a status.
async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(drop)
        .map_err(|e| Error::Status { name: name.to_owned(), source: e })
}

// ---------------------------------------------------------------------------------------------
// ProxyGroup

#[instrument(skip(pg, ctx), fields(group = %pg.name_any()))]
pub async fn reconcile_pg(pg: Arc<ProxyGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["proxygroup"]).inc();
    let name = pg.name_any();
    let api: Api<ProxyGroup> = Api::all(ctx.client.clone());
    let res = finalizer(&api, PG_FINALIZER, pg, |event| async {
        match event {
            Finalizer::Apply(pg) => sync_pg(&pg, &ctx, false).await,
            Finalizer::Cleanup(pg) => sync_pg(&pg, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.duration.with_label_values(&["proxygroup"]).observe(start.elapsed().as_secs_f64());
    if res.is_ok() {
        ctx.failures.reset(&format!("pg/{name}"));
    }
    res
}

async fn sync_pg(pg: &ProxyGroup, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = ctx.config.namespace.as_str();
    let name = pg.name_any();
    let selector = meta::group_selector(&name);
    let lp = ListParams::default().labels(&selector);
    // Cluster-wide kinds come from the watch caches (no LIST of every Node and PV per reconcile).
    let cache::View { nodes, pvs, groups, volumes } = ctx.cache.view().await?;
    let vpgs: Vec<VolumeProxyGroup> = volumes.into_iter().filter(|v| v.metadata.deletion_timestamp.is_none()).collect();
    // The group's own Pods and PVCs are still LISTed (label-selected, in our namespace only, so
    // small): the plan deletes and prunes from them, and they must include what the previous
    // reconcile just created or deleted, which a watch cache may not have seen yet.
    let pods: Vec<Pod> = list(Api::namespaced(client.clone(), ns), &lp).await?;
    let pvcs: Vec<PersistentVolumeClaim> = list(Api::namespaced(client.clone(), ns), &lp).await?;
    let decisions = volume::decide(&vpgs, &groups);
    let volumes = volume::volumes_file(&name, &vpgs, &decisions, &ctx.token_key);

    let owner = pg.controller_owner_ref(&());
    let labels = meta::group_labels(&name, "proxy");
    let admin_token =
        generated_secret(client, ns, &meta::admin_secret_name(&name), "token", labels.clone(), owner.clone()).await?;
    let tls_material = match (pg.spec.tls.enabled, pg.spec.tls.certificate_secret.as_deref()) {
        (false, _) => None,
        (true, Some(user)) => read_tls(client, ns, user).await?,
        // Never issue new material while deleting: the drain must trust what the proxies serve.
        (true, None) if deleting => read_tls(client, ns, &meta::tls_secret_name(&name)).await?,
        (true, None) => Some(group_tls(ctx, &name).await?),
    };

    // References the API server cannot check: the Secrets must exist in our namespace.
    if !deleting {
        let problems = referenced_secret_problems(pg, ns, client, tls_material.is_some()).await?;
        if !problems.is_empty() {
            let message = problems.join("; ");
            publish(ctx, &pg.object_ref(&()), true, c::REASON_INVALID_SPEC, message.clone(), None).await;
            let mut status = pg.status.clone().unwrap_or_default();
            let conds = [
                Cond::new(c::READY, false, c::REASON_INVALID_SPEC, message.clone()),
                Cond::new(c::DEGRADED, true, c::REASON_INVALID_SPEC, message),
            ];
            status.conditions = c::merge(&status.conditions, &conds, pg.metadata.generation, Timestamp::now());
            status.observed_generation = pg.metadata.generation;
            let api: Api<ProxyGroup> = Api::all(client.clone());
            patch_status(&api, &name, serde_json::to_value(&status).map_err(Error::Serialize)?).await?;
            // Referenced Secrets are watched: their creation or change reconciles again at once.
            return Ok(Action::requeue(ctx.config.resync));
        }
    }

    let inputs = Inputs {
        group: pg,
        namespace: ns,
        default_image: &ctx.config.proxy_image,
        nodes: &nodes,
        pvs: &pvs,
        pods: &pods,
        pvcs: &pvcs,
        volumes: &volumes,
        admin_token: &admin_token,
        tls: tls_material.as_ref(),
        deleting,
    };
    let plan = build::plan(&inputs);
    let reference = pg.object_ref(&());
    for ev in &plan.events {
        publish(ctx, &reference, ev.warning, ev.reason, ev.note.clone(), ev.pod.as_deref()).await;
    }
    apply::apply_all(client, &plan.apply).await?;
    for r in &plan.rebind {
        // Point the PV's claimRef at the new claim (same name, new uid); the PV controller
        // then binds the two. resourceVersion goes: it named the old claim's.
        let patch = serde_json::json!({"spec": {"claimRef": {"uid": r.pvc_uid, "resourceVersion": null}}});
        Api::<PersistentVolume>::all(client.clone())
            .patch(&r.pv, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::Apply { kind: "PersistentVolume".into(), name: r.pv.clone(), source: e })?;
    }
    for (pod, _) in &plan.delete_pods {
        apply::delete_one::<Pod>(client, ns, pod).await?;
    }

    // Drain every leaving proxy; delete it only once nothing dirty is left.
    let skip_unreachable = pg.annotations().get(meta::SKIP_DRAIN_ANNOTATION).is_some_and(|v| v == "true");
    let server_name = tls::server_name(&meta::service_name(&name), ns);
    let mut drains = BTreeMap::new();
    let mut keep = plan.keep.clone();
    for t in &plan.drain {
        let state = match &t.address {
            // It never ran, so it never acknowledged a write: nothing to wait for.
            _ if t.never_started => DrainState::Done,
            None => DrainState::Blocked { why: "its Pod is not running".into() },
            Some(address) => {
                let target = tls::AdminTarget {
                    address,
                    token: &admin_token,
                    tls: tls_material.as_ref().map(|m| (m.ca_pem.as_str(), server_name.as_str())),
                };
                let result = if pg.spec.tls.enabled && tls_material.is_none() {
                    Err("no CA to verify the proxy's certificate (TLS Secret missing)".to_owned())
                } else {
                    tls::drain(&target).await
                };
                match result {
                    Ok(s) if s.done && s.dirty_bytes == 0 => {
                        ctx.metrics.drains.with_label_values(&["done"]).inc();
                        DrainState::Done
                    }
                    Ok(s) => {
                        ctx.metrics.drains.with_label_values(&["in_progress"]).inc();
                        DrainState::InProgress { dirty_bytes: s.dirty_bytes, flush_error: s.last_flush_error }
                    }
                    Err(why) => {
                        ctx.metrics.drains.with_label_values(&["failed"]).inc();
                        DrainState::Blocked { why }
                    }
                }
            }
        };
        let remove = match &state {
            DrainState::Done => {
                publish(
                    ctx,
                    &reference,
                    false,
                    "Drained",
                    if t.never_started {
                        format!(
                            "Proxy on node {} never started, so there is nothing to drain; removing its Pod and PVC (the PV is kept)",
                            t.node
                        )
                    } else {
                        format!(
                            "Proxy on node {} flushed every dirty block; removing its Pod and PVC (the PV is kept)",
                            t.node
                        )
                    },
                    t.pod.as_deref(),
                )
                .await;
                true
            }
            DrainState::Blocked { why } if skip_unreachable => {
                publish(
                    ctx,
                    &reference,
                    true,
                    "DrainSkipped",
                    format!(
                        "Proxy on node {} cannot be drained ({why}); removing it because of annotation {}",
                        t.node,
                        meta::SKIP_DRAIN_ANNOTATION
                    ),
                    t.pod.as_deref(),
                )
                .await;
                true
            }
            // Progress is polled every few seconds: its events at most once a minute per proxy
            // (the Draining condition has the current figures).
            DrainState::Blocked { why } => {
                if ctx.progress_events.allow(&format!("{name}/{}/blocked", t.node), PROGRESS_EVENT_EVERY) {
                    let note = format!("Proxy on node {} cannot be drained: {why}", t.node);
                    publish(ctx, &reference, true, "DrainBlocked", note, t.pod.as_deref()).await;
                }
                false
            }
            DrainState::InProgress { dirty_bytes, flush_error } => {
                if ctx.progress_events.allow(&format!("{name}/{}/draining", t.node), PROGRESS_EVENT_EVERY) {
                    let why = flush_error.as_ref().map(|e| format!("; flushing fails: {e}")).unwrap_or_default();
                    let note = format!("Proxy on node {} is draining: {dirty_bytes} dirty bytes left{why}", t.node);
                    publish(ctx, &reference, false, "Draining", note, t.pod.as_deref()).await;
                }
                false
            }
        };
        if remove {
            if let Some(p) = &t.pod {
                apply::delete_one::<Pod>(client, ns, p).await?;
                keep.remove(&(build::KIND_POD, p.clone()));
            }
            if let Some(c) = &t.pvc {
                apply::delete_one::<PersistentVolumeClaim>(client, ns, c).await?;
                keep.remove(&(build::KIND_PVC, c.clone()));
            }
        } else {
            drains.insert(t.node.clone(), state);
        }
    }
    if !deleting {
        apply::prune::<Secret>(client, ns, &selector, &keep).await?;
        apply::prune::<Service>(client, ns, &selector, &keep).await?;
        apply::prune::<Pod>(client, ns, &selector, &keep).await?;
        apply::prune::<PersistentVolumeClaim>(client, ns, &selector, &keep).await?;
    }

    let (mut status, conds) = build::status(&inputs, &plan, &drains);
    let tls_target = tls_material.as_ref().map(|m| (m.ca_pem.as_str(), server_name.as_str()));
    if !(pg.spec.tls.enabled && tls_target.is_none()) {
        let figures = cache_figures(&status, &admin_token, tls_target).await;
        build::add_cache_figures(&mut status, &figures);
    }
    let old = pg.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    status.conditions = c::merge(&old, &conds, pg.metadata.generation, Timestamp::now());
    let api: Api<ProxyGroup> = Api::all(client.clone());
    patch_status(&api, &name, serde_json::to_value(&status).map_err(Error::Serialize)?).await?;

    let pending = drains.values().filter(|s| matches!(s, DrainState::InProgress { .. })).count();
    let blocked: Vec<String> = drains
        .iter()
        .filter_map(|(n, s)| if let DrainState::Blocked { why } = s { Some(format!("{n}: {why}")) } else { None })
        .collect();
    if deleting {
        if pending > 0 {
            return Err(Error::DrainPending(pending));
        }
        if !blocked.is_empty() {
            return Err(Error::DrainBlocked(blocked.join("; ")));
        }
        info!("every proxy drained; releasing the group");
        return Ok(Action::await_change());
    }
    if pending > 0 || !blocked.is_empty() {
        return Ok(Action::requeue(ctx.config.drain_poll));
    }
    // The proxies' cache figures in the status are refreshed this often.
    Ok(Action::requeue(ctx.config.resync.min(ctx.config.stats_interval)))
}

/// Asks every ready proxy of `status` for its cache figures, all at once; a proxy that does not
/// answer is left without figures (its readiness is the health signal, not this call).
async fn cache_figures(
    status: &crate::crd::ProxyGroupStatus,
    admin_token: &str,
    tls: Option<(&str, &str)>,
) -> BTreeMap<String, build::CacheFigures> {
    let asks = status.proxies.iter().filter(|p| p.ready).filter_map(|p| {
        let address = p.address.as_deref()?;
        Some(async move {
            let target = tls::AdminTarget { address, token: admin_token, tls };
            match tls::report(&target).await {
                Ok(r) => Some((
                    p.node.clone(),
                    build::CacheFigures { cache_bytes: r.cache_bytes, dirty_bytes: r.dirty_bytes },
                )),
                Err(e) => {
                    tracing::debug!(node = %p.node, error = %e, "no cache figures from the proxy");
                    None
                }
            }
        })
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// The Secrets (in the operator's namespace) a group reads but does not own: its store
/// credentials and its user-provided TLS certificate.
fn referenced_secrets(pg: &ProxyGroup) -> Vec<&str> {
    let creds = pg.spec.object_store.credentials_secret.as_ref().map(|c| c.name.as_str());
    let tls = pg.spec.tls.certificate_secret.as_deref().filter(|_| pg.spec.tls.enabled);
    creds.into_iter().chain(tls).collect()
}

/// Problems with Secrets the group references (credentials, user TLS certificate).
async fn referenced_secret_problems(
    pg: &ProxyGroup,
    ns: &str,
    client: &Client,
    tls_ok: bool,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    if let Some(user) = pg.spec.tls.certificate_secret.as_deref().filter(|_| pg.spec.tls.enabled && !tls_ok) {
        problems.push(format!(
            "tls.certificateSecret {user:?} must exist in namespace {ns} with ca.crt, tls.crt and tls.key"
        ));
    }
    if let Some(creds) = &pg.spec.object_store.credentials_secret {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = api
            .get_opt(&creds.name)
            .await
            .map_err(|e| Error::Get { what: format!("Secret {}", creds.name), source: e })?;
        match secret {
            None => problems
                .push(format!("objectStore.credentialsSecret {:?} does not exist in namespace {ns}", creds.name)),
            Some(s) => {
                let data = s.data.unwrap_or_default();
                problems.extend(missing_credentials(pg.spec.object_store.provider, creds, |k| data.contains_key(k)));
            }
        }
    }
    Ok(problems)
}

/// The group's operator-issued CA and serving certificate: read back, or issued once.
async fn group_tls(ctx: &Context, group: &str) -> Result<TlsMaterial, Error> {
    let ns = &ctx.config.namespace;
    if let Some(m) = read_tls(&ctx.client, ns, &meta::tls_secret_name(group)).await? {
        return Ok(m);
    }
    // Issued here and written by the plan's apply, in this same reconcile.
    tls::issue(group, &tls::server_name(&meta::service_name(group), ns))
}

async fn read_tls(client: &Client, ns: &str, name: &str) -> Result<Option<TlsMaterial>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(s) = api.get_opt(name).await.map_err(|e| Error::Get { what: format!("Secret {name}"), source: e })? else {
        return Ok(None);
    };
    let data = s.data.unwrap_or_default();
    let get = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(match (get("ca.crt"), get("tls.crt"), get("tls.key")) {
        (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Some(TlsMaterial { ca_pem, cert_pem, key_pem }),
        _ => None,
    })
}

pub fn error_policy_pg(pg: Arc<ProxyGroup>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.with_label_values(&["proxygroup", err.metric_label()]).inc();
    match err {
        Error::DrainPending(_) | Error::DrainBlocked(_) => Action::requeue(ctx.config.drain_poll),
        _ => {
            let delay = ctx.failures.next(&format!("pg/{}", pg.name_any()));
            warn!(group = %pg.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VolumeProxyGroup

#[instrument(skip(vpg, ctx), fields(namespace = %vpg.namespace().unwrap_or_default(), vpg = %vpg.name_any()))]
pub async fn reconcile_vpg(vpg: Arc<VolumeProxyGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["volumeproxygroup"]).inc();
    let ns = vpg.namespace().unwrap_or_default();
    let name = vpg.name_any();
    let api: Api<VolumeProxyGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let res = finalizer(&api, VPG_FINALIZER, vpg, |event| async {
        match event {
            Finalizer::Apply(v) => sync_volume(&v, &ctx).await,
            Finalizer::Cleanup(v) => sync_volume(&v, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.duration.with_label_values(&["volumeproxygroup"]).observe(start.elapsed().as_secs_f64());
    if res.is_ok() {
        ctx.failures.reset(&format!("vpg/{ns}/{name}"));
    }
    res
}

/// Publishes (or unpublishes) the discovery ConfigMap and token Secret of this VPG's volume, and
/// sets the status of every association of that volume in the namespace.
///
/// Every association of the volume (in any group) writes the same ConfigMap, and only the
/// associations of a changed group are re-reconciled. Without the volume's lock, a reconcile of
/// another association that read the cache before the change could write after the changed
/// group's reconcile and leave the ConfigMap stale until the resync (seen in CI: a ready proxy
/// missing from the document for over a minute). Under the lock, taken before the cache is
/// read, the last write is always from the latest view.
async fn sync_volume(vpg: &VolumeProxyGroup, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = vpg.namespace().unwrap_or_default();
    let volume_id = vpg.spec.volume_id.clone();
    let _volume = ctx.volume_locks.lock(&format!("{ns}/{volume_id}")).await;
    let cache::View { groups, volumes, .. } = ctx.cache.view().await?;
    let live: Vec<VolumeProxyGroup> = volumes.into_iter().filter(|v| v.metadata.deletion_timestamp.is_none()).collect();
    let decisions = volume::decide(&live, &groups);
    let mut doc = volume::discovery(&ns, &volume_id, &live, &groups, &decisions);
    let waiting = match doc.as_mut() {
        Some(doc) => only_serving_endpoints(doc, &volume::volume_token(&ctx.token_key, &ns, &volume_id)).await,
        None => Vec::new(),
    };
    let cm_name = meta::discovery_config_map_name(&volume_id);
    let secret_name = meta::token_secret_name(&volume_id);
    let siblings: Vec<&VolumeProxyGroup> = live
        .iter()
        .filter(|v| v.namespace().as_deref() == Some(ns.as_str()) && v.spec.volume_id == volume_id)
        .collect();

    match &doc {
        Some(doc) => {
            // Owned (not controlled) by every association of the volume, so the garbage collector
            // also removes them when the last one goes.
            let owners = siblings.iter().filter_map(|v| v.owner_ref(&())).collect::<Vec<_>>();
            let metadata = |name: &str, component: &str| ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.clone()),
                labels: Some(meta::volume_labels(&volume_id, component)),
                owner_references: Some(owners.clone()),
                ..Default::default()
            };
            let cm = ConfigMap {
                metadata: metadata(&cm_name, "discovery"),
                data: Some(BTreeMap::from([(
                    blockproxy_protocol::DiscoveryDocument::CONFIGMAP_KEY.to_owned(),
                    doc.to_json_pretty(),
                )])),
                ..Default::default()
            };
            let token = volume::volume_token(&ctx.token_key, &ns, &volume_id);
            let secret = Secret {
                metadata: metadata(&secret_name, "token"),
                type_: Some("Opaque".into()),
                string_data: None,
                data: Some(BTreeMap::from([("token".to_owned(), k8s_openapi::ByteString(token.into_bytes()))])),
                ..Default::default()
            };
            apply::apply_all(client, &[Desired::ConfigMap(cm), Desired::Secret(secret)]).await?;
        }
        None => {
            apply::delete_one::<ConfigMap>(client, &ns, &cm_name).await?;
            apply::delete_one::<Secret>(client, &ns, &secret_name).await?;
        }
    }

    let published: Vec<String> =
        doc.as_ref().map(|d| d.groups.iter().map(|g| g.name.clone()).collect()).unwrap_or_default();
    let api: Api<VolumeProxyGroup> = Api::namespaced(client.clone(), &ns);
    for v in siblings {
        let decision = decisions.get(&(ns.clone(), v.name_any())).cloned().unwrap_or(Ok(()));
        let conds = match &decision {
            Ok(()) => vec![
                Cond::new(
                    c::ACCEPTED,
                    true,
                    c::REASON_ACCEPTED,
                    format!("served by ProxyGroup {:?}", v.spec.proxy_group),
                ),
                Cond::new(
                    c::PUBLISHED,
                    true,
                    c::REASON_PUBLISHED,
                    if waiting.is_empty() {
                        format!("listed in ConfigMap {cm_name}")
                    } else {
                        format!(
                            "listed in ConfigMap {cm_name}; proxies not serving the volume yet (left out until they do): {}",
                            waiting.join(", ")
                        )
                    },
                ),
            ],
            Err(r) => vec![
                Cond::new(c::ACCEPTED, false, r.reason, r.message.clone()),
                Cond::new(c::PUBLISHED, false, c::REASON_NOT_PUBLISHED, "the association is not accepted"),
            ],
        };
        if let Err(r) = &decision {
            let changed = !v
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|x| x.type_ == c::ACCEPTED && x.reason == r.reason));
            if changed {
                publish(ctx, &v.object_ref(&()), true, r.reason, r.message.clone(), None).await;
            }
        }
        let old = v.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let status = VolumeProxyGroupStatus {
            observed_generation: v.metadata.generation,
            discovery_config_map: doc.as_ref().map(|_| cm_name.clone()),
            token_secret: doc.as_ref().map(|_| secret_name.clone()),
            published_groups: published.clone(),
            conditions: c::merge(&old, &conds, v.metadata.generation, Timestamp::now()),
        };
        patch_status(&api, &v.name_any(), serde_json::to_value(&status).map_err(Error::Serialize)?).await?;
    }
    if !waiting.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// Leaves out of `doc` the endpoints whose proxy does not serve the volume yet (their volumes
/// file, a mounted Secret, is refreshed by the kubelet up to a minute after a change), so that
/// a sidecar never sends the volume to a proxy that answers "unknown volume" or "unknown token".
/// A proxy the operator cannot ask stays listed: clients fail over from it on their own.
/// Returns the proxies left out.
async fn only_serving_endpoints(doc: &mut blockproxy_protocol::DiscoveryDocument, token: &str) -> Vec<String> {
    let mut waiting = Vec::new();
    let volume = doc.volume_id.clone();
    for g in &mut doc.groups {
        let tls = match (g.scheme.as_str(), &g.ca_bundle, &g.server_name) {
            ("https", Some(ca), Some(name)) => Some((ca.clone(), name.clone())),
            _ => None,
        };
        let mut kept = Vec::new();
        for e in std::mem::take(&mut g.endpoints) {
            let target = tls::AdminTarget {
                address: &e.address,
                token,
                tls: tls.as_ref().map(|(ca, name)| (ca.as_str(), name.as_str())),
            };
            match tls::serves_volume(&target, &volume).await {
                Ok(false) => waiting.push(format!("{} ({})", e.address, g.name)),
                Ok(true) | Err(_) => kept.push(e),
            }
        }
        g.endpoints = kept;
    }
    waiting
}

pub fn error_policy_vpg(vpg: Arc<VolumeProxyGroup>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.with_label_values(&["volumeproxygroup", err.metric_label()]).inc();
    let delay = ctx.failures.next(&format!("vpg/{}/{}", vpg.namespace().unwrap_or_default(), vpg.name_any()));
    warn!(vpg = %vpg.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

// ---------------------------------------------------------------------------------------------
// Running both

/// Runs both controllers until `shutdown` resolves.
/// How long in-flight reconciles may run after shutdown was requested.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn run_controllers(
    client: Client,
    config: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let token_key = load_token_key(&client, &config.namespace).await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.instance.clone()) },
    );
    // One watch per cluster-wide kind feeds both its store (read by the reconcilers) and the
    // controllers it triggers; ProxyGroups and VolumeProxyGroups each trigger both controllers.
    let all = watcher::Config::default;
    let nodes = cache::watch(watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), all()), 1);
    let pvs = cache::watch(watcher(Api::<PersistentVolume>::all(client.clone()), all()), 1);
    let pgs = cache::watch(watcher(Api::<ProxyGroup>::all(client.clone()), all()), 2);
    let vpgs = cache::watch(watcher(Api::<VolumeProxyGroup>::all(client.clone()), all()), 2);
    let (node_store, mut node_triggers, node_watch) = (nodes.store, nodes.triggers, nodes.drive);
    let (pv_store, mut pv_triggers, pv_watch) = (pvs.store, pvs.triggers, pvs.drive);
    let (pg_store, mut pg_triggers, pg_watch) = (pgs.store, pgs.triggers, pgs.drive);
    let (vpg_store, mut vpg_triggers, vpg_watch) = (vpgs.store, vpgs.triggers, vpgs.drive);
    // Tasks of their own (dropping the set ends them): inlined, these futures made the
    // controllers' future too large for a thread's stack.
    let mut watches = tokio::task::JoinSet::new();
    watches.spawn(node_watch);
    watches.spawn(pv_watch);
    watches.spawn(pg_watch);
    watches.spawn(vpg_watch);
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        metrics,
        recorder,
        token_key,
        failures: Backoff::default(),
        progress_events: Throttle::default(),
        cache: Cache::new(
            (node_store, nodes.ready),
            (pv_store, pvs.ready),
            (pg_store.clone(), pgs.ready),
            (vpg_store.clone(), vpgs.ready),
        ),
        volume_locks: KeyedLocks::default(),
    });
    let shutdown = shutdown.shared();
    let ns = config.namespace.as_str();
    let owned = watcher::Config::default().labels(&format!("{}={}", meta::MANAGED_BY_LABEL, FIELD_MANAGER));

    let secret_groups = pg_store.clone();
    let groups = pg_store.clone();
    let all_groups = move || groups.state().iter().map(|g| ObjectRef::from_obj(&**g)).collect::<Vec<_>>();
    let (all_for_nodes, all_for_pvs) = (all_groups.clone(), all_groups);
    let pg_run = Controller::for_stream(pg_triggers.remove(0), pg_store)
        .owns(Api::<Pod>::namespaced(client.clone(), ns), owned.clone())
        .owns(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns), owned.clone())
        .watches_stream(node_triggers.remove(0), move |_| all_for_nodes())
        .watches_stream(pv_triggers.remove(0), move |_| all_for_pvs())
        .watches_stream(vpg_triggers.remove(0), |v: VolumeProxyGroup| {
            Some(ObjectRef::<ProxyGroup>::new(&v.spec.proxy_group))
        })
        // A created, changed or deleted credentials (or user TLS) Secret re-reconciles the groups
        // that reference it, instead of waiting for the resync.
        .watches(Api::<Secret>::namespaced(client.clone(), ns), watcher::Config::default(), move |s: Secret| {
            let name = s.name_any();
            secret_groups
                .state()
                .iter()
                .filter(|g| referenced_secrets(g).contains(&name.as_str()))
                .map(|g| ObjectRef::from_obj(&**g))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile_pg, error_policy_pg, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let volumes = vpg_store.clone();
    let vpg_run = Controller::for_stream(vpg_triggers.remove(0), vpg_store)
        .watches_stream(pg_triggers.remove(0), move |g: ProxyGroup| {
            let name = g.name_any();
            volumes
                .state()
                .iter()
                .filter(|v| v.spec.proxy_group == name)
                .map(|v| ObjectRef::from_obj(&**v))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile_vpg, error_policy_vpg, ctx)
        .for_each(|_| futures::future::ready(()));

    info!(namespace = %config.namespace, "controllers running");
    // Shutdown lets in-flight reconciles finish, but only for a bounded grace period: a reconcile
    // stuck on an unresponsive API call must not keep the process (and its Lease) alive forever.
    let grace = async {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = async { futures::join!(pg_run, vpg_run) } => info!("controllers stopped"),
        // The watches never end on their own (they retry); they stop with the controllers.
        _ = watches.join_next() => warn!("a watch stopped"),
        _ = grace => tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight reconciles did not finish within the grace period; stopping anyway"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_once_per_period_and_key() {
        let t = Throttle::default();
        assert!(t.allow("a", Duration::from_secs(60)));
        assert!(!t.allow("a", Duration::from_secs(60)));
        assert!(t.allow("b", Duration::from_secs(60)));
        assert!(t.allow("a", Duration::ZERO));
    }

    #[tokio::test]
    async fn keyed_locks_serialize_one_key_only_and_forget_released_keys() {
        let locks = KeyedLocks::default();
        let a = locks.lock("ns/vol1").await;
        // Another key is free while vol1 is held.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock("ns/vol2")).await;
        assert!(b.is_ok(), "a different key must not wait");
        drop(b);
        // The same key waits until the holder lets go.
        let mut second = std::pin::pin!(locks.lock("ns/vol1"));
        assert!(futures::poll!(second.as_mut()).is_pending(), "the same key must wait");
        drop(a);
        let again = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(again.is_ok(), "released");
        drop(again);
        let _c = locks.lock("ns/vol3").await;
        assert_eq!(locks.0.lock().unwrap().keys().collect::<Vec<_>>(), ["ns/vol3"], "released keys are forgotten");
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::default();
        let d: Vec<u64> = (0..12).map(|_| b.next("x").as_secs()).collect();
        assert_eq!(&d[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*d.last().unwrap(), 300);
        assert_eq!(b.next("y").as_secs(), 1);
        b.reset("x");
        assert_eq!(b.next("x").as_secs(), 1);
    }
}

/// What the provider needs from the credentials Secret that `has` says is missing.
fn missing_credentials(
    provider: crate::crd::ObjectStoreProvider,
    creds: &crate::crd::CredentialsSecretRef,
    has: impl Fn(&str) -> bool,
) -> Vec<String> {
    use crate::crd::ObjectStoreProvider as P;
    let name = &creds.name;
    let need = |keys: &[&String]| -> Vec<String> {
        keys.iter()
            .filter(|k| !has(k))
            .map(|k| format!("objectStore.credentialsSecret {name:?} has no key {k:?}"))
            .collect()
    };
    match provider {
        P::S3 | P::S3Compatible => need(&[&creds.access_key_id_key, &creds.secret_access_key_key]),
        P::Gcs => need(&[&creds.service_account_key_key]),
        P::Azure => {
            let mut out = need(&[&creds.account_name_key]);
            match (has(&creds.account_key_key), has(&creds.sas_token_key)) {
                (true, false) | (false, true) => {}
                (false, false) => out.push(format!(
                    "objectStore.credentialsSecret {name:?} needs key {:?} (the account key) or {:?} (a SAS token)",
                    creds.account_key_key, creds.sas_token_key
                )),
                (true, true) => out.push(format!(
                    "objectStore.credentialsSecret {name:?} holds both {:?} and {:?}; keep one",
                    creds.account_key_key, creds.sas_token_key
                )),
            }
            out
        }
        P::File => vec![],
    }
}

#[cfg(test)]
mod credentials_tests {
    use super::missing_credentials;
    use crate::crd::{CredentialsSecretRef, ObjectStoreProvider as P};

    #[test]
    fn each_provider_needs_its_own_secret_keys() {
        let creds: CredentialsSecretRef = serde_json::from_value(serde_json::json!({"name": "s"})).unwrap();
        let with = |keys: &'static [&'static str]| move |k: &str| keys.contains(&k);
        assert!(missing_credentials(P::S3Compatible, &creds, with(&["accessKeyId", "secretAccessKey"])).is_empty());
        assert_eq!(missing_credentials(P::S3, &creds, with(&["accessKeyId"])).len(), 1);
        assert!(missing_credentials(P::Gcs, &creds, with(&["serviceAccount.json"])).is_empty());
        assert_eq!(missing_credentials(P::Gcs, &creds, with(&["accessKeyId"])).len(), 1);
        assert!(missing_credentials(P::Azure, &creds, with(&["accountName", "sasToken"])).is_empty());
        assert!(missing_credentials(P::Azure, &creds, with(&["accountName", "accountKey"])).is_empty());
        let none = missing_credentials(P::Azure, &creds, with(&["accountName"]));
        assert!(none.len() == 1 && none[0].contains("or"), "{none:?}");
        let both = missing_credentials(P::Azure, &creds, with(&["accountName", "accountKey", "sasToken"]));
        assert!(both.len() == 1 && both[0].contains("keep one"), "{both:?}");
        assert_eq!(missing_credentials(P::Azure, &creds, with(&["accountKey"])).len(), 1);
    }
}
