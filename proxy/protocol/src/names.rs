//! Volume ids and block keys. Both end up in file names on the proxy's disk and in object-store
//! keys, so they are validated once, here, and carried as types afterwards.

use std::fmt;

pub const MAX_VOLUME_ID_LEN: usize = 63;
pub const MAX_KEY_LEN: usize = 512;
const MAX_SEGMENT_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} contains {ch:?}; allowed are ASCII letters, digits and {allowed}")]
    BadChar { what: &'static str, ch: char, allowed: &'static str },
    #[error("block key must not start or end with '/' or contain an empty segment")]
    EmptySegment,
    #[error("block key must not contain a '.' or '..' segment")]
    DotSegment,
    #[error("block key segment is longer than {MAX_SEGMENT_LEN} bytes")]
    SegmentTooLong,
    #[error("volume id must start and end with a letter or digit")]
    VolumeEdge,
}

/// A volume id: 1-63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric (so it is
/// also a valid Kubernetes label value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct VolumeId(String);

impl VolumeId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "volume id";
        if s.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if s.len() > MAX_VOLUME_ID_LEN {
            return Err(NameError::TooLong { what: WHAT, len: s.len(), max: MAX_VOLUME_ID_LEN });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(NameError::BadChar { what: WHAT, ch, allowed: "'-', '_', '.'" });
        }
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !edge_ok(s.chars().next()) || !edge_ok(s.chars().last()) {
            return Err(NameError::VolumeEdge);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for VolumeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A block key: a relative, `/`-separated path of 1-512 bytes of `[A-Za-z0-9._-]` segments, with
/// no empty, `.` or `..` segment. It maps one-to-one onto a file below the cache folder and onto
/// `{prefix}/{key}` in the store, and can never escape either.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct BlockKey(String);

impl BlockKey {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "block key";
        if s.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if s.len() > MAX_KEY_LEN {
            return Err(NameError::TooLong { what: WHAT, len: s.len(), max: MAX_KEY_LEN });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
            return Err(NameError::BadChar { what: WHAT, ch, allowed: "'-', '_', '.', '/'" });
        }
        for segment in s.split('/') {
            match segment {
                "" => return Err(NameError::EmptySegment),
                "." | ".." => return Err(NameError::DotSegment),
                seg if seg.len() > MAX_SEGMENT_LEN => return Err(NameError::SegmentTooLong),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for BlockKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_keys() {
        for k in ["a", "chunks/0/0/1_0_4194304", "x.y-z_1", "dir/.hidden"] {
            BlockKey::parse(k).unwrap();
        }
    }

    #[test]
    fn rejects_escaping_keys() {
        for k in ["", "/abs", "a//b", "a/", "..", "a/../b", ".", "a/./b", "a\\b", "a b", "é"] {
            assert!(BlockKey::parse(k).is_err(), "{k:?} was accepted");
        }
        assert!(BlockKey::parse(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(BlockKey::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn volume_ids() {
        VolumeId::parse("vol-1").unwrap();
        for v in ["", "-a", "a-", "a/b", "..", &"a".repeat(64)] {
            assert!(VolumeId::parse(v).is_err(), "{v:?} was accepted");
        }
    }

    proptest! {
        /// Whatever is accepted is a safe relative path: no component can leave its root.
        #[test]
        fn accepted_keys_never_escape(s in "\\PC{0,40}") {
            if let Ok(k) = BlockKey::parse(&s) {
                let p = std::path::Path::new(k.as_str());
                prop_assert!(p.is_relative());
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }

        #[test]
        fn key_shaped_strings_round_trip(s in "[a-z0-9]{1,8}(/[a-z0-9_.-]{1,8}){0,4}") {
            let ok = s.split('/').all(|seg| seg != "." && seg != "..");
            prop_assert_eq!(BlockKey::parse(&s).is_ok(), ok);
        }
    }
}
