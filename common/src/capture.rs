//! The mirror's write capture: what the syscall tracepoints report, and the
//! maps through which user space tells them what to report.

/// Which system call produced a [`CaptureEvent`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WriteKind {
    /// `write(2)`: the offset is the file position the bytes landed at
    /// (the end of file for `O_APPEND`).
    Write = 1,
    /// `pwrite64(2)`: the offset is the one the caller gave (the end of file
    /// on an `O_APPEND` file, where Linux ignores the caller's offset).
    Pwrite = 2,
    /// `writev(2)`, like `write`.
    Writev = 3,
    /// `pwritev(2)`, like `pwrite64`.
    Pwritev = 4,
    /// `pwritev2(2)`: like `pwritev`, or like `writev` with offset -1.
    Pwritev2 = 5,
    /// `copy_file_range(2)`: the range written to the destination file.
    CopyFileRange = 6,
    /// `ftruncate(2)`: the new size.
    Ftruncate = 7,
    /// `truncate(2)`: the new size, and a path user space must resolve.
    Truncate = 8,
    /// `fallocate(2)`: offset, length and mode.
    Fallocate = 9,
    /// `fsync(2)`.
    Fsync = 10,
    /// `fdatasync(2)`.
    Fdatasync = 11,
    /// `sync_file_range(2)`.
    SyncFileRange = 12,
    /// `syncfs(2)`: every root on the file's filesystem.
    Syncfs = 13,
    /// `msync(2)` with `MS_SYNC`: no file is known, so every root.
    Msync = 14,
    /// `sync(2)`: every root.
    Sync = 15,
}

impl WriteKind {
    /// Decodes the raw value carried by a [`CaptureEvent`].
    pub const fn from_raw(raw: u32) -> Option<WriteKind> {
        Some(match raw {
            1 => WriteKind::Write,
            2 => WriteKind::Pwrite,
            3 => WriteKind::Writev,
            4 => WriteKind::Pwritev,
            5 => WriteKind::Pwritev2,
            6 => WriteKind::CopyFileRange,
            7 => WriteKind::Ftruncate,
            8 => WriteKind::Truncate,
            9 => WriteKind::Fallocate,
            10 => WriteKind::Fsync,
            11 => WriteKind::Fdatasync,
            12 => WriteKind::SyncFileRange,
            13 => WriteKind::Syncfs,
            14 => WriteKind::Msync,
            15 => WriteKind::Sync,
            _ => return None,
        })
    }

    /// Whether the call's only effect the mirror cares about is durability.
    pub const fn is_sync_call(self) -> bool {
        matches!(
            self,
            WriteKind::Fsync
                | WriteKind::Fdatasync
                | WriteKind::SyncFileRange
                | WriteKind::Syncfs
                | WriteKind::Msync
                | WriteKind::Sync
        )
    }
}

/// [`CaptureEvent::flags`]: the record asks for durability (a sync call, or
/// the second record of a write through `O_SYNC`/`O_DSYNC`/`RWF_*SYNC`).
pub const EVENT_SYNC: u32 = 1;
/// [`CaptureEvent::flags`]: the writer was sent `SIGSTOP` and stays stopped
/// until user space resumes it; it is listed in `CAPTURE_PAUSED`.
pub const EVENT_PAUSED: u32 = 2;
/// [`CaptureEvent::flags`]: the parent walk gave up before it reached either
/// a root or the filesystem's root; the file *may* be under a root.
pub const EVENT_UNRESOLVED: u32 = 4;
/// [`CaptureEvent::flags`]: the record concerns every root (`sync`,
/// `msync`) or every root on `dev` (`syncfs`), not one file.
pub const EVENT_ALL_ROOTS: u32 = 8;
/// [`CaptureEvent::flags`]: the root asked for a pause, but the kernel
/// refused the stop signal (`bpf_send_signal` failed, e.g. `-EBUSY` while
/// this CPU's previous signal was still queued): the caller went on at
/// once. User space must say so; it cannot be made good.
pub const EVENT_PAUSE_REFUSED: u32 = 16;

/// One record of the capture ring buffer: a successful call that changed,
/// or asked to make durable, a file under a replicated root.
///
/// The meaning of `offset` and `len` depends on `kind`: the written range
/// for writes, `offset` = new size for truncates, offset and length for
/// `fallocate` and `sync_file_range`. A [`WriteKind::Truncate`] record is
/// followed in the same ring entry by the path (see [`PathEvent`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CaptureEvent {
    /// The inode number (`st_ino`); 0 when unknown (truncate by path,
    /// every-root syncs).
    pub ino: u64,
    /// The inode number of the root the file was found under; 0 if none
    /// was (see [`EVENT_UNRESOLVED`], [`EVENT_ALL_ROOTS`]).
    pub root: u64,
    /// Where the range starts, or the new size (an `msync`: the address of
    /// the mapped range it names, `len` its length).
    pub offset: u64,
    /// How long the range is (a write's return value).
    pub len: u64,
    /// A per-CPU sequence number with the CPU in the top byte: unique, and
    /// increasing per CPU. The ring's order is the order of the calls.
    pub seq: u64,
    /// The kernel's `super_block.s_dev`: `major << 20 | minor`, which is *not*
    /// glibc's `st_dev` encoding; user space converts.
    pub dev: u32,
    /// A [`WriteKind`] as `u32`.
    pub kind: u32,
    /// The thread group (process) id of the caller, in the initial pid
    /// namespace.
    pub tgid: u32,
    /// The thread id of the caller, in the initial pid namespace.
    pub tid: u32,
    /// `EVENT_*` bits.
    pub flags: u32,
    /// `fallocate`'s mode, `sync_file_range`'s or `msync`'s flags.
    pub mode: u32,
}

