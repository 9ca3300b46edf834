//! The object model on the wire (docs/adr/0004-object-model.md): object attributes, the headers
//! that carry them, multipart staging on the object's home proxy, and striped reads of clean
//! blocks from the store.
//!
//! - An object `k` of a volume is the store object `{prefix}/{k}`, byte-identical.
//! - Its **home** proxy (rendezvous on `(volume, k)`) holds every acknowledged, unflushed version
//!   whole, in one file, and flushes it as one store object (a multipart upload with the recorded
//!   part sizes when there is more than one part).
//! - A **clean** object (in the store) is read in fixed-size blocks: block `i` from the proxy that
//!   rendezvous on `(volume, k, i)` ranks first ([`block_route_key`]), each block pinned to the
//!   store object's ETag, so a reader never sees a mix of two versions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default block size: the unit of caching and striping for clean objects (JuiceFS uses the same).
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// Smallest and largest accepted block sizes.
pub const MIN_BLOCK_SIZE: u64 = 64 << 10;
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;
/// S3's limits, kept by the S3 endpoint and the proxies.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
pub const MAX_SINGLE_PUT_SIZE: u64 = 5 << 30;
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PARTS: u32 = 10_000;
/// The part size the S3 endpoint cuts a large single PUT (or a copy) into before staging it: an
/// object written in one request up to this size is one store object with an MD5 ETag.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Default metadata TTL: how long a clean object's attributes are trusted before the store is
/// asked again (mountpoint-s3 uses 1 s too).
pub const DEFAULT_METADATA_TTL_MS: u64 = 1_000;

/// Query parameter of a block read: `GET /v1/volumes/{v}/blocks/{k}?block={i}&blockSize={B}`
/// asks a proxy for block `i` of the clean object `k`, cut at `B` bytes, pinned with `If-Match`
/// to the store object's ETag. The proxy answers from its cache when its copy carries that ETag,
/// otherwise with a ranged GET (`If-Match`) from the store; `412` when the store object is no
/// longer that ETag (read the object's attributes again).
pub const BLOCK_QUERY: &str = "block";
pub const BLOCK_SIZE_QUERY: &str = "blockSize";

/// Response header of GET and HEAD at the home proxy, and of a committed write: the S3 ETag of
/// the object version (quoted, as in S3): the MD5 of the content for one part, `md5(md5s)-N`
/// for N parts, or the store's ETag for objects written by other tools.
pub const ETAG_HEADER: &str = "etag";
/// The store object's own ETag that block reads pin to; absent while the version is only on the
/// home proxy (dirty), where block reads must go instead (pinned by [`VERSION_HEADER`]).
///
/// [`VERSION_HEADER`]: crate::VERSION_HEADER
pub const STORE_ETAG_HEADER: &str = "x-blockproxy-store-etag";
/// Total size of the object (also on HEAD, where there is no `Content-Range`).
pub const OBJECT_SIZE_HEADER: &str = "x-blockproxy-object-size";
/// Part sizes of a write, comma-separated decimal, as the store upload will use them
/// (`x-blockproxy-parts: 8388608,8388608,1048576`). Absent: one part.
pub const PARTS_HEADER: &str = "x-blockproxy-parts";
/// Prefix of user metadata headers, as in S3.
pub const USER_METADATA_PREFIX: &str = "x-amz-meta-";

/// Attributes that round-trip with an object: standard headers and S3 user metadata (without
/// the `x-amz-meta-` prefix, lower-case names). Carried as HTTP headers on PUT, multipart
/// create, GET and HEAD, and stored as the store object's headers and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
}

impl ObjectAttrs {
    /// The standard headers and their fields, in one place for both directions.
    const STANDARD: [&'static str; 4] = ["content-type", "content-encoding", "cache-control", "content-disposition"];

    fn standard_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "content-type" => Some(&mut self.content_type),
            "content-encoding" => Some(&mut self.content_encoding),
            "cache-control" => Some(&mut self.cache_control),
            "content-disposition" => Some(&mut self.content_disposition),
            _ => None,
        }
    }

    /// The attributes as HTTP headers (lower-case names): the standard ones, and each user
    /// metadata entry as `x-amz-meta-{name}`.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let standard = [&self.content_type, &self.content_encoding, &self.cache_control, &self.content_disposition];
        let mut out: Vec<(String, String)> = Self::STANDARD
            .iter()
            .zip(standard)
            .filter_map(|(n, v)| v.as_ref().map(|v| ((*n).to_owned(), v.clone())))
            .collect();
        out.extend(self.user_metadata.iter().map(|(k, v)| (format!("{USER_METADATA_PREFIX}{k}"), v.clone())));
        out
    }

    /// Collects the attributes from HTTP headers (names compared case-insensitively); other
    /// headers are ignored, and so is blockproxy's own metadata (`blockproxy-*`).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut attrs = Self::default();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            if let Some(field) = attrs.standard_mut(&name) {
                *field = Some(value.to_owned());
            } else if let Some(meta) = name.strip_prefix(USER_METADATA_PREFIX)
                && !meta.starts_with("blockproxy-")
            {
                attrs.user_metadata.insert(meta.to_owned(), value.to_owned());
            }
        }
        attrs
    }
}

