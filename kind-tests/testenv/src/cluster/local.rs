//! A real multi-node cluster on this machine, without Docker: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, and per node a kubelet with containerd, runc and the
//! CNI bridge plugin, plus one kube-proxy and CoreDNS.
//!
//! Everything runs inside one private network + mount + PID namespace whose PID 1 is the pause
//! binary. Dropping the cluster SIGKILLs that PID 1, and the kernel then kills every process of the
//! namespace (shims and containers too); its mounts vanish with it. When the test process dies
//! instead, its watchdog kills `unshare`, which was started with `--kill-child=SIGTERM`: pause exits
//! on SIGTERM (a namespace's init ignores a parent-death SIGKILL, as it has no handler for it). Nothing touches the host's
//! network, /run, /var/lib or sysctls. Each node has its own mount namespace where /run is a tmpfs
//! and /var/lib a folder of its own, because containerd, kubelet and the CNI plugins hard-wire paths
//! there. The layout follows the verified recipe in the README's "Kubernetes" section.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use super::config::{self, API_IP, SERVICE_IP, SERVICE_RANGE, node_ip};
use super::forward::Forward;
use super::pki::ClusterPki;
use crate::control_plane::client_from_kubeconfig_file;
use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::process::Process;
use crate::tools::{Tool, tool_path, workspace_root};

/// How long a one-shot command inside the namespace (ip, mount, ctr import) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Sysctls kubelet would otherwise write host-wide (they are not namespaced): inside the cluster's
/// mount namespace, regular files holding the values kubelet wants are bound over them.
const MASKED_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The running local cluster; dropping it stops everything and removes its cgroups and files.
pub struct LocalCluster {
    // Drop order: the forwards, then the namespace (which kills every process in it), then the
    // processes' handles, then cgroups (in Drop) and files.
    pub(super) api_forward: Option<Forward>,
    namespace: Option<Process>,
    daemons: Vec<Process>,
    pause: PathBuf,
    marker: String,
    pub(super) ns_pid: u32,
    pub(super) nodes: usize,
    pub(super) pki: ClusterPki,
    cgroup_root: String,
    pub(super) dir: TempDir,
    pub(super) logs: LogDir,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("nodes", &self.nodes)
            .field("dir", &self.dir.path())
            .field("logs", &self.logs.path())
            .finish()
    }
}

impl LocalCluster {
    /// Starts the namespace, the control plane and `nodes` nodes (without waiting for them to be
    /// Ready; see [`super::Cluster::start`]).
    pub async fn start(nodes: usize, base_images: &[PathBuf], logs: LogDir) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpcluster-").tempdir_in("/tmp")?;
        let pki = ClusterPki::generate(&dir.path().join("pki"), API_IP, SERVICE_IP, nodes)?;
        let cgroup_root = format!("blockproxy-kt-{}", dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("x"));
        remove_stale_cgroups();
        make_cgroups(&cgroup_root, nodes)?;

