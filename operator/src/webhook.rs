//! Mutating admission webhook: injects the `blockproxy-mount` sidecar into Pods annotated
//! `blockproxy.io/volume: <volumeID>`, with the volume's discovery ConfigMap and token Secret
//! mounted as files. The mutation is a pure function; the server is a small TLS listener.

use crate::meta;
use crate::sidecar_resources::SidecarResources;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, http::StatusCode};
use blockproxy_protocol::{
    CSI_DRIVER_NAME, CSI_HANDOVER_MOUNT_PATH, CSI_HANDOVER_VOLUME, CSI_VOLUME_ID_ATTRIBUTE, DiscoveryDocument,
    VolumeId, csi_socket_name,
};
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
/// Pod annotation naming a Secret of the Pod's namespace with direct object-store credentials for
/// the sidecar: with it, the sidecar goes straight to the store when no proxy of any group answers
/// (and lists the store directly). The Secret's key [`DIRECT_STORE_KEY`] holds the sidecar's
/// `--store-credentials-file` (S3: YAML with `access_key_id` and `secret_access_key`).
pub const DIRECT_STORE_ANNOTATION: &str = "blockproxy.io/direct-store-credentials";
/// The key of the direct-store Secret that the sidecar reads.
pub const DIRECT_STORE_KEY: &str = "credentials";
pub const DIRECT_STORE_DIR: &str = "/etc/blockproxy/store";
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
    /// For Pods that do not set their sidecar's resources.
    pub resource_defaults: crate::sidecar_resources::ResourceDefaults,
}

/// The S3 credentials of one Pod: the sidecar accepts only these, and the app containers get
/// them as `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`. Random per admitted Pod (never a public
/// default); they only open the sidecar's loopback endpoint, inside that Pod's network namespace.
#[derive(Clone, PartialEq, Eq)]
pub struct PodCredentials {
    pub access_key: String,
    pub secret_key: String,
}

impl PodCredentials {
    pub fn random() -> Self {
        let key: [u8; 10] = rand::random();
        let secret: [u8; 20] = rand::random();
        Self { access_key: format!("BP{}", hex::encode_upper(key)), secret_key: hex::encode(secret) }
    }
}

impl std::fmt::Debug for PodCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCredentials").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

/// The environment variable pointing S3 clients at the sidecar. `AWS_ENDPOINT_URL_S3`, not
/// `AWS_ENDPOINT_URL`: the global one would also send STS, KMS and every other AWS service there.
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_S3";
/// The sidecar's readiness URL (on the Pod's loopback, so probed from inside the container).
pub const READY_URL: &str = "http://127.0.0.1:9000/_blockproxy/readyz";

/// The exec probe of the sidecar: the image has no shell or curl, `blockproxy probe` does the GET.
fn probe(period: u32, failures: u32) -> Value {
    json!({
        "exec": {"command": ["blockproxy", "probe", READY_URL]},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    })
}

