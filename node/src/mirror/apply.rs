//! The secondary's side: applying replication messages to the replicated
//! directories, never outside them.
//!
//! Each replicated directory is opened once, as an `O_PATH` descriptor,
//! *before* the directory is made read-only to applications (a read-only
//! bind mount over it): every change goes through that descriptor, so it
//! reaches the underlying, writable mount. Every path is resolved with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: a
//! symlink on the way, `..`, or a mount point is refused by the kernel, on
//! top of [`RelPath`]'s lexical check. The last component is never followed
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`): a symlink is replicated as a
//! symlink, never written through.

use std::{
    collections::{HashMap, HashSet},
    ffi::{CStr, CString},
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::FileExt as _,
    },
    path::Path,
    sync::mpsc,
};

use nix::{
    errno::Errno,
    fcntl::{openat2, OFlag, OpenHow, ResolveFlag},
    sys::stat::Mode,
};

use super::{
    path::RelPath,
    sums::differing_blocks,
    wire::{Message, Meta, BLOCK_SIZE},
};

/// How many written files stay open between messages.
const OPEN_FILES: usize = 64;

/// Bytes a resynchronisation writes before the files it wrote them to are
/// handed to the write-back thread.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Files handed over at once at most, each a descriptor of its own until
/// the thread is done with it: with one batch gathering, one queued and
/// one in the thread, an applier holds at most 3 × 8 more descriptors
/// however small the files are.
const WRITEBACK_FILES: usize = 8;

/// Applies messages beneath a module's replicated directories.
pub struct Applier {
    roots: Vec<OwnedFd>,
    /// Each root opened readable, for `syncfs` (which refuses `O_PATH`),
    /// from the start: it reports the write-back errors that came after
    /// its descriptor was opened, and no earlier ones. Empty for a
    /// worker's applier, which never syncs.
    sync_dirs: Vec<OwnedFd>,
    open: HashMap<RelPath, File>,
    /// Between `ResyncBegin` and `ResyncEnd`.
    resyncing: bool,
    writeback: Writeback,
}

/// Starts the disk write-back of what a resynchronisation wrote while it
/// goes on, from a thread of its own, so that the `syncfs` that ends it
/// waits for the last part only: without it the kernel, whose background
/// write-back starts at a share of memory (10 % by default) that a copy
/// of a few GiB never reaches, starts writing only there.
///
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` starts the write of a file's
/// dirty pages and returns; it neither waits for them nor commits the
/// journal, which the final `syncfs` does. Live replication does not use
/// it: pages written again and again (a database's) would go to disk each
/// time.
#[derive(Default)]
struct Writeback {
    /// Bytes written since the files were last handed over.
    written: u64,
    /// The files written since, and their names (one handle each).
    files: Vec<File>,
    names: HashSet<RelPath>,
    thread: Option<mpsc::SyncSender<Vec<File>>>,
}

