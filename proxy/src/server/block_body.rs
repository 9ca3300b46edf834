//! Reading a block PUT's body and the checksum it is judged by. The checksum comes in a header
//! before the body, or (for a body relayed as it arrives, ADR 0022) as a trailer after it; either
//! way nothing is stored unless the whole body arrived and matches it.

use super::body_md5::BodyMd5;
use super::errors::ApiError;
use super::routes::reserve_bytes;
use super::state::AppState;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use blockproxy_protocol::{CHECKSUM_HEADER, Checksum, ChecksumError, LENGTH_HEADER};
use bytes::Bytes;
use http_body_util::BodyExt;

/// Where a PUT declares its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Declared {
    Header(Checksum),
    /// Named in the request's `Trailer` header: it follows the body.
    Trailer,
}

impl Declared {
    /// Reads the declaration from the request's headers; 400 when there is none or it is malformed.
    pub(super) fn from_headers(h: &HeaderMap) -> Result<Self, ApiError> {
        if let Some(v) = h.get(CHECKSUM_HEADER) {
            let text = v.to_str().map_err(|_| ApiError::bad_request(format!("{CHECKSUM_HEADER} is not ASCII")))?;
            return text.parse().map(Declared::Header).map_err(|e: ChecksumError| ApiError::bad_request(e.to_string()));
        }
        let in_trailer = h
            .get_all(header::TRAILER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| name.trim().eq_ignore_ascii_case(CHECKSUM_HEADER));
        if in_trailer {
            return Ok(Declared::Trailer);
        }
        Err(ApiError::bad_request(format!(
            "missing {CHECKSUM_HEADER} header (crc32c=<hex> or sha256=<hex>), or a trailer declared with `Trailer: {CHECKSUM_HEADER}`"
        )))
    }

    /// The checksum itself, once the body (and its trailers) have been read.
    pub(super) fn resolve(self, trailers: Option<&HeaderMap>) -> Result<Checksum, ApiError> {
        match self {
            Declared::Header(c) => Ok(c),
            Declared::Trailer => {
                let v = trailers.and_then(|t| t.get(CHECKSUM_HEADER)).ok_or_else(|| {
                    ApiError::bad_request(format!("the body ended without its declared {CHECKSUM_HEADER} trailer"))
                })?;
                let text = v.to_str().map_err(|_| ApiError::bad_request(format!("{CHECKSUM_HEADER} is not ASCII")))?;
                text.parse().map_err(|e: ChecksumError| ApiError::bad_request(e.to_string()))
            }
        }
    }
}

/// A block body read by [`read_body`].
pub(super) struct ReadBody<'a> {
    pub data: Bytes,
    /// The MD5 of the whole body, when asked for: maybe still hashing.
    pub md5: Option<BodyMd5>,
    /// What followed the body, if anything.
    pub trailers: Option<HeaderMap>,
    _held: tokio::sync::SemaphorePermit<'a>,
}

/// The length a request declares: `Content-Length`, or [`LENGTH_HEADER`] for a chunked body.
fn declared_length(h: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if let Some(len) = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        return Ok(Some(len));
    }
    match h.get(LENGTH_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{LENGTH_HEADER} is not a decimal length"))),
    }
}

/// The body's next frame; 408 once it has sent nothing for `--body-idle-timeout`.
pub(super) async fn next_frame<B: http_body::Body + Unpin>(
    s: &AppState,
    body: &mut B,
) -> Result<Option<Result<http_body::Frame<B::Data>, B::Error>>, ApiError> {
    tokio::time::timeout(s.body_idle_timeout, body.frame()).await.map_err(|_| {
        s.metrics.http_timeouts_total.with_label_values(&["body"]).inc();
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body sent nothing for {:?}", s.body_idle_timeout),
        )
    })
}

/// Reads a block body: bounded in size (413), in bytes held across requests (503), and in how
/// long it may stall (408); a body of another length than declared is refused (400). With `md5`,
/// hashes it as it arrives, beside this task for a large body ([`BodyMd5`]): the hashing then
/// overlaps the transfer instead of following it (a write's ack waits for its S3 ETag).
pub(super) async fn read_body(s: &AppState, req: Request, md5: bool) -> Result<ReadBody<'_>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("block is larger than --max-block-size ({} bytes)", s.max_block_size),
        )
    };
    let expected = declared_length(req.headers())?;
    if expected.is_some_and(|len| len > s.max_block_size) {
        return Err(too_large());
    }
    let permit = reserve_bytes(s, expected.unwrap_or(s.max_block_size)).await?;
    let mut body = http_body_util::Limited::new(req.into_body(), s.max_block_size as usize);
    let mut buf = bytes::BytesMut::with_capacity(expected.unwrap_or(0) as usize);
    let mut hasher = md5.then(|| BodyMd5::for_len(expected));
    let mut trailers = None;
    loop {
        let frame = match next_frame(s, &mut body).await? {
            None => break,
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Some(Err(e)) => return Err(ApiError::bad_request(format!("reading the body failed: {e}"))),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if let Some(h) = &mut hasher {
                    h.update(&data).await;
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if let Some(len) = expected
        && len != buf.len() as u64
    {
        return Err(ApiError::bad_request(format!("the body is {} bytes, {len} were declared", buf.len())));
    }
    Ok(ReadBody { data: buf.freeze(), md5: hasher, trailers, _held: permit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse::<header::HeaderName>().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_header_wins_and_a_trailer_counts_only_when_declared() {
        let sum = Checksum::crc32c(b"abc");
        let both = headers(&[(CHECKSUM_HEADER, &sum.to_string()), ("trailer", CHECKSUM_HEADER)]);
        assert_eq!(Declared::from_headers(&both).unwrap(), Declared::Header(sum.clone()));
        // Listed among others, in any case.
        let listed = headers(&[("trailer", "x-other, X-Blockproxy-Checksum")]);
        assert_eq!(Declared::from_headers(&listed).unwrap(), Declared::Trailer);
        assert!(Declared::from_headers(&headers(&[("trailer", "x-other")])).is_err());
        assert!(Declared::from_headers(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_declared_trailer_must_arrive_and_parse() {
        let sum = Checksum::crc32c(b"abc");
        let t = headers(&[(CHECKSUM_HEADER, &sum.to_string())]);
        assert_eq!(Declared::Trailer.resolve(Some(&t)).unwrap(), sum);
        assert!(Declared::Trailer.resolve(None).is_err());
        assert!(Declared::Trailer.resolve(Some(&headers(&[(CHECKSUM_HEADER, "crc32c=xyz")]))).is_err());
        // A header declaration ignores whatever trailer came.
        assert_eq!(Declared::Header(sum.clone()).resolve(None).unwrap(), sum);
    }

    #[test]
    fn the_length_is_content_length_or_the_declared_one_for_a_chunked_body() {
        assert_eq!(declared_length(&headers(&[("content-length", "5")])).unwrap(), Some(5));
        assert_eq!(declared_length(&headers(&[(LENGTH_HEADER, "7")])).unwrap(), Some(7));
        assert_eq!(declared_length(&HeaderMap::new()).unwrap(), None);
        assert!(declared_length(&headers(&[(LENGTH_HEADER, "-1")])).is_err());
    }
}
