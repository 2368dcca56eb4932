//! The mirror's write capture: syscall tracepoints that report which byte
//! ranges of which files were written.
//!
//! The enter half remembers, per thread, which open file the call targets;
//! the exit half, once the call returned how many bytes it wrote, emits a
//! [`WriteEvent`]. kprobes and BPF trampolines are not available on the
//! target kernels (PLATFORM.md), so syscall tracepoints are the hook, and the
//! fd → file → inode walk uses offsets that user space read from BTF.
#![no_std]
#![no_main]

// Links the crate's library, which holds the panic handler.
use halo_ebpf as _;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, RingBuf},
    programs::TracePointContext,
};
use halo_common::capture::{tracepoint_layout, CaptureOffsets, FileKey, WriteEvent, WriteKind};

/// Struct member offsets, filled in by user space from BTF before loading.
#[no_mangle]
static CAPTURE_OFFSETS: CaptureOffsets = CaptureOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_inode: 0,
    file_pos: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    ready: 0,
};

/// The files whose writes are reported (value unused).
#[map]
static CAPTURE_FILES: HashMap<FileKey, u8> = HashMap::with_max_entries(65_536, 0);

/// Reported writes, read by the daemon.
#[map]
static CAPTURE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Writes lost because the ring buffer was full: the daemon must resync
/// rather than trust the stream (index 0, per CPU).
#[map]
static CAPTURE_LOST: aya_ebpf::maps::PerCpuArray<u64> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// A write in progress on one thread, between its enter and exit tracepoints.
#[derive(Copy, Clone)]
#[repr(C)]
struct InFlight {
    /// The `struct file *` the call writes through.
    file: u64,
    /// For `pwrite64`, the caller's offset; unused for `write`.
    pos: u64,
    key: FileKey,
    kind: u32,
    _pad: u32,
}

/// Calls in progress, by `pid_tgid`. LRU, so threads killed between enter
/// and exit cannot fill it up.
#[map]
static CAPTURE_IN_FLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(16_384, 0);

#[tracepoint]
pub fn capture_enter_write(ctx: TracePointContext) -> u32 {
    // A failure to resolve the file means we cannot know what is written;
    // the program returns 0 like every tracepoint (its value is ignored) and
    // the inotify safety net of the mirror catches what it missed.
    let _ = on_enter(&ctx, WriteKind::Write);
    0
}

#[tracepoint]
pub fn capture_enter_pwrite64(ctx: TracePointContext) -> u32 {
    let _ = on_enter(&ctx, WriteKind::Pwrite);
    0
}

#[tracepoint]
pub fn capture_exit_write(ctx: TracePointContext) -> u32 {
    let _ = on_exit(&ctx);
    0
}

#[tracepoint]
pub fn capture_exit_pwrite64(ctx: TracePointContext) -> u32 {
    let _ = on_exit(&ctx);
    0
}

/// Why a capture hook gave up on one call.
enum Skip {
    /// The offsets have not been filled in.
    NotReady,
    /// A kernel read failed or a value was out of range.
    Fault,
    /// The file is not captured, or the call wrote nothing.
    Uninteresting,
}

impl From<i32> for Skip {
    fn from(_: i32) -> Self {
        Skip::Fault
    }
}

#[inline(always)]
fn offsets() -> Result<CaptureOffsets, Skip> {
    // SAFETY: a read of our own global; volatile so the compiler does not
    // fold the zeros it was compiled with.
    let offsets = unsafe { core::ptr::read_volatile(&CAPTURE_OFFSETS) };
    if offsets.ready == 0 {
        return Err(Skip::NotReady);
    }
    Ok(offsets)
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Result<T, Skip> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    Ok(unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }?)
}

fn on_enter(ctx: &TracePointContext, kind: WriteKind) -> Result<(), Skip> {
    let off = offsets()?;
    // SAFETY: reads of the tracepoint record through the helper.
    let fd: u64 = unsafe { ctx.read_at(tracepoint_layout::ENTER_FD) }?;
    let fd = fd as u32;

    // SAFETY: the helper returns the current task_struct; it is only read
    // through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task, off.task_files)?;
    let fdt: u64 = read_kernel(files, off.files_fdt)?;
    let max_fds: u32 = read_kernel(fdt, off.fdtable_max_fds)?;
    if fd >= max_fds {
        return Err(Skip::Fault);
    }
    let fd_array: u64 = read_kernel(fdt, off.fdtable_fd)?;
    let file: u64 = read_kernel(fd_array, fd * 8)?;
    let inode: u64 = read_kernel(file, off.file_inode)?;
    let ino: u64 = read_kernel(inode, off.inode_ino)?;
    let sb: u64 = read_kernel(inode, off.inode_sb)?;
    let dev: u32 = read_kernel(sb, off.sb_dev)?;

    let key = FileKey { ino, dev, _pad: 0 };
    // SAFETY: a map lookup; the value is not kept.
    if unsafe { CAPTURE_FILES.get(key) }.is_none() {
        return Err(Skip::Uninteresting);
    }
    let pos = match kind {
        // SAFETY: a read of the tracepoint record through the helper.
        WriteKind::Pwrite => unsafe { ctx.read_at::<u64>(tracepoint_layout::ENTER_PWRITE_POS) }?,
        WriteKind::Write => 0,
    };
    let call = InFlight {
        file,
        pos,
        key,
        kind: kind as u32,
        _pad: 0,
    };
    CAPTURE_IN_FLIGHT.insert(bpf_get_current_pid_tgid(), call, 0)?;
    Ok(())
}

fn on_exit(ctx: &TracePointContext) -> Result<(), Skip> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { CAPTURE_IN_FLIGHT.get(pid_tgid) }).copied() else {
        return Err(Skip::Uninteresting);
    };
    let _ = CAPTURE_IN_FLIGHT.remove(pid_tgid);
    // SAFETY: a read of the tracepoint record through the helper.
    let ret: i64 = unsafe { ctx.read_at(tracepoint_layout::EXIT_RET) }?;
    if ret <= 0 {
        return Err(Skip::Uninteresting);
    }
    let len = ret as u64;
    let offset = if call.kind == WriteKind::Pwrite as u32 {
        call.pos
    } else {
        // write(2) advanced the file position past the bytes it wrote; read
        // after the fact this is right for O_APPEND too, where the position
        // the bytes went to is only known once the call ran.
        let off = offsets()?;
        let end: u64 = read_kernel(call.file, off.file_pos)?;
        end.wrapping_sub(len)
    };
    let event = WriteEvent {
        ino: call.key.ino,
        offset,
        len,
        dev: call.key.dev,
        kind: call.kind,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
    };
    if CAPTURE_EVENTS.output::<WriteEvent>(event, 0).is_err() {
        if let Some(lost) = CAPTURE_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; tracepoint programs do not migrate.
            unsafe { *lost += 1 };
        }
    }
    Ok(())
}
