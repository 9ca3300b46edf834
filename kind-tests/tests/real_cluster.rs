//! blockproxy end to end on a real multi-node cluster (issue 11's scenarios).
//!
//! One cluster serves every scenario of this file, in sequence in one test, because a cluster
//! start costs about a minute: 4 nodes, the 4th without a `local-nvme` PV. Without `KUBECONFIG`
//! the cluster is local (root only); with it, the scenarios run against that cluster (see the
//! README's "kind-tests" section). The image is packed from `target/<profile>/` by
//! `hack/image.sh`; `cargo test --workspace` has built those binaries before any test runs.

mod common;
#[path = "real_cluster/csi.rs"]
mod csi;
#[path = "real_cluster/gcs.rs"]
mod gcs;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use blockproxy_operator::webhook;
use blockproxy_protocol::DiscoveryDocument;
use blockproxy_testenv::{Cluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use common::{Report, blockproxy_image, helm_for};

const RELEASE: &str = "blockproxy";
const SYSTEM_NS: &str = "blockproxy-system";

/// `helm upgrade` of the installed release, keeping its values but `set` (`key=value`), and
/// waiting for it to roll out.
async fn upgrade_release(cluster: &Cluster, set: &str) -> Result<()> {
    let helm = helm_for(cluster)?;
    let args = ["upgrade", RELEASE, &common::chart_dir(), "-n", SYSTEM_NS, "--reuse-values", "--set", set];
    helm.run(args.into_iter().chain(["--wait", "--timeout", "5m"])).await?;
    Ok(())
}
const WAIT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockproxy_on_a_real_multi_node_cluster() -> Result<()> {
    if let Some(reason) = Cluster::unavailable() {
        eprintln!("SKIPPED blockproxy_on_a_real_multi_node_cluster: {reason}");
        return Ok(());
    }
    let mut report = Report::default();
    let cluster = report.time("cluster start (4 nodes)", Cluster::builder().nodes(4).without_pv_on(4).start()).await?;
    report.time("cluster works", cluster_runs_pods_on_every_node_with_local_pvs(&cluster)).await?;
    let image = report.time("image pack", blockproxy_image()).await?;
    report.time("image import", cluster.import_image(&image.tarball)).await?;
    report.time("scenario 1: helm install", scenario_1_helm_install(&cluster, &image.reference)).await?;
    let store = report.time("scenario 2: MinIO + toxiproxy pods", scenario_2_store_in_the_cluster(&cluster)).await?;
    report
        .time("scenario 3: ProxyGroup on 3 of 4 nodes", scenario_3_proxy_group_on_3_of_4_nodes(&cluster, &store))
        .await?;
    report
        .time(
            "scenario 4: workload Pod with a real S3 client",
            scenario_4_workload_pod_with_a_real_s3_client(&cluster, &store),
        )
        .await?;
    if wanted(5) {
        report
            .time(
                "scenario 5: proxy killed and Pod deleted while the store is cut",
                scenario_5_proxy_restarts_while_the_store_is_cut(&cluster, &store),
            )
            .await?;
    }
    if wanted(6) {
        report
            .time(
                "scenario 6: a node leaves the group (drained while a client writes and reads) and comes back",
                scenario_6_a_node_leaves_and_comes_back(&cluster, &store),
            )
            .await?;
    }
    if wanted(8) {
        report.time("scenario 8: two sites for one volume", scenario_8_two_sites(&cluster, &store)).await?;
    }
    if wanted(7) {
        report
            .time(
                "scenario 7: helm upgrade to a new image tag rolls the proxies one at a time",
                scenario_7_helm_upgrade_rolls_the_proxies(&cluster, &store, &image.reference),
            )
            .await?;
    }
    if wanted(10) {
        report.time("scenario 10: security on the real cluster", scenario_10_security(&cluster)).await?;
    }
    if wanted(12) {
        report
            .time(
                "scenario 12: the volume as a directory (CSI inline volume, unprivileged sidecar)",
                csi::scenario_12_csi_inline_volume(&cluster, &store),
            )
            .await?;
    }
    if wanted(9) {
        report
            .time(
                "scenario 9: deleting the group drains first, then a new group reuses the PVs",
                scenario_9_deleting_the_group_drains_first(&cluster, &store),
            )
            .await?;
    }
    if wanted(11) {
        report
            .time("scenario 11: a ProxyGroup on GCS (fake-gcs-server)", gcs::scenario_11_a_group_on_gcs(&cluster))
            .await?;
    }
    report.print();
    report.print_memory(&cluster);
    Ok(())
}

/// Whether to run scenario `n`: every one, or only those listed in
/// `BLOCKPROXY_REAL_CLUSTER_SCENARIOS` (comma-separated numbers; scenarios 1 to 4 set the cluster
/// up and always run), to repeat one scenario without the whole run.
fn wanted(n: u32) -> bool {
    match std::env::var("BLOCKPROXY_REAL_CLUSTER_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim().parse() == Ok(n)),
        _ => true,
    }
}

/// The cluster itself: every node runs a Pod, and a Service, found by its DNS name (CoreDNS),
/// reaches the Pods across nodes through kube-proxy.
async fn cluster_runs_pods_on_every_node_with_local_pvs(cluster: &Cluster) -> Result<()> {
    let client = cluster.client();
    let ns = "cluster-check";
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &Namespace { metadata: meta(ns), ..Default::default() })
        .await?;
    // One Pod per node. (The local PVs are left for the ProxyGroup: a PV bound once stays
    // Released after its claim is gone, see issue 11's "kept local PV" bug.)
    let mut yaml = String::new();
    for node in cluster.nodes() {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: on-{node}, namespace: {ns}, labels: {{app: check}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {busybox}
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'echo {node} > /www/index.html; exec httpd -f -p 8080 -h /www']
    volumeMounts: [{{name: www, mountPath: /www}}]
  volumes: [{{name: www, emptyDir: {{}}}}]
"#,
            busybox = blockproxy_testenv::cluster::BUSYBOX_IMAGE,
        ));
    }
    cluster.apply(&yaml).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for node in cluster.nodes() {
        eventually(WAIT, POLL, || async {
            let pod = pods.get(&format!("on-{node}")).await?;
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            anyhow::ensure!(
                ready,
                "pod on-{node} not Ready: {:?}",
                pod.status.as_ref().map(|s| (&s.phase, &s.conditions))
            );
            Ok(())
        })
        .await?;
        let ran_on = pods.get(&format!("on-{node}")).await?.spec.and_then(|s| s.node_name);
        assert_eq!(ran_on.as_deref(), Some(node.as_str()));
    }
    // A Service across nodes (kube-proxy) by DNS name (CoreDNS), from a Pod on the last node.
    let last = cluster.nodes().last().context("no nodes")?;
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: check, namespace: {ns}}}\n\
             spec: {{selector: {{app: check}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        ))
        .await?;
    let seen = eventually(WAIT, POLL, || async {
        let out = cluster
            .kubectl(&[
                "-n",
                ns,
                "run",
                "client",
                "--rm",
                "-i",
                "--restart=Never",
                "--image",
                blockproxy_testenv::cluster::BUSYBOX_IMAGE,
                "--image-pull-policy=Never",
                "--overrides",
                &format!(r#"{{"spec":{{"nodeName":"{last}"}}}}"#),
                "--command",
                "--",
                "wget",
                "-qO-",
                &format!("http://check.{ns}.svc.cluster.local/"),
            ])
            .await?;
        // kubectl run --rm appends a "pod deleted" line; on a busy machine it may also attach
        // after wget has printed (and lose the answer): then ask again.
        anyhow::ensure!(
            out.lines().any(|l| cluster.nodes().iter().any(|n| l == n.as_str())),
            "the Service answered {out:?}"
        );
        Ok(out)
    })
    .await?;
    assert!(seen.lines().any(|l| cluster.nodes().iter().any(|n| l == n.as_str())), "the Service answered {seen:?}");
    Api::<Namespace>::all(client).delete(ns, &Default::default()).await?;
    Ok(())
}

/// Scenario 1: `helm install` of the chart with the packed image; the operator's 2 replicas
/// become Ready, one holds the leader Lease, and the webhook injects the sidecar (checked with a
/// server-side dry-run create, which calls the real webhook through the API server).
async fn scenario_1_helm_install(cluster: &Cluster, image: &str) -> Result<()> {
    let (repository, tag) = image.rsplit_once(':').context("image reference without a tag")?;
    let helm = helm_for(cluster)?;
    helm.run([
        "install",
        RELEASE,
        &common::chart_dir(),
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout",
        "5m",
    ])
    .await?;
    cluster.wait_for_deployment(SYSTEM_NS, RELEASE).await?;
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    let operators = pods.list(&ListParams::default().labels("app.kubernetes.io/name=blockproxy")).await?;
    let ready: Vec<String> = operators
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(ready.len(), 2, "operator Pods Ready: {ready:?}");

    // Leader election: one of the two Pods holds the Lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NS);
    let holder = eventually(WAIT, POLL, || async {
        let lease = leases.get(RELEASE).await?;
        lease.spec.and_then(|s| s.holder_identity).context("the Lease has no holder yet")
    })
    .await?;
    assert!(ready.contains(&holder), "the Lease is held by {holder:?}, not one of {ready:?}");

    // The webhook's Service has ready endpoints on both replicas.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), SYSTEM_NS);
    eventually(WAIT, POLL, || async {
        let list = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={RELEASE}-webhook")))
            .await?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count();
        anyhow::ensure!(ready == 2, "{ready} ready webhook endpoints");
        Ok(())
    })
    .await?;

    // The real webhook mutates a Pod created through the API server.
    let app = serde_json::from_value::<Pod>(serde_json::json!({
        "metadata": {"name": "injected", "annotations": {"blockproxy.io/volume": "team-a-data"}},
        "spec": {"containers": [{"name": "app", "image": blockproxy_testenv::cluster::BUSYBOX_IMAGE}]},
    }))?;
    // failurePolicy Ignore: until kube-proxy has programmed the webhook Service, the API server
    // admits Pods unmutated, so wait for the first mutated one.
    let pods = Api::<Pod>::namespaced(client, "default");
    let created = eventually(WAIT, POLL, || async {
        let created = pods.create(&PostParams { dry_run: true, ..Default::default() }, &app).await?;
        let init: Vec<String> = created
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        anyhow::ensure!(init.iter().any(|n| n == "blockproxy-mount"), "no sidecar injected; init containers: {init:?}");
        Ok(created)
    })
    .await?;
    let sidecar_image = created.spec.as_ref().and_then(|s| s.init_containers.as_ref()).and_then(|c| c[0].image.clone());
    assert_eq!(sidecar_image.as_deref(), Some(image), "the sidecar runs another image");
    Ok(())
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}

/// MinIO in the cluster, reached through toxiproxy: the cloud store of the scenarios.
struct Store {
    /// `http://s3.storage.svc.cluster.local:9000`: toxiproxy's proxy to MinIO (with latency).
    endpoint: String,
    access_key: String,
    secret_key: String,
    /// MinIO itself (no toxiproxy), to check what landed in the bucket.
    minio: aws_sdk_s3::Client,
    /// toxiproxy's API, to cut the store off.
    toxiproxy: blockproxy_testenv::ToxiproxyApi,
    _forwards: Vec<blockproxy_testenv::cluster::Forward>,
}

const STORE_NS: &str = "storage";
const BUCKET: &str = "blockproxy";

/// Scenario 2: MinIO runs in the cluster as the "cloud" store, behind toxiproxy adding 50 ms of
/// latency, both as Pods of images packed from the cached binaries. An object written through
/// toxiproxy is read back byte-identical from MinIO directly.
async fn scenario_2_store_in_the_cluster(cluster: &Cluster) -> Result<Store> {
    use blockproxy_testenv::{Tool, tool_path};
    cluster.import_binaries("example.local/minio:test", "/usr/local/bin/minio", &[&tool_path(Tool::Minio)?]).await?;
    cluster
        .import_binaries(
            "example.local/toxiproxy:test",
            "/usr/local/bin/toxiproxy-server",
            &[&tool_path(Tool::Toxiproxy)?],
        )
        .await?;
    let access_key = format!("ak{}", rand::random::<u32>());
    let secret_key = format!("sk{:032x}", rand::random::<u128>());
    cluster
        .apply(&format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {STORE_NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: minio, namespace: {STORE_NS}}}
spec:
  selector: {{matchLabels: {{app: minio}}}}
  template:
    metadata: {{labels: {{app: minio}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: minio
        image: example.local/minio:test
        imagePullPolicy: Never
        args: [server, /data, --address, ":9000", --console-address, ":9001"]
        env:
        - {{name: MINIO_ROOT_USER, value: "{access_key}"}}
        - {{name: MINIO_ROOT_PASSWORD, value: "{secret_key}"}}
        - {{name: HOME, value: /tmp}}
        readinessProbe: {{httpGet: {{path: /minio/health/ready, port: 9000}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: minio, namespace: {STORE_NS}}}
spec: {{selector: {{app: minio}}, ports: [{{port: 9000}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: toxiproxy, namespace: {STORE_NS}}}
spec:
  selector: {{matchLabels: {{app: toxiproxy}}}}
  template:
    metadata: {{labels: {{app: toxiproxy}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: toxiproxy
        image: example.local/toxiproxy:test
        imagePullPolicy: Never
        args: [-host, 0.0.0.0, -port, "8474"]
        readinessProbe: {{httpGet: {{path: /version, port: 8474}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: toxiproxy, namespace: {STORE_NS}}}
spec: {{selector: {{app: toxiproxy}}, ports: [{{port: 8474}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: s3, namespace: {STORE_NS}}}
spec: {{selector: {{app: toxiproxy}}, ports: [{{port: 9000}}]}}
"#
        ))
        .await?;
    cluster.wait_for_deployment(STORE_NS, "minio").await?;
    cluster.wait_for_deployment(STORE_NS, "toxiproxy").await?;

    let minio_forward = cluster.forward(service_ip(cluster, STORE_NS, "minio").await?, 9000).await?;
    let toxiproxy_forward = cluster.forward(service_ip(cluster, STORE_NS, "toxiproxy").await?, 8474).await?;
    let toxiproxy = blockproxy_testenv::ToxiproxyApi::new(&format!("http://{}", toxiproxy_forward.addr()))?;
    // Each step checks first whether an earlier, timed-out attempt took effect (busy machine).
    let upstream = format!("minio.{STORE_NS}.svc.cluster.local:9000");
    eventually(WAIT, POLL, || async {
        if toxiproxy.toxics("minio").await.is_err() {
            toxiproxy.create_proxy_on("minio", "0.0.0.0:9000", &upstream).await?;
        }
        Ok(())
    })
    .await?;
    let toxics = eventually(WAIT, POLL, || async {
        let toxics = toxiproxy.toxics("minio").await?;
        if toxics.as_array().is_some_and(Vec::is_empty) {
            toxiproxy.add_latency("minio", 50, 0).await?;
        }
        toxiproxy.toxics("minio").await
    })
    .await?;
    assert_eq!(toxics[0]["attributes"]["latency"], 50, "{toxics}");

    let minio = s3_client(&format!("http://{}", minio_forward.addr()), &access_key, &secret_key);
    eventually(WAIT, POLL, || async { Ok(minio.create_bucket().bucket(BUCKET).send().await?) }).await?;
    // Through toxiproxy (and its latency) into MinIO, and back out of MinIO directly.
    let s3_forward = cluster.forward(service_ip(cluster, STORE_NS, "s3").await?, 9000).await?;
    let through = s3_client(&format!("http://{}", s3_forward.addr()), &access_key, &secret_key);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // (Retried: under load a forwarded connection was seen closing before the answer.)
    eventually(WAIT, POLL, || async {
        Ok(through.put_object().bucket(BUCKET).key("scenario-2/probe").body(body.clone().into()).send().await?)
    })
    .await?;
    let back = minio.get_object().bucket(BUCKET).key("scenario-2/probe").send().await?.body.collect().await?;
    assert!(back.into_bytes() == body, "the object read from MinIO differs from what was written through toxiproxy");
    minio.delete_object().bucket(BUCKET).key("scenario-2/probe").send().await?;

    Ok(Store {
        endpoint: format!("http://s3.{STORE_NS}.svc.cluster.local:9000"),
        access_key,
        secret_key,
        minio,
        toxiproxy,
        _forwards: vec![minio_forward, toxiproxy_forward, s3_forward],
    })
}

/// The state and last log lines of the Pods matching `selector`, for a failure message.
async fn pod_logs(cluster: &Cluster, namespace: &str, selector: &str) -> String {
    let describe = cluster.kubectl(&["-n", namespace, "get", "pods", "-l", selector, "-o", "wide"]).await;
    let logs = cluster.kubectl(&["-n", namespace, "logs", "-l", selector, "--tail", "15", "--prefix"]).await;
    let events = cluster.kubectl(&["-n", namespace, "get", "events", "--sort-by", ".lastTimestamp"]).await;
    let text = |r: Result<String>| r.unwrap_or_else(|e| format!("{e:#}"));
    format!("pods:\n{}\nlogs:\n{}\nevents:\n{}", text(describe), text(logs), text(events))
}

/// A Service's ClusterIP.
async fn service_ip(cluster: &Cluster, namespace: &str, name: &str) -> Result<std::net::Ipv4Addr> {
    let service = Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client(), namespace).get(name).await?;
    let ip =
        service.spec.and_then(|s| s.cluster_ip).with_context(|| format!("service {namespace}/{name} has no IP"))?;
    ip.parse().with_context(|| format!("service {namespace}/{name}: {ip}"))
}

/// A path-style S3 client with static credentials.
fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "kind-tests");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

const GROUP: &str = "dc1";

/// The store credentials Secret and the ProxyGroup of scenario 3 (applied again by scenario 9).
fn proxy_group_yaml(store: &Store) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: store-credentials, namespace: {SYSTEM_NS}}}
stringData: {{accessKeyId: "{ak}", secretAccessKey: "{sk}"}}
---
apiVersion: blockproxy.io/v1alpha1
kind: ProxyGroup
metadata: {{name: {GROUP}}}
spec:
  providerCode: minio
  regionCode: dc1
  placement: {{storageClassName: local-nvme}}
  cache: {{diskQuota: "512Mi"}}
  writeback: {{enabled: true, delay: 0ms}}
  objectStore:
    provider: s3Compatible
    endpoint: {endpoint}
    region: us-east-1
    pathStyle: true
    credentialsSecret: {{name: store-credentials}}
  allowedNamespaces: [team-a]
  imagePullPolicy: Never
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
"#,
        ak = store.access_key,
        sk = store.secret_key,
        endpoint = store.endpoint,
    )
}

/// Scenario 3: a ProxyGroup on the 3 of 4 nodes that have a `local-nvme` PV: three proxy Pods
/// run, one per node, each on its node's PV; `kubectl get pg` shows 3 ready and the status lists
/// the endpoints.
async fn scenario_3_proxy_group_on_3_of_4_nodes(cluster: &Cluster, store: &Store) -> Result<()> {
    cluster.apply(&proxy_group_yaml(store)).await?;
    let groups = cluster.kubectl(&["get", "crd", "proxygroups.blockproxy.io", "-o", "jsonpath={.spec.scope}"]).await?;
    let ns_flag: Vec<&str> = if groups == "Namespaced" { vec!["-n", SYSTEM_NS] } else { vec![] };
    let status = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let mut args = vec!["get", "pg", GROUP, "-o", "json"];
        args.extend(&ns_flag);
        let json: serde_json::Value = serde_json::from_str(&cluster.kubectl(&args).await?)?;
        let ready = json["status"]["readyProxies"].as_i64().unwrap_or(0);
        anyhow::ensure!(ready == 3, "{ready} proxies ready; status {}", json["status"]);
        Ok(json["status"].clone())
    })
    .await;
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            return Err(
                e.context(pod_logs(cluster, SYSTEM_NS, "app.kubernetes.io/managed-by=blockproxy-operator").await)
            );
        }
    };
    let mut table_args = vec!["get", "pg", GROUP];
    table_args.extend(&ns_flag);
    let table = cluster.kubectl(&table_args).await?;
    let row: Vec<&str> = table.lines().nth(1).context("kubectl get pg printed no row")?.split_whitespace().collect();
    assert_eq!(row.get(3), Some(&"3"), "kubectl get pg: {table}");
    let endpoints = status["endpoints"].as_array().cloned().unwrap_or_default();
    let mut endpoint_nodes: Vec<&str> = endpoints.iter().filter_map(|e| e["node"].as_str()).collect();
    endpoint_nodes.sort();
    assert_eq!(endpoint_nodes, cluster.pv_nodes().iter().map(String::as_str).collect::<Vec<_>>(), "{status}");
    // Each proxy Pod runs on its node, on that node's PV.
    for proxy in status["proxies"].as_array().context("no proxies in the status")? {
        let node = proxy["node"].as_str().context("proxy without node")?;
        let pod_name = proxy["pod"].as_str().context("proxy without pod")?;
        let pod = Api::<Pod>::namespaced(cluster.client(), SYSTEM_NS).get(pod_name).await?;
        assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node), "{pod_name}");
        assert_eq!(proxy["persistentVolume"].as_str(), Some(format!("local-nvme-{node}").as_str()), "{proxy}");
    }
    // Every proxy's cache and dirty bytes, as the proxies report them, and the group's sums.
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("CACHE") && header.contains("DIRTY"), "kubectl get pg: {table}");
    eventually(Duration::from_secs(90), Duration::from_secs(2), || async {
        let mut args = vec!["get", "pg", GROUP, "-o", "json"];
        args.extend(&ns_flag);
        let json: serde_json::Value = serde_json::from_str(&cluster.kubectl(&args).await?)?;
        let st = &json["status"];
        let proxies = st["proxies"].as_array().cloned().unwrap_or_default();
        let reported = proxies.iter().filter(|p| p["cacheBytes"].is_u64() && p["dirtyBytes"].is_u64()).count();
        anyhow::ensure!(reported == 3 && st["cacheBytes"].is_u64() && st["dirtyBytes"].is_u64(), "{st}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// The rclone remote `bp:` from the environment the webhook injected (endpoint and credentials).
const RCLONE_ENV: &str = r#"set -eu
export HOME=/tmp RCLONE_CONFIG=/tmp/rclone.conf
: > /tmp/rclone.conf
export RCLONE_CONFIG_BP_TYPE=s3 RCLONE_CONFIG_BP_PROVIDER=Other RCLONE_CONFIG_BP_ENV_AUTH=true
export RCLONE_CONFIG_BP_ENDPOINT="$AWS_ENDPOINT_URL_S3" RCLONE_CONFIG_BP_NO_CHECK_BUCKET=true"#;
const RCLONE_IMAGE: &str = "example.local/rclone:test";

/// The sidecar memory limit of scenario 4's app Pod.
const SIDECAR_MEMORY_LIMIT: (&str, &str) = (blockproxy_operator::sidecar_resources::MEMORY_LIMIT_ANNOTATION, "160Mi");
const TEAM: &str = "team-a";
const VOLUME: &str = "team-a-data";
const PREFIX: &str = "volumes/team-a";

/// Scenario 4: in namespace `team-a`, which enforces PodSecurity `restricted`, a compliant Pod
/// annotated for a volume *before* its VolumeProxyGroup exists. The sidecar waits (no restart)
/// and holds the app back (startup probe); once the VolumeProxyGroup is accepted, the app
/// container runs rclone, a real S3 client, with only what the webhook injected (the endpoint in
/// `AWS_ENDPOINT_URL_S3`, the Pod's own credentials): it writes objects of several sizes, reads
/// them back and compares, and a wrong secret is refused. The objects land in MinIO at
/// `{prefix}/{key}`, byte-identical (their SHA-256 as the app computed it).
async fn scenario_4_workload_pod_with_a_real_s3_client(cluster: &Cluster, store: &Store) -> Result<()> {
    use blockproxy_testenv::{Tool, tool_path};
    cluster
        .import_binaries(
            RCLONE_IMAGE,
            "/usr/local/bin/rclone",
            &[&tool_path(Tool::Rclone)?, std::path::Path::new("/bin/busybox")],
        )
        .await?;
    // Objects above 16 MiB go as multipart uploads of rclone's 5 MiB parts, 16 at once, and come
    // back in 8 ranged GETs at once: the 100 MiB one passes through a sidecar whose budgets are
    // sized to its memory limit (below), and so do eight 16 MiB objects at once after it.
    const SIZES: [u64; 5] = [1, 65_537, 3 * 1024 * 1024 + 5, 7 * 1024 * 1024 + 9, 100 * 1024 * 1024 + 7];
    let sizes = SIZES.map(|s| s.to_string()).join(" ");
    let script = format!(
        r#"{RCLONE_ENV}
for size in {sizes}; do
  head -c "$size" /dev/urandom > /tmp/obj
  rclone copyto --s3-upload-cutoff 16M --s3-upload-concurrency 16 /tmp/obj "bp:{VOLUME}/app/obj-$size"
  rclone copyto --multi-thread-cutoff 16M --multi-thread-streams 8 "bp:{VOLUME}/app/obj-$size" /tmp/back
  cmp /tmp/obj /tmp/back
  echo "object app/obj-$size $(sha256sum < /tmp/obj | cut -d' ' -f1)"
done
# The same download that worked above, with a wrong secret.
if AWS_SECRET_ACCESS_KEY=wrong rclone copyto --retries 1 --low-level-retries 1 "bp:{VOLUME}/app/obj-1" /tmp/wrong 2>/dev/null; then
  echo "a wrong secret key was accepted"; exit 1
fi
echo "wrong secret refused"
# Eight 16 MiB objects up and down at once: more than both budgets under the limit hold.
mkdir -p /tmp/many /tmp/many-back
for i in 1 2 3 4 5 6 7 8; do head -c 16777216 /dev/urandom > "/tmp/many/f$i"; done
rclone copy --transfers 8 --s3-upload-cutoff 64M /tmp/many "bp:{VOLUME}/app/many"
rclone copy --transfers 8 "bp:{VOLUME}/app/many" /tmp/many-back
for i in 1 2 3 4 5 6 7 8; do cmp "/tmp/many/f$i" "/tmp/many-back/f$i"; done
echo "eight at once intact"
wget -qO- "$AWS_ENDPOINT_URL_S3/_blockproxy/metrics" | grep -E '^blockproxy_client_(read_ahead_waits|read_pieces|write_buffer_waits)_total' | sed 's/^/sidecar /'
"#
    );
    let mut pod = app_pod("app", VOLUME, &script, "Never");
    // A memory limit for the sidecar (ADR 0018): its budgets are sized to fit inside it, so the
    // 100 MiB object passes through it without an OOM kill (which would restart it, see below).
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(SIDECAR_MEMORY_LIMIT.0.to_owned(), SIDECAR_MEMORY_LIMIT.1.to_owned());
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {TEAM}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n"
        ))
        .await?;
    // The webhook answers only once its Service is programmed (failurePolicy Ignore); scenario 1
    // waited for that. A refused Pod (PodSecurity) fails here.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), TEAM);
    pods.create(&PostParams::default(), &pod).await.context("creating the app Pod")?;
    let created = pods.get("app").await?;
    let spec = created.spec.clone().context("no spec")?;
    let app_env = spec.containers[0].env.clone().unwrap_or_default();
    let env = |name: &str| app_env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(env("AWS_ENDPOINT_URL_S3").as_deref(), Some("http://127.0.0.1:9000"), "{app_env:?}");
    assert!(env("AWS_ENDPOINT_URL").is_none(), "the global AWS endpoint is set: {app_env:?}");
    let access_key = env("AWS_ACCESS_KEY_ID").context("no AWS_ACCESS_KEY_ID injected")?;
    assert_ne!(access_key, "blockproxy", "a public default key");
    let sidecar =
        spec.init_containers.iter().flatten().find(|c| c.name == webhook::SIDECAR_NAME).context("no sidecar")?;
    let limits = sidecar.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some(SIDECAR_MEMORY_LIMIT.1), "{sidecar:?}");

    // The sidecar starts and waits, the app does not start: no VolumeProxyGroup yet.
    let sidecar_status = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "blockproxy-mount").cloned())
    };
    eventually(WAIT, POLL, || async {
        let pod = pods.get("app").await?;
        let sidecar = sidecar_status(&pod).context("no sidecar status yet")?;
        anyhow::ensure!(
            sidecar.restart_count > 0 || sidecar.state.as_ref().is_some_and(|s| s.running.is_some()),
            "sidecar not started: {sidecar:?}"
        );
        Ok(())
    })
    .await?;

    cluster
        .apply(&format!(
            r#"apiVersion: blockproxy.io/v1alpha1
kind: VolumeProxyGroup
metadata: {{name: data-{GROUP}, namespace: {TEAM}}}
spec: {{volumeID: {VOLUME}, proxyGroup: {GROUP}, bucket: {BUCKET}, prefix: {PREFIX}}}
"#
        ))
        .await?;
    // The kubelet refreshes the optional ConfigMap and Secret volumes on its sync period (~1 min).
    let finished = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let pod = pods.get("app").await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        match phase.as_str() {
            "Succeeded" => Ok(Ok(pod)),
            "Failed" => Ok(Err(pod)),
            _ => anyhow::bail!("app Pod {phase}: {:?}", pod.status.as_ref().map(|s| &s.container_statuses)),
        }
    })
    .await;
    let logs = |container: &'static str| async move {
        cluster.kubectl(&["-n", TEAM, "logs", "app", "-c", container]).await.unwrap_or_else(|e| format!("{e:#}"))
    };
    let pod = match finished {
        Ok(Ok(pod)) => pod,
        Ok(Err(_)) | Err(_) => {
            anyhow::bail!(
                "the app Pod did not succeed: {finished:?}\napp logs:\n{}\nsidecar logs:\n{}",
                logs("app").await,
                logs("blockproxy-mount").await
            )
        }
    };
    let sidecar = sidecar_status(&pod).context("no sidecar status")?;
    assert_eq!(
        sidecar.restart_count, 0,
        "the sidecar restarted while it waited for its volume or carried the objects (OOM under its limit?): {sidecar:?}"
    );

    let out = logs("app").await;
    assert!(out.lines().any(|l| l == "wrong secret refused"), "app output:\n{out}");
    assert!(out.lines().any(|l| l == "eight at once intact"), "app output:\n{out}");
    // How often the budgets held requests back (reported, not asserted: it depends on how the
    // client's requests overlap).
    for line in out.lines().filter_map(|l| l.strip_prefix("sidecar ")) {
        eprintln!("real-cluster: scenario 4 sidecar under its {} limit: {line}", SIDECAR_MEMORY_LIMIT.1);
    }
    let objects: Vec<(&str, &str)> =
        out.lines().filter_map(|l| l.strip_prefix("object ")).filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(objects.len(), SIZES.len(), "app output:\n{out}");
    for (key, sha) in objects {
        let size: u64 = key.rsplit('-').next().unwrap_or_default().parse()?;
        let stored = format!("{PREFIX}/{key}");
        // Written back in the background: wait for the flush.
        let bytes = eventually(WAIT, POLL, || async {
            let object = store.minio.get_object().bucket(BUCKET).key(&stored).send().await?;
            Ok(object.body.collect().await?.into_bytes())
        })
        .await
        .with_context(|| format!("{stored} never reached MinIO"))?;
        assert_eq!(bytes.len() as u64, size, "{stored}");
        assert_eq!(sha256_hex(&bytes), sha, "{stored} in MinIO differs from what the app wrote");
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A client script for a workload Pod: writes `objects` objects of growing sizes (`step` bytes
/// apart) under `{dir}/` through the sidecar, reads each back, and pauses `pause` seconds after
/// each. Prints `acked <key> <sha256>`, `read <key>`, `writefail <key>` or `readfail <key>`.
fn write_read_script(dir: &str, objects: usize, step: u64, pause: &str) -> String {
    format!(
        r#"for i in $(seq 1 {objects}); do
  head -c $((500 + i * {step})) /dev/urandom > /tmp/o
  if ! rclone copyto --no-check-dest --retries 1 --low-level-retries 1 /tmp/o "bp:{VOLUME}/{dir}/obj-$i"; then
    echo "writefail {dir}/obj-$i"; continue
  fi
  echo "acked {dir}/obj-$i $(sha256sum < /tmp/o | cut -d' ' -f1)"
  rm -f /tmp/r
  rclone copyto --retries 1 --low-level-retries 1 "bp:{VOLUME}/{dir}/obj-$i" /tmp/r || true
  cmp -s /tmp/o /tmp/r && echo "read {dir}/obj-$i" || echo "readfail {dir}/obj-$i"
  sleep {pause}
done"#
    )
}

/// A Pod in `team-a` annotated for `volume` (so the webhook injects the sidecar), compliant with
/// PodSecurity `restricted`, whose app container runs `script` with the rclone image.
fn app_pod(name: &str, volume: &str, script: &str, restart_policy: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TEAM, "annotations": {"blockproxy.io/volume": volume}},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": RCLONE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("a valid Pod")
}

/// A long-running workload Pod in `team-a` (sidecar injected) for `kubectl exec`, with the volume
/// annotation and `annotations`.
async fn start_workload(cluster: &Cluster, name: &str, annotations: &[(&str, &str)]) -> Result<()> {
    let mut pod = app_pod(name, VOLUME, "trap 'exit 0' TERM; while true; do sleep 1; done", "Always");
    let all = pod.metadata.annotations.get_or_insert_default();
    all.extend(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let pods: Api<Pod> = Api::namespaced(cluster.client(), TEAM);
    pods.create(&PostParams::default(), &pod).await?;
    eventually(WAIT, POLL, || async {
        let pod = pods.get(name).await?;
        anyhow::ensure!(pod_ready(&pod), "{name} not Ready: {:?}", pod.status.as_ref().map(|s| &s.conditions));
        Ok(())
    })
    .await
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs a shell script in the app container of a workload Pod (with [`RCLONE_ENV`] first).
async fn in_workload(cluster: &Cluster, pod: &str, script: &str) -> Result<String> {
    let script = format!("{RCLONE_ENV}\n{script}");
    cluster.kubectl(&["-n", TEAM, "exec", pod, "-c", "app", "--", "/bin/sh", "-c", &script]).await
}

/// The proxy Pods of the group, by node.
async fn proxy_pods(cluster: &Cluster) -> Result<std::collections::BTreeMap<String, Pod>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), SYSTEM_NS);
    let list = pods.list(&ListParams::default().labels(&format!("blockproxy.io/proxy-group={GROUP}"))).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.spec.as_ref()?.node_name.clone()?, p)))
        .collect())
}

