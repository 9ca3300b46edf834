//! What the REST backends (GCS JSON API, Azure Blob) share: one HTTP client with the same timeouts
//! as the S3 path, streaming a slice of a file as a request body, and classifying failures.

use super::StoreError;
use futures::TryStreamExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A client that fails a stalled request instead of hanging a flush worker (as the S3 client).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS backend is compiled in")
}

/// `len` bytes of the file from `offset`, streamed (never held whole in memory).
pub(crate) async fn file_body(path: &Path, offset: u64, len: u64) -> Result<reqwest::Body, StoreError> {
    let io = |source| StoreError::Io { op: "read", path: path.display().to_string(), source };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let stream = tokio_util::io::ReaderStream::new(file.take(len)).map_ok(bytes::Bytes::from);
    Ok(reqwest::Body::wrap_stream(stream))
}

/// A request that never got an answer: retryable.
pub(crate) fn send_err(op: &'static str, bucket: &str, key: &str) -> impl FnOnce(reqwest::Error) -> StoreError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    move |e| StoreError::Request { op, bucket, key, message: error_chain(&e) }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Classifies an error answer as the S3 backend does: 412 is a lost race; timeouts, throttling,
/// 5xx and store-wide refusals (403 credentials, 404 bucket) may pass and are retried; any other
/// 4xx is about this request itself and permanent.
pub(crate) fn status_err(op: &'static str, bucket: &str, key: &str, status: u16, message: String) -> StoreError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    match status {
        412 => StoreError::PreconditionFailed { op, bucket, key },
        400..=499 if !matches!(status, 403 | 404 | 408 | 429) => {
            StoreError::Refused { op, bucket, key, status, message }
        }
        _ => StoreError::Request { op, bucket, key, message: format!("HTTP {status}: {message}") },
    }
}

/// Turns a non-success answer into an error (with the start of its body, which names the cause).
pub(crate) async fn check(
    op: &'static str,
    bucket: &str,
    key: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, StoreError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut message = resp.text().await.unwrap_or_default();
    message.truncate(500);
    Err(status_err(op, bucket, key, status, message))
}

/// The object's size from `Content-Range: bytes a-b/size`.
pub(crate) fn total_size(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.parse().ok()
}

/// Percent-encodes an object key for a URL path: everything but RFC 3986's unreserved characters.
/// With `keep_slash`, a `/` stays readable unless it borders a `.` or `..` segment: URL parsers
/// remove dot segments (escaped ones too), so such a `/` is sent as `%2F` (as the proxy's own
/// paths do, `blockproxy_protocol::encode_key`).
pub(crate) fn encode_key(key: &str, keep_slash: bool) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    if !keep_slash {
        return utf8_percent_encode(key, UNRESERVED).to_string();
    }
    let is_dot = |s: &str| matches!(s, "." | "..");
    let segments: Vec<&str> = key.split('/').collect();
    let mut out = String::with_capacity(key.len());
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            out.push_str(if is_dot(segments[i - 1]) || is_dot(seg) { "%2F" } else { "/" });
        }
        out.extend(utf8_percent_encode(seg, UNRESERVED));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_url_parsers() {
        assert_eq!(encode_key("a b/ü+&", true), "a%20b/%C3%BC%2B%26");
        assert_eq!(encode_key("a b/ü", false), "a%20b%2F%C3%BC");
        assert_eq!(encode_key("x/../y/./z", true), "x%2F..%2Fy%2F.%2Fz");
        let url = reqwest::Url::parse(&format!("http://h/c/{}", encode_key("x/../y", true))).unwrap();
        assert_eq!(url.path(), "/c/x%2F..%2Fy", "the parser left the key alone");
    }
}