/// `/v1/volumes/{volume}/uploads/{key}`: multipart staging at the object's home proxy.
/// - `POST` (attributes as headers) creates an upload: [`UploadCreated`].
/// - `PUT ?uploadId=&partNumber=` stages a part (streamed to disk, needs `x-blockproxy-checksum`),
///   answers the part's ETag (quoted MD5).
/// - `GET ?uploadId=` lists the staged parts: [`UploadParts`].
/// - `POST ?uploadId=` with [`CompleteUpload`] assembles the parts into the object, commits it as
///   a new dirty version (acknowledged like a PUT) and answers [`UploadCompleted`].
/// - `DELETE ?uploadId=` aborts.
///
/// An upload id belongs to its key: any other key gets `404 NoSuchUpload`. Uploads left unfinished
/// are removed after the proxy's `--upload-expiry`.
pub const UPLOADS_SEGMENT: &str = "uploads";

pub const UPLOAD_ID_QUERY: &str = "uploadId";
pub const PART_NUMBER_QUERY: &str = "partNumber";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadCreated {
    pub upload_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadPart {
    pub part_number: u32,
    /// Quoted MD5 of the part, as S3 answers UploadPart.
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadParts {
    pub parts: Vec<UploadPart>,
}

/// The parts to assemble, in ascending part number order; an `etag` that does not match the
/// staged part is `400 InvalidPart`, as in S3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteUpload {
    pub parts: Vec<CompletePart>,
    /// Optional client write version, as `x-blockproxy-version` on a PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletePart {
    pub part_number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadCompleted {
    pub version: u64,
    pub etag: String,
    pub size: u64,
}

/// The key rendezvous ranks proxies by for block `index` of object `key`. Block 0 and the object
/// itself share the plain key, so a small object's only block lives on its home proxy.
pub fn block_route_key(key: &str, index: u64) -> String {
    if index == 0 { key.to_owned() } else { format!("{key}\u{0}{index}") }
}

/// The S3 ETag of content uploaded in parts with these MD5s: the MD5 of the one part, or
/// `md5(concatenated md5s)-N`. Unquoted.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    use md5::{Digest, Md5};
    match part_md5s {
        [one] => hex::encode(one),
        parts => {
            let mut h = Md5::new();
            for p in parts {
                h.update(p);
            }
            format!("{}-{}", hex::encode(h.finalize()), parts.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_s3() {
        use md5::{Digest, Md5};
        let a: [u8; 16] = Md5::digest(b"hello").into();
        assert_eq!(multipart_etag(&[a]), "5d41402abc4b2a76b9719d911017c592");
        let b: [u8; 16] = Md5::digest(b"world").into();
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(multipart_etag(&[a, b]), format!("{}-2", hex::encode(Md5::digest(&cat))));
    }

    #[test]
    fn attributes_round_trip_through_headers() {
        let mut a = ObjectAttrs { content_type: Some("text/plain".into()), ..Default::default() };
        a.cache_control = Some("no-cache".into());
        a.user_metadata.insert("md5chksum".into(), "abc".into());
        let headers = a.to_headers();
        let back = ObjectAttrs::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, a);
        let ours = ObjectAttrs::from_headers([("X-Amz-Meta-Blockproxy-Version", "7"), ("Content-Type", "a/b")]);
        assert!(ours.user_metadata.is_empty() && ours.content_type.as_deref() == Some("a/b"));
    }

    #[test]
    fn block_zero_routes_with_its_object() {
        assert_eq!(block_route_key("a/b", 0), "a/b");
        assert_ne!(block_route_key("a/b", 1), block_route_key("a/b1", 0));
    }
}
