//! `ProxyGroup`: a group of caching proxies, one per node that has a local NVMe PersistentVolume.
#![allow(clippy::duplicated_attributes)] // printcolumn(...) repeats `type_ = "string"` by design

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A group of blockproxy caching proxies. The operator runs one proxy Pod on every node that has
/// a local PersistentVolume of `placement.storageClassName`, with its cache on that volume, and
/// publishes the ready proxies to the workloads whose VolumeProxyGroups reference this group.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "blockproxy.io",
    version = "v1alpha1",
    kind = "ProxyGroup",
    plural = "proxygroups",
    shortname = "pg",
    doc = "A group of blockproxy caching proxies, one per node with a local NVMe PersistentVolume.",
    status = "ProxyGroupStatus",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.providerCode"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.regionCode"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyProxies"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredProxies"),
    printcolumn(name = "Cache", type_ = "integer", json_path = ".status.cacheBytes"),
    printcolumn(name = "Dirty", type_ = "integer", json_path = ".status.dirtyBytes"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyGroupSpec {
    /// Short code of the object-store provider this group fronts (for example `s3`, `minio`,
    /// `oci`). Published to clients, which show it and may prefer groups by it.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$')").message("providerCode must be 1-32 lowercase letters, digits or '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 32))]
    pub provider_code: String,

    /// Code of the region or site this group runs in (for example `eu-west-1`, `dc-paris`).
    /// Published to clients.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,62}[a-z0-9])?$')").message("regionCode must be 1-64 lowercase letters, digits or '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 64))]
    pub region_code: String,

    /// Where the proxies run.
    pub placement: Placement,

    /// The local disk cache of every proxy.
    #[serde(default)]
    pub cache: CacheSpec,

    /// Write-back behaviour: acknowledge writes once on local disk and flush them to the store
    /// asynchronously.
    #[serde(default)]
    pub writeback: WritebackSpec,

    /// The object store behind the proxies.
    pub object_store: ObjectStoreSpec,

    /// TCP port the proxies listen on (data plane, health and metrics).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// TLS on the proxies' port.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Namespaces whose VolumeProxyGroups may attach volumes to this group. `["*"]` allows every
    /// namespace; empty (the default) allows none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(n, n == '*' || n.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'))").message("allowedNamespaces entries must be namespace names or '*'"))]
    #[schemars(length(max = 256), inner(length(max = 63)))]
    pub allowed_namespaces: Vec<String>,

    /// Whether VolumeProxyGroups of different namespaces may name the same (or nested) bucket
    /// and prefix through this group. Off by default: a place in the store belongs to the
    /// namespace that attached it first, so no namespace can read or overwrite another's data by
    /// naming its bucket and prefix. Sharing needs it on every group involved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_store_sharing: bool,

    /// Container image of the proxy. Defaults to the image the operator was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub image: Option<String>,

    /// Image pull policy of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,

    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_port() -> i32 {
    8443
}

/// Which nodes get a proxy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// StorageClass of the local NVMe PersistentVolumes (`spec.local`, pinned to one node by node
    /// affinity). Every node with such a PV that is Available, or already claimed by this group,
    /// gets one proxy with its cache on that PV.
    #[x_kube(validation = Rule::new("self != ''").message("placement.storageClassName must not be empty"))]
    #[schemars(length(max = 253))]
    pub storage_class_name: String,

    /// Only nodes with all of these labels are eligible.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// At most this many proxies. When more nodes are eligible, the pick is deterministic:
    /// nodes that already run a proxy of this group first, then by node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("placement.maxProxies must be at least 1"))]
    pub max_proxies: Option<i32>,

    /// Tolerations of the proxy Pods, for NVMe nodes that are tainted for storage workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// The local disk cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// How much of the cache volume the proxy may fill: a percentage of the filesystem (`"90%"`)
    /// or a quantity (`"500Gi"`). Clean blocks are evicted near the quota; dirty blocks never are.
    #[serde(default = "default_disk_quota")]
    #[x_kube(validation = Rule::new("self.matches('^(100|[1-9][0-9]?)%$') || self.matches('^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)$')").message("cache.diskQuota must be a percentage from 1% to 100% (like \"90%\") or a quantity (like \"500Gi\")"))]
    #[schemars(length(max = 16))]
    pub disk_quota: String,
}

fn default_disk_quota() -> String {
    "90%".into()
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { disk_quota: default_disk_quota() }
    }
}

