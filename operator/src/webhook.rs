//! Mutating admission webhook: injects the `blockproxy-mount` sidecar into Pods annotated
//! `blockproxy.io/volume: <volumeID>`, with the volume's discovery ConfigMap and token Secret
//! mounted as files. The mutation is a pure function; the server is a small TLS listener.

use crate::meta;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, http::StatusCode};
use blockproxy_protocol::{DiscoveryDocument, VolumeId};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};

/// Pod annotation naming the volume to mount.
pub const VOLUME_ANNOTATION: &str = "blockproxy.io/volume";
/// Name of the injected container.
pub const SIDECAR_NAME: &str = "blockproxy-mount";
pub const DISCOVERY_DIR: &str = "/etc/blockproxy/discovery";
pub const TOKEN_DIR: &str = "/etc/blockproxy/token";
/// Where the sidecar serves the volume (S3-compatible) to the app.
pub const LISTEN: &str = "127.0.0.1:9000";
/// Path the API server posts AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate";

#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub image: String,
}

/// The sidecar container (a native sidecar: an init container that keeps running).
pub fn sidecar(volume: &VolumeId, cfg: &SidecarConfig) -> Value {
    json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "command": ["blockproxy-mount"],
        "args": [
            "--volume-id", volume.as_str(),
            "--discovery-file", format!("{DISCOVERY_DIR}/{}", DiscoveryDocument::CONFIGMAP_KEY),
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--listen", LISTEN,
        ],
        "restartPolicy": "Always",
        "volumeMounts": [
            {"name": "blockproxy-discovery", "mountPath": DISCOVERY_DIR, "readOnly": true},
            {"name": "blockproxy-token", "mountPath": TOKEN_DIR, "readOnly": true},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    })
}

/// The JSON patch for `pod`, `Ok(None)` when nothing is to be done, or an error message that
/// refuses the Pod (an invalid volume id).
pub fn mutate(pod: &Pod, cfg: &SidecarConfig) -> Result<Option<Value>, String> {
    let Some(raw) = pod.metadata.annotations.as_ref().and_then(|a| a.get(VOLUME_ANNOTATION)) else {
        return Ok(None);
    };
    let volume = VolumeId::parse(raw).map_err(|e| format!("annotation {VOLUME_ANNOTATION}: {e}"))?;
    let spec = pod.spec.as_ref();
    let already = spec
        .is_some_and(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == SIDECAR_NAME));
    if already {
        return Ok(None);
    }
    let mut ops = Vec::new();
    let volumes = [
        json!({"name": "blockproxy-discovery", "configMap": {"name": meta::discovery_config_map_name(volume.as_str()), "optional": true}}),
        json!({"name": "blockproxy-token", "secret": {"secretName": meta::token_secret_name(volume.as_str()), "optional": true}}),
    ];
    if spec.and_then(|s| s.volumes.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    // First init container, so it runs before any other init container and the app.
    if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar(&volume, cfg)]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar(&volume, cfg)}));
    }
    // Point S3 clients of every app container at the sidecar, unless they set it themselves.
    for (i, c) in spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate() {
        let env = json!({"name": "AWS_ENDPOINT_URL", "value": format!("http://{LISTEN}")});
        match &c.env {
            None => ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": [env]})),
            Some(e) if !e.iter().any(|v| v.name == "AWS_ENDPOINT_URL") => {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": env}))
            }
            Some(_) => {}
        }
    }
    Ok(Some(Value::Array(ops)))
}

/// Answers one AdmissionReview.
pub fn review(body: AdmissionReview<Pod>, cfg: &SidecarConfig) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<Pod> = match body.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(pod) = req.object.as_ref() else { return resp.into_review() };
    match mutate(pod, cfg) {
        Ok(None) => resp.into_review(),
        Ok(Some(ops)) => match serde_json::from_value::<json_patch::Patch>(ops) {
            Ok(patch) => match resp.clone().with_patch(patch) {
                Ok(r) => r.into_review(),
                Err(e) => resp.deny(e.to_string()).into_review(),
            },
            Err(e) => resp.deny(e.to_string()).into_review(),
        },
        Err(why) => resp.deny(why).into_review(),
    }
}

async fn handle(
    State(cfg): State<Arc<SidecarConfig>>,
    Json(body): Json<AdmissionReview<Pod>>,
) -> (StatusCode, Json<AdmissionReview<DynamicObject>>) {
    (StatusCode::OK, Json(review(body, &cfg)))
}

pub fn router(cfg: SidecarConfig) -> Router {
    Router::new().route(MUTATE_PATH, post(handle)).with_state(Arc::new(cfg))
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate or key in {0}")]
    Pem(String),
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// TLS config from PEM files (`tls.crt`, `tls.key`).
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, WebhookError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|source| WebhookError::Read { path: p.display().to_string(), source });
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(cert)?.as_slice()).filter_map(Result::ok).collect();
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| WebhookError::Pem(key.display().to_string()))?;
    if certs.is_empty() {
        return Err(WebhookError::Pem(cert.display().to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds the webhook listener; the returned future serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    cfg: SidecarConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send), WebhookError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| WebhookError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| WebhookError::Bind { addr, source })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = router(cfg);
    info!(addr = %local, "admission webhook listening");
    let fut = async move {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => { warn!(error = %e, "webhook accept failed"); continue; }
                },
            };
            let acceptor = acceptor.clone();
            let svc = TowerToHyperService::new(app.clone());
            // One task per connection; a failed handshake never stops the listener.
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        if let Err(e) =
                            auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await
                        {
                            warn!(%peer, error = %e, "webhook connection failed");
                        }
                    }
                    Err(e) => warn!(%peer, error = %e, "webhook TLS handshake failed"),
                }
            });
        }
    };
    Ok((local, fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotation: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "app", "annotations": annotation.map(|a| json!({VOLUME_ANNOTATION: a})).unwrap_or(json!({}))},
            "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "b", "image": "b", "env": [{"name": "X", "value": "1"}]}]},
        }))
        .unwrap()
    }

    fn cfg() -> SidecarConfig {
        SidecarConfig { image: "blockproxy:test".into() }
    }

    fn apply(pod: &Pod, ops: Value) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn unannotated_pods_are_left_alone() {
        assert_eq!(mutate(&pod(None), &cfg()), Ok(None));
    }

    #[test]
    fn annotated_pod_gets_sidecar_volumes_and_endpoint() {
        let p = pod(Some("vol-1"));
        let out = apply(&p, mutate(&p, &cfg()).unwrap().unwrap());
        let spec = out.spec.as_ref().unwrap();
        let side = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(side.name, SIDECAR_NAME);
        assert_eq!(side.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            side.args.as_ref().unwrap().join(" "),
            "--volume-id vol-1 --discovery-file /etc/blockproxy/discovery/discovery.json --token-file /etc/blockproxy/token/token --listen 127.0.0.1:9000"
        );
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(vols[0].config_map.as_ref().unwrap().name, "blockproxy-discovery-vol-1");
        assert_eq!(vols[1].secret.as_ref().unwrap().secret_name.as_deref(), Some("blockproxy-token-vol-1"));
        for c in &spec.containers {
            assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "AWS_ENDPOINT_URL"));
        }
        // Idempotent: a second pass (reinvocation) changes nothing.
        assert_eq!(mutate(&out, &cfg()), Ok(None));
    }

    #[test]
    fn invalid_volume_id_is_refused() {
        let err = mutate(&pod(Some("../etc")), &cfg()).unwrap_err();
        assert!(err.contains(VOLUME_ANNOTATION), "{err}");
    }
}
