//! Directory listings: a directory `d` is the prefix `d/`, listed one page at a time as the
//! kernel reads on, its children found among the keys (there is no delimiter listing at the
//! proxies). Keys that are no path (`a//b`, `./x`) are skipped, the directory marker `d/` too.

use super::inodes::Kind;
use crate::client::{Client, ClientError};
use std::collections::HashSet;

/// Keys asked for per page.
const PAGE: usize = 1000;
/// Sorts after every UTF-8 continuation of a prefix: skipping past `p` + this skips `p`'s subtree.
const PAST_SUBTREE: char = char::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub kind: Kind,
}

/// The child of `prefix` that `key` is, or shows, if any: a file (`prefix` + `name`) or a
/// directory (`prefix` + `name/...`).
pub fn child_of(prefix: &str, key: &str) -> Option<Child> {
    let rest = key.strip_prefix(prefix)?;
    let (name, kind) = match rest.split_once('/') {
        Some((name, below)) => {
            // A key under the child must be a path itself (or a directory marker, ending in
            // '/') for the child to show.
            let mut parts: Vec<&str> = below.split('/').collect();
            if parts.last() == Some(&"") {
                parts.pop();
            }
            if !parts.iter().all(|p| is_name(p)) {
                return None;
            }
            (name, Kind::Dir)
        }
        None => (rest, Kind::File),
    };
    is_name(name).then(|| Child { name: name.to_owned(), kind })
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".."
}

/// A directory being read: the children found so far, and where the listing goes on.
pub struct Listing {
    prefix: String,
    after: String,
    done: bool,
    seen: HashSet<String>,
    pub children: Vec<Child>,
    /// Files being written on this mount (not yet in any listing), shown at the end.
    pending: Vec<String>,
}

impl Listing {
    /// `dir` is the directory's path (`""` for the root).
    pub fn new(dir: &str, pending: Vec<String>) -> Self {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        Self { prefix, after: String::new(), done: false, seen: HashSet::new(), children: Vec::new(), pending }
    }

    /// Lists on until at least `want` children are known or the directory ends.
    pub async fn fill(&mut self, client: &Client, want: usize) -> Result<(), ClientError> {
        while !self.done && self.children.len() < want {
            let page = client.list_page(&self.prefix, &self.after, PAGE).await?;
            let keys: Vec<String> = page.entries.into_iter().map(|e| e.key).collect();
            self.add_page(&keys, page.truncated);
        }
        Ok(())
    }

    /// Takes one page of keys (in key order); `more` when the listing goes on after it.
    pub fn add_page(&mut self, keys: &[String], more: bool) {
        let mut last_dir = None;
        for key in keys {
            let Some(child) = child_of(&self.prefix, key) else { continue };
            last_dir = (child.kind == Kind::Dir).then(|| child.name.clone());
            if self.seen.insert(child.name.clone()) {
                self.children.push(child);
            }
        }
        self.after = match (last_dir, keys.last()) {
            // The rest of a subdirectory adds nothing: skip its keys.
            (Some(d), _) => format!("{}{d}/{PAST_SUBTREE}", self.prefix),
            (None, Some(k)) => k.clone(),
            (None, None) => self.after.clone(),
        };
        if !more || keys.is_empty() {
            self.done = true;
            for name in std::mem::take(&mut self.pending) {
                if self.seen.insert(name.clone()) {
                    self.children.push(Child { name, kind: Kind::File });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn keys_become_files_and_directories_and_non_paths_are_hidden() {
        let f = |n: &str| Some(Child { name: n.into(), kind: Kind::File });
        let d = |n: &str| Some(Child { name: n.into(), kind: Kind::Dir });
        assert_eq!(child_of("a/", "a/x"), f("x"));
        assert_eq!(child_of("a/", "a/sub/y/z"), d("sub"));
        assert_eq!(child_of("a/", "a/sub/"), d("sub"), "a marker shows its directory");
        assert_eq!(child_of("a/", "a/"), None, "the directory's own marker");
        assert_eq!(child_of("a/", "a//x"), None);
        assert_eq!(child_of("a/", "a/../x"), None);
        assert_eq!(child_of("a/", "a/s//x"), None);
        assert_eq!(child_of("a/", "b/x"), None);
        assert_eq!(child_of("", "top"), f("top"));
    }

    #[test]
    fn pages_dedupe_directories_skip_subtrees_and_end_with_pending_files() {
        let mut l = Listing::new("d", vec!["new.txt".into(), "a".into()]);
        l.add_page(&keys(&["d/", "d/a", "d/b/1", "d/b/2"]), true);
        assert_eq!(l.after, format!("d/b/{}", char::MAX), "the next page starts past d/b/");
        assert!(!l.done);
        l.add_page(&keys(&["d/c"]), false);
        let names: Vec<(&str, Kind)> = l.children.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(names, [("a", Kind::File), ("b", Kind::Dir), ("c", Kind::File), ("new.txt", Kind::File)]);
        assert!(l.done);
    }
}
