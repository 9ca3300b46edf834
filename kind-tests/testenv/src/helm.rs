//! Running the cached helm binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::control_plane::ControlPlane;
use crate::tools::{Tool, tool_path};

/// The output of a successful helm run.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// The cached helm binary, with its own config/cache/data folders (the user's are never used)
/// and, optionally, `KUBECONFIG` pointing at a [`ControlPlane`].
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    kubeconfig: Option<PathBuf>,
    home: TempDir,
}

impl Helm {
    /// helm without a cluster (`helm lint`, `helm template`, `helm version`).
    pub fn new() -> Result<Self> {
        Ok(Self {
            binary: tool_path(Tool::Helm)?,
            kubeconfig: None,
            home: tempfile::Builder::new().prefix("testenv-helm-").tempdir()?,
        })
    }

    /// helm that talks to `control_plane` as its admin.
    pub fn for_control_plane(control_plane: &ControlPlane) -> Result<Self> {
        let mut helm = Self::new()?;
        helm.kubeconfig = Some(control_plane.kubeconfig().to_path_buf());
        Ok(helm)
    }

    /// helm that talks to the cluster of `kubeconfig` (e.g. a [`crate::Cluster`]'s).
    pub fn for_kubeconfig(kubeconfig: &Path) -> Result<Self> {
        let mut helm = Self::new()?;
        helm.kubeconfig = Some(kubeconfig.to_path_buf());
        Ok(helm)
    }

    /// The helm binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Runs `helm <args>` and returns its output; a non-zero exit is an error with stderr.
    pub async fn run<I, S>(&self, args: I) -> Result<HelmOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(&args)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .kill_on_drop(true);
        match &self.kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env("KUBECONFIG", self.home.path().join("no-kubeconfig")),
        };
        let output = command.output().await.with_context(|| format!("running helm {args:?}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            bail!("helm {args:?} failed ({}):\n{stderr}\n{stdout}", output.status);
        }
        Ok(HelmOutput { stdout, stderr })
    }
}