/// How many bytes of a `truncate(2)` path the programs copy, with its NUL.
pub const PATH_BYTES: usize = 256;

/// A [`WriteKind::Truncate`] record: the event and the path as the caller
/// passed it, NUL-terminated; `event.len` is the number of bytes copied
/// including the NUL (so [`PATH_BYTES`] means "maybe cut short").
#[derive(Copy, Clone)]
#[repr(C)]
pub struct PathEvent {
    pub event: CaptureEvent,
    pub path: [u8; PATH_BYTES],
}

/// An inode as the kernel names it: the key of the roots map.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FileKey {
    /// The inode number.
    pub ino: u64,
    /// The kernel's `s_dev` of the file's super block.
    pub dev: u32,
    pub _pad: u32,
}

/// [`RootPolicy::flags`]: durability calls under this root pause the caller
/// until user space resumes it (`sync = "fsync"`).
pub const ROOT_SYNC_PAUSE: u32 = 1;

/// The name (NUL-ended, as `comm`) a halo daemon gives the thread that
/// makes a secondary's copy durable, for the time of its `syncfs`: no
/// capture pauses a sync of a thread so named (docs/mirror-durability.md).
pub const DAEMON_SYNC_COMM: [u8; 12] = *b"halo-syncfs\0";

/// The value of the roots map (`CAPTURE_ROOTS`, keyed by [`FileKey`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RootPolicy {
    /// `ROOT_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// How many roots exist, on one device (`CAPTURE_DEVS`, keyed by the
/// kernel's `s_dev`) or in total (`CAPTURE_TOTALS[0]`). Maintained by user
/// space; lets the programs skip a write with one lookup.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RootCount {
    /// Roots registered.
    pub roots: u32,
    /// Of which have [`ROOT_SYNC_PAUSE`].
    pub sync_roots: u32,
}

/// A task stopped by the capture (`CAPTURE_PAUSED`, keyed by its thread id).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PausedTask {
    /// The [`CaptureEvent::seq`] of the sync record that paused it.
    pub seq: u64,
    /// The root concerned; 0 for every root.
    pub root: u64,
    /// The file synced; 0 if not one file.
    pub ino: u64,
    /// The process, which `SIGCONT` resumes.
    pub tgid: u32,
    /// The kernel's `s_dev` of the file or root.
    pub dev: u32,
    /// When the process started (its leader's `task_struct.start_boottime`,
    /// ns since boot): user space signals `tgid` only while it is still
    /// this process, not another that got its pid. 0 if unknown.
    pub start: u64,
}

/// Load-time settings of the capture programs (`CAPTURE_SETTINGS`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CaptureSettings {
    /// A process whose calls are never reported nor paused: the daemon,
    /// which writes replicated data on the secondary. 0 excludes nothing.
    pub exclude_tgid: u32,
    pub _pad: u32,
}

