//! Runs `hack/checker` (built and cached by `hack/tools.sh`) on a history.

use super::history::{History, Report};
use anyhow::{Context, Result, bail};
use blockproxy_testenv::{Tool, tool_path};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Porcupine's limit per key; a key that reaches it is `Unknown`, which fails the test.
const PER_KEY_TIMEOUT: &str = "60s";
/// The whole check's bound.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes `history.json` and `report.json` to `out`, and porcupine's picture of every illegal key.
pub async fn check(history: &History, out: &Path) -> Result<Report> {
    let json = serde_json::to_vec(history)?;
    std::fs::write(out.join("history.json"), &json)?;
    let mut child = tokio::process::Command::new(tool_path(Tool::Checker)?)
        .args(["-timeout", PER_KEY_TIMEOUT, "-html"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the history checker")?;
    let mut stdin = child.stdin.take().context("checker stdin")?;
    let feed = async move {
        stdin.write_all(&json).await?;
        drop(stdin);
        anyhow::Ok(())
    };
    let (fed, output) = tokio::time::timeout(CHECK_TIMEOUT, async { tokio::join!(feed, child.wait_with_output()) })
        .await
        .context("the history checker did not finish in time")?;
    fed?;
    let output = output?;
    if !output.status.success() {
        bail!("the history checker failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(out.join("report.json"), &output.stdout)?;
    serde_json::from_slice(&output.stdout).context("parsing the checker's report")
}
