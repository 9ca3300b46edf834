//! The sidecar-injecting admission webhook, called by a real kube-apiserver.

mod common;

use blockproxy_operator::sidecar_resources::{CPU_LIMIT_ANNOTATION, MEMORY_LIMIT_ANNOTATION};
use blockproxy_operator::webhook::{self, SIDECAR_NAME, SidecarConfig};
use blockproxy_protocol::SidecarBudgets;
use blockproxy_testenv::anyhow::Result;
use common::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

/// A CA and a serving certificate for 127.0.0.1, written as PEM files.
fn certs(dir: &std::path::Path) -> Result<String> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca_cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pods_get_the_mount_sidecar_from_the_api_server() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    let dir = tempfile::tempdir()?;
    let ca = certs(dir.path())?;
    let tls = webhook::tls_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))?;
    let (addr, serving) = webhook::serve(
        "127.0.0.1:0".parse()?,
        tls,
        SidecarConfig { image: "blockproxy:test".into(), resource_defaults: Default::default() },
        std::future::pending(),
    )
    .await?;
    tokio::spawn(serving);

    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "blockproxy"},
        "webhooks": [{
            "name": "sidecar.blockproxy.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": {"url": format!("https://{addr}/mutate"), "caBundle": k8s_openapi::ByteString(ca.into_bytes())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}},
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone()).create(&PostParams::default(), &config).await?;
    ensure_namespace(&client, "team-a").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let pod_with = |name: &str, annotations: serde_json::Value| -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }))?)
    };
    let pod = |name: &str, annotation: Option<&str>| -> Result<Pod> {
        pod_with(name, annotation.map(|a| json!({"blockproxy.io/volume": a})).unwrap_or(json!({})))
    };

    // The API server may need a moment before the new configuration is in effect.
    let created = wait("the sidecar to be injected", || async {
        let name = format!("app-{}", rand_suffix());
        let p = pods.create(&PostParams::default(), &pod(&name, Some("vol1"))?).await?;
        let spec = p.spec.clone().unwrap_or_default();
        ensure(spec.init_containers.iter().flatten().any(|c| c.name == SIDECAR_NAME), || "not injected".into())?;
        Ok(p)
    })
    .await?;
    let spec = created.spec.unwrap();
    let side = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(side.restart_policy.as_deref(), Some("Always"));
    assert!(side.args.as_ref().unwrap().contains(&"vol1".to_owned()));
    let vols: Vec<String> = spec.volumes.unwrap().iter().map(|v| v.name.clone()).collect();
    assert!(vols.contains(&"blockproxy-discovery".to_owned()) && vols.contains(&"blockproxy-token".to_owned()));

    let plain = pods.create(&PostParams::default(), &pod("plain", None)?).await?;
    assert!(plain.spec.unwrap().init_containers.is_none());
    match pods.create(&PostParams::default(), &pod("bad", Some("../etc"))?).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("blockproxy.io/volume"), "{}", s.message),
        other => panic!("invalid volume id admitted: {other:?}"),
    }

    // The sidecar's resources from the Pod's annotations; under a memory limit, its budgets
    // sized to fit inside it (ADR 0018). The API server validates the resulting Pod.
    let limited = pods
        .create(
            &PostParams::default(),
            &pod_with(
                "limited",
                json!({"blockproxy.io/volume": "vol1", MEMORY_LIMIT_ANNOTATION: "192Mi", CPU_LIMIT_ANNOTATION: "1"}),
            )?,
        )
        .await?;
    let side = limited.spec.unwrap().init_containers.unwrap().remove(0);
    let resources = side.resources.unwrap();
    let limits = resources.limits.unwrap();
    assert_eq!(limits["memory"].0, "192Mi");
    assert_eq!(limits["cpu"].0, "1");
    let args = side.args.unwrap();
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].parse::<u64>().unwrap());
    let want = SidecarBudgets::within(192 << 20).unwrap();
    assert_eq!(flag("--read-ahead-bytes"), Some(want.read_ahead_bytes), "{args:?}");
    assert_eq!(flag("--write-buffer-bytes"), Some(want.write_buffer_bytes), "{args:?}");
    assert_eq!(flag("--max-part-size"), Some(want.max_part_size), "{args:?}");
    match pods
        .create(
            &PostParams::default(),
            &pod_with("tight", json!({"blockproxy.io/volume": "vol1", MEMORY_LIMIT_ANNOTATION: "100Mi"}))?,
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(s.message.contains(MEMORY_LIMIT_ANNOTATION), "{}", s.message),
        other => panic!("a memory limit too small for the sidecar was admitted: {other:?}"),
    }
    Ok(())
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
