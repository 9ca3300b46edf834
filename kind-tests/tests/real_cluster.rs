//! blockproxy end to end on a real multi-node cluster (issue 11's scenarios).
//!
//! One cluster serves every scenario of this file, in sequence in one test, because a cluster
//! start costs about a minute: 4 nodes, the 4th without a `local-nvme` PV. Without `KUBECONFIG`
//! the cluster is local (root only); with it, the scenarios run against that cluster (see the
//! README's "kind-tests" section). The image is packed from `target/<profile>/` by
//! `hack/image.sh`; `cargo test --workspace` has built those binaries before any test runs.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use blockproxy_testenv::{Cluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use common::{Report, blockproxy_image, helm_for};

const RELEASE: &str = "blockproxy";
const SYSTEM_NS: &str = "blockproxy-system";
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
    report.print();
    Ok(())
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
        Ok(out)
    })
    .await?;
    // (kubectl run --rm appends a "pod deleted" line)
    let answer = seen.lines().next().unwrap_or_default();
    assert!(cluster.nodes().iter().any(|n| answer == n.as_str()), "the Service answered {seen:?}");
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
    through.put_object().bucket(BUCKET).key("scenario-2/probe").body(body.clone().into()).send().await?;
    let back = minio.get_object().bucket(BUCKET).key("scenario-2/probe").send().await?.body.collect().await?;
    assert!(back.into_bytes() == body, "the object read from MinIO differs from what was written through toxiproxy");
    minio.delete_object().bucket(BUCKET).key("scenario-2/probe").send().await?;

    Ok(Store {
        endpoint: format!("http://s3.{STORE_NS}.svc.cluster.local:9000"),
        access_key,
        secret_key,
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

/// Scenario 3: a ProxyGroup on the 3 of 4 nodes that have a `local-nvme` PV: three proxy Pods
/// run, one per node, each on its node's PV; `kubectl get pg` shows 3 ready and the status lists
/// the endpoints.
async fn scenario_3_proxy_group_on_3_of_4_nodes(cluster: &Cluster, store: &Store) -> Result<()> {
    cluster
        .apply(&format!(
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
  image: {image}
  imagePullPolicy: Never
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
"#,
            ak = store.access_key,
            sk = store.secret_key,
            endpoint = store.endpoint,
            image = common::IMAGE,
        ))
        .await?;
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
    Ok(())
}
