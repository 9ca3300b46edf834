//! The pure part of VolumeProxyGroups: which associations are accepted, the per-volume tokens,
//! each group's volumes file and each volume's discovery document. Both controllers use it, so a
//! proxy serves exactly the volumes whose discovery document lists its group.

use crate::crd::conditions as c;
use crate::crd::{ObjectStoreProvider, ProxyGroup, VolumeProxyGroup};
use blockproxy_protocol::{
    DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation, VolumeConfig, VolumeId, VolumesFile,
};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Why an association is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// Key of a VolumeProxyGroup: `(namespace, name)`.
pub type VpgKey = (String, String);

fn key(v: &VolumeProxyGroup) -> VpgKey {
    (v.namespace().unwrap_or_default(), v.name_any())
}

/// Seniority: older first; within one second (the timestamps' resolution) an association that is
/// already accepted goes before one that is not, so a newcomer never displaces a published one.
fn age(v: &VolumeProxyGroup) -> (Option<k8s_openapi::jiff::Timestamp>, bool, String, String) {
    let accepted =
        v.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == c::ACCEPTED && c.status == "True"));
    (v.metadata.creation_timestamp.as_ref().map(|t| t.0), !accepted, v.namespace().unwrap_or_default(), v.name_any())
}

/// Whether `group` lets `namespace` attach volumes.
pub fn namespace_allowed(group: &ProxyGroup, namespace: &str) -> bool {
    group.spec.allowed_namespaces.iter().any(|n| n == "*" || n == namespace)
}

/// Whether two prefixes of one bucket overlap: equal, or one is a folder of the other (the
/// empty prefix, the bucket root, overlaps every prefix).
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
    let inside =
        |inner: &str, outer: &str| outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"));
    inside(a, b) || inside(b, a)
}

