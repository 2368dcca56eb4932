//! Decoding the capture ring's records into [`Captured`] changes: pure, no
//! I/O, so every record shape is unit-tested.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::PathBuf};

use halo_common::capture::{
    CaptureEvent, PathEvent, WriteKind, EVENT_ALL_ROOTS, EVENT_PAUSED, EVENT_PAUSE_REFUSED,
    EVENT_SYNC, EVENT_UNRESOLVED, PATH_BYTES,
};

/// A replicated directory, named as `stat(2)` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RootId {
    pub st_dev: u64,
    pub ino: u64,
}

/// What a sync call asked to make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// The file `(st_dev, ino)` (fsync, fdatasync, sync_file_range, a write
    /// through `O_SYNC`/`O_DSYNC`/`RWF_*SYNC`).
    File,
    /// Every root on the device `st_dev` (syncfs).
    Device,
    /// Every root (sync, msync with `MS_SYNC`: no file is known).
    AllRoots,
}

/// What a captured call changed or asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `len` bytes written at `offset`.
    Write { offset: u64, len: u64 },
    /// The file's size set to `size` (ftruncate, or truncate once resolved).
    Truncate { size: u64 },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate { offset: u64, len: u64, mode: u32 },
    /// `len` bytes at `offset` of a file that an `msync(MS_SYNC)` made
    /// durable through a shared mapping (found in the caller's
    /// `/proc/<pid>/maps`: stores through a mapping reach no tracepoint),
    /// reported just before the msync's own record. `path` is where the
    /// caller's mapping says the file is, as the caller sees it (its mount
    /// namespace): a name for a file no event named yet.
    Mapped {
        offset: u64,
        len: u64,
        path: PathBuf,
    },
    /// A durability request. With `paused`, the caller's process is stopped
    /// until [`super::WriteCapture::release`] (or `resume`) lets it go; it
    /// must be released once every range reported before this record is
    /// acknowledged by the peer.
    Sync { scope: SyncScope, paused: bool },
    /// A `truncate(path)` that user space could not resolve to a file
    /// (the caller exited, the path changed, it was cut at
    /// [`PATH_BYTES`]): the file may be under a root, the safety net must
    /// look. `path` is the caller's, relative to its cwd if not absolute.
    TruncatePath { path: PathBuf, size: u64 },
}

/// One change reported by the capture, with the device in user space's
/// (`st_dev`) encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub st_dev: u64,
    /// The file's inode; 0 when the record is not about one file.
    pub ino: u64,
    /// The root the file lies under; `None` for every-root syncs and for
    /// `unresolved` records.
    pub root: Option<RootId>,
    /// The parent walk gave up (deeper than
    /// [`halo_common::capture::MAX_DEPTH`]): the file *may* lie under a root
    /// of `st_dev`; the daemon resolves it or resyncs it.
    pub unresolved: bool,
    /// The caller's process and thread ids (initial pid namespace).
    pub pid: u32,
    pub tid: u32,
    /// Unique per record, increasing per CPU (the CPU is the top byte).
    pub seq: u64,
    /// The system call.
    pub syscall: WriteKind,
    pub change: Change,
    /// A sync whose root asked for a pause that the kernel refused: the
    /// caller did not wait ([`halo_common::capture::EVENT_PAUSE_REFUSED`]).
    pub pause_refused: bool,
}

/// A raw record of the ring: the event, and the path of a truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub event: CaptureEvent,
    /// `truncate(2)`'s path, when the record carries one that was copied
    /// whole.
    pub path: Option<PathBuf>,
}

/// Reads one ring entry; `None` if it is too short for its kind (a record
/// of another version of the programs, which cannot happen with the object
/// embedded in this binary).
pub(crate) fn parse_record(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < std::mem::size_of::<CaptureEvent>() {
        return None;
    }
    // SAFETY: the entry holds a CaptureEvent written by our program (Pod);
    // ring entries are only 8-byte aligned, hence read_unaligned.
    let event: CaptureEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let mut path = None;
    if event.kind == WriteKind::Truncate as u32 {
        if bytes.len() < std::mem::size_of::<PathEvent>() {
            return None;
        }
        let start = std::mem::offset_of!(PathEvent, path);
        let raw = &bytes[start..start + PATH_BYTES];
        // `len` counts the NUL; PATH_BYTES means the path may have been cut.
        let copied = event.len as usize;
        if copied > 1 && copied < PATH_BYTES {
            path = Some(PathBuf::from(OsStr::from_bytes(&raw[..copied - 1])));
        }
    }
    Some(Record { event, path })
}

