//! Finding the cached binaries that `hack/tools.sh` builds.
//!
//! Each tool is found through its `BLOCKPROXY_*` variable. When the variable is unset, the
//! variables printed by `hack/tools.sh --print-env` (run once, from the workspace root) are used,
//! so `cargo test` works without any setup once `make tools` has run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// A real component built and cached by `hack/tools.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// etcd.
    Etcd,
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// kwok (the simulated-node controller).
    Kwok,
    /// kwokctl.
    Kwokctl,
    /// MinIO server.
    Minio,
    /// toxiproxy-server.
    Toxiproxy,
    /// helm.
    Helm,
    /// The aws CLI (in a Python venv).
    Aws,
    /// Python with boto3 (the same venv).
    Python,
    /// kubelet (a [`crate::Cluster`] node).
    Kubelet,
    /// kube-proxy (a [`crate::Cluster`]'s Services).
    KubeProxy,
    /// kubectl.
    Kubectl,
    /// The pause binary (PID 1 of pod sandboxes and of a [`crate::Cluster`]'s namespaces).
    Pause,
    /// CoreDNS (a [`crate::Cluster`]'s DNS).
    Coredns,
    /// containerd (Debian's package; `ctr` and the runc shim sit next to it).
    Containerd,
    /// The fault test's history checker (`hack/checker`, porcupine).
    Checker,
    /// rclone (Debian's package).
    Rclone,
    /// s3fs-fuse (Debian's package).
    S3fs,
    /// fusermount3 (Debian's fuse3 package), to unmount FUSE file systems.
    Fusermount,
    /// fio, the I/O tester (Debian's package).
    Fio,
    /// Azurite's Blob service (`azurite-blob`, Node).
    Azurite,
    /// fake-gcs-server.
    FakeGcs,
    /// pjdfstest, the POSIX file system test suite (Rust rewrite, from crates.io).
    Pjdfstest,
}

impl Tool {
    /// The environment variable that names this tool's binary.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::Etcd => "BLOCKPROXY_ETCD",
            Tool::KubeApiserver => "BLOCKPROXY_KUBE_APISERVER",
            Tool::KubeControllerManager => "BLOCKPROXY_KUBE_CONTROLLER_MANAGER",
            Tool::KubeScheduler => "BLOCKPROXY_KUBE_SCHEDULER",
            Tool::Kwok => "BLOCKPROXY_KWOK",
            Tool::Kwokctl => "BLOCKPROXY_KWOKCTL",
            Tool::Minio => "BLOCKPROXY_MINIO",
            Tool::Toxiproxy => "BLOCKPROXY_TOXIPROXY",
            Tool::Helm => "BLOCKPROXY_HELM",
            Tool::Aws => "BLOCKPROXY_AWS",
            Tool::Python => "BLOCKPROXY_PYTHON",
            Tool::Kubelet => "BLOCKPROXY_KUBELET",
            Tool::KubeProxy => "BLOCKPROXY_KUBE_PROXY",
            Tool::Kubectl => "BLOCKPROXY_KUBECTL",
            Tool::Pause => "BLOCKPROXY_PAUSE",
            Tool::Coredns => "BLOCKPROXY_COREDNS",
            Tool::Containerd => "BLOCKPROXY_CONTAINERD",
            Tool::Checker => "BLOCKPROXY_CHECKER",
            Tool::Rclone => "BLOCKPROXY_RCLONE",
            Tool::S3fs => "BLOCKPROXY_S3FS",
            Tool::Fusermount => "BLOCKPROXY_FUSERMOUNT",
            Tool::Fio => "BLOCKPROXY_FIO",
            Tool::Azurite => "BLOCKPROXY_AZURITE",
            Tool::FakeGcs => "BLOCKPROXY_FAKEGCS",
            Tool::Pjdfstest => "BLOCKPROXY_PJDFSTEST",
        }
    }

    /// How `make tools` provides it, for the error when it is missing.
    fn install_hint(self) -> &'static str {
        match self {
            Tool::Rclone | Tool::S3fs | Tool::Fusermount | Tool::Fio => {
                "run `hack/tools.sh clientpkgs` as root (apt-get install of rclone, s3fs, fuse3 and fio)"
            }
            Tool::Containerd => "run `hack/tools.sh nodepkgs` as root (apt-get install of containerd and friends)",
            _ => "run `make tools` (hack/tools.sh) to build the test components",
        }
    }
}

/// The workspace root (where `Cargo.toml`, `hack/` and `target/` live).
pub fn workspace_root() -> PathBuf {
    // This crate lives in <root>/kind-tests/testenv.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The absolute path of `tool`'s binary, or an error that says to run `make tools`.
pub fn tool_path(tool: Tool) -> Result<PathBuf> {
    let var = tool.env_var();
    let path = match std::env::var_os(var) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => match printed_env()?.get(var) {
            Some(value) => PathBuf::from(value),
            None => bail!("{var} is unset and `hack/tools.sh --print-env` does not print it"),
        },
    };
    if !path.is_file() {
        bail!("{tool:?} not found at {} ({var}); {}", path.display(), tool.install_hint());
    }
    Ok(path)
}

/// The variables of `hack/tools.sh --print-env`, read once per test process.
fn printed_env() -> Result<&'static HashMap<String, String>> {
    static ENV: OnceLock<Result<HashMap<String, String>, String>> = OnceLock::new();
    ENV.get_or_init(|| read_printed_env().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn read_printed_env() -> Result<HashMap<String, String>> {
    let root = workspace_root();
    let script = root.join("hack/tools.sh");
    let output = Command::new(&script)
        .arg("--print-env")
        .current_dir(&root)
        .output()
        .with_context(|| format!("running {} --print-env; run `make tools`", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} --print-env failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_env(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `export NAME=value` lines.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_lines() {
        let env = parse_env("export A=/x/y\nB=\"/z\"\n\n# comment\n");
        assert_eq!(env.get("A").map(String::as_str), Some("/x/y"));
        assert_eq!(env.get("B").map(String::as_str), Some("/z"));
        assert_eq!(env.len(), 2);
    }
}
