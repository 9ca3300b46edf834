//! The CSI Identity and Node services. Only ephemeral inline volumes: NodePublishVolume mounts
//! and starts the hand-over, NodeUnpublishVolume unmounts; both are idempotent (the kubelet
//! retries). Secrets in requests are never logged (this plugin needs none).

use super::proto::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    ProbeRequest, ProbeResponse, identity_server::Identity, node_server::Node, volume_capability::AccessType,
};
use super::{EPHEMERAL, HANDOVER_VOLUME, POD_NAME, POD_NAMESPACE, POD_UID, VOLUME_ID_ATTRIBUTE};
use super::{fuse_mount, handover};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct IdentityService;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: super::DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: HashMap::new(),
        }))
    }

    /// A node-only plugin: no controller service, no topology.
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

pub struct NodeService {
    node_id: String,
    kubelet_dir: PathBuf,
    handover_timeout: Duration,
    /// Hand-overs still waiting for their sidecar, by target path: unpublish cancels them.
    pending: Arc<Mutex<HashMap<PathBuf, tokio::task::AbortHandle>>>,
}

impl NodeService {
    pub fn new(node_id: String, kubelet_dir: PathBuf, handover_timeout: Duration) -> Self {
        Self { node_id, kubelet_dir, handover_timeout, pending: Default::default() }
    }
}

/// A name that is safe as one path component (volume names, pod UIDs).
fn is_path_component(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn attribute<'a>(ctx: &'a HashMap<String, String>, key: &str, what: &str) -> Result<&'a str, Status> {
    match ctx.get(key).map(String::as_str) {
        Some(v) if is_path_component(v) => Ok(v),
        Some(v) => Err(Status::invalid_argument(format!("{what} ({key}) {v:?} is not a valid name"))),
        None => Err(Status::invalid_argument(format!(
            "volume_context has no {key} ({what}); the CSIDriver object needs podInfoOnMount: true and the \
             Pod's inline volume volumeAttributes.{VOLUME_ID_ATTRIBUTE}"
        ))),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.target_path.is_empty() {
            return Err(Status::invalid_argument("target_path is empty"));
        }
        if let Some(AccessType::Block(_)) = req.volume_capability.as_ref().and_then(|c| c.access_type.as_ref()) {
            return Err(Status::invalid_argument("blockproxy volumes are filesystems, not block devices"));
        }
        let ctx = &req.volume_context;
        if ctx.get(EPHEMERAL).map(String::as_str) != Some("true") {
            return Err(Status::invalid_argument(
                "only ephemeral inline volumes are supported (csi: {driver: blockproxy.io} in the Pod)",
            ));
        }
        let volume = attribute(ctx, VOLUME_ID_ATTRIBUTE, "the blockproxy volume")?.to_owned();
        let pod_uid = attribute(ctx, POD_UID, "the Pod's UID")?.to_owned();
        let target = PathBuf::from(&req.target_path);
        let span = tracing::info_span!(
            "publish",
            volume = %volume,
            pod = %format!("{}/{}", ctx.get(POD_NAMESPACE).map_or("", |s| s), ctx.get(POD_NAME).map_or("", |s| s)),
            target = %target.display()
        );
        let _e = span.enter();

        let t = target.clone();
        if tokio::task::spawn_blocking(move || fuse_mount::is_mount_point(&t))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?
        {
            tracing::info!("already published");
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        let (t, source, ro) = (target.clone(), format!("blockproxy:{volume}"), req.readonly);
        let fd = tokio::task::spawn_blocking(move || fuse_mount::mount(&t, &source, ro))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        let dir = self
            .kubelet_dir
            .join("pods")
            .join(&pod_uid)
            .join("volumes")
            .join("kubernetes.io~empty-dir")
            .join(HANDOVER_VOLUME);
        tracing::info!(socket_dir = %dir.display(), "mounted; waiting for the sidecar to take the descriptor");
        let (pending, timeout, t) = (self.pending.clone(), self.handover_timeout, target.clone());
        let task = tokio::spawn(async move {
            match handover::serve_once(dir, super::socket_name(&volume), fd, timeout).await {
                Ok(()) => tracing::info!(volume = %volume, target = %t.display(), "descriptor handed to the sidecar"),
                Err(e) => {
                    tracing::error!(volume = %volume, target = %t.display(), error = %format!("{e:#}"), "hand-over failed: unmounting");
                    let t2 = t.clone();
                    let _ = tokio::task::spawn_blocking(move || fuse_mount::unmount(&t2)).await;
                }
            }
            pending.lock().expect("pending lock").remove(&t);
        });
        self.pending.lock().expect("pending lock").insert(target, task.abort_handle());
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.target_path.is_empty() {
            return Err(Status::invalid_argument("target_path is empty"));
        }
        let target = PathBuf::from(&req.target_path);
        if let Some(h) = self.pending.lock().expect("pending lock").remove(&target) {
            h.abort();
        }
        let t = target.clone();
        tokio::task::spawn_blocking(move || fuse_mount::unmount(&t))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), "unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// No staging: the kubelet calls publish directly.
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse { node_id: self.node_id.clone(), max_volumes_per_node: 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for ok in ["vol1", "3f1c-aa_b.c"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a/b", "../x", "a b"] {
            assert!(!is_path_component(bad), "{bad:?}");
        }
    }

    fn publish(ctx: &[(&str, &str)]) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: "/nonexistent/target".into(),
            volume_context: ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn publish_refuses_what_it_cannot_serve_with_a_reason() {
        let node = NodeService::new("n".into(), "/nonexistent".into(), Duration::from_secs(1));
        let cases = [
            (publish(&[(VOLUME_ID_ATTRIBUTE, "v"), (POD_UID, "u")]), "only ephemeral"),
            (publish(&[(EPHEMERAL, "true"), (POD_UID, "u")]), "volumeID"),
            (publish(&[(EPHEMERAL, "true"), (VOLUME_ID_ATTRIBUTE, "v")]), "podInfoOnMount"),
            (publish(&[(EPHEMERAL, "true"), (VOLUME_ID_ATTRIBUTE, "../v"), (POD_UID, "u")]), "not a valid name"),
        ];
        for (req, want) in cases {
            let err = node.node_publish_volume(Request::new(req)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(want), "{want}: {}", err.message());
        }
    }
}
