//! Scenario 11: a ProxyGroup on Google Cloud Storage (issue 14). fake-gcs-server runs in the
//! cluster as the GCS of this scenario, a Pod of an image packed from the cached binary. The
//! MinIO group of the earlier scenarios is deleted and leaves its PVs `Released`; a group with
//! `objectStore.provider: gcs` does not take them (they may hold the other group's cache) and its
//! Ready condition names them with the step that frees them; the administrator takes that step,
//! and the group runs on them (its proxies write through the JSON API, with no credentials: an
//! emulator). A
//! workload Pod's rclone writes objects through its sidecar, one of them in parts, and reads them
//! back; they land in the GCS bucket byte-identical, and each keeps its S3 ETag there.

use anyhow::{Context, Result};
use blockproxy::store::{GcsCredentials, GcsStore, GcsStoreConfig, Store as _};
use blockproxy_testenv::{Cluster, eventually};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{Api, ListParams, PostParams};
use std::time::Duration;

use super::{BUCKET, GROUP, POLL, RCLONE_ENV, STORE_NS, SYSTEM_NS, TEAM, WAIT, service_ip, sha256_hex};

const GCS_GROUP: &str = "gcs1";
const GCS_VOLUME: &str = "team-a-gcs";
const GCS_PREFIX: &str = "volumes/team-a-gcs";
const GCS_HOST: &str = "gcs.storage.svc.cluster.local:4443";

pub async fn scenario_11_a_group_on_gcs(cluster: &Cluster) -> Result<()> {
    use blockproxy_testenv::{Tool, tool_path};
    cluster
        .import_binaries(
            "example.local/fake-gcs-server:test",
            "/usr/local/bin/fake-gcs-server",
            &[&tool_path(Tool::FakeGcs)?],
        )
        .await?;
    cluster
        .apply(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: gcs, namespace: {STORE_NS}}}
