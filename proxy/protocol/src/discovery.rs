//! The discovery document: every group that serves one volume, as the operator publishes it in a
//! ConfigMap (key [`DiscoveryDocument::CONFIGMAP_KEY`]) and the mount sidecar reads it from a file.

use super::{DEFAULT_BLOCK_SIZE, DEFAULT_METADATA_TTL_MS, VolumeId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryDocument {
    pub volume_id: VolumeId,
    /// Where the volume's blocks live in the object store (used for direct fallback).
    pub store: StoreLocation,
    #[serde(default)]
    pub groups: Vec<DiscoveryGroup>,
    /// The volume's block size in bytes: the unit clean objects are cached and striped in
    /// (VolumeProxyGroup `blockSize`).
    #[serde(default = "default_block_size")]
    pub block_size: u64,
    /// How long a clean object's attributes are trusted before the store is asked again
    /// (VolumeProxyGroup `metadataTTL`).
    #[serde(default = "default_metadata_ttl_ms")]
    pub metadata_ttl_ms: u64,
}

fn default_block_size() -> u64 {
    DEFAULT_BLOCK_SIZE
}

fn default_metadata_ttl_ms() -> u64 {
    DEFAULT_METADATA_TTL_MS
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreLocation {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The kind of store (`s3`, `gcs`, `azure`; the proxy's `--store-provider`), for clients that
    /// reach it directly; absent means S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Path-style bucket addressing (MinIO, Ceph RGW), as the proxies reach the store: a client
    /// that falls back to the store directly must address it the same way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_style: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryGroup {
    /// The ProxyGroup's name.
    pub name: String,
    pub provider_code: String,
    pub region_code: String,
    /// `https` unless the group was configured for plain HTTP.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// PEM bundle that signs the proxies' serving certificates, when not publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The name the proxies' certificates are issued for (with `ca_bundle`). Clients dial the
    /// endpoints' IPs but verify the certificate against this name, because Pod IPs are not known
    /// when the certificate is issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Ready proxies only.
    #[serde(default)]
    pub endpoints: Vec<DiscoveryEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryEndpoint {
    /// `host:port`
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Rendezvous weight (relative cache capacity); 1 when absent.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The proxy is draining (leaving the group): it may still hold acknowledged writes that are
    /// not in the store yet, so clients read from it, but they send no new writes to it (writes
    /// go to the next proxy in rendezvous order). Absent means false (ADR 0002).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn default_scheme() -> String {
    "https".into()
}

fn default_weight() -> u32 {
    1
}

impl StoreLocation {
    /// The longest key this volume holds (see [`crate::max_key_len_under`]).
    pub fn max_key_len(&self) -> usize {
        crate::max_key_len_under(&self.prefix)
    }
}

impl DiscoveryDocument {
    /// The ConfigMap data key (and file name when mounted) holding the JSON document.
    pub const CONFIGMAP_KEY: &'static str = "discovery.json";

    pub fn from_json(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain data structures cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_document_with_defaults() {
        let doc = DiscoveryDocument::from_json(
            br#"{"volumeId":"v1","store":{"bucket":"b"},"groups":[{"name":"g","providerCode":"s3","regionCode":"eu","endpoints":[{"address":"10.0.0.1:8443"}]}]}"#,
        )
        .unwrap();
        assert_eq!(doc.groups[0].scheme, "https");
        assert_eq!(doc.groups[0].endpoints[0].weight, 1);
        assert!(!doc.groups[0].endpoints[0].draining, "documents without the field list serving proxies");
        // Documents from before per-volume settings still parse, with the defaults.
        assert_eq!((doc.block_size, doc.metadata_ttl_ms), (DEFAULT_BLOCK_SIZE, DEFAULT_METADATA_TTL_MS));
        let again = DiscoveryDocument::from_json(doc.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(again, doc);
    }

    #[test]
    fn carries_the_volume_settings() {
        let doc = DiscoveryDocument::from_json(
            br#"{"volumeId":"v1","store":{"bucket":"b"},"blockSize":1048576,"metadataTtlMs":250}"#,
        )
        .unwrap();
        assert_eq!((doc.block_size, doc.metadata_ttl_ms), (1 << 20, 250));
        assert!(doc.to_json_pretty().contains("\"metadataTtlMs\": 250"));
    }

    #[test]
    fn a_draining_endpoint_says_so_and_a_serving_one_stays_as_before() {
        let doc = DiscoveryDocument::from_json(
            br#"{"volumeId":"v1","store":{"bucket":"b"},"groups":[{"name":"g","providerCode":"s3","regionCode":"eu","endpoints":[{"address":"10.0.0.1:8443","draining":true},{"address":"10.0.0.2:8443"}]}]}"#,
        )
        .unwrap();
        let e = &doc.groups[0].endpoints;
        assert!(e[0].draining && !e[1].draining);
        let json = doc.to_json_pretty();
        assert_eq!(json.matches("draining").count(), 1, "only the draining endpoint carries the field: {json}");
        assert_eq!(DiscoveryDocument::from_json(json.as_bytes()).unwrap(), doc);
    }

    #[test]
    fn rejects_invalid_volume_id() {
        assert!(DiscoveryDocument::from_json(br#"{"volumeId":"../x","store":{"bucket":"b"}}"#).is_err());
    }
}
