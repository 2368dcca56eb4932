//! The mirror's write capture: syscall tracepoints that report which byte
//! ranges of which files under the replicated directories were changed, and
//! pause callers that ask for durability until the peer has the data.
//!
//! Each `capture_enter_*` program resolves the call's target (fd → file →
//! dentry, then up the dentry parents to a registered root) and remembers
//! it per thread; `capture_exit`, attached to every matching `sys_exit_*`,
//! reports the call once its return value says it succeeded. kprobes and
//! BPF trampolines are not available on the target kernels (PLATFORM.md), so
//! syscall tracepoints are the hook, and every kernel struct is read at
//! offsets that user space found in BTF.
//!
//! Most writes go to files outside every root, so their path is kept short:
//! write-like calls look the file's directory up in `CAPTURE_VERDICTS`
//! before climbing (`capture_namespace` makes every remembered verdict stale
//! whenever a rename or a directory removal could have changed one), and
//! reach it through plain loads from the task's BTF pointer where the
//! descriptor allows ([`fd_file_direct`]) instead of a helper call per
//! kernel read.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add`, but LLVM
// lowers the intrinsic to the instruction set's atomic add when its result
// is unused.
#![feature(core_intrinsics)]
#![allow(internal_features)]

// Links the crate's library, which holds the panic handler.
use halo_ebpf as _;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, generated as gen,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext as _,
};
use halo_common::capture::{
    open_flags::{AT_REMOVEDIR, MS_SYNC, O_APPEND, O_DSYNC, RWF_APPEND, RWF_DSYNC, RWF_SYNC},
    tracepoint_layout::{arg, EXIT_RET},
    CaptureEvent, CaptureOffsets, CaptureSettings, FileKey, PathEvent, PausedTask, RootCount,
    RootPolicy, WriteKind, DAEMON_SYNC_COMM, EVENT_ALL_ROOTS, EVENT_PAUSED, EVENT_PAUSE_REFUSED,
    EVENT_SYNC, EVENT_UNRESOLVED, GENERATIONS, GENERATION_ATTACH, GENERATION_NAMESPACE,
    GENERATION_ROOTS, MAX_DEPTH, PATH_BYTES, ROOT_SYNC_PAUSE,
};

/// Struct member offsets, filled in by user space from BTF before loading.
#[no_mangle]
static CAPTURE_OFFSETS: CaptureOffsets = CaptureOffsets {
    task_files: 0,
    files_fdt: 0,
    files_fd_array: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_inode: 0,
    file_pos: 0,
    file_flags: 0,
    file_dentry: 0,
    dentry_parent: 0,
    dentry_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    inode_size: 0,
    sb_dev: 0,
    sb_root: 0,
    inode_generation: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    ready: 0,
    _pad: 0,
};

/// Load-time settings (the excluded daemon), filled in by user space.
#[no_mangle]
static CAPTURE_SETTINGS: CaptureSettings = CaptureSettings {
    exclude_tgid: 0,
    _pad: 0,
};

/// The replicated directories (roots), by (device, inode), with their policy.
#[map]
static CAPTURE_ROOTS: HashMap<FileKey, RootPolicy> = HashMap::with_max_entries(4096, 0);

/// How many roots each device holds: a file on a device without any costs
/// this one lookup and no parent walk.
#[map]
static CAPTURE_DEVS: HashMap<u32, RootCount> = HashMap::with_max_entries(4096, 0);

/// How many roots there are in all (index 0), for the calls that name no
/// file (`sync`, `msync`).
#[map]
static CAPTURE_TOTALS: Array<RootCount> = Array::with_max_entries(1, 0);

/// Reported calls, read by the daemon. User space may resize it at load.
#[map]
static CAPTURE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Records lost because the ring buffer was full: the daemon must resync
/// rather than trust the stream, and look at `CAPTURE_PAUSED` for tasks
/// paused by a lost sync record (index 0, per CPU).
#[map]
static CAPTURE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU counter behind [`CaptureEvent::seq`].
#[map]
static CAPTURE_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Tasks stopped with `SIGSTOP` by a sync record, by thread id, until user
/// space resumes them. A plain hash, not LRU: an evicted entry would be a
/// task stopped for ever without anyone knowing.
#[map]
static CAPTURE_PAUSED: HashMap<u32, PausedTask> = HashMap::with_max_entries(65_536, 0);

/// Change counters that make the remembered verdicts stale
/// (`GENERATION_NAMESPACE`, bumped here; `GENERATION_ROOTS`, by user space),
/// and the attachment that calls in flight began under
/// (`GENERATION_ATTACH`, by user space).
#[map]
static CAPTURE_GENERATIONS: Array<u64> = Array::with_max_entries(GENERATIONS, 0);

/// A directory, as `CAPTURE_VERDICTS` knows it: its super block and inode
/// number. A directory has exactly one dentry, so unlike a file (hard
/// links, a dentry unlinked while open) it is below a root or not whatever
/// path led to it.
#[derive(Copy, Clone)]
#[repr(C)]
struct DirKey {
    sb: u64,
    ino: u64,
}

/// Whether a directory is below a root, as a parent walk found it.
#[derive(Copy, Clone)]
#[repr(C)]
struct Verdict {
    /// `CAPTURE_GENERATIONS` when the walk started: any later change makes
    /// the verdict stale.
    namespace: u64,
    roots: u64,
    /// The directory's `struct inode *` and `i_generation`: a directory
    /// created later with the same inode number is another directory.
    inode: u64,
    generation: u32,
    /// The device, for the records.
    dev: u32,
    /// The root's inode number; 0 when below no root.
    root: u64,
    /// The root's policy flags.
    policy: u32,
    _pad: u32,
}

