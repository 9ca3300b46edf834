//! Closes the connection after answering an `Expect: 100-continue` request that got no
//! `100 Continue`.
//!
//! hyper sends `100 Continue` only when the handler reads a non-empty body, so an empty PUT
//! (`Content-Length: 0`, as `aws s3 sync` sends for every empty file) or a request refused before
//! its body is read is answered with the final response alone. That is allowed (RFC 9110, 10.1.1),
//! but botocore (the aws CLI, boto3) then keeps that response's status line on the connection and
//! reuses it for the next response on it: the next response's real status line is parsed as a
//! header (`MissingHeaderBodySeparatorDefect`), its `Content-Length` is lost, and the client reads
//! until the connection closes or its 60 s read timeout, then retries. `aws s3 sync` of a tree with
//! empty files took minutes that way. botocore resets that state when a connection closes, so such
//! answers say `Connection: close` (one new loopback connection instead of a stall).

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

pub async fn close_after_unanswered_expect(req: Request, next: Next) -> Response {
    let expects = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let empty =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "0");
    let mut resp = next.run(req).await;
    // A failed request may have been answered before its body was read; closing costs little then.
    if expects && (empty || !resp.status().is_success()) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
