//! Helpers shared by the real-cluster scenarios: the blockproxy image, helm, and a timing report.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use blockproxy_testenv::tools::workspace_root;
use blockproxy_testenv::{Cluster, Helm};

/// The image reference the tests give the packed blockproxy image.
pub const IMAGE: &str = "example.local/blockproxy:test";

/// A packed blockproxy image.
#[derive(Debug)]
pub struct Image {
    /// Its reference (`repository:tag`).
    pub reference: String,
    /// The `docker save` tarball.
    pub tarball: PathBuf,
    _dir: tempfile::TempDir,
}

/// Packs the blockproxy image from the binaries `cargo test` built (`BLOCKPROXY_IMAGE_PROFILE`,
/// default debug) with `hack/image.sh blockproxy`. The binaries must exist: `cargo test
/// --workspace` (make test) builds every binary before it runs any test; for this crate alone,
/// run `cargo build -p blockproxy -p blockproxy-operator` first.
pub async fn blockproxy_image() -> Result<Image> {
    blockproxy_image_as(IMAGE).await
}

/// The same image under another reference (a new tag for `helm upgrade`).
pub async fn blockproxy_image_as(reference: &str) -> Result<Image> {
    let profile = std::env::var("BLOCKPROXY_IMAGE_PROFILE").unwrap_or_else(|_| "debug".into());
    let dir = tempfile::tempdir()?;
    let tarball = dir.path().join("blockproxy.tar");
    let output = tokio::process::Command::new(workspace_root().join("hack/image.sh"))
        .args(["blockproxy", "--profile", &profile, "--ref", reference])
        .arg(&tarball)
        .kill_on_drop(true)
        .output()
        .await
        .context("running hack/image.sh")?;
    if !output.status.success() {
        bail!(
            "hack/image.sh blockproxy failed: {}\n(build the binaries first: cargo build -p blockproxy -p blockproxy-operator)",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(Image { reference: reference.into(), tarball, _dir: dir })
}

/// helm pointed at the cluster.
pub fn helm_for(cluster: &Cluster) -> Result<Helm> {
    Helm::for_kubeconfig(cluster.kubeconfig())
}

/// The chart's folder.
pub fn chart_dir() -> String {
    workspace_root().join("charts/blockproxy").display().to_string()
}

/// Wall times of the steps of a scenario test, printed at the end (and on failure, so far).
#[derive(Debug, Default)]
pub struct Report {
    steps: Vec<(String, Duration, bool)>,
}

impl Report {
    /// Runs `step`, recording its wall time and whether it succeeded.
    pub async fn time<T>(&mut self, name: &str, step: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        eprintln!("real-cluster: {name} ...");
        let result = step.await;
        self.steps.push((name.to_owned(), start.elapsed(), result.is_ok()));
        if result.is_err() {
            self.print();
        }
        result.with_context(|| format!("step {name:?}"))
    }

    /// Prints the cluster's resident memory (local clusters only).
    pub fn print_memory(&self, cluster: &Cluster) {
        if let Some((bytes, processes)) = cluster.memory() {
            eprintln!("real-cluster: memory: {} MiB RSS in {processes} processes", bytes / (1024 * 1024));
        }
    }

    /// Prints every step's wall time.
    pub fn print(&self) {
        for (name, took, ok) in &self.steps {
            eprintln!("real-cluster: {:>7.1}s {} {name}", took.as_secs_f64(), if *ok { "ok  " } else { "FAIL" });
        }
    }
}
