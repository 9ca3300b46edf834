//! A minimal server: about the least an HTTP/1.1 server can do to answer a GET with a file's
//! bytes. A thread per connection reads the request head, writes a fixed header,
//! and sends the file with `sendfile`, as nginx and blockproxy do on plain HTTP. It does none of
//! what either does per request: no header parsing beyond the path, no routing, no cache lookup,
//! no checksums, no metrics, no logs.
//!
//! It is a yardstick, not a peer a user would pick: on large responses, where the kernel's path
//! is the cost, neither real server can go much past it, so figures 1 and 2 print both against
//! it. On small ones it is no ceiling: a thread per connection pays a context switch per request,
//! which an event loop does not. It serves its own copy of blocks of the same sizes (the bytes do
//! not matter to the load generator, which only counts them).

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

pub struct MinimalServer {
    addr: SocketAddr,
}

impl MinimalServer {
    /// Writes one file of `len` bytes per key under `dir` and serves them at `/{key}`.
    pub fn start(dir: &Path, files: &[(String, usize)]) -> Result<Self> {
        let mut served = HashMap::new();
        for (key, len) in files {
            let path = dir.join(key);
            std::fs::create_dir_all(path.parent().context("a key's file has a parent")?)?;
            std::fs::write(&path, crate::random_block(*len))?;
            served.insert(format!("/{key}"), (File::open(&path)?, *len));
        }
        let served = Arc::new(served);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &served) {
                        eprintln!("minimal server: connection ended: {e:#}");
                    }
                });
            }
        });
        Ok(Self { addr })
    }

    pub fn url(&self, key: &str) -> String {
        format!("http://{}/{key}", self.addr)
    }
}

/// Answers the connection's GETs (keep-alive, pipelined or not) until the client closes it.
fn serve(mut conn: TcpStream, served: &HashMap<String, (File, usize)>) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..end]).context("a request head that is not UTF-8")?;
        let path = head.strip_prefix("GET ").and_then(|r| r.split(' ').next()).context("not a GET")?;
        let Some((file, len)) = served.get(path) else { bail!("no file for {path}") };
        let header =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n");
        conn.write_all(header.as_bytes())?;
        let mut offset = 0u64;
        while (offset as usize) < *len {
            let left = len - offset as usize;
            let n = rustix::fs::sendfile(&conn, file, Some(&mut offset), left)?;
            if n == 0 {
                bail!("{path} ended early");
            }
        }
        buf.drain(..end);
    }
}
