//! Inode numbers for paths. FUSE names files by inode; the volume names them by key. Each path
//! gets one number for the life of the mount (numbers are never reused, so a stale kernel entry
//! can never reach another file). Entries are kept until unmount: a mount that has seen N paths
//! holds N small entries, like mountpoint-s3's superblock.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, (String, Kind)>,
    by_path: HashMap<String, u64>,
    next: u64,
}

/// The table; the root directory is inode 1, path `""`.
pub struct Inodes(Mutex<Table>);

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Table { next: ROOT + 1, ..Table::default() };
        t.by_ino.insert(ROOT, (String::new(), Kind::Dir));
        t.by_path.insert(String::new(), ROOT);
        Self(Mutex::new(t))
    }
}

impl Inodes {
    /// The path and kind of `ino`, if the kernel got it from us.
    pub fn get(&self, ino: u64) -> Option<(String, Kind)> {
        self.0.lock().unwrap().by_ino.get(&ino).cloned()
    }

    /// The number of `path` (a new one the first time), now of kind `kind`.
    pub fn intern(&self, path: &str, kind: Kind) -> u64 {
        let mut t = self.0.lock().unwrap();
        if let Some(&ino) = t.by_path.get(path) {
            t.by_ino.insert(ino, (path.to_owned(), kind));
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_ino.insert(ino, (path.to_owned(), kind));
        t.by_path.insert(path.to_owned(), ino);
        ino
    }

    /// After a rename: `from`'s number now names `to` (the kernel keeps using it for the moved
    /// file); `to`'s old number, if any, is forgotten.
    pub fn rename(&self, from: &str, to: &str) {
        let mut t = self.0.lock().unwrap();
        if let Some(old) = t.by_path.remove(to) {
            t.by_ino.remove(&old);
        }
        if let Some(ino) = t.by_path.remove(from) {
            let kind = t.by_ino.get(&ino).map_or(Kind::File, |e| e.1);
            t.by_ino.insert(ino, (to.to_owned(), kind));
            t.by_path.insert(to.to_owned(), ino);
        }
    }
}

/// Why a name cannot be part of a key.
#[derive(Debug, PartialEq, Eq)]
pub enum BadName {
    NotUtf8,
    TooLong,
}

/// The path of `name` in the directory `parent` (`""` is the root).
pub fn child_path(parent: &str, name: &std::ffi::OsStr, max_len: usize) -> Result<String, BadName> {
    let name = name.to_str().ok_or(BadName::NotUtf8)?;
    let path = if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") };
    // A directory's marker is one byte longer than its path.
    if path.len() + 1 > max_len {
        return Err(BadName::TooLong);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_path_keeps_its_number_and_a_rename_moves_it() {
        let t = Inodes::default();
        assert_eq!(t.get(ROOT), Some((String::new(), Kind::Dir)));
        let a = t.intern("a", Kind::File);
        let b = t.intern("b", Kind::File);
        assert_ne!(a, b);
        assert_eq!(t.intern("a", Kind::Dir), a);
        assert_eq!(t.get(a), Some(("a".into(), Kind::Dir)));
        t.rename("a", "b");
        assert_eq!(t.get(a), Some(("b".into(), Kind::Dir)));
        assert_eq!(t.get(b), None, "the replaced file's number is gone");
        assert_ne!(t.intern("a", Kind::File), a, "numbers are never reused");
    }

    #[test]
    fn child_paths_join_with_slashes_and_respect_the_key_limit() {
        assert_eq!(child_path("", OsStr::new("x"), 1024).unwrap(), "x");
        assert_eq!(child_path("d/e", OsStr::new("x"), 1024).unwrap(), "d/e/x");
        // "d/abc" is 5 bytes, its directory marker "d/abc/" 6.
        assert_eq!(child_path("d", OsStr::new("abc"), 6).unwrap(), "d/abc");
        assert_eq!(child_path("d", OsStr::new("abc"), 5), Err(BadName::TooLong));
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(child_path("", OsStr::from_bytes(b"\xff"), 1024), Err(BadName::NotUtf8));
    }
}