/// Verdicts of the directories that write-like calls went to, so that a
/// write climbs only the first time. LRU: a forgotten verdict costs a walk.
#[map]
static CAPTURE_VERDICTS: LruHashMap<DirKey, Verdict> = LruHashMap::with_max_entries(16_384, 0);

/// `SIGSTOP`.
const SIGSTOP: u32 = 19;

/// [`InFlight::offset_from`]: where a write's offset comes from.
const OFFSET_GIVEN: u32 = 0;
/// The file position after the call, minus what it wrote.
const OFFSET_FILE_POS: u32 = 1;
/// The file size after the call, minus what it wrote (appends).
const OFFSET_END_OF_FILE: u32 = 2;

/// [`InFlight::flags`]: the write is durable by itself (`O_SYNC`,
/// `O_DSYNC`, `RWF_SYNC`, `RWF_DSYNC`): report a sync record after it.
const CALL_SYNC_WRITE: u32 = 1;
/// [`InFlight::flags`]: a sync record pauses the caller (its root has
/// `sync = "fsync"`).
const CALL_PAUSE: u32 = 2;

/// A call in progress on one thread, between its enter and exit tracepoints.
#[derive(Copy, Clone)]
#[repr(C)]
struct InFlight {
    /// The `struct file *` the call works on; 0 for calls without a file.
    file: u64,
    /// The file's `struct inode *`.
    inode: u64,
    /// The given offset, or the new size; for `truncate`, the path pointer.
    pos: u64,
    /// The given length (`fallocate`, `sync_file_range`).
    len: u64,
    ino: u64,
    /// The root's inode; 0 when unresolved or for every root.
    root: u64,
    dev: u32,
    kind: u32,
    /// `OFFSET_*`.
    offset_from: u32,
    /// `CALL_*`.
    flags: u32,
    /// `EVENT_UNRESOLVED` / `EVENT_ALL_ROOTS` for the records.
    event_flags: u32,
    /// `fallocate`'s mode, sync calls' flags.
    mode: u32,
    /// `CAPTURE_GENERATIONS[GENERATION_ATTACH]` at the enter.
    attach: u64,
}

/// Calls in progress, by `pid_tgid`. LRU, so threads killed between enter
/// and exit cannot fill it up.
#[map]
static CAPTURE_IN_FLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(16_384, 0);

/// Slots of [`CAPTURE_THREADS`]; a thread's is its id modulo this.
const THREAD_SLOTS: u32 = 65_536;

/// How many records in `CAPTURE_IN_FLIGHT` belong to threads of each slot,
/// so that the exit of a call the enter program found uninteresting (most
/// of them) costs one array read instead of a hash lookup. Only atomic adds
/// change a count, each enter's +1 matched by the −1 of the exit that takes
/// its record: a count is never 0 while a record of its slot waits. A
/// record that is never taken (its thread killed in the call, an LRU
/// eviction) leaves its slot on the slower path, which stays correct.
#[map]
static CAPTURE_THREADS: Array<u64> = Array::with_max_entries(THREAD_SLOTS, 0);

/// Adds `delta` (wrapping) to the count of `pid_tgid`'s slot.
#[inline(always)]
fn count_in_flight(pid_tgid: u64, delta: u64) {
    if let Some(slot) = CAPTURE_THREADS.get_ptr_mut(pid_tgid as u32 % THREAD_SLOTS) {
        // SAFETY: an aligned u64 slot of an array map; the add is atomic.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                slot, delta,
            )
        };
    }
}

/// Keeps `call` until its exit, and counts it in its thread's slot.
#[inline(always)]
fn remember(pid_tgid: u64, mut call: InFlight) -> Result<(), Skip> {
    call.attach = generation(GENERATION_ATTACH);
    CAPTURE_IN_FLIGHT.insert(pid_tgid, call, 0)?;
    count_in_flight(pid_tgid, 1);
    Ok(())
}

// Every entry point ignores its inner function's error: a tracepoint
// program's return value means nothing to the kernel, and a call the
// programs could not resolve is caught by the mirror's inotify safety net,
// which is the documented fallback (ARCHITECTURE.md).

#[tracepoint]
pub fn capture_enter_write(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::Write);
    0
}

#[tracepoint]
pub fn capture_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::Writev);
    0
}

#[tracepoint]
pub fn capture_enter_pwrite64(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::Pwrite);
    0
}

#[tracepoint]
pub fn capture_enter_pwritev(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::Pwritev);
    0
}

#[tracepoint]
pub fn capture_enter_pwritev2(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::Pwritev2);
    0
}

#[tracepoint]
pub fn capture_enter_copy_file_range(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_write(&ctx, WriteKind::CopyFileRange);
    0
}

#[tracepoint]
pub fn capture_enter_ftruncate(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::Ftruncate);
    0
}

#[tracepoint]
pub fn capture_enter_fallocate(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::Fallocate);
    0
}

#[tracepoint]
pub fn capture_enter_fsync(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::Fsync);
    0
}

#[tracepoint]
pub fn capture_enter_fdatasync(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::Fdatasync);
    0
}

#[tracepoint]
pub fn capture_enter_sync_file_range(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::SyncFileRange);
    0
}

#[tracepoint]
pub fn capture_enter_syncfs(ctx: TracePointContext) -> u32 {
    let _ = enter_fd_call(&ctx, WriteKind::Syncfs);
    0
}

#[tracepoint]
pub fn capture_enter_truncate(ctx: TracePointContext) -> u32 {
    let _ = enter_without_file(&ctx, WriteKind::Truncate);
    0
}

#[tracepoint]
pub fn capture_enter_msync(ctx: TracePointContext) -> u32 {
    let _ = enter_without_file(&ctx, WriteKind::Msync);
    0
}

