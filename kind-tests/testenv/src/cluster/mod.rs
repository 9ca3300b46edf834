//! A real multi-node Kubernetes cluster for end-to-end tests: [`Cluster`].
//!
//! By default it starts a [`local::LocalCluster`] on this machine (root only; no Docker): real
//! kubelets, containerd, runc, CNI, kube-proxy and CoreDNS in private namespaces. With
//! `KUBECONFIG` set, the tests use that cluster instead (for example kind); images are then
//! loaded with `kind load image-archive` when `BLOCKPROXY_KIND_CLUSTER` names the kind cluster,
//! and must otherwise be present on the nodes already.
//!
//! Either way the cluster has a StorageClass `local-nvme` with one static PV per chosen node,
//! named `local-nvme-<node>` and pinned to it.

pub mod config;
pub mod forward;
pub mod local;
pub mod pki;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};

pub use forward::Forward;
use local::{LocalCluster, image_script, run};

use crate::control_plane::client_from_kubeconfig_file;
use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::tools::{Tool, tool_path};

/// The StorageClass of the cluster's local PVs.
pub const STORAGE_CLASS: &str = "local-nvme";
/// The image reference of the busybox test image (every node has it).
pub const BUSYBOX_IMAGE: &str = "example.local/busybox:test";
const COREDNS_IMAGE: &str = "example.local/coredns:test";
/// How long nodes and add-ons may take to become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// Options for [`Cluster`]; start with [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    without_pv: Vec<usize>,
    pv_capacity: String,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self { nodes: 3, without_pv: Vec::new(), pv_capacity: "2Gi".into() }
    }
}

impl ClusterBuilder {
    /// Number of nodes of a local cluster (default 3).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Node `n` (1-based) gets no `local-nvme` PV.
    pub fn without_pv_on(mut self, n: usize) -> Self {
        self.without_pv.push(n);
        self
    }

    /// Starts the cluster (or connects to `KUBECONFIG`'s) and waits until every node, CoreDNS and
    /// the PVs are ready.
    pub async fn start(self) -> Result<Cluster> {
        Cluster::start_with(self).await
    }
}

/// A running cluster with an admin client; a local one is torn down on drop (also on panic).
pub struct Cluster {
    client: Client,
    kubeconfig: PathBuf,
    nodes: Vec<String>,
    pv_nodes: Vec<String>,
    // Dropped last-but-one, so the log folder outlives it and prints logs on panic.
    local: Option<LocalCluster>,
    work: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("nodes", &self.nodes).field("local", &self.local).finish()
    }
}

impl Cluster {
    /// Options, e.g. `Cluster::builder().nodes(4).without_pv_on(4).start().await`.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Why this machine cannot run a cluster, if it cannot: an existing cluster (`KUBECONFIG`)
    /// always can; a local one needs root and the namespace tools. Tests print this and skip.
    pub fn unavailable() -> Option<String> {
        if external_kubeconfig().is_some() {
            return None;
        }
        // The effective uid, from /proc/self/status' Uid line.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned));
        if uid.as_deref() != Some("0") {
            return Some(
                "a local cluster needs root (namespaces, cgroups, mounts); run as root or set KUBECONFIG to an \
                 existing cluster"
                    .into(),
            );
        }
        if !Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists() {
            return Some(
                "a local cluster needs cgroup v1 hierarchies (/sys/fs/cgroup/cpu); set KUBECONFIG instead".into(),
            );
        }
        None
    }

    async fn start_with(options: ClusterBuilder) -> Result<Self> {
        crate::init_crypto();
        let work = tempfile::Builder::new().prefix("bpcluster-work-").tempdir()?;
        if let Some(kubeconfig) = external_kubeconfig() {
            return Self::external(kubeconfig, options, work).await;
        }
        let logs = LogDir::new()?;
        let images = base_images(work.path()).await?;
        let local = LocalCluster::start(options.nodes, &images, logs).await?;
        let kubeconfig = local.host_kubeconfig();
        let client = client_from_kubeconfig_file(&kubeconfig).await?;
        let nodes: Vec<String> = (1..=options.nodes).map(|n| format!("node{n}")).collect();
        let pv_nodes: Vec<usize> = (1..=options.nodes).filter(|n| !options.without_pv.contains(n)).collect();
        let mut pvs = Vec::new();
        for &n in &pv_nodes {
            let dir = local.pv_dir(n);
            std::fs::create_dir_all(&dir)?;
            pvs.push((format!("node{n}"), dir.display().to_string()));
        }
        let cluster = Self {
            client,
            kubeconfig,
            nodes,
            pv_nodes: pv_nodes.iter().map(|n| format!("node{n}")).collect(),
            local: Some(local),
            work,
        };
        let result = async {
            cluster.wait_for_nodes().await?;
            cluster.apply(&config::coredns(COREDNS_IMAGE)).await?;
            cluster.apply(&config::local_pvs(STORAGE_CLASS, &pvs, true, &options.pv_capacity)).await?;
            cluster.wait_for_deployment("kube-system", "coredns").await
        }
        .await;
        result.map_err(|e| cluster.startup_error(e))?;
        Ok(cluster)
    }

