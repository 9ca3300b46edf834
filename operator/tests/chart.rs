//! The Helm chart: lint, render, install into the real API server, and least-privilege RBAC that
//! is exactly enough for the operator.

mod common;

use blockproxy_operator::crd::{ProxyGroup, VolumeProxyGroup};
use blockproxy_testenv::anyhow::{Result, anyhow};
use blockproxy_testenv::{ControlPlane, Helm};
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn chart() -> String {
    root().join("charts/blockproxy").display().to_string()
}

fn kinds(rendered: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for doc in rendered.split("\n---") {
        let v: serde_yaml::Value = serde_yaml::from_str(doc)?;
        if v.is_null() {
            continue;
        }
        out.push((
            v["kind"].as_str().unwrap_or_default().to_owned(),
            v["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    Ok(out)
}

#[tokio::test]
async fn chart_lints_and_renders_with_default_and_custom_values() -> Result<()> {
    let helm = Helm::new()?;
    let lint = helm.run(["lint", "--strict", &chart()]).await?;
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);

    let default = helm.run(["template", "bp", &chart(), "--namespace", "blockproxy-system"]).await?.stdout;
    let k = kinds(&default)?;
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]
    {
        assert!(k.iter().any(|(x, _)| x == kind), "{kind} missing from {k:?}");
    }
    assert!(!k.iter().any(|(x, _)| x == "ServiceMonitor"));
    assert!(default.contains("image: ghcr.io/blockproxy/blockproxy:0.1.0"));
    assert!(default.contains("app.kubernetes.io/name: blockproxy"));
    assert!(default.contains("replicas: 2"));

    let custom = helm
        .run([
            "template",
            "bp",
            &chart(),
            "--namespace",
            "ops",
            "--set",
            "image.tag=v9,replicaCount=1,leaderElection.enabled=false,logFormat=text",
            "--set",
            "metrics.serviceMonitor.enabled=true,proxyImage=registry.local/blockproxy:v9",
        ])
        .await?
        .stdout;
    assert!(kinds(&custom)?.iter().any(|(x, _)| x == "ServiceMonitor"));
    assert!(custom.contains("blockproxy:v9") && custom.contains("replicas: 1"));
    assert!(
        custom.contains("value: registry.local/blockproxy:v9")
            || custom.contains("value: \"registry.local/blockproxy:v9\"")
    );
    assert!(custom.contains("namespace: ops"));
    assert!(!default.contains("BLOCKPROXY_SIDECAR_MEMORY_LIMIT"), "no sidecar limit unless asked for");
    let sized = helm
        .run([
            "template",
            "bp",
            &chart(),
            "--set",
            "sidecarResources.limits.memory=256Mi,sidecarResources.requests.cpu=100m",
        ])
        .await?
        .stdout;
    for env in [
        "name: BLOCKPROXY_SIDECAR_MEMORY_LIMIT\n              value: \"256Mi\"",
        "name: BLOCKPROXY_SIDECAR_CPU_REQUEST\n              value: \"100m\"",
    ] {
        assert!(sized.contains(env), "{env} missing from the operator's env");
    }
    assert!(!sized.contains("BLOCKPROXY_SIDECAR_CPU_LIMIT"), "only the values set become flags");
    let no_webhook = helm.run(["template", "bp", &chart(), "--set", "webhook.enabled=false"]).await?.stdout;
    assert!(!kinds(&no_webhook)?.iter().any(|(x, _)| x == "MutatingWebhookConfiguration"));

    let bad = helm.run(["template", "bp", &chart(), "--set", "logFormat=xml"]).await;
    let err = format!("{:#}", bad.expect_err("values.schema.json must refuse logFormat=xml"));
    assert!(err.contains("logFormat"), "{err}");
    Ok(())
}

/// `csi.enabled` adds the CSIDriver the kubelet needs for the inline volume (ephemeral, with the
/// pod's info) and the privileged node plugin with the kubelet's directory shared both ways.
#[tokio::test]
async fn the_csi_node_plugin_renders_only_when_enabled() -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::storage::v1::CSIDriver;
    let helm = Helm::new()?;
    let default = helm.run(["template", "bp", &chart()]).await?.stdout;
    assert!(!kinds(&default)?.iter().any(|(x, _)| x == "CSIDriver" || x == "DaemonSet"), "the plugin is opt-in");
    let lint = helm.run(["lint", "--strict", &chart(), "--set", "csi.enabled=true"]).await?;
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);
    let on =
        helm.run(["template", "bp", &chart(), "--set", "csi.enabled=true,csi.kubeletDir=/data/kubelet"]).await?.stdout;
    let docs: Vec<serde_yaml::Value> = on.split("\n---").map(serde_yaml::from_str).collect::<Result<_, _>>()?;
    let find = |kind: &str| {
        docs.iter().find(|d| d["kind"].as_str() == Some(kind)).cloned().ok_or_else(|| anyhow!("no {kind}"))
    };
    let driver: CSIDriver = serde_yaml::from_value(find("CSIDriver")?)?;
    assert_eq!(driver.metadata.name.as_deref(), Some(blockproxy_protocol::CSI_DRIVER_NAME));
    assert_eq!(driver.spec.pod_info_on_mount, Some(true));
    assert_eq!(driver.spec.volume_lifecycle_modes, Some(vec!["Ephemeral".to_owned()]));
    assert_eq!(driver.spec.attach_required, Some(false));
    let ds: DaemonSet = serde_yaml::from_value(find("DaemonSet")?)?;
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.clone()).ok_or_else(|| anyhow!("no pod spec"))?;
    let c = &pod.containers[0];
    assert_eq!(c.command.as_deref(), Some(&["blockproxy-csi".to_owned()][..]));
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--kubelet-dir=/data/kubelet"), "{args}");
    assert!(args.contains("--registration-socket=/data/kubelet/plugins_registry/"), "{args}");
    let kubelet = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/data/kubelet")
        .ok_or_else(|| anyhow!("no kubelet dir"))?;
    assert_eq!(kubelet.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(c.volume_mounts.iter().flatten().any(|m| m.mount_path == "/dev/fuse"));
    assert!(c.env.iter().flatten().any(|e| e.name == "NODE_NAME"), "the node id comes from spec.nodeName");
    Ok(())
}