#[tracepoint]
pub fn capture_enter_sync(ctx: TracePointContext) -> u32 {
    let _ = enter_without_file(&ctx, WriteKind::Sync);
    0
}

/// Attached to the enter and exit of `rename`, `renameat`, `renameat2` and
/// `rmdir`: a directory may move from below a root to outside (or back), or
/// its inode number be reused, so every remembered verdict is now stale. At
/// the enter, for the walks that start after; at the exit, for those that
/// ran while the call was moving things.
#[tracepoint]
pub fn capture_namespace(_ctx: TracePointContext) -> u32 {
    bump_namespace();
    0
}

/// `unlinkat` removes a directory only with `AT_REMOVEDIR`; the removal of
/// a file changes no directory's verdict. (Its exit cannot tell, so a walk
/// that runs during the removal is caught by the directory's generation.)
#[tracepoint]
pub fn capture_enter_unlinkat(ctx: TracePointContext) -> u32 {
    if field::<u64>(&ctx, arg(2)) as u32 & AT_REMOVEDIR != 0 {
        bump_namespace();
    }
    0
}

/// Attached to the `sys_exit_*` of every syscall above: their records share
/// one layout, and the enter half said which call it was.
#[tracepoint]
pub fn capture_exit(ctx: TracePointContext) -> u32 {
    let _ = on_exit(&ctx);
    0
}

/// The baseline of `cargo xtask bench mirror`'s capture cost: a program
/// that does nothing, attached to every tracepoint the capture hooks, so
/// that what the kernel itself spends to run programs there is measured
/// under the same loader and attach path. The daemon never loads it.
#[tracepoint]
pub fn capture_noop(_ctx: TracePointContext) -> u32 {
    0
}

/// Why a capture hook gave up on one call.
enum Skip {
    /// The offsets have not been filled in.
    NotReady,
    /// A kernel read failed or a value was out of range.
    Fault,
    /// The call is not about a replicated file, or failed, or is excluded.
    Uninteresting,
}

impl From<i32> for Skip {
    fn from(_: i32) -> Self {
        Skip::Fault
    }
}

impl From<i64> for Skip {
    fn from(_: i64) -> Self {
        Skip::Fault
    }
}

/// The offsets user space filled in, read in place rather than copied to
/// the small stack.
#[inline(always)]
fn offsets() -> Result<&'static CaptureOffsets, Skip> {
    // SAFETY: a pointer to our own global, read back through a volatile
    // load so that the compiler cannot fold the zeros it was compiled with
    // into the reads that follow.
    let offsets: &'static CaptureOffsets =
        unsafe { &*core::ptr::read_volatile(&core::ptr::addr_of!(CAPTURE_OFFSETS)) };
    if offsets.ready == 0 {
        return Err(Skip::NotReady);
    }
    Ok(offsets)
}

/// The current thread's `pid_tgid`, or `Uninteresting` for the daemon.
#[inline(always)]
fn caller() -> Result<u64, Skip> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: as in `offsets`.
    let settings = unsafe { core::ptr::read_volatile(&CAPTURE_SETTINGS) };
    if settings.exclude_tgid != 0 && (pid_tgid >> 32) as u32 == settings.exclude_tgid {
        return Err(Skip::Uninteresting);
    }
    Ok(pid_tgid)
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Result<T, Skip> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    Ok(unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }?)
}

/// Reads a `T` at `base + offset` of kernel memory: with `DIRECT`, a plain
/// load, without, [`read_kernel`].
///
/// A plain load is for a `base` the verifier knows as a kernel struct (a
/// pointer reached from `bpf_get_current_task_btf` by loads at load-time
/// constant offsets, see [`fd_file_direct`]): it checks the offset against
/// the struct's BTF layout and compiles the load to one instruction that
/// reads 0 if it faults, instead of a helper call of 25–40 ns here. The
/// verifier refuses such a load on any other value.
#[inline(always)]
fn load<const DIRECT: bool, T: Copy>(base: u64, offset: u32) -> Result<T, Skip> {
    if DIRECT {
        // SAFETY: see above: the kernel makes a faulting load read 0.
        Ok(unsafe { core::ptr::read((base + u64::from(offset)) as *const T) })
    } else {
        read_kernel(base, offset)
    }
}

/// Reads the syscall record's field at `offset` (a constant: the verifier
/// checks it is inside the record).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: a tracepoint program may load from its record directly, which
    // costs no helper call; every field is 8 bytes and 8-aligned.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// `N` 8-byte words of one kernel struct, read with one helper call: the
/// members a program needs often lie close together, and each read costs
/// about as much as the rest of a lookup. A member outside the span is read
/// on its own. The offsets are load-time constants, so the verifier sees
/// which branch runs. With `DIRECT`, nothing is read ahead: each member is
/// a plain [`load`].
struct Span<const N: usize, const DIRECT: bool> {
    base: u64,
    start: u32,
    words: core::mem::MaybeUninit<[u64; N]>,
}

impl<const N: usize, const DIRECT: bool> Span<N, DIRECT> {
    /// The span of `base` that begins at `lowest`, rounded down to 8, not
    /// read yet: [`Span::read`] fills it in place (a span moved around
    /// would be copied on the small BPF stack).
    #[inline(always)]
    fn at(base: u64, lowest: u32) -> Self {
        Span {
            base,
            start: lowest & !7,
            words: core::mem::MaybeUninit::uninit(),
        }
    }

