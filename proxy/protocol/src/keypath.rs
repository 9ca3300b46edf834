//! How a block key travels in a URL path: percent-encoded, one place for clients and proxies.
//!
//! Every byte outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`) and `/` is escaped, so
//! any key (spaces, `+`, `%`, `#`, `?`, non-ASCII) survives every HTTP client and server, and
//! `/` stays readable in logs. One exception keeps URL parsers from rewriting the path: a `/` that
//! borders a `.` or `..` segment of the key is sent as `%2F` (a parser removes dot segments, even
//! escaped ones, but never looks inside one), so `a/../b` travels as `a%2F..%2Fb`.
//! Decoding is strict: a `%` not followed by two hex digits, or bytes that are not UTF-8, is an
//! error (`400` at the proxy), never a guess, and so is a raw dot segment in the path.

use super::{BlockKey, NameError};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Escaped within a segment: everything but the unreserved characters (`/` never reaches it).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The key as it appears in a URL path (after `/blocks/`).
pub fn encode_key(key: &BlockKey) -> String {
    let is_dot = |s: &str| matches!(s, "." | "..");
    let segments: Vec<&str> = key.as_str().split('/').collect();
    let mut out = String::with_capacity(key.as_str().len());
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            let slash = if is_dot(segments[i - 1]) || is_dot(seg) { "%2F" } else { "/" };
            out.push_str(slash);
        }
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    out
}

/// The key an encoded path tail stands for.
pub fn decode_key(encoded: &str) -> Result<BlockKey, NameError> {
    // A dot segment in the path is never what a client meant: its URL library would have removed
    // it (and `encode_key` never makes one), so it is refused instead of guessed at.
    const DOTS: [&str; 6] = [".", "%2e", "..", ".%2e", "%2e.", "%2e%2e"];
    let dot = |s: &str| DOTS.iter().any(|d| s.eq_ignore_ascii_case(d));
    if encoded.split('/').any(dot) {
        return Err(NameError::DotSegmentInPath);
    }
    if !encoded.contains('%') {
        return BlockKey::try_from(encoded.to_owned());
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digit = |j: usize| bytes.get(j).and_then(|&b| char::from(b).to_digit(16));
            let (hi, lo) = digit(i + 1).zip(digit(i + 2)).ok_or(NameError::BadEscape)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    BlockKey::try_from(String::from_utf8(out).map_err(|_| NameError::NotUtf8)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> BlockKey {
        BlockKey::parse(s).unwrap()
    }

    #[test]
    fn escapes_everything_but_unreserved_and_slash() {
        assert_eq!(encode_key(&key("dir/a b+c=d@e%f:g~h#i?j")), "dir/a%20b%2Bc%3Dd%40e%25f%3Ag~h%23i%3Fj");
        assert_eq!(encode_key(&key("é")), "%C3%A9");
        assert_eq!(encode_key(&key("a//b/")), "a//b/");
    }

    #[test]
    fn dot_segments_are_glued_to_their_neighbours() {
        assert_eq!(encode_key(&key("a/../b")), "a%2F..%2Fb");
        assert_eq!(encode_key(&key("./x")), ".%2Fx");
        assert_eq!(encode_key(&key("a/.")), "a%2F.");
        assert_eq!(encode_key(&key("a/.../b")), "a/.../b");
    }

    #[test]
    fn strict_decoding() {
        for bad in ["%", "%2", "%zz", "a%+1", "%-1"] {
            assert_eq!(decode_key(bad), Err(NameError::BadEscape), "{bad:?}");
        }
        assert_eq!(decode_key("%C3"), Err(NameError::NotUtf8));
        assert_eq!(decode_key("%00"), Err(NameError::Nul));
        for dots in ["..", "a/../b", "%2e%2E/x", "x/.", ".%2e"] {
            assert_eq!(decode_key(dots), Err(NameError::DotSegmentInPath), "{dots:?}");
        }
        // Unescaped characters that survived the transport are taken as they are.
        assert_eq!(decode_key("a+b:c").unwrap(), key("a+b:c"));
    }

    /// What a URL parser does to a path: what reqwest sends must be what we encoded.
    fn through_url_parser(path: &str) -> String {
        let url = url::Url::parse(&format!("http://h/v1/volumes/v/blocks/{path}")).unwrap();
        url.path().strip_prefix("/v1/volumes/v/blocks/").unwrap().to_owned()
    }

    proptest! {
        #[test]
        fn any_key_round_trips(s in "(\\PC|/|\\.|\\.\\.){1,60}") {
            if let Ok(k) = BlockKey::parse(&s) {
                let enc = encode_key(&k);
                prop_assert_eq!(decode_key(&enc), Ok(k.clone()));
                prop_assert_eq!(through_url_parser(&enc), enc.clone());
                prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)));
            }
        }

        #[test]
        fn decoding_never_panics(s in "(\\PC|%[0-9a-fA-F]{0,2}){0,60}") {
            let _ = decode_key(&s);
        }
    }
}
