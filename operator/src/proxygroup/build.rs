//! The pure part of reconciling a ProxyGroup: from the group, the cluster's nodes and PVs and the
//! objects the group owns, decide what should exist, what to delete, what to drain, and the
//! status. No API calls here; `controller` executes the plan.

use super::args::{self, proxy_args};
use crate::apply::Desired;
use crate::crd::conditions::{self as c, Cond};
use crate::crd::{ObjectStoreProvider, ProxyEndpoint, ProxyGroup, ProxyGroupSpec, ProxyStatus};
use crate::meta::{self, SPEC_HASH_ANNOTATION};
use blockproxy_protocol::{HEALTHZ_PATH, READYZ_PATH, VolumesFile};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Node, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Secret material the operator generated once and keeps (read back before each build).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything `plan` looks at.
pub struct Inputs<'a> {
    pub group: &'a ProxyGroup,
    /// Namespace of the proxies (the operator's).
    pub namespace: &'a str,
    /// Proxy image when the group does not set one.
    pub default_image: &'a str,
    pub nodes: &'a [Node],
    pub pvs: &'a [PersistentVolume],
    /// Pods and PVCs owned by this group.
    pub pods: &'a [Pod],
    pub pvcs: &'a [PersistentVolumeClaim],
    /// The volumes this group serves (from the accepted VolumeProxyGroups).
    pub volumes: &'a VolumesFile,
    pub admin_token: &'a str,
    /// Operator-issued TLS material; `None` when TLS is off or the user brings a Secret.
    pub tls: Option<&'a TlsMaterial>,
    /// The group is being deleted: drain everything, create nothing.
    pub deleting: bool,
}

/// A proxy to drain before its Pod and PVC are deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainTarget {
    pub node: String,
    pub pod: Option<String>,
    pub pvc: Option<String>,
    /// `ip:port` when the Pod has an IP and is running.
    pub address: Option<String>,
    /// The proxy never ran: its claim is not bound and its Pod (if any) is Pending. There is
    /// nothing to drain (what its PV may hold from an earlier proxy stays there: PVs are kept).
    pub never_started: bool,
}

/// A kept local PV that an earlier claim of this group on its node left `Released`: the new
/// claim of the same name (`pvc_uid`) takes it over, so its cache and unflushed writes are used
/// again instead of the claim staying Pending ("already bound to a different claim").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebind {
    pub pv: String,
    pub pvc: String,
    pub pvc_uid: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// The proxy Pod the event is about (its `related` object): events that differ only in
    /// their Pod are never folded into one series that keeps the first one's note.
    pub pod: Option<String>,
}

/// What to do. Pods and PVCs that are neither desired nor draining are pruned along with every
/// other owned object not listed in `keep`.
#[derive(Debug, Default)]
pub struct Plan {
    pub apply: Vec<Desired>,
    /// `(kind, name)` of every owned object to keep: desired, existing-and-current, draining.
    pub keep: BTreeSet<(&'static str, String)>,
    /// Pods to delete now (dead, or the one being rolled), with the reason.
    pub delete_pods: Vec<(String, &'static str)>,
    pub drain: Vec<DrainTarget>,
    /// Released PVs of this group to bind to the group's new claims.
    pub rebind: Vec<Rebind>,
    pub events: Vec<PlannedEvent>,
    /// Nodes chosen for a proxy, in pick order.
    pub selected: Vec<Selected>,
    pub spec_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub node: String,
    pub pv: String,
}

pub const KIND_POD: &str = "Pod";
pub const KIND_PVC: &str = "PersistentVolumeClaim";
pub const KIND_SECRET: &str = "Secret";
pub const KIND_SERVICE: &str = "Service";

/// The node a local PV is pinned to: exactly one required node-affinity term naming one node by
/// `kubernetes.io/hostname` (matched against node labels, then names) or by `metadata.name`.
pub fn pv_node(pv: &PersistentVolume, nodes: &[Node]) -> Option<String> {
    let spec = pv.spec.as_ref()?;
    spec.local.as_ref()?;
    let terms = &spec.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    let single = |r: &NodeSelectorRequirement| match (r.operator.as_str(), r.values.as_deref()) {
        ("In", Some([v])) => Some(v.clone()),
        _ => None,
    };
    match (exprs, fields) {
        ([e], []) if e.key == HOSTNAME_LABEL => {
            let host = single(e)?;
            nodes
                .iter()
                .find(|n| n.labels().get(HOSTNAME_LABEL) == Some(&host))
                .or_else(|| nodes.iter().find(|n| n.name_any() == host))
                .map(|n| n.name_any())
        }
        ([], [f]) if f.key == "metadata.name" => single(f),
        _ => None,
    }
}

fn node_matches(node: &Node, selector: &BTreeMap<String, String>) -> bool {
    node.metadata.deletion_timestamp.is_none() && selector.iter().all(|(k, v)| node.labels().get(k) == Some(v))
}

/// Picks the nodes (and their PV) that get a proxy.
pub fn select_nodes(inp: &Inputs<'_>) -> Vec<Selected> {
    let group = inp.group.name_any();
    let spec = &inp.group.spec;
    let mut per_node: BTreeMap<String, Vec<&PersistentVolume>> = BTreeMap::new();
    for (node_name, pv) in placeable_pvs(inp) {
        let ours = meta::pvc_name(&group, &node_name);
        let available = match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            Some(cr) => cr.namespace.as_deref() == Some(inp.namespace) && cr.name.as_deref() == Some(ours.as_str()),
            None => matches!(
                pv.status.as_ref().and_then(|s| s.phase.as_deref()),
                None | Some("Available") | Some("Pending")
            ),
        };
        if available {
            per_node.entry(node_name).or_default().push(pv);
        }
    }
    let claimed_by_us = |node: &str, pv: &PersistentVolume| {
        let pvc = meta::pvc_name(&group, node);
        inp.pvcs.iter().any(|c| {
            c.name_any() == pvc
                && c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv.name_any().as_str())
        }) || pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some()
    };
    let mut picks: Vec<(bool, Selected)> = per_node
        .into_iter()
        .filter_map(|(node, mut pvs)| {
            pvs.sort_by_key(|pv| (!claimed_by_us(&node, pv), pv.name_any()));
            let pv = pvs.first()?;
            let running =
                claimed_by_us(&node, pv) || inp.pods.iter().any(|p| p.labels().get(meta::NODE_LABEL) == Some(&node));
            Some((running, Selected { node, pv: pv.name_any() }))
        })
        .collect();
    // Nodes that already run a proxy of this group first (so a cap never moves a healthy proxy),
    // then by node name.
    picks.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
    let cap = spec.placement.max_proxies.map(|m| m.max(0) as usize).unwrap_or(usize::MAX);
    picks.into_iter().take(cap).map(|(_, s)| s).collect()
}

/// The PVs of the group's StorageClass on nodes its selector matches, with their node, whoever
/// holds them.
fn placeable_pvs<'a>(inp: &Inputs<'a>) -> Vec<(String, &'a PersistentVolume)> {
    let spec = &inp.group.spec;
    inp.pvs
        .iter()
        .filter(|pv| {
            pv.metadata.deletion_timestamp.is_none()
                && pv.spec.as_ref().and_then(|s| s.storage_class_name.as_deref())
                    == Some(spec.placement.storage_class_name.as_str())
        })
        .filter_map(|pv| {
            let node_name = pv_node(pv, inp.nodes)?;
            let node = inp.nodes.iter().find(|n| n.name_any() == node_name)?;
            node_matches(node, &spec.placement.node_selector).then_some((node_name, pv))
        })
        .collect()
}