impl Writeback {
    fn wrote(&mut self, path: &RelPath, file: &File, bytes: u64) {
        if !self.names.contains(path) {
            // A handle of its own: the applier closes its files freely.
            if let Ok(handle) = file.try_clone() {
                self.files.push(handle);
                self.names.insert(path.clone());
            }
        }
        self.written += bytes;
        if self.written >= WRITEBACK_EVERY || self.files.len() >= WRITEBACK_FILES {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        self.written = 0;
        self.names.clear();
        let files = std::mem::take(&mut self.files);
        if files.is_empty() {
            return;
        }
        if self.thread.is_none() {
            let (tx, rx) = mpsc::sync_channel::<Vec<File>>(1);
            // Without the thread, the final `syncfs` writes it all, as
            // the kernel would: slower, not less safe.
            let started = std::thread::Builder::new()
                .name("halo-writeback".into())
                .spawn(move || {
                    for files in rx {
                        for file in files {
                            // SAFETY: a descriptor this thread owns; the
                            // whole file, start write-back only.
                            unsafe {
                                libc::sync_file_range(
                                    file.as_raw_fd(),
                                    0,
                                    0,
                                    libc::SYNC_FILE_RANGE_WRITE,
                                );
                            }
                        }
                    }
                });
            if started.is_err() {
                return;
            }
            self.thread = Some(tx);
        }
        // The thread still busy with the batches before (a slow disk):
        // these files are left to the final `syncfs`, not queued.
        if let Some(thread) = &self.thread {
            let _ = thread.try_send(files);
        }
    }

    /// The resynchronisation ended: nothing more to start (its `syncfs`
    /// writes the rest).
    fn end(&mut self) {
        self.written = 0;
        self.names.clear();
        self.files.clear();
    }
}

/// The result of applying one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    None,
    Send(Message),
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Applier {
    /// Opens the replicated directories, in configuration order.
    pub fn open(dirs: &[&Path]) -> io::Result<Self> {
        let roots = dirs
            .iter()
            .map(|dir| {
                let fd = nix::fcntl::open(
                    *dir,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)?;
                // SAFETY: open returned a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        let sync_dirs = roots.iter().map(readable_dir).collect::<io::Result<_>>()?;
        Ok(Applier {
            roots,
            sync_dirs,
            open: HashMap::new(),
            resyncing: false,
            writeback: Writeback::default(),
        })
    }

    /// Another applier beneath the same directories, for a worker that
    /// applies the files of a resynchronisation ([`super::fanout`]).
    pub fn sibling(&self) -> io::Result<Self> {
        Ok(Applier {
            roots: self
                .roots
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<_>>()?,
            sync_dirs: Vec::new(),
            open: HashMap::new(),
            resyncing: true,
            writeback: Writeback::default(),
        })
    }

    /// Between a `ResyncBegin` it applied and the `ResyncEnd` after it.
    pub fn resyncing(&self) -> bool {
        self.resyncing
    }

    /// Closes the files it keeps open between messages.
    pub fn close_files(&mut self) {
        self.open.clear();
    }

    /// A new session begins: a resynchronisation the last one cut short
    /// is over.
    pub fn new_session(&mut self) {
        self.resyncing = false;
        self.writeback.end();
    }

    fn root(&self, dir: u8) -> io::Result<&OwnedFd> {
        self.roots
            .get(usize::from(dir))
            .ok_or_else(|| io::Error::other(format!("no replicated directory #{dir}")))
    }

    /// Opens `path` beneath its root with `flags`.
    fn open_beneath(&self, path: &RelPath, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let root = self.root(path.dir)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(resolve_flags());
        let fd = openat2(root.as_raw_fd(), path.as_path(), how).map_err(io::Error::from)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The parent directory of `path` (opened) and its last component.
    fn parent<'p>(&self, path: &'p RelPath) -> io::Result<(OwnedFd, &'p [u8])> {
        let (parent, name) = path.split_last().ok_or_else(|| {
            io::Error::other("the replicated directory itself cannot be replaced")
        })?;
        let fd = self.open_beneath(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok((fd, name))
    }

    /// Applies one message; an error leaves the message (and the files it
    /// names) as they were or partly applied: the caller reports it and the
    /// next resynchronisation repairs it.
    pub fn apply(&mut self, message: Message) -> io::Result<Reply> {
        match message {
            Message::Mkdir { path, meta } => {
                self.forget(&path);
                if !path.is_root() {
                    let (parent, name) = self.parent(&path)?;
                    let cname = cstring(name)?;
                    match mkdirat(&parent, &cname, meta.mode & 0o7777) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            if file_type(&parent, &cname)? != libc::S_IFDIR {
                                remove_entry(&parent, &cname)?;
                                mkdirat(&parent, &cname, meta.mode & 0o7777)?;
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.set_meta(&path, &meta)?;
            }
            Message::File { path, meta } => {
                self.forget(&path);
                self.regular_file(&path)?;
                self.set_meta(&path, &meta)?;
            }
            Message::Write { path, offset, data } => {
                let file = self.writable(&path)?;
                file.write_all_at(&data, offset)?;
                if self.resyncing {
                    let file = &self.open[&path];
                    self.writeback.wrote(&path, file, data.len() as u64);
                }
            }
            Message::SetSize { path, size } => {
                self.writable(&path)?.set_len(size)?;
            }
            Message::SetMeta { path, meta } => self.set_meta(&path, &meta)?,
            Message::Symlink { path, target } => {
                self.forget(&path);
                let (parent, name) = self.parent(&path)?;
                let cname = cstring(name)?;
                let ctarget = cstring(&target)?;
                if readlink(&parent, &cname).ok().as_deref() != Some(&target[..]) {
                    remove_if_present(&parent, &cname)?;
                    // SAFETY: valid C strings and an open directory descriptor.
                    let rc = unsafe {
                        libc::symlinkat(ctarget.as_ptr(), parent.as_raw_fd(), cname.as_ptr())
                    };
                    check(rc)?;
                }
            }
            Message::Link { path, existing } => {
                self.forget(&path);
                let (parent, name) = self.parent(&path)?;
                let (from_parent, from_name) = self.parent(&existing)?;
                let cname = cstring(name)?;
                let cfrom = cstring(from_name)?;
                // The primary names a file it reads now, which may be ahead
                // of this stream: without `existing` here, `path` keeps what
                // it holds (and another of its names stays with it) rather
                // than lose it to a link that cannot be made.
                file_type(&from_parent, &cfrom)?;
                remove_if_present(&parent, &cname)?;
                // SAFETY: valid C strings and open directory descriptors; flags 0 never follows.
                let rc = unsafe {
                    libc::linkat(
                        from_parent.as_raw_fd(),
                        cfrom.as_ptr(),
                        parent.as_raw_fd(),
                        cname.as_ptr(),
                        0,
                    )
                };
                check(rc)?;
            }
            Message::Remove { path } => {
                self.open.clear();
                let (parent, name) = self.parent(&path)?;
                remove_if_present(&parent, &cstring(name)?)?;
            }
            Message::Rename { from, to } => {
                self.open.clear();
                return match self.rename(&from, &to) {
                    Ok(None) => Ok(Reply::None),
                    Ok(Some(missing)) => Ok(Reply::Send(Message::Missing { path: missing })),
                    // The source never arrived (created and renamed before
                    // the primary shipped it): ask for the result.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Ok(Reply::Send(Message::Missing { path: to }))
                    }
                    Err(e) => Err(e),
                };
            }
            Message::Listing { dir, names } => {
                self.open.clear();
                let fd = self.open_beneath(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
                let keep: std::collections::HashSet<&[u8]> =
                    names.iter().map(|n| n.as_slice()).collect();
                for entry in list_dir(&fd)? {
                    if !keep.contains(entry.as_slice()) {
                        remove_entry(&fd, &cstring(&entry)?)?;
                    }
                }
            }
            Message::Sums {
                path,
                meta,
                size,
                first,
                sums,
            } => {
                let file = match self.writable(&path) {
                    Ok(file) => file,
                    // Its directory is gone here (a change the walk had not
                    // seen yet took it): still answered, see below.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Ok(Reply::Send(Message::Need {
                            path,
                            blocks: Vec::new(),
                        }))
                    }
                    Err(e) => return Err(e),
                };
                let current = file.metadata()?.len();
                if current != size {
                    file.set_len(size)?;
                }
                let blocks = differing_blocks(file, size, first, &sums)?;
                if blocks.is_empty() && first + sums.len() as u64 >= size.div_ceil(BLOCK_SIZE) {
                    self.set_meta(&path, &meta)?;
                }
                // Always answered, so that the primary knows when every
                // block of a resynchronisation has been asked for.
                return Ok(Reply::Send(Message::Need { path, blocks }));
            }
            Message::Barrier { seq } => return Ok(Reply::Send(Message::Ack { seq })),
            Message::ResyncBegin { .. } => self.resyncing = true,
            Message::Bye => {}
            Message::ResyncEnd { generation } => {
                self.resyncing = false;
                self.writeback.end();
                // Whatever the error, the end is refused, never skipped
                // (a NotFound is skipped by the session).
                self.sync_all()
                    .map_err(|e| io::Error::other(format!("making the copy durable: {e}")))?;
                return Ok(Reply::Send(Message::ResyncDone { generation }));
            }
            Message::Need { .. }
            | Message::Missing { .. }
            | Message::Diverged { .. }
            | Message::Join { .. }
            | Message::Ack { .. }
            | Message::ResyncDone { .. }
            | Message::Refused { .. } => {
                return Err(io::Error::other(
                    "a primary's message reached the secondary",
                ))
            }
        }
        Ok(Reply::None)
    }

    /// Renames `from` to `to`, replacing what `to` names.
    /// Renames `from` to `to`; `Some(path)`: what `path` holds here may
    /// not be the primary's, ask for it.
    fn rename(&mut self, from: &RelPath, to: &RelPath) -> io::Result<Option<RelPath>> {
        let (from_parent, from_name) = self.parent(from)?;
        let (to_parent, to_name) = self.parent(to)?;
        let cfrom = cstring(from_name)?;
        let cto = cstring(to_name)?;
        // Two names of one file: rename(2) does nothing and succeeds, but
        // the primary's rename left only `to`. This node's names can link
        // files the primary's do not (a link whose other name had not come
        // yet keeps the file it held). A source name left here for good,
        // growing with its file, is what a chaos campaign found (seed
        // 20261126), most likely this way.
        // What `to` holds here is that file's content, not necessarily the
        // source's on the primary: ask for it.
        if from != to {
            if let (Ok(a), Ok(b)) = (inode(&from_parent, &cfrom), inode(&to_parent, &cto)) {
                if a == b {
                    remove_entry(&from_parent, &cfrom)?;
                    return Ok(Some(to.clone()));
                }
            }
        }
        // SAFETY: valid C strings and open directory descriptors.
        let rc = unsafe {
            libc::renameat(
                from_parent.as_raw_fd(),
                cfrom.as_ptr(),
                to_parent.as_raw_fd(),
                cto.as_ptr(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Renaming a directory over a non-empty one, or a file
            // over a directory: replace the target.
            match e.raw_os_error() {
                Some(libc::ENOTEMPTY | libc::EEXIST | libc::EISDIR | libc::ENOTDIR) => {
                    remove_if_present(&to_parent, &cto)?;
                    // SAFETY: as above.
                    check(unsafe {
                        libc::renameat(
                            from_parent.as_raw_fd(),
                            cfrom.as_ptr(),
                            to_parent.as_raw_fd(),
                            cto.as_ptr(),
                        )
                    })?;
                }
                _ => return Err(e),
            }
        }
        Ok(None)
    }

    /// Flushes every written file and the file systems to disk.
    pub fn sync_all(&mut self) -> io::Result<()> {
        for file in self.open.values() {
            file.sync_data()?;
        }
        self.open.clear();
        for dir in &self.sync_dirs {
            sync_file_system(dir)?;
        }
        Ok(())
    }

    /// Closes `path` if it is open here: another applier changes it.
    pub fn forget(&mut self, path: &RelPath) {
        self.open.remove(path);
    }

    /// Makes sure `path` is a regular file (replacing anything else there).
    fn regular_file(&mut self, path: &RelPath) -> io::Result<()> {
        self.writable(path).map(|_| ())
    }

    /// The open, writable regular file at `path`, created if missing.
    fn writable(&mut self, path: &RelPath) -> io::Result<&File> {
        if !self.open.contains_key(path) {
            let flags = OFlag::O_RDWR | OFlag::O_CREAT;
            let fd = match self.open_beneath(path, flags, 0o600) {
                Ok(fd) => fd,
                // Something else (directory, symlink, fifo) is there: replace it.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EISDIR | libc::ELOOP | libc::ENXIO | libc::ETXTBSY)
                    ) =>
                {
                    let (parent, name) = self.parent(path)?;
                    remove_entry(&parent, &cstring(name)?)?;
                    self.open_beneath(path, flags, 0o600)?
                }
                Err(e) => return Err(e),
            };
            let file = File::from(fd);
            if !file.metadata()?.is_file() {
                return Err(io::Error::other(format!("{path} is not a regular file")));
            }
            if self.open.len() >= OPEN_FILES {
                self.open.clear();
            }
            self.open.insert(path.clone(), file);
        }
        Ok(&self.open[path])
    }

    fn set_meta(&self, path: &RelPath, meta: &Meta) -> io::Result<()> {
        let (dirfd, name): (OwnedFd, CString) = if path.is_root() {
            let fd = self.open_beneath(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
            (fd, CString::default())
        } else {
            let (parent, name) = self.parent(path)?;
            (parent, cstring(name)?)
        };
        let empty = name.as_bytes().is_empty();
        let at_flags = if empty {
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
        // SAFETY: valid C string and open descriptor; never follows a symlink.
        check(unsafe {
            libc::fchownat(
                dirfd.as_raw_fd(),
                name.as_ptr(),
                meta.uid,
                meta.gid,
                at_flags,
            )
        })?;
        let is_link = meta.mode & libc::S_IFMT == libc::S_IFLNK;
        if !is_link {
            if empty {
                let proc = CString::new(format!("/proc/self/fd/{}", dirfd.as_raw_fd()))
                    .expect("no NUL in a number");
                // SAFETY: chmod through the descriptor's magic link (O_PATH fds have no fchmod).
                check(unsafe { libc::chmod(proc.as_ptr(), meta.mode & 0o7777) })?;
            } else {
                // SAFETY: valid C string and open descriptor; the entry is not a symlink
                // (fchmodat cannot refuse to follow one before Linux 6.6's fchmodat2).
                check(unsafe {
                    libc::fchmodat(dirfd.as_raw_fd(), name.as_ptr(), meta.mode & 0o7777, 0)
                })?;
            }
        }
        let mtime = libc::timespec {
            tv_sec: meta.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: meta.mtime_ns.rem_euclid(1_000_000_000),
        };
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            mtime,
        ];
        // SAFETY: valid arguments; never follows a symlink.
        check(unsafe {
            libc::utimensat(dirfd.as_raw_fd(), name.as_ptr(), times.as_ptr(), at_flags)
        })
    }
}

/// `root` (an `O_PATH` descriptor, which `syncfs` refuses with EBADF)
/// opened readable. Until the seventeenth session the end of a
/// resynchronisation called `syncfs` on the root itself, unchecked, and
/// wrote nothing back.
fn readable_dir(root: &OwnedFd) -> io::Result<OwnedFd> {
    let dir = openat2(
        root.as_raw_fd(),
        ".",
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(resolve_flags()),
    )
    .map_err(io::Error::from)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dir) })
}

/// Writes back the file system of `dir`, a readable directory.
fn sync_file_system(dir: &OwnedFd) -> io::Result<()> {
    // Under the name every write capture lets through (a daemon's sync
    // stopped by one would stop the daemon, docs/mirror-durability.md).
    let _named = ThreadName::set(
        CStr::from_bytes_with_nul(&halo_common::capture::DAEMON_SYNC_COMM)
            .map_err(io::Error::other)?,
    );
    // SAFETY: syncfs on an open, readable descriptor.
    check(unsafe { libc::syncfs(dir.as_raw_fd()) })
}

/// The calling thread's name, set for a while and given back on drop
/// (left as it is if it could not be read).
struct ThreadName(Option<[u8; 16]>);

impl ThreadName {
    fn set(name: &CStr) -> Self {
        let mut old = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes; PR_SET_NAME reads a
        // NUL-ended string (cut to 15 bytes by the kernel).
        unsafe {
            if libc::prctl(libc::PR_GET_NAME, old.as_mut_ptr()) != 0 {
                return ThreadName(None);
            }
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
        ThreadName(Some(old))
    }
}

impl Drop for ThreadName {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: the 16 bytes PR_GET_NAME gave, NUL-ended by the kernel.
            unsafe { libc::prctl(libc::PR_SET_NAME, old.as_ptr()) };
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mkdirat(parent: &OwnedFd, name: &CString, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string and open directory descriptor.
    check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) })
}

