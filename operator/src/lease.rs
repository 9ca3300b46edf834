//! Leader election with a `coordination.k8s.io/v1` Lease: acquire when free or expired, renew
//! while holding it, with optimistic concurrency (resourceVersion) so two replicas never both
//! believe they lead.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew: Duration,
}

/// Whether `lease` can be taken by `identity` at `now`.
pub fn can_acquire(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == identity => true,
        Some(_) => {
            let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
                return true;
            };
            let secs = spec.lease_duration_seconds.unwrap_or(15) as i64;
            renewed + SignedDuration::from_secs(secs) < now
        }
    }
}

/// One acquire-or-renew attempt. `Ok(true)` when this replica holds the lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let fresh = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(fresh(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !can_acquire(&spec, &cfg.identity, now) {
                return Ok(false);
            }
            let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
            lease.spec = Some(fresh(transitions, if ours { spec.acquire_time } else { None }));
            // replace carries the resourceVersion we read: a concurrent writer makes this a 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the lease up (on graceful shutdown) so another replica takes over at once.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
            warn!(error = %e, "could not release the leader Lease");
        }
    }
}

/// Keeps trying to acquire and then renew the lease, publishing leadership on `tx`, until
/// `stop` flips. A holder that cannot renew within the lease duration steps down.
pub async fn run(client: Client, cfg: LeaseConfig, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        let leading = *tx.borrow();
        match try_acquire(&api, &cfg).await {
            Ok(true) => {
                last_renew = tokio::time::Instant::now();
                if !leading {
                    info!(identity = %cfg.identity, lease = %cfg.name, "acquired leadership");
                    let _ = tx.send(true);
                }
            }
            Ok(false) => {
                if leading {
                    warn!(identity = %cfg.identity, "lost leadership to another replica");
                    let _ = tx.send(false);
                }
            }
            Err(e) => {
                warn!(error = %e, "leader Lease call failed");
                if leading && last_renew.elapsed() > cfg.duration {
                    let _ = tx.send(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew) => {}
            _ = stop.changed() => break,
        }
    }
    if *tx.borrow() {
        release(&api, &cfg).await;
        let _ = tx.send(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_taken_when_free_own_or_expired() {
        let now = Timestamp::from_second(1_000).unwrap();
        let held = |by: &str, renewed: i64| LeaseSpec {
            holder_identity: Some(by.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(can_acquire(&LeaseSpec::default(), "a", now));
        assert!(can_acquire(&held("a", 999), "a", now));
        assert!(!can_acquire(&held("b", 990), "a", now));
        assert!(can_acquire(&held("b", 900), "a", now));
    }
}
