//! `VolumeProxyGroup`: attaches a volume of the workloads' namespace to a ProxyGroup.
#![allow(clippy::duplicated_attributes)] // printcolumn(...) repeats `type_ = "string"` by design

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