/// The (device, inode) of entry `name` of `parent`, not following a symlink.
fn inode(parent: &OwnedFd, name: &CString) -> io::Result<(u64, u64)> {
    let st = stat_at(parent, name)?;
    Ok((st.st_dev, st.st_ino))
}

fn stat_at(parent: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string, descriptor and output buffer.
    check(unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// The `S_IFMT` bits of the entry `name` (not followed).
fn file_type(parent: &OwnedFd, name: &CString) -> io::Result<u32> {
    Ok(stat_at(parent, name)?.st_mode & libc::S_IFMT)
}

fn readlink(parent: &OwnedFd, name: &CString) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4097];
    // SAFETY: valid C string, descriptor and buffer of the given size.
    let n = unsafe {
        libc::readlinkat(
            parent.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn remove_if_present(parent: &OwnedFd, name: &CString) -> io::Result<()> {
    match remove_entry(parent, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes the entry `name` of `parent`, a directory with everything in it.
fn remove_entry(parent: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: valid C string and open directory descriptor.
    if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EISDIR | libc::EPERM)) {
        return Err(e);
    }
    let fd = Errno::result(unsafe {
        // SAFETY: valid C string and open directory descriptor.
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
    .map_err(io::Error::from)?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for entry in list_dir(&dir)? {
        remove_entry(&dir, &cstring(&entry)?)?;
    }
    // SAFETY: as above.
    check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
}

/// The names in the directory open as `dir` (without `.` and `..`).
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let dup = nix::unistd::dup(dir.as_raw_fd()).map_err(io::Error::from)?;
    let mut stream = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in stream.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::{
        ffi::OsStrExt as _,
        fs::{symlink, MetadataExt as _, PermissionsExt as _},
    };

    use super::*;

    struct Dirs {
        base: std::path::PathBuf,
    }

    impl Dirs {
        fn new(name: &str) -> Self {
            let base =
                std::env::temp_dir().join(format!("halo-apply-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("root")).unwrap();
            std::fs::create_dir_all(base.join("outside")).unwrap();
            std::fs::write(base.join("outside/keep"), b"precious").unwrap();
            Dirs { base }
        }
        fn root(&self) -> std::path::PathBuf {
            self.base.join("root")
        }
        fn outside(&self) -> std::path::PathBuf {
            self.base.join("outside")
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn p(text: &str) -> RelPath {
        RelPath::new(0, text.as_bytes().to_vec()).unwrap()
    }

    fn write(path: &str, data: &[u8]) -> Message {
        Message::Write {
            path: p(path),
            offset: 0,
            data: data.to_vec(),
        }
    }

    #[test]
    fn a_hostile_peer_cannot_reach_outside_through_a_planted_symlink() {
        let dirs = Dirs::new("symlink");
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        // The peer plants a symlink to outside, then writes through it.
        applier
            .apply(Message::Symlink {
                path: p("evil"),
                target: dirs.outside().as_os_str().as_bytes().to_vec(),
            })
            .unwrap();
        assert!(applier.apply(write("evil/keep", b"owned")).is_err());
        assert!(applier.apply(write("evil/new", b"owned")).is_err());
        assert!(applier
            .apply(Message::Mkdir {
                path: p("evil/sub"),
                meta: Meta {
                    mode: 0o40755,
                    ..Meta::default()
                },
            })
            .is_err());
        assert!(applier
            .apply(Message::Rename {
                from: p("evil/keep"),
                to: p("stolen"),
            })
            .is_err());
        assert!(applier
            .apply(Message::Listing {
                dir: p("evil"),
                names: vec![],
            })
            .is_err());
        // Removing the link removes the link, not what it points to.
        applier.apply(Message::Remove { path: p("evil") }).unwrap();
        assert_eq!(
            std::fs::read(dirs.outside().join("keep")).unwrap(),
            b"precious"
        );
        assert!(!dirs.outside().join("new").exists());
        assert!(!dirs.outside().join("sub").exists());
    }

    #[test]
    fn a_symlink_made_outside_the_protocol_is_not_followed_either() {
        let dirs = Dirs::new("planted");
        symlink(dirs.outside(), dirs.root().join("link")).unwrap();
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        assert!(applier.apply(write("link/keep", b"owned")).is_err());
        // Writing *to* the link's own name replaces the link by a file.
        applier.apply(write("link", b"data")).unwrap();
        assert!(std::fs::symlink_metadata(dirs.root().join("link"))
            .unwrap()
            .is_file());
        assert_eq!(
            std::fs::read(dirs.outside().join("keep")).unwrap(),
            b"precious"
        );
    }

    #[test]
    fn a_link_to_a_name_not_here_yet_keeps_the_file_and_its_other_names() {
        let dirs = Dirs::new("linkahead");
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        applier.apply(write("f", b"old")).unwrap();
        applier
            .apply(Message::Link {
                path: p("g"),
                existing: p("f"),
            })
            .unwrap();
        // The primary names "h", which a change still to come creates.
        let error = applier
            .apply(Message::Link {
                path: p("g"),
                existing: p("h"),
            })
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        // What follows for "g" still reaches "f": one file.
        applier.apply(write("g", b"new")).unwrap();
        assert_eq!(std::fs::read(dirs.root().join("f")).unwrap(), b"new");
        assert_eq!(std::fs::metadata(dirs.root().join("g")).unwrap().nlink(), 2);
    }

    #[test]
    fn a_rename_between_two_names_of_one_file_here_leaves_only_the_target() {
        let dirs = Dirs::new("renamelinked");
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        applier.apply(write("f", b"data")).unwrap();
        // Here "g" became a second name of "f" (a link whose name had not
        // come yet keeps the file it held); on the primary they are two
        // files, and "g" replaces "f".
        applier
            .apply(Message::Link {
                path: p("g"),
                existing: p("f"),
            })
            .unwrap();
        // The source name goes, and the target's content, which here is
        // that of another file, is asked for.
        assert_eq!(
            applier
                .apply(Message::Rename {
                    from: p("g"),
                    to: p("f"),
                })
                .unwrap(),
            Reply::Send(Message::Missing { path: p("f") })
        );
        assert!(!dirs.root().join("g").exists(), "the source name is gone");
        assert_eq!(std::fs::metadata(dirs.root().join("f")).unwrap().nlink(), 1);
        // A rename onto itself changes nothing.
        applier
            .apply(Message::Rename {
                from: p("f"),
                to: p("f"),
            })
            .unwrap();
        assert_eq!(std::fs::read(dirs.root().join("f")).unwrap(), b"data");
    }

    #[test]
    fn the_end_of_a_resynchronisation_syncs_the_file_system_of_its_o_path_roots() {
        let dirs = Dirs::new("syncfs");
        let applier = Applier::open(&[&dirs.root()]).unwrap();
        let root = &applier.roots[0];
        // The kernel refuses `syncfs` on the root's own descriptor: the
        // end of every resynchronisation did that, unchecked, until the
        // seventeenth session.
        // SAFETY: syncfs on an open descriptor.
        let rc = unsafe { libc::syncfs(root.as_raw_fd()) };
        assert_eq!(
            (rc, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EBADF))
        );
        // The thread makes the call under the capture's exempt name and
        // gets its own back.
        let name = || {
            let mut name = [0u8; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) },
                0
            );
            name
        };
        let before = name();
        sync_file_system(&readable_dir(root).unwrap()).unwrap();
        assert_eq!(name(), before);
        let mut applier = applier;
        applier.apply(write("f", b"durable")).unwrap();
        assert_eq!(
            applier.apply(Message::ResyncEnd { generation: 4 }).unwrap(),
            Reply::Send(Message::ResyncDone { generation: 4 })
        );
    }

    #[test]
    fn a_resynchronisation_of_many_small_files_holds_few_descriptors_for_write_back() {
        let dirs = Dirs::new("writeback");
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        applier.apply(Message::ResyncBegin { full: true }).unwrap();
        for f in 0..100 {
            applier.apply(write(&format!("f{f}"), b"small")).unwrap();
            assert!(applier.writeback.files.len() < WRITEBACK_FILES);
        }
        // Batches went to the thread, which started their write-back.
        assert!(applier.writeback.thread.is_some());
        applier.apply(Message::ResyncEnd { generation: 1 }).unwrap();
        assert!(applier.writeback.files.is_empty());
        // Live writes start nothing.
        applier.apply(write("live", b"x")).unwrap();
        assert!(applier.writeback.files.is_empty());
        assert_eq!(std::fs::read(dirs.root().join("f99")).unwrap(), b"small");
    }

    #[test]
    fn ordinary_changes_are_applied() {
        let dirs = Dirs::new("ordinary");
        let mut applier = Applier::open(&[&dirs.root()]).unwrap();
        let meta = Meta {
            mode: 0o40750,
            uid: 0,
            gid: 0,
            mtime_ns: 1_000_000_000,
        };
        applier
            .apply(Message::Mkdir { path: p("d"), meta })
            .unwrap();
        applier.apply(write("d/f", b"hello world")).unwrap();
        applier
            .apply(Message::SetSize {
                path: p("d/f"),
                size: 5,
            })
            .unwrap();
        applier
            .apply(Message::Link {
                path: p("d/g"),
                existing: p("d/f"),
            })
            .unwrap();
        applier
            .apply(Message::Rename {
                from: p("d/f"),
                to: p("f2"),
            })
            .unwrap();
        assert_eq!(std::fs::read(dirs.root().join("f2")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dirs.root().join("d/g")).unwrap(), b"hello");
        let m = std::fs::metadata(dirs.root().join("d")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        applier
            .apply(Message::Listing {
                dir: RelPath::root(0),
                names: vec![b"f2".to_vec()],
            })
            .unwrap();
        assert!(!dirs.root().join("d").exists());
        assert_eq!(
            applier.apply(Message::Barrier { seq: 3 }).unwrap(),
            Reply::Send(Message::Ack { seq: 3 })
        );
        // Checksums of a file whose directory is gone here are answered
        // all the same (the primary waits for every answer).
        assert_eq!(
            applier
                .apply(Message::Sums {
                    path: p("gone/f"),
                    meta: Meta::default(),
                    size: 10,
                    first: 0,
                    sums: vec![[0; crate::mirror::wire::SUM_LEN]],
                })
                .unwrap(),
            Reply::Send(Message::Need {
                path: p("gone/f"),
                blocks: vec![],
            })
        );
        // A rename whose source never arrived asks for its result.
        assert_eq!(
            applier
                .apply(Message::Rename {
                    from: p("never-sent"),
                    to: p("kept"),
                })
                .unwrap(),
            Reply::Send(Message::Missing { path: p("kept") })
        );
    }
}
