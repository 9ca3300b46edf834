//! Raw HTTP/1.1 over TCP, for what a well-behaved client library will not do: stall in the
//! middle of a body, send half a header, or wait for `100 Continue`.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A PUT whose headers and first part of the body were sent; the rest is sent on [`finish`].
pub struct StalledPut {
    stream: TcpStream,
}

impl StalledPut {
    /// Sends the request head (with `Content-Length: total`) and the first `sent` bytes of body.
    pub async fn start(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, String)],
        body_head: &[u8],
        total: usize,
    ) -> Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {total}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body_head).await?;
        stream.flush().await?;
        Ok(Self { stream })
    }

    /// Sends the rest of the body and returns the status and headers of the answer.
    pub async fn finish(mut self, rest: &[u8]) -> Result<(u16, String)> {
        self.stream.write_all(rest).await?;
        read_response(&mut self.stream, Duration::from_secs(60)).await
    }

    /// Reads an answer the server sends without waiting for the rest of the body.
    pub async fn response(mut self, within: Duration) -> Result<(u16, String)> {
        read_response(&mut self.stream, within).await
    }
}

/// Reads one response head; returns the status code and the head's text.
pub async fn read_response(stream: &mut TcpStream, within: Duration) -> Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("no answer in time")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status =
        text.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("no status line in {text:?}"))?;
    Ok((status, text))
}

/// Whether the server closes `stream` (EOF or reset) within `within`, reading and discarding
/// whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