/// Scenario 5: with MinIO cut off (toxiproxy down) and objects acknowledged but not flushed,
/// one proxy's process is killed (the kubelet restarts its container) and another proxy's Pod
/// is deleted (the operator recreates it: same node, same PVC, a new Pod IP). Every object
/// still reads back, from the proxies alone, once discovery has the new address: a proxy keeps
/// its place in rendezvous across restarts (it is ranked by node, not by IP). MinIO comes back,
/// everything is flushed, and the test counts the acknowledged objects: none is lost.
async fn scenario_5_proxy_restarts_while_the_store_is_cut(cluster: &Cluster, store: &Store) -> Result<()> {
    const OBJECTS: usize = 30;
    start_workload(cluster, "writer", &[]).await?;
    store.toxiproxy.set_down("minio", true).await?;
    let result = async {
        let acked = write_objects(cluster, "s5", OBJECTS).await?;
        // The proxies acknowledge writes while the store is down (up to their dirty quota).
        assert_eq!(acked.len(), OBJECTS, "writes refused while the store is cut: only {acked:?}");

        let pvcs = |p: &Pod| -> Vec<String> {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
                .collect()
        };
        let before = proxy_pods(cluster).await?;
        let nodes: Vec<String> = before.keys().cloned().collect();
        anyhow::ensure!(nodes.len() >= 2, "proxy Pods: {nodes:?}");
        let pods: Api<Pod> = Api::namespaced(cluster.client(), SYSTEM_NS);

        // A crash: kill -9 the proxy process of the first node's Pod.
        let crashed = &before[&nodes[0]];
        let crashed_name = crashed.metadata.name.clone().context("no name")?;
        let restarts = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
        };
        let restarts_before = restarts(crashed);
        cluster.kill_in_pod(crashed.metadata.uid.as_deref().context("no uid")?, "blockproxy").await?;
        eventually(WAIT, POLL, || async {
            let pod = pods.get(&crashed_name).await?;
            anyhow::ensure!(pod.metadata.uid == crashed.metadata.uid, "{crashed_name} was replaced, not restarted");
            anyhow::ensure!(
                restarts(&pod) > restarts_before && pod_ready(&pod),
                "{crashed_name} not restarted and Ready yet"
            );
            Ok(())
        })
        .await?;

        // A deleted Pod: recreated by the operator on the same node and PVC, with a new IP.
        let deleted = &before[&nodes[1]];
        let deleted_name = deleted.metadata.name.clone().context("no name")?;
        pods.delete(&deleted_name, &Default::default()).await?;
        let recreated = eventually(WAIT, POLL, || async {
            let now = proxy_pods(cluster).await?;
            let pod = now.get(&nodes[1]).with_context(|| format!("no proxy Pod on {}", nodes[1]))?;
            anyhow::ensure!(pod.metadata.uid != deleted.metadata.uid && pod_ready(pod), "{deleted_name} not back yet");
            Ok(pod.clone())
        })
        .await
        .map_err(|e| e.context(format!("{deleted_name} was not recreated")))?;
        assert_eq!(pvcs(&recreated), pvcs(deleted), "the recreated proxy has another PVC");

        // Still cut off: every object reads back from the proxies (the sidecar picks up the new
        // address when the kubelet refreshes its discovery file, and reads from a proxy that came
        // back or was added are checked against the others for the recovery window, ADR 0002).
        // (copyto, not cat: `rclone cat` of a file lists its parent directory.)
        let check: String = acked
            .iter()
            .map(|(key, sha)| {
                format!(
                    "rm -f /tmp/r; rclone copyto --retries 1 --low-level-retries 1 bp:{VOLUME}/{key} /tmp/r || true\n\
                     got=$(sha256sum < /tmp/r | cut -d' ' -f1) || got=error\n\
                     [ \"$got\" = {sha} ] || {{ echo \"{key}: $got\"; bad=1; }}\n"
                )
            })
            .collect();
        eventually(Duration::from_secs(240), Duration::from_secs(2), || async {
            let out = in_workload(cluster, "writer", &format!("bad=0\n{check}exit $bad")).await?;
            Ok(out)
        })
        .await
        .context("the acknowledged objects do not all read back while the store is cut")?;
        Ok::<_, anyhow::Error>(acked)
    }
    .await;
    store.toxiproxy.set_down("minio", false).await?;
    let acked = match result {
        Ok(acked) => acked,
        Err(e) => return Err(e.context(pod_logs(cluster, SYSTEM_NS, "blockproxy.io/proxy-group").await)),
    };

    // The store is back: every acknowledged object is flushed, byte-identical.
    let lost = lost_objects(store, &acked).await;
    eprintln!("real-cluster: scenario 5: {} acknowledged objects, {} lost {lost:?}", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged objects lost: {lost:?}");
    Ok(())
}