        // The namespace; a marker argument (pause ignores it) finds its PID 1 on the host.
        let pause = tool_path(Tool::Pause)?;
        let marker = cgroup_root.clone();
        let namespace = Process::spawn(
            "namespace",
            Path::new("unshare"),
            [
                "--net",
                "--mount",
                "--pid",
                "--kill-child=SIGTERM",
                "--mount-proc",
                "--propagation",
                "private",
                &pause.display().to_string(),
                &marker,
            ],
            &[],
            &logs,
        )?;
        let ns_pid = eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
            namespace.ensure_running()?;
            find_process(&pause, &marker).ok_or_else(|| anyhow!("the namespace's init has not started"))
        })
        .await
        .context("starting the cluster's namespace (unshare)")?;

        let mut cluster = Self {
            api_forward: None,
            namespace: Some(namespace),
            daemons: Vec::new(),
            pause,
            marker,
            ns_pid,
            nodes,
            pki,
            cgroup_root,
            dir,
            logs,
        };
        cluster.setup_namespace().await?;
        cluster.start_control_plane().await?;
        for n in 1..=nodes {
            cluster.start_node(n, base_images)?;
        }
        Ok(cluster)
    }

    /// `nsenter` into the cluster's namespaces, running `program`.
    fn in_ns(&self, program: &Path) -> Vec<String> {
        vec![
            "-t".into(),
            self.ns_pid.to_string(),
            "--net".into(),
            "--mount".into(),
            "--pid".into(),
            "--".into(),
            program.display().to_string(),
        ]
    }

    /// Runs a command inside the cluster's namespaces and fails with its output when it fails.
    pub(super) async fn run_in_ns(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = self.in_ns(Path::new(program));
        full.extend(args.iter().map(|a| (*a).to_owned()));
        run("nsenter", &full).await
    }

    /// Runs a command in node `n`'s mount namespace.
    pub(super) async fn run_in_node(&self, n: usize, program: &str, args: &[&str]) -> Result<String> {
        let pid_file = self.node_dir(n).join("nspid");
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("node{n} has not started ({})", pid_file.display()))?;
        let mut full = self.in_ns(Path::new("nsenter"));
        full.extend(["-t".into(), pid.trim().to_owned(), "--mount".into(), "--".into(), program.into()]);
        full.extend(args.iter().map(|a| (*a).to_owned()));
        run("nsenter", &full).await
    }

    fn spawn_in_ns(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<()> {
        let mut full = self.in_ns(program);
        full.extend(args);
        self.daemons.push(Process::spawn(name, Path::new("nsenter"), full, &[], &self.logs)?);
        Ok(())
    }

    async fn setup_namespace(&self) -> Result<()> {
        // lo, and a veth pair holding one address per node, with the default route into it.
        self.run_in_ns("ip", &["link", "set", "lo", "up"]).await?;
        self.run_in_ns("ip", &["link", "add", "kt0", "type", "veth", "peer", "name", "kt0p"]).await?;
        self.run_in_ns("ip", &["link", "set", "kt0p", "up"]).await?;
        self.run_in_ns("ip", &["link", "set", "kt0", "up"]).await?;
        for n in 1..=self.nodes.max(1) {
            self.run_in_ns("ip", &["addr", "add", &format!("{}/24", node_ip(n)), "dev", "kt0"]).await?;
        }
        self.run_in_ns("ip", &["route", "add", "default", "dev", "kt0"]).await?;
        let sysctl_dir = self.dir.path().join("sysctl");
        std::fs::create_dir_all(&sysctl_dir)?;
        for (key, value) in MASKED_SYSCTLS {
            let file = sysctl_dir.join(key.replace('/', "_"));
            std::fs::write(&file, format!("{value}\n"))?;
            let file = file.display().to_string();
            self.run_in_ns("mount", &["--bind", &file, &format!("/proc/sys/{key}")]).await?;
        }
        Ok(())
    }

    async fn start_control_plane(&mut self) -> Result<()> {
        let d = |p: &Path| p.display().to_string();
        let pki = self.pki.clone();
        let etcd_dir = self.dir.path().join("etcd");
        self.spawn_in_ns(
            "etcd",
            &tool_path(Tool::Etcd)?,
            vec![
                "--name=cluster".into(),
                format!("--data-dir={}", d(&etcd_dir)),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=cluster=http://127.0.0.1:2380".into(),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        self.spawn_in_ns(
            "kube-apiserver",
            &tool_path(Tool::KubeApiserver)?,
            vec![
                "--etcd-servers=http://127.0.0.1:2379".into(),
                format!("--advertise-address={API_IP}"),
                "--bind-address=0.0.0.0".into(),
                "--secure-port=6443".into(),
                format!("--tls-cert-file={}", d(&pki.file("apiserver.crt"))),
                format!("--tls-private-key-file={}", d(&pki.file("apiserver.key"))),
                format!("--client-ca-file={}", d(&pki.ca_cert)),
                format!("--service-account-key-file={}", d(&pki.sa_pub)),
                format!("--service-account-signing-key-file={}", d(&pki.sa_key)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!("--kubelet-client-certificate={}", d(&pki.file("apiserver-kubelet-client.crt"))),
                format!("--kubelet-client-key={}", d(&pki.file("apiserver-kubelet-client.key"))),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--allow-privileged=true".into(),
            ],
        )?;
        // The API server is reached from the test process through a forward.
        let socket = self.dir.path().join("apiserver.sock");
        let forward = Forward::start(self.ns_pid, SocketAddrV4::new(API_IP, 6443), socket, &self.logs).await?;
        std::fs::write(self.host_kubeconfig(), pki.kubeconfig_for("admin", &format!("https://{}", forward.addr())))?;
        self.api_forward = Some(forward);
        // The controllers need the bootstrap RBAC policies, which exist once /readyz passes.
        let client = client_from_kubeconfig_file(&self.host_kubeconfig()).await?;
        eventually(Duration::from_secs(120), Duration::from_millis(200), || async {
            self.ensure_running()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            client.request_text(request).await.context("GET /readyz")?;
            Ok(())
        })
        .await
        .context("waiting for kube-apiserver /readyz")?;

        let kcm = pki.kubeconfig("controller-manager");
        self.spawn_in_ns(
            "kube-controller-manager",
            &tool_path(Tool::KubeControllerManager)?,
            vec![
                format!("--kubeconfig={}", d(&kcm)),
                format!("--authentication-kubeconfig={}", d(&kcm)),
                format!("--authorization-kubeconfig={}", d(&kcm)),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", d(&pki.sa_key)),
                format!("--root-ca-file={}", d(&pki.ca_cert)),
                format!("--cluster-signing-cert-file={}", d(&pki.ca_cert)),
                format!("--cluster-signing-key-file={}", d(&pki.ca_key)),
            ],
        )?;
        let scheduler = pki.kubeconfig("scheduler");
        self.spawn_in_ns(
            "kube-scheduler",
            &tool_path(Tool::KubeScheduler)?,
            vec![
                format!("--kubeconfig={}", d(&scheduler)),
                format!("--authentication-kubeconfig={}", d(&scheduler)),
                format!("--authorization-kubeconfig={}", d(&scheduler)),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
            ],
        )?;
        Ok(())
    }

    /// The admin kubeconfig for the test process (through the API server's forward).
    pub(super) fn host_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin-host.kubeconfig")
    }

    /// Node `n`'s folder (configs, logs of containerd/kubelet, its /var/lib).
    pub(super) fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    /// The folder backing node `n`'s local PV (created by [`super::Cluster`]).
    pub(super) fn pv_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join("pv").join(format!("node{n}"))
    }

    fn start_node(&mut self, n: usize, base_images: &[PathBuf]) -> Result<()> {
        let dir = self.node_dir(n);
        std::fs::create_dir_all(dir.join("var-lib"))?;
        std::fs::create_dir_all(dir.join("net.d"))?;
        let containerd = tool_path(Tool::Containerd)?;
        let cni_bin = std::env::var_os("BLOCKPROXY_CNI_BIN_DIR").map(PathBuf::from).unwrap_or("/usr/lib/cni".into());
        std::fs::write(dir.join("containerd.toml"), config::containerd(&dir, &cni_bin))?;
        std::fs::write(dir.join("net.d/10-node.conflist"), config::cni(n))?;
        std::fs::write(dir.join("kubelet.yaml"), config::kubelet(n, &self.cgroup_root, &self.pki.ca_cert))?;
        let kube_proxy = if n == 1 {
            std::fs::write(dir.join("kube-proxy.yaml"), config::kube_proxy(&self.pki.kubeconfig("kube-proxy")))?;
            tool_path(Tool::KubeProxy)?.display().to_string()
        } else {
            String::new()
        };
        let images: Vec<String> = base_images.iter().map(|p| p.display().to_string()).collect();
        let args = vec![
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            NODE_SCRIPT.into(),
            format!("node{n}"),
            dir.display().to_string(),
            n.to_string(),
            containerd.display().to_string(),
            tool_path(Tool::Kubelet)?.display().to_string(),
            self.pki.kubeconfig(&format!("node{n}")).display().to_string(),
            node_ip(n).to_string(),
            kube_proxy,
            images.join(" "),
        ];
        let unshare = Path::new("unshare");
        self.spawn_in_ns(&format!("node{n}"), unshare, args)
    }

    /// A [`crate::eventually::Fatal`] error when a daemon has exited.
    pub(super) fn ensure_running(&self) -> Result<()> {
        for p in self.namespace.iter().chain(&self.daemons) {
            p.ensure_running()?;
        }
        Ok(())
    }
}