    #[inline(always)]
    fn read(&mut self) -> Result<(), Skip> {
        if DIRECT {
            return Ok(());
        }
        // SAFETY: the helper checks the source and fills all N words or
        // fails; the words are only used when it succeeded.
        let ret = unsafe {
            gen::bpf_probe_read_kernel(
                self.words.as_mut_ptr().cast(),
                (N * 8) as u32,
                (self.base + u64::from(self.start)) as *const core::ffi::c_void,
            )
        };
        if ret != 0 {
            return Err(Skip::Fault);
        }
        Ok(())
    }

    #[inline(always)]
    fn words(&self) -> &[u64; N] {
        // SAFETY: only called after `read` succeeded.
        unsafe { self.words.assume_init_ref() }
    }

    #[inline(always)]
    fn u64_at(&self, offset: u32) -> Result<u64, Skip> {
        if DIRECT {
            return load::<true, u64>(self.base, offset);
        }
        let rel = offset.wrapping_sub(self.start);
        match self.words().get((rel / 8) as usize) {
            Some(word) if rel.is_multiple_of(8) => Ok(*word),
            _ => read_kernel(self.base, offset),
        }
    }

    #[inline(always)]
    fn u32_at(&self, offset: u32) -> Result<u32, Skip> {
        if DIRECT {
            return load::<true, u32>(self.base, offset);
        }
        let rel = offset.wrapping_sub(self.start);
        match self.words().get((rel / 8) as usize) {
            // Little-endian: the high half of a word is at +4.
            Some(word) if rel.is_multiple_of(4) => Ok((*word >> ((rel % 8) * 8)) as u32),
            _ => read_kernel(self.base, offset),
        }
    }
}

/// The current value of `CAPTURE_GENERATIONS[index]`.
#[inline(always)]
fn generation(index: u32) -> u64 {
    match CAPTURE_GENERATIONS.get_ptr(index) {
        // SAFETY: a slot of an array map; volatile, so that it is read
        // before the walk it stamps.
        Some(slot) => unsafe { core::ptr::read_volatile(slot) },
        None => 0,
    }
}

/// Makes every verdict remembered so far stale.
///
/// The namespace generation is the time of the latest change rather than
/// a count: a plain store that races another CPU's may leave the older
/// time, but never the value a walk read before this change (that value
/// was stored earlier than this time was taken), which is all that
/// staleness needs.
#[inline(always)]
fn bump_namespace() {
    if let Some(slot) = CAPTURE_GENERATIONS.get_ptr_mut(GENERATION_NAMESPACE) {
        // SAFETY: an aligned u64 slot of an array map, which lives as long
        // as the program.
        unsafe { core::ptr::write_volatile(slot, bpf_ktime_get_ns()) };
    }
}

/// An open file under a root, as the enter programs resolve it.
struct Target {
    file: u64,
    inode: u64,
    ino: u64,
    dev: u32,
    f_flags: u32,
    root: u64,
    policy: u32,
    /// `EVENT_UNRESOLVED` if the walk gave up.
    event_flags: u32,
}

/// How [`resolve_fd`] decides whether a file is below a root.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Decide {
    /// From its directory's remembered verdict, climbing only when there is
    /// none: calls that can only succeed on a file that is not a directory
    /// (writes, truncates, allocations), which is below a root exactly when
    /// its directory is.
    ByDirectory,
    /// By climbing from the file itself, which may be a root directory:
    /// durability calls (rare, and they may pause their caller).
    ByWalk,
}

/// The `struct file *` behind `fd` in the current task.
#[inline(always)]
fn fd_file(off: &CaptureOffsets, fd: u32) -> Result<u64, Skip> {
    // SAFETY: the helper returns the current task_struct; it is only read
    // through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task, off.task_files)?;
    let fdt: u64 = read_kernel(files, off.files_fdt)?;
    let mut table = Span::<2, false>::at(fdt, off.fdtable_fd.min(off.fdtable_max_fds));
    table.read()?;
    if fd >= table.u32_at(off.fdtable_max_fds)? {
        return Err(Skip::Fault);
    }
    let file: u64 = read_kernel(table.u64_at(off.fdtable_fd)?, fd * 8)?;
    if file == 0 {
        return Err(Skip::Fault);
    }
    Ok(file)
}

/// The `struct file *` behind `fd` in the current task as a pointer the
/// verifier knows (so that [`load`] may read through it directly), or
/// `None` where only [`fd_file`] can find it: descriptors from 64 up, and
/// any in a task whose table has ever grown past 64.
///
/// Until it grows, a task's descriptor table is the array embedded in its
/// `files_struct`. The verifier takes a plain load only at a constant offset
/// (the offsets are load-time constants to it), so the descriptor's slot is
/// reached by adding each of its six bits as a constant on its own branch:
/// 64 paths, which rejoin once the file is loaded.
#[inline(always)]
fn fd_file_direct(off: &CaptureOffsets, fd: u32) -> Option<u64> {
    if fd >= 64 {
        return None;
    }
    // SAFETY: the helper returns the current task_struct as a BTF pointer.
    let task = unsafe { gen::bpf_get_current_task_btf() } as u64;
    let files: u64 = load::<true, u64>(task, off.task_files).ok()?;
    if files == 0 {
        return None;
    }
    let fdt: u64 = load::<true, u64>(files, off.files_fdt).ok()?;
    let embedded = files + u64::from(off.files_fd_array);
    if load::<true, u64>(fdt, off.fdtable_fd).ok()? != embedded {
        return None;
    }
    let mut slot = embedded;
    for bit in [32u32, 16, 8, 4, 2, 1] {
        if fd & bit != 0 {
            // Opaque to LLVM, which would otherwise fold the six branches
            // into one `fd * 8` that the verifier refuses.
            slot += core::hint::black_box(u64::from(bit) * 8);
        }
    }
    let file: u64 = load::<true, u64>(slot, 0).ok()?;
    (file != 0).then_some(file)
}