/// Write-back settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled || (self.active == 0 && self.delay == '0ms')").message("writeback.active and writeback.delay only apply when writeback.enabled is true"))]
pub struct WritebackSpec {
    /// Acknowledge writes once they are on the proxy's disk, and flush them asynchronously. When
    /// false, every write goes straight through to the object store.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Maximum number of parallel flushes to the store; 0 lets the proxy choose.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1024").message("writeback.active must be between 0 (auto) and 1024"))]
    pub active: i32,

    /// Pause between flushes, to throttle a shared WAN link, as a duration: `0ms`, `250ms`, `2s`.
    #[serde(default = "default_delay")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,6}(ms|s)$')").message("writeback.delay must be a duration in ms or s, like \"0ms\", \"250ms\" or \"2s\""))]
    #[schemars(length(max = 16))]
    pub delay: String,

    /// fsync every dirty block before acknowledging it, for full crash durability.
    #[serde(default)]
    pub sync: bool,
}

fn default_true() -> bool {
    true
}

fn default_delay() -> String {
    "0ms".into()
}

impl Default for WritebackSpec {
    fn default() -> Self {
        Self { enabled: true, active: 0, delay: default_delay(), sync: false }
    }
}

impl WritebackSpec {
    /// The delay in milliseconds. The CRD's CEL rule guarantees the format; anything else is 0.
    pub fn delay_millis(&self) -> u64 {
        let d = self.delay.trim();
        if let Some(ms) = d.strip_suffix("ms") {
            ms.parse().unwrap_or(0)
        } else if let Some(s) = d.strip_suffix('s') {
            s.parse::<u64>().map(|s| s.saturating_mul(1000)).unwrap_or(0)
        } else {
            0
        }
    }
}

/// Kind of object store.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ObjectStoreProvider {
    /// Amazon S3.
    S3,
    /// An S3-compatible store (MinIO, Ceph RGW, OCI, GCS XML API); `endpoint` is required.
    S3Compatible,
    /// Google Cloud Storage (JSON API). Credentials: a service-account JSON key in the Secret, or
    /// none (workload identity).
    Gcs,
    /// Azure Blob Storage. Credentials: the account name and its key or a SAS token, in the Secret.
    Azure,
    /// A directory on the proxy's node (`endpoint: file:///path`); for development and tests.
    File,
}

/// The object store behind the proxies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider != 's3Compatible' || has(self.endpoint)").message("objectStore.endpoint is required when objectStore.provider is s3Compatible"))]
#[x_kube(validation = Rule::new("self.provider in ['file', 'gcs'] || has(self.credentialsSecret)").message("objectStore.credentialsSecret is required when objectStore.provider is s3, s3Compatible or azure"))]
#[x_kube(validation = Rule::new("self.provider != 'file' || (has(self.endpoint) && self.endpoint.startsWith('file:///'))").message("objectStore.endpoint must be a file:/// URL when objectStore.provider is file"))]
#[x_kube(validation = Rule::new("self.provider == 'file' || !has(self.endpoint) || !self.endpoint.startsWith('file:')").message("objectStore.endpoint may only be a file:/// URL when objectStore.provider is file"))]
#[x_kube(validation = Rule::new("!self.pathStyle || self.provider in ['s3', 's3Compatible']").message("objectStore.pathStyle only applies to objectStore.provider s3 and s3Compatible"))]
#[x_kube(validation = Rule::new("!self.sse || self.provider in ['s3', 's3Compatible']").message("objectStore.sse only applies to objectStore.provider s3 and s3Compatible (GCS and Azure encrypt at rest always)"))]
pub struct ObjectStoreSpec {
    /// `s3`, `s3Compatible`, `gcs`, `azure` or `file`.
    pub provider: ObjectStoreProvider,

    /// Store URL, for example `https://minio.storage.svc:9000`. Defaults to AWS for `s3`,
    /// `https://storage.googleapis.com` for `gcs` and `https://<account>.blob.core.windows.net`
    /// for `azure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('file:///')").message("objectStore.endpoint must be an http(s):// or file:/// URL"))]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,

    /// Store region (for example `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,

    /// Address buckets by path (`endpoint/bucket/key`) instead of by virtual host; most
    /// S3-compatible stores need this.
    #[serde(default)]
    pub path_style: bool,

