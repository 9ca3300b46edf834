//! Shared fixtures of the integration tests: a real control plane with the CRDs, cluster objects
//! shaped like an NVMe cluster's, and the operator run in-process.
#![allow(dead_code)]

use blockproxy_operator::controller::Config;
use blockproxy_operator::crd::{ProxyGroup, ProxyGroupSpec, VolumeProxyGroup, VolumeProxyGroupSpec};
use blockproxy_operator::lease::LeaseConfig;
use blockproxy_operator::metrics::Metrics;
use blockproxy_operator::run::{RunError, Settings};
use blockproxy_testenv::ControlPlane;
use blockproxy_testenv::anyhow::{self, Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const NS: &str = "blockproxy-system";
pub const WAIT: Duration = Duration::from_secs(60);
pub const POLL: Duration = Duration::from_millis(200);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A control plane with the CRDs installed and the operator's namespace created.
pub async fn control_plane() -> Result<ControlPlane> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(root().join("crds")).await?;
    ensure_namespace(&cp.client(), NS).await?;
    store_credentials(&cp.client()).await?;
    Ok(cp)
}

/// The Secret the fixture's groups reference for object-store keys.
pub async fn store_credentials(client: &Client) -> Result<()> {
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "store-credentials"},
        "stringData": {"accessKeyId": "minioadmin", "secretAccessKey": "minioadmin"},
    }))?;
    match Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &s)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn config(identity: &str) -> Config {
    Config {
        namespace: NS.into(),
        proxy_image: "blockproxy:test".into(),
        instance: identity.into(),
        resync: Duration::from_secs(30),
        drain_poll: Duration::from_millis(300),
        stats_interval: Duration::from_secs(30),
    }
}

/// The operator running in this process.
pub struct Operator {
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Operator {
    pub fn start(client: Client, identity: &str, leader_election: bool) -> Self {
        Self::start_with(client, config(identity), leader_election)
    }

    /// With other controller settings (for example a resync too long to hide a missing watch).
    pub fn start_with(client: Client, controllers: Config, leader_election: bool) -> Self {
        let identity = controllers.instance.clone();
        let identity = identity.as_str();
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "blockproxy_operator=info,kube_runtime=info".into());
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
        let metrics = Metrics::default();
        let (tx, rx) = oneshot::channel::<()>();
        let settings = Settings {
            controllers,
            lease: leader_election.then(|| LeaseConfig {
                namespace: NS.into(),
                name: "blockproxy-operator".into(),
                identity: identity.into(),
                duration: Duration::from_secs(4),
                renew: Duration::from_millis(500),
            }),
            admin_addr: None,
            webhook: None,
        };
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            blockproxy_operator::run::run(client, settings, m, async {
                let _ = rx.await;
            })
            .await
        });
        Self { metrics, stop: Some(tx), task }
    }

    pub fn reconciles(&self) -> u64 {
        ["proxygroup", "volumeproxygroup"].iter().map(|c| self.metrics.reconciles.with_label_values(&[c]).get()).sum()
    }

    /// Errors counted so far, as `controller/label=count` strings.
    pub fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for fam in self.metrics.registry.gather() {
            if fam.name() != "blockproxy_operator_reconcile_errors_total" {
                continue;
            }
            for m in fam.get_metric() {
                let labels: Vec<String> = m.get_label().iter().map(|l| l.value().to_owned()).collect();
                out.push(format!("{}={}", labels.join("/"), m.get_counter().get_value()));
            }
        }
        out
    }

    /// Graceful stop: in-flight reconciles finish, the Lease is released.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(90), self.task).await.context("operator did not stop")??;
        if started.elapsed() > Duration::from_secs(10) {
            eprintln!("slow graceful stop: {:?}", started.elapsed());
        }
        res.map_err(|e| anyhow!(e))
    }

    /// Crash: the task is dropped wherever it is.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub async fn storage_class(client: &Client, name: &str) -> Result<()> {
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": name},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }))?;
    Api::<StorageClass>::all(client.clone()).create(&PostParams::default(), &sc).await?;
    Ok(())
}

pub async fn node(client: &Client, name: &str) -> Result<Node> {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
    }))?;
    Ok(Api::<Node>::all(client.clone()).create(&PostParams::default(), &n).await?)
}

