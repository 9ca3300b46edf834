//! Runs the operator: CRD check, admin server, leader election, both controllers, one shutdown.

use crate::controller::{self, Config};
use crate::lease::{self, LeaseConfig};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::FutureExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tracing::{error, info};

pub const CRD_NAMES: [&str; 2] = ["proxygroups.blockproxy.io", "volumeproxygroups.blockproxy.io"];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "CRD {0} is not installed. Install the CRDs first: `kubectl apply -f crds/` or `helm install blockproxy charts/blockproxy`"
    )]
    CrdMissing(String),
    #[error("checking CRD {name}: {source}")]
    CrdCheck {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admission webhook: {0}")]
    Webhook(#[from] crate::webhook::WebhookError),
    #[error("lost leadership; exiting so a fresh process can campaign again")]
    LostLeadership,
    #[error(transparent)]
    Controller(#[from] crate::Error),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub controllers: Config,
    /// `None` runs without leader election (a single replica).
    pub lease: Option<LeaseConfig>,
    /// `/healthz`, `/readyz`, `/metrics`; `None` serves nothing.
    pub admin_addr: Option<SocketAddr>,
    /// The sidecar-injecting admission webhook; served by every replica, leader or not.
    pub webhook: Option<WebhookSettings>,
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub sidecar_image: String,
    pub sidecar_resources: crate::sidecar_resources::ResourceDefaults,
}

/// Handles the admin server reads.
#[derive(Clone)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    pub metrics: Metrics,
}

/// Fails with an install hint when a CRD is missing.
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        match api.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(RunError::CrdMissing(name.into())),
            Err(e) => {
                return Err(RunError::CrdCheck { name: name.into(), source: e });
            }
        }
    }
    Ok(())
}

pub fn admin_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route("/metrics", get(|State(h): State<Health>| async move { h.metrics.render() }))
        .with_state(health)
}

/// Runs until `shutdown` resolves (graceful: in-flight reconciles finish, the lease is released).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    check_crds(&client).await?;
    let shutdown = shutdown.shared();
    let health = Health { ready: Arc::new(AtomicBool::new(false)), metrics: metrics.clone() };
    if let Some(addr) = settings.admin_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Admin { addr, source })?;
        let router = admin_router(health.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                error!(error = %e, "admin server failed");
            }
        });
        info!(%addr, "admin server listening");
    }
    if let Some(w) = &settings.webhook {
        let tls = crate::webhook::tls_config(&w.cert_file, &w.key_file)?;
        let cfg = crate::webhook::SidecarConfig {
            image: w.sidecar_image.clone(),
            resource_defaults: w.sidecar_resources.clone(),
        };
        let (_, serving) = crate::webhook::serve(w.addr, tls, cfg, shutdown.clone()).await?;
        tokio::spawn(serving);
    }
    health.ready.store(true, Ordering::Relaxed);

    let Some(lease_cfg) = settings.lease else {
        metrics.leader.set(1);
        return Ok(controller::run_controllers(client, settings.controllers, metrics, shutdown).await?);
    };
    let (lead_tx, mut lead_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let lease_task = tokio::spawn(lease::run(client.clone(), lease_cfg, lead_tx, stop_rx));
    // Wait for leadership (or shutdown).
    let leading = tokio::select! {
        r = lead_rx.wait_for(|l| *l) => r.is_ok(),
        _ = shutdown.clone() => false,
    };
    let mut result = Ok(());
    if leading {
        metrics.leader.set(1);
        let mut lost_rx = lead_rx.clone();
        let lost = async move {
            let _ = lost_rx.wait_for(|l| !*l).await;
        }
        .shared();
        let stop = futures::future::select(Box::pin(shutdown.clone()), Box::pin(lost.clone())).map(|_| ());
        controller::run_controllers(client, settings.controllers, metrics.clone(), stop).await?;
        if !*lead_rx.borrow_and_update() && lost.now_or_never().is_some() && shutdown.clone().now_or_never().is_none() {
            result = Err(RunError::LostLeadership);
        }
        metrics.leader.set(0);
    }
    let _ = stop_tx.send(true);
    let _ = lease_task.await;
    result
}