/// Writes `count` objects of different sizes under `prefix/` from the writer Pod, returning the
/// acknowledged ones with their SHA-256 (a refused write is not acknowledged, so not counted).
async fn write_objects(cluster: &Cluster, prefix: &str, count: usize) -> Result<Vec<(String, String)>> {
    let out = in_workload(
        cluster,
        "writer",
        &format!(
            r#"for i in $(seq 1 {count}); do
  head -c $((1000 + i * 7919)) /dev/urandom > /tmp/o
  if rclone copyto --no-check-dest --retries 1 --low-level-retries 1 /tmp/o "bp:{VOLUME}/{prefix}/obj-$i"; then
    echo "acked {prefix}/obj-$i $(sha256sum < /tmp/o | cut -d' ' -f1)"
  else
    echo "failed {prefix}/obj-$i"
  fi
done"#
        ),
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// The acknowledged objects that do not reach MinIO byte-identical within 5 minutes.
async fn lost_objects(store: &Store, acked: &[(String, String)]) -> Vec<String> {
    let missing = || async {
        let mut missing = Vec::new();
        for (key, sha) in acked {
            let stored = format!("{PREFIX}/{key}");
            let same = match store.minio.get_object().bucket(BUCKET).key(&stored).send().await {
                Ok(object) => object.body.collect().await.is_ok_and(|b| sha256_hex(&b.into_bytes()) == *sha),
                Err(_) => false,
            };
            if !same {
                missing.push(key.clone());
            }
        }
        missing
    };
    let flushed = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let missing = missing().await;
        anyhow::ensure!(missing.is_empty(), "not (yet) in MinIO: {missing:?}");
        Ok(())
    })
    .await;
    if flushed.is_ok() { Vec::new() } else { missing().await }
}