/// Resolves `fd` of the current task to its file and to the root it lies
/// under. `Uninteresting` if it lies under none.
#[inline(always)]
fn resolve_fd(off: &CaptureOffsets, fd: u32, decide: Decide) -> Result<Target, Skip> {
    // Only the frequent calls take the direct path: it doubles the code of
    // a program, which the rare durability calls do not need.
    if decide == Decide::ByDirectory {
        if let Some(file) = fd_file_direct(off, fd) {
            return resolve_file::<true>(off, file, decide);
        }
    }
    let file = fd_file(off, fd)?;
    resolve_file::<false>(off, file, decide)
}

/// [`resolve_fd`] from the `struct file *`, read through [`load`].
#[inline(always)]
fn resolve_file<const DIRECT: bool>(
    off: &CaptureOffsets,
    file: u64,
    decide: Decide,
) -> Result<Target, Skip> {
    let mut members = Span::<6, DIRECT>::at(
        file,
        off.file_inode.min(off.file_flags).min(off.file_dentry),
    );
    members.read()?;
    let inode = members.u64_at(off.file_inode)?;
    let f_flags = members.u32_at(off.file_flags)?;
    let dentry = members.u64_at(off.file_dentry)?;
    let found = match decide {
        Decide::ByDirectory => {
            let parent: u64 = load::<DIRECT, u64>(dentry, off.dentry_parent)?;
            directory_verdict::<DIRECT>(off, parent)?
        }
        Decide::ByWalk => {
            let sb: u64 = read_kernel(inode, off.inode_sb)?;
            let dev: u32 = read_kernel(sb, off.sb_dev)?;
            // SAFETY: a map lookup; the value is not kept.
            if unsafe { CAPTURE_DEVS.get(dev) }.is_none() {
                return Err(Skip::Uninteresting);
            }
            let (found, _) = find_root(off, dentry, dev, sb)?;
            found
        }
    };
    let (dev, root, policy, event_flags) = match found {
        Found::Root { dev, root, policy } => (dev, root, policy, 0),
        Found::Unresolved { dev } => (dev, 0, 0, EVENT_UNRESOLVED),
        Found::Outside => return Err(Skip::Uninteresting),
    };
    let ino: u64 = load::<DIRECT, u64>(inode, off.inode_ino)?;
    Ok(Target {
        file,
        inode,
        ino,
        dev,
        f_flags,
        root,
        policy,
        event_flags,
    })
}

/// Where a parent walk ended.
#[derive(Copy, Clone)]
enum Found {
    /// Below the root `root` (its inode number) of device `dev`.
    Root { dev: u32, root: u64, policy: u32 },
    /// Below no root.
    Outside,
    /// [`MAX_DEPTH`] levels were not enough to decide.
    Unresolved { dev: u32 },
}

/// Whether the directory `dir` is below a root: its remembered verdict if
/// it is still current, otherwise a walk, remembered when it is final.
#[inline(always)]
fn directory_verdict<const DIRECT: bool>(off: &CaptureOffsets, dir: u64) -> Result<Found, Skip> {
    // Read before the walk: a rename or root change that starts after this
    // makes what the walk finds stale.
    let namespace = generation(GENERATION_NAMESPACE);
    let roots = generation(GENERATION_ROOTS);
    let inode: u64 = load::<DIRECT, u64>(dir, off.dentry_inode)?;
    let mut members = Span::<12, DIRECT>::at(
        inode,
        off.inode_sb.min(off.inode_ino).min(off.inode_generation),
    );
    members.read()?;
    let sb = members.u64_at(off.inode_sb)?;
    let key = DirKey {
        sb,
        ino: members.u64_at(off.inode_ino)?,
    };
    let generation = members.u32_at(off.inode_generation)?;
    // SAFETY: a map lookup; the value is copied at once.
    if let Some(known) = unsafe { CAPTURE_VERDICTS.get(key) }.copied() {
        if known.namespace == namespace
            && known.roots == roots
            && known.inode == inode
            && known.generation == generation
        {
            return Ok(if known.root == 0 {
                Found::Outside
            } else {
                Found::Root {
                    dev: known.dev,
                    root: known.root,
                    policy: known.policy,
                }
            });
        }
    }
    let dev: u32 = load::<DIRECT, u32>(sb, off.sb_dev)?;
    // SAFETY: a map lookup; the value is not kept.
    let (found, final_verdict) = if unsafe { CAPTURE_DEVS.get(dev) }.is_none() {
        (Found::Outside, true)
    } else {
        find_root(off, dir, dev, sb)?
    };
    let (root, policy) = match found {
        Found::Root { root, policy, .. } => (root, policy),
        Found::Outside => (0, 0),
        Found::Unresolved { .. } => return Ok(found),
    };
    if final_verdict {
        let verdict = Verdict {
            namespace,
            roots,
            inode,
            generation,
            dev,
            root,
            policy,
            _pad: 0,
        };
        // A verdict that cannot be remembered is found again next time.
        let _ = CAPTURE_VERDICTS.insert(key, verdict, 0);
    }
    Ok(found)
}

