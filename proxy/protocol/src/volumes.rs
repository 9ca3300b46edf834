//! The volumes file: which volumes a proxy serves, where each lives in the store, and its token.
//! The operator writes it into a Secret; the proxy reloads it when it changes.

use super::VolumeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumesFile {
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeConfig {
    pub id: VolumeId,
    pub bucket: String,
    /// Store keys are `{prefix}/{key}`; empty means the bucket root.
    #[serde(default)]
    pub prefix: String,
    /// Bearer token clients of this volume present. May be empty when `token_sha256` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Hex SHA-256 digests of further accepted tokens (one per namespace that uses the volume):
    /// the operator gives proxies these instead of the tokens themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_sha256: Vec<String>,
    /// The volume's metadata TTL (VolumeProxyGroup `metadataTTL`), in milliseconds; absent: the
    /// proxy's `--metadata-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_ttl_ms: Option<u64>,
}

// The token must never reach a log, so Debug redacts it.
impl fmt::Debug for VolumeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeConfig")
            .field("id", &self.id)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("token", &"<redacted>")
            .field("token_sha256", &self.token_sha256.len())
            .field("metadata_ttl_ms", &self.metadata_ttl_ms)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumesFileError {
    #[error("volumes file is not valid YAML/JSON: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("volume {0} is listed twice")]
    Duplicate(VolumeId),
    #[error("volume {0} has neither a token nor a tokenSha256 entry")]
    EmptyToken(VolumeId),
    #[error("volume {0} has a tokenSha256 entry that is not 64 hex digits")]
    BadTokenHash(VolumeId),
    #[error("volume {0} has an empty bucket")]
    EmptyBucket(VolumeId),
}

impl VolumesFile {
    /// Parses YAML (JSON is valid YAML) and checks the invariants the proxy relies on.
    pub fn parse(data: &str) -> Result<Self, VolumesFileError> {
        let file: Self = serde_yaml::from_str(data)?;
        file.by_id().map(|_| file)
    }

    /// The volumes keyed by id, or the first invariant broken.
    pub fn by_id(&self) -> Result<BTreeMap<VolumeId, VolumeConfig>, VolumesFileError> {
        let mut out = BTreeMap::new();
        for v in &self.volumes {
            if v.token.is_empty() && v.token_sha256.is_empty() {
                return Err(VolumesFileError::EmptyToken(v.id.clone()));
            }
            if v.token_sha256.iter().any(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(VolumesFileError::BadTokenHash(v.id.clone()));
            }
            if v.bucket.is_empty() {
                return Err(VolumesFileError::EmptyBucket(v.id.clone()));
            }
            if out.insert(v.id.clone(), v.clone()).is_some() {
                return Err(VolumesFileError::Duplicate(v.id.clone()));
            }
        }
        Ok(out)
    }
}

impl VolumeConfig {
    /// Hex SHA-256 of a token, as listed in `token_sha256`.
    pub fn token_digest(token: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    }

    /// How long this volume trusts a clean object's attributes: its own TTL, or `default` (the
    /// proxy's `--metadata-ttl`).
    pub fn metadata_ttl(&self, default: std::time::Duration) -> std::time::Duration {
        self.metadata_ttl_ms.map_or(default, std::time::Duration::from_millis)
    }

    /// The longest key this volume holds (see [`crate::max_key_len_under`]).
    pub fn max_key_len(&self) -> usize {
        crate::max_key_len_under(&self.prefix)
    }

    /// The object-store key of a block: `{prefix}/{key}`, or `{key}` without a prefix.
    pub fn store_key(&self, key: &super::BlockKey) -> String {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() { key.as_str().to_owned() } else { format!("{prefix}/{}", key.as_str()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let f = VolumesFile::parse("volumes:\n- id: v1\n  bucket: b\n  prefix: p/\n  token: t\n").unwrap();
        let key = crate::BlockKey::parse("k/1").unwrap();
        assert_eq!(f.volumes[0].store_key(&key), "p/k/1");
        assert!(VolumesFile::parse("volumes:\n- {id: v1, bucket: b, token: ''}\n").is_err());
        assert!(
            VolumesFile::parse("volumes:\n- {id: v1, bucket: b, token: a}\n- {id: v1, bucket: b, token: a}\n").is_err()
        );
        assert!(VolumesFile::parse("volumes:\n- {id: v1, bucket: b, token: a, extra: 1}\n").is_err());
    }

    #[test]
    fn a_volume_ttl_overrides_the_proxy_default() {
        let f = VolumesFile::parse(
            "volumes:\n- {id: v1, bucket: b, token: t, metadataTtlMs: 250}\n- {id: v2, bucket: b, token: t}\n",
        )
        .unwrap();
        let default = std::time::Duration::from_secs(7);
        assert_eq!(f.volumes[0].metadata_ttl(default), std::time::Duration::from_millis(250));
        assert_eq!(f.volumes[1].metadata_ttl(default), default);
    }

    #[test]
    fn token_hashes_are_validated() {
        let h = VolumeConfig::token_digest("t");
        let f = VolumesFile::parse(&format!("volumes:\n- {{id: v1, bucket: b, tokenSha256: [{h}]}}\n")).unwrap();
        assert_eq!(f.volumes[0].token_sha256, [h]);
        assert!(VolumesFile::parse("volumes:\n- {id: v1, bucket: b, tokenSha256: [abc]}\n").is_err());
    }

    #[test]
    fn debug_redacts_token() {
        let f = VolumesFile::parse("volumes:\n- {id: v1, bucket: b, token: supersecret}\n").unwrap();
        assert!(!format!("{f:?}").contains("supersecret"));
    }
}