/// Scenario 9: deleting the ProxyGroup while it holds unflushed writes (MinIO cut) drains every
/// proxy first: the group stays (finalizer) with its proxies and says Draining; once MinIO is
/// back, every acknowledged object is in MinIO and everything the operator created for the
/// group is gone, but not the PVs. Then the same group is created again: its proxies run on the
/// kept (Released) PVs of the first one (issue 11's "a kept local PV cannot be used again").
async fn scenario_9_deleting_the_group_drains_first(cluster: &Cluster, store: &Store) -> Result<()> {
    use blockproxy_operator::crd::ProxyGroup;
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret, Service};
    const OBJECTS: usize = 10;
    let groups: Api<ProxyGroup> = Api::all(cluster.client());
    let selector = format!("blockproxy.io/proxy-group={GROUP}");
    store.toxiproxy.set_down("minio", true).await?;
    let drained = async {
        let acked = write_objects(cluster, "s9", OBJECTS).await?;
        assert_eq!(acked.len(), OBJECTS, "writes refused while the store is cut: only {acked:?}");
        groups.delete(GROUP, &Default::default()).await?;
        eventually(WAIT, POLL, || async {
            let g = groups.get(GROUP).await?;
            let draining = g
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Draining" && c.status == "True"));
            anyhow::ensure!(g.metadata.deletion_timestamp.is_some() && draining, "not draining: {:?}", g.status);
            Ok(())
        })
        .await?;
        // A proxy without unflushed writes drains at once and goes; those holding some cannot
        // flush while MinIO is cut, so they stay (with 10 objects, at least one holds some).
        let proxies = proxy_pods(cluster).await?;
        assert!(!proxies.is_empty(), "every proxy removed while MinIO is cut");
        Ok::<_, anyhow::Error>(acked)
    }
    .await;
    store.toxiproxy.set_down("minio", false).await?;
    let acked = drained?;

    // Drained: the group goes, and with it everything the operator made for it.
    eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        anyhow::ensure!(groups.get_opt(GROUP).await?.is_none(), "the group is still there");
        let lp = ListParams::default().labels(&selector);
        let ns = |c| Api::<Pod>::namespaced(c, SYSTEM_NS);
        let pods = ns(cluster.client()).list(&lp).await?.items.len();
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(cluster.client(), SYSTEM_NS).list(&lp).await?.items.len();
        let secrets = Api::<Secret>::namespaced(cluster.client(), SYSTEM_NS).list(&lp).await?.items.len();
        let services = Api::<Service>::namespaced(cluster.client(), SYSTEM_NS).list(&lp).await?.items.len();
        anyhow::ensure!(
            pods + pvcs + secrets + services == 0,
            "left: {pods} Pods, {pvcs} PVCs, {secrets} Secrets, {services} Services"
        );
        Ok(())
    })
    .await
    .map_err(|e| e.context(format!("group {GROUP} was not removed")))?;
    let lost = lost_objects(store, &acked).await;
    eprintln!("real-cluster: scenario 9: {} acknowledged objects, {} lost {lost:?}", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged objects lost: {lost:?}");
    // Kept, and Released: the claims that bound them are gone, and their claimRef still names them.
    let pvs = eventually(WAIT, POLL, || async {
        let pvs = Api::<PersistentVolume>::all(cluster.client()).list(&ListParams::default()).await?.items;
        let phases: Vec<Option<String>> = pvs.iter().map(|p| p.status.as_ref().and_then(|s| s.phase.clone())).collect();
        anyhow::ensure!(phases.iter().all(|p| p.as_deref() == Some("Released")), "PV phases {phases:?}");
        Ok(pvs)
    })
    .await?;
    assert_eq!(pvs.len(), cluster.pv_nodes().len(), "the PVs are kept");

    // The same group again, on the same (now Released) PVs.
    cluster.apply(&proxy_group_yaml(store)).await?;
    let ready = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let g = groups.get(GROUP).await?;
        let ready = g.status.as_ref().map_or(0, |s| s.ready_proxies);
        anyhow::ensure!(ready == 3, "{ready} proxies ready: {:?}", g.status);
        Ok(())
    })
    .await;
    if let Err(e) = ready {
        let pvcs = cluster.kubectl(&["-n", SYSTEM_NS, "get", "pvc", "-o", "wide"]).await.unwrap_or_default();
        let pvs = cluster.kubectl(&["get", "pv", "-o", "wide"]).await.unwrap_or_default();
        return Err(e.context(format!("the group did not come back on its kept PVs\n{pvcs}\n{pvs}")));
    }
    Ok(())
}