/// Climbs from `dentry` (included, so a sync of a root directory counts)
/// towards its filesystem's root, and says whether the answer may be
/// remembered: not when the climb ended at a disconnected dentry (one that
/// a later lookup may attach below a root without any rename).
///
/// The walk follows `d_parent`, which a rename updates: a file moved out of
/// a root stops matching at once. It does not cross mount points (a
/// filesystem mounted below a root is a root of its own to register).
#[inline(never)]
fn find_root(off: &CaptureOffsets, dentry: u64, dev: u32, sb: u64) -> Result<(Found, bool), Skip> {
    let mut current = dentry;
    for _ in 0..MAX_DEPTH {
        let mut members = Span::<4, false>::at(current, off.dentry_inode.min(off.dentry_parent));
        members.read()?;
        let inode = members.u64_at(off.dentry_inode)?;
        if inode != 0 {
            let ino: u64 = read_kernel(inode, off.inode_ino)?;
            let key = FileKey { ino, dev, _pad: 0 };
            // SAFETY: a map lookup; the value is copied at once.
            if let Some(policy) = unsafe { CAPTURE_ROOTS.get(key) } {
                let found = Found::Root {
                    dev,
                    root: ino,
                    policy: policy.flags,
                };
                return Ok((found, true));
            }
        }
        let parent = members.u64_at(off.dentry_parent)?;
        if parent == current || parent == 0 {
            let sb_root: u64 = read_kernel(sb, off.sb_root)?;
            return Ok((Found::Outside, current == sb_root));
        }
        current = parent;
    }
    Ok((Found::Unresolved { dev }, false))
}

/// A write-like call on `fd` (argument 0, or `fd_out` for
/// `copy_file_range`): remembers where its bytes go.
// Inlined into each entry point: `kind` is then a constant, and so is
// every record offset read (the verifier takes only constant ones).
#[inline(always)]
fn enter_fd_write(ctx: &TracePointContext, kind: WriteKind) -> Result<(), Skip> {
    let off = offsets()?;
    let pid_tgid = caller()?;
    let fd: u64 = if kind == WriteKind::CopyFileRange {
        field(ctx, arg(2))
    } else {
        field(ctx, arg(0))
    };
    let target = resolve_fd(off, fd as u32, Decide::ByDirectory)?;

    let mut flags = 0;
    if target.f_flags & O_DSYNC != 0 {
        // O_SYNC includes the O_DSYNC bit.
        flags |= CALL_SYNC_WRITE;
    }
    let appends = target.f_flags & O_APPEND != 0;
    let (offset_from, pos) = match kind {
        WriteKind::Write | WriteKind::Writev => (OFFSET_FILE_POS, 0),
        WriteKind::Pwrite | WriteKind::Pwritev | WriteKind::Pwritev2 => {
            let pos: i64 = field(ctx, arg(3));
            let mut from = OFFSET_GIVEN;
            if kind == WriteKind::Pwritev2 {
                let rwf: u64 = field(ctx, arg(5));
                let rwf = rwf as u32;
                if rwf & (RWF_DSYNC | RWF_SYNC) != 0 {
                    flags |= CALL_SYNC_WRITE;
                }
                if rwf & RWF_APPEND != 0 {
                    from = OFFSET_END_OF_FILE;
                }
                if pos == -1 {
                    // pwritev2 at offset -1 writes at, and moves, the position.
                    from = OFFSET_FILE_POS;
                }
            }
            // Linux appends a positional write to an O_APPEND file whatever
            // offset the caller gave.
            if appends && from == OFFSET_GIVEN {
                from = OFFSET_END_OF_FILE;
            }
            (from, pos as u64)
        }
        WriteKind::CopyFileRange => {
            let off_out: u64 = field(ctx, arg(3));
            if off_out == 0 {
                (OFFSET_FILE_POS, 0)
            } else {
                // The kernel updates *off_out on success: read it before.
                // SAFETY: a read of the caller's memory through the helper.
                let pos: u64 = unsafe { bpf_probe_read_user(off_out as *const u64) }?;
                (OFFSET_GIVEN, pos)
            }
        }
        _ => return Err(Skip::Uninteresting),
    };
    if target.policy & ROOT_SYNC_PAUSE != 0 {
        flags |= CALL_PAUSE;
    }
    let call = InFlight {
        file: target.file,
        inode: target.inode,
        pos,
        len: 0,
        ino: target.ino,
        root: target.root,
        dev: target.dev,
        kind: kind as u32,
        offset_from,
        flags,
        event_flags: target.event_flags,
        mode: 0,
        attach: 0,
    };
    remember(pid_tgid, call)
}

/// A call on the file `fd` (argument 0) that is not a write: a truncate,
/// an allocation or a sync.
// Inlined into each entry point: `kind` is then a constant, and so is
// every record offset read (the verifier takes only constant ones).
#[inline(always)]
fn enter_fd_call(ctx: &TracePointContext, kind: WriteKind) -> Result<(), Skip> {
    let off = offsets()?;
    let pid_tgid = caller()?;
    let fd: u64 = field(ctx, arg(0));
    let (pos, len, mode) = match kind {
        WriteKind::Ftruncate => (field::<u64>(ctx, arg(1)), 0, 0),
        WriteKind::Fallocate => (
            field::<u64>(ctx, arg(2)),
            field::<u64>(ctx, arg(3)),
            field::<u64>(ctx, arg(1)) as u32,
        ),
        WriteKind::SyncFileRange => (
            field::<u64>(ctx, arg(1)),
            field::<u64>(ctx, arg(2)),
            field::<u64>(ctx, arg(3)) as u32,
        ),
        _ => (0, 0, 0),
    };
    let decide = if kind.is_sync_call() {
        Decide::ByWalk
    } else {
        Decide::ByDirectory
    };
    let (target, event_flags) = if kind == WriteKind::Syncfs {
        syncfs_target(off, fd as u32)?
    } else {
        let target = resolve_fd(off, fd as u32, decide)?;
        let event_flags = target.event_flags;
        (target, event_flags)
    };
    let mut flags = 0;
    if target.policy & ROOT_SYNC_PAUSE != 0 {
        flags |= CALL_PAUSE;
    }
    let call = InFlight {
        file: target.file,
        inode: target.inode,
        pos,
        len,
        ino: target.ino,
        root: target.root,
        dev: target.dev,
        kind: kind as u32,
        offset_from: OFFSET_GIVEN,
        flags,
        event_flags,
        mode,
        attach: 0,
    };
    remember(pid_tgid, call)
}

