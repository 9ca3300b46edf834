//! Per-test log folders, printed when a test fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

use crate::tools::workspace_root;

/// How many lines of each log a failure report shows.
const TAIL_LINES: usize = 40;

/// A folder `target/testenv-logs/<test-name>-<pid>-<n>/` that holds one component's logs.
///
/// The test name is the current thread's name, which libtest sets to the test's path. The folder's
/// path is printed when it is created; libtest captures that output and shows it only for a
/// failing test (one that panics or returns `Err`). When the folder is dropped while the thread
/// panics, it also prints the tail of every log in it.
#[derive(Debug)]
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    /// Creates a new, empty log folder for the current test.
    pub fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let test = sanitize(thread.name().unwrap_or("unnamed"));
        let path = target_dir().join("testenv-logs").join(format!("{test}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating log folder {}", path.display()))?;
        eprintln!("testenv: component logs in {}", path.display());
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the log file for the process `name`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }

    /// The last `lines` lines of every `*.log` file in the folder, each under a header.
    pub fn tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "log")) {
            let _ = writeln!(out, "---- {} (last {lines} lines) ----", file.display());
            out.push_str(&tail_of_file(file, lines));
        }
        out
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testenv: the test failed; component logs are in {}\n{}",
                self.path.display(),
                self.tail(TAIL_LINES)
            );
        }
    }
}

/// The last `lines` lines of a file (empty when it cannot be read).
pub(crate) fn tail_of_file(file: &Path, lines: usize) -> String {
    let text = std::fs::read(file).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// `CARGO_TARGET_DIR` when set, otherwise `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