/// Scenario 10: security on the real cluster (the sidecar's endpoint variable and per-Pod
/// credentials are checked by scenario 4).
/// - The operator's ServiceAccount (impersonated) cannot read a workload Secret, nor change or
///   delete a Secret or ConfigMap it did not create (RBAC, and the chart's admission policy).
/// - Namespace `team-b`, allowed by the group, cannot attach team-a's bucket and prefix: its
///   VolumeProxyGroup is refused (StoreInUse) and gets no token or discovery document.
async fn scenario_10_security(cluster: &Cluster) -> Result<()> {
    use blockproxy_operator::crd::VolumeProxyGroup;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let operator = format!("system:serviceaccount:{SYSTEM_NS}:{RELEASE}");
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-secret, namespace: {TEAM}}}\nstringData: {{k: v}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-config, namespace: {TEAM}}}\ndata: {{k: v}}\n"
        ))
        .await?;
    // The operator's identity, impersonated by the admin: requests go straight to the API server
    // (kubectl would read an object before patching it, and reads are refused anyway).
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info.impersonate = Some(operator.clone());
    let sa = kube::Client::try_from(config)?;
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), TEAM);
    let configs: Api<ConfigMap> = Api::namespaced(sa, TEAM);
    // RBAC refuses reads; its ClusterRole allows patch and delete by name, which the chart's
    // admission policy refuses for objects the operator did not create.
    fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>, by: &str) {
        match r {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(by) => {}
            other => panic!("the operator could {what} (expected a 403 from {by}): {other:?}"),
        }
    }
    let own = serde_json::json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "blockproxy-operator"}}});
    let merge = kube::api::Patch::Merge(&own);
    let params = kube::api::PatchParams::default();
    refused("read the volume's token Secret", secrets.get("blockproxy-token-team-a-data").await, "cannot get");
    refused("list Secrets", secrets.list(&ListParams::default()).await, "cannot list");
    let policy = "ValidatingAdmissionPolicy";
    refused("label a foreign Secret as its own", secrets.patch("app-secret", &params, &merge).await, policy);
    refused("change a foreign ConfigMap", configs.patch("app-config", &params, &merge).await, policy);
    refused("delete a foreign Secret", secrets.delete("app-secret", &Default::default()).await, policy);
    refused("delete a foreign ConfigMap", configs.delete("app-config", &Default::default()).await, policy);
    Api::<Secret>::namespaced(cluster.client(), TEAM).get("app-secret").await.context("app-secret is gone")?;
    Api::<ConfigMap>::namespaced(cluster.client(), TEAM).get("app-config").await.context("app-config is gone")?;

    // Another namespace, allowed by the group, names team-a's place in the store.
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-b}\n").await?;
    cluster
        .kubectl(&[
            "patch",
            "pg",
            GROUP,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"allowedNamespaces":["team-a","team-b"]}}"#,
        ])
        .await?;
    cluster
        .apply(&format!(
            r#"apiVersion: blockproxy.io/v1alpha1
kind: VolumeProxyGroup
metadata: {{name: takeover, namespace: team-b}}
spec: {{volumeID: mine, proxyGroup: {GROUP}, bucket: {BUCKET}, prefix: {PREFIX}/app}}
"#
        ))
        .await?;
    let vpgs: Api<VolumeProxyGroup> = Api::namespaced(cluster.client(), "team-b");
    let reason = eventually(WAIT, POLL, || async {
        let v = vpgs.get("takeover").await?;
        let accepted = v.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Accepted"));
        let c = accepted.context("no Accepted condition yet")?;
        Ok((c.status, c.reason, c.message))
    })
    .await?;
    assert_eq!((reason.0.as_str(), reason.1.as_str()), ("False", "StoreInUse"), "{reason:?}");
    assert!(reason.2.contains(TEAM), "{reason:?}");
    let token = Api::<Secret>::namespaced(cluster.client(), "team-b").get_opt("blockproxy-token-mine").await?;
    assert!(token.is_none(), "team-b got a token for team-a's data");
    vpgs.delete("takeover", &Default::default()).await?;
    Ok(())
}

