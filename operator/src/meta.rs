//! Names, labels and annotations the operator puts on what it manages.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The one server-side-apply field manager of the operator.
pub const FIELD_MANAGER: &str = "blockproxy-operator";
/// Finalizer on ProxyGroups: drain every proxy before the group goes.
pub const PG_FINALIZER: &str = "blockproxy.io/drain";
/// Finalizer on VolumeProxyGroups: unpublish the volume when its last association goes.
pub const VPG_FINALIZER: &str = "blockproxy.io/unpublish";

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const GROUP_LABEL: &str = "blockproxy.io/proxy-group";
pub const NODE_LABEL: &str = "blockproxy.io/node";
pub const VOLUME_LABEL: &str = "blockproxy.io/volume-id";
/// Hash of the proxy Pod template; a different hash means the Pod is outdated.
pub const SPEC_HASH_ANNOTATION: &str = "blockproxy.io/spec-hash";
/// On a ProxyGroup: `"true"` lets the finalizer and removals skip proxies that cannot be drained
/// (their dirty blocks, if any, stay on the PersistentVolume). An explicit operator decision.
pub const SKIP_DRAIN_ANNOTATION: &str = "blockproxy.io/skip-unreachable-drain";

/// Labels on everything that belongs to one ProxyGroup.
pub fn group_labels(group: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "blockproxy".to_owned()),
        (INSTANCE_LABEL.to_owned(), group.to_owned()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
        (PART_OF_LABEL.to_owned(), "blockproxy".to_owned()),
        (GROUP_LABEL.to_owned(), group.to_owned()),
    ])
}

/// Label selector matching everything the operator manages for one ProxyGroup.
pub fn group_selector(group: &str) -> String {
    format!("{MANAGED_BY_LABEL}={FIELD_MANAGER},{GROUP_LABEL}={group}")
}

/// Labels on a volume's discovery ConfigMap and token Secret.
pub fn volume_labels(volume_id: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "blockproxy".to_owned()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
        (PART_OF_LABEL.to_owned(), "blockproxy".to_owned()),
        (VOLUME_LABEL.to_owned(), volume_id.to_owned()),
    ])
}

/// A DNS-1123 subdomain made of `parts` joined by '-': lowercased, invalid characters replaced,
/// and shortened with a hash suffix when longer than `max` (or when anything was replaced, so two
/// different inputs never map to one name).
pub fn object_name(parts: &[&str], max: usize) -> String {
    let joined = parts.join("-");
    let mut clean: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let changed = clean != joined;
    if changed || clean.len() > max {
        let hash = short_hash(joined.as_bytes(), 8);
        clean.truncate(max.saturating_sub(hash.len() + 1));
        let trimmed = clean.trim_end_matches(['-', '.']).to_owned();
        clean = format!("{trimmed}-{hash}");
    }
    clean
}

/// The first `len` hex digits of SHA-256 of `data`.
pub fn short_hash(data: &[u8], len: usize) -> String {
    let mut h = hex::encode(Sha256::digest(data));
    h.truncate(len);
    h
}

pub fn pod_name(group: &str, node: &str) -> String {
    object_name(&[group, node], 253)
}

/// A proxy Pod's `hostname`: a DNS label, so its stable name below the group's headless Service
/// is `<hostname>.<service>.<namespace>.svc` (ADR 0009).
pub fn pod_hostname(group: &str, node: &str) -> String {
    object_name(&[group, node], 63)
}

pub fn pvc_name(group: &str, node: &str) -> String {
    object_name(&[group, "cache", node], 253)
}

pub fn service_name(group: &str) -> String {
    object_name(&[group], 63)
}

pub fn volumes_secret_name(group: &str) -> String {
    object_name(&[group, "volumes"], 253)
}

pub fn admin_secret_name(group: &str) -> String {
    object_name(&[group, "admin"], 253)
}

pub fn tls_secret_name(group: &str) -> String {
    object_name(&[group, "tls"], 253)
}

pub fn discovery_config_map_name(volume_id: &str) -> String {
    object_name(&["blockproxy-discovery", volume_id], 253)
}

pub fn token_secret_name(volume_id: &str) -> String {
    object_name(&["blockproxy-token", volume_id], 253)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        assert_eq!(pod_name("eu", "nvme-1"), "eu-nvme-1");
        assert_eq!(discovery_config_map_name("vol-1"), "blockproxy-discovery-vol-1");
        let a = discovery_config_map_name("Vol_1");
        let b = discovery_config_map_name("vol-1");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        let long = pod_name(&"g".repeat(200), &"n".repeat(200));
        assert!(long.len() <= 253);
        assert_ne!(long, pod_name(&"g".repeat(200), &"n".repeat(199)));
    }
}
