//! Figure 4's paced writes: a PUT whose body is sent at a fixed rate, as a client that is not
//! CPU-bound sends it (a producer, a network link), timed from its last byte to the answer. On
//! these 2 cores an unpaced client keeps both cores busy while it sends, so what a server does
//! beside the receive (ADR 0013's MD5, ADR 0022's relay to the proxy) has no core to run on
//! until the receive ends; paced, it has.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

/// The pieces a paced body is sent in.
const PIECE: usize = 64 << 10;

/// One paced PUT's times, in microseconds.
pub struct PacedAck {
    pub total_us: u64,
    /// From handing the body's last byte to the connection until the answer.
    pub after_last_byte_us: u64,
}

/// PUTs `data` to `url` with `headers` (and its `Content-Length`), sending it in 64 KiB pieces
/// at `bytes_per_sec`.
pub async fn put(
    http: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    data: &Bytes,
    bytes_per_sec: f64,
) -> Result<PacedAck> {
    let t0 = Instant::now();
    let last_byte = Arc::new(Mutex::new(None::<Instant>));
    let pieces: Vec<Bytes> =
        (0..data.len()).step_by(PIECE).map(|at| data.slice(at..(at + PIECE).min(data.len()))).collect();
    let body = {
        let last_byte = last_byte.clone();
        let count = pieces.len();
        futures::stream::unfold((pieces.into_iter(), 0usize, 0usize), move |(mut it, sent, n)| {
            let last_byte = last_byte.clone();
            async move {
                let piece = it.next()?;
                let due = t0 + Duration::from_secs_f64((sent + piece.len()) as f64 / bytes_per_sec);
                tokio::time::sleep_until(due.into()).await;
                if n + 1 == count {
                    *last_byte.lock().expect("not poisoned") = Some(Instant::now());
                }
                let len = piece.len();
                Some((Ok::<_, std::io::Error>(piece), (it, sent + len, n + 1)))
            }
        })
    };
    let mut req = http.put(url).header(reqwest::header::CONTENT_LENGTH, data.len());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.body(reqwest::Body::wrap_stream(body)).send().await.with_context(|| format!("paced PUT {url}"))?;
    let answered = Instant::now();
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("paced PUT {url}: {status}: {text}");
    }
    let last = last_byte.lock().expect("not poisoned").context("the body was not sent whole")?;
    Ok(PacedAck {
        total_us: (answered - t0).as_micros() as u64,
        after_last_byte_us: answered.saturating_duration_since(last).as_micros() as u64,
    })
}
