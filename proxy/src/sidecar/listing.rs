//! ListObjects (v1) and ListObjectsV2 over pages of the client's merged listing: prefix,
//! delimiter (CommonPrefixes), markers and continuation tokens that resume where the last page
//! ended (never re-listing what came before), and `encoding-type=url`.

use crate::client::{Client, ClientError, ListEntry};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What one listing request returns.
#[derive(Debug, Default)]
pub struct Listed {
    pub objects: Vec<ListEntry>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix returned (S3's NextMarker).
    pub last: Option<String>,
    /// Where the next page resumes: keys strictly after this.
    pub resume_after: Option<String>,
}

/// Keys after every key that starts with the common prefix `p`. No key sorts between `p` and
/// `p` + U+10FFFF except keys that continue with U+10FFFF itself (a noncharacter; such keys are
/// then rolled into the prefix on the next page instead of this one).
pub fn after_prefix(p: &str) -> String {
    format!("{p}\u{10FFFF}")
}

/// The common prefix `key` rolls up into, if any.
fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter?;
    let rest = key.get(prefix.len()..)?;
    rest.find(d).map(|pos| &key[..prefix.len() + pos + d.len()])
}

/// Where a listing that starts after `marker` resumes: after the whole common prefix when the
/// marker is one (so a v1 client that passes a CommonPrefix as its marker is not shown it again).
pub fn resume_point(marker: &str, prefix: &str, delimiter: Option<&str>) -> String {
    match common_prefix(marker, prefix, delimiter) {
        Some(p) if p == marker => after_prefix(p),
        _ => marker.to_owned(),
    }
}

/// Lists up to `max_keys` objects and common prefixes under `prefix` after `after`.
pub async fn list(
    client: &Client,
    prefix: &str,
    delimiter: Option<&str>,
    after: &str,
    max_keys: usize,
) -> Result<Listed, ClientError> {
    let mut out = Listed::default();
    let mut after = after.to_owned();
    if max_keys == 0 {
        return Ok(out);
    }
    loop {
        let page = client.list_page(prefix, &after, 1000).await?;
        let mut skipped_to_prefix_end = false;
        for e in page.entries {
            if out.objects.len() + out.common_prefixes.len() >= max_keys {
                out.truncated = true;
                return Ok(out);
            }
            match common_prefix(&e.key, prefix, delimiter) {
                Some(p) => {
                    let p = p.to_owned();
                    after = after_prefix(&p);
                    out.resume_after = Some(after.clone());
                    out.last = Some(p.clone());
                    out.common_prefixes.push(p);
                    // The rest of this page is mostly the same prefix: skip past it.
                    skipped_to_prefix_end = true;
                    break;
                }
                None => {
                    after = e.key.clone();
                    out.resume_after = Some(after.clone());
                    out.last = Some(e.key.clone());
                    out.objects.push(e);
                }
            }
        }
        if !skipped_to_prefix_end && !page.truncated {
            return Ok(out);
        }
    }
}

/// S3's `encoding-type=url`: every byte outside the unreserved set is percent-encoded (`/` too
/// is kept readable), so `+` and spaces survive clients that decode with `unquote_plus`.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, KEY_ENCODE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes_roll_up_at_the_first_delimiter_after_the_prefix() {
        assert_eq!(common_prefix("a/b/c", "", Some("/")), Some("a/"));
        assert_eq!(common_prefix("a/b/c", "a/", Some("/")), Some("a/b/"));
        assert_eq!(common_prefix("a/b", "a/", Some("/")), None);
        assert_eq!(common_prefix("a/b", "a/", None), None);
        assert_eq!(common_prefix("x--y--z", "x", Some("--")), Some("x--"));
    }

    #[test]
    fn a_common_prefix_marker_resumes_after_the_whole_prefix() {
        assert_eq!(resume_point("a/", "", Some("/")), after_prefix("a/"));
        assert_eq!(resume_point("a/b", "", Some("/")), "a/b");
        assert!(after_prefix("a/").as_str() > "a/zzzz" && after_prefix("a/").as_str() < "a0");
        assert_eq!(resume_point("a/x", "a/", Some("/")), "a/x");
    }

    #[test]
    fn url_encoding_keeps_plus_and_space_apart() {
        assert_eq!(url_encode("a b+c/é%"), "a%20b%2Bc/%C3%A9%25");
    }
}
