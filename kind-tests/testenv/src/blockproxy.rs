//! The `blockproxy` binaries as every test and benchmark starts them: one builder
//! ([`BlockproxyCommand`]) and one running handle ([`Blockproxy`]), for the proxy (`blockproxy
//! serve`, [`BlockproxyCommand::serve`]) and for the mount sidecar's S3 endpoint
//! (`blockproxy-mount`, [`BlockproxyCommand::mount`]).
//!
//! The binary's path is given by the caller, because `env!("CARGO_BIN_EXE_blockproxy")` exists
//! only in the proxy crate's own test targets. The process runs under the [`Process`] watchdog, so
//! it never outlives its test; each start logs to `<logs>/<name>-<n>.log`, and a failing test
//! prints the tails.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;

/// How a `serve` proxy speaks to its clients.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Plain HTTP (`--no-tls`).
    Off,
    /// A generated self-signed certificate (`<disk-folder>/tls/selfsigned.crt`).
    SelfSigned,
    /// The given PEM certificate and key files.
    Files { cert: PathBuf, key: PathBuf },
}

/// What the start waits for before it returns.
#[derive(Debug, Clone)]
enum Readiness {
    /// `GET <scheme>://<addr><path>` answers 2xx (any certificate is accepted).
    Path(String),
    /// `GET <url>` answers 2xx.
    Url(String),
}

/// How to start one `blockproxy` process. Cheap to clone; change it and restart to apply.
#[derive(Debug, Clone)]
pub struct BlockproxyCommand {
    binary: PathBuf,
    name: String,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    addr: Option<SocketAddr>,
    tls: Tls,
    /// Whether [`BlockproxyCommand::tls`] turns into `serve`'s TLS flags.
    tls_flags: bool,
    readiness: Readiness,
    ready_timeout: Duration,
    poll_interval: Duration,
}

impl BlockproxyCommand {
    /// `blockproxy serve` on a free loopback port, caching in `disk_folder`, logging as text, ready
    /// when `/readyz` answers 200. Add the volumes file, the store and any other flag.
    pub fn serve(binary: impl Into<PathBuf>, name: &str, disk_folder: &Path) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Ok(Self::serve_at(binary, name, addr, disk_folder))
    }

    /// [`BlockproxyCommand::serve`] on a given address (e.g. the one a stopped proxy had).
    pub fn serve_at(binary: impl Into<PathBuf>, name: &str, addr: SocketAddr, disk_folder: &Path) -> Self {
        let mut command = Self::new(binary, name, ["serve"]);
        command.addr = Some(addr);
        command.tls_flags = true;
        command.readiness = Readiness::Path("/readyz".to_owned());
        command = command.arg("--bind-addr").arg(addr.to_string()).arg("--disk-folder").arg(disk_folder);
        command.args(["--log-format", "text"])
    }

    /// `blockproxy-mount` (the sidecar's S3 endpoint, plain HTTP) for `volume` on a free loopback
    /// port, logging as text, ready when `/_blockproxy/readyz` answers 200 (a group was chosen or
    /// the store is reachable). Add the discovery file, the token file and any other flag.
    pub fn mount(binary: impl Into<PathBuf>, name: &str, volume: &str) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Ok(Self::mount_at(binary, name, volume, addr))
    }

    /// [`BlockproxyCommand::mount`] on a given address (e.g. the one a stopped sidecar had).
    pub fn mount_at(binary: impl Into<PathBuf>, name: &str, volume: &str, addr: SocketAddr) -> Self {
        let mut command = Self::new(binary, name, ["--volume-id", volume]);
        command.addr = Some(addr);
        command.tls = Tls::Off;
        command.readiness = Readiness::Path("/_blockproxy/readyz".to_owned());
        command.arg("--listen").arg(addr.to_string()).env("BLOCKPROXY_LOG_FORMAT", "text")
    }

    /// `--discovery-file` and `--token-file` of [`BlockproxyCommand::mount`].
    pub fn discovery(self, discovery_file: &Path, token_file: &Path) -> Self {
        self.arg("--discovery-file").arg(discovery_file).arg("--token-file").arg(token_file)
    }

    /// Any subcommand, with `args` as given; ready as soon as it started, unless
    /// [`BlockproxyCommand::ready_url`] says otherwise.
    pub fn new<I, S>(binary: impl Into<PathBuf>, name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            binary: binary.into(),
            name: name.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            addr: None,
            tls: Tls::SelfSigned,
            tls_flags: false,
            readiness: Readiness::Url(String::new()),
            ready_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
        }
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `--volumes-file`.
    pub fn volumes_file(self, path: &Path) -> Self {
        self.arg("--volumes-file").arg(path)
    }

    /// An S3 store at `endpoint` (path-style), with the given credentials in the environment.
    pub fn s3_store(self, endpoint: &str, access_key: &str, secret_key: &str) -> Self {
        self.args(["--store-endpoint", endpoint, "--store-path-style"])
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
    }

    /// A GCS store at `endpoint` (an emulator such as fake-gcs-server: no credentials).
    pub fn gcs_store(self, endpoint: &str) -> Self {
        self.args(["--store-provider", "gcs", "--store-endpoint", endpoint])
    }

    /// An Azure Blob store at `endpoint` (`http://host:port/<account>` for Azurite), with the
    /// account and its key or SAS in `credentials_file` (see [`crate::Azurite::credentials_yaml`]).
    pub fn azure_store(self, endpoint: &str, credentials_file: &Path) -> Self {
        self.args(["--store-provider", "azure", "--store-endpoint", endpoint, "--store-credentials-file"])
            .arg(credentials_file)
    }

    /// How clients reach it (default: [`Tls::SelfSigned`], as the binary does).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Plain HTTP: shorthand for `.tls(Tls::Off)`.
    pub fn no_tls(self) -> Self {
        self.tls(Tls::Off)
    }

    /// Waits for `GET <url>` to answer 2xx instead of the default readiness check.
    pub fn ready_url(mut self, url: &str) -> Self {
        self.readiness = Readiness::Url(url.to_owned());
        self
    }

    /// Waits for `GET <path>` on the proxy's own address instead of `/readyz`.
    pub fn ready_path(mut self, path: &str) -> Self {
        self.readiness = Readiness::Path(path.to_owned());
        self
    }

    /// How long a start may take (default 30 s) and how often readiness is polled (default 50 ms).
    pub fn ready_within(mut self, timeout: Duration, poll_interval: Duration) -> Self {
        self.ready_timeout = timeout;
        self.poll_interval = poll_interval;
        self
    }

    /// The address `serve` (or `blockproxy-mount`) listens on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The full argument list, with the TLS flags.
    fn full_args(&self) -> Vec<OsString> {
        let mut args = self.args.clone();
        if self.tls_flags {
            match &self.tls {
                Tls::Off => args.push("--no-tls".into()),
                Tls::SelfSigned => {}
                Tls::Files { cert, key } => {
                    args.extend(["--tls-cert-file".into(), cert.clone().into_os_string()]);
                    args.extend(["--tls-key-file".into(), key.clone().into_os_string()]);
                }
            }
        }
        args
    }

    fn ready_url_now(&self) -> Option<String> {
        match &self.readiness {
            Readiness::Url(url) if url.is_empty() => None,
            Readiness::Url(url) => Some(url.clone()),
            Readiness::Path(path) => {
                let scheme = if matches!(self.tls, Tls::Off) { "http" } else { "https" };
                Some(format!("{scheme}://{}{path}", self.addr?))
            }
        }
    }
}

