//! What a proxy says about an object version in its response headers (ADR 0004): size, version,
//! S3 ETag, the store ETag that block reads pin to, last modification and attributes.

use crate::protocol::{ETAG_HEADER, OBJECT_SIZE_HEADER, ObjectAttrs, STORE_ETAG_HEADER, VERSION_HEADER};
use reqwest::header::{HeaderMap, LAST_MODIFIED};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One version of an object, as its home proxy (or the store) describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub version: u64,
    /// The S3 ETag, quoted (`"<md5>"` or `"<md5>-N"`), when the answer carried one.
    pub etag: Option<String>,
    /// The store object's ETag when this version is in the store: block reads pin to it. `None`
    /// while the version is only on its home proxy.
    pub store_etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub attrs: ObjectAttrs,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn version_of(h: &HeaderMap) -> u64 {
    header(h, VERSION_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl ObjectInfo {
    /// From a GET or HEAD answer; `size` is what the caller could tell from the body framing
    /// (used when the proxy sent no object-size header).
    pub(crate) fn from_headers(h: &HeaderMap, size: u64) -> Self {
        Self {
            size: header(h, OBJECT_SIZE_HEADER).and_then(|v| v.parse().ok()).unwrap_or(size),
            version: version_of(h),
            etag: header(h, ETAG_HEADER).map(str::to_owned),
            store_etag: header(h, STORE_ETAG_HEADER).filter(|v| !v.is_empty()).map(str::to_owned),
            last_modified: header(h, LAST_MODIFIED.as_str()).and_then(|v| httpdate::parse_http_date(v).ok()),
            attrs: ObjectAttrs::from_headers(h.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))),
        }
    }

    /// The last modification: as the proxy said, or else the write version (nanoseconds since
    /// the epoch, see the version clock).
    pub fn modified(&self) -> SystemTime {
        self.last_modified.unwrap_or(UNIX_EPOCH + Duration::from_nanos(self.version))
    }

    /// True when the blocks of this version are read from the store's copy (striped), false when
    /// only the home proxy has it.
    pub fn in_store(&self) -> bool {
        self.store_etag.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_proxy_sends() {
        let mut h = HeaderMap::new();
        h.insert(OBJECT_SIZE_HEADER, "123".parse().unwrap());
        h.insert(VERSION_HEADER, "42".parse().unwrap());
        h.insert(ETAG_HEADER, "\"abc-2\"".parse().unwrap());
        h.insert(STORE_ETAG_HEADER, "\"abc-2\"".parse().unwrap());
        h.insert(LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("x-amz-meta-owner", "me".parse().unwrap());
        let i = ObjectInfo::from_headers(&h, 7);
        assert_eq!((i.size, i.version), (123, 42));
        assert_eq!(i.etag.as_deref(), Some("\"abc-2\""));
        assert!(i.in_store());
        assert_eq!(i.modified(), httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap());
        assert_eq!(i.attrs.content_type.as_deref(), Some("text/plain"));
        assert_eq!(i.attrs.user_metadata.get("owner").map(String::as_str), Some("me"));
    }

    #[test]
    fn falls_back_to_the_body_size_and_the_version_time() {
        let mut h = HeaderMap::new();
        h.insert(VERSION_HEADER, "1000000000".parse().unwrap());
        let i = ObjectInfo::from_headers(&h, 7);
        assert_eq!(i.size, 7);
        assert!(!i.in_store());
        assert_eq!(i.modified(), UNIX_EPOCH + Duration::from_secs(1));
    }
}
