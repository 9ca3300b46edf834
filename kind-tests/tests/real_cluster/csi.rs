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
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, PostParams};
use std::time::Duration;

use super::{POLL, PREFIX, RCLONE_IMAGE, RELEASE, SYSTEM_NS, Store, TEAM, VOLUME, WAIT, sha256_hex};

const POD: &str = "files";
const DRIVER: &str = "blockproxy.io";

pub async fn scenario_12_csi_inline_volume(cluster: &Cluster, store: &Store) -> Result<()> {
    super::upgrade_release(cluster, "csi.enabled=true").await?;
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
    plugin_registered_on_every_node(cluster).await?;

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
echo done
exec sleep 3600"#;
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
            "volumes": [{"name": "data", "csi": {"driver": DRIVER, "volumeAttributes": {"volumeID": VOLUME}}}],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), TEAM);
    pods.create(&PostParams::default(), &pod).await?;
    // The app stays up after its checks ("done"), so the sidecar restart below has a reader.
    let app_done = eventually(Duration::from_secs(240), POLL, || async {
        let p = pods.get(POD).await?;
        let app = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "app"))
            .and_then(|c| c.state.as_ref()?.terminated.clone());
        if let Some(t) = app {
            return Ok(Err(t.exit_code));
        }
        let logs = cluster.kubectl(&["-n", TEAM, "logs", POD, "-c", "app"]).await?;
        anyhow::ensure!(logs.lines().any(|l| l == "done"), "the app has not finished: {:?}", p.status);
        Ok(Ok(()))
    })
    .await;
    let logs = cluster.kubectl(&["-n", TEAM, "logs", POD, "-c", "app"]).await.unwrap_or_default();
    let sidecar =
        cluster.kubectl(&["-n", TEAM, "logs", POD, "-c", "blockproxy-mount", "--tail", "30"]).await.unwrap_or_default();
    match app_done {
        Ok(Ok(())) => {}
        Ok(Err(exit)) => anyhow::bail!("the app failed ({exit}):\n{logs}\nsidecar:\n{sidecar}"),
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
    }
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
    sidecar_restart_ends_the_mount(cluster, &pods).await?;
    pods.delete(POD, &Default::default()).await?;
    // Gone (the plugin unmounted it) before the next scenario drains the group.
    eventually(WAIT, POLL, || async {
        anyhow::ensure!(pods.get_opt(POD).await?.is_none(), "{POD} is still there");
        Ok(())
    })
    .await
}

/// The kubelet registered the driver through the plugin's registration socket (its requests carry
/// the socket path as `:authority`, which the plugin's shim rewrites, ADR 0008): every node's
/// CSINode lists `blockproxy.io` with the node's name as its id, and each kubelet logged it.
async fn plugin_registered_on_every_node(cluster: &Cluster) -> Result<()> {
    let csinodes: Api<CSINode> = Api::all(cluster.client());
    eventually(WAIT, POLL, || async {
        for node in cluster.nodes() {
            let drivers = csinodes.get(node).await?.spec.drivers;
            anyhow::ensure!(
                drivers.iter().any(|d| d.name == DRIVER && d.node_id == *node),
                "CSINode {node} lists {:?}",
                drivers.iter().map(|d| (&d.name, &d.node_id)).collect::<Vec<_>>()
            );
        }
        Ok(())
    })
    .await?;
    for n in 1..=cluster.nodes().len() {
        let Some(path) = cluster.kubelet_log(n) else { break };
        let log = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(DRIVER)).collect();
        anyhow::ensure!(
            ours.iter().any(|l| l.contains("Register new plugin with name: blockproxy.io")),
            "node{n}'s kubelet did not log the registration; its lines about {DRIVER}:\n{}",
            ours.join("\n")
        );
        println!(
            "real-cluster: node{n} kubelet: {}",
            ours.iter().rev().take(2).rev().cloned().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}

/// ADR 0008: the plugin keeps no copy of the descriptor, so a sidecar that exits ends the mount
/// for the Pod's life: the app's calls fail with ENOTCONN (not hang), and the restarted sidecar
/// refuses at once with that reason, leaving the Pod not ready.
async fn sidecar_restart_ends_the_mount(cluster: &Cluster, pods: &Api<Pod>) -> Result<()> {
    let read = ["-n", TEAM, "exec", POD, "-c", "app", "--", "cat", "/data/csi/dir/hello.txt"];
    let before = cluster.kubectl(&read).await?;
    anyhow::ensure!(before == "hello from a Pod\n", "read through the mount before the restart: {before:?}");
    let uid = pods.get(POD).await?.metadata.uid.context("no uid")?;
    // The process name as /proc/PID/comm has it (15 characters).
    cluster.kill_in_pod(&uid, "blockproxy-moun").await?;
    eventually(WAIT, POLL, || async {
        let p = pods.get(POD).await?;
        let st = p.status.context("no status")?;
        let side = st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten())
            .find(|c| c.name == "blockproxy-mount")
            .context("no sidecar status")?;
        anyhow::ensure!(side.restart_count >= 1, "the sidecar has not restarted");
        let mut log = String::new();
        for args in [
            &["-n", TEAM, "logs", POD, "-c", "blockproxy-mount"][..],
            &["-n", TEAM, "logs", POD, "-c", "blockproxy-mount", "--previous"],
        ] {
            log.push_str(&cluster.kubectl(args).await.unwrap_or_default());
        }
        anyhow::ensure!(
            log.contains("handed this Pod's /dev/fuse descriptor to an earlier blockproxy-mount"),
            "the restarted sidecar did not refuse:\n{log}"
        );
        let ready = st.conditions.iter().flatten().find(|c| c.type_ == "Ready").map(|c| c.status.as_str());
        anyhow::ensure!(ready == Some("False"), "the Pod is Ready={ready:?} with a dead mount");
        Ok(())
    })
    .await?;
    let after = cluster.kubectl(&read).await;
    let err = format!("{:#}", after.as_ref().err().context("the app still reads through a dead mount")?);
    anyhow::ensure!(err.contains("Transport endpoint is not connected"), "the app's read failed otherwise: {err}");
    Ok(())
}