spec:
  selector: {{matchLabels: {{app: gcs}}}}
  template:
    metadata: {{labels: {{app: gcs}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: gcs
        image: example.local/fake-gcs-server:test
        imagePullPolicy: Never
        # Resumable uploads continue at the external URL: the name the proxies reach it by.
        args: [-scheme, http, -backend, memory, -host, 0.0.0.0, -port, "4443",
               -public-host, "{GCS_HOST}", -external-url, "http://{GCS_HOST}", -log-level, warn]
        readinessProbe: {{httpGet: {{path: /_internal/healthcheck, port: 4443}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: gcs, namespace: {STORE_NS}}}
spec: {{selector: {{app: gcs}}, ports: [{{port: 4443}}]}}
"#
        ))
        .await?;
    cluster.wait_for_deployment(STORE_NS, "gcs").await?;
    let forward = cluster.forward(service_ip(cluster, STORE_NS, "gcs").await?, 4443).await?;
    let endpoint = format!("http://{}", forward.addr());
    eventually(WAIT, POLL, || blockproxy_testenv::create_gcs_bucket(&endpoint, BUCKET)).await?;
    let gcs = GcsStore::new(GcsStoreConfig { endpoint: Some(endpoint), credentials: GcsCredentials::Anonymous });

    // The MinIO group gives its PVs up (nothing is dirty by now: it drains at once).
    let groups: Api<blockproxy_operator::crd::ProxyGroup> = Api::all(cluster.client());
    if groups.get_opt(GROUP).await?.is_some() {
        groups.delete(GROUP, &Default::default()).await?;
    }
    eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        anyhow::ensure!(groups.get_opt(GROUP).await?.is_none(), "group {GROUP} is still there");
        let pvs = Api::<PersistentVolume>::all(cluster.client()).list(&ListParams::default()).await?.items;
        let bound = pvs.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).count();
        anyhow::ensure!(bound == 0, "{bound} PVs still bound");
        Ok(())
    })
    .await?;

    cluster
        .apply(&format!(
            r#"apiVersion: blockproxy.io/v1alpha1
kind: ProxyGroup
metadata: {{name: {GCS_GROUP}}}
spec:
  providerCode: gcs
  regionCode: dc1
  placement: {{storageClassName: local-nvme}}
  cache: {{diskQuota: "512Mi"}}
  writeback: {{enabled: true, delay: 0ms}}
  objectStore: {{provider: gcs, endpoint: "http://{GCS_HOST}"}}
  allowedNamespaces: [{TEAM}]
  image: {image}
  imagePullPolicy: Never
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
---
apiVersion: blockproxy.io/v1alpha1
kind: VolumeProxyGroup
metadata: {{name: data-{GCS_GROUP}, namespace: {TEAM}}}
spec: {{volumeID: {GCS_VOLUME}, proxyGroup: {GCS_GROUP}, bucket: {BUCKET}, prefix: {GCS_PREFIX}}}
"#,
            image = super::common::IMAGE
        ))
        .await?;
    let pvs = Api::<PersistentVolume>::all(cluster.client()).list(&ListParams::default()).await?.items;
    let pv_names: Vec<String> = pvs.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let hint = eventually(WAIT, POLL, || async {
        let g = groups.get(GCS_GROUP).await?;
        let ready = g.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
        let ready = ready.context("no Ready condition yet")?;
        anyhow::ensure!(ready.reason == "NoEligibleNodes", "Ready: {ready:?}");
        Ok(ready.message)
    })
    .await?;
    for name in &pv_names {
        assert!(hint.contains(name.as_str()), "the condition does not name the Released PV {name}: {hint}");
    }
    // The administrator's step, as the condition gives it.
    let step = hint.split('`').nth(1).context("no command in the condition")?.to_owned();
    assert!(step.starts_with("kubectl patch pv NAME"), "{step}");
    let patch = step.split('\'').nth(1).context("no patch in the command")?.to_owned();
    for name in &pv_names {
        cluster.kubectl(&["patch", "pv", name, "--type", "json", "-p", &patch]).await?;
    }
    eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let g = groups.get(GCS_GROUP).await?;
        let ready = g.status.as_ref().map_or(0, |s| s.ready_proxies);
        anyhow::ensure!(ready == 3, "{ready} proxies ready: {:?}", g.status);
        Ok(())
    })
    .await
    .map_err(|e| e.context(format!("the GCS group {GCS_GROUP} did not become ready")))?;

    // One object in 5 MiB parts (rclone's multipart upload), the others in one PUT.
    const SIZES: [u64; 3] = [1, 65_537, 12 * 1024 * 1024 + 3];
    let sizes = SIZES.map(|s| s.to_string()).join(" ");
    let script = format!(
        r#"{RCLONE_ENV}
for size in {sizes}; do
  head -c "$size" /dev/urandom > /tmp/obj
  rclone copyto --s3-upload-cutoff 5M --s3-chunk-size 5M /tmp/obj "bp:{GCS_VOLUME}/app/obj-$size"
  rclone copyto "bp:{GCS_VOLUME}/app/obj-$size" /tmp/back
  cmp /tmp/obj /tmp/back
  echo "object app/obj-$size $(sha256sum < /tmp/obj | cut -d' ' -f1) $(md5sum < /tmp/obj | cut -d' ' -f1)"
done
"#
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client(), TEAM);
    let pod = super::app_pod("gcs-app", GCS_VOLUME, &script, "Never");
    pods.create(&PostParams::default(), &pod).await.context("creating the gcs-app Pod")?;
    let phase = eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let pod = pods.get("gcs-app").await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        anyhow::ensure!(phase == "Succeeded" || phase == "Failed", "gcs-app Pod {phase}");
        Ok(phase)
    })
    .await;
    let logs = |container: &'static str| async move {
        cluster.kubectl(&["-n", TEAM, "logs", "gcs-app", "-c", container]).await.unwrap_or_else(|e| format!("{e:#}"))
    };
    if phase.as_ref().map_or(true, |p| p != "Succeeded") {
        let proxies = super::pod_logs(cluster, SYSTEM_NS, &format!("blockproxy.io/proxy-group={GCS_GROUP}")).await;
        anyhow::bail!(
            "the gcs-app Pod did not succeed: {phase:?}\napp logs:\n{}\nsidecar logs:\n{}\nproxies:\n{proxies}",
            logs("app").await,
            logs("blockproxy-mount").await
        );
    }
    let out = logs("app").await;
    let objects: Vec<Vec<&str>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("object "))
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() == 3)
        .collect();
    assert_eq!(objects.len(), SIZES.len(), "app output:\n{out}");
    for fields in objects {
        let (key, sha, md5) = (fields[0], fields[1], fields[2]);
        let size: u64 = key.rsplit('-').next().unwrap_or_default().parse()?;
        let stored = format!("{GCS_PREFIX}/{key}");
        // Written back in the background: wait for the flush.
        let object = eventually(WAIT, POLL, || async { gcs.get(BUCKET, &stored).await?.context("not in GCS yet") })
            .await
            .with_context(|| format!("{stored} never reached GCS"))?;
        assert_eq!(object.data.len() as u64, size, "{stored}");
        assert_eq!(sha256_hex(&object.data), sha, "{stored} in GCS differs from what the app wrote");
        let etag = object.client_etag().trim_matches('"').to_owned();
        if size < 5 * 1024 * 1024 {
            assert_eq!(etag, md5, "{stored}: the S3 ETag recorded in GCS is not the object's MD5");
        } else {
            assert!(etag.ends_with("-3"), "{stored}: a 3-part upload's S3 ETag, not {etag}");
        }
    }
    Ok(())
}