/// A running (or stopped) `blockproxy` process; killed with SIGKILL on drop.
#[derive(Debug)]
pub struct Blockproxy {
    command: BlockproxyCommand,
    process: Option<Process>,
    starts: usize,
    http: reqwest::Client,
    // Dropped last: a failing test prints the tails of its logs.
    logs: LogDir,
}

impl Blockproxy {
    /// Starts the process and waits until it is ready.
    pub async fn start(command: BlockproxyCommand) -> Result<Self> {
        crate::init_crypto();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the readiness HTTP client")?;
        let mut proxy = Self { command, process: None, starts: 0, http, logs: LogDir::new()? };
        proxy.spawn().await?;
        Ok(proxy)
    }

    /// The command the next [`Blockproxy::restart`] runs.
    pub fn command(&self) -> &BlockproxyCommand {
        &self.command
    }

    /// Replaces the command the next [`Blockproxy::restart`] runs.
    pub fn set_command(&mut self, command: BlockproxyCommand) {
        self.command = command;
    }

    /// The address `serve` (or `blockproxy-mount`) listens on.
    pub fn addr(&self) -> SocketAddr {
        self.command.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The folder with this proxy's logs.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Everything the process logged, across restarts, in order.
    pub fn log_text(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.logs.log_file(&self.log_name(n))).unwrap_or_default())
            .collect()
    }

    /// The process's own pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().filter(|p| p.exit_status().is_none()).and_then(|p| p.pid().ok())
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.exit_status().is_none())
    }

    /// SIGKILL, like a crash: nothing is flushed, nothing is cleaned up.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Kills the process if it runs, then starts it again with the current command (same
    /// address, same folders). Returns the time from spawn until ready.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.kill();
        self.spawn().await
    }

    /// Sends `signal` (`TERM`, `INT`, ...) and waits up to `timeout` for the process to exit.
    /// When it does not, it is killed and an error says so.
    pub async fn stop_with(&mut self, signal: &str, timeout: Duration) -> Result<ExitStatus> {
        let process = self.process.as_ref().context("the process is not running")?;
        process.signal(signal)?;
        match process.wait_exit(timeout).await {
            Ok(status) => {
                self.process = None;
                Ok(status)
            }
            Err(e) => {
                self.kill();
                Err(e.context(format!("after SIG{signal}")))
            }
        }
    }

    fn log_name(&self, start: usize) -> String {
        format!("{}-{start}", self.command.name)
    }

    async fn spawn(&mut self) -> Result<Duration> {
        self.starts += 1;
        let started = Instant::now();
        let env: Vec<(&str, &str)> = self.command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = Process::spawn(
            &self.log_name(self.starts),
            &self.command.binary,
            self.command.full_args(),
            &env,
            &self.logs,
        )?;
        let process: &Process = self.process.insert(process);
        let Some(url) = self.command.ready_url_now() else {
            return Ok(started.elapsed());
        };
        let http = &self.http;
        crate::eventually(self.command.ready_timeout, self.command.poll_interval, || async {
            process.ensure_running()?;
            let status = http.get(&url).send().await?.status();
            if !status.is_success() {
                bail!("GET {url}: {status}");
            }
            Ok(())
        })
        .await
        .with_context(|| {
            format!("{} did not become ready; logs in {}", self.command.name, self.logs.path().display())
        })?;
        Ok(started.elapsed())
    }
}

/// Every file under `dir`, at any depth (a cache area's block files sit in fan-out directories);
/// none when `dir` does not exist.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Flips every bit of the last byte of `path`: bit rot in a block file's data.
pub fn flip_last_byte(path: &std::path::Path) -> std::io::Result<()> {
    let mut raw = std::fs::read(path)?;
    let last = raw.len().checked_sub(1).ok_or_else(|| std::io::Error::other("an empty file has no byte to flip"))?;
    raw[last] ^= 0xff;
    std::fs::write(path, raw)
}