    async fn external(kubeconfig: PathBuf, options: ClusterBuilder, work: tempfile::TempDir) -> Result<Self> {
        let client = client_from_kubeconfig_file(&kubeconfig).await?;
        let mut nodes: Vec<String> = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .context("listing the nodes of KUBECONFIG's cluster")?
            .items
            .into_iter()
            // Control-plane nodes (tainted NoSchedule) run no workloads.
            .filter(|n| {
                !n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.effect == "NoSchedule"))
            })
            .filter_map(|n| n.metadata.name)
            .collect();
        nodes.sort();
        let pv_nodes: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !options.without_pv.contains(&(i + 1)))
            .map(|(_, n)| n.clone())
            .collect();
        let pvs: Vec<(String, String)> =
            pv_nodes.iter().map(|n| (n.clone(), format!("/var/lib/blockproxy-kind-tests/{n}"))).collect();
        let cluster = Self { client, kubeconfig, nodes, pv_nodes, local: None, work };
        cluster.apply(&config::local_pvs(STORAGE_CLASS, &pvs, false, &options.pv_capacity)).await?;
        Ok(cluster)
    }

    fn startup_error(&self, error: anyhow::Error) -> anyhow::Error {
        match &self.local {
            Some(local) => anyhow!(
                "the cluster did not come up: {error:#}\nlogs in {} and {}/node*/:\n{}",
                local.logs.path().display(),
                local.dir.path().display(),
                local.logs.tail(20)
            ),
            None => error,
        }
    }

    /// An admin client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig (for kubectl, helm).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The nodes' names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The nodes that have a `local-nvme` PV.
    pub fn pv_nodes(&self) -> &[String] {
        &self.pv_nodes
    }

    /// Whether this is a cluster the test environment started (not `KUBECONFIG`'s).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The folder with the cluster's logs (a local cluster only).
    pub fn log_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.logs.path())
    }

    /// The kubelet's log of node `n` (1-based, as the node names), for a local cluster only.
    pub fn kubelet_log(&self, n: usize) -> Option<std::path::PathBuf> {
        self.local.as_ref().map(|l| l.node_dir(n).join("kubelet.log"))
    }

    /// The resident memory of a local cluster: the sum of VmRSS over every process in its PID
    /// namespace (control plane, kubelets, containerd, shims) and their descendants (the
    /// containers), with the number of processes. `None` for an external cluster.
    pub fn memory(&self) -> Option<(u64, usize)> {
        let local = self.local.as_ref()?;
        Some(local::tree_rss(local.ns_pid))
    }

    /// Kills (SIGKILL) the processes named `command` in the Pod `pod_uid`, as a crash would: the
    /// kubelet then restarts the container in the same Pod. Local clusters only (the processes
    /// are found through their cgroup, which names the Pod). Returns the pids killed.
    pub async fn kill_in_pod(&self, pod_uid: &str, command: &str) -> Result<Vec<u32>> {
        anyhow::ensure!(self.local.is_some(), "killing a container's process needs a local cluster");
        let pids = pod_pids(pod_uid, Some(command))?;
        anyhow::ensure!(!pids.is_empty(), "no process {command:?} in Pod {pod_uid}");
        for pid in &pids {
            run("kill", &["-KILL".to_owned(), pid.to_string()]).await?;
        }
        Ok(pids)
    }

    /// Runs `program args` (a host tool such as `iptables`) in the network namespace of the Pod
    /// `pod_uid`, to cut or redirect that Pod's own traffic as a network fault would. Local
    /// clusters only (the namespace is entered through one of the Pod's processes).
    pub async fn in_pod_network(&self, pod_uid: &str, program: &str, args: &[&str]) -> Result<String> {
        anyhow::ensure!(self.local.is_some(), "entering a Pod's network needs a local cluster");
        let pid = *pod_pids(pod_uid, None)?.first().with_context(|| format!("no process in Pod {pod_uid}"))?;
        let mut full = vec!["-t".to_owned(), pid.to_string(), "--net".into(), "--".into(), program.into()];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        run("nsenter", &full).await
    }

    /// A StorageClass `class` with one static PV (`<class>-<node>`) on each of `nodes`, beside the
    /// `local-nvme` ones: for a second ProxyGroup on nodes whose `local-nvme` PV is taken.
    pub async fn add_pvs(&self, class: &str, nodes: &[&str]) -> Result<()> {
        let mut pvs = Vec::new();
        for node in nodes {
            let path = match &self.local {
                Some(local) => {
                    let dir = local.dir.path().join("pv").join(format!("{class}-{node}"));
                    std::fs::create_dir_all(&dir)?;
                    dir.display().to_string()
                }
                None => format!("/var/lib/blockproxy-kind-tests/{class}-{node}"),
            };
            pvs.push(((*node).to_owned(), path));
        }
        self.apply(&config::local_pvs(class, &pvs, self.local.is_some(), "1Gi")).await
    }

    /// Runs kubectl with the admin kubeconfig; a failure carries its output.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["--kubeconfig".to_owned(), self.kubeconfig.display().to_string()];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        run(&tool_path(Tool::Kubectl)?.display().to_string(), &full).await
    }

    /// `kubectl apply` of a YAML text (server-side, so re-applying is harmless).
    pub async fn apply(&self, yaml: &str) -> Result<()> {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile_in(self.work.path())?;
        std::fs::write(file.path(), yaml)?;
        let path = file.path().display().to_string();
        self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path]).await.map(drop)
    }

    /// Imports an image tarball (`docker save` format) into every node.
    pub async fn import_image(&self, tarball: &Path) -> Result<()> {
        let tarball = tarball.canonicalize().with_context(|| format!("{}", tarball.display()))?;
        let file = tarball.display().to_string();
        match &self.local {
            Some(local) => {
                let ctr = tool_path(Tool::Containerd)?.with_file_name("ctr").display().to_string();
                let args = ["--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "import", &file];
                let imports = (1..=self.nodes.len()).map(|n| local.run_in_node(n, &ctr, &args));
                futures::future::try_join_all(imports).await.with_context(|| format!("importing {file}"))?;
                Ok(())
            }
            None => match std::env::var("BLOCKPROXY_KIND_CLUSTER") {
                Ok(name) if !name.is_empty() => {
                    run("kind", &["load".into(), "image-archive".into(), file, "--name".into(), name]).await.map(drop)
                }
                _ => bail!(
                    "cannot load {file} into KUBECONFIG's cluster: set BLOCKPROXY_KIND_CLUSTER to the kind cluster's \
                     name, or load the image into every node yourself"
                ),
            },
        }
    }

    /// Packs `binaries` (with their shared libraries) as the image `reference` whose entrypoint is
    /// `entrypoint`, with `hack/image.sh`, and imports it into every node.
    pub async fn import_binaries(&self, reference: &str, entrypoint: &str, binaries: &[&Path]) -> Result<()> {
        let out = self.work.path().join(format!("{}.tar", reference.replace(['/', ':'], "_")));
        pack_binaries(reference, &out, entrypoint, binaries).await?;
        self.import_image(&out).await
    }

    /// A loopback address forwarding to `ip:port` inside a local cluster (a Pod or Service IP).
    pub async fn forward(&self, ip: Ipv4Addr, port: u16) -> Result<Forward> {
        let local = self.local.as_ref().ok_or_else(|| anyhow!("forwarding needs a local cluster"))?;
        let socket = local.dir.path().join(format!("fwd-{ip}-{port}.sock"));
        Forward::start(local.ns_pid, SocketAddrV4::new(ip, port), socket, &local.logs).await
    }

    async fn wait_for_nodes(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        eventually(READY_TIMEOUT, Duration::from_millis(250), || async {
            if let Some(local) = &self.local {
                local.ensure_running()?;
            }
            let list = api.list(&ListParams::default()).await?;
            let ready: Vec<&str> = list
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            if ready.len() < self.nodes.len() {
                bail!("{} of {} nodes Ready: {ready:?}", ready.len(), self.nodes.len());
            }
            Ok(())
        })
        .await
    }

    /// Waits until a Deployment has all its replicas available.
    pub async fn wait_for_deployment(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        eventually(READY_TIMEOUT, Duration::from_millis(250), || async {
            let d = api.get(name).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
            if available < want {
                bail!("deployment {namespace}/{name}: {available} of {want} replicas available");
            }
            Ok(())
        })
        .await
    }
}

