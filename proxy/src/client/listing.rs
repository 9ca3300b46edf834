//! Listings, one page at a time: a page of the store's listing (directly with store credentials,
//! else through a proxy) with every reachable proxy's unflushed writes merged in. The newest
//! version of a key wins, and a pending delete hides it.

use super::ops::store_key;
use super::transport::AttemptError;
use super::{Client, ClientError, Topology};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    /// True when the newest version is acknowledged but not yet in the store.
    pub unflushed: bool,
    pub last_modified: Option<SystemTime>,
    /// The S3 ETag (quoted), when known.
    pub etag: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    /// More keys follow the last entry.
    pub truncated: bool,
}

/// The newest unflushed write of a key among the proxies.
struct Unflushed {
    version: u64,
    deleted: bool,
    entry: ListEntry,
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Client {
    /// Every object under `prefix`, page after page.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.list_page(prefix, &after, 1000).await?;
            if let Some(last) = page.entries.last() {
                after = last.key.clone();
            }
            out.extend(page.entries);
            if !page.truncated {
                return Ok(out);
            }
        }
    }

    /// Up to `max_keys` objects under `prefix` whose keys sort after `start_after`, in key order.
    pub async fn list_page(&self, prefix: &str, start_after: &str, max_keys: usize) -> Result<ListPage, ClientError> {
        let max_keys = max_keys.max(1);
        let topo = self.inner.topology();
        // The proxies first, then the store, never both at once: a write or delete acknowledged
        // before this listing is then either still unflushed when the proxies answer, or flushed
        // before the store is read. Read together, a flush landing between the two reads hid
        // the key from both.
        let unflushed = self.unflushed(&topo, prefix).await;
        let (stored, store_truncated) = self.store_page(&topo, prefix, start_after, max_keys).await?;
        // Unflushed keys beyond the store page's last key belong to a later page (unless the
        // store has nothing more), so a key is never listed twice or skipped.
        let bound = if store_truncated { stored.last().map(|e| e.key.clone()) } else { None };
        let mut merged: BTreeMap<String, ListEntry> = stored.into_iter().map(|e| (e.key.clone(), e)).collect();
        for (key, u) in unflushed {
            if key.as_str() <= start_after || bound.as_ref().is_some_and(|b| &key > b) {
                continue;
            }
            if u.deleted {
                merged.remove(&key);
            } else {
                merged.insert(key, u.entry);
            }
        }
        let mut entries: Vec<ListEntry> = merged.into_values().collect();
        let truncated = store_truncated || entries.len() > max_keys;
        entries.truncate(max_keys);
        Ok(ListPage { entries, truncated })
    }

    /// Every reachable proxy's unflushed writes under `prefix`, the newest per key.
    async fn unflushed(&self, topo: &Topology, prefix: &str) -> BTreeMap<String, Unflushed> {
        let inner = &self.inner;
        let mut calls = Vec::new();
        for g in &topo.groups {
            for e in &g.endpoints {
                if !inner.is_down(&g.name, &e.address) {
                    calls.push(inner.proxy_call(g, &e.address, Duration::from_secs(10).min(inner.cfg.request_timeout)));
                }
            }
        }
        let answers = futures::future::join_all(calls.iter().map(|c| c.dirty(prefix))).await;
        let mut newest: BTreeMap<String, Unflushed> = BTreeMap::new();
        for (call, answer) in calls.iter().zip(answers) {
            let keys = match answer {
                Ok(d) => d.keys,
                Err(e) => {
                    tracing::warn!(proxy = %call.base, error = ?e, "listing unflushed keys failed; the listing may miss them");
                    continue;
                }
            };
            for k in keys {
                if newest.get(&k.key).is_some_and(|cur| cur.version >= k.version) {
                    continue;
                }
                let entry = ListEntry {
                    key: k.key.clone(),
                    size: k.size,
                    unflushed: true,
                    // Versions are nanoseconds since the epoch (the version clock).
                    last_modified: Some(UNIX_EPOCH + Duration::from_nanos(k.version)),
                    etag: k.etag,
                };
                newest.insert(k.key, Unflushed { version: k.version, deleted: k.deleted, entry });
            }
        }
        newest
    }

    /// A page of the store's objects under `prefix` (keys relative to the volume) and whether
    /// more follow: read directly with store credentials, otherwise through a proxy of the chosen
    /// group (failing over like a read).
    async fn store_page(
        &self,
        topo: &Topology,
        prefix: &str,
        start_after: &str,
        max_keys: usize,
    ) -> Result<(Vec<ListEntry>, bool), ClientError> {
        let inner = &self.inner;
        let loc = &topo.doc.store;
        if let Some(store) = &inner.cfg.direct_store {
            let strip = {
                let p = loc.prefix.trim_matches('/');
                if p.is_empty() { 0 } else { p.len() + 1 }
            };
            // The store's keys carry the volume's prefix; pages resume after a full store key.
            let after = (!start_after.is_empty()).then(|| store_key(&loc.prefix, start_after));
            let page = store
                .list_page(&loc.bucket, &store_key(&loc.prefix, prefix), after.as_deref(), max_keys as u32)
                .await
                .map_err(ClientError::Store)?;
            let entries = page
                .objects
                .into_iter()
                .filter(|o| o.key.len() > strip)
                .map(|o| ListEntry {
                    key: o.key[strip..].to_owned(),
                    size: o.size,
                    unflushed: false,
                    last_modified: Some(o.last_modified),
                    etag: Some(o.etag),
                })
                .collect();
            return Ok((entries, page.next_start_after.is_some()));
        }
        let mut last = String::from("no proxy is known");
        let mut attempts = 0;
        for (group, address) in inner.proxy_targets(topo, prefix, super::ops::Purpose::Read) {
            attempts += 1;
            let call = inner.proxy_call(&topo.groups[group], &address, inner.cfg.request_timeout);
            match call.store_objects_page(prefix, start_after, max_keys).await {
                Ok(o) => {
                    // A full page may have more behind it; the next request tells.
                    let truncated = o.objects.len() >= max_keys;
                    let entries = o
                        .objects
                        .into_iter()
                        .map(|o| ListEntry {
                            key: o.key,
                            size: o.size,
                            unflushed: false,
                            last_modified: o.last_modified_ms.map(from_millis),
                            etag: o.etag,
                        })
                        .collect();
                    return Ok((entries, truncated));
                }
                Err(AttemptError::Rejected(e)) => return Err(e),
                Err(AttemptError::Unreachable(e) | AttemptError::Unavailable(e)) => last = e,
                Err(AttemptError::Superseded(v)) => last = format!("unexpected 409 (version {v}) to a listing"),
            }
        }
        Err(ClientError::Unreachable { op: "list", attempts, last })
    }
}
