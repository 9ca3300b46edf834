//! The discovery file (the operator's ConfigMap mounted into the pod): loading, validation, and a
//! watcher that re-reads it when it changes. A malformed file keeps the last good document and
//! logs why. Polling the content (not inotify) also catches ConfigMap updates, which kubelet makes
//! by swapping a symlink.

use super::ClientError;
use crate::protocol::{DiscoveryDocument, VolumeId};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reads and validates the discovery file for `volume`.
pub fn load(path: &Path, volume: &VolumeId) -> Result<DiscoveryDocument, ClientError> {
    let bad = |reason: String| ClientError::Discovery { path: path.display().to_string(), reason };
    let data = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let doc = DiscoveryDocument::from_json(&data).map_err(|e| bad(format!("not a valid discovery document: {e}")))?;
    validate(&doc, volume).map_err(bad)?;
    Ok(doc)
}

/// Checks what the client relies on: the right volume, unique group names, known schemes,
/// non-empty addresses, parseable CA bundles.
pub fn validate(doc: &DiscoveryDocument, volume: &VolumeId) -> Result<(), String> {
    if &doc.volume_id != volume {
        return Err(format!(
            "it describes volume {:?}, but this sidecar serves {:?}",
            doc.volume_id.as_str(),
            volume.as_str()
        ));
    }
    let mut names = HashSet::new();
    for g in &doc.groups {
        if !names.insert(&g.name) {
            return Err(format!("group {:?} is listed twice", g.name));
        }
        if g.scheme != "http" && g.scheme != "https" {
            return Err(format!("group {:?} has scheme {:?}; use https or http", g.name, g.scheme));
        }
        if let Some(pem) = &g.ca_bundle {
            let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
            match certs {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => return Err(format!("group {:?} has a caBundle without any PEM certificate", g.name)),
                Err(e) => return Err(format!("group {:?} has an unparseable caBundle: {e}", g.name)),
            }
        }
        for e in &g.endpoints {
            if e.address.trim().is_empty() || !e.address.contains(':') {
                return Err(format!("group {:?} has endpoint {:?}; addresses are host:port", g.name, e.address));
            }
        }
    }
    Ok(())
}

/// Re-reads `path` every `interval`; publishes a new document when its content changed and is
/// valid. Runs until the receiver side is gone.
pub async fn watch_file(
    path: PathBuf,
    volume: VolumeId,
    interval: Duration,
    tx: watch::Sender<Arc<DiscoveryDocument>>,
    on_error: impl Fn(&ClientError) + Send + 'static,
) {
    let mut last_bytes: Option<Vec<u8>> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let bytes = tokio::fs::read(&path).await.ok();
        if bytes == last_bytes {
            continue;
        }
        last_bytes = bytes;
        match load(&path, &volume) {
            Ok(doc) => {
                last_error = None;
                if **tx.borrow() != doc {
                    tracing::info!(
                        path = %path.display(),
                        groups = doc.groups.len(),
                        proxies = doc.groups.iter().map(|g| g.endpoints.len()).sum::<usize>(),
                        "discovery file changed; using the new configuration"
                    );
                    tx.send_replace(Arc::new(doc));
                }
            }
            Err(e) => {
                on_error(&e);
                if last_error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!(error = %e, "ignoring the changed discovery file; keeping the last good configuration");
                    last_error = Some(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> VolumeId {
        VolumeId::parse("vol1").unwrap()
    }

    const GOOD: &str = r#"{"volumeId":"vol1","store":{"bucket":"b"},"groups":[{"name":"a","providerCode":"s3","regionCode":"eu","scheme":"http","endpoints":[{"address":"127.0.0.1:1"}]}]}"#;

    #[test]
    fn rejects_wrong_volume_duplicate_groups_and_bad_addresses() {
        let doc = DiscoveryDocument::from_json(GOOD.as_bytes()).unwrap();
        validate(&doc, &vol()).unwrap();
        assert!(validate(&doc, &VolumeId::parse("other").unwrap()).unwrap_err().contains("serves"));
        let mut dup = doc.clone();
        dup.groups.push(doc.groups[0].clone());
        assert!(validate(&dup, &vol()).unwrap_err().contains("twice"));
        let mut bad = doc.clone();
        bad.groups[0].endpoints[0].address = "nohostport".into();
        assert!(validate(&bad, &vol()).unwrap_err().contains("host:port"));
        let mut ca = doc.clone();
        ca.groups[0].ca_bundle = Some("not pem".into());
        assert!(validate(&ca, &vol()).unwrap_err().contains("caBundle"));
        let mut scheme = doc;
        scheme.groups[0].scheme = "ftp".into();
        assert!(validate(&scheme, &vol()).is_err());
    }

    #[tokio::test]
    async fn watcher_keeps_last_good_document_when_file_turns_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("discovery.json");
        std::fs::write(&path, GOOD).unwrap();
        let first = load(&path, &vol()).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(first.clone()));
        let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let e2 = Arc::clone(&errors);
        let task = tokio::spawn(watch_file(path.clone(), vol(), Duration::from_millis(20), tx, move |_| {
            e2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        std::fs::write(&path, "{ not json").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(errors.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(**rx.borrow(), first);
        let changed = GOOD.replace("127.0.0.1:1", "127.0.0.1:2");
        std::fs::write(&path, changed).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        assert_eq!(rx.borrow().groups[0].endpoints[0].address, "127.0.0.1:2");
        task.abort();
    }
}
