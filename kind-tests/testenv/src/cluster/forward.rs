//! Reaching a TCP address inside the cluster's network namespace from the test process.
//!
//! Two socats carry the bytes over a unix socket, so the host's network configuration is never
//! touched: one inside the namespace (unix socket -> target), one on the host (127.0.0.1:port ->
//! unix socket).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;

const READY: Duration = Duration::from_secs(20);

/// A loopback address that forwards to an address inside the cluster; stopped on drop.
#[derive(Debug)]
pub struct Forward {
    addr: SocketAddr,
    _outer: Process,
    _inner: Process,
}

impl Forward {
    /// Forwards `127.0.0.1:<free port>` to `target` in the network namespace of `ns_pid`.
    pub async fn start(ns_pid: u32, target: SocketAddrV4, socket: PathBuf, logs: &LogDir) -> Result<Self> {
        let name = format!("forward-{}-{}", target.ip(), target.port());
        let inner = Process::spawn(
            &format!("{name}-inner"),
            Path::new("nsenter"),
            [
                "-t".to_owned(),
                ns_pid.to_string(),
                "--net".to_owned(),
                "--".to_owned(),
                "socat".to_owned(),
                format!("UNIX-LISTEN:{},fork,unlink-early", socket.display()),
                format!("TCP:{target}"),
            ],
            &[],
            logs,
        )?;
        eventually(READY, Duration::from_millis(50), || async {
            inner.ensure_running()?;
            if !socket.exists() {
                bail!("{} not there yet", socket.display());
            }
            Ok(())
        })
        .await
        .with_context(|| format!("socat for {target} inside the cluster"))?;
        let port = free_port()?;
        let outer = Process::spawn(
            &format!("{name}-outer"),
            Path::new("socat"),
            [format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"), format!("UNIX-CONNECT:{}", socket.display())],
            &[],
            logs,
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(READY, Duration::from_millis(50), || async {
            outer.ensure_running()?;
            tokio::net::TcpStream::connect(addr).await.map(drop).context("connecting")
        })
        .await
        .with_context(|| format!("socat on {addr} for {target}"))?;
        Ok(Self { addr, _outer: outer, _inner: inner })
    }

    /// The loopback address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