/// `syncfs(fd)` makes every file of `fd`'s filesystem durable: it concerns
/// every root on that device, wherever `fd` itself is.
#[inline(always)]
fn syncfs_target(off: &CaptureOffsets, fd: u32) -> Result<(Target, u32), Skip> {
    let target = match resolve_fd(off, fd, Decide::ByWalk) {
        Ok(target) => target,
        // Outside every root but maybe on a device that has roots: resolve
        // the device alone below.
        Err(Skip::Uninteresting) => Target {
            file: 0,
            inode: 0,
            ino: 0,
            dev: fd_dev(off, fd)?,
            f_flags: 0,
            root: 0,
            policy: 0,
            event_flags: 0,
        },
        Err(other) => return Err(other),
    };
    // SAFETY: a map lookup; the value is copied at once.
    let count = unsafe { CAPTURE_DEVS.get(target.dev) }.ok_or(Skip::Uninteresting)?;
    let policy = if count.sync_roots != 0 {
        ROOT_SYNC_PAUSE
    } else {
        0
    };
    Ok((
        Target {
            root: 0,
            policy,
            ..target
        },
        EVENT_ALL_ROOTS,
    ))
}

/// The kernel `s_dev` of the file behind `fd`.
#[inline(always)]
fn fd_dev(off: &CaptureOffsets, fd: u32) -> Result<u32, Skip> {
    let file = fd_file(off, fd)?;
    let inode: u64 = read_kernel(file, off.file_inode)?;
    let sb: u64 = read_kernel(inode, off.inode_sb)?;
    read_kernel(sb, off.sb_dev)
}

/// `truncate(path)`, `msync` and `sync`: calls that name no open file.
///
/// `truncate` is reported whatever the path (user space resolves it and
/// drops what is not under a root: the call is rare); `msync` (`MS_SYNC`
/// only, with its address range in `offset` and `len`) and `sync` concern
/// every root, since no file can be resolved here.
// Inlined into each entry point: `kind` is then a constant, and so is
// every record offset read (the verifier takes only constant ones).
#[inline(always)]
fn enter_without_file(ctx: &TracePointContext, kind: WriteKind) -> Result<(), Skip> {
    offsets()?;
    let pid_tgid = caller()?;
    let totals = CAPTURE_TOTALS.get(0).ok_or(Skip::Fault)?;
    if totals.roots == 0 {
        return Err(Skip::Uninteresting);
    }
    let mut flags = 0;
    let (pos, len, mode, event_flags) = match kind {
        WriteKind::Truncate => (field::<u64>(ctx, arg(0)), field::<u64>(ctx, arg(1)), 0, 0),
        WriteKind::Msync => {
            let ms: u64 = field(ctx, arg(2));
            if ms as u32 & MS_SYNC == 0 {
                return Err(Skip::Uninteresting);
            }
            // The mapped range: user space finds the files mapped there
            // (stores through a mapping reach no tracepoint).
            let (addr, len) = (field::<u64>(ctx, arg(0)), field::<u64>(ctx, arg(1)));
            (addr, len, ms as u32, EVENT_ALL_ROOTS)
        }
        _ => (0, 0, 0, EVENT_ALL_ROOTS),
    };
    if kind != WriteKind::Truncate && totals.sync_roots != 0 {
        flags |= CALL_PAUSE;
    }
    let call = InFlight {
        file: 0,
        inode: 0,
        pos,
        len,
        ino: 0,
        root: 0,
        dev: 0,
        kind: kind as u32,
        offset_from: OFFSET_GIVEN,
        flags,
        event_flags,
        mode,
        attach: 0,
    };
    remember(pid_tgid, call)
}

fn on_exit(ctx: &TracePointContext) -> Result<(), Skip> {
    let pid_tgid = bpf_get_current_pid_tgid();
    match CAPTURE_THREADS.get(pid_tgid as u32 % THREAD_SLOTS) {
        // No record of this slot's threads is waiting.
        Some(0) => return Err(Skip::Uninteresting),
        Some(_) => {}
        None => return Err(Skip::Fault),
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { CAPTURE_IN_FLIGHT.get(pid_tgid) }).copied() else {
        return Err(Skip::Uninteresting);
    };
    let _ = CAPTURE_IN_FLIGHT.remove(pid_tgid);
    count_in_flight(pid_tgid, u64::MAX);
    if call.attach != generation(GENERATION_ATTACH) {
        // Made under an earlier attachment: most likely left by a call whose
        // exit ran while the programs were detached, so that this exit is
        // another call's; or this very call outlasted a detach and an
        // attach. Either way it is not reported (the inotify safety net
        // covers the write; docs/mirror-durability.md).
        return Err(Skip::Uninteresting);
    }
    let ret: i64 = field(ctx, EXIT_RET);
    if ret < 0 {
        return Err(Skip::Uninteresting);
    }
    let Some(kind) = WriteKind::from_raw(call.kind) else {
        return Err(Skip::Fault);
    };
    let mut event = CaptureEvent {
        ino: call.ino,
        root: call.root,
        offset: call.pos,
        len: call.len,
        seq: next_seq(),
        dev: call.dev,
        kind: call.kind,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        flags: call.event_flags,
        mode: call.mode,
    };
    match kind {
        WriteKind::Truncate => return emit_path(event, call.pos, call.len),
        WriteKind::Ftruncate | WriteKind::Fallocate => {
            emit(&event);
            return Ok(());
        }
        kind if kind.is_sync_call() => {
            event.flags |= EVENT_SYNC;
            sync_record(event, call.flags & CALL_PAUSE != 0);
            return Ok(());
        }
        _ => {}
    }
    if ret == 0 {
        return Err(Skip::Uninteresting);
    }
    let len = ret as u64;
    let off = offsets()?;
    event.len = len;
    event.offset = match call.offset_from {
        OFFSET_FILE_POS => {
            // The call advanced the file position past the bytes it wrote;
            // read after the fact this is right for O_APPEND too, where the
            // position the bytes went to is only known once the call ran.
            let end: u64 = read_kernel(call.file, off.file_pos)?;
            end.wrapping_sub(len)
        }
        OFFSET_END_OF_FILE => {
            // A positional append leaves the position alone: the bytes
            // ended at the end of file.
            let size: u64 = read_kernel(call.inode, off.inode_size)?;
            size.wrapping_sub(len)
        }
        _ => call.pos,
    };
    emit(&event);
    if call.flags & CALL_SYNC_WRITE != 0 {
        event.seq = next_seq();
        event.flags |= EVENT_SYNC;
        sync_record(event, call.flags & CALL_PAUSE != 0);
    }
    Ok(())
}