/// Runs in node N's own mount namespace (nested in the cluster's): /run a tmpfs, /var/lib the
/// node's folder; then containerd, the base images, kubelet (and on node1 the one kube-proxy).
/// Args: dir n containerd kubelet kubeconfig ip kube-proxy images.
const NODE_SCRIPT: &str = r#"set -eu
D=$1 n=$2 containerd=$3 kubelet=$4 kubeconfig=$5 ip=$6 kube_proxy=$7 images=$8
mount -t tmpfs -o mode=755 tmpfs /run
mount --bind "$D/var-lib" /var/lib
mkdir -p /var/lib/kubelet /var/lib/pod-logs
# A shared mount, as on a real node: a CSI plugin's Bidirectional mounts under the kubelet's
# directory (the mount sidecar's FUSE volume) reach the Pods that use them.
mount --bind /var/lib/kubelet /var/lib/kubelet
mount --make-rshared /var/lib/kubelet
ctr="$(dirname "$containerd")/ctr --address /run/containerd/containerd.sock"
"$containerd" --config "$D/containerd.toml" > "$D/containerd.log" 2>&1 &
i=0
until $ctr version >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "containerd did not start; see $D/containerd.log"; exit 1; }
  sleep 0.1
done
for img in $images; do $ctr -n k8s.io images import "$img" >/dev/null; done
echo $$ > "$D/nspid"
"$kubelet" --config "$D/kubelet.yaml" --kubeconfig "$kubeconfig" --hostname-override "node$n" \
  --node-ip "$ip" --v=2 > "$D/kubelet.log" 2>&1 &