/// The kernel encodes `s_dev` as `major << 20 | minor`.
pub(crate) fn kernel_dev_to_st_dev(dev: u32) -> u64 {
    libc::makedev(dev >> 20, dev & 0xf_ffff)
}

pub(crate) fn st_dev_to_kernel(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | (libc::minor(st_dev) & 0xf_ffff)
}

impl Record {
    /// The change this record reports, before any path resolution: a
    /// truncate by path is a [`Change::TruncatePath`] (with an empty path if
    /// none was copied whole). `None` for an unknown kind.
    pub(crate) fn to_captured(&self) -> Option<Captured> {
        let e = &self.event;
        let syscall = WriteKind::from_raw(e.kind)?;
        let st_dev = kernel_dev_to_st_dev(e.dev);
        let unresolved = e.flags & EVENT_UNRESOLVED != 0;
        let every_root = e.flags & EVENT_ALL_ROOTS != 0;
        let root = (e.root != 0 && !unresolved && !every_root).then_some(RootId {
            st_dev,
            ino: e.root,
        });
        let change = if e.flags & EVENT_SYNC != 0 {
            let scope = match (every_root, syscall) {
                (false, _) => SyncScope::File,
                (true, WriteKind::Syncfs) => SyncScope::Device,
                (true, _) => SyncScope::AllRoots,
            };
            Change::Sync {
                scope,
                paused: e.flags & EVENT_PAUSED != 0,
            }
        } else {
            match syscall {
                WriteKind::Ftruncate => Change::Truncate { size: e.offset },
                WriteKind::Truncate => Change::TruncatePath {
                    path: self.path.clone().unwrap_or_default(),
                    size: e.offset,
                },
                WriteKind::Fallocate => Change::Fallocate {
                    offset: e.offset,
                    len: e.len,
                    mode: e.mode,
                },
                _ => Change::Write {
                    offset: e.offset,
                    len: e.len,
                },
            }
        };
        Some(Captured {
            st_dev: if every_root && syscall != WriteKind::Syncfs {
                0
            } else {
                st_dev
            },
            ino: e.ino,
            root,
            unresolved,
            pid: e.tgid,
            tid: e.tid,
            seq: e.seq,
            syscall,
            change,
            pause_refused: e.flags & EVENT_PAUSE_REFUSED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: WriteKind, flags: u32) -> CaptureEvent {
        CaptureEvent {
            ino: 12,
            root: 5,
            offset: 4096,
            len: 7,
            seq: (1 << 56) | 3,
            dev: (8 << 20) | 1,
            kind: kind as u32,
            tgid: 100,
            tid: 101,
            flags,
            mode: 0,
        }
    }

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is a Pod record; we only read its bytes.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn decode(bytes: &[u8]) -> Captured {
        parse_record(bytes).unwrap().to_captured().unwrap()
    }

    #[test]
    fn a_write_record_names_file_root_range_and_caller() {
        let seen = decode(&bytes_of(&event(WriteKind::Pwrite, 0)));
        assert_eq!(
            seen,
            Captured {
                st_dev: libc::makedev(8, 1),
                ino: 12,
                root: Some(RootId {
                    st_dev: libc::makedev(8, 1),
                    ino: 5
                }),
                unresolved: false,
                pid: 100,
                tid: 101,
                seq: (1 << 56) | 3,
                syscall: WriteKind::Pwrite,
                change: Change::Write {
                    offset: 4096,
                    len: 7
                },
                pause_refused: false,
            }
        );
    }

    #[test]
    fn truncate_fallocate_and_sync_records_carry_their_own_fields() {
        let seen = decode(&bytes_of(&event(WriteKind::Ftruncate, 0)));
        assert_eq!(seen.change, Change::Truncate { size: 4096 });

        let mut fallocate = event(WriteKind::Fallocate, 0);
        fallocate.mode = 3;
        let seen = decode(&bytes_of(&fallocate));
        assert_eq!(
            seen.change,
            Change::Fallocate {
                offset: 4096,
                len: 7,
                mode: 3
            }
        );

        let seen = decode(&bytes_of(&event(
            WriteKind::Fsync,
            EVENT_SYNC | EVENT_PAUSED,
        )));
        assert_eq!(
            seen.change,
            Change::Sync {
                scope: SyncScope::File,
                paused: true
            }
        );
        assert!(!seen.pause_refused);
        // A pause the kernel refused: not paused, and said so.
        let seen = decode(&bytes_of(&event(
            WriteKind::Fsync,
            EVENT_SYNC | EVENT_PAUSE_REFUSED,
        )));
        assert!(matches!(seen.change, Change::Sync { paused: false, .. }));
        assert!(seen.pause_refused);
        // A write through O_SYNC: the same kind as the write, as a sync.
        let seen = decode(&bytes_of(&event(WriteKind::Write, EVENT_SYNC)));
        assert_eq!(
            seen.change,
            Change::Sync {
                scope: SyncScope::File,
                paused: false
            }
        );
    }

    #[test]
    fn every_root_syncs_have_no_root_and_syncfs_keeps_its_device() {
        let mut sync = event(WriteKind::Sync, EVENT_SYNC | EVENT_ALL_ROOTS);
        sync.ino = 0;
        sync.root = 0;
        sync.dev = 0;
        let seen = decode(&bytes_of(&sync));
        assert_eq!(seen.root, None);
        assert_eq!(seen.st_dev, 0);
        assert!(matches!(
            seen.change,
            Change::Sync {
                scope: SyncScope::AllRoots,
                ..
            }
        ));

        let syncfs = event(WriteKind::Syncfs, EVENT_SYNC | EVENT_ALL_ROOTS);
        let seen = decode(&bytes_of(&syncfs));
        assert_eq!(seen.root, None);
        assert_eq!(seen.st_dev, libc::makedev(8, 1));
        assert!(matches!(
            seen.change,
            Change::Sync {
                scope: SyncScope::Device,
                ..
            }
        ));
    }

    #[test]
    fn an_unresolved_record_names_no_root() {
        let mut unresolved = event(WriteKind::Write, EVENT_UNRESOLVED);
        unresolved.root = 0;
        let seen = decode(&bytes_of(&unresolved));
        assert!(seen.unresolved);
        assert_eq!(seen.root, None);
    }

    #[test]
    fn truncate_path_is_read_up_to_its_nul_and_a_cut_path_is_dropped() {
        let mut record = PathEvent {
            event: event(WriteKind::Truncate, 0),
            path: [0; PATH_BYTES],
        };
        record.path[..9].copy_from_slice(b"sub/file\0");
        record.event.len = 9;
        record.event.offset = 10;
        let seen = decode(&bytes_of(&record));
        assert_eq!(
            seen.change,
            Change::TruncatePath {
                path: PathBuf::from("sub/file"),
                size: 10
            }
        );

        record.path = [b'a'; PATH_BYTES];
        record.event.len = PATH_BYTES as u64;
        let parsed = parse_record(&bytes_of(&record)).unwrap();
        assert_eq!(
            parsed.path, None,
            "a path that filled the buffer may be cut"
        );
    }

    #[test]
    fn short_records_are_refused() {
        let bytes = bytes_of(&event(WriteKind::Write, 0));
        assert!(parse_record(&bytes[..bytes.len() - 1]).is_none());
        // A truncate record needs its path buffer.
        assert!(parse_record(&bytes_of(&event(WriteKind::Truncate, 0))).is_none());
    }

    #[test]
    fn device_numbers_round_trip_between_kernel_and_glibc_encodings() {
        // 259:3 (an NVMe partition) and 8:1, and a minor above 255, which
        // glibc stores in the high bits.
        for (major, minor) in [(259, 3), (8, 1), (7, 300), (0, 0x2a)] {
            let st_dev = libc::makedev(major, minor);
            let kernel = st_dev_to_kernel(st_dev);
            assert_eq!(kernel, (major << 20) | minor);
            assert_eq!(kernel_dev_to_st_dev(kernel), st_dev);
        }
    }
}