/// Scenario 6: a node leaves the group (the group's `nodeSelector` no longer matches it) while a
/// client writes and reads back, object after object: its proxy is drained before its Pod and PVC
/// go, no request of the client fails, and every acknowledged object is in MinIO. Then the node
/// matches again: a proxy runs there again, on the PV the first one left Released.
async fn scenario_6_a_node_leaves_and_comes_back(cluster: &Cluster, store: &Store) -> Result<()> {
    const OBJECTS: usize = 40;
    const LABEL: &str = "blockproxy-test/storage";
    let leaving = cluster.pv_nodes().last().context("no PV nodes")?.clone();
    for node in cluster.pv_nodes().iter().filter(|n| **n != leaving) {
        cluster.kubectl(&["label", "node", node, &format!("{LABEL}=yes"), "--overwrite"]).await?;
    }
    let before = proxy_pods(cluster).await?;
    let old_pod = before.get(&leaving).context("no proxy on the leaving node")?.clone();
    let script = write_read_script("s6", OBJECTS, 4099, "0.5");
    let client = in_workload(cluster, "writer", &script);
    let leave = async {
        let selector = format!(r#"{{"spec":{{"placement":{{"nodeSelector":{{"{LABEL}":"yes"}}}}}}}}"#);
        cluster.kubectl(&["patch", "pg", GROUP, "--type", "merge", "-p", &selector]).await?;
        eventually(WAIT, POLL, || async {
            let pods = proxy_pods(cluster).await?;
            anyhow::ensure!(!pods.contains_key(&leaving) && pods.len() == 2, "proxies on {:?}", pods.keys());
            Ok(())
        })
        .await
    };
    let (out, left) = tokio::join!(client, leave);
    let out = out?;
    left.map_err(|e| e.context(format!("the proxy on {leaving} was not removed")))?;
    // It was drained first: the operator says so.
    let events = cluster.kubectl(&["get", "events", "-A", "--field-selector", "reason=Drained", "-o", "json"]).await?;
    assert!(events.contains(&leaving), "no Drained event for {leaving}: {events}");

    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("writefail") || l.starts_with("readfail")).collect();
    let acked: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    eprintln!(
        "real-cluster: scenario 6: {} objects written and read back, {} failed requests",
        acked.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "the client saw failures while the proxy left: {failed:?}");
    assert_eq!(acked.len(), OBJECTS);
    let lost = lost_objects(store, &acked).await;
    assert!(lost.is_empty(), "acknowledged objects lost: {lost:?}");

    // Back in the group: a new proxy on the same node and (Released, handed over) PV.
    cluster
        .kubectl(&["patch", "pg", GROUP, "--type", "merge", "-p", r#"{"spec":{"placement":{"nodeSelector":null}}}"#])
        .await?;
    let back = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let pods = proxy_pods(cluster).await?;
        let pod = pods.get(&leaving).context("no proxy on the node yet")?;
        anyhow::ensure!(pod.metadata.uid != old_pod.metadata.uid && pod_ready(pod), "not ready yet");
        Ok(pod.clone())
    })
    .await;
    if let Err(e) = back {
        let pvcs = cluster.kubectl(&["-n", SYSTEM_NS, "get", "pvc", "-o", "wide"]).await.unwrap_or_default();
        let pvs = cluster.kubectl(&["get", "pv", "-o", "wide"]).await.unwrap_or_default();
        return Err(e.context(format!("no proxy back on {leaving}\n{pvcs}\n{pvs}")));
    }
    Ok(())
}

const FAR_GROUP: &str = "dc2";
const FAR_CLASS: &str = "far-nvme";
/// The far site's extra latency (toxiproxy between the workload Pod and its proxy).
const FAR_LATENCY_MS: u64 = 40;
const SITES_POD: &str = "sites";
const DIRECT_STORE_SECRET: &str = "store-direct";

