//! inotify over a primary's replicated directories: every directory is
//! watched, and each event is turned into a [`Change`] named by its
//! [`RelPath`].
//!
//! inotify tells *which* entry changed (create, delete, rename, attributes,
//! modify, close after write); the write capture tells *which bytes*. A
//! queue overflow loses events: it is reported as [`Change::Overflow`], and
//! the caller compares the whole tree by checksums (never silence, never a
//! full re-copy).

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::PathBuf,
};

use super::path::RelPath;

/// What happened to an entry of a watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An entry appeared (created, linked, or moved in from outside).
    Created { path: RelPath, dir: bool },
    /// An entry disappeared (deleted, or moved out of every watched tree).
    Removed { path: RelPath },
    /// An entry moved within the watched trees.
    Renamed { from: RelPath, to: RelPath },
    /// Mode, owner, timestamps or link count changed.
    Attrib { path: RelPath },
    /// A regular file's content changed (write, truncate, …).
    Modified { path: RelPath },
    /// A file open for writing was closed.
    ClosedWrite { path: RelPath },
    /// Events were lost: the whole tree must be compared.
    Overflow,
}

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_EXCL_UNLINK;

/// The inotify instance and the directory each watch stands for.
pub struct Watcher {
    fd: OwnedFd,
    dirs: Vec<PathBuf>,
    watches: HashMap<i32, RelPath>,
    by_path: HashMap<RelPath, i32>,
    /// A MOVED_FROM waiting for its MOVED_TO (same cookie).
    pending_move: Option<(u32, RelPath)>,
}

impl Watcher {
    /// A watcher over the replicated directories `dirs` (index = `RelPath::dir`),
    /// with no watch yet: call [`Watcher::watch_tree`].
    pub fn new(dirs: Vec<PathBuf>) -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher {
            // SAFETY: a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs,
            watches: HashMap::new(),
            by_path: HashMap::new(),
            pending_move: None,
        })
    }

    /// The absolute path of `path`.
    pub fn absolute(&self, path: &RelPath) -> PathBuf {
        let base = &self.dirs[usize::from(path.dir)];
        if path.is_root() {
            base.clone()
        } else {
            base.join(path.as_path())
        }
    }

    /// Watches the directory `path`. Returns false if it is gone.
    pub fn watch(&mut self, path: &RelPath) -> io::Result<bool> {
        let absolute = CString::new(self.absolute(path).as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C string and inotify descriptor.
        let wd = unsafe {
            libc::inotify_add_watch(
                self.fd.as_raw_fd(),
                absolute.as_ptr(),
                MASK | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW,
            )
        };
        if wd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => Ok(false),
                Some(libc::ENOSPC) => Err(io::Error::other(
                    "out of inotify watches: raise fs.inotify.max_user_watches",
                )),
                _ => Err(e),
            };
        }
        self.watches.insert(wd, path.clone());
        self.by_path.insert(path.clone(), wd);
        Ok(true)
    }

    /// Watches `path` and every directory below it; returns the directories watched.
    pub fn watch_tree(&mut self, path: &RelPath) -> io::Result<Vec<RelPath>> {
        let mut watched = Vec::new();
        let mut stack = vec![path.clone()];
        while let Some(dir) = stack.pop() {
            if !self.watch(&dir)? {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(self.absolute(&dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(child) = dir.join(entry.file_name().as_bytes()) {
                        stack.push(child);
                    }
                }
            }
            watched.push(dir);
        }
        Ok(watched)
    }

    /// Renames the watches below `from` (a moved directory keeps its watches).
    fn rename_watches(&mut self, from: &RelPath, to: &RelPath) {
        let moved: Vec<(RelPath, i32)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, wd)| (p.clone(), *wd))
            .collect();
        for (old, wd) in moved {
            self.by_path.remove(&old);
            let rest = &old.as_bytes()[from.as_bytes().len()..];
            let mut bytes = to.as_bytes().to_vec();
            bytes.extend_from_slice(rest);
            if let Ok(new) = RelPath::new(to.dir, bytes) {
                self.watches.insert(wd, new.clone());
                self.by_path.insert(new, wd);
            }
        }
    }

    fn forget_watches(&mut self, below: &RelPath) {
        self.by_path.retain(|p, _| !p.starts_with(below));
        let by_path = &self.by_path;
        self.watches.retain(|_, p| by_path.contains_key(p));
    }

    /// The events queued now, as changes (never blocks).
    pub fn read(&mut self) -> io::Result<Vec<Change>> {
        let mut changes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(e);
            }
            self.parse(&buf[..n as usize], &mut changes);
            if (n as usize) < buf.len() / 2 {
                break;
            }
        }
        // A move whose other half never came left the trees.
        if let Some((_, from)) = self.pending_move.take() {
            self.forget_watches(&from);
            changes.push(Change::Removed { path: from });
        }
        Ok(changes)
    }

    fn parse(&mut self, mut bytes: &[u8], changes: &mut Vec<Change>) {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        while bytes.len() >= HEADER {
            // SAFETY: the kernel wrote a whole inotify_event header here.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let len = event.len as usize;
            let Some(name) = bytes.get(HEADER..HEADER + len) else {
                break;
            };
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(len)];
            bytes = &bytes[HEADER + len..];
            self.event(event.wd, event.mask, event.cookie, name, changes);
        }
    }

    fn event(&mut self, wd: i32, mask: u32, cookie: u32, name: &[u8], changes: &mut Vec<Change>) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            changes.push(Change::Overflow);
            return;
        }
        if mask & libc::IN_IGNORED != 0 {
            if let Some(path) = self.watches.remove(&wd) {
                self.by_path.remove(&path);
            }
            return;
        }
        let Some(dir) = self.watches.get(&wd).cloned() else {
            return;
        };
        let Ok(path) = dir.join(name) else {
            return;
        };
        let is_dir = mask & libc::IN_ISDIR != 0;
        // The other half of a move that did not follow its first half.
        if mask & libc::IN_MOVED_TO == 0 {
            if let Some((_, from)) = self.pending_move.take() {
                self.forget_watches(&from);
                changes.push(Change::Removed { path: from });
            }
        }
        if mask & libc::IN_CREATE != 0 {
            changes.push(Change::Created { path, dir: is_dir });
        } else if mask & libc::IN_DELETE != 0 {
            self.forget_watches(&path);
            changes.push(Change::Removed { path });
        } else if mask & libc::IN_MOVED_FROM != 0 {
            self.pending_move = Some((cookie, path));
        } else if mask & libc::IN_MOVED_TO != 0 {
            match self.pending_move.take() {
                Some((c, from)) if c == cookie => {
                    self.rename_watches(&from, &path);
                    changes.push(Change::Renamed { from, to: path });
                }
                other => {
                    if let Some((_, from)) = other {
                        self.forget_watches(&from);
                        changes.push(Change::Removed { path: from });
                    }
                    changes.push(Change::Created { path, dir: is_dir });
                }
            }
        } else if mask & libc::IN_ATTRIB != 0 {
            changes.push(Change::Attrib { path });
        } else if mask & libc::IN_MODIFY != 0 && !is_dir {
            changes.push(Change::Modified { path });
        } else if mask & libc::IN_CLOSE_WRITE != 0 && !is_dir {
            changes.push(Change::ClosedWrite { path });
        }
    }
}

impl AsFd for Watcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
