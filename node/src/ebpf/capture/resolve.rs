//! Resolving a `truncate(path)` to a file under a root, and an `msync` to
//! the ranges of the files it names, from user space.
//!
//! The kernel programs cannot look a path up, so they report the path as
//! the caller passed it, with its pid and tid. It is looked up here through
//! `/proc/<tid>/cwd` (relative paths) or `/proc/<tid>/root` (absolute ones),
//! which sees the caller's mount namespace and chroot. The limits: the
//! caller may have changed directory, exited, or the path may name another
//! file by the time we look; a symlink as last component is not followed.
//! Every such case ends as [`Resolution::Unknown`], which the mirror hands
//! to its inotify safety net.
//!
//! Stores through a shared mapping reach no tracepoint, so an
//! `msync(MS_SYNC)` (its caller held at the call's exit) is resolved
//! through the caller's `/proc/<pid>/maps`: each shared file mapping that
//! overlaps the synced addresses and whose file lies under a root gives
//! the file range those addresses map, which then travels like a write's
//! ([`mapped_ranges`]).

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

/// One line of `/proc/<pid>/maps` that maps a file: its addresses
/// `[start, end)`, whether it is shared, the file offset at `start`, and
/// the file (its inode, and its path as the process sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub shared: bool,
    pub offset: u64,
    pub ino: u64,
    pub path: PathBuf,
}

/// Parses one line of `/proc/<pid>/maps`; `None` for anonymous memory and
/// anything that is not a file mapping
/// (`start-end perms offset major:minor inode path`).
pub(crate) fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset, _dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let path = fields.next()?.trim_start();
    let (start, end) = range.split_once('-')?;
    let ino: u64 = inode.parse().ok()?;
    // A deleted file's path ends in " (deleted)": not a name to look up.
    if ino == 0 || !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        shared: perms.as_bytes().get(3) == Some(&b's'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        ino,
        path: PathBuf::from(path),
    })
}

/// The file range `(offset, len)` that the addresses `[addr, addr + len)`
/// cover of `mapping`, if they overlap it.
pub(crate) fn mapped_range(mapping: &Mapping, addr: u64, len: u64) -> Option<(u64, u64)> {
    let from = addr.max(mapping.start);
    let to = addr.saturating_add(len).min(mapping.end);
    (from < to).then(|| (mapping.offset + (from - mapping.start), to - from))
}

/// A file range an `msync` made durable, of a file under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappedRange {
    pub st_dev: u64,
    pub ino: u64,
    pub root: RootId,
    pub offset: u64,
    pub len: u64,
    /// The file's path in the caller's view.
    pub path: PathBuf,
}

/// The ranges of files under a root that process `pid`'s shared mappings
/// give the addresses `[addr, addr + len)`: what its `msync` of them
/// made durable. Read while the caller is held, so its mappings stay as
/// they were at the call. A mapping whose file cannot be found again (the
/// process exited, the name now names another file) gives nothing: the
/// inotify safety net compares it when it is closed.
pub(crate) fn mapped_ranges<V>(
    pid: u32,
    addr: u64,
    len: u64,
    roots: &BTreeMap<RootId, V>,
) -> Vec<MappedRange> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let base = PathBuf::from(format!("/proc/{pid}/root"));
    let mut ranges = Vec::new();
    for mapping in maps.lines().filter_map(parse_maps_line) {
        if !mapping.shared {
            continue;
        }
        let Some((offset, len)) = mapped_range(&mapping, addr, len) else {
            continue;
        };
        let full = base.join(mapping.path.strip_prefix("/").unwrap_or(&mapping.path));
        if let Resolution::Under { st_dev, ino, root } = resolve_below(&full, roots) {
            if ino == mapping.ino {
                ranges.push(MappedRange {
                    st_dev,
                    ino,
                    root,
                    offset,
                    len,
                    path: mapping.path,
                });
            }
        }
    }
    ranges
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

    #[test]
    fn maps_lines_give_file_mappings_only() {
        let shared = parse_maps_line(
            "7f1c2a000000-7f1c2a200000 rw-s 00100000 08:01 1234567                    /data/db/file one",
        )
        .unwrap();
        assert_eq!(
            shared,
            Mapping {
                start: 0x7f1c_2a00_0000,
                end: 0x7f1c_2a20_0000,
                shared: true,
                offset: 0x10_0000,
                ino: 1_234_567,
                path: PathBuf::from("/data/db/file one"),
            }
        );
        let private =
            parse_maps_line("55d0c000-55d0d000 r--p 00000000 08:01 42 /usr/bin/x").unwrap();
        assert!(!private.shared);
        assert_eq!(
            parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]"),
            None
        );
        assert_eq!(
            parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0"),
            None
        );
        assert_eq!(
            parse_maps_line("7f00-7f10 rw-s 00000000 08:01 9 /gone (deleted)"),
            None
        );
        assert_eq!(parse_maps_line("garbage"), None);
    }

    #[test]
    fn an_msync_range_maps_to_the_file_range_it_overlaps() {
        let m = Mapping {
            start: 0x1000,
            end: 0x5000,
            shared: true,
            offset: 0x10_000,
            ino: 1,
            path: PathBuf::from("/f"),
        };
        // Inside: the offset follows the address.
        assert_eq!(mapped_range(&m, 0x2000, 0x1000), Some((0x11_000, 0x1000)));
        // Across either end: cut to the mapping.
        assert_eq!(mapped_range(&m, 0x0, 0x2000), Some((0x10_000, 0x1000)));
        assert_eq!(mapped_range(&m, 0x4000, 0x9000), Some((0x13_000, 0x1000)));
        // Beside it, or empty: nothing.
        assert_eq!(mapped_range(&m, 0x5000, 0x1000), None);
        assert_eq!(mapped_range(&m, 0x0, 0x1000), None);
        assert_eq!(mapped_range(&m, 0x2000, 0), None);
        assert_eq!(mapped_range(&m, u64::MAX - 1, 10), None);
    }

    #[test]
    fn an_msync_is_resolved_to_the_replicated_file_this_process_maps() {
        let tmp = std::env::temp_dir().join(format!("halo-mapped-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let inside = root.join("data");
        let outside = tmp.join("other");
        for file in [&inside, &outside] {
            std::fs::write(file, vec![0u8; 3 * 4096]).unwrap();
        }
        let roots = BTreeMap::from([(id(&root), ())]);
        const LEN: usize = 3 * 4096;
        let map = |path: &Path| -> u64 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            // SAFETY: a fresh shared mapping of a file only this test uses,
            // unmapped below; the mapping outlives the descriptor.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(at, libc::MAP_FAILED);
            at as u64
        };
        let (mapped_inside, mapped_outside) = (map(&inside), map(&outside));
        let me = std::process::id();

        let at = mapped_inside;
        let found = mapped_ranges(me, at + 4096, 4096, &roots);
        let file = id(&inside);
        assert_eq!(
            found,
            vec![MappedRange {
                st_dev: file.st_dev,
                ino: file.ino,
                root: id(&root),
                offset: 4096,
                len: 4096,
                path: inside.clone(),
            }]
        );
        assert_eq!(
            mapped_ranges(me, mapped_outside, LEN as u64, &roots),
            vec![]
        );
        for at in [mapped_inside, mapped_outside] {
            // SAFETY: unmapping what `map` mapped, used no more.
            unsafe { libc::munmap(at as *mut libc::c_void, LEN) };
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
