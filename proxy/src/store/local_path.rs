//! Where the local-directory store keeps an object: any S3 key (1-1024 bytes of UTF-8) maps to a
//! path below the bucket's folder, one-to-one, and back.
//!
//! The key is cut at `/` into segments. Each segment but the last is a directory, the last is the
//! object's file. A segment is written as it is, except that `%` becomes `%25`, a leading `.`
//! becomes `%2E`, and the empty segment is `%`. So an entry's name is never empty, `.` or `..`,
//! never hidden, and common keys stay readable (`photos/2024/img 1.jpg` is
//! `photos%/2024%/img 1.jpg`). Names are marked by their ending, which escaping never produces:
//! - `<segment>%`: a directory (so the objects `a` and `a/b` are the file `a` and the file `b`
//!   in the directory `a%`, and both can exist);
//! - `<piece>%+`: a continuation. A segment whose name would pass 255 bytes (the file-name limit)
//!   is split, at character boundaries, into pieces of at most 253 bytes, each but the last a
//!   directory of this kind;
//! - anything else: the object's file.
//!
//! A path is at most about three times the key's length (3.1 KiB for the worst 1 KiB key), below
//! Linux's 4 KiB path limit for store folders with paths of a few hundred bytes. Entries that do
//! not decode (files other tools put there, like `.hidden`) are not objects.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Longest name of a piece, leaving room for the 2-byte `%+` mark within 255 bytes.
const MAX_PIECE: usize = 253;
const DIR_MARK: &str = "%";
const CONTINUATION_MARK: &str = "%+";
const EMPTY_SEGMENT: &str = "%";

/// The escaped name of one key segment (before marks and splitting).
fn escape(segment: &str) -> String {
    if segment.is_empty() {
        return EMPTY_SEGMENT.to_owned();
    }
    let mut out = String::with_capacity(segment.len());
    for (i, ch) in segment.char_indices() {
        match ch {
            '%' => out.push_str("%25"),
            '.' if i == 0 => out.push_str("%2E"),
            ch => out.push(ch),
        }
    }
    out
}

fn unescape(name: &str) -> Option<String> {
    if name == EMPTY_SEGMENT {
        return Some(String::new());
    }
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digit = |j: usize| bytes.get(j).and_then(|&b| char::from(b).to_digit(16));
            let (hi, lo) = digit(i + 1).zip(digit(i + 2))?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits an escaped name into continuation pieces of at most [`MAX_PIECE`] bytes and a last
/// piece of at most `last_max`, never inside a character or an escape.
fn pieces(escaped: &str, last_max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = escaped;
    while rest.len() > last_max {
        let mut cut = MAX_PIECE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // An escape is three ASCII bytes: never leave its '%' or first digit at the end.
        if let Some(pct) = rest[..cut].rfind('%').filter(|&p| p + 3 > cut) {
            cut = pct;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

/// The path of `key`'s file, relative to the bucket folder.
pub(super) fn key_path(key: &str) -> PathBuf {
    let mut path = PathBuf::new();
    let mut segments = key.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let escaped = escape(segment);
        // A directory's last piece carries the 1-byte directory mark; a file's none.
        let parts = pieces(&escaped, if last { 255 } else { 254 });
        let n = parts.len();
        for (i, piece) in parts.into_iter().enumerate() {
            let name = if i + 1 < n {
                format!("{piece}{CONTINUATION_MARK}")
            } else if last {
                piece.to_owned()
            } else {
                format!("{piece}{DIR_MARK}")
            };
            path.push(name);
        }
    }
    path
}

/// Decodes the names of a file's path below the bucket folder back into its key; `None` when
/// the path is not the one [`key_path`] makes for a key (a file another tool put there).
pub(super) fn path_key<'a>(names: impl IntoIterator<Item = &'a OsStr>) -> Option<String> {
    let names: Vec<&str> = names.into_iter().map(|n| std::str::from_utf8(n.as_bytes()).ok()).collect::<Option<_>>()?;
    let (file, dirs) = names.split_last()?;
    let mut key = String::new();
    let mut segment = String::new();
    for name in dirs {
        if let Some(piece) = name.strip_suffix(CONTINUATION_MARK) {
            segment.push_str(piece);
        } else {
            segment.push_str(name.strip_suffix(DIR_MARK)?);
            key.push_str(&unescape(&std::mem::take(&mut segment))?);
            key.push('/');
        }
    }
    segment.push_str(file);
    key.push_str(&unescape(&segment)?);
    // Only the canonical spelling is the key's path: `%41` is not the object `A`.
    let canonical = key_path(&key);
    (canonical.iter().map(|n| n.as_bytes()).eq(names.iter().map(|n| n.as_bytes()))).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    fn round_trip(key: &str) -> PathBuf {
        let path = key_path(key);
        let names: Vec<&OsStr> = path.iter().collect();
        assert_eq!(path_key(names).as_deref(), Some(key), "{key:?} -> {path:?}");
        path
    }

    #[test]
    fn common_keys_stay_readable() {
        assert_eq!(round_trip("photos/2024/img 1.jpg"), PathBuf::from("photos%/2024%/img 1.jpg"));
        assert_eq!(round_trip("a"), PathBuf::from("a"));
        assert_eq!(round_trip("a/b"), PathBuf::from("a%/b"));
        assert_eq!(round_trip("100%"), PathBuf::from("100%25"));
        assert_eq!(round_trip("é+=@:~#"), PathBuf::from("é+=@:~#"));
    }

    #[test]
    fn dot_and_empty_segments_are_names_of_their_own() {
        assert_eq!(round_trip("."), PathBuf::from("%2E"));
        assert_eq!(round_trip("a/../b"), PathBuf::from("a%/%2E.%/b"));
        assert_eq!(round_trip(".hidden"), PathBuf::from("%2Ehidden"));
        assert_eq!(round_trip("/a//"), PathBuf::from("%%/a%/%%/%"));
    }

    #[test]
    fn long_segments_are_split_below_the_name_limit() {
        for key in ["x".repeat(1024), "%".repeat(1024), "é".repeat(512), format!("d/{}", "ab%".repeat(300))] {
            let path = round_trip(&key);
            assert!(path.iter().all(|n| n.len() <= 255), "{path:?}");
            assert!(path.as_os_str().len() <= 3 * 1024 + 64);
        }
    }

    #[test]
    fn foreign_names_are_not_objects() {
        for names in [vec![".hidden"], vec!["a"; 0], vec!["dir", "f"], vec!["bad%zz"], vec!["a%"], vec!["%41"]] {
            let names: Vec<&OsStr> = names.iter().map(OsStr::new).collect();
            assert_eq!(path_key(names.clone()), None, "{names:?}");
        }
    }

    proptest! {
        /// Every key maps to a path that stays below the bucket folder, with names of at most
        /// 255 bytes, and decodes back to exactly that key.
        #[test]
        fn every_key_has_a_safe_path_of_its_own(key in "(\\PC|/|%|\\.){1,300}") {
            let path = round_trip(&key);
            prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))));
            prop_assert!(path.iter().all(|n| !n.is_empty() && n.len() <= 255));
        }

        /// Two different keys never share a path (keys from a small alphabet, so that near misses
        /// like `a/b` and `a%/b` come up).
        #[test]
        fn the_mapping_is_injective(a in "[a./%+]{1,4}(/[a./%+]{0,3}){0,3}", b in "[a./%+]{1,4}(/[a./%+]{0,3}){0,3}") {
            prop_assume!(a != b);
            prop_assert_ne!(key_path(&a), key_path(&b));
        }
    }
}
