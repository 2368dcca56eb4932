//! Resolving a `truncate(path)` to a file under a root, from user space.
//!
//! The kernel programs cannot look a path up, so they report the path as
//! the caller passed it, with its pid and tid. It is looked up here through
//! `/proc/<tid>/cwd` (relative paths) or `/proc/<tid>/root` (absolute ones),
//! which sees the caller's mount namespace and chroot. The limits: the
//! caller may have changed directory, exited, or the path may name another
//! file by the time we look; a symlink as last component is not followed.
//! Every such case ends as [`Resolution::Unknown`], which the mirror hands
//! to its inotify safety net.

use std::{
    collections::BTreeMap,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{open, openat, OFlag},
    sys::stat::{fstat, Mode},
};

use super::event::RootId;

/// How many parent directories the climb looks at before it gives up.
const MAX_CLIMB: usize = 4096;

/// Where a truncated path lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The file `(st_dev, ino)` below `root`.
    Under { st_dev: u64, ino: u64, root: RootId },
    /// A file outside every root.
    Outside,
    /// Could not be decided.
    Unknown,
}

/// Resolves `path`, passed to `truncate(2)` by thread `tid` of `pid`.
pub(crate) fn resolve_truncate<V>(
    pid: u32,
    tid: u32,
    path: &Path,
    roots: &BTreeMap<RootId, V>,
) -> Resolution {
    let anchor = if path.is_absolute() { "root" } else { "cwd" };
    let relative = path.strip_prefix("/").unwrap_or(path);
    let candidates = [
        PathBuf::from(format!("/proc/{pid}/task/{tid}/{anchor}")),
        PathBuf::from(format!("/proc/{pid}/{anchor}")),
    ];
    for base in candidates {
        if std::fs::symlink_metadata(&base).is_ok() {
            return resolve_below(&base.join(relative), roots);
        }
    }
    Resolution::Unknown
}

/// Finds the root above `full`, a path the daemon can open.
fn resolve_below<V>(full: &Path, roots: &BTreeMap<RootId, V>) -> Resolution {
    let Ok(meta) = std::fs::symlink_metadata(full) else {
        return Resolution::Unknown;
    };
    if !meta.file_type().is_file() {
        return Resolution::Unknown;
    }
    let Some(parent) = full.parent() else {
        return Resolution::Unknown;
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let Ok(raw) = open(parent, flags, Mode::empty()) else {
        return Resolution::Unknown;
    };
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(raw) };
    match climb_to_root(dir, roots) {
        Some(Some(root)) => Resolution::Under {
            st_dev: meta.dev(),
            ino: meta.ino(),
            root,
        },
        Some(None) => Resolution::Outside,
        None => Resolution::Unknown,
    }
}

/// Climbs `..` from `dir`: `Some(Some(root))` at the first root,
/// `Some(None)` at `/`, `None` on an error or too deep a tree.
fn climb_to_root<V>(dir: OwnedFd, roots: &BTreeMap<RootId, V>) -> Option<Option<RootId>> {
    let mut current = dir;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut here = id_of(&current)?;
    for _ in 0..MAX_CLIMB {
        if roots.contains_key(&here) {
            return Some(Some(here));
        }
        let raw = openat(Some(current.as_raw_fd()), "..", flags, Mode::empty()).ok()?;
        // SAFETY: `openat` returned a fresh descriptor that nothing else owns.
        let parent = unsafe { OwnedFd::from_raw_fd(raw) };
        let up = id_of(&parent)?;
        if up == here {
            return Some(None);
        }
        current = parent;
        here = up;
    }
    None
}

fn id_of(fd: &OwnedFd) -> Option<RootId> {
    let stat = fstat(fd.as_raw_fd()).ok()?;
    Some(RootId {
        st_dev: stat.st_dev,
        ino: stat.st_ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &Path) -> RootId {
        let meta = std::fs::metadata(path).unwrap();
        RootId {
            st_dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    #[test]
    fn a_path_resolves_through_the_callers_proc_root_to_its_root() {
        let tmp = std::env::temp_dir().join(format!("halo-resolve-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), b"x").unwrap();
        std::fs::write(tmp.join("outside"), b"x").unwrap();
        let roots = BTreeMap::from([(id(&root), ())]);
        let me = std::process::id();

        let found = resolve_truncate(me, me, &root.join("sub/file"), &roots);
        let file = id(&root.join("sub/file"));
        assert_eq!(
            found,
            Resolution::Under {
                st_dev: file.st_dev,
                ino: file.ino,
                root: id(&root)
            }
        );
        assert_eq!(
            resolve_truncate(me, me, &tmp.join("outside"), &roots),
            Resolution::Outside
        );
        assert_eq!(
            resolve_truncate(me, me, &tmp.join("missing"), &roots),
            Resolution::Unknown
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