/// The sidecar container (a native sidecar: an init container that keeps running). Its startup
/// probe holds the app containers back until it serves (it waits for the volume's token and
/// discovery files, which appear once a VolumeProxyGroup is accepted: up to an hour here).
/// With `fuse`, the sidecar also serves the CSI plugin's mount of the Pod's inline volume, on
/// the descriptor the plugin hands over in the shared emptyDir (ADR 0008). Its resources, and
/// under a memory limit its budgets, come from `resources` (ADR 0018).
pub fn sidecar(
    volume: &VolumeId,
    cfg: &SidecarConfig,
    creds: &PodCredentials,
    resources: &SidecarResources,
    direct_store: bool,
    fuse: bool,
) -> Value {
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "command": ["blockproxy-mount"],
        "args": [
            "--volume-id", volume.as_str(),
            "--discovery-file", format!("{DISCOVERY_DIR}/{}", DiscoveryDocument::CONFIGMAP_KEY),
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--listen", LISTEN,
            "--wait-for-files", "1h",
        ],
        "env": [
            {"name": "BLOCKPROXY_S3_ACCESS_KEY", "value": creds.access_key},
            {"name": "BLOCKPROXY_S3_SECRET_KEY", "value": creds.secret_key},
        ],
        "restartPolicy": "Always",
        "startupProbe": probe(1, 3600),
        "readinessProbe": probe(10, 3),
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
            // PodSecurity "restricted" requires it; without it a compliant Pod is refused once annotated.
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": resources.resources(),
    });
    c["args"].as_array_mut().into_iter().for_each(|a| a.extend(resources.args().into_iter().map(Value::from)));
    if direct_store {
        let file = format!("{DIRECT_STORE_DIR}/{DIRECT_STORE_KEY}");
        c["args"].as_array_mut().into_iter().for_each(|a| a.extend([json!("--store-credentials-file"), json!(file)]));
        let mount = json!({"name": "blockproxy-direct-store", "mountPath": DIRECT_STORE_DIR, "readOnly": true});
        c["volumeMounts"].as_array_mut().into_iter().for_each(|m| m.push(mount.clone()));
    }
    if fuse {
        let socket = format!("{CSI_HANDOVER_MOUNT_PATH}/{}", csi_socket_name(volume.as_str()));
        c["args"].as_array_mut().into_iter().for_each(|a| a.extend([json!("--fuse-fd-socket"), json!(socket)]));
        let mount = json!({"name": CSI_HANDOVER_VOLUME, "mountPath": CSI_HANDOVER_MOUNT_PATH});
        c["volumeMounts"].as_array_mut().into_iter().for_each(|m| m.push(mount.clone()));
    }
    c
}

/// The blockproxy volume of the Pod's inline CSI volume (`csi: {driver: blockproxy.io,
/// volumeAttributes: {volumeID: ...}}`), if it has one; an error refuses the Pod.
fn csi_volume(pod: &Pod) -> Result<Option<VolumeId>, String> {
    let inline: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.csi.as_ref().filter(|c| c.driver == CSI_DRIVER_NAME).map(|c| (&v.name, c)))
        .collect();
    match inline.as_slice() {
        [] => Ok(None),
        [(name, c)] => {
            let id = c.volume_attributes.as_ref().and_then(|a| a.get(CSI_VOLUME_ID_ATTRIBUTE)).ok_or_else(|| {
                format!("volume {name:?} (driver {CSI_DRIVER_NAME}) has no volumeAttributes.{CSI_VOLUME_ID_ATTRIBUTE}")
            })?;
            VolumeId::parse(id).map(Some).map_err(|e| format!("volume {name:?}: {CSI_VOLUME_ID_ATTRIBUTE}: {e}"))
        }
        _ => Err(format!("a Pod can have one {CSI_DRIVER_NAME} volume (one sidecar serves one volume)")),
    }
}

/// The direct-store Secret's name from the Pod's annotation, if any; an error refuses the Pod.
fn direct_store_secret(pod: &Pod) -> Result<Option<&str>, String> {
    let Some(name) = pod.metadata.annotations.as_ref().and_then(|a| a.get(DIRECT_STORE_ANNOTATION)) else {
        return Ok(None);
    };
    // A Secret's name is a DNS subdomain.
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(format!("annotation {DIRECT_STORE_ANNOTATION}: {name:?} is not a Secret name"));
    }
    Ok(Some(name))
}

