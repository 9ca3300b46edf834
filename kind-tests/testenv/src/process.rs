//! Spawning a component's process, with its output in a log file, and stopping it on drop.
//!
//! Every process runs under a tiny `sh` watchdog (see [`WATCHDOG`]). The watchdog holds the read
//! end of a pipe whose only write end is this test process's `ChildStdin`. When the component is
//! dropped, or when the test process dies for any reason (panic, abort, SIGKILL), the pipe closes
//! and the watchdog kills the process with SIGKILL. So no component outlives its test.
//!
//! The watchdog also writes the component's own pid to `<logs>/<name>.pid`, so a test can signal
//! the component itself ([`Process::signal`], e.g. SIGTERM for a graceful stop) and wait for its
//! exit status ([`Process::wait_exit`]). When the component exits by itself, the watchdog stops
//! its killer first, so a later drop never signals a recycled pid.
//!
//! Residual case: the watchdog's own `sh` can be SIGKILLed by someone else; then nothing watches
//! the component any more. Nothing in the tests does that.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::eventually::Fatal;
use crate::logs::{LogDir, tail_of_file};

/// `sh -c` script (`$1` = the pid file, the rest = the command): runs the command in the
/// background with stdin from /dev/null, writes its pid, and kills it when its own stdin (our
/// pipe) reaches end of file. It exits with the process's exit status.
const WATCHDOG: &str = r#"pidfile=$1; shift
exec 3<&0 0</dev/null
"$@" 3<&- &
pid=$!
echo "$pid" > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
{ cat <&3 >/dev/null 2>&1; kill -KILL "$pid" 2>/dev/null; } &
killer=$!
exec 3<&-
wait "$pid"
status=$?
kill "$killer" 2>/dev/null
exit "$status"
"#;

/// How long the watchdog may take to write the component's pid.
const PID_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a dropped process may take to exit before its watchdog is killed too.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running component process; it is killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Mutex<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    pid_file: PathBuf,
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
        let pid_file = logs.path().join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pid_file);
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
            .arg(&pid_file)
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
        Ok(Self { name: name.to_owned(), child: Mutex::new(child), stdin, log, pid_file })
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

    /// The component's own pid (not the watchdog's), once the watchdog has written it.
    pub fn pid(&self) -> Result<u32> {
        let deadline = Instant::now() + PID_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.pid_file)
                && let Ok(pid) = text.trim().parse()
            {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                bail!("{}: no pid in {} after {PID_TIMEOUT:?}", self.name, self.pid_file.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (a name `kill -s` knows: `TERM`, `INT`, `KILL`, `STOP`, ...) to the
    /// component. Fails when it has already exited.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.ensure_running()?;
        let pid = self.pid()?.to_string();
        let status =
            Command::new("kill").args(["-s", signal, &pid]).stderr(Stdio::null()).status().context("running kill")?;
        if !status.success() {
            bail!("kill -s {signal} {pid} ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    /// The exit status, when the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its exit status (as the
    /// watchdog reports it: a death by signal N is the code 128 + N).
    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}; log {}", self.name, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
