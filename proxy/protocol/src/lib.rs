//! The data-plane protocol: paths, headers, name validation, and the documents exchanged between
//! proxies, clients and the operator. It is its own crate (inside `proxy/`) so that the operator
//! depends on the wire format and nothing else of the data plane, and the format is defined once.

mod checksum;
pub mod crc;
mod csi;
mod discovery;
mod drain;
mod keypath;
mod names;
mod object;
mod sidecar_memory;
mod volumes;

pub use checksum::{Checksum, ChecksumError, RunningChecksum, crc32c_text};
pub use csi::*;
pub use discovery::{DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation};
pub use drain::{DirtyKey, DirtyKeys, DrainStatus, StoreObject, StoreObjects};
pub use keypath::{decode_key, encode_key};
pub use names::{
    BlockKey, MAX_KEY_LEN, MAX_VOLUME_ID_LEN, NameError, RESERVED_KEY_PREFIX, VolumeId, max_key_len_under,
};
pub use object::*;
pub use sidecar_memory::*;
pub use volumes::{VolumeConfig, VolumesFile, VolumesFileError};

/// Prefix of every versioned API path.
pub const API_V1: &str = "/v1";
/// Cheap RTT probe: no auth, no body, answered without touching disk or store.
pub const PING_PATH: &str = "/v1/ping";
/// Liveness.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: the cache index is loaded and the proxy accepts writes.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// `POST` starts a drain (stop accepting writes, flush everything); `GET` reports [`DrainStatus`].
/// Authenticated with the admin token.
pub const DRAIN_PATH: &str = "/v1/admin/drain";

/// `Content-Type`-independent checksum of a block body, sent on PUT: `crc32c=<8 hex>` or
/// `sha256=<64 hex>`. Returned on GET and HEAD as `crc32c=...`. A PUT whose body is sent as it
/// arrives (chunked) may send it as a trailer instead, declared up front with
/// `Trailer: x-blockproxy-checksum`: the proxy then checks it after the last byte, and stores
/// nothing when it is missing or wrong.
pub const CHECKSUM_HEADER: &str = "x-blockproxy-checksum";
/// The body's length in bytes, for a PUT sent without `Content-Length` (chunked, with its
/// checksum as a trailer): the proxy reserves that much of its in-flight budget rather than a
/// whole block's, and refuses a body of any other length.
pub const LENGTH_HEADER: &str = "x-blockproxy-length";
/// Write version of a block (decimal u64, larger is newer). A client may set it on PUT and DELETE;
/// the proxy assigns one when absent and returns it. See docs/adr/0002-consistency-contract.md.
pub const VERSION_HEADER: &str = "x-blockproxy-version";
/// Set (to `1`) on a read repair: the PUT carries a copy read elsewhere, to be installed with
/// exactly its `x-blockproxy-version` (never a newer one), or refused with 409 when the proxy
/// already holds that version or a newer one.
pub const REPAIR_HEADER: &str = "x-blockproxy-repair";
/// Set on a request the proxy refuses because it does not serve the volume (`unknown-volume`)
/// or not for this token (`token`), so a caller can tell "this proxy does not serve you (yet)"
/// from a 404 or 401 of anything else that answers on the address.
pub const REFUSAL_HEADER: &str = "x-blockproxy-refusal";
/// [`REFUSAL_HEADER`] value: the proxy's volumes file does not list the volume.
pub const REFUSAL_UNKNOWN_VOLUME: &str = "unknown-volume";
/// [`REFUSAL_HEADER`] value: the token is missing or not the volume's.
pub const REFUSAL_TOKEN: &str = "token";
/// Where a GET was served from: `cache` or `store`.
pub const SOURCE_HEADER: &str = "x-blockproxy-source";
/// Object metadata key (S3 user metadata) carrying the write version in the store.
pub const STORE_VERSION_METADATA: &str = "blockproxy-version";
/// Object metadata key carrying the CRC32C (8 hex digits) of the object as its writer computed it;
/// every fetch verifies it, so corruption in the store is never served as valid.
pub const STORE_CRC32C_METADATA: &str = "blockproxy-crc32c";
/// Object metadata key carrying the object's S3 ETag (unquoted), on stores whose own ETag is
/// something else (GCS, Azure): what S3 clients are answered when the object is read back.
pub const STORE_S3_ETAG_METADATA: &str = "blockproxy-etag";

/// `/v1/volumes/{volume}/blocks/{key}`, the key percent-encoded ([`encode_key`]).
pub fn block_path(volume: &VolumeId, key: &BlockKey) -> String {
    key_path(volume, "blocks", key)
}

/// `/v1/volumes/{volume}/uploads/{key}`: multipart staging ([`UPLOADS_SEGMENT`]).
pub fn upload_path(volume: &VolumeId, key: &BlockKey) -> String {
    key_path(volume, UPLOADS_SEGMENT, key)
}

