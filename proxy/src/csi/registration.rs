//! The kubelet's plugin registration API: the kubelet finds our socket in its plugins_registry
//! directory, asks for the CSI endpoint, and tells us whether it registered the driver.

use super::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, registration_server::Registration,
};
use std::path::PathBuf;
use tonic::{Request, Response, Status};

pub struct RegistrationService {
    csi_endpoint: PathBuf,
}

impl RegistrationService {
    pub fn new(csi_endpoint: PathBuf) -> Self {
        Self { csi_endpoint }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: super::DRIVER_NAME.into(),
            endpoint: self.csi_endpoint.to_string_lossy().into_owned(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!("the kubelet registered the driver");
        } else {
            tracing::error!(error = %s.error, "the kubelet refused to register the driver");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
