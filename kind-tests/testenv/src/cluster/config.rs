//! The configuration files of a [`super::Cluster`]'s node daemons, and the cluster add-ons.
//!
//! The non-default settings each work around something of these machines (see
//! `docs/kind-tests.md`): cgroup v1, a capability bounding set without CAP_SYS_RESOURCE, and
//! every node sharing one network namespace.

use std::net::Ipv4Addr;
use std::path::Path;

/// The address the API server listens on, inside the cluster's network namespace.
pub const API_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The `kubernetes` Service's ClusterIP (first of the service range).
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The service range.
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
/// CoreDNS' ClusterIP.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The pod range (node N gets 10.244.N.0/24).
pub const POD_RANGE: &str = "10.244.0.0/16";
/// The sandbox image containerd uses; packed from the pause binary.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// Node `n`'s IP (10.200.0.n).
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, u8::try_from(n).unwrap_or(u8::MAX))
}

/// containerd's config for node `n`; `dir` is the node's folder.
pub fn containerd(dir: &Path, cni_bin_dir: &Path) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Nothing here may lower oom_score_adj (no CAP_SYS_RESOURCE in the bounding set), and runc
  # fails on the CRI's -998 for sandboxes unless scores are clamped to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{netd}"
"#,
        cni = cni_bin_dir.display(),
        netd = dir.join("net.d").display(),
    )
}

/// The CNI config of node `n`: its own bridge `cniN` and 10.244.N.0/24. All nodes share the
/// cluster's network namespace, so traffic between nodes is plain routing between bridges.
pub fn cni(n: usize) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "node{n}", "plugins": [
  {{"type": "bridge", "bridge": "cni{n}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.244.{n}.0/24"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}
"#
    )
}

/// kubelet's config of node `n`.
pub fn kubelet(n: usize, cgroup_root: &str, ca: &Path) -> String {
    let ip = node_ip(n);
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines run cgroup v1, which kubelet 1.35 refuses by default.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}/node{n}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {ip}
healthzBindAddress: {ip}
readOnlyPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
clusterDNS: [{DNS_IP}]
resolvConf: ""
failSwapOn: false
podLogsDir: /var/lib/pod-logs
evictionHard: {{memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
"#,
        ca = ca.display()
    )
}

/// kube-proxy's config: one kube-proxy serves every node, since the nodes share one netns and
/// hence one set of iptables rules.
pub fn kube_proxy(kubeconfig: &Path) -> String {
    let ip = node_ip(1);
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
mode: iptables
clusterCIDR: {POD_RANGE}
bindAddress: {ip}
healthzBindAddress: {ip}:10256
metricsBindAddress: {ip}:10249
conntrack: {{maxPerCore: 0, min: 0}}
"#,
        kubeconfig = kubeconfig.display()
    )
}

/// CoreDNS as the cluster DNS at [`DNS_IP`], running `image`.
pub fn coredns(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- {{apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}}
- {{apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }}
        cache 30
        loop
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: {image}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports: [{{containerPort: 53, protocol: UDP}}, {{containerPort: 53, protocol: TCP}}]
        readinessProbe: {{httpGet: {{path: /ready, port: 8181}}, periodSeconds: 2}}
        volumeMounts: [{{name: cfg, mountPath: /etc/coredns}}]
      volumes: [{{name: cfg, configMap: {{name: coredns}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_IP}
  selector: {{k8s-app: kube-dns}}
  ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
"#
    )
}

/// The StorageClass `class` (static local PVs, bound when a Pod is scheduled) and one PV per
/// `(node, path)`, named `<class>-<node>`, pinned to its node. `local` picks a `local` volume
/// (the path must exist on the node) or, for clusters whose node folders the test cannot
/// create, a `hostPath` volume of type `DirectoryOrCreate`.
pub fn local_pvs(class: &str, pvs: &[(String, String)], local: bool, capacity: &str) -> String {
    let mut out = format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\n\
         provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n\
         reclaimPolicy: Retain\n"
    );
    for (node, path) in pvs {
        let source = if local {
            format!("local: {{path: \"{path}\"}}")
        } else {
            format!("hostPath: {{path: \"{path}\", type: DirectoryOrCreate}}")
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {class}-{node}}}\nspec:\n  \
             capacity: {{storage: {capacity}}}\n  accessModes: [ReadWriteOnce]\n  \
             persistentVolumeReclaimPolicy: Retain\n  storageClassName: {class}\n  {source}\n  \
             nodeAffinity:\n    required:\n      nodeSelectorTerms: [{{matchExpressions: \
             [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]}}]\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pv_document_is_valid_yaml_pinned_to_its_node() {
        let yaml =
            local_pvs("local-nvme", &[("node1".into(), "/a".into()), ("node2".into(), "/b".into())], true, "1Gi");
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "StorageClass");
        for (doc, node, path) in [(&docs[1], "node1", "/a"), (&docs[2], "node2", "/b")] {
            assert_eq!(doc["metadata"]["name"], format!("local-nvme-{node}").as_str());
            assert_eq!(doc["spec"]["local"]["path"], path);
            let term = &doc["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
            assert_eq!(term["values"][0], node);
        }
    }

    #[test]
    fn the_coredns_manifests_parse() {
        let n = serde_yaml::Deserializer::from_str(&coredns("example.local/coredns:v1"))
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .count();
        assert_eq!(n, 6);
    }

    use serde::Deserialize as _;
}
