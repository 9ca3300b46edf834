//! Volume ids and block keys, validated once, here, and carried as types afterwards. Volume ids
//! end up in file names and URLs unescaped, so they are strict; keys are any S3 key.

use std::fmt;

/// Where deletes leave their tombstones in the bucket (outside every volume's prefix, but the
/// same place as a user key of a volume whose prefix is empty): no key may start with it.
pub const RESERVED_KEY_PREFIX: &str = ".blockproxy-tombstones/";

pub const MAX_VOLUME_ID_LEN: usize = 63;
/// S3's limit on an object key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest key a volume with this store prefix can hold: the store key `{prefix}/{key}` is
/// what S3 limits to [`MAX_KEY_LEN`].
pub fn max_key_len_under(prefix: &str) -> usize {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() { MAX_KEY_LEN } else { MAX_KEY_LEN.saturating_sub(prefix.len() + 1) }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} contains {ch:?}; allowed are ASCII letters, digits and {allowed}")]
    BadChar { what: &'static str, ch: char, allowed: &'static str },
    #[error("block key contains a NUL character")]
    Nul,
    #[error("keys under {RESERVED_KEY_PREFIX} are reserved: blockproxy keeps its delete markers there")]
    Reserved,
    #[error("the keys '.' and '..' cannot travel in a URL path")]
    DotKey,
    #[error("block key in the path has an invalid percent-escape (a '%' must be followed by two hex digits)")]
    BadEscape,
    #[error("block key in the path does not decode to UTF-8")]
    NotUtf8,
    #[error("the path has a '.' or '..' segment; send a '/' next to one as %2F")]
    DotSegmentInPath,
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

/// A block key: any S3 object key, 1-1024 bytes of UTF-8 without NUL (the protocol uses NUL to
/// separate a key from a block index in [`crate::block_route_key`]). It is never a file name: the
/// cache names files by hash and the local-directory store has its own encoding. The keys `.` and
/// `..` alone are refused: no URL can carry them (every URL parser, reqwest's included, removes
/// such a path segment, escaped or not), and S3 tools mishandle them too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct BlockKey(String);

impl BlockKey {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        Self::check(s).map(|()| Self(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), NameError> {
        const WHAT: &str = "block key";
        if s.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if s.len() > MAX_KEY_LEN {
            return Err(NameError::TooLong { what: WHAT, len: s.len(), max: MAX_KEY_LEN });
        }
        if s.contains('\0') {
            return Err(NameError::Nul);
        }
        if matches!(s, "." | "..") {
            return Err(NameError::DotKey);
        }
        if s.starts_with(RESERVED_KEY_PREFIX) {
            return Err(NameError::Reserved);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// [`BlockKey::parse`] of a string already owned, which it keeps.
impl TryFrom<String> for BlockKey {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, NameError> {
        Self::check(&s).map(|()| Self(s))
    }
}

impl<'de> serde::Deserialize<'de> for BlockKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
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
    fn accepts_any_s3_key() {
        let long = "k".repeat(MAX_KEY_LEN);
        for k in ["a", "a b", "a+b=c@d%e:f~g#h", "é/日本", "/abs", "a//b", "a/", "a/../b", "./x", "...", "a\\b", &long]
        {
            assert_eq!(BlockKey::parse(k).unwrap().as_str(), k);
        }
    }

    #[test]
    fn refuses_what_cannot_travel() {
        for k in ["", ".", "..", "a\0b", ".blockproxy-tombstones/x"] {
            assert!(BlockKey::parse(k).is_err(), "{k:?} was accepted");
        }
        let err = BlockKey::parse(&"é".repeat(MAX_KEY_LEN / 2 + 1)).unwrap_err();
        assert_eq!(err, NameError::TooLong { what: "block key", len: MAX_KEY_LEN + 2, max: MAX_KEY_LEN });
    }

    #[test]
    fn the_prefix_takes_its_share_of_the_key_length() {
        assert_eq!(max_key_len_under(""), MAX_KEY_LEN);
        assert_eq!(max_key_len_under("/"), MAX_KEY_LEN);
        assert_eq!(max_key_len_under("blocks/"), MAX_KEY_LEN - "blocks/".len());
    }

    #[test]
    fn volume_ids() {
        VolumeId::parse("vol-1").unwrap();
        for v in ["", "-a", "a-", "a/b", "..", &"a".repeat(64)] {
            assert!(VolumeId::parse(v).is_err(), "{v:?} was accepted");
        }
    }

    proptest! {
        /// Every string of 1..=1024 bytes without NUL is a key, other than '.' and '..'.
        #[test]
        fn keys_are_any_utf8_without_nul(s in "(\\PC|\\x00){0,400}") {
            let expected = !s.is_empty() && s.len() <= MAX_KEY_LEN && !s.contains('\0') && s != "." && s != "..";
            prop_assert_eq!(BlockKey::parse(&s).is_ok(), expected);
        }
    }
}
