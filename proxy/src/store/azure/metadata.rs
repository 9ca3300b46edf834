//! Azure metadata names must be C# identifiers. Ours are `blockproxy_version`,
//! `blockproxy_crc32c` and `blockproxy_etag` (the S3 ETag, see [`S3ETag`]); a user name that is not an identifier (S3 allows `-`, for one) or that
//! could be mistaken for an encoded one is stored as `bpx_<hex of its bytes>`, and decoded back.

use crate::store::{ObjectMeta, S3ETag};
use std::collections::BTreeMap;

const VERSION: &str = "blockproxy_version";
const CRC32C: &str = "blockproxy_crc32c";
const S3_ETAG: &str = "blockproxy_etag";
const ENCODED: &str = "bpx_";

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_ours(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == VERSION
        || n == CRC32C
        || n == S3_ETAG
        || n == blockproxy_protocol::STORE_VERSION_METADATA
        || n == blockproxy_protocol::STORE_CRC32C_METADATA
        || n == blockproxy_protocol::STORE_S3_ETAG_METADATA
}

fn encode_name(name: &str) -> String {
    if is_identifier(name) && !name.to_ascii_lowercase().starts_with(ENCODED) {
        name.to_owned()
    } else {
        format!("{ENCODED}{}", hex::encode(name.as_bytes()))
    }
}

fn decode_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower
        .strip_prefix(ENCODED)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or(lower)
}

/// The metadata a write sends: the user's (encoded where needed) and ours.
pub(super) fn encode(meta: ObjectMeta, user: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        user.iter().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (encode_name(k), v.clone())).collect();
    out.push((VERSION.into(), meta.version.to_string()));
    out.push((CRC32C.into(), format!("{:08x}", meta.crc32c)));
    if let Some(etag) = meta.s3_etag {
        out.push((S3_ETAG.into(), etag.to_string()));
    }
    out
}

/// What a blob's metadata says: ours, and the user's.
#[derive(Debug, Default)]
pub(super) struct Ours {
    /// 0 when not recorded (a blob of another tool).
    pub version: u64,
    pub crc32c: Option<u32>,
    pub s3_etag: Option<S3ETag>,
    pub user: BTreeMap<String, String>,
}

pub(super) fn decode<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Ours {
    let mut ours = Ours::default();
    for (k, v) in pairs {
        match k.to_ascii_lowercase().as_str() {
            VERSION => ours.version = v.parse().unwrap_or(0),
            CRC32C => ours.crc32c = u32::from_str_radix(v, 16).ok(),
            S3_ETAG => ours.s3_etag = S3ETag::parse(v),
            _ => {
                ours.user.insert(decode_name(k), v.to_owned());
            }
        }
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_round_trip_and_ours_stay_ours() {
        let user: BTreeMap<String, String> =
            [("owner", "me"), ("my-key", "1"), ("bpx_x", "2"), ("blockproxy-version", "99")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let etag = S3ETag::of_data(b"x");
        let sent = encode(ObjectMeta { version: 7, crc32c: 0xabcd, s3_etag: Some(etag) }, &user);
        assert!(sent.iter().all(|(k, _)| is_identifier(k)), "{sent:?}");
        let ours = decode(sent.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!((ours.version, ours.crc32c, ours.s3_etag), (7, Some(0xabcd), Some(etag)));
        let mut want = user.clone();
        want.remove("blockproxy-version");
        assert_eq!(ours.user, want);
    }
}