/// `KUBECONFIG`, when set and non-empty.
fn external_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Packs an image with `hack/image.sh binaries`.
pub async fn pack_binaries(reference: &str, out: &Path, entrypoint: &str, binaries: &[&Path]) -> Result<()> {
    let mut args = vec!["binaries".to_owned(), reference.to_owned(), out.display().to_string(), entrypoint.to_owned()];
    args.extend(binaries.iter().map(|b| b.display().to_string()));
    run(&image_script().display().to_string(), &args).await.map(drop)
}

/// The images every node imports before kubelet starts: pause (the sandbox), busybox, CoreDNS.
async fn base_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let pause = dir.join("pause.tar");
    pack_binaries(config::PAUSE_IMAGE, &pause, "/usr/local/bin/pause", &[&tool_path(Tool::Pause)?]).await?;
    let busybox = dir.join("busybox.tar");
    pack_binaries(BUSYBOX_IMAGE, &busybox, "/bin/sh", &[Path::new("/bin/busybox")]).await?;
    let coredns = dir.join("coredns.tar");
    pack_binaries(COREDNS_IMAGE, &coredns, "/usr/local/bin/coredns", &[&tool_path(Tool::Coredns)?]).await?;
    Ok(vec![pause, busybox, coredns])
}

/// The host pids of the processes of the Pod `pod_uid` (named `command`, if given), found through
/// their cgroup, which names the Pod.
fn pod_pids(pod_uid: &str, command: Option<&str>) -> Result<Vec<u32>> {
    let marks = [format!("pod{pod_uid}"), format!("pod{}", pod_uid.replace('-', "_"))];
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if command.is_none_or(|c| comm.trim() == c) && marks.iter().any(|m| cgroups.contains(m.as_str())) {
            pids.push(pid);
        }
    }
    Ok(pids)
}
