//! VolumeProxyGroups: acceptance, discovery ConfigMaps and token Secrets, against a real API server.

mod common;

use blockproxy_operator::crd::VolumeProxyGroup;
use blockproxy_protocol::{DiscoveryDocument, VolumesFile};
use blockproxy_testenv::anyhow::{Result, anyhow};
use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

async fn discovery(client: &kube::Client, ns: &str, volume: &str) -> Result<Option<DiscoveryDocument>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some(cm) = api.get_opt(&format!("blockproxy-discovery-{volume}")).await? else { return Ok(None) };
    let json = cm.data.unwrap_or_default().remove(DiscoveryDocument::CONFIGMAP_KEY).ok_or_else(|| anyhow!("no key"))?;
    Ok(Some(DiscoveryDocument::from_json(json.as_bytes())?))
}

/// `kubectl get` output, rendered by the API server from the CRDs' printer columns.
async fn table(client: &kube::Client, path: &str) -> Result<String> {
    let req =
        http::Request::get(path).header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").body(Vec::new())?;
    let t: serde_json::Value = client.request(req).await?;
    let cols: Vec<String> = t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|c| c["name"].as_str().unwrap_or_default().to_uppercase())
        .collect();
    let mut rows = vec![cols.clone()];
    for r in t["rows"].as_array().into_iter().flatten() {
        let cells = r["cells"].as_array().cloned().unwrap_or_default();
        let defs = t["columnDefinitions"].as_array().cloned().unwrap_or_default();
        rows.push(
            cells
                .iter()
                .zip(defs.iter())
                .filter(|(_, d)| d["priority"].as_i64().unwrap_or(0) == 0)
                .map(|(c, _)| match c {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "<none>".into(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    let widths: Vec<usize> =
        (0..cols.len()).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.len())).max().unwrap_or(0)).collect();
    Ok(rows
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i] + 3))
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

