//! Paths as they travel between mirror nodes: a replicated directory's index
//! and a relative path below it, checked so that no path a peer sends can
//! name anything outside that directory.
//!
//! The check here is lexical (no `..`, `.`, empty component, NUL, leading
//! `/`); the receiver adds the kernel's check (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), which also refuses symlinks
//! planted on the way.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path},
};

/// The longest relative path accepted (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// The longest name of one component (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// A path below one of a module's replicated directories; the empty path is
/// the directory itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath {
    /// Index of the directory in the module's `[[module.dir]]` list.
    pub dir: u8,
    bytes: Vec<u8>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("path of {0} bytes is longer than {MAX_PATH_LEN}")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path has an empty component")]
    Empty,
    #[error("path has a `.` or `..` component")]
    Dots,
    #[error("path component longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("a name holds a `/`")]
    Slash,
}

impl RelPath {
    /// The replicated directory `dir` itself.
    pub fn root(dir: u8) -> Self {
        RelPath {
            dir,
            bytes: Vec::new(),
        }
    }

    /// Checks `bytes` (`a/b/c`, or empty for the directory itself).
    pub fn new(dir: u8, bytes: Vec<u8>) -> Result<Self, BadPath> {
        if bytes.len() > MAX_PATH_LEN {
            return Err(BadPath::TooLong(bytes.len()));
        }
        if bytes.first() == Some(&b'/') {
            return Err(BadPath::Absolute);
        }
        if bytes.contains(&0) {
            return Err(BadPath::Nul);
        }
        if !bytes.is_empty() {
            for name in bytes.split(|b| *b == b'/') {
                match name {
                    b"" => return Err(BadPath::Empty),
                    b"." | b".." => return Err(BadPath::Dots),
                    n if n.len() > MAX_NAME_LEN => return Err(BadPath::NameTooLong),
                    _ => {}
                }
            }
        }
        Ok(RelPath { dir, bytes })
    }

    /// The relative path of `path` below `base`, if it is below it.
    pub fn below(dir: u8, base: &Path, path: &Path) -> Option<Self> {
        let rest = path.strip_prefix(base).ok()?;
        let mut bytes = Vec::new();
        for component in rest.components() {
            let Component::Normal(name) = component else {
                return None;
            };
            if !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(name.as_bytes());
        }
        RelPath::new(dir, bytes).ok()
    }

    /// The path's bytes (`a/b/c`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The path as a relative `Path`; `.` for the directory itself.
    pub fn as_path(&self) -> &Path {
        if self.bytes.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(&self.bytes))
        }
    }

    /// Whether this is the replicated directory itself.
    pub fn is_root(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        if self.bytes.is_empty() {
            return None;
        }
        match self.bytes.iter().rposition(|b| *b == b'/') {
            Some(at) => Some((
                RelPath {
                    dir: self.dir,
                    bytes: self.bytes[..at].to_vec(),
                },
                &self.bytes[at + 1..],
            )),
            None => Some((RelPath::root(self.dir), &self.bytes[..])),
        }
    }

    /// This path with `name` appended (a checked component).
    pub fn join(&self, name: &[u8]) -> Result<RelPath, BadPath> {
        if name.contains(&b'/') {
            return Err(BadPath::Slash);
        }
        let mut bytes = self.bytes.clone();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        RelPath::new(self.dir, bytes)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.dir == other.dir
            && (other.bytes.is_empty()
                || self.bytes == other.bytes
                || (self.bytes.starts_with(&other.bytes)
                    && self.bytes.get(other.bytes.len()) == Some(&b'/')))
    }

    /// Where this path is once `from` is renamed to `to`; `None` unless it
    /// is `from` or lies below it.
    pub fn moved(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if from.is_root() || !self.starts_with(from) {
            return None;
        }
        let mut bytes = to.bytes.clone();
        bytes.extend_from_slice(&self.bytes[from.bytes.len()..]);
        RelPath::new(to.dir, bytes).ok()
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]/{}", self.dir, String::from_utf8_lossy(&self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Result<RelPath, BadPath> {
        RelPath::new(0, text.as_bytes().to_vec())
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_eq!(path("../etc/passwd"), Err(BadPath::Dots));
        assert_eq!(path("a/../../b"), Err(BadPath::Dots));
        assert_eq!(path("a/./b"), Err(BadPath::Dots));
        assert_eq!(path("/etc/passwd"), Err(BadPath::Absolute));
        assert_eq!(path("a//b"), Err(BadPath::Empty));
        assert_eq!(path("a/"), Err(BadPath::Empty));
        assert_eq!(path("a\0b"), Err(BadPath::Nul));
        assert_eq!(path(&"x".repeat(256)), Err(BadPath::NameTooLong));
        assert!(matches!(path(&"a/".repeat(3000)), Err(BadPath::TooLong(_))));
    }

    #[test]
    fn ordinary_paths_are_kept() {
        assert_eq!(path("a/b c/..d").unwrap().as_bytes(), b"a/b c/..d");
        assert!(path("").unwrap().is_root());
        assert_eq!(path("").unwrap().as_path(), Path::new("."));
    }

    #[test]
    fn split_join_and_prefix() {
        let p = path("a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent, path("a/b").unwrap());
        assert_eq!(name, b"c");
        assert_eq!(parent.join(b"c").unwrap(), p);
        assert_eq!(path("a").unwrap().split_last().unwrap().0, RelPath::root(0));
        assert!(p.starts_with(&path("a").unwrap()));
        assert!(p.starts_with(&RelPath::root(0)));
        assert!(!path("ab/c").unwrap().starts_with(&path("a").unwrap()));
        assert!(parent.join(b"..").is_err());
    }

    #[test]
    fn paths_follow_a_rename_of_themselves_or_a_directory_above() {
        let (from, to) = (path("a/b").unwrap(), path("x").unwrap());
        assert_eq!(path("a/b").unwrap().moved(&from, &to), Some(to.clone()));
        assert_eq!(
            path("a/b/c/d").unwrap().moved(&from, &to),
            Some(path("x/c/d").unwrap())
        );
        assert_eq!(path("a/bc").unwrap().moved(&from, &to), None);
        assert_eq!(path("a").unwrap().moved(&from, &to), None);
        assert_eq!(path("a").unwrap().moved(&RelPath::root(0), &to), None);
    }

    #[test]
    fn paths_below_a_base() {
        let base = Path::new("/srv/data");
        assert_eq!(
            RelPath::below(1, base, Path::new("/srv/data/x/y")).unwrap(),
            RelPath::new(1, b"x/y".to_vec()).unwrap()
        );
        assert!(RelPath::below(1, base, Path::new("/srv/data"))
            .unwrap()
            .is_root());
        assert!(RelPath::below(1, base, Path::new("/srv/other")).is_none());
    }
}