/// Scenario 8: two sites for one volume. A second ProxyGroup `dc2` (one proxy, on the node
/// without a `local-nvme` PV) serves the volume too, and the workload Pod `sites` reaches it
/// through toxiproxy with extra latency (its connections to dc2 are redirected there by iptables
/// in its own network namespace); the Pod is annotated with a Secret of direct-store credentials.
/// A client in the Pod writes and reads back objects in each phase, and the sidecar's
/// `blockproxy_client_served_total` says who answered:
/// 1. both sites up: the sidecar picks the near one (dc1), which serves everything;
/// 2. dc1 cut off from the Pod (iptables DROP): it fails over to dc2, which serves everything;
/// 3. dc1 back: it returns to dc1;
/// 4. both cut: it goes straight to the store (the objects are in MinIO while both are cut);
/// 5. both back: dc1 again.
///
/// No request of the client fails, and every acknowledged object is in MinIO, byte-identical.
/// The network faults need a local cluster (the test enters the Pod's network namespace).
async fn scenario_8_two_sites(cluster: &Cluster, store: &Store) -> Result<()> {
    if !cluster.is_local() {
        eprintln!("SKIPPED scenario 8: cutting a site needs a local cluster (iptables in the Pod's network)");
        return Ok(());
    }
    let far_node = cluster
        .nodes()
        .iter()
        .find(|n| !cluster.pv_nodes().contains(n))
        .or(cluster.nodes().last())
        .context("no nodes")?
        .clone();
    cluster.add_pvs(FAR_CLASS, &[&far_node]).await?;
    cluster.apply(&far_site_yaml(store)).await?;
    let far = wait_for_site(cluster, FAR_GROUP, 1).await?;
    let near = wait_for_site(cluster, GROUP, 3).await?;
    start_workload(cluster, SITES_POD, &[(webhook::DIRECT_STORE_ANNOTATION, DIRECT_STORE_SECRET)]).await?;
    let pod_uid = Api::<Pod>::namespaced(cluster.client(), TEAM)
        .get(SITES_POD)
        .await?
        .metadata
        .uid
        .context("the sites Pod has no uid")?;
    let iptables = |args: Vec<String>| {
        let uid = pod_uid.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.in_pod_network(&uid, "iptables", &args).await
        }
    };

    // The far site, behind toxiproxy: one toxiproxy listener per far proxy, and the Pod's
    // connections to that proxy redirected to it.
    let toxiproxy_ip = pod_ip(cluster, STORE_NS, "app=toxiproxy").await?;
    let mut far_proxies = Vec::new();
    for (i, address) in far.iter().enumerate() {
        let name = format!("far-{i}");
        let port = 19_000 + i;
        eventually(WAIT, POLL, || async {
            if store.toxiproxy.toxics(&name).await.is_err() {
                store.toxiproxy.create_proxy_on(&name, &format!("0.0.0.0:{port}"), address).await?;
            }
            if store.toxiproxy.toxics(&name).await?.as_array().is_some_and(Vec::is_empty) {
                store.toxiproxy.add_latency(&name, FAR_LATENCY_MS, 0).await?;
            }
            Ok(())
        })
        .await?;
        let (ip, proxy_port) = address.rsplit_once(':').context("an endpoint without a port")?;
        iptables(
            [
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                ip,
                "--dport",
                proxy_port,
                "-j",
                "DNAT",
                "--to-destination",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("{toxiproxy_ip}:{port}")])
            .collect(),
        )
        .await?;
        far_proxies.push(name);
    }
    let cut_near = |cut: bool| {
        let near = near.clone();
        let iptables = &iptables;
        async move {
            for address in &near {
                let (ip, port) = address.rsplit_once(':').context("an endpoint without a port")?;
                let op = if cut { "-A" } else { "-D" };
                iptables(
                    [op, "OUTPUT", "-p", "tcp", "-d", ip, "--dport", port, "-j", "DROP"].map(String::from).to_vec(),
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let cut_far = |cut: bool| {
        let far_proxies = far_proxies.clone();
        async move {
            for name in &far_proxies {
                store.toxiproxy.set_down(name, cut).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    };

    let mut acked = Vec::new();
    let mut requests = 0;
    let mut phase = async |name: &str, by: &str| -> Result<()> {
        wait_for_choice(cluster, if by == "store" { None } else { Some(by) }).await?;
        let before = served(cluster).await?;
        let run = sites_client(cluster, name).await?;
        let after = served(cluster).await?;
        let delta: BTreeMap<String, u64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        eprintln!(
            "real-cluster: scenario 8: {name}: {} requests, {} failed, served by {delta:?}",
            run.requests,
            run.failed.len()
        );
        anyhow::ensure!(run.failed.is_empty(), "{name}: the client saw failed requests: {:?}", run.failed);
        anyhow::ensure!(
            delta.get(by).is_some_and(|n| *n > 0) && delta.len() == 1,
            "{name}: expected every request served by {by}, got {delta:?}"
        );
        requests += run.requests;
        // Flushed before the next cut, so no phase depends on a site it cannot reach.
        let lost = lost_objects(store, &run.acked).await;
        anyhow::ensure!(lost.is_empty(), "{name}: acknowledged objects not in MinIO: {lost:?}");
        acked.extend(run.acked);
        Ok(())
    };
    let result = async {
        phase("both sites up", GROUP).await?;
        cut_near(true).await?;
        phase("near site cut", FAR_GROUP).await?;
        cut_near(false).await?;
        phase("near site back", GROUP).await?;
        cut_near(true).await?;
        cut_far(true).await?;
        phase("both sites cut", "store").await?;
        cut_near(false).await?;
        cut_far(false).await?;
        phase("both sites back", GROUP).await
    }
    .await;
    // Leave nothing cut for the next scenarios, whatever happened.
    let _ = cut_far(false).await;
    let _ = iptables(["-F", "OUTPUT"].map(String::from).to_vec()).await;
    if let Err(e) = result {
        let status = sidecar_get(cluster, "status").await.unwrap_or_else(|e| format!("{e:#}"));
        let logs = cluster
            .kubectl(&["-n", TEAM, "logs", SITES_POD, "-c", "blockproxy-mount", "--tail", "30"])
            .await
            .unwrap_or_default();
        return Err(e.context(format!("sidecar status: {status}\nsidecar logs:\n{logs}")));
    }
    eprintln!("real-cluster: scenario 8: {requests} requests, 0 failed; {} acknowledged objects, 0 lost", acked.len());
    Api::<Pod>::namespaced(cluster.client(), TEAM).delete(SITES_POD, &Default::default()).await?;
    remove_far_site(cluster, &far_node).await
}

/// The far site goes again (drained first), and its PV and StorageClass with it, so the later
/// scenarios see the near site alone.
async fn remove_far_site(cluster: &Cluster, far_node: &str) -> Result<()> {
    use blockproxy_operator::crd::{ProxyGroup, VolumeProxyGroup};
    use k8s_openapi::api::core::v1::PersistentVolume;
    use k8s_openapi::api::storage::v1::StorageClass;
    let vpgs: Api<VolumeProxyGroup> = Api::namespaced(cluster.client(), TEAM);
    vpgs.delete(&format!("data-{FAR_GROUP}"), &Default::default()).await?;
    let groups: Api<ProxyGroup> = Api::all(cluster.client());
    groups.delete(FAR_GROUP, &Default::default()).await?;
    eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        anyhow::ensure!(groups.get_opt(FAR_GROUP).await?.is_none(), "the group {FAR_GROUP} is still there");
        Ok(())
    })
    .await?;
    let pvs: Api<PersistentVolume> = Api::all(cluster.client());
    let pv = format!("{FAR_CLASS}-{far_node}");
    pvs.delete(&pv, &Default::default()).await?;
    eventually(WAIT, POLL, || async {
        anyhow::ensure!(pvs.get_opt(&pv).await?.is_none(), "the PV {pv} is still there");
        Ok(())
    })
    .await?;
    Api::<StorageClass>::all(cluster.client()).delete(FAR_CLASS, &Default::default()).await?;
    Ok(())
}

/// The far site's ProxyGroup (the near one's settings, on the `far-nvme` class), its
/// VolumeProxyGroup for the same volume, and the direct-store Secret of the workload Pods.
fn far_site_yaml(store: &Store) -> String {
    let group = proxy_group_yaml(store).replace(&format!("name: {GROUP}}}"), &format!("name: {FAR_GROUP}}}"));
    let group = group
        .replace("regionCode: dc1", &format!("regionCode: {FAR_GROUP}"))
        .replace("storageClassName: local-nvme", &format!("storageClassName: {FAR_CLASS}"));
    let credentials = format!("access_key_id: {}\nsecret_access_key: {}\n", store.access_key, store.secret_key);
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": DIRECT_STORE_SECRET, "namespace": TEAM},
        "stringData": {webhook::DIRECT_STORE_KEY: credentials},
    });
    format!(
        r#"{group}---
apiVersion: blockproxy.io/v1alpha1
kind: VolumeProxyGroup
metadata: {{name: data-{FAR_GROUP}, namespace: {TEAM}}}
spec: {{volumeID: {VOLUME}, proxyGroup: {FAR_GROUP}, bucket: {BUCKET}, prefix: {PREFIX}}}
---
{secret}
"#
    )
}

/// The `ip:port` of each endpoint of `group` in the volume's discovery document, once it lists
/// `count` of them (the document names each proxy by its stable DNS name; the group's status
/// has the IP of the proxy on that node, which iptables needs).
async fn wait_for_site(cluster: &Cluster, group: &str, count: usize) -> Result<Vec<String>> {
    use blockproxy_operator::crd::ProxyGroup;
    use k8s_openapi::api::core::v1::ConfigMap;
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client(), TEAM);
    let groups: Api<ProxyGroup> = Api::all(cluster.client());
    let name = blockproxy_operator::meta::discovery_config_map_name(VOLUME);
    eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let map = maps.get(&name).await?;
        let json = map.data.and_then(|d| d.get(DiscoveryDocument::CONFIGMAP_KEY).cloned()).context("no document")?;
        let doc = DiscoveryDocument::from_json(json.as_bytes())?;
        let endpoints: Vec<_> =
            doc.groups.iter().filter(|g| g.name == group).flat_map(|g| g.endpoints.clone()).collect();
        anyhow::ensure!(endpoints.len() == count, "{group} has {endpoints:?} in the discovery document");
        let proxies = groups.get(group).await?.status.unwrap_or_default().proxies;
        endpoints
            .iter()
            .map(|e| {
                proxies
                    .iter()
                    .find(|p| Some(&p.node) == e.node.as_ref())
                    .and_then(|p| p.address.clone())
                    .with_context(|| format!("no proxy address in {group}'s status for {e:?}"))
            })
            .collect()
    })
    .await
}

