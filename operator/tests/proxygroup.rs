//! ProxyGroup reconciling against a real kube-apiserver.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use blockproxy_operator::crd::ProxyGroup;
use blockproxy_protocol::{DRAIN_PATH, DrainStatus};
use blockproxy_testenv::anyhow::Result;
use common::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use std::sync::{Arc, Mutex};

/// A proxy's drain endpoint: each call reports fewer dirty bytes, down to zero.
#[derive(Clone, Default)]
struct DrainServer {
    calls: Arc<Mutex<Vec<u64>>>,
    remaining: Arc<Mutex<Vec<u64>>>,
    token: Arc<Mutex<String>>,
}

async fn drain_handler(State(s): State<DrainServer>, headers: HeaderMap) -> Result<Json<DrainStatus>, StatusCode> {
    let expected = format!("Bearer {}", s.token.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let dirty = {
        let mut r = s.remaining.lock().unwrap();
        if r.len() > 1 { r.remove(0) } else { r.first().copied().unwrap_or(0) }
    };
    s.calls.lock().unwrap().push(dirty);
    Ok(Json(DrainStatus {
        draining: true,
        dirty_blocks: dirty / 100,
        dirty_bytes: dirty,
        done: dirty == 0,
        ..Default::default()
    }))
}

async fn serve_drain(server: DrainServer) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new().route(DRAIN_PATH, post(drain_handler)).with_state(server);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_run_on_nvme_nodes_only_and_leave_only_after_draining() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "n", "local-nvme", 3, 2).await?;
    let drain = DrainServer::default();
    // The drain stops at 1000 dirty bytes until the test lets it finish.
    *drain.remaining.lock().unwrap() = vec![3000, 1000];
    let port = serve_drain(drain.clone()).await?;
    let op = Operator::start(client.clone(), "op-0", false);
    create_group(&client, "eu", group_spec("local-nvme", port as i32, &["*"])?).await?;

    // 3 pre-bound PVCs and 3 pinned Pods, nothing on the plain nodes.
    let pods = wait("3 proxy pods", || async {
        let pods = group_pods(&client, "eu").await?;
        ensure(pods.len() == 3, || format!("{} pods", pods.len()))?;
        Ok(pods)
    })
    .await?;
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["n-nvme-0", "n-nvme-1", "n-nvme-2"]);
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let term = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(term.match_fields.as_ref().unwrap()[0].values.as_ref().unwrap(), &vec![node_of(p)]);
        let claim = &spec.volumes.as_ref().unwrap()[0].persistent_volume_claim.as_ref().unwrap().claim_name;
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS).get(claim).await?;
        assert_eq!(pvc.spec.unwrap().volume_name.unwrap(), format!("{}-pv", node_of(p)));
        assert_eq!(spec.containers[0].args.as_ref().unwrap()[0], "serve");
    }

    // Pods become Ready (as the kubelet would say) and are published.
    for p in &pods {
        mark_ready(&client, &p.name_any(), "127.0.0.1").await?;
    }
    let groups: Api<ProxyGroup> = Api::all(client.clone());
    wait("3 endpoints", || async {
        let st = groups.get("eu").await?.status.unwrap_or_default();
        ensure(st.endpoints.len() == 3 && st.ready_proxies == 3 && st.desired_proxies == 3, || format!("{st:?}"))
    })
    .await?;

    // A new NVMe node gets a proxy.
    node(&client, "n-nvme-3").await?;
    local_pv(&client, "n-nvme-3-pv", "n-nvme-3", "local-nvme").await?;
    wait("a 4th proxy on the new node", || async {
        let pods = group_pods(&client, "eu").await?;
        ensure(pods.iter().any(|p| node_of(p) == "n-nvme-3"), || "no pod on n-nvme-3".into())
    })
    .await?;
    mark_ready(&client, "eu-n-nvme-3", "127.0.0.1").await?;

    // Removing a PV drains its proxy first; the Pod goes only once nothing dirty is left.
    let admin = Api::<Secret>::namespaced(client.clone(), NS).get("eu-admin").await?;
    *drain.token.lock().unwrap() = String::from_utf8(admin.data.unwrap()["token"].0.clone())?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.delete("n-nvme-1-pv", &DeleteParams::default()).await?;
    wait("a drain call reporting dirty bytes", || async {
        let calls = drain.calls.lock().unwrap().clone();
        ensure(!calls.is_empty(), || "no drain call yet".into())
    })
    .await?;
    let first_call = drain.calls.lock().unwrap()[0];
    assert_eq!(first_call, 3000);
    assert!(group_pods(&client, "eu").await?.iter().any(|p| node_of(p) == "n-nvme-1"), "deleted before drained");
    // While it drains, the proxy stays published, marked draining (clients read what it still
    // holds and write elsewhere), and is not counted as ready.
    wait("the draining proxy listed as draining", || async {
        let st = groups.get("eu").await?.status.unwrap_or_default();
        // Sorted by node: the named endpoints and the draining one's IP do not sort alike.
        let mut listed: Vec<(&str, bool)> = st.endpoints.iter().map(|e| (e.node.as_str(), e.draining)).collect();
        listed.sort();
        ensure(
            listed == [("n-nvme-0", false), ("n-nvme-1", true), ("n-nvme-2", false), ("n-nvme-3", false)]
                && st.ready_proxies == 3,
            || format!("{listed:?}, {} ready", st.ready_proxies),
        )
    })
    .await?;
    // The operator keeps asking while dirty bytes remain, and neither unpublishes nor deletes
    // the proxy meanwhile. (The status can be written right after the first call, so the second
    // call is waited for, not assumed.)
    wait("the drain asked again while dirty bytes remain", || async {
        let calls = drain.calls.lock().unwrap().len();
        ensure(calls >= 2, || format!("{calls} drain calls"))
    })
    .await?;
    let st = groups.get("eu").await?.status.unwrap_or_default();
    assert!(st.endpoints.iter().any(|e| e.node == "n-nvme-1" && e.draining), "unpublished before drained: {st:?}");
    assert!(group_pods(&client, "eu").await?.iter().any(|p| node_of(p) == "n-nvme-1"), "deleted before drained");
    *drain.remaining.lock().unwrap() = vec![0];
    wait("the drained proxy's Pod and PVC to go", || async {
        let pods = group_pods(&client, "eu").await?;
        // Deleted; without kube-controller-manager the pvc-protection finalizer keeps it Terminating.
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS).get_opt("eu-cache-n-nvme-1").await?;
        let pvc_gone = pvc.is_none_or(|c| c.metadata.deletion_timestamp.is_some());
        ensure(!pods.iter().any(|p| node_of(p) == "n-nvme-1") && pvc_gone, || "still there".into())
    })
    .await?;
    // Deleted only after dirty bytes reached zero. (A retried reconcile, e.g. after a transient
    // API error, may ask a drained proxy again; drain calls are idempotent.)
    let calls = drain.calls.lock().unwrap().clone();
    let zero = calls.iter().position(|c| *c == 0).unwrap_or(calls.len());
    assert!(
        calls.starts_with(&[3000, 1000])
            && calls[1..zero].iter().all(|c| *c == 1000)
            && calls[zero..].iter().all(|c| *c == 0),
        "{calls:?}"
    );
    wait("the drained proxy unpublished", || async {
        let st = groups.get("eu").await?.status.unwrap_or_default();
        ensure(st.endpoints.iter().all(|e| e.node != "n-nvme-1") && st.endpoints.len() == 3, || format!("{st:?}"))
    })
    .await?;
    // The operator never deletes a PV: the others are untouched, the removed one is only
    // Terminating because the test deleted it.
    let left: Vec<String> = pvs.list(&ListParams::default()).await?.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(left.len(), 4);

    // Deleting the group drains every proxy before it goes.
    drain.calls.lock().unwrap().clear();
    *drain.remaining.lock().unwrap() = vec![500, 0];
    groups.delete("eu", &DeleteParams::default()).await?;
    wait("the group to be gone", || async {
        ensure(groups.get_opt("eu").await?.is_none(), || "group still there".into())
    })
    .await?;
    let calls = drain.calls.lock().unwrap().clone();
    assert!(calls.len() >= 3 && calls[0] == 500, "every remaining proxy drained first: {calls:?}");
    assert!(group_pods(&client, "eu").await?.is_empty());
    op.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_proxy_blocks_removal_and_says_why() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "u", "local-nvme", 2, 0).await?;
    let op = Operator::start(client.clone(), "op-0", false);
    create_group(&client, "g", group_spec("local-nvme", 1, &[])?).await?;
    let pods = wait("2 pods", || async {
        let pods = group_pods(&client, "g").await?;
        ensure(pods.len() == 2, || "not yet".into())?;
        Ok(pods)
    })
    .await?;
    // Both nodes go away. The proxy on u-nvme-0 ran (it has an address, which answers nothing):
    // nothing can drain it. The one on u-nvme-1 never ran (Pending, claim never bound): there is
    // nothing to drain, it is removed at once.
    let ran = pods.iter().find(|p| node_of(*p) == "u-nvme-0").expect("a proxy on u-nvme-0");
    mark_ready(&client, &ran.name_any(), "10.9.9.9").await?;
    for node in ["u-nvme-0", "u-nvme-1"] {
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()).delete(node, &DeleteParams::default()).await?;
    }
    wait("the proxy that never ran to go", || async {
        let left: Vec<String> = group_pods(&client, "g").await?.iter().map(node_of).collect();
        ensure(!left.iter().any(|n| n == "u-nvme-1"), || format!("proxies on {left:?}"))
    })
    .await?;
    let groups: Api<ProxyGroup> = Api::all(client.clone());
    let cond = wait("a DrainBlocked condition", || async {
        let st = groups.get("g").await?.status.unwrap_or_default();
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.reason == "DrainBlocked")
            .ok_or_else(|| blockproxy_testenv::anyhow::anyhow!("no DrainBlocked yet"))
    })
    .await?;
    assert!(cond.message.contains("u-nvme-0") && cond.message.contains("skip-unreachable-drain"), "{}", cond.message);
    assert!(!cond.message.contains("u-nvme-1"), "{}", cond.message);
    assert!(group_pods(&client, "g").await?.iter().any(|p| node_of(p) == "u-nvme-0"), "kept until drained");
    op.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_secret_is_reported_until_it_exists() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "m", "local-nvme", 1, 0).await?;
    // No resync within the test: only watches reconcile the group.
    let settings =
        blockproxy_operator::controller::Config { resync: std::time::Duration::from_secs(3600), ..config("op-0") };
    let op = Operator::start_with(client.clone(), settings, false);
    let mut spec = group_spec("local-nvme", 8443, &[])?;
    spec.object_store.credentials_secret.as_mut().unwrap().name = "not-yet".into();
    create_group(&client, "g", spec).await?;
    let groups: Api<ProxyGroup> = Api::all(client.clone());
    let cond = wait("an InvalidSpec condition", || async {
        let st = groups.get("g").await?.status.unwrap_or_default();
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
            .ok_or_else(|| blockproxy_testenv::anyhow::anyhow!("no InvalidSpec yet"))
    })
    .await?;
    assert!(cond.message.contains("\"not-yet\" does not exist"), "{}", cond.message);
    assert!(group_pods(&client, "g").await?.is_empty());
    // The Secret is watched: creating it reconciles the group (a missing key is reported the
    // same way).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut creds: Secret = secrets.get("store-credentials").await?;
    creds.metadata = kube::api::ObjectMeta { name: Some("not-yet".into()), ..Default::default() };
    creds.data.as_mut().unwrap().remove("secretAccessKey");
    secrets.create(&kube::api::PostParams::default(), &creds).await?;
    wait("a missing-key condition", || async {
        let st = groups.get("g").await?.status.unwrap_or_default();
        let message = st.conditions.into_iter().find(|c| c.type_ == "Ready").map(|c| c.message).unwrap_or_default();
        ensure(message.contains("has no key \"secretAccessKey\""), || message.clone())
    })
    .await?;
    // Adding the key (a change of the Secret) reconciles it again: the proxy is created.
    let key = serde_json::json!({"stringData": {"secretAccessKey": "minioadmin"}});
    secrets.patch("not-yet", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&key)).await?;
    wait("the proxy once the Secret is complete", || async {
        ensure(group_pods(&client, "g").await?.len() == 1, || "no pod".into())
    })
    .await?;
    // Pointing the group at an existing Secret is a change: it reconciles at once.
    let fix = serde_json::json!({"spec": {"objectStore": {"credentialsSecret": {"name": "store-credentials"}}}});
    groups.patch("g", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&fix)).await?;
    wait("the proxy", || async { ensure(group_pods(&client, "g").await?.len() == 1, || "no pod".into()) }).await?;
    op.stop().await?;
    Ok(())
}
