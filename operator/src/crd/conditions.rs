//! Condition types and reasons, as constants, and a helper that keeps `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

// ProxyGroup condition types.
/// Every desired proxy is ready.
pub const READY: &str = "Ready";
/// Some proxies are missing, not ready, or cannot be drained.
pub const DEGRADED: &str = "Degraded";
/// Proxies are being drained before removal.
pub const DRAINING: &str = "Draining";

// VolumeProxyGroup condition types.
/// The association is valid: the group exists and allows this namespace.
pub const ACCEPTED: &str = "Accepted";
/// The discovery ConfigMap lists this association's group.
pub const PUBLISHED: &str = "Published";

// Reasons.
pub const REASON_ALL_READY: &str = "AllProxiesReady";
pub const REASON_PROXIES_NOT_READY: &str = "ProxiesNotReady";
pub const REASON_NO_ELIGIBLE_NODES: &str = "NoEligibleNodes";
pub const REASON_DRAIN_IN_PROGRESS: &str = "DrainInProgress";
pub const REASON_DRAIN_BLOCKED: &str = "DrainBlocked";
pub const REASON_NOT_DRAINING: &str = "NotDraining";
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_AS_EXPECTED: &str = "AsExpected";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_GROUP_NOT_FOUND: &str = "GroupNotFound";
pub const REASON_NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
pub const REASON_CONFLICTING_STORE: &str = "ConflictingStore";
pub const REASON_VOLUME_ID_IN_USE: &str = "VolumeIDInUse";
pub const REASON_STORE_IN_USE: &str = "StoreInUse";
pub const REASON_GROUP_DELETING: &str = "GroupDeleting";
pub const REASON_PUBLISHED: &str = "Published";
pub const REASON_NOT_PUBLISHED: &str = "NotPublished";

/// A condition as the reconcilers build it; [`merge`] turns it into an API condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Builds the condition list, keeping the previous `lastTransitionTime` of a condition whose
/// status did not change.
pub fn merge(old: &[Condition], new: &[Cond], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.to_owned(),
                message: c.message.clone(),
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge(&[], &[Cond::new(READY, false, REASON_PROXIES_NOT_READY, "0/3")], Some(1), t0);
        let same = merge(&first, &[Cond::new(READY, false, REASON_PROXIES_NOT_READY, "1/3")], Some(1), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "1/3");
        let flipped = merge(&same, &[Cond::new(READY, true, REASON_ALL_READY, "3/3")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].observed_generation, Some(2));
    }
}