/// The IP of the first Pod matching `selector`.
async fn pod_ip(cluster: &Cluster, namespace: &str, selector: &str) -> Result<String> {
    let pods =
        Api::<Pod>::namespaced(cluster.client(), namespace).list(&ListParams::default().labels(selector)).await?;
    pods.items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .with_context(|| format!("no Pod {selector} with an IP in {namespace}"))
}

/// GET of the sidecar's admin path in the `sites` Pod.
async fn sidecar_get(cluster: &Cluster, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:9000/_blockproxy/{path}");
    cluster.kubectl(&["-n", TEAM, "exec", SITES_POD, "-c", "app", "--", "wget", "-qO-", &url]).await
}

/// Waits until the sidecar has chosen `group` (`None`: no group, every proxy unreachable).
async fn wait_for_choice(cluster: &Cluster, group: Option<&str>) -> Result<()> {
    eventually(Duration::from_secs(120), Duration::from_secs(1), || async {
        let status: serde_json::Value = serde_json::from_str(&sidecar_get(cluster, "status").await?)?;
        let chosen = status["chosenGroup"].as_str();
        anyhow::ensure!(chosen == group, "the sidecar chose {chosen:?}: {status}");
        Ok(())
    })
    .await
}

/// The sidecar's `blockproxy_client_served_total`, summed over operations, by who served.
async fn served(cluster: &Cluster) -> Result<BTreeMap<String, u64>> {
    let text = sidecar_get(cluster, "metrics").await?;
    let mut by = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("blockproxy_client_served_total{")) {
        let (labels, value) = line.rsplit_once(' ').context("a metric line without a value")?;
        let who = labels.split("by=\"").nth(1).and_then(|r| r.split('"').next()).context("no `by` label")?;
        *by.entry(who.to_owned()).or_insert(0) += value.parse::<f64>()? as u64;
    }
    Ok(by)
}

/// What one run of the client in the `sites` Pod saw.
struct ClientRun {
    requests: usize,
    failed: Vec<String>,
    acked: Vec<(String, String)>,
}

/// Writes objects under `s8/<phase>/` from the `sites` Pod and reads each back.
async fn sites_client(cluster: &Cluster, phase: &str) -> Result<ClientRun> {
    const OBJECTS: usize = 5;
    let dir = format!("s8/{}", phase.replace(' ', "-"));
    let script = write_read_script(&dir, OBJECTS, 5113, "0");
    let out = in_workload(cluster, SITES_POD, &script).await?;
    let acked: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let failed: Vec<String> =
        out.lines().filter(|l| l.starts_with("writefail") || l.starts_with("readfail")).map(str::to_owned).collect();
    let reads = out.lines().filter(|l| l.starts_with("read ")).count();
    anyhow::ensure!(acked.len() + failed.len() + reads >= OBJECTS, "the client stopped early:\n{out}");
    Ok(ClientRun { requests: acked.len() + reads + failed.len(), failed, acked })
}

/// Scenario 7: `helm upgrade` to a new image tag (the same image, re-tagged). The group names no
/// image of its own, so its proxies follow the operator's default: they are replaced one at a
/// time, each new one Ready before the next goes (never more than one of the three missing or
/// not Ready), while a client in a workload Pod writes and reads back objects throughout. No
/// request of the client fails, and every acknowledged object is in MinIO.
async fn scenario_7_helm_upgrade_rolls_the_proxies(cluster: &Cluster, store: &Store, image: &str) -> Result<()> {
    const CLIENT_POD: &str = "roller";
    let (repository, _) = image.rsplit_once(':').context("image reference without a tag")?;
    let tag = "upgraded";
    let upgraded = format!("{repository}:{tag}");
    let packed = common::blockproxy_image_as(&upgraded).await?;
    cluster.import_image(&packed.tarball).await?;
    let before = proxy_pods(cluster).await?;
    anyhow::ensure!(before.len() == 3, "proxies before the upgrade: {:?}", before.keys());
    let image_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
    anyhow::ensure!(before.values().all(|p| image_of(p).as_deref() == Some(image)), "the proxies run another image");
    start_workload(cluster, CLIENT_POD, &[]).await?;

    // Writes and reads back, object after object, until told to stop (after the roll).
    let script = format!(
        r#"i=0
while [ ! -e /tmp/stop ]; do
  i=$((i + 1))
  head -c $((900 + i * 3001)) /dev/urandom > /tmp/o
  if ! rclone copyto --no-check-dest --retries 1 --low-level-retries 1 /tmp/o "bp:{VOLUME}/s7/obj-$i" 2>/tmp/e; then
    echo "writefail s7/obj-$i $(date -u +%T) $(grep -i error /tmp/e | tail -1)"; continue
  fi
  echo "acked s7/obj-$i $(sha256sum < /tmp/o | cut -d' ' -f1)"
  rm -f /tmp/r
  rclone copyto --retries 1 --low-level-retries 1 "bp:{VOLUME}/s7/obj-$i" /tmp/r || true
  cmp -s /tmp/o /tmp/r && echo "read s7/obj-$i" || echo "readfail s7/obj-$i"
done"#
    );
    let client = in_workload(cluster, CLIENT_POD, &script);
    let roll = async {
        // Let the client get going first, so its requests span the whole roll.
        eventually(WAIT, POLL, || async {
            let out = cluster.kubectl(&["-n", TEAM, "exec", CLIENT_POD, "-c", "app", "--", "ls", "/tmp"]).await?;
            anyhow::ensure!(out.lines().any(|l| l == "r"), "the client has not read anything yet");
            Ok(())
        })
        .await?;
        let image_tag = format!("image.tag={tag}");
        let upgrade = upgrade_release(cluster, &image_tag);
        // Watch the group while it rolls: the most proxies missing or not Ready at once.
        let watch = async {
            let most_unavailable = std::sync::atomic::AtomicUsize::new(0);
            let (most, upgraded) = (&most_unavailable, upgraded.as_str());
            eventually(Duration::from_secs(400), POLL, || async move {
                let pods = proxy_pods(cluster).await?;
                let ready = pods.values().filter(|p| pod_ready(p)).count();
                most.fetch_max(3usize.saturating_sub(ready), std::sync::atomic::Ordering::SeqCst);
                let rolled = pods.values().filter(|p| image_of(p).as_deref() == Some(upgraded) && pod_ready(p)).count();
                anyhow::ensure!(rolled == 3, "{rolled} of 3 proxies rolled");
                Ok(())
            })
            .await?;
            Ok::<_, anyhow::Error>(most_unavailable.into_inner())
        };
        let (done, most_unavailable) = tokio::join!(upgrade, watch);
        done?;
        let most_unavailable = most_unavailable?;
        // Let the client run on the new proxies a little (read-back of what it wrote during the roll).
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, anyhow::Error>(most_unavailable)
    };
    let stop = async {
        let rolled = roll.await;
        let stopped = cluster.kubectl(&["-n", TEAM, "exec", CLIENT_POD, "-c", "app", "--", "touch", "/tmp/stop"]).await;
        (rolled, stopped)
    };
    let (out, (rolled, stopped)) = tokio::join!(client, stop);
    let out = out?;
    stopped?;
    let most_unavailable = rolled.map_err(|e| e.context(format!("the proxies did not roll to {upgraded}")))?;
    let after = proxy_pods(cluster).await?;
    for (node, pod) in &after {
        let old = before.get(node).with_context(|| format!("a proxy on a new node {node}"))?;
        anyhow::ensure!(pod.metadata.uid != old.metadata.uid, "the proxy on {node} was not replaced");
    }
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("writefail") || l.starts_with("readfail")).collect();
    let acked: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let reads = out.lines().filter(|l| l.starts_with("read ")).count();
    eprintln!(
        "real-cluster: scenario 7: at most {most_unavailable} of 3 proxies unavailable at once; {} requests \
         ({} writes acknowledged, {reads} reads), {} failed",
        acked.len() + reads + failed.len(),
        acked.len(),
        failed.len()
    );
    assert!(most_unavailable <= 1, "{most_unavailable} proxies were unavailable at once during the roll");
    if !failed.is_empty() {
        let logs = cluster
            .kubectl(&["-n", TEAM, "logs", CLIENT_POD, "-c", "blockproxy-mount", "--tail", "40"])
            .await
            .unwrap_or_default();
        let events = cluster.kubectl(&["-n", SYSTEM_NS, "get", "events", "--sort-by", ".lastTimestamp"]).await;
        panic!(
            "the client saw failed requests during the upgrade: {failed:?}\nsidecar logs:\n{logs}\nevents:\n{}",
            events.unwrap_or_default()
        );
    }
    assert!(!acked.is_empty(), "the client wrote nothing during the upgrade:\n{out}");
    let lost = lost_objects(store, &acked).await;
    assert!(lost.is_empty(), "acknowledged objects lost: {lost:?}");
    Api::<Pod>::namespaced(cluster.client(), TEAM).delete(CLIENT_POD, &Default::default()).await?;
    Ok(())
}
