//! The ETag an object has at the S3 endpoint: the MD5 of its bytes, or `md5(part md5s)-N` for
//! one uploaded in N parts (ADR 0004). S3 keeps it as the object's own ETag. GCS (a generation),
//! Azure (its own token) and the local store (inode and checksum) give an object another ETag,
//! so the writer records this one with the object, and readers answer it to S3 clients: an
//! object keeps its ETag when it leaves the cache and comes back from such a store.

use md5::{Digest, Md5};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3ETag {
    md5: [u8; 16],
    /// 0 for an object in one part (no `-N` suffix).
    parts: u32,
}

impl S3ETag {
    /// The ETag of an object written in one part.
    pub fn of_data(data: &[u8]) -> Self {
        Self { md5: Md5::digest(data).into(), parts: 0 }
    }

    /// `etag` quoted or not; `None` when it is not an S3-style ETag (a foreign store's token).
    pub fn parse(etag: &str) -> Option<Self> {
        let etag = etag.trim_matches('"');
        let (hex_md5, parts) = match etag.split_once('-') {
            None => (etag, 0),
            Some((h, n)) => (h, n.parse().ok().filter(|n| *n > 0)?),
        };
        let mut md5 = [0u8; 16];
        hex::decode_to_slice(hex_md5, &mut md5).ok()?;
        Some(Self { md5, parts })
    }

    /// As an HTTP ETag: in quotes.
    pub fn quoted(&self) -> String {
        format!("\"{self}\"")
    }
}

/// Unquoted, as S3 metadata and the cache keep it.
impl fmt::Display for S3ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.md5))?;
        if self.parts > 0 {
            write!(f, "-{}", self.parts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multipart_etags_round_trip() {
        let one = S3ETag::of_data(b"hello");
        assert_eq!(one.to_string(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(S3ETag::parse(&one.quoted()), Some(one));
        let multi = "\"c3803534701cb62bd32fbad46768ccd4-9\"";
        assert_eq!(S3ETag::parse(multi).map(|e| e.quoted()).as_deref(), Some(multi));
    }

    #[test]
    fn store_tokens_are_not_s3_etags() {
        for other in ["\"1795718556636854\"", "0x1E20F9843ADA800", "12-0-abcd", "", "abc-0"] {
            assert_eq!(S3ETag::parse(other), None, "{other}");
        }
    }
}