/// The JSON patch for `pod`, `Ok(None)` when nothing is to be done, or an error message that
/// refuses the Pod (an invalid volume id).
pub fn mutate(pod: &Pod, cfg: &SidecarConfig, creds: &PodCredentials) -> Result<Option<Value>, String> {
    let annotated = match pod.metadata.annotations.as_ref().and_then(|a| a.get(VOLUME_ANNOTATION)) {
        Some(raw) => Some(VolumeId::parse(raw).map_err(|e| format!("annotation {VOLUME_ANNOTATION}: {e}"))?),
        None => None,
    };
    let inline = csi_volume(pod)?;
    let fuse = inline.is_some();
    let volume = match (annotated, inline) {
        (None, None) => return Ok(None),
        (Some(a), Some(i)) if a != i => {
            return Err(format!(
                "annotation {VOLUME_ANNOTATION} says {a}, the {CSI_DRIVER_NAME} volume says {i}: one sidecar serves one volume"
            ));
        }
        (Some(v), _) | (None, Some(v)) => v,
    };
    let direct_store = direct_store_secret(pod)?;
    let resources = SidecarResources::for_pod(&cfg.resource_defaults, pod.metadata.annotations.as_ref())?;
    let spec = pod.spec.as_ref();
    let already = spec
        .is_some_and(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == SIDECAR_NAME));
    if already {
        return Ok(None);
    }
    let mut ops = Vec::new();
    let mut volumes = vec![
        json!({"name": "blockproxy-discovery", "configMap": {"name": meta::discovery_config_map_name(volume.as_str()), "optional": true}}),
        json!({"name": "blockproxy-token", "secret": {"secretName": meta::token_secret_name(volume.as_str()), "optional": true}}),
    ];
    if let Some(secret) = direct_store {
        // Not optional: the Pod waits for the Secret rather than running without its fallback.
        volumes.push(json!({"name": "blockproxy-direct-store", "secret": {"secretName": secret, "items": [{"key": DIRECT_STORE_KEY, "path": DIRECT_STORE_KEY}]}}));
    }
    if fuse {
        // Only the hand-over socket lives there.
        volumes.push(json!({"name": CSI_HANDOVER_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}}));
    }
    if spec.and_then(|s| s.volumes.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    // First init container, so it runs before any other init container and the app.
    if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar(&volume, cfg, creds, &resources, direct_store.is_some(), fuse)]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar(&volume, cfg, creds, &resources, direct_store.is_some(), fuse)}));
    }
    // Point S3 clients of every app container at the sidecar with the Pod's credentials, unless
    // they set them themselves (the key pair only as a pair).
    for (i, c) in spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate() {
        let has = |name: &str| c.env.iter().flatten().any(|v| v.name == name);
        let mut add = Vec::new();
        if !has(ENDPOINT_ENV) {
            add.push(json!({"name": ENDPOINT_ENV, "value": format!("http://{LISTEN}")}));
        }
        if !has("AWS_ACCESS_KEY_ID") && !has("AWS_SECRET_ACCESS_KEY") {
            add.push(json!({"name": "AWS_ACCESS_KEY_ID", "value": creds.access_key}));
            add.push(json!({"name": "AWS_SECRET_ACCESS_KEY", "value": creds.secret_key}));
        }
        if c.env.is_none() {
            if !add.is_empty() {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": add}));
            }
        } else {
            for env in add {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": env}));
            }
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
    match mutate(pod, cfg, &PodCredentials::random()) {
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
        SidecarConfig { image: "blockproxy:test".into(), resource_defaults: Default::default() }
    }

    fn creds() -> PodCredentials {
        PodCredentials::random()
    }

    fn apply(pod: &Pod, ops: Value) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn unannotated_pods_are_left_alone() {
        assert_eq!(mutate(&pod(None), &cfg(), &creds()), Ok(None));
    }

    #[test]
    fn annotated_pod_gets_sidecar_volumes_and_endpoint() {
        let p = pod(Some("vol-1"));
        let creds = creds();
        let out = apply(&p, mutate(&p, &cfg(), &creds).unwrap().unwrap());
        let spec = out.spec.as_ref().unwrap();
        let side = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(side.name, SIDECAR_NAME);
        assert_eq!(side.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            side.args.as_ref().unwrap().join(" "),
            "--volume-id vol-1 --discovery-file /etc/blockproxy/discovery/discovery.json --token-file /etc/blockproxy/token/token --listen 127.0.0.1:9000 --wait-for-files 1h"
        );
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(vols[0].config_map.as_ref().unwrap().name, "blockproxy-discovery-vol-1");
        assert_eq!(vols[1].secret.as_ref().unwrap().secret_name.as_deref(), Some("blockproxy-token-vol-1"));
        let value = |env: &[k8s_openapi::api::core::v1::EnvVar], name: &str| {
            env.iter().find(|e| e.name == name).and_then(|e| e.value.clone())
        };
        let sidecar_env = side.env.as_ref().unwrap();
        assert_eq!(value(sidecar_env, "BLOCKPROXY_S3_ACCESS_KEY").as_ref(), Some(&creds.access_key));
        assert_eq!(value(sidecar_env, "BLOCKPROXY_S3_SECRET_KEY").as_ref(), Some(&creds.secret_key));
        for c in &spec.containers {
            let env = c.env.as_ref().unwrap();
            assert_eq!(value(env, ENDPOINT_ENV).as_deref(), Some("http://127.0.0.1:9000"));
            assert!(value(env, "AWS_ENDPOINT_URL").is_none(), "the global endpoint would redirect every AWS service");
            assert_eq!(value(env, "AWS_ACCESS_KEY_ID").as_ref(), Some(&creds.access_key));
            assert_eq!(value(env, "AWS_SECRET_ACCESS_KEY").as_ref(), Some(&creds.secret_key));
        }
        let security = side.security_context.as_ref().unwrap();
        assert_eq!(security.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        let startup = side.startup_probe.as_ref().unwrap().exec.as_ref().unwrap().command.clone().unwrap();
        assert_eq!(startup, ["blockproxy", "probe", READY_URL]);
        // Idempotent: a second pass (reinvocation) changes nothing.
        assert_eq!(mutate(&out, &cfg(), &creds), Ok(None));
    }

    #[test]
    fn credentials_are_random_per_pod_and_an_app_s_own_pair_is_kept() {
        let (a, b) = (creds(), creds());
        assert_ne!(a, b);
        assert_ne!(a.secret_key, "blockproxy");
        assert!(!format!("{a:?}").contains(&a.secret_key), "Debug must not print the secret");
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"annotations": {VOLUME_ANNOTATION: "v"}},
            "spec": {"containers": [{"name": "app", "image": "app", "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "mine"}]}]},
        }))
        .unwrap();
        let out = apply(&p, mutate(&p, &cfg(), &a).unwrap().unwrap());
        let env = out.spec.unwrap().containers[0].env.clone().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["AWS_ACCESS_KEY_ID", ENDPOINT_ENV]);
    }

    #[test]
    fn a_direct_store_secret_is_mounted_and_passed_to_the_sidecar() {
        let mut p = pod(Some("vol-1"));
        let annotations = p.metadata.annotations.as_mut().unwrap();
        annotations.insert(DIRECT_STORE_ANNOTATION.into(), "store-creds".into());
        let out = apply(&p, mutate(&p, &cfg(), &creds()).unwrap().unwrap());
        let spec = out.spec.as_ref().unwrap();
        let side = &spec.init_containers.as_ref().unwrap()[0];
        let args = side.args.as_ref().unwrap().join(" ");
        assert!(args.ends_with("--store-credentials-file /etc/blockproxy/store/credentials"), "{args}");
        let mount = side.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == DIRECT_STORE_DIR).unwrap();
        let volume = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("store-creds"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, DIRECT_STORE_KEY);
        // Without the annotation, no store access at all.
        let plain = pod(Some("vol-1"));
        let out = apply(&plain, mutate(&plain, &cfg(), &creds()).unwrap().unwrap());
        let side = &out.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        assert!(!side.args.as_ref().unwrap().join(" ").contains("--store-credentials-file"));
        assert_eq!(out.spec.unwrap().volumes.unwrap().len(), 2);
    }

    #[test]
    fn an_invalid_direct_store_secret_name_is_refused() {
        let mut p = pod(Some("vol-1"));
        p.metadata.annotations.as_mut().unwrap().insert(DIRECT_STORE_ANNOTATION.into(), "../Creds".into());
        let err = mutate(&p, &cfg(), &creds()).unwrap_err();
        assert!(err.contains(DIRECT_STORE_ANNOTATION), "{err}");
    }

    #[test]
    fn invalid_volume_id_is_refused() {
        let err = mutate(&pod(Some("../etc")), &cfg(), &creds()).unwrap_err();
        assert!(err.contains(VOLUME_ANNOTATION), "{err}");
    }

    fn csi_pod(annotation: Option<&str>, volumes: Value) -> Pod {
        let mut p = serde_json::to_value(pod(annotation)).unwrap();
        p["spec"]["volumes"] = volumes;
        serde_json::from_value(p).unwrap()
    }

    fn inline(name: &str, volume: Option<&str>) -> Value {
        let attrs = volume.map(|v| json!({CSI_VOLUME_ID_ATTRIBUTE: v})).unwrap_or(json!({}));
        json!({"name": name, "csi": {"driver": CSI_DRIVER_NAME, "volumeAttributes": attrs}})
    }

    #[test]
    fn an_inline_csi_volume_gets_the_sidecar_in_fuse_fd_mode_without_the_annotation() {
        let p = csi_pod(None, json!([inline("data", Some("vol-1")), {"name": "other", "emptyDir": {}}]));
        let out = apply(&p, mutate(&p, &cfg(), &creds()).unwrap().expect("a patch"));
        let spec = out.spec.as_ref().unwrap();
        let side = &spec.init_containers.as_ref().unwrap()[0];
        let args = side.args.as_ref().unwrap().join(" ");
        assert!(args.starts_with("--volume-id vol-1 "), "{args}");
        assert!(args.ends_with(&format!("--fuse-fd-socket {CSI_HANDOVER_MOUNT_PATH}/vol-1.sock")), "{args}");
        let handover =
            spec.volumes.as_ref().unwrap().iter().find(|v| v.name == CSI_HANDOVER_VOLUME).expect("the emptyDir");
        assert!(handover.empty_dir.is_some());
        let mount =
            side.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == CSI_HANDOVER_VOLUME).expect("mounted");
        assert_eq!(mount.mount_path, CSI_HANDOVER_MOUNT_PATH);
        // The app's own volumes stay, and a second pass changes nothing.
        assert!(spec.volumes.as_ref().unwrap().iter().any(|v| v.name == "other"));
        assert_eq!(mutate(&out, &cfg(), &creds()), Ok(None));
        // An annotated Pod without the inline volume gets no hand-over.
        let plain = pod(Some("vol-1"));
        let out = apply(&plain, mutate(&plain, &cfg(), &creds()).unwrap().unwrap());
        let spec = out.spec.as_ref().unwrap();
        assert!(
            !spec.init_containers.as_ref().unwrap()[0].args.as_ref().unwrap().iter().any(|a| a == "--fuse-fd-socket")
        );
        assert!(!spec.volumes.as_ref().unwrap().iter().any(|v| v.name == CSI_HANDOVER_VOLUME));
    }

    #[test]
    fn inconsistent_inline_csi_volumes_are_refused_with_the_reason() {
        let cases = [
            (csi_pod(Some("vol-2"), json!([inline("data", Some("vol-1"))])), "one sidecar serves one volume"),
            (
                csi_pod(None, json!([inline("a", Some("vol-1")), inline("b", Some("vol-1"))])),
                "one blockproxy.io volume",
            ),
            (csi_pod(None, json!([inline("data", None)])), "volumeAttributes.volumeID"),
            (csi_pod(None, json!([inline("data", Some("../etc"))])), "volumeID"),
        ];
        for (p, want) in cases {
            let err = mutate(&p, &cfg(), &creds()).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        // The same volume named twice (annotation and inline volume) is fine.
        assert!(
            mutate(&csi_pod(Some("vol-1"), json!([inline("data", Some("vol-1"))])), &cfg(), &creds())
                .unwrap()
                .is_some()
        );
    }
}