/// Placeable PVs that another claim (another group's, or anyone's) left `Released`: never taken,
/// since their cache may hold someone else's data, but named in the Ready condition with the
/// administrator's step that frees them.
fn released_by_other_claims(inp: &Inputs<'_>) -> Vec<String> {
    let group = inp.group.name_any();
    placeable_pvs(inp)
        .into_iter()
        .filter(|(_, pv)| pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released"))
        .filter(|(node, pv)| {
            let ours = meta::pvc_name(&group, node);
            pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|cr| {
                cr.namespace.as_deref() != Some(inp.namespace) || cr.name.as_deref() != Some(ours.as_str())
            })
        })
        .map(|(_, pv)| pv.name_any())
        .collect()
}

fn owner(group: &ProxyGroup) -> Vec<OwnerReference> {
    group.controller_owner_ref(&()).into_iter().collect()
}

fn meta_for(inp: &Inputs<'_>, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(inp.namespace.to_owned()),
        labels: Some(meta::group_labels(&inp.group.name_any(), component)),
        owner_references: Some(owner(inp.group)),
        ..Default::default()
    }
}

fn secret(inp: &Inputs<'_>, name: String, type_: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta_for(inp, name, "proxy"),
        type_: Some(type_.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource { secret_name: Some(secret), default_mode: Some(0o440), ..Default::default() }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), read_only: Some(read_only), ..Default::default() }
}

