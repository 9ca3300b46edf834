//! `VolumeProxyGroup`: attaches a volume of the workloads' namespace to a ProxyGroup.
#![allow(clippy::duplicated_attributes)] // printcolumn(...) repeats `type_ = "string"` by design

use blockproxy_protocol::{DEFAULT_BLOCK_SIZE, DEFAULT_METADATA_TTL_MS, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Serves a volume through a ProxyGroup. Several VolumeProxyGroups with the same `volumeID` in a
/// namespace give that volume several groups (one per site or region); clients pick the nearest.
/// The operator publishes the volume's discovery ConfigMap and token Secret in this namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "blockproxy.io",
    version = "v1alpha1",
    kind = "VolumeProxyGroup",
    plural = "volumeproxygroups",
    shortname = "vpg",
    doc = "Serves a volume of this namespace through a ProxyGroup and publishes its discovery ConfigMap.",
    namespaced,
    status = "VolumeProxyGroupStatus",
    printcolumn(name = "Volume", type_ = "string", json_path = ".spec.volumeID"),
    printcolumn(name = "Group", type_ = "string", json_path = ".spec.proxyGroup"),
    printcolumn(name = "Bucket", type_ = "string", json_path = ".spec.bucket"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProxyGroupSpec {
    /// The volume: 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or
    /// digit. Workloads ask for it with the pod annotation `blockproxy.io/volume`.
    #[serde(rename = "volumeID")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')").message("volumeID must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeID is immutable"))]
    #[schemars(length(max = 63))]
    pub volume_id: String,

    /// Name of the (cluster-scoped) ProxyGroup that serves the volume. It must list this
    /// namespace in `allowedNamespaces`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$')").message("proxyGroup must be the name of a ProxyGroup"))]
    #[schemars(length(max = 253))]
    pub proxy_group: String,

    /// Bucket holding the volume's blocks.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][-a-z0-9.]{1,61}[a-z0-9]$')").message("bucket must be a valid bucket name: 3-63 lowercase letters, digits, '-' or '.'"))]
    #[schemars(length(max = 63))]
    pub bucket: String,

    /// Key prefix of the volume's blocks in the bucket; a block's key is `{prefix}/{key}`. Empty
    /// means the bucket root.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..') && size(self) <= 512").message("prefix must be relative, at most 512 characters, and contain no '..'"))]
    #[schemars(length(max = 512))]
    pub prefix: String,

    /// The unit clean objects are cached and striped over the group's proxies in, as a quantity
    /// of bytes (`"4Mi"`, `"512Ki"`): from 64Ki to 64Mi, a multiple of 4Ki. When several
    /// VolumeProxyGroups serve a volume, the oldest one's settings apply.
    #[serde(default = "default_block_size")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,8}(Ki|Mi)?$')").message("blockSize must be a quantity of bytes, like \"4Mi\" or \"512Ki\""))]
    #[x_kube(validation = Rule::new("!self.matches('^[1-9][0-9]{0,8}(Ki|Mi)?$') || (quantity(self).asInteger() >= 65536 && quantity(self).asInteger() <= 67108864)").message("blockSize must be between 64Ki and 64Mi"))]
    #[x_kube(validation = Rule::new("!self.matches('^[1-9][0-9]{0,8}(Ki|Mi)?$') || quantity(self).asInteger() % 4096 == 0").message("blockSize must be a multiple of 4Ki"))]
    #[schemars(length(max = 16))]
    pub block_size: String,

    /// How long a proxy trusts what it knows of an object (size, ETag) before it asks the store
    /// again: an object changed behind the cache is seen within this bound. A duration (`"1s"`,
    /// `"500ms"`, `"0s"` to ask every time), at most 1h.
    #[serde(default = "default_metadata_ttl", rename = "metadataTTL")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("metadataTTL must be a duration like \"1s\", \"500ms\" or \"1m30s\""))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('1h')").message("metadataTTL must be at most 1h"))]
    #[schemars(length(max = 32))]
    pub metadata_ttl: String,
}

fn default_block_size() -> String {
    "4Mi".into()
}

fn default_metadata_ttl() -> String {
    "1s".into()
}

impl VolumeProxyGroupSpec {
    /// `blockSize` in bytes (validated by the API server; the default when it somehow is not).
    pub fn block_size_bytes(&self) -> u64 {
        let s = self.block_size.trim();
        let (digits, unit) = match s.strip_suffix("Ki") {
            Some(d) => (d, 1 << 10),
            None => s.strip_suffix("Mi").map_or((s, 1), |d| (d, 1 << 20)),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .filter(|b| (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(b) && b % 4096 == 0)
            .unwrap_or(DEFAULT_BLOCK_SIZE)
    }

    /// `metadataTTL` in milliseconds (validated by the API server; the default when it is not).
    pub fn metadata_ttl_ms(&self) -> u64 {
        let mut rest = self.metadata_ttl.trim();
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let Ok(n) = rest[..digits].parse::<u64>() else { return DEFAULT_METADATA_TTL_MS };
            rest = &rest[digits..];
            let (unit, len) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
                .into_iter()
                .find(|(u, _)| rest.starts_with(u))
                .map_or((0, 0), |(u, ms)| (ms, u.len()));
            if len == 0 {
                return DEFAULT_METADATA_TTL_MS;
            }
            total = total.saturating_add(n.saturating_mul(unit));
            rest = &rest[len..];
        }
        total.min(3_600_000)
    }
}

/// Observed state of a VolumeProxyGroup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProxyGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The discovery ConfigMap of this volume, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_config_map: Option<String>,

    /// The token Secret of this volume, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,

    /// Every group published for this volume now (from all its accepted VolumeProxyGroups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_groups: Vec<String>,

    /// Accepted and Published; see the API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn spec(block_size: &str, ttl: &str) -> VolumeProxyGroupSpec {
        VolumeProxyGroupSpec {
            volume_id: "v".into(),
            proxy_group: "g".into(),
            bucket: "bucket".into(),
            prefix: String::new(),
            block_size: block_size.into(),
            metadata_ttl: ttl.into(),
        }
    }

    #[test]
    fn block_sizes_are_quantities_of_bytes() {
        for (q, bytes) in [("4Mi", 4 << 20), ("512Ki", 512 << 10), ("65536", 65536), ("64Mi", 64 << 20)] {
            assert_eq!(spec(q, "1s").block_size_bytes(), bytes, "{q}");
        }
        assert_eq!(spec("3", "1s").block_size_bytes(), DEFAULT_BLOCK_SIZE, "out of range falls back");
    }

    #[test]
    fn ttls_are_durations() {
        for (d, ms) in [("1s", 1000), ("500ms", 500), ("0s", 0), ("1m30s", 90_000), ("1h", 3_600_000)] {
            assert_eq!(spec("4Mi", d).metadata_ttl_ms(), ms, "{d}");
        }
        assert_eq!(spec("4Mi", "soon").metadata_ttl_ms(), DEFAULT_METADATA_TTL_MS);
    }

    #[test]
    fn defaults_follow_the_protocol() {
        let v: VolumeProxyGroupSpec =
            serde_json::from_value(serde_json::json!({"volumeID": "v", "proxyGroup": "g", "bucket": "bucket"}))
                .unwrap();
        assert_eq!(v.block_size_bytes(), DEFAULT_BLOCK_SIZE);
        assert_eq!(v.metadata_ttl_ms(), DEFAULT_METADATA_TTL_MS);
        // The CEL bounds are the protocol's, written out (a rule cannot name a Rust constant).
        let crd = serde_json::to_string(&VolumeProxyGroup::crd()).unwrap();
        assert!(crd.contains(&format!(">= {MIN_BLOCK_SIZE} ")), "{crd}");
        assert!(crd.contains(&format!("<= {MAX_BLOCK_SIZE})")), "{crd}");
    }
}
