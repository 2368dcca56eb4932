//! The mirror's write capture: what the syscall tracepoints report.

/// Which system call produced a [`WriteEvent`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WriteKind {
    /// `write(2)`: the offset is the file position the bytes landed at
    /// (the end of file for `O_APPEND`).
    Write = 1,
    /// `pwrite64(2)`: the offset is the one the caller gave.
    Pwrite = 2,
}

impl WriteKind {
    /// Decodes the raw value carried by a [`WriteEvent`].
    pub const fn from_raw(raw: u32) -> Option<WriteKind> {
        match raw {
            1 => Some(WriteKind::Write),
            2 => Some(WriteKind::Pwrite),
            _ => None,
        }
    }
}

/// One successful write to a captured file: `len` bytes at `offset` of the
/// inode `ino` on the device `dev`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct WriteEvent {
    /// The inode number (`st_ino`).
    pub ino: u64,
    /// Where the written bytes start in the file.
    pub offset: u64,
    /// How many bytes the call wrote (its return value).
    pub len: u64,
    /// The kernel's `super_block.s_dev`: `major << 20 | minor`, which is *not*
    /// glibc's `st_dev` encoding; user space converts.
    pub dev: u32,
    /// A [`WriteKind`] as `u32`.
    pub kind: u32,
    /// The thread group (process) id of the writer.
    pub tgid: u32,
    pub _pad: u32,
}

/// A file the capture programs report writes to, as the kernel names it.
/// Issue-5's directory filter replaces this per-file set.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FileKey {
    /// The inode number.
    pub ino: u64,
    /// The kernel's `s_dev` of the file's super block.
    pub dev: u32,
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
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_pos`
    pub file_pos: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// Non-zero once user space has filled the offsets in; the programs do
    /// nothing before that.
    pub ready: u32,
}

/// Byte offsets of the arguments in the `syscalls:sys_enter_*` tracepoint
/// records (after the 8-byte common header and the 8-byte `__syscall_nr`
/// slot); user space checks them against tracefs' `format` files at load.
pub mod tracepoint_layout {
    /// `fd` of `sys_enter_write` / `sys_enter_pwrite64`.
    pub const ENTER_FD: usize = 16;
    /// `pos` of `sys_enter_pwrite64`.
    pub const ENTER_PWRITE_POS: usize = 40;
    /// `ret` of `sys_exit_*`.
    pub const EXIT_RET: usize = 16;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are #[repr(C)], made of plain integers, with every
    // padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::WriteEvent {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::CaptureOffsets {}
}