/// A local NVMe PV pinned to `node`, the way the local static provisioner creates them.
pub async fn local_pv(client: &Client, name: &str, node: &str, sc: &str) -> Result<PersistentVolume> {
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "100Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": sc,
            "volumeMode": "Filesystem",
            "local": {"path": "/mnt/disks/nvme0n1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        },
    }))?;
    Ok(Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &pv).await?)
}

/// `n_nvme` nodes with a local PV of `sc` and `n_plain` nodes without.
pub async fn nvme_cluster(client: &Client, prefix: &str, sc: &str, n_nvme: usize, n_plain: usize) -> Result<()> {
    storage_class(client, sc).await?;
    for i in 0..n_nvme {
        let n = format!("{prefix}-nvme-{i}");
        node(client, &n).await?;
        local_pv(client, &format!("{n}-pv"), &n, sc).await?;
    }
    for i in 0..n_plain {
        node(client, &format!("{prefix}-plain-{i}")).await?;
    }
    Ok(())
}

pub fn group_spec(sc: &str, port: i32, allowed: &[&str]) -> Result<ProxyGroupSpec> {
    Ok(serde_json::from_value(json!({
        "providerCode": "minio",
        "regionCode": "dc1",
        "placement": {"storageClassName": sc},
        "objectStore": {
            "provider": "s3Compatible",
            "endpoint": "http://minio.storage.svc:9000",
            "region": "us-east-1",
            "pathStyle": true,
            "credentialsSecret": {"name": "store-credentials"},
        },
        "port": port,
        "tls": {"enabled": false},
        "allowedNamespaces": allowed,
    }))?)
}

pub async fn create_group(client: &Client, name: &str, spec: ProxyGroupSpec) -> Result<ProxyGroup> {
    let api: Api<ProxyGroup> = Api::all(client.clone());
    Ok(api.create(&PostParams::default(), &ProxyGroup::new(name, spec)).await?)
}

pub async fn create_vpg(
    client: &Client,
    ns: &str,
    name: &str,
    volume: &str,
    group: &str,
    bucket: &str,
) -> Result<VolumeProxyGroup> {
    ensure_namespace(client, ns).await?;
    let api: Api<VolumeProxyGroup> = Api::namespaced(client.clone(), ns);
    let spec = VolumeProxyGroupSpec {
        volume_id: volume.into(),
        proxy_group: group.into(),
        bucket: bucket.into(),
        prefix: "vols/a".into(),
        block_size: "4Mi".into(),
        metadata_ttl: "1s".into(),
    };
    Ok(api.create(&PostParams::default(), &VolumeProxyGroup::new(name, spec)).await?)
}

pub async fn group_pods(client: &Client, group: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let lp = kube::api::ListParams::default().labels(&format!("blockproxy.io/proxy-group={group}"));
    Ok(api.list(&lp).await?.items)
}

pub fn node_of(p: &impl ResourceExt) -> String {
    p.labels().get("blockproxy.io/node").cloned().unwrap_or_default()
}

/// What the kubelet would report: Running, Ready, with this IP.
pub async fn mark_ready(client: &Client, pod: &str, ip: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("marking {pod} ready"))?;
    Ok(())
}

/// The name the operator publishes a ready proxy Pod by: `<hostname>.<subdomain>.<ns>.svc:port`
/// from the Pod's spec, below the group's headless Service (ADR 0009), not its IP.
pub fn stable_address(pod: &Pod, port: u16) -> Result<String> {
    let spec = pod.spec.as_ref();
    let host = spec.and_then(|s| s.hostname.clone()).unwrap_or_default();
    let sub = spec.and_then(|s| s.subdomain.clone()).unwrap_or_default();
    ensure(!host.is_empty() && !sub.is_empty(), || {
        format!("the proxy Pod has no hostname/subdomain: {host:?} {sub:?}")
    })?;
    Ok(format!("{host}.{sub}.{NS}.svc:{port}"))
}

/// `eventually` with the suite's bounds.
pub async fn wait<T, F, Fut>(what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    blockproxy_testenv::eventually(WAIT, POLL, check).await.with_context(|| format!("waiting for {what}"))
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond { Ok(()) } else { Err(anyhow::anyhow!(msg())) }
}
