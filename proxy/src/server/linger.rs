//! Lingering close for refused uploads.
//!
//! A request refused before its body was read (413 for an oversized block, 401, 400...) may still
//! be sending that body. If the connection closed at once, the client's next write would fail with
//! EPIPE or ECONNRESET before it read our answer; curl copes, most HTTP libraries report "broken
//! pipe" instead of the 413. So, as nginx's lingering close does, the rest of the body is read and
//! discarded for a bounded time before the error goes out. A client that sent
//! `Expect: 100-continue` has sent no body yet: hyper answers it without the `100 Continue`, and
//! nothing is drained.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long the rest of a refused body is read at most, and how long one read may stall.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// The request body, shared so that what the handler left unread can still be drained.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Option<Body>>>);

impl SharedBody {
    fn take(&self) -> Option<Body> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

/// As an axum middleware: see [`linger_on_refusal`].
pub async fn linger_layer(req: Request, next: Next) -> Response {
    linger_on_refusal(req, |req| next.run(req)).await
}

/// Runs `handle`, and when it refused a request whose body may still be in flight, drains that
/// body (bounded) before answering.
pub async fn linger_on_refusal<F: Future<Output = Response>>(
    req: Request,
    handle: impl FnOnce(Request) -> F,
) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue || req.body().is_end_stream() {
        return handle(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(Some(body))));
    let resp = handle(Request::from_parts(parts, Body::new(shared.clone()))).await;
    if (resp.status().is_client_error() || resp.status().is_server_error())
        && let Some(rest) = shared.take()
    {
        drain(rest).await;
    }
    resp
}

async fn drain(mut body: Body) {
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut discarded = 0u64;
    loop {
        let idle = LINGER_IDLE.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(idle, std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))).await {
            Ok(Some(Ok(frame))) => discarded += frame.data_ref().map_or(0, |d| d.len() as u64),
            Ok(None) | Ok(Some(Err(_))) => break,
            Err(_) => {
                tracing::debug!(discarded, "stopped draining a refused request body; the connection will close");
                return;
            }
        }
    }
    tracing::debug!(discarded, "drained a refused request body");
}