/// The real API server accepts the plugin's objects as the chart renders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_node_plugin_installs_into_a_real_api_server() -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::storage::v1::CSIDriver;
    let cp = ControlPlane::start().await?;
    let helm = Helm::for_control_plane(&cp)?;
    helm.run([
        "install",
        "bp",
        &chart(),
        "--namespace",
        "csi-system",
        "--create-namespace",
        "--set",
        "csi.enabled=true",
    ])
    .await?;
    let driver = Api::<CSIDriver>::all(cp.client()).get(blockproxy_protocol::CSI_DRIVER_NAME).await?;
    assert_eq!(driver.spec.pod_info_on_mount, Some(true));
    let ds = Api::<DaemonSet>::namespaced(cp.client(), "csi-system").get("bp-blockproxy-csi-node").await?;
    let pod = ds.spec.and_then(|s| s.template.spec).ok_or_else(|| anyhow!("no pod spec"))?;
    assert_eq!(pod.automount_service_account_token, Some(false), "the plugin needs no API access");
    Ok(())
}

async fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => Err(anyhow!("{what}: expected 403, got {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_and_its_rbac_is_enough_and_no_more() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.client();
    let helm = Helm::for_control_plane(&cp)?;
    helm.run(["install", "bp", &chart(), "--namespace", NS, "--create-namespace"]).await?;
    Api::<Deployment>::namespaced(admin.clone(), NS).get("bp-blockproxy").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in blockproxy_operator::run::CRD_NAMES {
        crds.get(name).await?;
    }

    // Cluster objects the platform team owns.
    nvme_cluster(&admin, "c", "local-nvme", 2, 1).await?;
    store_credentials(&admin).await?;
    ensure_namespace(&admin, "team-a").await?;

    // The operator runs as the chart's ServiceAccount, with leader election on.
    let sa = cp.client_for_service_account(NS, "bp-blockproxy").await?;
    let op = Operator::start(sa.clone(), "bp-blockproxy-0", true);
    let mut spec = group_spec("local-nvme", 8443, &["team-a"])?;
    spec.tls.enabled = true;
    let groups: Api<ProxyGroup> = Api::all(admin.clone());
    wait("the CRD to serve", || async {
        match groups.create(&PostParams::default(), &ProxyGroup::new("eu", spec.clone())).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    create_vpg(&admin, "team-a", "data", "vol1", "eu", "bucket-1").await?;
    let pods = wait("2 proxies", || async {
        let pods = group_pods(&admin, "eu").await?;
        ensure(pods.len() == 2, || format!("{} pods; errors {:?}", pods.len(), op.errors()))?;
        Ok(pods)
    })
    .await?;
    mark_ready(&admin, &pods[0].name_any(), "10.2.0.1").await?;
    let stable = stable_address(&pods[0], 8443)?;
    wait("published discovery with the CA bundle", || async {
        let cm = Api::<ConfigMap>::namespaced(admin.clone(), "team-a").get_opt("blockproxy-discovery-vol1").await?;
        let json = cm.and_then(|c| c.data?.remove("discovery.json")).unwrap_or_default();
        ensure(json.contains(&format!("\"{stable}\"")) && json.contains("BEGIN CERTIFICATE"), || {
            format!("{json}; errors {:?}", op.errors())
        })
    })
    .await?;
    Api::<Secret>::namespaced(admin.clone(), "team-a").get("blockproxy-token-vol1").await?;
    Api::<Secret>::namespaced(admin.clone(), NS).get("eu-tls").await?;
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    wait("Events about the group", || async {
        let evs = events.list(&ListParams::default()).await?.items;
        ensure(evs.iter().any(|e| e.reason.as_deref() == Some("ProxyCreated")), || "no Event".into())
    })
    .await?;

    // Unpublishing and deletion work under the same permissions.
    Api::<VolumeProxyGroup>::namespaced(admin.clone(), "team-a").delete("data", &DeleteParams::default()).await?;
    wait("the discovery ConfigMap to go", || async {
        let cm = Api::<ConfigMap>::namespaced(admin.clone(), "team-a").get_opt("blockproxy-discovery-vol1").await?;
        ensure(cm.is_none(), || "still there".into())
    })
    .await?;
    let skip = json!({"metadata": {"annotations": {"blockproxy.io/skip-unreachable-drain": "true"}}});
    groups.patch("eu", &PatchParams::default(), &Patch::Merge(&skip)).await?;
    // One proxy is reachable in name only (10.2.0.1 does not answer); the other never started.
    groups.delete("eu", &DeleteParams::default()).await?;
    wait("the group to go", || async { ensure(groups.get_opt("eu").await?.is_none(), || "still there".into()) })
        .await?;
    // Transient errors (optimistic-concurrency conflicts, drains) may happen; a 403 may not.
    let errors = op.errors();
    assert!(!errors.iter().any(|e| e.contains("forbidden")), "403s under the chart's RBAC: {errors:?}");
    op.stop().await?;

    // And no more than needed.
    forbidden("read a workload Secret", Api::<Secret>::namespaced(sa.clone(), "team-a").get("anything").await).await?;
    forbidden("list Secrets cluster-wide", Api::<Secret>::all(sa.clone()).list(&ListParams::default()).await).await?;
    forbidden(
        "list workload ConfigMaps",
        Api::<ConfigMap>::namespaced(sa.clone(), "team-a").list(&ListParams::default()).await,
    )
    .await?;
    forbidden(
        "delete a PV",
        Api::<PersistentVolume>::all(sa.clone()).delete("c-nvme-0-pv", &DeleteParams::default()).await,
    )
    .await?;
    let label = json!({"metadata": {"labels": {"x": "y"}}});
    forbidden(
        "change a Node",
        Api::<Node>::all(sa.clone()).patch("c-nvme-0", &PatchParams::default(), &Patch::Merge(&label)).await,
    )
    .await?;
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    )?;
    forbidden(
        "create a Pod outside its namespace",
        Api::<Pod>::namespaced(sa.clone(), "team-a").create(&PostParams::default(), &pod).await,
    )
    .await?;
    forbidden(
        "delete a CRD",
        Api::<CustomResourceDefinition>::all(sa.clone())
            .delete("proxygroups.blockproxy.io", &DeleteParams::default())
            .await,
    )
    .await?;
    forbidden("read other CRDs", Api::<CustomResourceDefinition>::all(sa.clone()).list(&ListParams::default()).await)
        .await?;

    // Secrets and ConfigMaps it did not create: RBAC lets it create, patch and delete them by
    // name anywhere, the chart's ValidatingAdmissionPolicy refuses all but its own.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "app-secret"}, "stringData": {"k": "v"}}))?;
    Api::<Secret>::namespaced(admin.clone(), "team-a").create(&PostParams::default(), &secret).await?;
    let config: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "app-config"}, "data": {"k": "v"}}))?;
    Api::<ConfigMap>::namespaced(admin.clone(), "team-a").create(&PostParams::default(), &config).await?;
    let secrets = Api::<Secret>::namespaced(sa.clone(), "team-a");
    let configs = Api::<ConfigMap>::namespaced(sa.clone(), "team-a");
    let owned = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "blockproxy-operator"}}});
    // The policy takes effect once the API server has loaded it.
    wait("the admission policy to refuse a foreign Secret patch", || async {
        match secrets.patch("app-secret", &PatchParams::default(), &Patch::Merge(&owned)).await {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            other => Err(anyhow!("patching a foreign Secret: {other:?}")),
        }
    })
    .await?;
    forbidden("delete a foreign Secret", secrets.delete("app-secret", &DeleteParams::default()).await).await?;
    forbidden(
        "patch a foreign ConfigMap",
        configs.patch("app-config", &PatchParams::default(), &Patch::Merge(&owned)).await,
    )
    .await?;
    forbidden("delete a foreign ConfigMap", configs.delete("app-config", &DeleteParams::default()).await).await?;
    let unlabelled: Secret = serde_json::from_value(json!({"metadata": {"name": "mine"}, "stringData": {"k": "v"}}))?;
    forbidden("create an unlabelled Secret", secrets.create(&PostParams::default(), &unlabelled).await).await?;
    let sa_token: Secret = serde_json::from_value(json!({
        "metadata": {"name": "steal", "labels": {"app.kubernetes.io/managed-by": "blockproxy-operator"},
                     "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token",
    }))?;
    forbidden("create a ServiceAccount token Secret", secrets.create(&PostParams::default(), &sa_token).await).await?;
    // What it does create (labelled, Opaque) still works.
    let own: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mine", "labels": {"app.kubernetes.io/managed-by": "blockproxy-operator"}},
        "stringData": {"k": "v"},
    }))?;
    secrets.create(&PostParams::default(), &own).await?;
    secrets.delete("mine", &DeleteParams::default()).await?;
    Ok(())
}