    /// Ask the store for server-side encryption of every block.
    #[serde(default)]
    pub sse: bool,

    /// Secret with the store's credentials, in the operator's namespace: access keys (`s3`,
    /// `s3Compatible`), a service-account JSON key (`gcs`), or the account name and its key or a
    /// SAS token (`azure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
}

/// Reference to a Secret holding the store's credentials (which keys depends on the provider).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the namespace the operator runs the proxies in.
    #[x_kube(validation = Rule::new("self != ''").message("objectStore.credentialsSecret.name must not be empty"))]
    #[schemars(length(max = 253))]
    pub name: String,

    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,

    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,

    /// `gcs`: key holding the service-account JSON key.
    #[serde(default = "default_service_account_key_key")]
    pub service_account_key_key: String,

    /// `azure`: key holding the storage account's name.
    #[serde(default = "default_account_name_key")]
    pub account_name_key: String,

    /// `azure`: key holding the account key (base64); the Secret holds it or `sasTokenKey`.
    #[serde(default = "default_account_key_key")]
    pub account_key_key: String,

    /// `azure`: key holding a SAS token (`sv=...&sig=...`).
    #[serde(default = "default_sas_token_key")]
    pub sas_token_key: String,
}

fn default_service_account_key_key() -> String {
    "serviceAccount.json".into()
}

fn default_account_name_key() -> String {
    "accountName".into()
}

fn default_account_key_key() -> String {
    "accountKey".into()
}

fn default_sas_token_key() -> String {
    "sasToken".into()
}

fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}

/// TLS on the proxies' port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.certificateSecret) || self.enabled").message("tls.certificateSecret requires tls.enabled"))]
pub struct TlsSpec {
    /// Serve TLS. When false the proxies speak plain HTTP; only use that behind a TLS terminator
    /// or on a trusted network.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// A `kubernetes.io/tls` Secret (with `ca.crt`) in the operator's namespace to serve instead
    /// of the certificate the operator issues from its own per-group CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret: Option<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self { enabled: true, certificate_secret: None }
    }
}

/// Observed state of a ProxyGroup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of proxies the group should run (eligible nodes, capped by maxProxies).
    #[serde(default)]
    pub desired_proxies: i32,

    /// Number of proxies that are ready and published (draining ones not counted).
    #[serde(default)]
    pub ready_proxies: i32,

    /// Ready proxies, and draining ones until their drain completes, as published to clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ProxyEndpoint>,

    /// Every proxy of the group, including those starting or draining.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyStatus>,

    /// Bytes in the caches of the proxies that reported them at the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,

    /// Bytes acknowledged but not yet in the store, summed over the proxies that reported them:
    /// what a loss of every proxy's disk would lose. Alert when it keeps growing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bytes: Option<u64>,

    /// URL scheme clients use: `https`, or `http` when TLS is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,

    /// DNS name the operator-issued serving certificate is valid for (`<service>.<namespace>.svc`).
    /// Clients dial the endpoint IPs and verify the certificate against this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,

    /// PEM bundle of the CA that signs the proxies' serving certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,

    /// Ready, Degraded, Draining; see the API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A published proxy address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyEndpoint {
    /// `host:port`: the proxy's stable DNS name below the group's headless Service
    /// (`<hostname>.<service>.<namespace>.svc`, the same across Pod replacements), or `ip:port`
    /// for a draining proxy or a Pod without a hostname.
    pub address: String,
    /// The node the proxy runs on.
    pub node: String,
    /// Rendezvous weight: the GiB of the proxy's PersistentVolume (at least 1), so each proxy
    /// owns keys in proportion to its cache.
    #[serde(default = "one")]
    pub weight: u32,
    /// The proxy is draining: clients still read from it (it may hold writes the store does not
    /// have yet) but send it no new writes. Listed until its drain completes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// One proxy of the group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The node the proxy runs on.
    pub node: String,
    /// The proxy Pod.
    pub pod: String,
    /// The PersistentVolume holding its cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<String>,
    /// `ip:port` once the Pod has an IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The Pod is Ready.
    pub ready: bool,
    /// `Running`, `Starting`, `Updating`, `Draining` or `Unreachable`.
    pub state: String,
    /// Bytes in the cache (clean, dirty and staged upload parts), as the proxy last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Bytes acknowledged but not yet in the store, as the proxy last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}