/// Decides every association. VolumeProxyGroups being deleted must be left out by the caller.
/// Rules, in order: the group exists and is not being deleted; it allows the namespace; the
/// volume's associations in one namespace agree on bucket and prefix (the oldest one sets them);
/// a bucket and prefix (and every prefix nested in or around it) belong to the namespace that
/// attached them first, unless every group involved allows store sharing; within one group, a
/// volume id belongs to one namespace (the one that attached it first).
pub fn decide(vpgs: &[VolumeProxyGroup], groups: &[ProxyGroup]) -> BTreeMap<VpgKey, Result<(), Rejection>> {
    let mut sorted: Vec<&VolumeProxyGroup> = vpgs.iter().collect();
    sorted.sort_by_key(|v| age(v));
    let mut store_of: BTreeMap<(String, String), (&str, &str, String)> = BTreeMap::new();
    let mut owner_of: BTreeMap<(String, String), (String, String, String)> = BTreeMap::new();
    // Accepted places in the store: (bucket, prefix, namespace, its group shares).
    let mut places: Vec<(String, String, String, bool)> = Vec::new();
    let mut out = BTreeMap::new();
    for v in sorted {
        let ns = v.namespace().unwrap_or_default();
        let spec = &v.spec;
        let decision = (|| {
            let group = groups.iter().find(|g| g.name_any() == spec.proxy_group).ok_or_else(|| Rejection {
                reason: c::REASON_GROUP_NOT_FOUND,
                message: format!("ProxyGroup {:?} does not exist", spec.proxy_group),
            })?;
            // A group being deleted drains its proxies first, which can take long (the store may
            // be down): associations it already serves stay published meanwhile (new Pods still
            // get their discovery file and token), only new ones are refused.
            let accepted = v
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == c::ACCEPTED && c.status == "True"));
            if group.metadata.deletion_timestamp.is_some() && !accepted {
                return Err(Rejection {
                    reason: c::REASON_GROUP_DELETING,
                    message: format!("ProxyGroup {:?} is being deleted", spec.proxy_group),
                });
            }
            if !namespace_allowed(group, &ns) {
                return Err(Rejection {
                    reason: c::REASON_NAMESPACE_NOT_ALLOWED,
                    message: format!(
                        "ProxyGroup {:?} does not list namespace {ns:?} in allowedNamespaces",
                        spec.proxy_group
                    ),
                });
            }
            let vol = (ns.clone(), spec.volume_id.clone());
            let (bucket, prefix, first) =
                store_of.entry(vol).or_insert((spec.bucket.as_str(), spec.prefix.as_str(), v.name_any())).clone();
            if bucket != spec.bucket || prefix.trim_matches('/') != spec.prefix.trim_matches('/') {
                return Err(Rejection {
                    reason: c::REASON_CONFLICTING_STORE,
                    message: format!(
                        "VolumeProxyGroup {first:?} already places volume {:?} at bucket {bucket:?} prefix {prefix:?}; all associations of a volume must agree",
                        spec.volume_id
                    ),
                });
            }
            let shares = group.spec.allow_store_sharing;
            if let Some((_, o_prefix, owner, _)) = places.iter().find(|(b, p, owner, owner_shares)| {
                *owner != ns && *b == spec.bucket && prefixes_overlap(p, &spec.prefix) && !(shares && *owner_shares)
            }) {
                return Err(Rejection {
                    reason: c::REASON_STORE_IN_USE,
                    message: format!(
                        "bucket {:?} prefix {o_prefix:?} is already attached by namespace {owner:?}; a namespace can use another's data only when every ProxyGroup involved sets allowStoreSharing",
                        spec.bucket
                    ),
                });
            }
            // One volume id on one group is one place in the store; namespaces may share it
            // (each with its own token) only when they agree on that place.
            let (owner, o_bucket, o_prefix) = owner_of
                .entry((spec.proxy_group.clone(), spec.volume_id.clone()))
                .or_insert((ns.clone(), spec.bucket.clone(), spec.prefix.trim_matches('/').to_owned()))
                .clone();
            if owner != ns && (o_bucket != spec.bucket || o_prefix != spec.prefix.trim_matches('/')) {
                return Err(Rejection {
                    reason: c::REASON_VOLUME_ID_IN_USE,
                    message: format!(
                        "volume {:?} of ProxyGroup {:?} is already used by namespace {owner:?} at bucket {o_bucket:?} prefix {o_prefix:?}; use another volumeID",
                        spec.volume_id, spec.proxy_group
                    ),
                });
            }
            places.push((
                spec.bucket.clone(),
                spec.prefix.trim_matches('/').to_owned(),
                ns.clone(),
                group.spec.allow_store_sharing,
            ));
            Ok(())
        })();
        out.insert(key(v), decision);
    }
    out
}

