//! The volumes this proxy serves, from the volumes file, reloaded when the file changes. A file
//! that fails to parse keeps the last good configuration, and the error is logged.

use blockproxy_protocol::{VolumeConfig, VolumeId, VolumesFile, VolumesFileError};
use sha2::{Digest, Sha256};
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

/// A served volume: its configuration, shared with the requests it authorizes, and its token
/// digests decoded once, so a request hashes its token but neither copies nor formats anything.
struct Served {
    cfg: Arc<VolumeConfig>,
    digests: Vec<[u8; 32]>,
}

type ServedMap = BTreeMap<VolumeId, Served>;

#[derive(Default)]
pub struct Volumes {
    current: RwLock<Arc<ServedMap>>,
}

impl Volumes {
    /// Loads the file once; a bad file at start-up is a configuration error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read volumes file {}: {e}", path.display()))?;
        let map = parse(&text).map_err(|e| anyhow::anyhow!("volumes file {}: {e}", path.display()))?;
        Ok(Self { current: RwLock::new(Arc::new(map)) })
    }

    /// How many volumes are served.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    fn snapshot(&self) -> Arc<ServedMap> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks the bearer token of a request for `volume` in constant time.
    pub fn authorize(&self, volume: &VolumeId, authorization: Option<&str>) -> Result<Arc<VolumeConfig>, AuthError> {
        let map = self.snapshot();
        let served = map.get(volume).ok_or(AuthError::UnknownVolume)?;
        let token = bearer(authorization).ok_or(AuthError::MissingToken)?;
        let cfg = &served.cfg;
        let plain = !cfg.token.is_empty() && bool::from(token.as_bytes().ct_eq(cfg.token.as_bytes()));
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every listed digest is compared, so the time taken does not depend on which matched.
        let hashed = served.digests.iter().fold(false, |acc, d| acc | bool::from(digest.ct_eq(d)));
        if plain || hashed { Ok(Arc::clone(cfg)) } else { Err(AuthError::BadToken) }
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
            match parse(&String::from_utf8_lossy(&now)) {
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

/// The volumes of a volumes file, checked, with their digests decoded.
fn parse(text: &str) -> Result<ServedMap, VolumesFileError> {
    let by_id = VolumesFile::parse(text)?.by_id()?;
    by_id
        .into_iter()
        .map(|(id, cfg)| {
            let digests = cfg
                .token_sha256
                .iter()
                .map(|hex_digest| {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(hex_digest, &mut d).map(|()| d)
                })
                .collect::<Result<_, _>>()
                .map_err(|_| VolumesFileError::BadTokenHash(id.clone()))?;
            Ok((id, Served { cfg: Arc::new(cfg), digests }))
        })
        .collect()
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

    /// The file accepts a digest in either case (hex is case-free), so either must authorize.
    #[test]
    fn a_digest_written_in_upper_case_accepts_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.yaml");
        let upper = VolumeConfig::token_digest("t0ken").to_ascii_uppercase();
        std::fs::write(&path, format!("volumes:\n- {{id: v1, bucket: b, tokenSha256: [{upper}]}}\n")).unwrap();
        let vols = Volumes::load(&path).unwrap();
        let v1 = VolumeId::parse("v1").unwrap();
        assert!(vols.authorize(&v1, Some("Bearer t0ken")).is_ok());
        assert_eq!(vols.authorize(&v1, Some("Bearer t0kem")).unwrap_err(), AuthError::BadToken);
    }
}