fn key_path(volume: &VolumeId, segment: &str, key: &BlockKey) -> String {
    format!("{API_V1}/volumes/{}/{segment}/{}", volume.as_str(), encode_key(key))
}

/// `/v1/volumes/{volume}/dirty?prefix=...`: keys acknowledged but not yet flushed, as [`DirtyKeys`].
pub fn dirty_keys_path(volume: &VolumeId) -> String {
    format!("{API_V1}/volumes/{}/dirty", volume.as_str())
}

/// `/v1/volumes/{volume}/objects?prefix=...`: the store's objects under the volume, as [`StoreObjects`].
pub fn store_objects_path(volume: &VolumeId) -> String {
    format!("{API_V1}/volumes/{}/objects", volume.as_str())
}

/// Splits a raw (still percent-encoded) request path of the form
/// `/v1/volumes/{volume}/blocks/{key}` into validated parts, decoding the key ([`decode_key`]).
/// Returns `None` when the path is not a block path at all, and an error when it is one with an
/// invalid volume or key.
pub fn parse_block_path(path: &str) -> Option<Result<(VolumeId, BlockKey), NameError>> {
    parse_key_path(path, "blocks")
}

/// [`parse_block_path`] for `/v1/volumes/{volume}/uploads/{key}`.
pub fn parse_upload_path(path: &str) -> Option<Result<(VolumeId, BlockKey), NameError>> {
    parse_key_path(path, UPLOADS_SEGMENT)
}

fn parse_key_path(path: &str, segment: &str) -> Option<Result<(VolumeId, BlockKey), NameError>> {
    let (volume, key) = split_key_path(path, segment)?;
    Some(VolumeId::parse(volume).and_then(|v| decode_key(key).map(|k| (v, k))))
}

/// The raw volume and key of `/v1/volumes/{volume}/{segment}/{key}`. Volume ids have no '/',
/// so the first "/{segment}/" ends the volume. Found without building that pattern: every
/// request's path goes through here.
fn split_key_path<'p>(path: &'p str, segment: &str) -> Option<(&'p str, &'p str)> {
    let rest = path.strip_prefix("/v1/volumes/")?;
    rest.match_indices('/').find_map(|(at, _)| {
        let key = rest[at + 1..].strip_prefix(segment)?.strip_prefix('/')?;
        Some((&rest[..at], key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_paths_round_trip() {
        let v = VolumeId::parse("vol-1").unwrap();
        let k = BlockKey::parse("chunks/0/1_0_4194304 é+").unwrap();
        let p = block_path(&v, &k);
        assert_eq!(p, "/v1/volumes/vol-1/blocks/chunks/0/1_0_4194304%20%C3%A9%2B");
        let (v2, k2) = parse_block_path(&p).unwrap().unwrap();
        assert_eq!((v2, k2), (v.clone(), k.clone()));
        let u = upload_path(&v, &k);
        assert_eq!(u, "/v1/volumes/vol-1/uploads/chunks/0/1_0_4194304%20%C3%A9%2B");
        assert_eq!(parse_upload_path(&u).unwrap().unwrap(), (v, k));
        assert!(parse_block_path(&u).is_none());
    }

    proptest::proptest! {
        /// The split is the first "/{segment}/", as `split_once` with that pattern finds it.
        #[test]
        fn key_paths_split_at_the_first_segment(rest in "[a-z/]{0,24}", segment in "(blocks|uploads|b)") {
            let path = format!("/v1/volumes/{rest}");
            let pattern = format!("/{segment}/");
            proptest::prop_assert_eq!(split_key_path(&path, &segment), rest.split_once(pattern.as_str()));
        }
    }

    #[test]
    fn non_block_paths_are_not_parsed() {
        assert!(parse_block_path("/v1/ping").is_none());
        assert!(parse_block_path("/v1/volumes/x").is_none());
    }

    #[test]
    fn bad_keys_in_paths_are_errors() {
        assert_eq!(parse_block_path("/v1/volumes/v/blocks/a%zz").unwrap(), Err(NameError::BadEscape));
        assert_eq!(parse_block_path("/v1/volumes/v/blocks/%FF").unwrap(), Err(NameError::NotUtf8));
        assert!(parse_block_path("/v1/volumes/../blocks/k").unwrap().is_err());
        assert!(parse_block_path("/v1/volumes/v/blocks/").unwrap().is_err());
    }

    proptest::proptest! {
        /// Any key and valid volume: the path parses back to exactly them.
        #[test]
        fn block_paths_round_trip_any_key(v in "[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?", k in "(\\PC|/){1,80}") {
            if let (Ok(v), Ok(k)) = (VolumeId::parse(&v), BlockKey::parse(&k)) {
                let parsed = parse_block_path(&block_path(&v, &k));
                proptest::prop_assert_eq!(parsed, Some(Ok((v, k))));
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "\\PC{0,80}") {
            let _ = parse_block_path(&path);
        }
    }
}