fn probe(path: &str, port: i32, https: bool, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The proxy Pod's spec for one node (without the node pin, which does not change the hash).
pub fn pod_spec(spec: &ProxyGroupSpec, group: &str, default_image: &str) -> PodSpec {
    let mut env = Vec::new();
    // Credentials only ever by reference to the Secret: environment variables for keys, a mounted
    // file for a GCS service-account key (below).
    let creds = spec.object_store.credentials_secret.as_ref();
    let from_secret: Vec<(&str, &String, bool)> = match (spec.object_store.provider, creds) {
        (_, None) | (ObjectStoreProvider::File | ObjectStoreProvider::Gcs, _) => vec![],
        (ObjectStoreProvider::S3 | ObjectStoreProvider::S3Compatible, Some(c)) => vec![
            ("AWS_ACCESS_KEY_ID", &c.access_key_id_key, false),
            ("AWS_SECRET_ACCESS_KEY", &c.secret_access_key_key, false),
        ],
        // The Secret holds the key or a SAS token (the controller checks that it holds one).
        (ObjectStoreProvider::Azure, Some(c)) => vec![
            ("AZURE_STORAGE_ACCOUNT", &c.account_name_key, false),
            ("AZURE_STORAGE_KEY", &c.account_key_key, true),
            ("AZURE_STORAGE_SAS_TOKEN", &c.sas_token_key, true),
        ],
    };
    if let Some(c) = creds {
        for (var, key, optional) in from_secret {
            env.push(EnvVar {
                name: var.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: c.name.clone(),
                        key: key.clone(),
                        optional: Some(optional),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let mut volumes = vec![
        Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: String::new(), // set per node in `pod`
                read_only: None,
            }),
            ..Default::default()
        },
        secret_volume("volumes", meta::volumes_secret_name(group)),
        secret_volume("admin", meta::admin_secret_name(group)),
    ];
    let mut mounts = vec![
        mount("cache", args::CACHE_DIR, false),
        mount("volumes", args::VOLUMES_DIR, true),
        mount("admin", args::ADMIN_DIR, true),
    ];
    if let (ObjectStoreProvider::Gcs, Some(c)) = (spec.object_store.provider, creds) {
        volumes.push(secret_volume("store-credentials", c.name.clone()));
        mounts.push(mount("store-credentials", args::STORE_CREDENTIALS_DIR, true));
    }
    if spec.tls.enabled {
        let secret = spec.tls.certificate_secret.clone().unwrap_or_else(|| meta::tls_secret_name(group));
        volumes.push(secret_volume("tls", secret));
        mounts.push(mount("tls", args::TLS_DIR, true));
    }
    PodSpec {
        containers: vec![Container {
            name: "proxy".into(),
            image: Some(spec.image.clone().unwrap_or_else(|| default_image.to_owned())),
            image_pull_policy: spec.image_pull_policy.clone(),
            command: Some(vec![args::PROXY_COMMAND.into()]),
            args: Some(proxy_args(spec)),
            env: (!env.is_empty()).then_some(env),
            ports: Some(vec![ContainerPort {
                name: Some("proxy".into()),
                container_port: spec.port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            readiness_probe: Some(probe(READYZ_PATH, spec.port, spec.tls.enabled, 5)),
            liveness_probe: Some(probe(HEALTHZ_PATH, spec.port, spec.tls.enabled, 10)),
            resources: spec.resources.clone(),
            volume_mounts: Some(mounts),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volumes: Some(volumes),
        tolerations: (!spec.placement.tolerations.is_empty()).then(|| spec.placement.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        // The proxy flushes its writeback queue on SIGTERM; give it time.
        termination_grace_period_seconds: Some(args::SHUTDOWN_GRACE_SECONDS + 10),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..Default::default()
    }
}

/// Hash of everything in the Pod that should roll the proxies when it changes.
pub fn spec_hash(spec: &ProxyGroupSpec, group: &str, default_image: &str) -> String {
    let json = serde_json::to_vec(&pod_spec(spec, group, default_image)).unwrap_or_default();
    meta::short_hash(&json, 16)
}

fn pod(inp: &Inputs<'_>, sel: &Selected, hash: &str) -> Pod {
    let group = inp.group.name_any();
    let mut spec = pod_spec(&inp.group.spec, &group, inp.default_image);
    if let Some(pvc) =
        spec.volumes.as_mut().and_then(|v| v.first_mut()).and_then(|v| v.persistent_volume_claim.as_mut())
    {
        pvc.claim_name = meta::pvc_name(&group, &sel.node);
    }
    // DaemonSet-style pin: required node affinity on the node's name, so the scheduler still
    // checks taints and resources.
    spec.affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![sel.node.clone()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // A stable DNS name below the headless Service: the discovery document lists it, so a
    // replaced Pod (new IP) needs no new document in the sidecars (ADR 0009).
    spec.hostname = Some(meta::pod_hostname(&group, &sel.node));
    spec.subdomain = Some(meta::service_name(&group));
    let mut metadata = meta_for(inp, meta::pod_name(&group, &sel.node), "proxy");
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(meta::NODE_LABEL.into(), sel.node.clone());
    }
    metadata.annotations = Some(BTreeMap::from([(SPEC_HASH_ANNOTATION.to_owned(), hash.to_owned())]));
    Pod { metadata, spec: Some(spec), status: None }
}

fn pvc(inp: &Inputs<'_>, sel: &Selected) -> PersistentVolumeClaim {
    let group = inp.group.name_any();
    let pv = inp.pvs.iter().find(|p| p.name_any() == sel.pv);
    let pv_spec = pv.and_then(|p| p.spec.as_ref());
    let storage = pv_spec.and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")).cloned();
    let mut metadata = meta_for(inp, meta::pvc_name(&group, &sel.node), "cache");
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(meta::NODE_LABEL.into(), sel.node.clone());
    }
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(inp.group.spec.placement.storage_class_name.clone()),
            volume_name: Some(sel.pv.clone()),
            volume_mode: pv_spec.and_then(|s| s.volume_mode.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: storage.map(|s| BTreeMap::from([("storage".to_owned(), s)])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn service(inp: &Inputs<'_>) -> Service {
    let group = inp.group.name_any();
    let mut selector = BTreeMap::new();
    selector.insert(meta::GROUP_LABEL.to_owned(), group.clone());
    selector.insert(meta::COMPONENT_LABEL.to_owned(), "proxy".to_owned());
    Service {
        metadata: meta_for(inp, meta::service_name(&group), "proxy"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("proxy".into()),
                port: inp.group.spec.port,
                target_port: Some(IntOrString::String("proxy".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_dead(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed") | Some("Succeeded"))
}

/// `ip:port` of a running Pod.
pub fn pod_address(pod: &Pod, port: i32) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() || pod_dead(pod) {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    Some(if ip.contains(':') { format!("[{ip}]:{}", port) } else { format!("{ip}:{port}") })
}

/// `<hostname>.<subdomain>.<namespace>.svc:port` of a running Pod that has a hostname and
/// subdomain (its headless Service's DNS name; it resolves while the Pod is Ready), else its
/// `ip:port`. The name is relative to the cluster domain: Pods resolve it through their search
/// path, whatever the cluster domain is.
pub fn pod_stable_address(pod: &Pod, port: i32) -> Option<String> {
    let ip_address = pod_address(pod, port)?;
    let spec = pod.spec.as_ref();
    let hostname = spec.and_then(|s| s.hostname.as_deref()).filter(|h| !h.is_empty());
    let subdomain = spec.and_then(|s| s.subdomain.as_deref()).filter(|s| !s.is_empty());
    Some(match (hostname, subdomain, pod.metadata.namespace.as_deref()) {
        (Some(h), Some(s), Some(ns)) => format!("{h}.{s}.{ns}.svc:{port}"),
        _ => ip_address,
    })
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.annotations().get(SPEC_HASH_ANNOTATION).map(String::as_str)
}

fn node_of(labels: &BTreeMap<String, String>) -> Option<&String> {
    labels.get(meta::NODE_LABEL)
}

/// Decides everything for one reconcile.
pub fn plan(inp: &Inputs<'_>) -> Plan {
    let group = inp.group.name_any();
    let spec = &inp.group.spec;
    let hash = spec_hash(spec, &group, inp.default_image);
    let mut plan = Plan { spec_hash: hash.clone(), ..Default::default() };
    let selected = if inp.deleting { Vec::new() } else { select_nodes(inp) };
    let selected_nodes: BTreeSet<&str> = selected.iter().map(|s| s.node.as_str()).collect();

    let keep = |plan: &mut Plan, kind: &'static str, name: String| {
        plan.keep.insert((kind, name));
    };

    if !inp.deleting {
        // Group-wide objects.
        let volumes_yaml = serde_yaml::to_string(inp.volumes).unwrap_or_default();
        let mut desired = vec![
            Desired::Secret(secret(
                inp,
                meta::volumes_secret_name(&group),
                "Opaque",
                BTreeMap::from([("volumes.yaml".to_owned(), volumes_yaml)]),
            )),
            Desired::Secret(secret(
                inp,
                meta::admin_secret_name(&group),
                "Opaque",
                BTreeMap::from([("token".to_owned(), inp.admin_token.to_owned())]),
            )),
            Desired::Service(service(inp)),
        ];
        if let (true, None, Some(tls)) = (spec.tls.enabled, &spec.tls.certificate_secret, inp.tls) {
            desired.push(Desired::Secret(secret(
                inp,
                meta::tls_secret_name(&group),
                "kubernetes.io/tls",
                BTreeMap::from([
                    ("ca.crt".to_owned(), tls.ca_pem.clone()),
                    ("tls.crt".to_owned(), tls.cert_pem.clone()),
                    ("tls.key".to_owned(), tls.key_pem.clone()),
                ]),
            )));
        }
        for d in &desired {
            keep(&mut plan, d.kind(), d.name());
        }
        plan.apply.extend(desired);
    }

    // Per selected node: PVC always applied (idempotent), Pod created when missing, recreated
    // when dead, rolled when outdated.
    let pods_by_node: BTreeMap<&String, &Pod> =
        inp.pods.iter().filter_map(|p| node_of(p.labels()).map(|n| (n, p))).collect();
    let mut all_current_ready = true;
    let mut outdated: Vec<&Pod> = Vec::new();
    for sel in &selected {
        let claim = pvc(inp, sel);
        if let Some(r) = rebind(inp, sel, &claim.name_any()) {
            plan.events.push(PlannedEvent {
                warning: false,
                reason: "VolumeReused",
                note: format!(
                    "PV {} on node {} was left Released by an earlier claim {}; binding it to the new claim (its cache and any unflushed writes are used again)",
                    r.pv, sel.node, r.pvc
                ),
                pod: Some(meta::pod_name(&group, &sel.node)),
            });
            plan.rebind.push(r);
        }
        keep(&mut plan, KIND_PVC, claim.name_any());
        plan.apply.push(Desired::Pvc(claim));
        let name = meta::pod_name(&group, &sel.node);
        keep(&mut plan, KIND_POD, name.clone());
        match pods_by_node.get(&sel.node) {
            None => {
                plan.apply.push(Desired::Pod(pod(inp, sel, &hash)));
                plan.events.push(PlannedEvent {
                    warning: false,
                    reason: "ProxyCreated",
                    note: format!("Creating proxy {name} on node {} with cache on PV {}", sel.node, sel.pv),
                    pod: Some(name.clone()),
                });
                all_current_ready = false;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => all_current_ready = false,
            Some(p) if pod_dead(p) => {
                plan.delete_pods.push((p.name_any(), "ProxyRecreated"));
                plan.events.push(PlannedEvent {
                    warning: true,
                    reason: "ProxyRecreated",
                    note: format!(
                        "Proxy {} on node {} has stopped; recreating it with the same cache PVC",
                        p.name_any(),
                        sel.node
                    ),
                    pod: Some(p.name_any()),
                });
                all_current_ready = false;
            }
            Some(p) => {
                if pod_hash(p) != Some(hash.as_str()) {
                    outdated.push(p);
                }
                if !pod_ready(p) {
                    all_current_ready = false;
                }
            }
        }
    }
    // Rolling update: one outdated Pod at a time, only while every other proxy is ready.
    if all_current_ready && let Some(p) = outdated.first() {
        plan.delete_pods.push((p.name_any(), "RollingUpdate"));
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "RollingUpdate",
            note: format!("Restarting proxy {} with the new spec ({} outdated)", p.name_any(), outdated.len()),
            pod: Some(p.name_any()),
        });
    }

    // Proxies on nodes no longer selected: drain, then delete Pod and PVC (never the PV).
    // Objects already being deleted (after a finished drain) are not leaving any more.
    let pods: Vec<&Pod> = inp.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let pvcs: Vec<&PersistentVolumeClaim> =
        inp.pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).collect();
    let mut leaving: BTreeSet<String> = BTreeSet::new();
    for labels in pods.iter().map(|p| p.labels()).chain(pvcs.iter().map(|c| c.labels())) {
        if let Some(n) = node_of(labels).filter(|n| !selected_nodes.contains(n.as_str())) {
            leaving.insert(n.clone());
        }
    }
    for node in leaving {
        let pod = pods.iter().find(|p| node_of(p.labels()) == Some(&node));
        let pvc = pvcs.iter().find(|c| node_of(c.labels()) == Some(&node));
        if let Some(p) = pod {
            keep(&mut plan, KIND_POD, p.name_any());
        }
        if let Some(c) = pvc {
            keep(&mut plan, KIND_PVC, c.name_any());
        }
        let pod_pending =
            pod.is_none_or(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|ph| ph == "Pending"));
        let claim_bound = pvc.is_some_and(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"));
        let address = pod.and_then(|p| pod_address(p, spec.port));
        // A Pod that has an address may have run and taken writes: only one that never got one
        // (and whose claim never bound) can go without a drain.
        let never_started = pod_pending && !claim_bound && address.is_none();
        plan.drain.push(DrainTarget {
            node,
            pod: pod.map(|p| p.name_any()),
            pvc: pvc.map(|c| c.name_any()),
            address,
            never_started,
        });
    }
    plan.selected = selected;
    plan
}

/// The rebind of `sel.pv` to the claim `claim`, when an earlier claim of that name (same
/// namespace and name, another uid: this group's, on this node) left it Released and the new
/// claim exists. A Released PV of any other claim is never touched (`select_nodes` skips it).
fn rebind(inp: &Inputs<'_>, sel: &Selected, claim: &str) -> Option<Rebind> {
    let pv = inp.pvs.iter().find(|p| p.name_any() == sel.pv)?;
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
        return None;
    }
    let cr = pv.spec.as_ref()?.claim_ref.as_ref()?;
    if cr.namespace.as_deref() != Some(inp.namespace) || cr.name.as_deref() != Some(claim) {
        return None;
    }
    let current = inp.pvcs.iter().find(|c| c.name_any() == claim && c.metadata.deletion_timestamp.is_none())?;
    let uid = current.metadata.uid.clone()?;
    (cr.uid.as_deref() != Some(uid.as_str())).then(|| Rebind {
        pv: sel.pv.clone(),
        pvc: claim.to_owned(),
        pvc_uid: uid,
    })
}

/// Drain progress of one leaving proxy, as observed by the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainState {
    /// Drain requested; `dirty_bytes` still to flush; `flush_error`: why flushing fails, if it
    /// does (the proxy's newest flush error since its last successful flush).
    InProgress { dirty_bytes: u64, flush_error: Option<String> },
    /// Nothing dirty is left; Pod and PVC can go.
    Done,
    /// The proxy cannot be reached (no running Pod, or the call failed).
    Blocked { why: String },
}

/// A serving proxy's cache, as it reported it (`GET /v1/admin/drain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheFigures {
    pub cache_bytes: u64,
    pub dirty_bytes: u64,
}

/// Puts each reporting proxy's figures (by node) into its entry, and their sums into the
/// group's. A draining proxy keeps the dirty bytes its drain reported.
pub fn add_cache_figures(st: &mut crate::crd::ProxyGroupStatus, figures: &BTreeMap<String, CacheFigures>) {
    for p in &mut st.proxies {
        if let Some(f) = figures.get(&p.node) {
            p.cache_bytes = Some(f.cache_bytes);
            p.dirty_bytes = Some(f.dirty_bytes);
        }
    }
    let sum = |f: fn(&ProxyStatus) -> Option<u64>| {
        let known: Vec<u64> = st.proxies.iter().filter_map(f).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    };
    st.cache_bytes = sum(|p| p.cache_bytes);
    st.dirty_bytes = sum(|p| p.dirty_bytes);
}

/// The group's status: proxies, endpoints and conditions.
pub fn status(
    inp: &Inputs<'_>,
    plan: &Plan,
    drains: &BTreeMap<String, DrainState>,
) -> (crate::crd::ProxyGroupStatus, Vec<Cond>) {
    let spec = &inp.group.spec;
    let group = inp.group.name_any();
    let mut proxies = Vec::new();
    let mut endpoints = Vec::new();
    for sel in &plan.selected {
        let name = meta::pod_name(&group, &sel.node);
        let pod = inp.pods.iter().find(|p| p.name_any() == name);
        let ready = pod.is_some_and(pod_ready);
        let address = pod.and_then(|p| pod_address(p, spec.port));
        // Published by its stable name; a draining proxy below keeps its IP (it leaves, and a
        // name resolves only while its Pod is Ready).
        if let (true, Some(a)) = (ready, pod.and_then(|p| pod_stable_address(p, spec.port))) {
            let weight = super::weight::of_pv(inp.pvs, &sel.pv);
            endpoints.push(ProxyEndpoint { address: a, node: sel.node.clone(), weight, draining: false });
        }
        let state = match pod {
            _ if ready && pod.and_then(pod_hash) != Some(plan.spec_hash.as_str()) => "Updating",
            _ if ready => "Running",
            _ => "Starting",
        };
        proxies.push(ProxyStatus {
            node: sel.node.clone(),
            pod: name,
            persistent_volume: Some(sel.pv.clone()),
            address,
            ready,
            state: state.into(),
            cache_bytes: None,
            dirty_bytes: None,
        });
    }
    for t in &plan.drain {
        let drain = drains.get(&t.node);
        let (state, dirty) = match drain {
            Some(DrainState::InProgress { dirty_bytes, .. }) => ("Draining", Some(*dirty_bytes)),
            Some(DrainState::Done) => ("Draining", Some(0)),
            Some(DrainState::Blocked { .. }) | None => ("Unreachable", None),
        };
        // Until its drain completes, a leaving proxy may hold acknowledged writes that are only
        // on its disk: it stays published, marked draining, so clients read them but write
        // elsewhere (ADR 0002). A proxy the operator cannot ask stays too (clients fail over
        // from it on their own); a finished drain has no entry in `drains`.
        if let (Some(DrainState::InProgress { .. } | DrainState::Blocked { .. }), Some(a)) = (drain, &t.address) {
            let weight = t.pvc.as_deref().map_or(1, |c| super::weight::of_claim(inp.pvs, inp.pvcs, c));
            endpoints.push(ProxyEndpoint { address: a.clone(), node: t.node.clone(), weight, draining: true });
        }
        proxies.push(ProxyStatus {
            node: t.node.clone(),
            pod: t.pod.clone().unwrap_or_default(),
            persistent_volume: None,
            address: t.address.clone(),
            ready: false,
            state: state.into(),
            cache_bytes: None,
            dirty_bytes: dirty,
        });
    }
    endpoints.sort();
    let desired = plan.selected.len() as i32;
    let ready = endpoints.iter().filter(|e| !e.draining).count() as i32;
    let mut conds = Vec::new();
    let blocked: Vec<String> = drains
        .iter()
        .filter_map(|(n, s)| match s {
            DrainState::Blocked { why } => Some(format!("{n}: {why}")),
            _ => None,
        })
        .collect();
    let draining: Vec<String> = drains
        .iter()
        .filter_map(|(n, s)| match s {
            DrainState::InProgress { dirty_bytes, flush_error: None } => {
                Some(format!("{n} ({dirty_bytes} dirty bytes left)"))
            }
            DrainState::InProgress { dirty_bytes, flush_error: Some(e) } => {
                Some(format!("{n} ({dirty_bytes} dirty bytes left; flushing fails: {e})"))
            }
            _ => None,
        })
        .collect();
    if inp.deleting {
        conds.push(Cond::new(
            c::READY,
            false,
            c::REASON_DRAIN_IN_PROGRESS,
            "the group is being deleted; draining its proxies",
        ));
    } else if desired == 0 {
        let released = released_by_other_claims(inp);
        let hint = if released.is_empty() {
            String::new()
        } else {
            format!(
                "; PersistentVolumes {} are Released by another claim and may hold another group's cache: once it \
                 is not needed, make each Available with `kubectl patch pv NAME --type json -p \
                 '[{{\"op\":\"remove\",\"path\":\"/spec/claimRef\"}}]'`",
                released.join(", ")
            )
        };
        conds.push(Cond::new(
            c::READY,
            false,
            c::REASON_NO_ELIGIBLE_NODES,
            format!(
                "no node has an Available local PersistentVolume of StorageClass {:?} matching the node selector{hint}",
                spec.placement.storage_class_name
            ),
        ));
    } else if ready == desired {
        conds.push(Cond::new(c::READY, true, c::REASON_ALL_READY, format!("{ready}/{desired} proxies ready")));
    } else {
        conds.push(Cond::new(c::READY, false, c::REASON_PROXIES_NOT_READY, format!("{ready}/{desired} proxies ready")));
    }
    if !blocked.is_empty() {
        conds.push(Cond::new(
            c::DEGRADED,
            true,
            c::REASON_DRAIN_BLOCKED,
            format!(
                "cannot drain {}; their Pods and PVCs are kept so no acknowledged block is lost. Bring the proxy back, or set annotation {}=\"true\" on the group to give up on their unflushed blocks",
                blocked.join("; "),
                meta::SKIP_DRAIN_ANNOTATION
            ),
        ));
    } else if !inp.deleting && desired > 0 && ready < desired {
        conds.push(Cond::new(
            c::DEGRADED,
            true,
            c::REASON_PROXIES_NOT_READY,
            format!("{ready}/{desired} proxies ready"),
        ));
    } else {
        conds.push(Cond::new(c::DEGRADED, false, c::REASON_AS_EXPECTED, "all proxies are healthy"));
    }
    if draining.is_empty() {
        conds.push(Cond::new(c::DRAINING, false, c::REASON_NOT_DRAINING, "no proxy is draining"));
    } else {
        conds.push(Cond::new(
            c::DRAINING,
            true,
            c::REASON_DRAIN_IN_PROGRESS,
            format!("draining {}", draining.join(", ")),
        ));
    }
    let st = crate::crd::ProxyGroupStatus {
        observed_generation: inp.group.metadata.generation,
        desired_proxies: desired,
        ready_proxies: ready,
        endpoints,
        proxies,
        scheme: Some(if spec.tls.enabled { "https" } else { "http" }.into()),
        server_name: (spec.tls.enabled && spec.tls.certificate_secret.is_none())
            .then(|| crate::tls::server_name(&meta::service_name(&group), inp.namespace)),
        ca_bundle: if spec.tls.enabled { inp.tls.map(|t| t.ca_pem.clone()) } else { None },
        cache_bytes: None,
        dirty_bytes: None,
        conditions: Vec::new(),
    };
    (st, conds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ObjectStoreSpec, Placement};
    use k8s_openapi::api::core::v1::{
        LocalVolumeSource, ObjectReference, PersistentVolumeSpec, PersistentVolumeStatus, PodCondition, PodStatus,
        VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    pub fn spec() -> ProxyGroupSpec {
        ProxyGroupSpec {
            provider_code: "minio".into(),
            region_code: "dc1".into(),
            placement: Placement { storage_class_name: "nvme".into(), ..Default::default() },
            cache: Default::default(),
            writeback: Default::default(),
            object_store: ObjectStoreSpec {
                provider: ObjectStoreProvider::S3Compatible,
                endpoint: Some("http://minio:9000".into()),
                region: Some("us-east-1".into()),
                path_style: true,
                sse: false,
                credentials_secret: Some(serde_json::from_value(serde_json::json!({"name": "store"})).unwrap()),
            },
            port: 8443,
            tls: Default::default(),
            allowed_namespaces: vec!["*".into()],
            allow_store_sharing: false,
            image: None,
            image_pull_policy: None,
            resources: None,
        }
    }

    pub fn group(spec: ProxyGroupSpec) -> ProxyGroup {
        let mut g = ProxyGroup::new("eu", spec);
        g.metadata.uid = Some("uid-1".into());
        g.metadata.generation = Some(1);
        g
    }

    pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.insert(HOSTNAME_LABEL.into(), name.into());
        n.metadata.labels = Some(l);
        n
    }

    pub fn local_pv(name: &str, node: &str, sc: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PersistentVolumeSpec {
                storage_class_name: Some(sc.into()),
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("100Gi".into()))])),
                local: Some(LocalVolumeSource { path: "/mnt/nvme0".into(), fs_type: None }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: HOSTNAME_LABEL.into(),
                                operator: "In".into(),
                                values: Some(vec![node.into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus { phase: Some("Available".into()), ..Default::default() }),
        }
    }

    struct World {
        group: ProxyGroup,
        nodes: Vec<Node>,
        pvs: Vec<PersistentVolume>,
        pods: Vec<Pod>,
        pvcs: Vec<PersistentVolumeClaim>,
        volumes: VolumesFile,
        deleting: bool,
    }

    impl World {
        /// 3 NVMe nodes and 2 without.
        fn new() -> Self {
            let nodes = ["a", "b", "c", "d", "e"].iter().map(|n| node(n, &[])).collect();
            let pvs = ["a", "b", "c"].iter().map(|n| local_pv(&format!("pv-{n}"), n, "nvme")).collect();
            Self {
                group: group(spec()),
                nodes,
                pvs,
                pods: vec![],
                pvcs: vec![],
                volumes: VolumesFile::default(),
                deleting: false,
            }
        }
        fn inputs(&self) -> Inputs<'_> {
            Inputs {
                group: &self.group,
                namespace: "blockproxy-system",
                default_image: "blockproxy:test",
                nodes: &self.nodes,
                pvs: &self.pvs,
                pods: &self.pods,
                pvcs: &self.pvcs,
                volumes: &self.volumes,
                admin_token: "admintoken",
                tls: None,
                deleting: self.deleting,
            }
        }
        /// Applies the plan the way the API server would (create missing, delete listed).
        fn step(&mut self) -> Plan {
            let plan = plan(&self.inputs());
            for d in &plan.apply {
                match d {
                    Desired::Pod(p) if !self.pods.iter().any(|x| x.name_any() == p.name_any()) => {
                        self.pods.push(p.clone())
                    }
                    Desired::Pvc(c) if !self.pvcs.iter().any(|x| x.name_any() == c.name_any()) => {
                        self.pvcs.push(c.clone())
                    }
                    _ => {}
                }
            }
            let gone: Vec<&String> = plan.delete_pods.iter().map(|(n, _)| n).collect();
            self.pods.retain(|p| !gone.contains(&&p.name_any()));
            plan
        }
        fn set_ready(&mut self, ip_base: u8) {
            for (i, p) in self.pods.iter_mut().enumerate() {
                p.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(format!("10.0.0.{}", ip_base as usize + i)),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
            }
        }
    }

    fn pod_nodes(w: &World) -> Vec<String> {
        let mut v: Vec<String> = w.pods.iter().filter_map(|p| p.labels().get(meta::NODE_LABEL).cloned()).collect();
        v.sort();
        v
    }

    #[test]
    fn one_proxy_per_nvme_node_and_none_elsewhere() {
        let mut w = World::new();
        let plan = w.step();
        assert_eq!(pod_nodes(&w), ["a", "b", "c"]);
        assert_eq!(plan.selected.iter().map(|s| s.pv.as_str()).collect::<Vec<_>>(), ["pv-a", "pv-b", "pv-c"]);
        for c in &w.pvcs {
            let node = c.labels()[meta::NODE_LABEL].clone();
            assert_eq!(c.spec.as_ref().unwrap().volume_name.as_deref(), Some(format!("pv-{node}").as_str()));
            assert_eq!(
                c.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
                "100Gi"
            );
        }
        for p in &w.pods {
            let node = &p.labels()[meta::NODE_LABEL];
            let aff = p.spec.as_ref().unwrap().affinity.as_ref().unwrap().node_affinity.as_ref().unwrap();
            let term =
                &aff.required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms[0];
            assert_eq!(term.match_fields.as_ref().unwrap()[0].values.as_ref().unwrap(), &vec![node.clone()]);
            let vols = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
            assert_eq!(vols[0].persistent_volume_claim.as_ref().unwrap().claim_name, meta::pvc_name("eu", node));
            assert_eq!(p.owner_references()[0].uid, "uid-1");
            assert_eq!(p.owner_references()[0].controller, Some(true));
        }
        assert_eq!(plan.events.iter().filter(|e| e.reason == "ProxyCreated").count(), 3);
        // Idempotent: a second pass creates nothing new.
        let again = w.step();
        assert!(again.events.is_empty());
        assert_eq!(w.pods.len(), 3);
    }

    #[test]
    fn proxy_pods_get_a_stable_name_below_the_headless_service() {
        let mut w = World::new();
        w.step();
        let service = match plan(&w.inputs()).apply.into_iter().find(|d| matches!(d, Desired::Service(_))) {
            Some(Desired::Service(s)) => s,
            _ => panic!("no Service planned"),
        };
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
        assert_eq!(spec.publish_not_ready_addresses, Some(false), "a name resolves only while its Pod is Ready");
        for p in &w.pods {
            let s = p.spec.as_ref().unwrap();
            let node = p.labels()[meta::NODE_LABEL].clone();
            assert_eq!(s.hostname, Some(meta::pod_hostname("eu", &node)));
            assert_eq!(s.subdomain.as_deref(), Some(service.name_any().as_str()));
        }
        // Long group and node names still give a DNS label.
        let long = meta::pod_hostname(&"g".repeat(60), &"n".repeat(60));
        assert!(long.len() <= 63 && !long.ends_with('-'), "{long}");
        assert_ne!(long, meta::pod_hostname(&"g".repeat(60), &"n".repeat(61)));
    }

    #[test]
    fn stable_address_falls_back_to_the_ip() {
        let mut pod = Pod {
            metadata: ObjectMeta { namespace: Some("ns".into()), ..Default::default() },
            spec: Some(PodSpec::default()),
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("fd00::7".into()),
                ..Default::default()
            }),
        };
        assert_eq!(pod_stable_address(&pod, 8443).as_deref(), Some("[fd00::7]:8443"), "no hostname");
        pod.spec.as_mut().unwrap().hostname = Some("h".into());
        assert_eq!(pod_stable_address(&pod, 8443).as_deref(), Some("[fd00::7]:8443"), "no subdomain");
        pod.spec.as_mut().unwrap().subdomain = Some("svc".into());
        assert_eq!(pod_stable_address(&pod, 8443).as_deref(), Some("h.svc.ns.svc:8443"));
        pod.status.as_mut().unwrap().pod_ip = None;
        assert_eq!(pod_stable_address(&pod, 8443), None, "not running yet");
    }

    #[test]
    fn status_publishes_only_ready_proxies() {
        let mut w = World::new();
        let plan = w.step();
        let (st, conds) = status(&w.inputs(), &plan, &BTreeMap::new());
        assert_eq!((st.desired_proxies, st.ready_proxies), (3, 0));
        assert!(st.endpoints.is_empty());
        assert!(conds.iter().any(|c| c.type_ == c::READY && !c.status));
        w.set_ready(1);
        let plan = w.step();
        let (st, conds) = status(&w.inputs(), &plan, &BTreeMap::new());
        assert_eq!(st.ready_proxies, 3);
        // The stable name below the headless Service, not the Pod's IP.
        let name = format!("{}.{}.blockproxy-system.svc:8443", meta::pod_hostname("eu", "a"), meta::service_name("eu"));
        assert_eq!(
            st.endpoints[0],
            // Weight 100: the fixture's PVs have 100Gi.
            ProxyEndpoint { address: name, node: "a".into(), weight: 100, draining: false }
        );
        assert_eq!(st.proxies[0].address.as_deref(), Some("10.0.0.1:8443"), "the proxy's own row keeps its IP");
        assert!(conds.iter().any(|c| c.type_ == c::READY && c.status));
        assert!(conds.iter().any(|c| c.type_ == c::DEGRADED && !c.status));
    }

    #[test]
    fn node_selector_pv_phase_and_storage_class_filter_nodes() {
        let mut w = World::new();
        w.nodes[0].metadata.labels.as_mut().unwrap().insert("tier".into(), "cache".into());
        w.group.spec.placement.node_selector = BTreeMap::from([("tier".into(), "cache".into())]);
        assert_eq!(select_nodes(&w.inputs()).iter().map(|s| s.node.clone()).collect::<Vec<_>>(), ["a"]);
        w.group.spec.placement.node_selector.clear();
        // PV of another class, PV bound to someone else, PV being deleted, PV without spec.local.
        w.pvs[0].spec.as_mut().unwrap().storage_class_name = Some("hdd".into());
        w.pvs[1].spec.as_mut().unwrap().claim_ref =
            Some(ObjectReference { namespace: Some("x".into()), name: Some("y".into()), ..Default::default() });
        w.pvs[1].status.as_mut().unwrap().phase = Some("Bound".into());
        w.pvs[2].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut no_local = local_pv("pv-d", "d", "nvme");
        no_local.spec.as_mut().unwrap().local = None;
        w.pvs.push(no_local);
        assert!(select_nodes(&w.inputs()).is_empty());
    }

    #[test]
    fn pv_already_claimed_by_this_group_stays_eligible() {
        let mut w = World::new();
        w.pvs[0].spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("blockproxy-system".into()),
            name: Some(meta::pvc_name("eu", "a")),
            ..Default::default()
        });
        w.pvs[0].status.as_mut().unwrap().phase = Some("Bound".into());
        assert_eq!(select_nodes(&w.inputs()).len(), 3);
    }

    #[test]
    fn max_proxies_caps_deterministically_and_keeps_running_proxies() {
        let mut w = World::new();
        w.group.spec.placement.max_proxies = Some(2);
        w.step();
        assert_eq!(pod_nodes(&w), ["a", "b"]);
        // A new node "0" sorts first by name, but the running proxies keep their place.
        w.nodes.push(node("0", &[]));
        w.pvs.push(local_pv("pv-0", "0", "nvme"));
        let plan = w.step();
        assert_eq!(pod_nodes(&w), ["a", "b"]);
        assert!(plan.drain.is_empty());
    }

    #[test]
    fn two_pvs_on_one_node_give_one_proxy_on_the_lowest_name() {
        let mut w = World::new();
        w.pvs.push(local_pv("pv-a0", "a", "nvme"));
        let sel = select_nodes(&w.inputs());
        assert_eq!(sel.len(), 3);
        assert_eq!(sel[0], Selected { node: "a".into(), pv: "pv-a".into() });
    }

    #[test]
    fn pv_pinned_by_match_fields_or_unknown_hostname() {
        let nodes = vec![node("n1", &[])];
        let mut pv = local_pv("p", "n1", "nvme");
        assert_eq!(pv_node(&pv, &nodes).as_deref(), Some("n1"));
        let term = &mut pv
            .spec
            .as_mut()
            .unwrap()
            .node_affinity
            .as_mut()
            .unwrap()
            .required
            .as_mut()
            .unwrap()
            .node_selector_terms[0];
        term.match_expressions.as_mut().unwrap()[0].values = Some(vec!["n1".into(), "n2".into()]);
        assert_eq!(pv_node(&pv, &nodes), None, "a PV that may move between nodes is not local to one node");
        let term = &mut pv
            .spec
            .as_mut()
            .unwrap()
            .node_affinity
            .as_mut()
            .unwrap()
            .required
            .as_mut()
            .unwrap()
            .node_selector_terms[0];
        term.match_expressions = None;
        term.match_fields = Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec!["n1".into()]),
        }]);
        assert_eq!(pv_node(&pv, &nodes).as_deref(), Some("n1"));
    }

    #[test]
    fn new_nvme_node_adds_a_proxy() {
        let mut w = World::new();
        w.step();
        w.nodes.push(node("f", &[]));
        w.pvs.push(local_pv("pv-f", "f", "nvme"));
        let plan = w.step();
        assert_eq!(pod_nodes(&w), ["a", "b", "c", "f"]);
        assert_eq!(plan.events.len(), 1);
    }

    #[test]
    fn removed_pv_drains_and_keeps_pod_and_pvc() {
        let mut w = World::new();
        w.step();
        w.set_ready(1);
        w.pvs.retain(|p| p.name_any() != "pv-b");
        let plan = w.step();
        assert_eq!(plan.drain.len(), 1);
        let t = &plan.drain[0];
        assert_eq!(t.node, "b");
        assert_eq!(t.address.as_deref(), Some("10.0.0.2:8443"));
        assert_eq!(t.pod.as_deref(), Some(meta::pod_name("eu", "b").as_str()));
        assert!(plan.keep.contains(&(KIND_POD, meta::pod_name("eu", "b"))));
        assert!(plan.keep.contains(&(KIND_PVC, meta::pvc_name("eu", "b"))));
        assert!(plan.delete_pods.is_empty(), "a leaving proxy is never deleted before it drained");
        // The draining proxy stays published, marked draining, until its drain completes: it
        // may hold the only copy of acknowledged writes. It is not counted as ready.
        let drains = BTreeMap::from([(
            "b".to_owned(),
            DrainState::InProgress { dirty_bytes: 42, flush_error: Some("k: NoSuchBucket".into()) },
        )]);
        let (st, conds) = status(&w.inputs(), &plan, &drains);
        let mut listed: Vec<(&str, bool)> = st.endpoints.iter().map(|e| (e.node.as_str(), e.draining)).collect();
        listed.sort();
        assert_eq!(listed, [("a", false), ("b", true), ("c", false)]);
        // It keeps its IP: a leaving Pod's name stops resolving once it is not Ready.
        let b = st.endpoints.iter().find(|e| e.node == "b").unwrap();
        assert_eq!(Some(&b.address), t.address.as_ref());
        assert_eq!(st.ready_proxies, 2);
        let (done, _) = status(&w.inputs(), &plan, &BTreeMap::new());
        assert!(done.endpoints.iter().all(|e| e.node != "b"), "a finished drain is no longer published");
        assert_eq!(st.proxies.iter().find(|p| p.node == "b").unwrap().dirty_bytes, Some(42));
        assert!(conds.iter().any(|c| c.type_ == c::DRAINING && c.status && c.message.contains("42")));
        assert!(
            conds.iter().any(|c| c.type_ == c::DRAINING && c.message.contains("flushing fails: k: NoSuchBucket")),
            "why the drain stalls: {conds:?}"
        );
    }

    #[test]
    fn objects_deleted_after_a_drain_are_not_drained_again() {
        let mut w = World::new();
        w.step();
        w.pvs.retain(|p| p.name_any() != "pv-b");
        w.pods.retain(|p| p.labels()[meta::NODE_LABEL] != "b");
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        for c in w.pvcs.iter_mut().filter(|c| c.labels()[meta::NODE_LABEL] == "b") {
            c.metadata.deletion_timestamp = Some(now.clone()); // held by pvc-protection
        }
        let plan = w.step();
        assert!(plan.drain.is_empty());
    }

    #[test]
    fn unreachable_leaving_proxy_is_blocked_not_deleted() {
        let mut w = World::new();
        w.step();
        w.nodes.retain(|n| n.name_any() != "c");
        let plan = w.step();
        assert_eq!(plan.drain.len(), 1);
        assert_eq!(plan.drain[0].address, None);
        let drains = BTreeMap::from([("c".to_owned(), DrainState::Blocked { why: "no running Pod".into() })]);
        let (_, conds) = status(&w.inputs(), &plan, &drains);
        let d = conds.iter().find(|c| c.type_ == c::DEGRADED).unwrap();
        assert!(d.status && d.reason == c::REASON_DRAIN_BLOCKED && d.message.contains("c: no running Pod"));
    }

    #[test]
    fn a_released_pv_of_this_group_is_bound_to_the_new_claim() {
        let mut w = World::new();
        w.step();
        // The group was deleted and created again: pv-a is Released, still naming the old claim.
        let claim = meta::pvc_name("eu", "a");
        let pv = w.pvs.iter_mut().find(|p| p.name_any() == "pv-a").unwrap();
        pv.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("blockproxy-system".into()),
            name: Some(claim.clone()),
            uid: Some("old-uid".into()),
            ..Default::default()
        });
        pv.status.as_mut().unwrap().phase = Some("Released".into());
        for c in &mut w.pvcs {
            c.metadata.uid = Some(format!("new-{}", c.name_any()));
        }
        let plan = w.step();
        assert_eq!(plan.rebind, [Rebind { pv: "pv-a".into(), pvc: claim.clone(), pvc_uid: format!("new-{claim}") }]);
        assert!(plan.events.iter().any(|e| e.reason == "VolumeReused" && e.note.contains("pv-a")));
        assert!(pod_nodes(&w).contains(&"a".to_owned()));
        // Once bound to the new claim, nothing more to do.
        w.pvs[0].spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = Some(format!("new-{claim}"));
        w.pvs[0].status.as_mut().unwrap().phase = Some("Bound".into());
        assert!(w.step().rebind.is_empty());
    }

    #[test]
    fn a_released_pv_of_another_claim_is_left_alone() {
        let mut w = World::new();
        let pv = w.pvs.iter_mut().find(|p| p.name_any() == "pv-a").unwrap();
        pv.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("team-x".into()),
            name: Some("data".into()),
            uid: Some("u".into()),
            ..Default::default()
        });
        pv.status.as_mut().unwrap().phase = Some("Released".into());
        let plan = w.step();
        assert!(plan.rebind.is_empty());
        assert!(!pod_nodes(&w).contains(&"a".to_owned()));
    }

    #[test]
    fn with_only_pvs_released_by_other_claims_the_condition_says_how_to_free_them() {
        let mut w = World::new();
        for pv in &mut w.pvs {
            pv.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
                namespace: Some("blockproxy-system".into()),
                name: Some(meta::pvc_name("another-group", "a")),
                uid: Some("u".into()),
                ..Default::default()
            });
            pv.status.as_mut().unwrap().phase = Some("Released".into());
        }
        let plan = w.step();
        assert!(pod_nodes(&w).is_empty());
        let (_, conds) = status(&w.inputs(), &plan, &BTreeMap::new());
        let ready = conds.iter().find(|c| c.type_ == c::READY).unwrap();
        assert_eq!(ready.reason, c::REASON_NO_ELIGIBLE_NODES);
        for pv in &w.pvs {
            assert!(ready.message.contains(&pv.name_any()), "{}", ready.message);
        }
        assert!(ready.message.contains("kubectl patch pv NAME"), "{}", ready.message);
    }

    #[test]
    fn a_proxy_that_never_started_needs_no_drain() {
        let mut w = World::new();
        w.step();
        w.set_ready(1);
        // The Pod on "c" never ran: Pending, its claim never bound.
        for p in w.pods.iter_mut().filter(|p| p.labels()[meta::NODE_LABEL] == "c") {
            p.status = Some(PodStatus { phase: Some("Pending".into()), ..Default::default() });
        }
        for c in &mut w.pvcs {
            let phase = if c.labels()[meta::NODE_LABEL] == "c" { "Pending" } else { "Bound" };
            c.status = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
        }
        w.deleting = true;
        let plan = w.step();
        let never: Vec<&str> = plan.drain.iter().filter(|t| t.never_started).map(|t| t.node.as_str()).collect();
        assert_eq!(never, ["c"]);
    }

    #[test]
    fn dead_pod_is_recreated_on_the_same_node_with_the_same_pvc() {
        let mut w = World::new();
        w.step();
        w.set_ready(1);
        w.pods[0].status.as_mut().unwrap().phase = Some("Failed".into());
        let dead = w.pods[0].name_any();
        let plan = w.step();
        assert_eq!(plan.delete_pods, vec![(dead.clone(), "ProxyRecreated")]);
        assert!(plan.drain.is_empty());
        let plan = w.step();
        let p = w.pods.iter().find(|p| p.name_any() == dead).unwrap();
        assert_eq!(p.labels()[meta::NODE_LABEL], "a");
        assert!(plan.events.iter().any(|e| e.reason == "ProxyCreated"));
        assert_eq!(w.pvcs.len(), 3);
    }

    #[test]
    fn spec_change_rolls_one_proxy_at_a_time_waiting_for_readiness() {
        let mut w = World::new();
        w.step();
        w.set_ready(1);
        w.group.spec.image = Some("blockproxy:v2".into());
        let plan = w.step();
        assert_eq!(plan.delete_pods.len(), 1);
        assert_eq!(plan.delete_pods[0].1, "RollingUpdate");
        // The recreated Pod is not ready yet: no second restart.
        let plan = w.step();
        assert!(plan.delete_pods.is_empty());
        assert_eq!(w.pods.len(), 3);
        let mut rolled = 1;
        for _ in 0..10 {
            w.set_ready(1);
            if !w.step().delete_pods.is_empty() {
                rolled += 1;
                w.step();
            }
        }
        assert_eq!(rolled, 3);
        let h = spec_hash(&w.group.spec, "eu", "blockproxy:test");
        assert!(w.pods.iter().all(|p| p.annotations()[SPEC_HASH_ANNOTATION] == h));
    }

    #[test]
    fn volumes_secret_change_does_not_roll() {
        let a = spec_hash(&spec(), "eu", "img");
        let mut s = spec();
        s.allowed_namespaces = vec!["x".into()];
        s.region_code = "dc2".into();
        assert_eq!(a, spec_hash(&s, "eu", "img"));
        s.writeback.sync = true;
        assert_ne!(a, spec_hash(&s, "eu", "img"));
    }

    #[test]
    fn deleting_drains_everything_and_applies_nothing() {
        let mut w = World::new();
        w.step();
        w.set_ready(1);
        w.deleting = true;
        let plan = w.step();
        assert!(plan.apply.is_empty());
        assert_eq!(plan.drain.len(), 3);
        assert!(plan.drain.iter().all(|t| t.address.is_some()));
    }

    #[test]
    fn events_name_their_proxy_pod() {
        let mut w = World::new();
        let plan = w.step();
        let pods: BTreeSet<Option<String>> =
            plan.events.iter().filter(|e| e.reason == "ProxyCreated").map(|e| e.pod.clone()).collect();
        let want: BTreeSet<Option<String>> = ["a", "b", "c"].iter().map(|n| Some(meta::pod_name("eu", n))).collect();
        assert_eq!(pods, want, "one event per proxy, each naming its own Pod");
    }

    #[test]
    fn group_objects_carry_labels_and_owner() {
        let w = World::new();
        let plan = plan(&w.inputs());
        let kinds: Vec<(&str, String)> = plan.apply.iter().map(|d| (d.kind(), d.name())).collect();
        assert!(kinds.contains(&(KIND_SECRET, "eu-volumes".into())));
        assert!(kinds.contains(&(KIND_SECRET, "eu-admin".into())));
        assert!(kinds.contains(&(KIND_SERVICE, "eu".into())));
        for d in &plan.apply {
            let m = d.meta();
            assert_eq!(m.labels.as_ref().unwrap()[meta::MANAGED_BY_LABEL], meta::FIELD_MANAGER);
            assert_eq!(m.owner_references.as_ref().unwrap().len(), 1);
        }
        let pod = plan.apply.iter().find_map(|d| if let Desired::Pod(p) = d { Some(p) } else { None }).unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env: Vec<&str> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        assert!(c.env.as_ref().unwrap().iter().all(|e| e.value.is_none()), "credentials only by secretKeyRef");
    }

    #[test]
    fn cloud_stores_get_their_credentials_from_the_secret() {
        let mut s = spec();
        s.object_store = serde_json::from_value(serde_json::json!({
            "provider": "azure", "credentialsSecret": {"name": "az"}
        }))
        .unwrap();
        let pod = pod_spec(&s, "eu", "img");
        let c = &pod.containers[0];
        let env: Vec<(&str, &str, Option<bool>)> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
                (e.name.as_str(), r.key.as_str(), r.optional)
            })
            .collect();
        assert_eq!(
            env,
            [
                ("AZURE_STORAGE_ACCOUNT", "accountName", Some(false)),
                ("AZURE_STORAGE_KEY", "accountKey", Some(true)),
                ("AZURE_STORAGE_SAS_TOKEN", "sasToken", Some(true)),
            ]
        );
        assert!(c.args.as_ref().unwrap().join(" ").contains("--store-provider azure"));

        s.object_store = serde_json::from_value(serde_json::json!({
            "provider": "gcs", "credentialsSecret": {"name": "sa", "serviceAccountKeyKey": "key.json"}
        }))
        .unwrap();
        let pod = pod_spec(&s, "eu", "img");
        let c = &pod.containers[0];
        assert!(c.env.is_none(), "a GCS key is a mounted file, not a variable");
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--store-provider gcs --store-credentials-file /etc/blockproxy/store/key.json"),
            "{args}"
        );
        assert!(!args.contains("--store-path-style"), "{args}");
        let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "store-credentials").unwrap();
        assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("sa"));
        let mounted = c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == args::STORE_CREDENTIALS_DIR);
        assert!(mounted);

        // Workload identity: no Secret, nothing mounted.
        s.object_store.credentials_secret = None;
        let pod = pod_spec(&s, "eu", "img");
        assert!(!pod.volumes.as_ref().unwrap().iter().any(|v| v.name == "store-credentials"));
        assert!(!pod.containers[0].args.as_ref().unwrap().join(" ").contains("--store-credentials-file"));
    }

    #[test]
    fn cache_figures_fill_the_reporting_proxies_and_the_group_sums() {
        let proxy = |node: &str, dirty: Option<u64>| ProxyStatus {
            node: node.into(),
            pod: format!("pod-{node}"),
            persistent_volume: None,
            address: None,
            ready: true,
            state: "Running".into(),
            cache_bytes: None,
            dirty_bytes: dirty,
        };
        let mut st = crate::crd::ProxyGroupStatus {
            proxies: vec![proxy("a", None), proxy("b", None), proxy("gone", Some(7))],
            ..Default::default()
        };
        let figures = BTreeMap::from([
            ("a".to_owned(), CacheFigures { cache_bytes: 100, dirty_bytes: 10 }),
            ("b".to_owned(), CacheFigures { cache_bytes: 50, dirty_bytes: 0 }),
        ]);
        add_cache_figures(&mut st, &figures);
        let a = &st.proxies[0];
        assert_eq!((a.cache_bytes, a.dirty_bytes), (Some(100), Some(10)));
        assert_eq!(st.proxies[2].dirty_bytes, Some(7), "a draining proxy keeps its drain's figure");
        assert_eq!(st.cache_bytes, Some(150));
        assert_eq!(st.dirty_bytes, Some(17));
        let mut empty = crate::crd::ProxyGroupStatus::default();
        add_cache_figures(&mut empty, &figures);
        assert_eq!((empty.cache_bytes, empty.dirty_bytes), (None, None), "no proxy, no figure");
    }
}