/// Byte offsets of the kernel struct members the capture programs walk,
/// read from `/sys/kernel/btf/vmlinux` at load time and handed to the
/// programs as the `CAPTURE_OFFSETS` global: there is no CO-RE for Rust
/// eBPF, and hard-coded offsets break with every kernel build.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CaptureOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `files_struct.fd_array`: the table of the first 64 descriptors
    /// while `fdtable.fd` points at it (it has never grown).
    pub files_fd_array: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_pos`
    pub file_pos: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// `file.f_path` + `path.dentry`: the file's dentry pointer.
    pub file_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `inode.i_size`
    pub inode_size: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `super_block.s_root`: where a parent walk must end for its "outside
    /// every root" to be remembered (a disconnected dentry ends elsewhere).
    pub sb_root: u32,
    /// `inode.i_generation`: tells a directory from a later one that got
    /// its inode number.
    pub inode_generation: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// Non-zero once user space has filled the offsets in; the programs do
    /// nothing before that.
    pub ready: u32,
    pub _pad: u32,
}

/// `CAPTURE_GENERATIONS[GENERATION_NAMESPACE]`: set to the time by the programs when
/// a rename or a directory removal starts and when it ends, since either
/// can change which directories are below a root.
pub const GENERATION_NAMESPACE: u32 = 0;
/// `CAPTURE_GENERATIONS[GENERATION_ROOTS]`: bumped by user space after every
/// change of the roots or their policies.
pub const GENERATION_ROOTS: u32 = 1;
/// `CAPTURE_GENERATIONS[GENERATION_ATTACH]`: bumped by user space before it
/// attaches the programs again after detaching them. A call in progress
/// keeps the value of its enter: one whose exit ran while the programs
/// were detached left its record behind, and a later exit that finds it
/// under another value drops it instead of reporting it with the return
/// value of another call (a call that outlasted a whole detach and attach
/// is dropped too: the exit cannot tell it apart).
pub const GENERATION_ATTACH: u32 = 2;
/// How many entries `CAPTURE_GENERATIONS` has.
pub const GENERATIONS: u32 = 3;

/// How many parent directories the programs climb looking for a root
/// before they give up and report the call as [`EVENT_UNRESOLVED`].
pub const MAX_DEPTH: u32 = 64;

/// Flags the programs test (`include/uapi/asm-generic/fcntl.h`,
/// the same on every architecture Linux builds BPF for except alpha,
/// parisc and sparc, which halo does not target).
pub mod open_flags {
    /// `O_APPEND`: every write goes to the end of file, whatever the offset.
    pub const O_APPEND: u32 = 0o2000;
    /// `O_DSYNC`: every write is durable when it returns.
    pub const O_DSYNC: u32 = 0o10000;
    /// `__O_SYNC` (with `O_DSYNC`, `O_SYNC`).
    pub const O_SYNC_BIT: u32 = 0o4000000;
    /// `pwritev2` flags: `RWF_DSYNC`, `RWF_SYNC`, `RWF_APPEND`.
    pub const RWF_DSYNC: u32 = 0x2;
    pub const RWF_SYNC: u32 = 0x4;
    pub const RWF_APPEND: u32 = 0x10;
    /// `msync`'s `MS_SYNC`: the only msync that promises durability.
    pub const MS_SYNC: u32 = 4;
    /// `unlinkat`'s `AT_REMOVEDIR`: the call removes a directory.
    pub const AT_REMOVEDIR: u32 = 0x200;
}

/// Byte offsets of the arguments in the `syscalls:sys_enter_*` tracepoint
/// records (after the 8-byte common header and the 8-byte `__syscall_nr`
/// slot, each argument takes 8 bytes); user space checks every one the
/// programs read against tracefs' `format` files at load.
pub mod tracepoint_layout {
    /// The offset of the `i`-th syscall argument.
    pub const fn arg(i: usize) -> usize {
        16 + 8 * i
    }

    /// `ret` of `sys_exit_*`.
    pub const EXIT_RET: usize = 16;

    /// Every (tracepoint, field, offset) the programs read.
    pub const FIELDS: &[(&str, &str, usize)] = &[
        ("sys_enter_write", "fd", arg(0)),
        ("sys_enter_pwrite64", "fd", arg(0)),
        ("sys_enter_pwrite64", "pos", arg(3)),
        ("sys_enter_writev", "fd", arg(0)),
        ("sys_enter_pwritev", "fd", arg(0)),
        ("sys_enter_pwritev", "pos_l", arg(3)),
        ("sys_enter_pwritev2", "fd", arg(0)),
        ("sys_enter_pwritev2", "pos_l", arg(3)),
        ("sys_enter_pwritev2", "flags", arg(5)),
        ("sys_enter_copy_file_range", "fd_out", arg(2)),
        ("sys_enter_copy_file_range", "off_out", arg(3)),
        ("sys_enter_ftruncate", "fd", arg(0)),
        ("sys_enter_ftruncate", "length", arg(1)),
        ("sys_enter_truncate", "path", arg(0)),
        ("sys_enter_truncate", "length", arg(1)),
        ("sys_enter_fallocate", "fd", arg(0)),
        ("sys_enter_fallocate", "mode", arg(1)),
        ("sys_enter_fallocate", "offset", arg(2)),
        ("sys_enter_fallocate", "len", arg(3)),
        ("sys_enter_fsync", "fd", arg(0)),
        ("sys_enter_fdatasync", "fd", arg(0)),
        ("sys_enter_sync_file_range", "fd", arg(0)),
        ("sys_enter_sync_file_range", "offset", arg(1)),
        ("sys_enter_sync_file_range", "nbytes", arg(2)),
        ("sys_enter_sync_file_range", "flags", arg(3)),
        ("sys_enter_syncfs", "fd", arg(0)),
        ("sys_enter_msync", "flags", arg(2)),
        ("sys_enter_unlinkat", "flag", arg(2)),
        ("sys_exit_write", "ret", EXIT_RET),
        ("sys_exit_sync", "ret", EXIT_RET),
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)], made of plain integers, with every
    // padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::CaptureEvent {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::RootPolicy {}
    unsafe impl aya::Pod for super::RootCount {}
    unsafe impl aya::Pod for super::PausedTask {}
    unsafe impl aya::Pod for super::CaptureSettings {}
    unsafe impl aya::Pod for super::CaptureOffsets {}
}
