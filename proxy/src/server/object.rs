//! Object attributes and the S3 identity of a version on the wire (ADR 0004): attributes from and
//! to headers, part sizes, ETags and Last-Modified.

use super::errors::ApiError;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use blockproxy_protocol::{MAX_PARTS, MIN_PART_SIZE, ObjectAttrs, PARTS_HEADER, USER_METADATA_PREFIX};
use md5::{Digest, Md5};
use std::time::{Duration, UNIX_EPOCH};

/// S3 allows 2 KiB of user metadata; headers beyond a generous bound are refused.
const MAX_ATTRS_BYTES: usize = 8 << 10;

/// The attributes a write carries as headers.
pub fn attrs_from_headers(h: &HeaderMap) -> Result<ObjectAttrs, ApiError> {
    let text = |name: HeaderName| -> Result<Option<String>, ApiError> {
        h.get(&name)
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| ApiError::bad_request(format!("{name} is not ASCII"))))
            .transpose()
    };
    let mut attrs = ObjectAttrs {
        content_type: text(header::CONTENT_TYPE)?,
        content_encoding: text(header::CONTENT_ENCODING)?,
        cache_control: text(header::CACHE_CONTROL)?,
        content_disposition: text(header::CONTENT_DISPOSITION)?,
        ..Default::default()
    };
    let mut total = 0;
    for (name, value) in h {
        if let Some(k) = name.as_str().strip_prefix(USER_METADATA_PREFIX) {
            let v = value.to_str().map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))?;
            total += k.len() + v.len();
            attrs.user_metadata.insert(k.to_owned(), v.to_owned());
        }
    }
    if total > MAX_ATTRS_BYTES {
        return Err(ApiError::bad_request(format!("user metadata is larger than {MAX_ATTRS_BYTES} bytes")));
    }
    Ok(attrs)
}

/// Sets the attributes as response headers.
pub fn put_attrs(h: &mut HeaderMap, attrs: &ObjectAttrs) {
    let pairs = [
        (header::CONTENT_TYPE, &attrs.content_type),
        (header::CONTENT_ENCODING, &attrs.content_encoding),
        (header::CACHE_CONTROL, &attrs.cache_control),
        (header::CONTENT_DISPOSITION, &attrs.content_disposition),
    ];
    for (name, value) in pairs {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    for (k, v) in &attrs.user_metadata {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(format!("{USER_METADATA_PREFIX}{k}")), HeaderValue::from_str(v))
        {
            h.insert(name, value);
        }
    }
}

/// The part sizes of a write of `len` bytes: `x-blockproxy-parts`, or one part. Every part but the
/// last must be at least S3's minimum, or the flush's multipart upload could never succeed.
pub fn parts_from_headers(h: &HeaderMap, len: u64) -> Result<Vec<u64>, ApiError> {
    let Some(v) = h.get(PARTS_HEADER) else { return Ok(vec![len]) };
    let bad = |why: &str| ApiError::bad_request(format!("{PARTS_HEADER}: {why}"));
    let v = v.to_str().map_err(|_| bad("not ASCII"))?;
    let parts: Vec<u64> = v
        .split(',')
        .map(|p| p.trim().parse::<u64>().map_err(|_| bad("must be comma-separated decimal sizes")))
        .collect::<Result<_, _>>()?;
    check_parts(&parts, len).map_err(|why| bad(&why))?;
    Ok(parts)
}

/// S3's rules for the parts of one object of `len` bytes.
pub fn check_parts(parts: &[u64], len: u64) -> Result<(), String> {
    if parts.is_empty() || parts.len() > MAX_PARTS as usize {
        return Err(format!("an object has 1 to {MAX_PARTS} parts, not {}", parts.len()));
    }
    if parts.iter().try_fold(0u64, |a, p| a.checked_add(*p)) != Some(len) {
        return Err(format!("part sizes do not add up to the {len} bytes of the object"));
    }
    if let Some((i, p)) = parts[..parts.len() - 1].iter().enumerate().find(|(_, p)| **p < MIN_PART_SIZE) {
        return Err(format!(
            "EntityTooSmall: part {} has {p} bytes; every part but the last must have at least {MIN_PART_SIZE}",
            i + 1
        ));
    }
    Ok(())
}

/// The MD5 of each part of `data`.
pub fn part_md5s(data: &[u8], parts: &[u64]) -> Vec<[u8; 16]> {
    let mut at = 0usize;
    parts
        .iter()
        .map(|p| {
            let end = at + *p as usize;
            let d: [u8; 16] = Md5::digest(&data[at..end]).into();
            at = end;
            d
        })
        .collect()
}

/// The protocol's header names a hit answers with, parsed once: `HeaderMap::insert` with a
/// `&str` parses the name on every call, 3% of the proxy's CPU under 64 KiB hits in the profile
/// of ADR 0021.
pub mod names {
    use axum::http::HeaderName;
    use blockproxy_protocol as p;