/// The next [`CaptureEvent::seq`] of this CPU.
#[inline(always)]
fn next_seq() -> u64 {
    // SAFETY: the helper has no preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let count = match CAPTURE_SEQ.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: this CPU's slot; the program does not migrate.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    };
    (cpu << 56) | (count & 0x00ff_ffff_ffff_ffff)
}

/// Counts a record the full ring buffer could not take.
#[inline(always)]
fn count_lost() {
    if let Some(lost) = CAPTURE_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program does not migrate.
        unsafe { *lost += 1 };
    }
}

#[inline(always)]
fn emit(event: &CaptureEvent) {
    if CAPTURE_EVENTS.output::<CaptureEvent>(event, 0).is_err() {
        count_lost();
    }
}

/// When the current process started (its leader's `start_boottime`), as
/// `/proc/<pid>/stat` derives its start time from; 0 if unreadable.
#[inline(always)]
fn process_start() -> u64 {
    let read = || {
        let off = offsets()?;
        // SAFETY: the helper returns the current task; the reads go
        // through bpf_probe_read_kernel.
        let task = unsafe { bpf_get_current_task() };
        let leader: u64 = read_kernel(task, off.task_group_leader)?;
        read_kernel::<u64>(leader, off.task_start_boottime)
    };
    read().unwrap_or(0)
}

/// Whether the caller is a halo daemon's own `syncfs`, which no capture
/// stops: one stopped would stop that daemon (a secondary's, by the
/// primary's capture where nodes share a kernel, or anywhere by the
/// capture its crashed predecessor left attached), and with it the
/// acknowledgement that would release it. An application that names a
/// thread so gives up its own syncs' wait for the peer, nothing else.
#[inline(always)]
fn is_daemon_sync() -> bool {
    let Ok(comm) = aya_ebpf::helpers::bpf_get_current_comm() else {
        return false;
    };
    // Byte by byte: no `memcmp` in a BPF program.
    for i in 0..DAEMON_SYNC_COMM.len() {
        if comm[i] != DAEMON_SYNC_COMM[i] {
            return false;
        }
    }
    true
}

/// Reports a sync, first stopping the caller if its root asks for it.
///
/// The order matters: the task is listed in `CAPTURE_PAUSED` before the
/// signal is sent, and the record is sent last, so user space never
/// resumes a task whose `SIGSTOP` is still to come (`SIGCONT` discards a
/// pending stop, not a later one), and a task paused by a record the full
/// ring dropped is still listed.
#[inline(always)]
fn sync_record(mut event: CaptureEvent, pause: bool) {
    if pause && !is_daemon_sync() {
        let task = PausedTask {
            seq: event.seq,
            root: event.root,
            ino: event.ino,
            tgid: event.tgid,
            dev: event.dev,
            start: process_start(),
        };
        if CAPTURE_PAUSED
            .insert(event.tid, task, u64::from(BPF_ANY))
            .is_ok()
        {
            // The stop takes effect when the task returns to user mode, that
            // is right after this syscall: the call completed, its caller
            // does not see it return until resumed.
            // SAFETY: the helper signals the current process only.
            if unsafe { gen::bpf_send_signal(SIGSTOP) } == 0 {
                event.flags |= EVENT_PAUSED;
            } else {
                // Not stoppable (the init process, a kernel thread, or the
                // signal could not be queued now): report the sync without
                // the pause, saying so.
                let _ = CAPTURE_PAUSED.remove(event.tid);
                event.flags |= EVENT_PAUSE_REFUSED;
            }
        }
    }
    emit(&event);
}

/// Reports a `truncate(path, size)`, the path read from the caller's memory
/// (still the caller's: the thread has not returned to user mode).
#[inline(always)]
fn emit_path(mut event: CaptureEvent, path: u64, size: u64) -> Result<(), Skip> {
    event.offset = size;
    event.len = 0;
    let Some(mut entry) = CAPTURE_EVENTS.reserve::<PathEvent>(0) else {
        count_lost();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at the reserved, writable entry; the helper
    // copies at most PATH_BYTES bytes into its path buffer and NUL-ends them.
    let copied = unsafe {
        gen::bpf_probe_read_user_str(
            (*record).path.as_mut_ptr().cast(),
            PATH_BYTES as u32,
            path as *const core::ffi::c_void,
        )
    };
    event.len = if copied > 0 { copied as u64 } else { 0 };
    // SAFETY: as above.
    unsafe { (*record).event = event };
    entry.submit(0);
    Ok(())
}