async fn accepted(client: &kube::Client, ns: &str, name: &str) -> Result<(String, String, String)> {
    let v = Api::<VolumeProxyGroup>::namespaced(client.clone(), ns).get(name).await?;
    let c = v
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Accepted")
        .ok_or_else(|| anyhow!("no Accepted condition"))?;
    Ok((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_every_group_follows_endpoints_and_refuses_forbidden_namespaces() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "eu", "nvme-eu", 2, 1).await?;
    nvme_cluster(&client, "us", "nvme-us", 1, 0).await?;
    let op = Operator::start(client.clone(), "op-0", false);
    let mut us = group_spec("nvme-us", 8443, &["*"])?;
    us.region_code = "us-east".into();
    create_group(&client, "eu", group_spec("nvme-eu", 8443, &["team-a"])?).await?;
    create_group(&client, "us", us).await?;
    create_vpg(&client, "team-a", "data-eu", "vol1", "eu", "bucket-1").await?;
    create_vpg(&client, "team-a", "data-us", "vol1", "us", "bucket-1").await?;
    create_vpg(&client, "team-b", "data", "vol1", "eu", "bucket-1").await?;
    create_vpg(&client, "team-a", "lost", "vol2", "nope", "bucket-1").await?;

    // Two groups for one volume: both listed, no endpoints yet.
    let doc = wait("a discovery document with both groups", || async {
        let doc = discovery(&client, "team-a", "vol1").await?.ok_or_else(|| anyhow!("no ConfigMap"))?;
        ensure(doc.groups.len() == 2, || format!("{doc:?}"))?;
        Ok(doc)
    })
    .await?;
    assert_eq!(doc.groups[0].name, "eu");
    assert_eq!(doc.groups[1].region_code, "us-east");
    assert_eq!(doc.groups[0].scheme, "http");
    assert_eq!(doc.store.bucket, "bucket-1");
    assert_eq!(doc.store.prefix, "vols/a");
    // A later association that disagrees on the store is refused, and changes nothing.
    create_vpg(&client, "team-a", "clash", "vol1", "us", "other-bucket").await?;

    // The ConfigMap follows endpoint changes.
    let pods = wait("eu's 2 pods", || async {
        let pods = group_pods(&client, "eu").await?;
        ensure(pods.len() == 2, || "not yet".into())?;
        Ok(pods)
    })
    .await?;
    mark_ready(&client, &pods[0].name_any(), "10.1.0.7").await?;
    let stable = stable_address(&pods[0], 8443)?;
    wait("the ready proxy in the discovery document", || async {
        let doc = discovery(&client, "team-a", "vol1").await?.ok_or_else(|| anyhow!("no ConfigMap"))?;
        let eps: Vec<String> = doc.groups[0].endpoints.iter().map(|e| e.address.clone()).collect();
        let pg = Api::<blockproxy_operator::crd::ProxyGroup>::all(client.clone()).get("eu").await?;
        let vpgs = Api::<VolumeProxyGroup>::namespaced(client.clone(), "team-a").list(&Default::default()).await?;
        let vpgs: Vec<_> = vpgs.items.iter().map(|v| (v.name_any(), v.status.clone())).collect();
        ensure(eps == [stable.clone()], || {
            format!("{eps:?}; group status {:?}; associations {vpgs:?}; errors {:?}", pg.status, op.errors())
        })
    })
    .await?;

    // What `kubectl get pg` and `kubectl get vpg -n team-a` show.
    let pg_table = table(&client, "/apis/blockproxy.io/v1alpha1/proxygroups").await?;
    let vpg_table = table(&client, "/apis/blockproxy.io/v1alpha1/namespaces/team-a/volumeproxygroups").await?;
    println!("$ kubectl get pg\n{pg_table}\n\n$ kubectl get vpg -n team-a\n{vpg_table}");
    assert!(
        pg_table.starts_with("NAME") && pg_table.contains("PROVIDER") && pg_table.contains("DESIRED"),
        "{pg_table}"
    );
    assert!(vpg_table.contains("ACCEPTED") && vpg_table.contains("vol1"), "{vpg_table}");

    // The token Secret for the sidecars matches what the proxies of both groups accept.
    let token = Api::<Secret>::namespaced(client.clone(), "team-a").get("blockproxy-token-vol1").await?;
    let token = String::from_utf8(token.data.unwrap()["token"].0.clone())?;
    for g in ["eu", "us"] {
        let s = Api::<Secret>::namespaced(client.clone(), NS).get(&format!("{g}-volumes")).await?;
        let file = VolumesFile::parse(std::str::from_utf8(&s.data.unwrap()["volumes.yaml"].0)?)?;
        assert_eq!(file.volumes.len(), 1, "{g}");
        assert!(file.volumes[0].token.is_empty(), "proxies get digests, not tokens");
        assert_eq!(file.volumes[0].token_sha256, [blockproxy_protocol::VolumeConfig::token_digest(&token)]);
        assert_eq!(file.volumes[0].bucket, "bucket-1");
    }

    // Refusals carry the reason, and a forbidden namespace gets no ConfigMap.
    let (status, reason, message) = wait("NamespaceNotAllowed", || accepted(&client, "team-b", "data")).await?;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NamespaceNotAllowed"));
    assert!(message.contains("team-b"), "{message}");
    assert!(discovery(&client, "team-b", "vol1").await?.is_none());
    assert!(Api::<Secret>::namespaced(client.clone(), "team-b").get_opt("blockproxy-token-vol1").await?.is_none());
    let (_, reason, _) = wait("GroupNotFound", || accepted(&client, "team-a", "lost")).await?;
    assert_eq!(reason, "GroupNotFound");
    let (_, reason, message) = wait("ConflictingStore", || accepted(&client, "team-a", "clash")).await?;
    assert_eq!(reason, "ConflictingStore");
    assert!(message.contains("bucket-1"), "{message}");

    // Removing the last associations unpublishes the volume.
    let vpgs: Api<VolumeProxyGroup> = Api::namespaced(client.clone(), "team-a");
    for name in ["data-eu", "data-us", "clash"] {
        vpgs.delete(name, &DeleteParams::default()).await?;
    }
    wait("the ConfigMap and token Secret to go", || async {
        let cm = discovery(&client, "team-a", "vol1").await?;
        let secret = Api::<Secret>::namespaced(client.clone(), "team-a").get_opt("blockproxy-token-vol1").await?;
        ensure(cm.is_none() && secret.is_none(), || "still published".into())
    })
    .await?;
    wait("the eu group's volumes file to drop vol1", || async {
        let s = Api::<Secret>::namespaced(client.clone(), NS).get("eu-volumes").await?;
        let file = VolumesFile::parse(std::str::from_utf8(&s.data.unwrap()["volumes.yaml"].0)?)?;
        ensure(file.volumes.is_empty(), || format!("{:?}", file.volumes))
    })
    .await?;
    op.stop().await?;
    Ok(())
}
