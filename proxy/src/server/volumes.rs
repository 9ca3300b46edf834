//! The volumes this proxy serves, from the volumes file, reloaded when the file changes. A file
//! that fails to parse keeps the last good configuration, and the error is logged.

use blockproxy_protocol::{VolumeConfig, VolumeId, VolumesFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    UnknownVolume,
    MissingToken,
    BadToken,
}

#[derive(Default)]
pub struct Volumes {
    current: RwLock<Arc<BTreeMap<VolumeId, VolumeConfig>>>,
}

impl Volumes {
    /// Loads the file once; a bad file at start-up is a configuration error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read volumes file {}: {e}", path.display()))?;
        let map = VolumesFile::parse(&text)
            .and_then(|f| f.by_id())
            .map_err(|e| anyhow::anyhow!("volumes file {}: {e}", path.display()))?;
        Ok(Self { current: RwLock::new(Arc::new(map)) })
    }

    pub fn get(&self, id: &VolumeId) -> Option<VolumeConfig> {
        self.snapshot().get(id).cloned()
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<VolumeId, VolumeConfig>> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks the bearer token of a request for `volume` in constant time.
    pub fn authorize(&self, volume: &VolumeId, authorization: Option<&str>) -> Result<VolumeConfig, AuthError> {
        let cfg = self.get(volume).ok_or(AuthError::UnknownVolume)?;
        let token = bearer(authorization).ok_or(AuthError::MissingToken)?;
        let plain = !cfg.token.is_empty() && bool::from(token.as_bytes().ct_eq(cfg.token.as_bytes()));
        let digest = VolumeConfig::token_digest(token);
        // Every listed digest is compared, so the time taken does not depend on which matched.
        let hashed =
            cfg.token_sha256.iter().fold(false, |acc, h| acc | bool::from(digest.as_bytes().ct_eq(h.as_bytes())));
        if plain || hashed { Ok(cfg) } else { Err(AuthError::BadToken) }
    }

    /// Polls the file and swaps in each new valid version. Polling (rather than inotify) also
    /// sees Kubernetes' atomic symlink swaps of mounted Secrets.
    pub async fn watch(self: Arc<Self>, path: PathBuf, every: Duration) {
        let mut last = std::fs::read(&path).ok();
        loop {
            tokio::time::sleep(every).await;
            let Ok(now) = tokio::fs::read(&path).await else {
                tracing::warn!(path = %path.display(), "volumes file unreadable; keeping the last good configuration");
                continue;
            };
            if last.as_deref() == Some(now.as_slice()) {
                continue;
            }
            match VolumesFile::parse(&String::from_utf8_lossy(&now)).and_then(|f| f.by_id()) {
                Ok(map) => {
                    tracing::info!(volumes = map.len(), "volumes file reloaded");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
                }
                Err(e) => tracing::error!(error = %e, "volumes file is invalid; keeping the last good configuration"),
            }
            last = Some(now);
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Constant-time comparison of an admin token.
pub fn token_matches(expected: &str, header: Option<&str>) -> bool {
    bearer(header).is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn authorization_header_parsing_never_panics(h in "\\PC{0,60}") {
            let _ = bearer(Some(&h));
            let _ = token_matches("secret", Some(&h));
        }
    }

    #[test]
    fn authorizes_by_volume_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.yaml");
        let other = VolumeConfig::token_digest("from-another-namespace");
        std::fs::write(&path, format!("volumes:\n- {{id: v1, bucket: b, token: s3cret, tokenSha256: [{other}]}}\n"))
            .unwrap();
        let vols = Volumes::load(&path).unwrap();
        let v1 = VolumeId::parse("v1").unwrap();
        assert!(vols.authorize(&v1, Some("Bearer s3cret")).is_ok());
        assert!(vols.authorize(&v1, Some("Bearer from-another-namespace")).is_ok());
        assert_eq!(vols.authorize(&v1, Some("Bearer nope")).unwrap_err(), AuthError::BadToken);
        assert_eq!(vols.authorize(&v1, Some("Basic s3cret")).unwrap_err(), AuthError::MissingToken);
        assert_eq!(vols.authorize(&v1, None).unwrap_err(), AuthError::MissingToken);
        let v2 = VolumeId::parse("v2").unwrap();
        assert_eq!(vols.authorize(&v2, Some("Bearer s3cret")).unwrap_err(), AuthError::UnknownVolume);
    }
}