    pub const OBJECT_SIZE: HeaderName = HeaderName::from_static(p::OBJECT_SIZE_HEADER);
    pub const STORE_ETAG: HeaderName = HeaderName::from_static(p::STORE_ETAG_HEADER);
    pub const VERSION: HeaderName = HeaderName::from_static(p::VERSION_HEADER);
    pub const SOURCE: HeaderName = HeaderName::from_static(p::SOURCE_HEADER);
    pub const CHECKSUM: HeaderName = HeaderName::from_static(p::CHECKSUM_HEADER);
    pub const REFUSAL: HeaderName = HeaderName::from_static(p::REFUSAL_HEADER);
}

/// A header value of `parts` joined, in one allocation: hits build these on every response,
/// where `format!` and [`HeaderValue::from_str`] would allocate twice and format.
fn joined(parts: &[&[u8]]) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| v.extend_from_slice(p));
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// `"etag"` as an `ETag` header value; `None` if the ETag cannot be a header value.
pub fn etag_value(etag: &str) -> Option<HeaderValue> {
    joined(&[b"\"", unquote(etag).as_bytes(), b"\""])
}

/// The checksum header's value for a CRC32C.
pub fn crc32c_value(crc: u32) -> HeaderValue {
    joined(&[&blockproxy_protocol::crc32c_text(crc)]).expect("the text is ASCII")
}

/// The headers every read at the home (and every committed write) answers with.
#[derive(Clone, Copy)]
pub struct ObjectHeaders<'a> {
    /// Unquoted S3 ETag; empty when unknown (a block written before the object model).
    pub etag: &'a str,
    pub modified_ns: u64,
    pub size: u64,
    /// Unquoted; set when this version is in the store.
    pub store_etag: Option<&'a str>,
    pub attrs: &'a ObjectAttrs,
}

impl ObjectHeaders<'_> {
    pub fn apply(&self, h: &mut HeaderMap) {
        if let Some(v) = Some(self.etag).filter(|e| !e.is_empty()).and_then(etag_value) {
            h.insert(header::ETAG, v);
        }
        if self.modified_ns > 0 {
            let at = UNIX_EPOCH + Duration::from_nanos(self.modified_ns);
            let date = httpdate::HttpDate::from(at).to_string();
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(date)) {
                h.insert(header::LAST_MODIFIED, v);
            }
        }
        h.insert(names::OBJECT_SIZE, HeaderValue::from(self.size));
        if let Some(v) = self.store_etag.filter(|e| !e.is_empty()).and_then(etag_value) {
            h.insert(names::STORE_ETAG, v);
        }
        put_attrs(h, self.attrs);
    }
}

/// `"etag"`, as S3 writes ETags.
pub fn quote(etag: &str) -> String {
    format!("\"{}\"", unquote(etag))
}

pub fn unquote(etag: &str) -> &str {
    etag.trim().trim_start_matches("W/").trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The ETag header is the quoted ETag, however the stored one was written, and a value
        /// no header may carry gives none.
        #[test]
        fn etag_values_are_the_quoted_etag(etag in "[!#-~]{0,40}", weak in proptest::bool::ANY, quoted in proptest::bool::ANY) {
            let written = match (weak, quoted) {
                (true, _) => format!("W/\"{etag}\""),
                (false, true) => format!("\"{etag}\""),
                (false, false) => etag.clone(),
            };
            proptest::prop_assert_eq!(etag_value(&written).unwrap(), HeaderValue::from_str(&quote(&written)).unwrap());
            let with_newline = format!("x{etag}\ny");
            proptest::prop_assert!(etag_value(&with_newline).is_none());
        }
    }

    #[test]
    fn attributes_round_trip_through_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-amz-meta-color", HeaderValue::from_static("blue"));
        let attrs = attrs_from_headers(&h).unwrap();
        assert_eq!(attrs.user_metadata.get("color").map(String::as_str), Some("blue"));
        let mut out = HeaderMap::new();
        put_attrs(&mut out, &attrs);
        assert_eq!(attrs_from_headers(&out).unwrap(), attrs);
    }

    #[test]
    fn part_sizes_follow_s3_rules() {
        let mib = 1 << 20;
        assert!(check_parts(&[8 * mib, 8 * mib, 1], 16 * mib + 1).is_ok());
        assert!(check_parts(&[1], 1).is_ok());
        assert!(check_parts(&[0], 0).is_ok());
        assert!(check_parts(&[mib, mib], 2 * mib).unwrap_err().contains("EntityTooSmall"));
        assert!(check_parts(&[8 * mib, 1], 8 * mib).is_err(), "sizes must add up");
        assert!(check_parts(&[], 0).is_err());
    }

    #[test]
    fn part_md5s_give_the_s3_etag() {
        let data = b"helloworld";
        let md5s = part_md5s(data, &[5, 5]);
        let hello: [u8; 16] = Md5::digest(b"hello").into();
        assert_eq!(md5s[0], hello);
        assert!(blockproxy_protocol::multipart_etag(&md5s).ends_with("-2"));
    }
}