if [ -n "$kube_proxy" ]; then
  "$kube_proxy" --config "$D/kube-proxy.yaml" --hostname-override "node$n" > "$D/kube-proxy.log" 2>&1 &
fi
echo "node$n started"
wait
"#;

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.api_forward.take();
        // SIGKILL from the parent namespace reaches the namespace's init; the kernel kills the rest.
        if find_process(&self.pause, &self.marker) == Some(self.ns_pid) {
            let _ = std::process::Command::new("kill").args(["-KILL", &self.ns_pid.to_string()]).status();
        }
        self.namespace.take();
        self.daemons.clear();
        remove_cgroups(&self.cgroup_root);
    }
}

/// The cgroup v1 hierarchies kubelet needs its cgroupRoot in.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("cgroup.procs").exists() && !p.ends_with("unified"))
                .collect()
        })
        .unwrap_or_default()
}

/// `/<root>/nodeN` in every hierarchy (cpuset ones filled in from the parent, or no task could
/// join them).
fn make_cgroups(root: &str, nodes: usize) -> Result<()> {
    for h in cgroup_hierarchies() {
        let mut dirs = vec![h.join(root)];
        dirs.extend((1..=nodes).map(|n| h.join(root).join(format!("node{n}"))));
        for d in dirs {
            std::fs::create_dir_all(&d).with_context(|| format!("creating cgroup {}", d.display()))?;
            if d.join("cpuset.cpus").exists() {
                let parent = d.parent().unwrap_or(&h);
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(f))?;
                    std::fs::write(d.join(f), value).with_context(|| format!("writing {}/{f}", d.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the (empty, once the namespace is gone) cgroups of a cluster, deepest first. The
/// kernel may need a moment to empty them after the kill, hence the bounded retry.
fn remove_cgroups(root: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for h in cgroup_hierarchies() {
        let top = h.join(root);
        while top.exists() {
            remove_tree(&top);
            if std::time::Instant::now() > deadline {
                eprintln!("testenv: could not remove cgroup {}", top.display());
                break;
            }
            if top.exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Cgroups of clusters whose test process was killed (their folder in /tmp is gone too only
/// when the cluster was dropped; a missing folder means the cluster is dead).
fn remove_stale_cgroups() {
    for h in cgroup_hierarchies() {
        let Ok(entries) = std::fs::read_dir(&h) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(dir) = name.strip_prefix("blockproxy-kt-")
                && !Path::new("/tmp").join(dir).exists()
            {
                remove_tree(&entry.path());
            }
        }
    }
}

/// The host PID of the process running exactly `[program, marker]`.
fn find_process(program: &Path, marker: &str) -> Option<u32> {
    let want = format!("{}\0{marker}\0", program.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (cmdline == want.as_bytes()).then_some(pid)
    })
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; a failure carries its output.
pub(super) async fn run(program: &str, args: &[String]) -> Result<String> {
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow!("{program} {args:?} did not finish within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The folder `hack/image.sh` lives in (for packing test images).
pub(super) fn image_script() -> PathBuf {
    workspace_root().join("hack/image.sh")
}

/// Sum of VmRSS (bytes) and count of the processes in `ns_pid`'s PID namespace and of their
/// descendants (containers live in nested namespaces, children of the shims).
pub(super) fn tree_rss(ns_pid: u32) -> (u64, usize) {
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(ns) = ns_of(&ns_pid.to_string()) else { return (0, 0) };
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{name}/status")) else { continue };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let rss_kib = field("VmRSS:").unwrap_or(0);
        let ppid = field("PPid:").unwrap_or(0);
        let inside = ns_of(&name).as_ref() == Some(&ns);
        procs.push((name.parse::<u64>().unwrap_or(0), ppid, rss_kib, inside));
    }
    let mut members: std::collections::HashSet<u64> = procs.iter().filter(|p| p.3).map(|p| p.0).collect();
    // Descendants: repeat until no process joins (the tree is shallow).
    loop {
        let before = members.len();
        for p in &procs {
            if members.contains(&p.1) {
                members.insert(p.0);
            }
        }
        if members.len() == before {
            break;
        }
    }
    let bytes = procs.iter().filter(|p| members.contains(&p.0)).map(|p| p.2 * 1024).sum();
    (bytes, members.len())
}