/// The bearer token of a volume in a namespace: HMAC-SHA256 of `namespace/volumeID` under the
/// operator's key. Deterministic, so the operator never needs to read workload Secrets back.
pub fn volume_token(key: &[u8], namespace: &str, volume_id: &str) -> String {
    hex::encode(hmac_sha256(key, format!("{namespace}/{volume_id}").as_bytes()))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The volumes file of one group: every accepted volume attached to it.
pub fn volumes_file(
    group: &str,
    vpgs: &[VolumeProxyGroup],
    decisions: &BTreeMap<VpgKey, Result<(), Rejection>>,
    token_key: &[u8],
) -> VolumesFile {
    let mut by_id: BTreeMap<String, VolumeConfig> = BTreeMap::new();
    let mut sorted: Vec<&VolumeProxyGroup> = vpgs.iter().collect();
    sorted.sort_by_key(|v| age(v));
    for v in sorted {
        if v.spec.proxy_group != group || !matches!(decisions.get(&key(v)), Some(Ok(()))) {
            continue;
        }
        let Ok(id) = VolumeId::parse(&v.spec.volume_id) else {
            continue;
        };
        let ns = v.namespace().unwrap_or_default();
        // Proxies get digests of the tokens, one per namespace, never the tokens themselves.
        let digest = VolumeConfig::token_digest(&volume_token(token_key, &ns, &v.spec.volume_id));
        let entry = by_id.entry(v.spec.volume_id.clone()).or_insert_with(|| VolumeConfig {
            id,
            bucket: v.spec.bucket.clone(),
            prefix: v.spec.prefix.trim_matches('/').to_owned(),
            token: String::new(),
            token_sha256: Vec::new(),
            metadata_ttl_ms: Some(v.spec.metadata_ttl_ms()),
        });
        if !entry.token_sha256.contains(&digest) {
            entry.token_sha256.push(digest);
        }
    }
    for v in by_id.values_mut() {
        v.token_sha256.sort();
    }
    VolumesFile { volumes: by_id.into_values().collect() }
}

/// The discovery document of `(namespace, volumeID)`, or `None` when no association of it is
/// accepted (then nothing is published).
pub fn discovery(
    namespace: &str,
    volume_id: &str,
    vpgs: &[VolumeProxyGroup],
    groups: &[ProxyGroup],
    decisions: &BTreeMap<VpgKey, Result<(), Rejection>>,
) -> Option<DiscoveryDocument> {
    let mut accepted: Vec<&VolumeProxyGroup> = vpgs
        .iter()
        .filter(|v| v.namespace().as_deref() == Some(namespace) && v.spec.volume_id == volume_id)
        .filter(|v| matches!(decisions.get(&key(v)), Some(Ok(()))))
        .collect();
    accepted.sort_by_key(|v| age(v));
    let first = accepted.first()?;
    let mut doc_groups: BTreeMap<String, DiscoveryGroup> = BTreeMap::new();
    let mut store = StoreLocation {
        bucket: first.spec.bucket.clone(),
        prefix: first.spec.prefix.trim_matches('/').to_owned(),
        endpoint: None,
        region: None,
        provider: None,
        path_style: false,
    };
    let mut named: Vec<&ProxyGroup> =
        accepted.iter().filter_map(|v| groups.iter().find(|g| g.name_any() == v.spec.proxy_group)).collect();
    named.sort_by_key(|g| g.name_any());
    for g in named {
        if store.endpoint.is_none() && store.region.is_none() {
            store.endpoint = g.spec.object_store.endpoint.clone().filter(|e| !e.starts_with("file://"));
            store.region = g.spec.object_store.region.clone();
            store.path_style = g.spec.object_store.path_style;
            store.provider = match g.spec.object_store.provider {
                ObjectStoreProvider::Gcs => Some("gcs".into()),
                ObjectStoreProvider::Azure => Some("azure".into()),
                _ => None,
            };
        }
        let status = g.status.clone().unwrap_or_default();
        let mut endpoints: Vec<DiscoveryEndpoint> = status
            .endpoints
            .iter()
            .map(|e| DiscoveryEndpoint {
                address: e.address.clone(),
                node: Some(e.node.clone()),
                weight: e.weight,
                draining: e.draining,
            })
            .collect();
        endpoints.sort();
        doc_groups.insert(
            g.name_any(),
            DiscoveryGroup {
                name: g.name_any(),
                provider_code: g.spec.provider_code.clone(),
                region_code: g.spec.region_code.clone(),
                scheme: if g.spec.tls.enabled { "https" } else { "http" }.into(),
                ca_bundle: if g.spec.tls.enabled { status.ca_bundle.clone() } else { None },
                server_name: if g.spec.tls.enabled { status.server_name.clone() } else { None },
                endpoints,
            },
        );
    }
    Some(DiscoveryDocument {
        volume_id: VolumeId::parse(volume_id).ok()?,
        store,
        groups: doc_groups.into_values().collect(),
        // The oldest association's settings, as for the store location.
        block_size: first.spec.block_size_bytes(),
        metadata_ttl_ms: first.spec.metadata_ttl_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProxyEndpoint, ProxyGroupStatus, VolumeProxyGroupSpec};
    use crate::proxygroup::build::tests::{group, spec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn vpg(ns: &str, name: &str, vol: &str, g: &str, bucket: &str, t: i64) -> VolumeProxyGroup {
        let mut v = VolumeProxyGroup::new(
            name,
            VolumeProxyGroupSpec {
                volume_id: vol.into(),
                proxy_group: g.into(),
                bucket: bucket.into(),
                prefix: "p".into(),
                block_size: "1Mi".into(),
                metadata_ttl: "250ms".into(),
            },
        );
        v.metadata.namespace = Some(ns.into());
        v.metadata.creation_timestamp = Some(Time(Timestamp::from_second(t).unwrap()));
        v
    }

    fn pg(name: &str, region: &str, allowed: &[&str], endpoints: &[&str]) -> ProxyGroup {
        let mut s = spec();
        s.region_code = region.into();
        s.allowed_namespaces = allowed.iter().map(|a| a.to_string()).collect();
        let mut g = group(s);
        g.metadata.name = Some(name.into());
        g.status = Some(ProxyGroupStatus {
            endpoints: endpoints
                .iter()
                .map(|a| ProxyEndpoint { address: a.to_string(), node: "n".into(), weight: 7, draining: false })
                .collect(),
            ca_bundle: Some("CA".into()),
            server_name: Some("pg-svc.blockproxy-system.svc".into()),
            ..Default::default()
        });
        g
    }

    fn reason(d: &BTreeMap<VpgKey, Result<(), Rejection>>, ns: &str, name: &str) -> Option<&'static str> {
        d[&(ns.to_owned(), name.to_owned())].as_ref().err().map(|r| r.reason)
    }

    #[test]
    fn rejects_missing_group_and_forbidden_namespace() {
        let groups = [pg("eu", "eu", &["team-a"], &[])];
        let vpgs = [
            vpg("team-a", "ok", "v", "eu", "b1", 1),
            vpg("team-b", "no", "v", "eu", "b1", 1),
            vpg("team-a", "x", "w", "nope", "b1", 1),
        ];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "team-a", "ok"), None);
        assert_eq!(reason(&d, "team-b", "no"), Some(c::REASON_NAMESPACE_NOT_ALLOWED));
        assert_eq!(reason(&d, "team-a", "x"), Some(c::REASON_GROUP_NOT_FOUND));
        assert!(discovery("team-b", "v", &vpgs, &groups, &d).is_none());
    }

    #[test]
    fn a_group_being_deleted_keeps_what_it_serves_and_takes_nothing_new() {
        let mut g = pg("eu", "eu", &["*"], &[]);
        g.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
        let groups = [g];
        let mut old = vpg("t", "old", "v", "eu", "b1", 1);
        old.status = Some(crate::crd::VolumeProxyGroupStatus {
            conditions: crate::crd::conditions::merge(
                &[],
                &[crate::crd::conditions::Cond::new(c::ACCEPTED, true, c::REASON_ACCEPTED, "")],
                None,
                Timestamp::UNIX_EPOCH,
            ),
            ..Default::default()
        });
        let vpgs = [old, vpg("t", "new", "w", "eu", "b1", 2)];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "t", "old"), None);
        assert_eq!(reason(&d, "t", "new"), Some(c::REASON_GROUP_DELETING));
        assert!(discovery("t", "v", &vpgs, &groups, &d).is_some(), "the discovery document stays while it drains");
    }

    #[test]
    fn conflicting_store_rejects_the_newer_association() {
        let groups = [pg("eu", "eu", &["*"], &[]), pg("us", "us", &["*"], &[])];
        let vpgs = [vpg("t", "new", "v", "us", "other", 2), vpg("t", "old", "v", "eu", "b1", 1)];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "t", "old"), None);
        let r = d[&("t".to_owned(), "new".to_owned())].clone().unwrap_err();
        assert_eq!(r.reason, c::REASON_CONFLICTING_STORE);
        assert!(r.message.contains("\"old\""), "{}", r.message);
    }

    #[test]
    fn a_newcomer_in_the_same_second_does_not_displace_an_accepted_association() {
        let groups = [pg("eu", "eu", &["*"], &[])];
        let mut old = vpg("t", "zz", "v", "eu", "b1", 1);
        old.status = Some(crate::crd::VolumeProxyGroupStatus {
            conditions: crate::crd::conditions::merge(
                &[],
                &[crate::crd::conditions::Cond::new(c::ACCEPTED, true, c::REASON_ACCEPTED, "")],
                None,
                Timestamp::UNIX_EPOCH,
            ),
            ..Default::default()
        });
        let vpgs = [old, vpg("t", "aa", "v", "eu", "other", 1)];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "t", "zz"), None);
        assert_eq!(reason(&d, "t", "aa"), Some(c::REASON_CONFLICTING_STORE));
    }

    #[test]
    fn another_namespace_cannot_take_over_a_bucket_and_prefix() {
        let groups = [pg("eu", "eu", &["*"], &[])];
        let mut nested = vpg("c", "v", "other", "eu", "b1", 7);
        nested.spec.prefix = "p/inner".into();
        let vpgs = [
            vpg("a", "v", "vol", "eu", "b1", 1),
            vpg("b", "v", "vol", "eu", "b1", 5),
            nested,
            vpg("a", "w", "vol2", "eu", "b1", 8),
            vpg("d", "v", "vol3", "eu", "b2", 9),
        ];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "a", "v"), None);
        assert_eq!(reason(&d, "b", "v"), Some(c::REASON_STORE_IN_USE), "same place, other namespace");
        assert_eq!(reason(&d, "c", "v"), Some(c::REASON_STORE_IN_USE), "a prefix inside another's");
        assert_eq!(reason(&d, "a", "w"), None, "a namespace may reuse its own place");
        assert_eq!(reason(&d, "d", "v"), None, "another bucket");
        assert!(d[&("b".to_owned(), "v".to_owned())].as_ref().unwrap_err().message.contains("\"a\""));
        assert!(prefixes_overlap("", "x") && prefixes_overlap("x/y/", "x") && !prefixes_overlap("x", "xy"));
    }

    #[test]
    fn namespaces_share_a_volume_id_of_a_group_only_at_the_same_place() {
        let mut sharing = pg("eu", "eu", &["*"], &[]);
        sharing.spec.allow_store_sharing = true;
        let groups = [sharing];
        let vpgs = [
            vpg("b", "v", "vol", "eu", "b1", 5),
            vpg("a", "v", "vol", "eu", "b1", 1),
            vpg("c", "v", "vol", "eu", "elsewhere", 6),
        ];
        let d = decide(&vpgs, &groups);
        assert_eq!(reason(&d, "a", "v"), None);
        assert_eq!(reason(&d, "b", "v"), None);
        assert_eq!(reason(&d, "c", "v"), Some(c::REASON_VOLUME_ID_IN_USE));
        let f = volumes_file("eu", &vpgs, &d, b"k");
        assert_eq!(f.volumes.len(), 1);
        let v = &f.volumes[0];
        assert!(v.token.is_empty(), "proxies never hold a token");
        let mut want = vec![
            VolumeConfig::token_digest(&volume_token(b"k", "a", "vol")),
            VolumeConfig::token_digest(&volume_token(b"k", "b", "vol")),
        ];
        want.sort();
        assert_eq!(v.token_sha256, want);
        VolumesFile::parse(&serde_yaml::to_string(&f).unwrap()).unwrap();
    }

    #[test]
    fn two_groups_of_one_volume_are_both_listed() {
        let groups =
            [pg("us", "us", &["*"], &["10.1.0.1:8443"]), pg("eu", "eu", &["*"], &["10.0.0.2:8443", "10.0.0.1:8443"])];
        let vpgs = [vpg("t", "a", "v", "eu", "b1", 1), vpg("t", "b", "v", "us", "b1", 2)];
        let d = decide(&vpgs, &groups);
        let doc = discovery("t", "v", &vpgs, &groups, &d).unwrap();
        assert_eq!(doc.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["eu", "us"]);
        assert_eq!(doc.groups[0].endpoints[0].address, "10.0.0.1:8443");
        assert_eq!(doc.groups[0].endpoints[0].weight, 7, "the weight the group's status gives");
        assert_eq!(doc.groups[0].ca_bundle.as_deref(), Some("CA"));
        assert_eq!(doc.groups[0].server_name.as_deref(), Some("pg-svc.blockproxy-system.svc"));
        assert_eq!(doc.groups[0].scheme, "https");
        assert_eq!(doc.store.bucket, "b1");
        assert_eq!(doc.store.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(doc.store.provider, None, "S3 needs no provider");
        assert_eq!(volumes_file("us", &vpgs, &d, b"k").volumes.len(), 1);
    }

    #[test]
    fn a_draining_proxy_is_published_as_draining() {
        let mut groups = [pg("eu", "eu", &["*"], &["10.0.0.1:8443", "10.0.0.2:8443"])];
        groups[0].status.as_mut().unwrap().endpoints[1].draining = true;
        let vpgs = [vpg("t", "a", "v", "eu", "b1", 1)];
        let d = decide(&vpgs, &groups);
        let doc = discovery("t", "v", &vpgs, &groups, &d).unwrap();
        let listed: Vec<(&str, bool)> =
            doc.groups[0].endpoints.iter().map(|e| (e.address.as_str(), e.draining)).collect();
        assert_eq!(listed, [("10.0.0.1:8443", false), ("10.0.0.2:8443", true)]);
    }

    #[test]
    fn the_store_provider_reaches_the_sidecar() {
        let mut groups = [pg("eu", "eu", &["*"], &["10.0.0.1:8443"])];
        groups[0].spec.object_store =
            serde_json::from_value(serde_json::json!({"provider": "azure", "credentialsSecret": {"name": "c"}}))
                .unwrap();
        let vpgs = [vpg("t", "a", "v", "eu", "b1", 1)];
        let d = decide(&vpgs, &groups);
        let doc = discovery("t", "v", &vpgs, &groups, &d).unwrap();
        assert_eq!((doc.store.provider.as_deref(), doc.store.endpoint.as_deref()), (Some("azure"), None));
    }

    #[test]
    fn path_style_reaches_the_sidecar() {
        let mut groups = [pg("eu", "eu", &["*"], &["10.0.0.1:8443"])];
        groups[0].spec.object_store.path_style = false;
        let vpgs = [vpg("t", "a", "v", "eu", "b1", 1)];
        let d = decide(&vpgs, &groups);
        assert!(!discovery("t", "v", &vpgs, &groups, &d).unwrap().store.path_style);
        groups[0].spec.object_store.path_style = true;
        assert!(discovery("t", "v", &vpgs, &groups, &d).unwrap().store.path_style);
    }

    #[test]
    fn volume_settings_reach_the_sidecar_and_the_proxies() {
        let groups = [pg("eu", "eu", &["*"], &["10.0.0.1:8443"])];
        let mut newer = vpg("t2", "b", "v", "eu", "b1", 2);
        newer.spec.metadata_ttl = "2s".into();
        let vpgs = [vpg("t", "a", "v", "eu", "b1", 1), newer];
        let d = decide(&vpgs, &groups);
        let doc = discovery("t", "v", &vpgs, &groups, &d).unwrap();
        assert_eq!((doc.block_size, doc.metadata_ttl_ms), (1 << 20, 250));
        // One volume on one group from two namespaces: the oldest association's TTL.
        let f = volumes_file("eu", &vpgs, &d, b"k");
        assert_eq!(f.volumes[0].metadata_ttl_ms, Some(250));
    }

    #[test]
    fn tokens_differ_per_namespace_volume_and_key() {
        let t = volume_token(b"key", "ns", "v");
        assert_eq!(t.len(), 64);
        assert_ne!(t, volume_token(b"key", "ns2", "v"));
        assert_ne!(t, volume_token(b"key", "ns", "v2"));
        assert_ne!(t, volume_token(b"key2", "ns", "v"));
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
