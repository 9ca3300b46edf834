//! Scenario 12: the volume as a directory in an unprivileged app container (issue 13). The chart
//! is upgraded with `csi.enabled`: the CSIDriver `blockproxy.io` and the privileged node plugin
//! DaemonSet. A Pod in `team-a` (PodSecurity `restricted`) asks for the volume with a CSI inline
//! volume; the plugin mounts `/dev/fuse` at the Pod's volume path and hands the descriptor to the
//! injected, unprivileged sidecar, which serves it. The app, as uid 1000, writes files and a
//! directory with plain shell tools and reads them back; they land in MinIO at `{prefix}/{path}`,
//! byte-identical.

use anyhow::{Context, Result};
use blockproxy_testenv::{Cluster, eventually};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::time::Duration;

use super::{POLL, PREFIX, RCLONE_IMAGE, RELEASE, SYSTEM_NS, Store, TEAM, VOLUME, WAIT, common, sha256_hex};

const POD: &str = "files";

pub async fn scenario_12_csi_inline_volume(cluster: &Cluster, store: &Store) -> Result<()> {
    let helm = common::helm_for(cluster)?;
    helm.run([
        "upgrade",
        RELEASE,
        &common::chart_dir(),
        "-n",
        SYSTEM_NS,
        "--reuse-values",
        "--set",
        "csi.enabled=true",
        "--wait",
        "--timeout",
        "5m",
    ])
    .await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(cluster.client(), SYSTEM_NS);
    let name = format!("{RELEASE}-csi-node");
    eventually(WAIT, POLL, || async {
        let ds = daemonsets.get(&name).await?;
        let st = ds.status.context("no DaemonSet status")?;
        anyhow::ensure!(
            st.desired_number_scheduled == cluster.nodes().len() as i32
                && st.number_ready == st.desired_number_scheduled,
            "{name}: {} of {} ready",
            st.number_ready,
            st.desired_number_scheduled
        );
        Ok(())
    })
    .await?;

    let script = r#"set -eu
cd /data
mkdir -p csi/dir
head -c 3000000 /dev/urandom > /tmp/big
cp /tmp/big csi/big.bin
echo "hello from a Pod" > csi/dir/hello.txt
cmp /tmp/big csi/big.bin
[ "$(cat csi/dir/hello.txt)" = "hello from a Pod" ]
ls -l csi csi/dir
echo "uid $(id -u)"
echo "big $(sha256sum < /tmp/big | cut -d' ' -f1)"
echo done"#;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": TEAM},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": RCLONE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "data", "csi": {"driver": "blockproxy.io", "volumeAttributes": {"volumeID": VOLUME}}}],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), TEAM);
    pods.create(&PostParams::default(), &pod).await?;
    let app_done = eventually(Duration::from_secs(240), POLL, || async {
        let p = pods.get(POD).await?;
        let app = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "app"))
            .and_then(|c| c.state.as_ref()?.terminated.clone());
        let t = app.with_context(|| format!("the app has not finished: {:?}", p.status))?;
        Ok(t.exit_code)
    })
    .await;
    let logs = cluster.kubectl(&["-n", TEAM, "logs", POD, "-c", "app"]).await.unwrap_or_default();
    let exit = match app_done {
        Ok(code) => code,
        Err(e) => {
            let events = cluster
                .kubectl(&["-n", TEAM, "get", "events", "--field-selector", &format!("involvedObject.name={POD}")])
                .await
                .unwrap_or_default();
            let plugin = cluster
                .kubectl(&["-n", SYSTEM_NS, "logs", &format!("ds/{name}"), "--tail", "40"])
                .await
                .unwrap_or_default();
            return Err(e.context(format!("app log:\n{logs}\nevents:\n{events}\nplugin log:\n{plugin}")));
        }
    };
    let sidecar =
        cluster.kubectl(&["-n", TEAM, "logs", POD, "-c", "blockproxy-mount", "--tail", "30"]).await.unwrap_or_default();
    anyhow::ensure!(exit == 0, "the app failed ({exit}):\n{logs}\nsidecar:\n{sidecar}");
    assert!(logs.lines().any(|l| l == "uid 1000"), "{logs}");
    let big = logs.lines().find_map(|l| l.strip_prefix("big ")).context("no checksum in the app's log")?.to_owned();

    // Closed files are durable on the proxies, and reach MinIO byte-identical.
    let s3 = &store.minio;
    eventually(Duration::from_secs(120), Duration::from_secs(1), || async {
        let get = |key: String| async move {
            let o = s3.get_object().bucket(super::BUCKET).key(&key).send().await?;
            Ok::<_, anyhow::Error>(o.body.collect().await?.into_bytes())
        };
        let hello = get(format!("{PREFIX}/csi/dir/hello.txt")).await?;
        anyhow::ensure!(hello.as_ref() == b"hello from a Pod\n", "hello.txt is {hello:?}");
        let data = get(format!("{PREFIX}/csi/big.bin")).await?;
        anyhow::ensure!(sha256_hex(&data) == big, "big.bin differs in MinIO");
        Ok(())
    })
    .await?;
    pods.delete(POD, &Default::default()).await?;
    Ok(())
}
