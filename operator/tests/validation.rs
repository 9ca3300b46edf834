//! Invalid specs are refused by the API server itself (OpenAPI + CEL), with messages that say
//! what is wrong.

mod common;

use blockproxy_operator::crd::{ProxyGroup, VolumeProxyGroup};
use blockproxy_testenv::anyhow::{Result, anyhow};
use common::*;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "apiVersion": "blockproxy.io/v1alpha1",
        "kind": "ProxyGroup",
        "metadata": {"name": "g"},
        "spec": {
            "providerCode": "minio",
            "regionCode": "dc1",
            "placement": {"storageClassName": "nvme"},
            "objectStore": {"provider": "s3Compatible", "endpoint": "http://minio:9000", "credentialsSecret": {"name": "c"}},
        },
    })
}

fn with(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[path[path.len() - 1]] = value;
    v
}

async fn refusal(api: &Api<ProxyGroup>, body: Value) -> Result<String> {
    let pg: ProxyGroup = match serde_json::from_value(body.clone()) {
        Ok(pg) => pg,
        Err(e) => return Err(anyhow!("test body does not deserialize: {e}")),
    };
    match api.create(&PostParams::default(), &pg).await {
        Ok(_) => Err(anyhow!("accepted: {body}")),
        Err(kube::Error::Api(s)) => Ok(s.message),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_clear_messages() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    let api: Api<ProxyGroup> = Api::all(client.clone());
    // The valid base is accepted (and cleaned up).
    api.create(&PostParams::default(), &serde_json::from_value(base())?).await?;
    api.delete("g", &Default::default()).await?;
    blockproxy_testenv::eventually(WAIT, POLL, || async {
        ensure(api.get_opt("g").await?.is_none(), || "still there".into())
    })
    .await?;

    let cases: Vec<(Value, &str)> = vec![
        (with(base(), &["spec", "placement", "maxProxies"], json!(0)), "placement.maxProxies must be at least 1"),
        (with(base(), &["spec", "cache"], json!({"diskQuota": "90"})), "cache.diskQuota must be a percentage"),
        (with(base(), &["spec", "cache"], json!({"diskQuota": "120%"})), "cache.diskQuota must be a percentage"),
        (with(base(), &["spec", "writeback"], json!({"active": -1})), "writeback.active must be between 0"),
        (with(base(), &["spec", "writeback"], json!({"delay": "soon"})), "writeback.delay must be a duration"),
        (
            with(base(), &["spec", "writeback"], json!({"enabled": false, "active": 4})),
            "only apply when writeback.enabled",
        ),
        (
            with(
                base(),
                &["spec", "objectStore"],
                json!({"provider": "s3Compatible", "credentialsSecret": {"name": "c"}}),
            ),
            "objectStore.endpoint is required when objectStore.provider is s3Compatible",
        ),
        (
            with(base(), &["spec", "objectStore"], json!({"provider": "s3"})),
            "objectStore.credentialsSecret is required when objectStore.provider is s3, s3Compatible or azure",
        ),
        (
            with(base(), &["spec", "objectStore"], json!({"provider": "azure"})),
            "objectStore.credentialsSecret is required when objectStore.provider is s3, s3Compatible or azure",
        ),
        (
            with(base(), &["spec", "objectStore"], json!({"provider": "gcs", "pathStyle": true})),
            "objectStore.pathStyle only applies to objectStore.provider s3 and s3Compatible",
        ),
        (
            with(
                base(),
                &["spec", "objectStore"],
                json!({"provider": "azure", "sse": true, "credentialsSecret": {"name": "c"}}),
            ),
            "objectStore.sse only applies to objectStore.provider s3 and s3Compatible",
        ),
        (
            with(base(), &["spec", "objectStore"], json!({"provider": "gcs", "endpoint": "file:///data"})),
            "objectStore.endpoint may only be a file:/// URL when objectStore.provider is file",
        ),
        (
            with(base(), &["spec", "objectStore"], json!({"provider": "file", "endpoint": "http://x"})),
            "must be a file:/// URL",
        ),
        (with(base(), &["spec", "providerCode"], json!("Bad Code")), "providerCode must be 1-32 lowercase"),
        (
            with(base(), &["spec", "allowedNamespaces"], json!(["team_a"])),
            "allowedNamespaces entries must be namespace names",
        ),
        (with(base(), &["spec", "port"], json!(70000)), "spec.port"),
        (
            with(base(), &["spec", "tls"], json!({"enabled": false, "certificateSecret": "x"})),
            "tls.certificateSecret requires tls.enabled",
        ),
    ];
    for (body, expected) in cases {
        let msg = refusal(&api, body.clone()).await?;
        assert!(msg.contains(expected), "expected {expected:?} in {msg:?} for {}", body["spec"]);
    }

    // The README's example manifests are valid.
    ensure_namespace(&client, "analytics").await?;
    for (file, count) in [("proxygroup.yaml", 1), ("volumeproxygroup.yaml", 1)] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file))?;
        let mut seen = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(doc)?)?;
            match v["kind"].as_str() {
                Some("ProxyGroup") => drop(api.create(&PostParams::default(), &serde_json::from_value(v)?).await?),
                Some("VolumeProxyGroup") => {
                    let vpgs: Api<VolumeProxyGroup> = Api::namespaced(client.clone(), "analytics");
                    vpgs.create(&PostParams::default(), &serde_json::from_value(v)?).await?;
                }
                _ => continue,
            }
            seen += 1;
        }
        assert_eq!(seen, count, "{file}");
    }

    // GCS and Azure, as the README shows them; GCS without a Secret uses workload identity.
    for (name, store) in [
        ("gcs", json!({"provider": "gcs", "credentialsSecret": {"name": "gcs-key"}})),
        ("gcs-wi", json!({"provider": "gcs"})),
        ("azure", json!({"provider": "azure", "credentialsSecret": {"name": "azure-account"}})),
    ] {
        let pg = with(with(base(), &["metadata", "name"], json!(name)), &["spec", "objectStore"], store);
        api.create(&PostParams::default(), &serde_json::from_value(pg)?).await?;
    }

    // The file provider needs no credentials.
    let file = with(base(), &["spec", "objectStore"], json!({"provider": "file", "endpoint": "file:///data"}));
    api.create(&PostParams::default(), &serde_json::from_value(file)?).await?;

    ensure_namespace(&client, "team-a").await?;
    let vpgs: Api<VolumeProxyGroup> = Api::namespaced(client.clone(), "team-a");
    let vpg_with = |vol: &str, bucket: &str, prefix: &str, extra: Value| -> Result<VolumeProxyGroup> {
        let mut spec = json!({"volumeID": vol, "proxyGroup": "g", "bucket": bucket, "prefix": prefix});
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "blockproxy.io/v1alpha1", "kind": "VolumeProxyGroup",
            "metadata": {"name": "v"},
            "spec": spec,
        }))?)
    };
    let vpg = |vol: &str, bucket: &str, prefix: &str| vpg_with(vol, bucket, prefix, json!({}));
    let settings = |extra: Value| vpg_with("ok", "bucket", "", extra);
    for (v, expected) in [
        (vpg("-bad", "bucket", "")?, "volumeID must be 1-63 letters"),
        (vpg("ok", "B", "")?, "bucket must be a valid bucket name"),
        (settings(json!({"blockSize": "4MB"}))?, "blockSize must be a quantity of bytes"),
        (settings(json!({"blockSize": "32Ki"}))?, "blockSize must be between 64Ki and 64Mi"),
        (settings(json!({"blockSize": "128Mi"}))?, "blockSize must be between 64Ki and 64Mi"),
        (settings(json!({"blockSize": "65537"}))?, "blockSize must be a multiple of 4Ki"),
        (settings(json!({"metadataTTL": "1 second"}))?, "metadataTTL must be a duration"),
        (settings(json!({"metadataTTL": "61m"}))?, "metadataTTL must be at most 1h"),
        (vpg("ok", "bucket", "../up")?, "prefix must be relative"),
    ] {
        match vpgs.create(&PostParams::default(), &v).await {
            Err(kube::Error::Api(s)) => {
                assert!(s.message.contains(expected), "expected {expected:?} in {:?}", s.message)
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    // The bounds themselves are accepted.
    for (i, extra) in
        [json!({"blockSize": "64Ki", "metadataTTL": "1h"}), json!({"blockSize": "64Mi", "metadataTTL": "0s"})]
            .into_iter()
            .enumerate()
    {
        let mut v = settings(extra)?;
        v.metadata.name = Some(format!("bounds-{i}"));
        vpgs.create(&PostParams::default(), &v).await?;
    }
    // Omitted settings get their defaults from the API server (a raw body, so that the client's
    // serde defaults do not fill them in first).
    let raw = json!({
        "apiVersion": "blockproxy.io/v1alpha1", "kind": "VolumeProxyGroup",
        "metadata": {"name": "defaults"},
        "spec": {"volumeID": "ok", "proxyGroup": "g", "bucket": "bucket"},
    });
    let created = vpgs.patch("defaults", &PatchParams::apply("validation-test"), &Patch::Apply(&raw)).await?;
    assert_eq!((created.spec.block_size.as_str(), created.spec.metadata_ttl.as_str()), ("4Mi", "1s"));
    assert_eq!(created.spec.block_size_bytes(), blockproxy_protocol::DEFAULT_BLOCK_SIZE);
    assert_eq!(created.spec.metadata_ttl_ms(), blockproxy_protocol::DEFAULT_METADATA_TTL_MS);
    vpgs.create(&PostParams::default(), &vpg("vol-1", "bucket", "p")?).await?;
    let change = json!({"spec": {"volumeID": "vol-2"}});
    match vpgs.patch("v", &PatchParams::default(), &Patch::Merge(&change)).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("volumeID is immutable"), "{}", s.message),
        other => panic!("volumeID changed: {other:?}"),
    }
    Ok(())
}
