//! Spawning a component's process, with its output in a log file, and stopping it on drop.
//!
//! Every process runs under a tiny `sh` watchdog (see [`WATCHDOG`]). The watchdog holds the read
//! end of a pipe whose only write end is this test process's `ChildStdin`. When the component is
//! dropped, or when the test process dies for any reason (panic, abort, SIGKILL), the pipe closes
//! and the watchdog kills the process with SIGKILL. So no component outlives its test.
//!
//! Residual case: the watchdog's own `sh` can be SIGKILLed by someone else; then nothing watches
//! the component any more. Nothing in the tests does that.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::eventually::Fatal;
use crate::logs::{LogDir, tail_of_file};

/// `sh -c` script: runs `"$@"` in the background with stdin from /dev/null, and kills it when
/// its own stdin (our pipe) reaches end of file. It exits with the process's exit status.
const WATCHDOG: &str = r#"exec 3<&0 0</dev/null
"$@" 3<&- &
pid=$!
{ cat <&3 >/dev/null 2>&1; kill -KILL "$pid" 2>/dev/null; } &
exec 3<&-
wait "$pid"
"#;

/// How long a dropped process may take to exit before its watchdog is killed too.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running component process; it is killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Mutex<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and extra `env`, its stdout and stderr going to
    /// `<logs>/<name>.log`.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, env: &[(&str, &str)], logs: &LogDir) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = logs.log_file(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stderr = file.try_clone().context("cloning the log file handle")?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg(format!("testenv-watchdog-{name}"))
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        let stdin = child.stdin.take();
        Ok(Self { name: name.to_owned(), child: Mutex::new(child), stdin, log })
    }

    /// The process's name (its log is `<name>.log`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// A [`Fatal`] error (with the log tail) when the process has already exited.
    pub fn ensure_running(&self) -> Result<()> {
        let status = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
        match status {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Fatal(anyhow!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail_of_file(&self.log, 40)
            ))
            .into()),
            Err(e) => Err(e).context(format!("checking whether {} runs", self.name)),
        }
    }

    /// Stops the process (SIGKILL via the watchdog) and waits for it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        // Closing the pipe makes the watchdog kill the process; `sh` then exits with its status.
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
