//! One replication session between a primary and its secondary.
//!
//! The secondary connects to the primary's replication address (it is the
//! one that knows when it wants the data) and announces the data it holds
//! (`Join`). The primary then streams, on one ordered stream:
//!
//! - a **resynchronisation**: a walk of its directories sending, for every
//!   directory, its metadata and complete listing (the secondary removes
//!   what is not listed) and, for every file, its block checksums (`Sums`:
//!   the secondary answers `Need` with the blocks that differ, which the
//!   primary then sends). An *incremental* resynchronisation visits only
//!   what changed (ctime) since the last moment the secondary was known to
//!   be in sync with the same generation; a *full* one visits everything.
//!   Either way only differing blocks travel;
//! - and, interleaved with it, the **live changes** the [`Tracker`] sees.
//!
//! The primary's sender thread is the only one that reads the files and
//! writes the stream, so a listing or a block is always read after every
//! change queued before it: the secondary converges to the primary's tree.
//! Renames need more, because the walk and the checksums' answers span
//! many changes: a directory the walk has still to visit is visited under
//! its new name, an entry moved to where the walk has been is compared at
//! once, and the blocks that answer a file's checksums go to wherever the
//! changes sent since moved that file (and nowhere once they removed or
//! replaced it).
//!
//! Threads: on the primary, `Tracker` (inotify → ops), `sender` (ops →
//! stream) and `receiver` (`Need`, `Ack`, `ResyncDone` from the secondary);
//! on the secondary, one thread reads, applies and answers.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet, VecDeque},
    fs::File,
    io::{self, BufReader, BufWriter},
    net::{Shutdown, SocketAddr, TcpStream},
    os::unix::{
        ffi::OsStrExt as _,
        fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, info, trace, warn};

use crate::ebpf::capture::{Captured, Change as CaptureChange};

use super::{
    apply::{Applier, Reply},
    channel::{handshake, ChannelError, Hello, MessageReader, MessageWriter, Role, SessionKey},
    fanout::{ApplyPool, Routed},
    hub::{CaptureHub, Wake},
    journal::{Dirt, Journal},
    path::RelPath,
    sums::{block_count, file_sums},
    watch::{Change, Watcher},
    wire::{Blocks, Message, Meta, BLOCK_SIZE, MAX_SUMS, MAX_WRITE},
};

/// Frames a secondary's reader decodes ahead of its applier (each at most
/// a frame's size, `channel::MAX_FRAME`).
const RECEIVED_AHEAD: usize = 8;

/// Files up to this size travel whole instead of by checksums.
const SMALL_FILE: u64 = 256 * 1024;
/// An msync's range of a mapped file up to this length travels as it is;
/// a longer one (a whole large mapping synced at once) makes the file
/// compared by checksums, so that only the blocks that differ travel:
/// which of its pages were stored to cannot be told.
const MAPPED_SHIPPED: u64 = 8 << 20;
/// How a secondary's session ends when its primary handed the role over.
pub const HANDED_OVER: &str = "the primary handed its role over";

/// How many acknowledged barrier numbers a session remembers for
/// [`PrimarySession::wait_acked`].
const MAX_ACKS_KEPT: usize = 1024;
/// How many vanished paths the sender remembers.
const MAX_VANISHED: usize = 10_000;
/// How long the tracker waits for more events before shipping a batch.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// The most entries [`Sender::other_name`] looks at to find another name
/// of a hard-linked file.
const LINK_SEARCH_LIMIT: usize = 200_000;

/// What the driver needs to know about a module's replication.
#[derive(Clone)]
pub struct Setup {
    pub module: String,
    pub node: String,
    /// The replicated directories, in configuration order.
    pub dirs: Vec<PathBuf>,
    /// Glob patterns per directory, of what is not replicated.
    pub excludes: Vec<Vec<String>>,
    pub encrypt: bool,
    /// The key of the next handshake (a fresh one per session).
    pub key: SessionKey,
}

/// Counters both ends publish (status, metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes put on the wire by this end in the current session.
    pub bytes_sent: AtomicU64,
    /// Entries the resynchronisation walk visited / will visit.
    pub files_done: AtomicU64,
    pub files_total: AtomicU64,
    /// Bytes of the files the walk visited / found.
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Whether the walk has found every entry (the totals are final).
    pub walk_complete: AtomicBool,
    /// Bytes of captured writes queued and not yet sent.
    pub backlog: AtomicU64,
}

/// What a session tells the module driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Primary: a secondary joined (its node name and generation).
    Joined { peer: String, generation: u64 },
    /// Secondary: the resynchronisation is complete.
    ResyncDone { generation: u64 },
    /// Primary: the resynchronisation to `generation` has sent everything;
    /// its end waits for [`PrimarySession::end_resync`].
    ResyncSent { generation: u64 },
    /// Primary: the secondary finished its resynchronisation; `bytes_sent`
    /// is what the session put on the wire until then.
    PeerInSync { generation: u64, bytes_sent: u64 },
    /// Primary: everything up to the barrier is applied.
    Drained { seq: u64 },
    /// The session ended (connection lost, refused message, error).
    Ended { reason: String },
}

/// Where sessions report (from their threads; sending never blocks).
pub type Events = tokio::sync::mpsc::UnboundedSender<SessionEvent>;

/// Work for the primary's sender thread, in order.
#[derive(Debug)]
enum Op {
    Tree(RelPath),
    /// An entry as it is now: a small file whole, a larger one compared by
    /// checksums.
    Entry(RelPath),
    /// A file that appeared in the tracker's batch: the secondary has
    /// nothing of it, so it travels whole whatever its size (checksums
    /// would cost a round trip, and a durability call right after must not
    /// be acknowledged before the bytes).
    New(RelPath),
    Remove(RelPath),
    Rename(RelPath, RelPath),
    Meta(RelPath),
    Blocks(RelPath, Vec<Blocks>),
    /// A new name of an already replicated file.
    Link(RelPath, RelPath),
    /// Captured byte ranges `[start, end)` of a file: its path, its inode
    /// (device, number) and the ranges.
    Ranges(RelPath, (u64, u64), Vec<(u64, u64)>),
    /// The role is handed over: say so, then end the session.
    Bye,
    /// Threads paused by a durability call: a barrier, and their release
    /// once the secondary acknowledges it.
    Release(Vec<Pause>),
    Resync {
        full: bool,
        since: Option<SystemTime>,
    },
    Barrier(u64),
    /// The driver made its stamp say that a peer may hold a copy: the
    /// resynchronisation to this generation may end.
    EndResync(u64),
    Stop,
}

/// A directory glob: `*` and `?` within one component, `**` across them.
pub fn glob_match(pattern: &[u8], path: &[u8]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(b'*'), _) if pattern.get(1) == Some(&b'*') => {
            let rest = pattern[2..].strip_prefix(b"/").unwrap_or(&pattern[2..]);
            (0..=path.len()).any(|i| glob_match(rest, &path[i..]))
        }
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], path)
                || (path.first().is_some_and(|c| *c != b'/') && glob_match(pattern, &path[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob_match(&pattern[1..], &path[1..]),
        (Some(p), Some(c)) if p == c => glob_match(&pattern[1..], &path[1..]),
        _ => false,
    }
}

impl Setup {
    fn excluded(&self, path: &RelPath) -> bool {
        self.excludes
            .get(usize::from(path.dir))
            .is_some_and(|globs| {
                globs
                    .iter()
                    .any(|g| glob_match(g.as_bytes(), path.as_bytes()))
            })
    }

    fn absolute(&self, path: &RelPath) -> PathBuf {
        let base = &self.dirs[usize::from(path.dir)];
        if path.is_root() {
            base.clone()
        } else {
            base.join(path.as_path())
        }
    }
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    }
}

/// How far before its sync point an incremental resynchronisation looks.
/// The sync point is the time its barrier was sent, but a change made just
/// before can reach the queue after the barrier (the capture ring and
/// inotify are read asynchronously), and file timestamps come from a coarse
/// clock that lags the real one by up to a tick: without a margin such a
/// change would have a ctime before the sync point and be skipped. Files
/// changed within the margin are compared by block checksums, so only
/// their differing blocks travel.
const SYNC_POINT_MARGIN: Duration = Duration::from_secs(5);

fn ctime_of(m: &std::fs::Metadata) -> SystemTime {
    let ns = (m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128).max(0) as u64;
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

// ---------------------------------------------------------------- tracker

/// The capture's records for a tracker: the hub's channel and wake-up.
pub struct CaptureFeed {
    pub records: mpsc::Receiver<Captured>,
    pub wake: Arc<Wake>,
    /// Releases paused writers while no session can acknowledge them.
    pub hub: Arc<CaptureHub>,
}

/// Watches the primary's directories and queues what changed: to the
/// session while one runs, and always to the module's journal.
pub struct Tracker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where the tracker's ops go while a session runs.
    target: Arc<Mutex<Option<mpsc::Sender<Op>>>>,
    journal: Arc<Mutex<Journal>>,
    /// Barriers to queue behind every write made before they were asked
    /// for ([`Tracker::barrier_after_writes`]), and the tracker's wake-up.
    flushes: Arc<Mutex<Vec<u64>>>,
    flush_wake: Arc<Wake>,
}

/// [`Tracker::between_batches`]: the tracker waits while this lives.
pub struct BetweenBatches<'a> {
    _held: std::sync::MutexGuard<'a, Option<mpsc::Sender<Op>>>,
}

impl Tracker {
    /// Holds the tracker between two batches. A sync point's mark in the
    /// journal and its barrier, made while this is held, fall between the
    /// same two batches: every op the journal holds before the mark reaches
    /// the session before the barrier. Otherwise a batch journaled before
    /// the mark but queued after the barrier would be dropped from the
    /// journal by the barrier's acknowledgement, and lost if the stream
    /// broke before it travelled.
    pub fn between_batches(&self) -> BetweenBatches<'_> {
        BetweenBatches {
            _held: self.target.lock().expect("tracker target"),
        }
    }

    /// Queues barrier `seq` to the session behind everything written to
    /// the directories before this call: the tracker's next batch reads
    /// the capture's ring and inotify to their ends, ships what they name
    /// (a file whose ranges are not there is compared by checksums rather
    /// than given a batch of grace), then the barrier. A handover drains
    /// with it: the application is stopped, so the barrier's
    /// acknowledgement means the secondary holds every byte it wrote. A
    /// barrier sent straight to the session could overtake the tracker's
    /// last batches, and the new primary would start without them.
    pub fn barrier_after_writes(&self, seq: u64) {
        self.flushes.lock().expect("tracker flushes").push(seq);
        self.flush_wake.ring();
    }

    /// Starts watching every directory of `setup` (they must exist), with
    /// the capture's records when there is a capture. Its first work is
    /// the journal's last-flush rule (see `mirror::journal`): every entry
    /// changed since the journal's last durable batch is marked compare.
    pub fn start(
        setup: Setup,
        feed: Option<CaptureFeed>,
        progress: Arc<Progress>,
        journal: Arc<Mutex<Journal>>,
    ) -> io::Result<Self> {
        let mut watcher = Watcher::new(setup.dirs.clone())?;
        for dir in 0..setup.dirs.len() {
            watcher.watch_tree(&RelPath::root(dir as u8))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let target: Arc<Mutex<Option<mpsc::Sender<Op>>>> = Arc::default();
        let flushes: Arc<Mutex<Vec<u64>>> = Arc::default();
        let flush_wake = Wake::new()?;
        let thread = {
            let stop = Arc::clone(&stop);
            let target = Arc::clone(&target);
            let journal = Arc::clone(&journal);
            let flushes = Arc::clone(&flushes);
            let flush_wake = Arc::clone(&flush_wake);
            std::thread::Builder::new()
                .name(format!("halo-track-{}", setup.module))
                .spawn(move || {
                    {
                        let mut journal = journal.lock().expect("journal");
                        if journal.base().is_some() {
                            let none = std::collections::BTreeSet::new();
                            for path in changed_since(&setup, journal.cutoff(), &none) {
                                journal.compare(&path);
                            }
                            if let Err(error) = journal.flush(true) {
                                warn!(module = %setup.module, %error, "cannot write the dirty-range journal");
                            }
                        }
                    }
                    let mut state = TrackState::default();
                    let sinks = Sinks {
                        target: &target,
                        journal: &journal,
                        flushes: &flushes,
                        flush_wake: &flush_wake,
                    };
                    track(setup, watcher, feed, &stop, sinks, &mut state, &progress)
                })?
        };
        Ok(Tracker {
            stop,
            thread: Some(thread),
            target,
            journal,
            flushes,
            flush_wake,
        })
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every entry below `setup`'s directories (not excluded) whose ctime is
/// at or after `cutoff`.
/// The entries of the replicated directories changed (ctime) at or after
/// `cutoff`, and the names of the files in `linked` (`DirtySet::linked`).
pub fn changed_since(
    setup: &Setup,
    cutoff: SystemTime,
    linked: &std::collections::BTreeSet<(u64, u64)>,
) -> Vec<RelPath> {
    let mut out = Vec::new();
    let mut dirs: Vec<RelPath> = (0..setup.dirs.len())
        .map(|d| RelPath::root(d as u8))
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(setup.absolute(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(child) = dir.join(entry.file_name().as_bytes()) else {
                continue;
            };
            if setup.excluded(&child) {
                continue;
            }
            let Ok(m) = entry.metadata() else { continue };
            if ctime_of(&m) >= cutoff || (m.is_file() && linked.contains(&(m.dev(), m.ino()))) {
                out.push(child.clone());
            }
            if m.is_dir() {
                dirs.push(child);
            }
        }
    }
    out
}

/// Records a tracker's op in the journal (see `mirror::journal` for why
/// namespace changes compare whole subtrees).
fn journal_op(journal: &mut Journal, op: &Op) {
    match op {
        Op::Ranges(path, _, ranges) => {
            for (start, end) in ranges {
                journal.add_range(path, *start, *end);
            }
        }
        Op::Entry(path) | Op::New(path) | Op::Meta(path) | Op::Link(path, _) => {
            journal.compare(path)
        }
        Op::Tree(path) | Op::Remove(path) => journal.compare_tree(path),
        Op::Rename(from, to) => {
            journal.compare_tree(from);
            journal.compare_tree(to);
        }
        Op::Resync { .. } => journal.untrust(),
        Op::Blocks(..)
        | Op::Bye
        | Op::Release(_)
        | Op::Barrier(_)
        | Op::EndResync(_)
        | Op::Stop => {}
    }
}

/// Lets a burst of events arrive for up to [`BATCH_WAIT`], taking the
/// capture's records as they come; a paused durability call ends the wait
/// (its writer waits for this batch, and its records follow every write
/// it made: the bench's 4 KiB write + fsync woke the tracker with its write
/// and then waited out the rest of the 2 ms).
fn gather(feed: Option<&CaptureFeed>, st: &mut TrackState) {
    let Some(feed) = feed else {
        std::thread::sleep(BATCH_WAIT);
        return;
    };
    let deadline = Instant::now() + BATCH_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: feed.wake.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            ring_pollfd(feed),
        ];
        let timeout = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos().into(),
        };
        // SAFETY: valid pollfds, a valid timeout, no signal mask.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
        route_ready_ring(feed, &fds[1]);
        feed.wake.clear();
        if take_records(feed, st) {
            return;
        }
    }
}

/// A poll entry for the capture's ring: a tracker that finds it readable
/// routes it itself ([`route_ready_ring`]).
fn ring_pollfd(feed: &CaptureFeed) -> libc::pollfd {
    libc::pollfd {
        fd: feed.hub.ring_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Routes the capture's ring now if `polled` (its entry, after the poll)
/// found records: one thread less to wake before a paused writer's data
/// travels than when the hub's thread routes them.
fn route_ready_ring(feed: &CaptureFeed, polled: &libc::pollfd) {
    if polled.revents & libc::POLLIN != 0 {
        feed.hub.forward_now();
    }
}

/// Takes the capture's records queued for this tracker into `st`; whether
/// one is a paused durability call (its writer waits for this batch).
fn take_records(feed: &CaptureFeed, st: &mut TrackState) -> bool {
    let mut paused = false;
    while let Ok(record) = feed.records.try_recv() {
        let key = (record.st_dev, record.ino);
        match record.change {
            CaptureChange::Write { offset, len } => st
                .ranges
                .entry(key)
                .or_default()
                .push((offset, offset + len)),
            CaptureChange::Mapped { offset, len, path } => {
                let compare = len > MAPPED_SHIPPED;
                if !compare {
                    st.ranges
                        .entry(key)
                        .or_default()
                        .push((offset, offset + len));
                }
                st.mapped.push(Mapped { key, path, compare });
            }
            CaptureChange::Truncate { .. } | CaptureChange::Fallocate { .. } => {
                st.resized.insert(key);
            }
            CaptureChange::Sync { paused: true, .. } => {
                paused = true;
                st.syncs.push(Pause {
                    tid: record.tid,
                    seq: record.seq,
                });
            }
            CaptureChange::Sync { .. } | CaptureChange::TruncatePath { .. } => {}
        }
    }
    paused
}

/// What a path is now: `(dev, ino, nlink, regular file)`, `None` if gone.
type StatNow<'a> = &'a dyn Fn(&RelPath) -> Option<(u64, u64, u64, bool)>;

/// The files the journal marks for `ops` (`DirtySet::linked`): its entries
/// are per name, so a file changed while it had other names must be
/// compared under every name it has at the resynchronisation. Marked: a
/// file written while it had several names, or through a name gone or
/// replaced since (which may have been one of several), and a file of
/// several names to be compared whole (mmap stores, a resize).
fn several_names(ops: &[Op], stat: StatNow<'_>) -> Vec<(u64, u64)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Ranges(path, key, _) => match stat(path) {
                Some((dev, ino, 1, _)) if (dev, ino) == *key => None,
                _ => Some(*key),
            },
            Op::Entry(path) | Op::New(path) => match stat(path) {
                Some((dev, ino, nlink, true)) if nlink > 1 => Some((dev, ino)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// How many batches the ranges of a file no path is known for wait for the
/// event that names it.
const UNNAMED_BATCHES: u32 = 20;

/// Where a tracker's ops go.
struct Sinks<'a> {
    target: &'a Mutex<Option<mpsc::Sender<Op>>>,
    /// Barriers asked for, and the wake-up that says so.
    flushes: &'a Mutex<Vec<u64>>,
    flush_wake: &'a Wake,
    journal: &'a Mutex<Journal>,
}

/// A file range an msync made durable through a mapping
/// (`CaptureChange::Mapped`), as the tracker keeps it until its batch.
struct Mapped {
    key: (u64, u64),
    /// The file's path in the caller's view.
    path: PathBuf,
    /// Too long to ship: the file is compared by checksums instead.
    compare: bool,
}

/// What the tracker remembers between batches.
#[derive(Default)]
struct TrackState {
    /// Paths whose data changed (or that appeared), in order.
    pending: Vec<RelPath>,
    /// Paths that appeared in this batch: they travel whole.
    created: HashSet<RelPath>,
    /// Modified paths whose ranges have not arrived yet (one batch of grace).
    deferred: Vec<RelPath>,
    graced: HashSet<RelPath>,
    /// Captured ranges per file, not yet shipped.
    ranges: HashMap<(u64, u64), Vec<(u64, u64)>>,
    /// Files with captured ranges and no known path: for how many batches.
    unnamed: HashMap<(u64, u64), u32>,
    /// Files an msync made durable through a mapping, with the path the
    /// caller's mapping gives: the name of a file no event named yet
    /// ([`TrackState::name_mapped`]).
    mapped: Vec<Mapped>,
    /// Files whose size changed (truncate, fallocate): they travel whole.
    resized: HashSet<(u64, u64)>,
    /// The path last seen for each captured file.
    paths: HashMap<(u64, u64), RelPath>,
    /// The mtime of each file when its change was last queued: a close
    /// after writes the capture could not see (mmap) finds a newer one.
    queued_mtime: HashMap<(u64, u64), i128>,
    /// Threads paused by a durability call, to release after the next barrier.
    syncs: Vec<Pause>,
}

/// A thread paused by a durability call: its id, and the capture's number
/// of the sync record that paused it. A release names both, so that a late
/// one never resumes a later pause of the same thread
/// ([`crate::ebpf::capture::WriteCapture::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub tid: u32,
    pub seq: u64,
}

impl TrackState {
    /// Names the files msyncs made durable through mappings that no event
    /// named yet, from the path of the caller's mapping when it lies below
    /// one of `dirs` (the caller sees the daemon's mounts) and still names
    /// the same file; others stay unnamed, as before any msync. A file
    /// whose range was too long to ship ([`MAPPED_SHIPPED`]) becomes a
    /// pending path compared by checksums (as a resized one is); call it
    /// before the pending paths are read.
    fn name_mapped(&mut self, dirs: &[PathBuf]) {
        for Mapped { key, path, compare } in std::mem::take(&mut self.mapped) {
            let name = match self.paths.entry(key) {
                Entry::Occupied(known) => known.get().clone(),
                Entry::Vacant(unknown) => {
                    let Ok(meta) = std::fs::symlink_metadata(&path) else {
                        continue;
                    };
                    if (meta.dev(), meta.ino()) != key {
                        continue;
                    }
                    let named = dirs
                        .iter()
                        .enumerate()
                        .find_map(|(i, base)| RelPath::below(u8::try_from(i).ok()?, base, &path));
                    let Some(rel) = named else {
                        continue;
                    };
                    unknown.insert(rel).clone()
                }
            };
            if compare {
                self.resized.insert(key);
                if !self.pending.contains(&name) {
                    self.pending.push(name);
                }
            }
        }
    }

    /// Queues the ranges of files no event named in this batch (coalesced
    /// events) under the path last seen for each. Those of a file no path
    /// is known for yet were captured before the event that names it (a
    /// tracker just started, a late inotify read): kept for that event for
    /// up to [`UNNAMED_BATCHES`] batches, or ranges that come with it would
    /// travel without them. (Dropped after that: the file's next event has
    /// it compared by checksums.)
    fn ship_unnamed_ranges(&mut self, ops: &mut Vec<Op>) {
        let mut unnamed = HashMap::new();
        for (key, ranges) in std::mem::take(&mut self.ranges) {
            if let Some(path) = self.paths.get(&key) {
                self.unnamed.remove(&key);
                ops.push(Op::Ranges(path.clone(), key, ranges));
                continue;
            }
            let batches = self.unnamed.entry(key).or_insert(0);
            *batches += 1;
            if *batches <= UNNAMED_BATCHES {
                unnamed.insert(key, ranges);
            } else {
                self.unnamed.remove(&key);
            }
        }
        self.ranges = unnamed;
    }

    /// Follows the rename of `from` to `to` in what the tracker remembers;
    /// `at_to`: what is at `to` now (its inode, whether a directory), `None`
    /// if it is gone again (renamed once more, removed).
    ///
    /// Ranges that come without an event name their file by the path last
    /// seen for it, which must follow every rename: a stale one reads
    /// nothing (the file is not there) and those bytes never travel. So a
    /// file found at `to` takes that name whatever name it had; a directory
    /// moves the names below it; and an entry gone again (two renames in
    /// one batch) moves every name below `from`, so that the next rename's
    /// event finds it under `to`.
    fn follow_rename(&mut self, from: &RelPath, to: &RelPath, at_to: Option<((u64, u64), bool)>) {
        let created: Vec<RelPath> = self.created.drain().collect();
        for p in created {
            self.created.insert(p.moved(from, to).unwrap_or(p));
        }
        for p in self.pending.iter_mut().chain(self.deferred.iter_mut()) {
            if let Some(new) = p.moved(from, to) {
                *p = new;
            }
        }
        match at_to {
            Some((key, false)) => {
                if let Some(path) = self.paths.get_mut(&key) {
                    *path = to.clone();
                }
            }
            Some((_, true)) | None => {
                for path in self.paths.values_mut() {
                    if let Some(new) = path.moved(from, to) {
                        *path = new;
                    }
                }
            }
        }
    }
}

fn mtime(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn track(
    setup: Setup,
    mut watcher: Watcher,
    feed: Option<CaptureFeed>,
    stop: &AtomicBool,
    sinks: Sinks<'_>,
    st: &mut TrackState,
    progress: &Progress,
) {
    let captured = feed.is_some();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = vec![
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&watcher)),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sinks.flush_wake.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(feed) = &feed {
            fds.push(libc::pollfd {
                fd: feed.wake.raw(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(ring_pollfd(feed));
        }
        let timeout = if st.deferred.is_empty() { 100 } else { 5 };
        // SAFETY: valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            continue;
        }
        if let (Some(feed), Some(ring)) = (&feed, fds.get(3)) {
            route_ready_ring(feed, ring);
        }
        // Barriers asked for before this batch's reads follow every write
        // made before they were asked for: the ring is routed now, and
        // inotify queued its events when the writes happened.
        sinks.flush_wake.clear();
        let flushing = std::mem::take(&mut *sinks.flushes.lock().expect("tracker flushes"));
        if let (false, Some(feed)) = (flushing.is_empty(), &feed) {
            feed.hub.forward_now();
        }
        // A durability call waits for this batch: it goes at once. Else
        // let a burst of events arrive, so that a write and the rename
        // that follows it travel as one batch.
        let mut urgent = !flushing.is_empty();
        if let Some(feed) = &feed {
            feed.wake.clear();
            urgent |= take_records(feed, st);
        }
        if !urgent {
            gather(feed.as_ref(), st);
        }
        let mut overflow = feed.as_ref().is_some_and(|feed| feed.wake.overflowed());
        // Read after the records: the events of the writes they hold are
        // queued (inotify queues an event when its change happens).
        let changes = match watcher.read() {
            Ok(changes) => changes,
            Err(error) => {
                warn!(module = %setup.module, %error, "reading inotify failed");
                // The barriers wait for the next batch that reads it.
                let mut flushes = sinks.flushes.lock().expect("tracker flushes");
                flushes.splice(0..0, flushing);
                continue;
            }
        };
        let mut ops = Vec::new();
        for change in changes {
            match change {
                Change::Created { path, dir } => {
                    if setup.excluded(&path) {
                        continue;
                    }
                    if dir {
                        if let Err(error) = watcher.watch_tree(&path) {
                            warn!(module = %setup.module, %error, "watching a new directory failed");
                        }
                        ops.push(Op::Tree(path));
                    } else {
                        st.created.insert(path.clone());
                        if !st.pending.contains(&path) {
                            st.pending.push(path);
                        }
                    }
                }
                Change::Removed { path } => {
                    st.pending.retain(|p| !p.starts_with(&path));
                    st.deferred.retain(|p| !p.starts_with(&path));
                    if !setup.excluded(&path) {
                        ops.push(Op::Remove(path));
                    }
                }
                Change::Renamed { from, to } => {
                    let at_to = std::fs::symlink_metadata(setup.absolute(&to))
                        .ok()
                        .map(|m| ((m.dev(), m.ino()), m.is_dir()));
                    st.follow_rename(&from, &to, at_to);
                    match (setup.excluded(&from), setup.excluded(&to)) {
                        (false, false) => ops.push(Op::Rename(from, to)),
                        (false, true) => ops.push(Op::Remove(from)),
                        (true, false) => ops.push(Op::Tree(to)),
                        (true, true) => {}
                    }
                }
                Change::Attrib { path } => {
                    if !setup.excluded(&path) {
                        ops.push(Op::Meta(path));
                    }
                }
                Change::Modified { path } | Change::ClosedWrite { path } => {
                    if !setup.excluded(&path) && !st.pending.contains(&path) {
                        st.pending.push(path);
                    }
                }
                Change::Overflow => overflow = true,
            }
        }
        if overflow {
            warn!(module = %setup.module, "events were lost (inotify or capture queue full): comparing the whole tree by checksums");
            ops.push(Op::Resync {
                full: true,
                since: None,
            });
        }
        // Data: exact ranges where the capture saw every write, the whole
        // file (or its checksums) otherwise.
        st.name_mapped(&setup.dirs);
        let mut pending: Vec<RelPath> = st.deferred.drain(..).collect();
        for p in st.pending.drain(..) {
            if !pending.contains(&p) {
                pending.push(p);
            }
        }
        // What each pending path is now, for `several_names` too.
        let mut seen = HashMap::new();
        for path in pending {
            let Ok(m) = std::fs::symlink_metadata(setup.absolute(&path)) else {
                // Gone: the sender tracks where it went.
                ops.push(Op::Entry(path));
                continue;
            };
            let key = (m.dev(), m.ino());
            seen.insert(path.clone(), (m.dev(), m.ino(), m.nlink(), m.is_file()));
            let new = st.created.contains(&path);
            let linked = st
                .paths
                .get(&key)
                .filter(|other| **other != path && m.is_file() && m.nlink() > 1)
                .cloned();
            if let (true, Some(existing)) = (new, linked) {
                // A new name of a file already replicated: a hard link,
                // then what was written to the inode since it travelled
                // (the ranges apply to the inode both names share).
                ops.push(Op::Link(path.clone(), existing));
                if st.resized.remove(&key) {
                    st.ranges.remove(&key);
                    ops.push(Op::Entry(path));
                } else if let Some(ranges) = st.ranges.remove(&key) {
                    ops.push(Op::Ranges(path, key, ranges));
                }
            } else if !captured || new || !m.is_file() || st.resized.remove(&key) {
                if m.is_file() {
                    st.paths.insert(key, path.clone());
                }
                st.ranges.remove(&key);
                st.queued_mtime.insert(key, mtime(&m));
                ops.push(if new && m.is_file() {
                    Op::New(path)
                } else {
                    Op::Entry(path)
                });
            } else if let Some(ranges) = st.ranges.remove(&key) {
                st.graced.remove(&path);
                st.paths.insert(key, path.clone());
                st.queued_mtime.insert(key, mtime(&m));
                ops.push(Op::Ranges(path, key, ranges));
            } else if st.queued_mtime.get(&key) == Some(&mtime(&m)) {
                // Nothing new since the last queued change (a close, or a
                // modify whose ranges already travelled).
            } else if st.graced.remove(&path) || !st.syncs.is_empty() || !flushing.is_empty() {
                // No range came (mmap stores, io_uring, a lost record):
                // compare the file by checksums.
                st.paths.insert(key, path.clone());
                st.queued_mtime.insert(key, mtime(&m));
                ops.push(Op::Entry(path));
            } else {
                // Its ranges may still be on their way: one batch of grace.
                st.graced.insert(path.clone());
                st.deferred.push(path);
            }
        }
        st.created.clear();
        st.ship_unnamed_ranges(&mut ops);
        if !st.syncs.is_empty() {
            ops.push(Op::Release(std::mem::take(&mut st.syncs)));
        }
        if st.paths.len() > 100_000 {
            st.paths.clear();
            st.unnamed.clear();
            st.graced.clear();
            st.queued_mtime.clear();
        }
        // Read before the locks; a path the loop above read is not read again.
        let marks = several_names(&ops, &|path| match seen.get(path) {
            Some(known) => Some(*known),
            None => std::fs::symlink_metadata(setup.absolute(path))
                .ok()
                .map(|m| (m.dev(), m.ino(), m.nlink(), m.is_file())),
        });
        // The journal and the session see every op in the same critical
        // section: an op is either in the journal's segment that a sync
        // point's barrier follows, or in a later one.
        let target = sinks.target.lock().expect("tracker target");
        let mut journal = sinks.journal.lock().expect("journal");
        for op in &ops {
            journal_op(&mut journal, op);
        }
        for file in marks {
            journal.linked(file);
        }
        match target.as_ref() {
            Some(tx) => {
                for op in ops {
                    if let Op::Ranges(_, _, ranges) = &op {
                        progress.backlog.fetch_add(span(ranges), Ordering::Relaxed);
                    }
                    let _ = tx.send(op);
                }
                for seq in flushing {
                    let _ = tx.send(Op::Barrier(seq));
                }
            }
            None => {
                // No session can acknowledge a durability call: let it go
                // if the driver allows it (the hub holds it otherwise).
                for op in ops {
                    if let (Op::Release(pauses), Some(feed)) = (op, &feed) {
                        for pause in pauses {
                            feed.hub.release_unacknowledged(pause.tid, pause.seq);
                        }
                    }
                }
            }
        }
        drop(target);
        // Written once the session has the batch: the journal's
        // `fdatasync` (every `FLUSH_EVERY`) does not hold up a paused
        // writer's data. Still under the journal's lock, so a sync point's
        // mark comes before or after this batch's records, never between.
        if let Err(error) = journal.flush(false) {
            warn!(module = %setup.module, %error, "cannot write the dirty-range journal");
        }
        drop(journal);
    }
}

// ---------------------------------------------------------------- primary

/// What the primary knows of its data when a secondary joins.
#[derive(Clone, Copy, Debug)]
pub struct PrimaryData {
    /// The secondary's generation and the moment it was last known in sync.
    pub sync_point: Option<(u64, SystemTime)>,
    /// The same sync point exactly as stored (generation, ns since the
    /// epoch): the journal is trusted only if it starts there.
    pub sync_point_ns: Option<(u64, u64)>,
    /// The primary's own generation.
    pub generation: u64,
}

/// The primary's end of a session.
pub struct PrimarySession {
    ops: mpsc::Sender<Op>,
    /// The barriers acknowledged lately (each is acknowledged once; they
    /// need not come back in the order numbered: see `Tracker::barrier_after_writes`).
    acked: Arc<(Mutex<VecDeque<u64>>, Condvar)>,
    seqs: Arc<AtomicU64>,
    stream: TcpStream,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub peer: String,
}

impl PrimarySession {
    /// Runs a session on `stream`, a connection the primary accepted:
    /// handshake, `Join`, then resync and live changes until it ends.
    pub fn start(
        mut stream: TcpStream,
        setup: &Setup,
        tracker: &Tracker,
        data: PrimaryData,
        progress: Arc<Progress>,
        hub: Option<Arc<CaptureHub>>,
        events: Events,
    ) -> Result<Self, ChannelError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let hello = Hello::new(Role::Primary, setup.encrypt, &setup.module, &setup.node);
        let (sealer, opener, peer) = handshake(&mut stream, &hello, &setup.key)?;
        let mut reader = MessageReader::new(BufReader::new(stream.try_clone()?), opener);
        let PrimaryData {
            sync_point,
            sync_point_ns,
            generation: primary_generation,
        } = data;
        let (generation, state) = match reader.recv()? {
            Some(Message::Join { generation, state }) => (generation, state),
            other => {
                return Err(ChannelError::Io(io::Error::other(format!(
                    "the secondary did not start with Join: {other:?}"
                ))))
            }
        };
        let diverged = match reader.recv()? {
            Some(Message::Diverged { paths }) => paths,
            other => {
                return Err(ChannelError::Io(io::Error::other(format!(
                    "the secondary did not follow Join with Diverged: {other:?}"
                ))))
            }
        };
        stream.set_read_timeout(None)?;
        // Incremental only when the secondary holds the generation it was
        // last in sync with, unmodified (a copy) or modified only where it
        // says (an old primary's journal).
        let copy = state == 0 || state == 1; // Partial or Copy
        let since = match sync_point {
            Some((g, at)) if (copy || diverged.is_some()) && g == generation => Some(
                at.checked_sub(SYNC_POINT_MARGIN)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ),
            _ => None,
        };
        let _ = events.send(SessionEvent::Joined {
            peer: peer.node.clone(),
            generation,
        });
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(Op::Resync {
            full: since.is_none(),
            since,
        });
        let plan = {
            let mut target = tracker.target.lock().expect("tracker target");
            *target = Some(tx.clone());
            // Under the target's lock: every op is in this snapshot or
            // reaches the session.
            let journal = tracker.journal.lock().expect("journal").snapshot();
            let trusted = journal.filter(|(g, at_ns, set)| {
                since.is_some() && sync_point_ns == Some((*g, *at_ns)) && !set.untrusted
            });
            Plan::new(trusted.map(|(_, _, set)| set), diverged.as_deref(), copy)
        };
        info!(
            module = %setup.module,
            peer = %peer.node,
            generation,
            incremental = since.is_some(),
            copy,
            journaled = plan.ranges.len(),
            compared = plan.forced.len(),
            linked = plan.linked.len(),
            "secondary joined"
        );
        let acked = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
        let seqs = Arc::new(AtomicU64::new(1));
        let releases: Releases = Arc::default();
        let writer = MessageWriter::new(
            BufWriter::with_capacity(256 * 1024, stream.try_clone()?),
            sealer,
        );
        let sender = {
            let setup = setup.clone();
            let events = events.clone();
            let seqs = Arc::clone(&seqs);
            let releases = Arc::clone(&releases);
            let progress = Arc::clone(&progress);
            let shutdown = stream.try_clone()?;
            let hub = hub.clone();
            std::thread::Builder::new()
                .name(format!("halo-send-{}", setup.module))
                .spawn(move || {
                    let mut sender = Sender {
                        setup,
                        writer,
                        progress,
                        walk: VecDeque::new(),
                        since: None,
                        plan,
                        links: HashMap::new(),
                        vanished: HashSet::new(),
                        seqs,
                        releases,
                        awaiting: VecDeque::new(),
                        compared: 0,
                        live_awaiting: VecDeque::new(),
                        walking: false,
                        held: VecDeque::new(),
                        held_releases: VecDeque::new(),
                        read_buf: Vec::new(),
                        fresh_peer: generation == 0,
                        walked: false,
                        end_pending: false,
                        end_asked: false,
                        resync_generation: primary_generation,
                        events: events.clone(),
                    };
                    let reason = match sender.run(rx) {
                        Ok(()) => "stopped".to_owned(),
                        Err(e) => format!("sending failed: {e}"),
                    };
                    let _ = shutdown.shutdown(Shutdown::Both);
                    // Releases still waiting for their comparisons: as the
                    // acknowledgement reader does with those sent, once the
                    // driver allows it (the hub holds them otherwise).
                    if let Some(hub) = &hub {
                        for (pauses, _) in sender.held_releases.drain(..) {
                            for pause in pauses {
                                hub.release_unacknowledged(pause.tid, pause.seq);
                            }
                        }
                    }
                    let _ = events.send(SessionEvent::Ended { reason });
                })?
        };
        let receiver = {
            let tx = tx.clone();
            let progress = Arc::clone(&progress);
            let acked = Arc::clone(&acked);
            let releases = Arc::clone(&releases);
            let module = setup.module.clone();
            let shutdown = stream.try_clone()?;
            std::thread::Builder::new()
                .name(format!("halo-acks-{module}"))
                .spawn(move || {
                    let reason = loop {
                        match reader.recv() {
                            Ok(Some(Message::Need { path, blocks })) => {
                                let _ = tx.send(Op::Blocks(path, blocks));
                            }
                            Ok(Some(Message::Missing { path })) => {
                                let _ = tx.send(Op::Entry(path));
                            }
                            Ok(Some(Message::Ack { seq })) => {
                                release_upto(&releases, hub.as_deref(), seq, true);
                                let (lock, cv) = &*acked;
                                let mut acked = lock.lock().expect("acks");
                                if acked.len() >= MAX_ACKS_KEPT {
                                    acked.pop_front();
                                }
                                acked.push_back(seq);
                                drop(acked);
                                cv.notify_all();
                                let _ = events.send(SessionEvent::Drained { seq });
                            }
                            Ok(Some(Message::ResyncDone { generation })) => {
                                info!(module = %module, generation, "the secondary is in sync");
                                let bytes_sent = progress.bytes_sent.load(Ordering::Relaxed);
                                let _ = events.send(SessionEvent::PeerInSync {
                                    generation,
                                    bytes_sent,
                                });
                            }
                            Ok(Some(Message::Refused { reason })) => {
                                break format!("the secondary refused a change: {reason}")
                            }
                            Ok(Some(other)) => break format!("unexpected message {other:?}"),
                            Ok(None) => break "the secondary closed the connection".to_owned(),
                            Err(e) => break e.to_string(),
                        }
                    };
                    let _ = shutdown.shutdown(Shutdown::Both);
                    // Never leave an application paused for a gone secondary,
                    // once the driver allows it (the hub holds it otherwise).
                    release_upto(&releases, hub.as_deref(), u64::MAX, false);
                    let _ = tx.send(Op::Stop);
                    let (_, cv) = &*acked;
                    cv.notify_all();
                    debug!(module = %module, %reason, "acknowledgement reader ended");
                })?
        };
        Ok(PrimarySession {
            ops: tx,
            acked,
            seqs,
            stream,
            threads: vec![sender, receiver],
            peer: peer.node,
        })
    }

    /// Queues a barrier; `SessionEvent::Drained { seq }` follows once the
    /// secondary applied everything before it.
    pub fn barrier(&mut self) -> u64 {
        let seq = self.seqs.fetch_add(1, Ordering::Relaxed);
        let _ = self.ops.send(Op::Barrier(seq));
        seq
    }

    /// Queues a barrier behind every write made before this call, through
    /// `tracker` ([`Tracker::barrier_after_writes`]); straight to the
    /// session when there is no tracker.
    pub fn barrier_after_writes(&mut self, tracker: Option<&Tracker>) -> u64 {
        match tracker {
            Some(tracker) => {
                let seq = self.seqs.fetch_add(1, Ordering::Relaxed);
                tracker.barrier_after_writes(seq);
                seq
            }
            None => self.barrier(),
        }
    }

    /// Queues a barrier and waits for its acknowledgement, at most `timeout`.
    pub fn flush(&mut self, timeout: Duration) -> bool {
        let seq = self.barrier();
        self.wait_acked(seq, timeout)
    }

    /// Waits for the acknowledgement of barrier `seq`, at most `timeout`.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> bool {
        let (lock, cv) = &*self.acked;
        let deadline = Instant::now() + timeout;
        let mut acked = lock.lock().expect("acks");
        while !acked.contains(&seq) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            acked = cv.wait_timeout(acked, left).expect("acks").0;
            if self.threads.iter().any(|t| t.is_finished()) && !acked.contains(&seq) {
                return false;
            }
        }
        true
    }

    /// Lets the resynchronisation to `generation` end, once the driver has
    /// recorded that the secondary may hold a copy (after
    /// `SessionEvent::ResyncSent`).
    pub fn end_resync(&self, generation: u64) {
        let _ = self.ops.send(Op::EndResync(generation));
    }

    /// Hands the role over: flushes everything queued, tells the secondary
    /// the session ends on purpose, and closes it.
    pub fn bye(mut self) {
        let _ = self.ops.send(Op::Bye);
        // The sender is the first thread: it ends after sending `Bye`.
        if !self.threads.is_empty() {
            let _ = self.threads.remove(0).join();
        }
    }

    /// Whether both threads still run.
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }
}

impl Drop for PrimarySession {
    fn drop(&mut self) {
        let _ = self.ops.send(Op::Stop);
        let _ = self.stream.shutdown(Shutdown::Both);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// How a journaled resynchronisation treats paths, whatever their ctime.
#[derive(Default)]
struct Plan {
    /// Files whose journaled ranges travel instead of their checksums.
    ranges: HashMap<RelPath, Vec<(u64, u64)>>,
    /// Paths compared by checksums, with everything below them.
    forced: HashSet<RelPath>,
    /// Directories whose listing travels.
    relist: HashSet<RelPath>,
    /// Files whose ranges travel are then compared by checksums too.
    verify_ranges: bool,
    /// Files whose every name compares by checksums (DirtySet::linked).
    linked: HashSet<(u64, u64)>,
}

impl Plan {
    /// From the primary's trusted journal and the secondary's divergence.
    /// `copy`: the secondary holds an unmodified copy of the sync point's
    /// data (it was a secondary then). Only then do the journaled ranges
    /// describe every byte that differs. A former primary's files may also
    /// hold its own writes after the sync point, which its divergence names
    /// only as far as that node could see them (its capture, its journal's
    /// last flush): so a file whose ranges travel to it is then also
    /// compared by checksums, once the ranges are applied (only blocks that
    /// still differ travel). The chaos campaign found a 4 KiB block of a
    /// former primary's own write left in a file whose journaled ranges
    /// travelled alone.
    fn new(
        journal: Option<super::journal::DirtySet>,
        diverged: Option<&[RelPath]>,
        copy: bool,
    ) -> Plan {
        let mut plan = Plan {
            verify_ranges: !copy,
            ..Plan::default()
        };
        if let Some(set) = journal {
            plan.forced.extend(set.trees);
            plan.linked.extend(set.linked);
            for (path, dirt) in set.files {
                match dirt {
                    Dirt::Ranges(ranges) => {
                        plan.ranges.insert(path, ranges);
                    }
                    Dirt::Compare => {
                        plan.forced.insert(path);
                    }
                }
            }
        }
        for path in diverged.unwrap_or_default() {
            if let Some((parent, _)) = path.split_last() {
                plan.relist.insert(parent);
            }
            plan.forced.insert(path.clone());
        }
        plan
    }

    /// Another entry took the name `path`: the journaled ranges of what was
    /// there, or below, do not describe it.
    fn replaced(&mut self, path: &RelPath) {
        if !self.ranges.is_empty() {
            self.ranges.retain(|p, _| !p.starts_with(path));
        }
    }

    /// Whether `path` or a directory above it must be compared.
    fn forced(&self, path: &RelPath) -> bool {
        if self.forced.is_empty() {
            return false;
        }
        let mut at = path.clone();
        loop {
            if self.forced.contains(&at) {
                return true;
            }
            match at.split_last() {
                Some((parent, _)) => at = parent,
                None => return false,
            }
        }
    }
}

/// Detaches the tracker from a session that ended.
pub fn detach(tracker: &Tracker) {
    *tracker.target.lock().expect("tracker target") = None;
}

/// The name of the secondary's entry `now` once it applied `message`;
/// `None` if the message removed it or put another entry in its place.
fn name_after(now: RelPath, message: &Message) -> Option<RelPath> {
    match message {
        Message::Remove { path } if now.starts_with(path) => None,
        Message::Link { path, .. }
        | Message::Symlink { path, .. }
        | Message::Mkdir { path, .. }
            if now == *path =>
        {
            None
        }
        Message::Rename { from, to } if from != to => {
            if now.starts_with(to) {
                None
            } else {
                Some(now.moved(from, to).unwrap_or(now))
            }
        }
        Message::Listing { dir, names } => match now.split_last() {
            Some((parent, name)) if parent == *dir && !names.iter().any(|n| n == name) => None,
            _ => Some(now),
        },
        _ => Some(now),
    }
}

/// Whether `message` can move or take away a name on the secondary.
fn renames_or_removes(message: &Message) -> bool {
    matches!(
        message,
        Message::Remove { .. }
            | Message::Rename { .. }
            | Message::Link { .. }
            | Message::Symlink { .. }
            | Message::Mkdir { .. }
            | Message::Listing { .. }
    )
}

/// How [`Sender::ship_entry_as`] sends a file's content.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ship {
    /// Whole up to [`SMALL_FILE`], by checksums above.
    SmallWhole,
    /// Whole at any size: the secondary has nothing of it.
    Whole,
    /// By block checksums at any size (empty files whole).
    Sums,
}

/// A file whose checksums travelled and whose `Need` has not been served.
/// The secondary computes the `Need` when it applies the checksums, but the
/// blocks reach it only after every change sent meanwhile: a rename sent in
/// between has moved the file it compared, and the blocks must go there.
struct Awaiting {
    /// The name the checksums travelled under, which the `Need` repeats.
    sent_as: RelPath,
    /// Where the secondary has that file once the changes sent since apply;
    /// `None` once they removed or replaced it.
    now: Option<RelPath>,
    /// The file (device, inode) whose checksums travelled.
    inode: (u64, u64),
    /// Its place among every comparison of the session ([`Sender::compared`]).
    number: u64,
}

struct Sender {
    /// Where file bytes are read before they are sealed into a frame, kept
    /// from one range to the next (grown, never zeroed again).
    read_buf: Vec<u8>,
    setup: Setup,
    writer: MessageWriter<BufWriter<TcpStream>>,
    progress: Arc<Progress>,
    /// Directories the resynchronisation walk has still to visit.
    walk: VecDeque<RelPath>,
    since: Option<SystemTime>,
    /// What the journals say about the resynchronisation's files.
    plan: Plan,
    /// Files with several names shipped in this session: (dev, ino) → the
    /// name the secondary has that file under, as of the messages sent
    /// (kept in step by [`Sender::follow`]), for the next name to link to.
    links: HashMap<(u64, u64), RelPath>,
    /// The secondary joined without data (generation 0): the first copy
    /// sends files whole. A later walk of the session (an overflow's full
    /// comparison) compares, since the peer holds data by then.
    fresh_peer: bool,
    /// A resynchronisation walk has started in this session.
    walked: bool,
    /// Barrier numbers, shared with the session's owner.
    seqs: Arc<AtomicU64>,
    /// Files whose `Sums` went and whose `Need` has not been served yet, in
    /// the order sent (the order the secondary answers in).
    awaiting: VecDeque<Awaiting>,
    /// How many comparisons the session has sent (`Awaiting::number`).
    compared: u64,
    /// The numbers of the awaited comparisons that a live change sent (not
    /// the resynchronisation walk), in order.
    live_awaiting: VecDeque<u64>,
    /// The resynchronisation walk is sending: its comparisons are not live.
    walking: bool,
    /// The walk is over: `ResyncSent` goes to the driver once nothing is
    /// outstanding.
    end_pending: bool,
    /// `ResyncSent` went: `ResyncEnd` goes on the driver's `EndResync`.
    end_asked: bool,
    /// Barriers waiting, in order, for the walk to end and every `Need` to
    /// be served: their acknowledgement must mean that the secondary holds
    /// everything changed before them, and the blocks a comparison asks
    /// for travel after the barrier that follows the checksums. (A paused
    /// writer's release waits only for live comparisons: `held_releases`.)
    held: VecDeque<u64>,
    /// Paused writers' releases waiting for the live comparisons sent
    /// before them ([`Sender::compared`] then): a change that travelled as
    /// checksums (an mmap store, a resize) is on the secondary only once
    /// its differing blocks are. The walk's comparisons do not hold them:
    /// a writer is not paused for a whole resynchronisation.
    held_releases: VecDeque<(Vec<Pause>, u64)>,
    /// Paused threads to release at each barrier's acknowledgement.
    releases: Releases,
    /// Paths that were gone when their change was shipped: a rename that
    /// follows in the queue says where they went, and they travel then.
    vanished: HashSet<RelPath>,
    resync_generation: u64,
    /// Where `ResyncSent` goes.
    events: Events,
}

impl Sender {
    fn send(&mut self, message: &Message) -> io::Result<()> {
        trace!(module = %self.setup.module, message = %describe(message), "sending");
        self.follow(message);
        self.writer.send(message)?;
        self.progress
            .bytes_sent
            .store(self.writer.sent, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the names of the awaited files in step with what `message`
    /// does to the secondary's names.
    fn follow(&mut self, message: &Message) {
        for awaited in self.awaiting.iter_mut() {
            awaited.now = awaited.now.take().and_then(|now| name_after(now, message));
        }
        if !self.links.is_empty() && renames_or_removes(message) {
            self.links
                .retain(|_, name| match name_after(name.clone(), message) {
                    Some(now) => {
                        *name = now;
                        true
                    }
                    None => false,
                });
        }
    }

    fn run(&mut self, ops: mpsc::Receiver<Op>) -> io::Result<()> {
        loop {
            // Live changes first; the walk advances when none is queued.
            let op = if self.walk.is_empty() {
                // Flushed only once nothing more is queued: a durable
                // writer's data and its release's barrier leave in one
                // write, not two.
                match ops.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::TryRecvError::Empty) => {
                        self.writer.flush()?;
                        match ops.recv() {
                            Ok(op) => op,
                            Err(_) => return Ok(()),
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.writer.flush()?;
                        return Ok(());
                    }
                }
            } else {
                match ops.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::TryRecvError::Empty) => {
                        self.walking(Sender::walk_step)?;
                        self.send_held()?;
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            };
            if !self.handle(op)? {
                self.writer.flush()?;
                return Ok(());
            }
            self.send_held()?;
        }
    }

    /// Whether everything queued so far has gone whole: no walk under way,
    /// no comparison waiting for its blocks.
    fn settled(&self) -> bool {
        self.walk.is_empty() && self.awaiting.is_empty()
    }

    /// Whether a release queued when `compared` comparisons had been sent
    /// may go: every live one among them is served.
    fn release_ready(&self, compared: u64) -> bool {
        self.live_awaiting.front().is_none_or(|n| *n >= compared)
    }

    /// Sends a release's barrier, numbered now: its acknowledgement lets
    /// the threads go on. (Numbered when sent, so that a release's number
    /// is above every barrier's sent before it: `release_upto` relies on it.)
    fn send_release(&mut self, pauses: Vec<Pause>) -> io::Result<()> {
        let seq = self.seqs.fetch_add(1, Ordering::Relaxed);
        self.releases.lock().expect("releases").push((seq, pauses));
        self.send(&Message::Barrier { seq })
    }

    /// Sends the releases whose comparisons are served, and the barriers
    /// held until the sender settled.
    fn send_held(&mut self) -> io::Result<()> {
        let mut sent = false;
        while let Some((_, compared)) = self.held_releases.front() {
            if !self.release_ready(*compared) {
                break;
            }
            let (pauses, _) = self.held_releases.pop_front().expect("a held release");
            self.send_release(pauses)?;
            sent = true;
        }
        if !self.held.is_empty() && self.settled() {
            while let Some(seq) = self.held.pop_front() {
                self.send(&Message::Barrier { seq })?;
            }
            sent = true;
        }
        if sent {
            self.writer.flush()?;
        }
        Ok(())
    }

    /// Runs `step` as part of the resynchronisation walk.
    fn walking<T>(&mut self, step: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        self.walking = true;
        let result = step(self);
        self.walking = false;
        result
    }

    fn handle(&mut self, op: Op) -> io::Result<bool> {
        trace!(module = %self.setup.module, ?op, "sender op");
        match op {
            Op::Stop => return Ok(false),
            Op::Resync { full, since } => {
                // An end asked for an earlier walk no longer holds.
                self.end_asked = false;
                self.fresh_peer &= !self.walked;
                self.walked = true;
                self.progress.walk_complete.store(false, Ordering::Relaxed);
                for counter in [
                    &self.progress.files_done,
                    &self.progress.files_total,
                    &self.progress.bytes_done,
                    &self.progress.bytes_total,
                ] {
                    counter.store(0, Ordering::Relaxed);
                }
                self.since = if full { None } else { since };
                self.links.clear();
                self.send(&Message::ResyncBegin { full })?;
                self.walk = (0..self.setup.dirs.len())
                    .map(|d| RelPath::root(d as u8))
                    .collect();
                for root in self.walk.clone() {
                    self.ship_dir(&root, true)?;
                }
            }
            Op::Barrier(seq) => {
                if self.held.is_empty() && self.settled() {
                    self.send(&Message::Barrier { seq })?;
                    self.writer.flush()?;
                } else {
                    self.held.push_back(seq);
                }
            }
            Op::Release(pauses) => {
                if self.held_releases.is_empty() && self.release_ready(self.compared) {
                    self.send_release(pauses)?;
                    self.writer.flush()?;
                } else {
                    self.held_releases.push_back((pauses, self.compared));
                }
            }
            Op::Tree(path) => {
                // A new (or moved-in) directory: everything in it, now.
                let mut stack = vec![path];
                while let Some(dir) = stack.pop() {
                    if !self.ship_dir(&dir, true)? {
                        continue;
                    }
                    for (child, is_dir) in self.children(&dir) {
                        if is_dir {
                            stack.push(child);
                        } else {
                            self.ship_entry(&child, None)?;
                        }
                    }
                }
            }
            Op::Entry(path) => self.ship_entry(&path, None)?,
            Op::New(path) => self.ship_entry_as(&path, None, Ship::Whole)?,
            Op::Remove(path) => {
                self.vanished.retain(|v| !v.starts_with(&path));
                self.send(&Message::Remove { path })?;
            }
            Op::Rename(from, to) => {
                self.send(&Message::Rename {
                    from: from.clone(),
                    to: to.clone(),
                })?;
                let moved: Vec<RelPath> = self
                    .vanished
                    .iter()
                    .filter(|v| v.starts_with(&from))
                    .cloned()
                    .collect();
                for old in moved {
                    self.vanished.remove(&old);
                    if let Some(new) = old.moved(&from, &to) {
                        self.ship_entry(&new, None)?;
                    }
                }
                if !self.walk.is_empty() {
                    self.walking(|sender| sender.walk_renamed(&from, &to))?;
                }
            }
            Op::Meta(path) => {
                if let Ok(m) = std::fs::symlink_metadata(self.setup.absolute(&path)) {
                    self.send(&Message::SetMeta {
                        path,
                        meta: meta_of(&m),
                    })?;
                }
            }
            Op::Blocks(path, blocks) => {
                // Answers come in the order the checksums went (one the
                // secondary could not answer is passed over).
                if let Some(at) = self.awaiting.iter().position(|a| a.sent_as == path) {
                    self.awaiting.drain(..at);
                    if let Some(awaited) = self.awaiting.pop_front() {
                        if let Some(now) = &awaited.now {
                            self.ship_blocks(now, awaited.inode, &blocks)?;
                        }
                        // Served (or passed over): the blocks are in the
                        // stream before any release sent from now on.
                        while self
                            .live_awaiting
                            .front()
                            .is_some_and(|n| *n <= awaited.number)
                        {
                            self.live_awaiting.pop_front();
                        }
                    }
                }
                self.maybe_end()?;
            }
            Op::EndResync(generation) => {
                if self.end_asked && generation == self.resync_generation {
                    self.end_asked = false;
                    self.send(&Message::ResyncEnd { generation })?;
                    self.writer.flush()?;
                }
            }
            Op::Bye => {
                self.send(&Message::Bye)?;
                self.writer.flush()?;
                return Ok(false);
            }
            Op::Ranges(path, inode, ranges) => self.ship_ranges(&path, inode, ranges)?,
            Op::Link(path, existing) => {
                let key = |p: &RelPath| {
                    std::fs::symlink_metadata(self.setup.absolute(p))
                        .ok()
                        .map(|m| (m.dev(), m.ino()))
                };
                match key(&path) {
                    Some(inode) if key(&existing) == Some(inode) => {
                        // The name this session shipped the file under, if
                        // any: the secondary may hold another, older copy
                        // under `existing` (one the resynchronisation walk
                        // has not reached yet), and one file must not
                        // become two there.
                        let existing = self
                            .links
                            .get(&inode)
                            .filter(|first| **first != path)
                            .cloned()
                            .unwrap_or(existing);
                        self.links.insert(inode, existing.clone());
                        self.send(&Message::Link { path, existing })?
                    }
                    // The other name went away (renamed, removed) since:
                    // the file travels under this name.
                    _ => self.ship_entry(&path, None)?,
                }
            }
        }
        Ok(true)
    }

    /// The entries of directory `dir` (not excluded), with whether each is a directory.
    fn children(&self, dir: &RelPath) -> Vec<(RelPath, bool)> {
        let Ok(entries) = std::fs::read_dir(self.setup.absolute(dir)) else {
            return Vec::new();
        };
        let mut out: Vec<(RelPath, bool)> = entries
            .flatten()
            .filter_map(|e| {
                let child = dir.join(e.file_name().as_bytes()).ok()?;
                if self.setup.excluded(&child) {
                    return None;
                }
                Some((child, e.file_type().ok()?.is_dir()))
            })
            .collect();
        out.sort();
        out
    }

    /// Sends a directory's metadata and, with `listing`, its complete list
    /// of names. False if it is gone.
    fn ship_dir(&mut self, path: &RelPath, listing: bool) -> io::Result<bool> {
        let Ok(m) = std::fs::symlink_metadata(self.setup.absolute(path)) else {
            self.vanish(path);
            return Ok(false);
        };
        if !m.is_dir() {
            self.ship_entry(path, None)?;
            return Ok(false);
        }
        self.send(&Message::Mkdir {
            path: path.clone(),
            meta: meta_of(&m),
        })?;
        if listing {
            let names = self
                .children(path)
                .into_iter()
                .filter_map(|(c, _)| c.split_last().map(|(_, n)| n.to_vec()))
                .collect();
            self.send(&Message::Listing {
                dir: path.clone(),
                names,
            })?;
        }
        Ok(true)
    }

    /// Remembers a path that was gone when shipped (bounded: beyond the
    /// bound, a checksum comparison of the whole tree repairs everything).
    fn vanish(&mut self, path: &RelPath) {
        if self.vanished.len() >= MAX_VANISHED {
            self.vanished.clear();
            if self.walk.is_empty() {
                let _ = self.handle(Op::Resync {
                    full: true,
                    since: None,
                });
            }
        }
        self.vanished.insert(path.clone());
    }

    /// A rename while the resynchronisation walk runs. The directories the
    /// walk has still to visit it visits under their new names, and the
    /// journal's ranges for the target's name no longer describe what is
    /// there. A target where the walk has already been is compared now: an
    /// entry moved there from where the walk had not been yet would be
    /// compared by nobody (the secondary's copy, as old as its last
    /// session, would just take the new name), and the walk may have read
    /// the target before this rename reached the queue, so that the rename
    /// now moves the secondary's old copy over what the walk sent.
    fn walk_renamed(&mut self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        self.plan.replaced(to);
        let mut queued = false;
        for dir in self.walk.iter_mut() {
            if let Some(moved) = dir.moved(from, to) {
                *dir = moved;
                queued = true;
            }
        }
        let to_not_visited = to
            .split_last()
            .is_some_and(|(parent, _)| self.walk.iter().any(|dir| parent.starts_with(dir)));
        if queued || to_not_visited {
            return Ok(());
        }
        match std::fs::symlink_metadata(self.setup.absolute(to)) {
            Ok(m) if m.is_dir() => {
                if self.ship_dir(to, true)? {
                    self.walk.push_back(to.clone());
                }
                Ok(())
            }
            // Checksums, so that only what differs travels (a file gone
            // since is followed by the change that took it).
            _ => self.ship_entry_as(to, None, Ship::Sums),
        }
    }

    /// One step of the resynchronisation walk: one directory.
    fn walk_step(&mut self) -> io::Result<()> {
        let Some(dir) = self.walk.pop_front() else {
            return Ok(());
        };
        for (child, is_dir) in self.children(&dir) {
            let Ok(m) = std::fs::symlink_metadata(self.setup.absolute(&child)) else {
                continue;
            };
            let forced = self.plan.forced(&child)
                || (!is_dir && self.plan.linked.contains(&(m.dev(), m.ino())));
            let changed = forced || self.since.is_none_or(|since| ctime_of(&m) >= since);
            self.progress.files_total.fetch_add(1, Ordering::Relaxed);
            if is_dir {
                if changed || self.plan.relist.contains(&child) {
                    self.ship_dir(&child, true)?;
                }
                self.walk.push_back(child);
            } else {
                if m.is_file() {
                    self.progress
                        .bytes_total
                        .fetch_add(m.len(), Ordering::Relaxed);
                }
                let journaled = match self.plan.ranges.get(&child) {
                    Some(ranges) if !forced && m.is_file() && m.nlink() == 1 => {
                        Some(ranges.clone())
                    }
                    _ => None,
                };
                if let (true, Some(ranges)) = (changed && self.since.is_some(), journaled) {
                    // The journal names every byte written since the sync
                    // point: those travel, read now.
                    self.ship_journaled(&child, ranges)?;
                    if self.plan.verify_ranges {
                        self.ship_entry_as(&child, Some(&m), Ship::Sums)?;
                    }
                } else if changed {
                    // A peer that holds data compares even small files by
                    // checksums; an empty one gets every file whole.
                    let how = if self.fresh_peer {
                        Ship::Whole
                    } else {
                        Ship::Sums
                    };
                    self.ship_entry_as(&child, Some(&m), how)?;
                }
                if m.is_file() {
                    self.progress
                        .bytes_done
                        .fetch_add(m.len(), Ordering::Relaxed);
                }
            }
            self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
        if self.walk.is_empty() {
            self.progress.walk_complete.store(true, Ordering::Relaxed);
            self.end_pending = true;
            self.maybe_end()?;
        }
        Ok(())
    }

    /// Once the walk is over and every block the secondary asked for is
    /// sent, asks the driver to let the resynchronisation end: the
    /// secondary counts itself a copy from its end on, so the primary's
    /// stamp must say so first (`Op::EndResync` answers).
    fn maybe_end(&mut self) -> io::Result<()> {
        if self.end_pending && self.awaiting.is_empty() {
            self.end_pending = false;
            self.end_asked = true;
            self.writer.flush()?;
            let _ = self.events.send(SessionEvent::ResyncSent {
                generation: self.resync_generation,
            });
        }
        Ok(())
    }

    /// Opens `path` to read what to ship. A file that is gone (removed, or
    /// renamed since its change was queued) is marked vanished: the removal
    /// or rename that follows in the queue ships it again under its new
    /// name, so the secondary never keeps a copy that lacks these bytes.
    fn open_source(&mut self, path: &RelPath) -> Option<File> {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.setup.absolute(path))
        {
            Ok(file) => Some(file),
            Err(_) => {
                self.vanish(path);
                None
            }
        }
    }

    /// Opens file `inode` at `path` as [`Sender::open_source`] does; another
    /// file there now counts as gone: a rename that follows in the queue
    /// took this one away, and another took its place. Reading the other
    /// would write its bytes into the secondary's copy of this one.
    fn open_file(&mut self, path: &RelPath, inode: (u64, u64)) -> io::Result<Option<File>> {
        let Some(file) = self.open_source(path) else {
            return Ok(None);
        };
        let m = file.metadata()?;
        if (m.dev(), m.ino()) == inode {
            Ok(Some(file))
        } else {
            self.vanish(path);
            Ok(None)
        }
    }

    /// The inode (device, number) at `path` now, if anything is there.
    fn inode_of(&self, path: &RelPath) -> Option<(u64, u64)> {
        std::fs::symlink_metadata(self.setup.absolute(path))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// Another name of inode `key` that the secondary already has, for a
    /// hard link made to a file this session never shipped under that
    /// name: looked for beside `path` first, then in the whole tree (a
    /// rare walk, bounded by [`LINK_SEARCH_LIMIT`] entries).
    fn other_name(&self, path: &RelPath, key: (u64, u64)) -> Option<RelPath> {
        let beside = path
            .split_last()
            .map(|(parent, _)| parent)
            .unwrap_or_else(|| RelPath::root(path.dir));
        let mut dirs = vec![beside];
        let mut seen = 0usize;
        let mut first = true;
        while let Some(dir) = dirs.pop() {
            for (child, is_dir) in self.children(&dir) {
                seen += 1;
                if seen > LINK_SEARCH_LIMIT {
                    return None;
                }
                if is_dir {
                    if !first {
                        dirs.push(child);
                    }
                } else if child != *path && self.inode_of(&child) == Some(key) {
                    return Some(child);
                }
            }
            if first {
                // Beside it found nothing: the whole tree.
                first = false;
                dirs = vec![RelPath::root(path.dir)];
            }
        }
        None
    }

    /// Sends a non-directory entry as it is now: file, symlink, hard link;
    /// a small file whole.
    fn ship_entry(&mut self, path: &RelPath, known: Option<&std::fs::Metadata>) -> io::Result<()> {
        self.ship_entry_as(path, known, Ship::SmallWhole)
    }

    /// As [`Sender::ship_entry`], a file's content as `how` says. A file
    /// linked to a name the secondary has travels by checksums whatever
    /// `how` (only what changed since that name travelled differs).
    fn ship_entry_as(
        &mut self,
        path: &RelPath,
        known: Option<&std::fs::Metadata>,
        how: Ship,
    ) -> io::Result<()> {
        let absolute = self.setup.absolute(path);
        let m = match known {
            Some(m) => m.clone(),
            None => match std::fs::symlink_metadata(&absolute) {
                Ok(m) => m,
                // Gone since: a removal or a rename follows in the queue.
                Err(_) => {
                    self.vanish(path);
                    return Ok(());
                }
            },
        };
        let kind = m.file_type();
        if kind.is_dir() {
            if known.is_none() {
                self.handle(Op::Tree(path.clone()))?;
            }
            return Ok(());
        }
        if kind.is_symlink() {
            let Ok(target) = std::fs::read_link(&absolute) else {
                return Ok(());
            };
            self.send(&Message::Symlink {
                path: path.clone(),
                target: target.as_os_str().as_bytes().to_vec(),
            })?;
            return self.send(&Message::SetMeta {
                path: path.clone(),
                meta: meta_of(&m),
            });
        }
        if !kind.is_file() {
            debug!(module = %self.setup.module, %path, "not replicating a special file");
            return Ok(());
        }
        let mut how = how;
        let linked = m.nlink() > 1;
        if linked {
            let key = (m.dev(), m.ino());
            // A name this session shipped the file under, as the secondary
            // has it now; only then one found in the tree, which the
            // secondary may not have yet (the walk has not reached it, or
            // the change that made it is still queued).
            let other = self
                .links
                .get(&key)
                .filter(|first| *first != path)
                .cloned()
                .or_else(|| self.other_name(path, key));
            if let Some(first) = other {
                // One inode on the secondary too; then the content, in case
                // it changed since that name travelled: only the blocks that
                // differ follow.
                self.send(&Message::Link {
                    path: path.clone(),
                    existing: first,
                })?;
                how = Ship::Sums;
            }
        }
        let Some(file) = self.open_source(path) else {
            return Ok(());
        };
        if linked {
            // The secondary has this name once the messages below apply,
            // whether or not it had the other one: the next name links here.
            self.links.insert((m.dev(), m.ino()), path.clone());
        }
        let m = file.metadata()?;
        let size = m.len();
        let whole = match how {
            Ship::Whole => true,
            Ship::SmallWhole => size <= SMALL_FILE,
            Ship::Sums => size == 0,
        };
        if whole {
            self.send(&Message::File {
                path: path.clone(),
                meta: meta_of(&m),
            })?;
            if how == Ship::Whole {
                // Its data only: the holes of a sparse file stay holes
                // (emptied first, the size set last makes them).
                self.send(&Message::SetSize {
                    path: path.clone(),
                    size: 0,
                })?;
                for (start, end) in data_segments(&file, size) {
                    self.send_range(path, &file, start, end)?;
                }
            } else {
                self.send_range(path, &file, 0, size)?;
            }
            self.send(&Message::SetSize {
                path: path.clone(),
                size,
            })?;
            return self.send(&Message::SetMeta {
                path: path.clone(),
                meta: meta_of(&m),
            });
        }
        let blocks = block_count(size);
        let mut first = 0;
        while first < blocks {
            let count = (blocks - first).min(MAX_SUMS as u64);
            let sums = file_sums(&file, size, first, count)?;
            self.send(&Message::Sums {
                path: path.clone(),
                meta: meta_of(&m),
                size,
                first,
                sums,
            })?;
            let number = self.compared;
            self.compared += 1;
            if !self.walking {
                self.live_awaiting.push_back(number);
            }
            self.awaiting.push_back(Awaiting {
                sent_as: path.clone(),
                now: Some(path.clone()),
                inode: (m.dev(), m.ino()),
                number,
            });
            first += count;
        }
        Ok(())
    }

    /// Sends bytes `[start, end)` of `file` (fewer if it shrank meanwhile).
    fn send_range(&mut self, path: &RelPath, file: &File, start: u64, end: u64) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.read_buf);
        let result = self.send_range_with(&mut buf, path, file, start, end);
        self.read_buf = buf;
        result
    }

    fn send_range_with(
        &mut self,
        buf: &mut Vec<u8>,
        path: &RelPath,
        file: &File,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(MAX_WRITE);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            trace!(module = %self.setup.module, %path, offset = at, bytes = n, "sending write");
            // Encoded and sealed straight from the read buffer.
            self.writer.send_write(path, at, &buf[..n])?;
            self.progress
                .bytes_sent
                .store(self.writer.sent, Ordering::Relaxed);
            at += n as u64;
        }
        Ok(())
    }

    /// Sends the captured ranges of file `inode`, as they read now.
    fn ship_ranges(
        &mut self,
        path: &RelPath,
        inode: (u64, u64),
        ranges: Vec<(u64, u64)>,
    ) -> io::Result<()> {
        let queued = span(&ranges);
        let result = self.ship_ranges_now(path, inode, ranges);
        let _ = self
            .progress
            .backlog
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(queued))
            });
        result
    }

    fn ship_ranges_now(
        &mut self,
        path: &RelPath,
        inode: (u64, u64),
        mut ranges: Vec<(u64, u64)>,
    ) -> io::Result<()> {
        let Some(file) = self.open_file(path, inode)? else {
            return Ok(());
        };
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        for (start, end) in merged {
            self.send_range(path, &file, start, end)?;
        }
        self.send(&Message::SetMeta {
            path: path.clone(),
            meta: meta_of(&file.metadata()?),
        })
    }

    /// Sends a file's journaled ranges as they read now, then its size and
    /// metadata.
    fn ship_journaled(&mut self, path: &RelPath, ranges: Vec<(u64, u64)>) -> io::Result<()> {
        let Some(file) = self.open_source(path) else {
            return Ok(());
        };
        for (start, end) in ranges {
            self.send_range(path, &file, start, end)?;
        }
        let m = file.metadata()?;
        self.send(&Message::SetSize {
            path: path.clone(),
            size: m.len(),
        })?;
        self.send(&Message::SetMeta {
            path: path.clone(),
            meta: meta_of(&m),
        })
    }

    /// Sends the blocks the secondary asked for of file `inode`, now at
    /// `path`, then the file's metadata.
    fn ship_blocks(
        &mut self,
        path: &RelPath,
        inode: (u64, u64),
        blocks: &[Blocks],
    ) -> io::Result<()> {
        let Some(file) = self.open_file(path, inode)? else {
            return Ok(());
        };
        let m = file.metadata()?;
        for b in blocks {
            let start = b.first * BLOCK_SIZE;
            let end = ((b.first + u64::from(b.count)) * BLOCK_SIZE).min(m.len());
            self.send_range(path, &file, start, end)?;
        }
        self.send(&Message::SetSize {
            path: path.clone(),
            size: m.len(),
        })?;
        self.send(&Message::SetMeta {
            path: path.clone(),
            meta: meta_of(&m),
        })
    }
}

/// The parts of `file`'s first `size` bytes that hold data, by
/// `SEEK_DATA` / `SEEK_HOLE`; all of it where the file system cannot say.
fn data_segments(file: &File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on an open descriptor; only the offset changes, and
        // reads use explicit offsets.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                // No data after `at`: the rest is a hole.
                break;
            }
            return vec![(0, size)];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return vec![(0, size)];
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if start >= end {
            break;
        }
        out.push((start, end));
        at = end;
    }
    out
}

/// Bytes covered by captured ranges (overlaps counted twice: an estimate).
fn span(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(s, e)| e.saturating_sub(*s)).sum()
}

/// Paused threads per barrier number.
type Releases = Arc<Mutex<Vec<(u64, Vec<Pause>)>>>;

/// Releases the threads of every barrier up to `seq`, `acknowledged` by
/// the secondary or not.
fn release_upto(releases: &Releases, hub: Option<&CaptureHub>, seq: u64, acknowledged: bool) {
    let due: Vec<Pause> = {
        let mut list = releases.lock().expect("releases");
        let (due, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|(s, _)| *s <= seq);
        *list = keep;
        due.into_iter().flat_map(|(_, pauses)| pauses).collect()
    };
    if let Some(hub) = hub {
        for pause in due {
            if acknowledged {
                hub.release(pause.tid, pause.seq);
            } else {
                hub.release_unacknowledged(pause.tid, pause.seq);
            }
        }
    }
}

// ---------------------------------------------------------------- secondary

/// The secondary's end of a session: connects, joins, applies until the end.
pub struct SecondarySession {
    stream: TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SecondarySession {
    /// Connects to the primary at `primary` and runs the session on a thread.
    pub fn start(
        primary: SocketAddr,
        setup: &Setup,
        applier: Arc<Mutex<Applier>>,
        join: (u64, u8),
        diverged: Option<Vec<RelPath>>,
        events: Events,
    ) -> Result<Self, ChannelError> {
        let mut stream = TcpStream::connect_timeout(&primary, Duration::from_secs(3))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let hello = Hello::new(Role::Secondary, setup.encrypt, &setup.module, &setup.node);
        let (sealer, opener, _peer) = handshake(&mut stream, &hello, &setup.key)?;
        stream.set_read_timeout(None)?;
        let mut writer = MessageWriter::new(stream.try_clone()?, sealer);
        writer.send(&Message::Join {
            generation: join.0,
            state: join.1,
        })?;
        writer.send(&Message::Diverged { paths: diverged })?;
        let mut reader = MessageReader::new(
            BufReader::with_capacity(256 * 1024, stream.try_clone()?),
            opener,
        );
        let module = setup.module.clone();
        let shutdown = stream.try_clone()?;
        applier.lock().expect("applier").new_session();
        // Two stages: one thread reads, opens and decodes frames, the other
        // applies them, in order, and answers. A first copy then decrypts
        // the next frames while the file system takes the last ones.
        let (received, to_apply) = mpsc::sync_channel::<Result<Message, String>>(RECEIVED_AHEAD);
        let receiver = std::thread::Builder::new()
            .name(format!("halo-read-{module}"))
            .spawn(move || loop {
                let item = match reader.recv() {
                    Ok(Some(Message::Bye)) => Err(HANDED_OVER.to_owned()),
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err("the primary closed the connection".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                let end = item.is_err();
                // The applier is gone (it refused a change): nothing to do.
                if received.send(item).is_err() || end {
                    return;
                }
            })?;
        let thread = std::thread::Builder::new()
            .name(format!("halo-recv-{module}"))
            .spawn(move || {
                // The files of a resynchronisation go to workers; every
                // other message waits for them, then is applied here.
                let mut pool = ApplyPool::new(&module);
                let reason = loop {
                    let message = match to_apply.recv() {
                        Ok(Ok(m)) => m,
                        Ok(Err(reason)) => break reason,
                        Err(_) => break "the session's reader ended".to_owned(),
                    };
                    // A change this node cannot apply, a worker's or its own.
                    let refused = match pool.route(message, &applier) {
                        Routed::Taken => continue,
                        Routed::Failed(reason) => reason,
                        Routed::Apply(message) => {
                            let shown = describe(&message);
                            let result = applier.lock().expect("applier").apply(message);
                            trace!(module = %module, change = %shown, "applied");
                            match result {
                                Ok(Reply::None) => continue,
                                Ok(Reply::Send(reply)) => {
                                    trace!(module = %module, ?reply, "answering");
                                    let done = match &reply {
                                        Message::ResyncDone { generation } => Some(*generation),
                                        _ => None,
                                    };
                                    if let Err(e) = writer.send(&reply) {
                                        break format!("answering the primary failed: {e}");
                                    }
                                    if let Some(generation) = done {
                                        let _ = events.send(SessionEvent::ResyncDone { generation });
                                    }
                                    continue;
                                }
                                // A namespace change whose source is already
                                // gone: the messages that follow describe the
                                // result.
                                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                                    debug!(module = %module, change = %shown, error = %e, "skipped");
                                    continue;
                                }
                                Err(e) => format!("{shown}: {e}"),
                            }
                        }
                    };
                    warn!(module = %module, reason = %refused, "refusing a replicated change");
                    let _ = writer.send(&Message::Refused {
                        reason: refused.clone(),
                    });
                    break refused;
                };
                // What the workers hold was received: applied before the
                // session ends.
                drop(pool);
                // Shut down, the socket ends the reader's read; gone, this
                // end of the channel ends its wait for room.
                let _ = shutdown.shutdown(Shutdown::Both);
                drop(to_apply);
                let _ = receiver.join();
                let _ = events.send(SessionEvent::Ended { reason });
            })?;
        Ok(SecondarySession {
            stream,
            thread: Some(thread),
        })
    }
}

impl Drop for SecondarySession {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A short description of a message for logs (never its data).
pub(crate) fn describe(message: &Message) -> String {
    match message {
        Message::Write { path, offset, data } => {
            format!("write {path} at {offset} ({} bytes)", data.len())
        }
        Message::Mkdir { path, .. } => format!("mkdir {path}"),
        Message::File { path, .. } => format!("file {path}"),
        Message::SetSize { path, size } => format!("set size of {path} to {size}"),
        Message::SetMeta { path, .. } => format!("set metadata of {path}"),
        Message::Symlink { path, .. } => format!("symlink {path}"),
        Message::Link { path, existing } => format!("link {path} to {existing}"),
        Message::Remove { path } => format!("remove {path}"),
        Message::Rename { from, to } => format!("rename {from} to {to}"),
        Message::Listing { dir, .. } => format!("listing of {dir}"),
        Message::Sums { path, .. } => format!("checksums of {path}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> RelPath {
        RelPath::new(0, text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_barrier_asked_for_after_writes_reaches_the_session_behind_their_changes() {
        // A handover drains with such a barrier: a barrier that overtook
        // the tracker's last batch let the new primary start without them.
        let dir = std::env::temp_dir().join(format!("halo-flush-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.join("journal")).unwrap();
        let journal = Journal::open(&dir.join("journal")).unwrap();
        let secret = crate::cluster::keys::ClusterSecret::from_bytes(&[7; 32]);
        let setup = Setup {
            module: "db".into(),
            node: "n1".into(),
            dirs: vec![data.clone()],
            excludes: vec![Vec::new()],
            encrypt: false,
            key: SessionKey::new(secret.replication_key()),
        };
        let tracker =
            Tracker::start(setup, None, Arc::default(), Arc::new(Mutex::new(journal))).unwrap();
        let (tx, rx) = mpsc::channel();
        *tracker.target.lock().unwrap() = Some(tx);
        for round in 0..50u64 {
            let name = format!("f{round}");
            std::fs::write(data.join(&name), b"record").unwrap();
            tracker.barrier_after_writes(round);
            let mut named = false;
            loop {
                match rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the barrier")
                {
                    Op::Barrier(seq) => {
                        assert_eq!(seq, round);
                        break;
                    }
                    Op::Entry(path) | Op::New(path) | Op::Ranges(path, ..) => {
                        named |= path == p(&name)
                    }
                    _ => {}
                }
            }
            assert!(
                named,
                "round {round}: the barrier came before {name}'s change"
            );
        }
        drop(tracker);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sparse_file_travels_as_its_data_segments() {
        let path = std::env::temp_dir().join(format!("halo-sparse-{}", std::process::id()));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mb = 1 << 20;
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"middle", 5 * mb).unwrap();
        file.set_len(9 * mb).unwrap();
        let segments = data_segments(&file, 9 * mb);
        std::fs::remove_file(&path).unwrap();
        // Block-sized at least; the holes between are not sent.
        assert_eq!(segments.len(), 2, "{segments:?}");
        assert!(segments[0].0 == 0 && segments[0].1 >= 4 && segments[0].1 < mb);
        assert!(segments[1].0 <= 5 * mb && segments[1].1 >= 5 * mb + 6);
        assert!(segments[1].1 < 6 * mb, "{segments:?}");
        // Nothing asked, nothing sent.
        assert_eq!(data_segments(&file, 0), vec![]);
    }

    #[test]
    fn ranges_captured_before_the_event_naming_their_file_wait_for_it() {
        let (named, early) = ((1, 10), (1, 11));
        let mut st = TrackState::default();
        st.paths.insert(named, p("d/known"));
        st.ranges.insert(named, vec![(0, 10)]);
        st.ranges.insert(early, vec![(100, 200)]);
        let mut ops = Vec::new();
        st.ship_unnamed_ranges(&mut ops);
        // A known file's ranges go under its path; the other's wait.
        assert!(matches!(&ops[..], [Op::Ranges(path, key, r)]
            if *path == p("d/known") && *key == named && r == &vec![(0, 10)]));
        for _ in 1..UNNAMED_BATCHES {
            ops.clear();
            st.ship_unnamed_ranges(&mut ops);
            assert!(ops.is_empty());
        }
        assert_eq!(
            st.ranges[&early],
            vec![(100, 200)],
            "kept {UNNAMED_BATCHES} batches"
        );
        // The event that names it comes: they travel under its path.
        st.paths.insert(early, p("d/late"));
        st.ranges.get_mut(&early).unwrap().push((300, 400));
        st.ship_unnamed_ranges(&mut ops);
        assert!(matches!(&ops[..], [Op::Ranges(path, key, r)]
            if *path == p("d/late") && *key == early && r == &vec![(100, 200), (300, 400)]));
        assert!(st.unnamed.is_empty() && st.ranges.is_empty());
        // Never named: dropped after the bound, and forgotten.
        let orphan = (1, 12);
        st.ranges.insert(orphan, vec![(0, 1)]);
        for _ in 0..=UNNAMED_BATCHES {
            ops.clear();
            st.ship_unnamed_ranges(&mut ops);
            assert!(ops.is_empty());
        }
        assert!(st.ranges.is_empty() && st.unnamed.is_empty());
    }

    #[test]
    fn an_msynced_mapping_names_its_file_and_a_long_range_is_compared_instead() {
        let dir = std::env::temp_dir().join(format!("halo-mapped-name-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/db");
        std::fs::write(&file, b"x").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let key = (meta.dev(), meta.ino());
        let name = RelPath::below(0, &dir, &file).unwrap();
        let mut st = TrackState::default();
        // No event named it: the mapping's path does, if it is still the file.
        st.mapped.push(Mapped {
            key,
            path: file.clone(),
            compare: false,
        });
        st.mapped.push(Mapped {
            key: (key.0, key.1 + 1),
            path: file.clone(),
            compare: false,
        });
        st.name_mapped(std::slice::from_ref(&dir));
        assert_eq!(st.paths.get(&key), Some(&name));
        assert_eq!(st.paths.len(), 1, "another inode at that path is not named");
        assert!(st.pending.is_empty() && st.resized.is_empty());
        // Too long a range: the file is compared by checksums, once.
        for _ in 0..2 {
            st.mapped.push(Mapped {
                key,
                path: file.clone(),
                compare: true,
            });
        }
        st.name_mapped(std::slice::from_ref(&dir));
        assert_eq!(st.pending, vec![name]);
        assert!(st.resized.contains(&key));
        // Outside every directory: no name.
        let mut st = TrackState::default();
        st.mapped.push(Mapped {
            key,
            path: file.clone(),
            compare: true,
        });
        st.name_mapped(&[dir.join("elsewhere")]);
        assert!(st.paths.is_empty() && st.pending.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_captured_file_keeps_its_name_through_renames_read_in_one_batch() {
        // Ranges that come without an event are shipped under the path
        // last seen for their file; a stale one reads nothing, and those
        // bytes never reach the secondary.
        let key = (1, 42);
        let mut st = TrackState::default();
        st.paths.insert(key, p("d1/a"));
        // a -> b -> c read in one batch: `b` is gone when the first is read.
        st.follow_rename(&p("d1/a"), &p("d1/b"), None);
        st.follow_rename(&p("d1/b"), &p("d2/c"), Some((key, false)));
        assert_eq!(st.paths[&key], p("d2/c"));
        // A directory's rename moves the names below it, not others.
        st.paths.insert((1, 43), p("d3/x"));
        st.follow_rename(&p("d2"), &p("d4"), Some(((1, 7), true)));
        assert_eq!(st.paths[&key], p("d4/c"));
        assert_eq!(st.paths[&(1, 43)], p("d3/x"));
        // A second name of a file (a hard link) renamed: either name reads it.
        st.follow_rename(&p("d5/link"), &p("d5/moved"), Some((key, false)));
        assert_eq!(st.paths[&key], p("d5/moved"));
        // Pending and created paths follow too.
        st.pending.push(p("d3/x"));
        st.created.insert(p("d3/x"));
        st.follow_rename(&p("d3"), &p("d6"), None);
        assert_eq!(st.pending, vec![p("d6/x")]);
        assert!(st.created.contains(&p("d6/x")));
        assert_eq!(st.paths[&(1, 43)], p("d6/x"));
    }

    #[test]
    fn an_awaited_file_follows_renames_and_is_dropped_once_replaced_or_removed() {
        let rename = |from: &str, to: &str| Message::Rename {
            from: p(from),
            to: p(to),
        };
        assert_eq!(name_after(p("a/f"), &rename("a/f", "b/g")), Some(p("b/g")));
        assert_eq!(name_after(p("a/f"), &rename("a", "c")), Some(p("c/f")));
        assert_eq!(name_after(p("a/f"), &rename("x", "y")), Some(p("a/f")));
        // Another file renamed over it, or over a directory above it.
        assert_eq!(name_after(p("a/f"), &rename("x", "a/f")), None);
        assert_eq!(name_after(p("a/f"), &rename("x", "a")), None);
        assert_eq!(
            name_after(p("a/f"), &Message::Remove { path: p("a") }),
            None
        );
        assert_eq!(
            name_after(p("a/f"), &Message::Remove { path: p("a/fg") }),
            Some(p("a/f"))
        );
        let link = Message::Link {
            path: p("a/f"),
            existing: p("z"),
        };
        assert_eq!(name_after(p("a/f"), &link), None);
        let listing = |names: &[&str]| Message::Listing {
            dir: p("a"),
            names: names.iter().map(|n| n.as_bytes().to_vec()).collect(),
        };
        assert_eq!(name_after(p("a/f"), &listing(&["f", "g"])), Some(p("a/f")));
        assert_eq!(name_after(p("a/f"), &listing(&["g"])), None);
        assert_eq!(name_after(p("b/f"), &listing(&["g"])), Some(p("b/f")));
    }

    #[test]
    fn journaled_ranges_are_verified_by_checksums_on_a_former_primary() {
        let mut set = super::super::journal::DirtySet::default();
        set.files.insert(p("a/f"), Dirt::Ranges(vec![(4096, 8192)]));
        set.files.insert(p("a/g"), Dirt::Compare);
        let diverged = [p("b/h")];

        let to_copy = Plan::new(Some(set.clone()), Some(&diverged), true);
        assert_eq!(to_copy.ranges.get(&p("a/f")), Some(&vec![(4096, 8192)]));
        assert!(!to_copy.verify_ranges);
        assert!(!to_copy.forced(&p("a/f")));
        assert!(to_copy.forced(&p("a/g")) && to_copy.forced(&p("b/h")));

        // A former primary may have written to a/f itself, where the
        // ranges do not reach: the ranges travel, then the checksums.
        let to_former_primary = Plan::new(Some(set), Some(&diverged), false);
        assert_eq!(
            to_former_primary.ranges.get(&p("a/f")),
            Some(&vec![(4096, 8192)])
        );
        assert!(to_former_primary.verify_ranges);
        assert!(to_former_primary.forced(&p("a/g")) && to_former_primary.forced(&p("b/h")));
    }

    #[test]
    fn a_file_changed_while_it_had_several_names_compares_under_every_name() {
        // Now: "a/one" has one name; "a/linked" two; "a/gone" is gone; "a/other"
        // is another file than the one written; "a/mapped" has two names and
        // was changed by mmap stores.
        let stat = |path: &RelPath| match path.as_bytes() {
            b"a/one" => Some((1, 5, 1, true)),
            b"a/linked" => Some((1, 6, 2, true)),
            b"a/other" => Some((1, 99, 1, true)),
            b"a/mapped" => Some((1, 9, 2, true)),
            b"a/dir" => Some((1, 10, 3, false)),
            _ => None,
        };
        let ranges = |path: &str, ino| Op::Ranges(p(path), (1, ino), vec![(0, 10)]);
        let ops = [
            ranges("a/one", 5),
            ranges("a/linked", 6),
            ranges("a/gone", 7),
            ranges("a/other", 8),
            Op::Entry(p("a/mapped")),
            Op::Entry(p("a/dir")),
        ];
        let marks = several_names(&ops, &stat);
        assert_eq!(marks, vec![(1, 6), (1, 7), (1, 8), (1, 9)]);
        assert!(several_names(&[Op::Entry(p("a/one"))], &stat).is_empty());

        let dir = std::env::temp_dir().join(format!("halo-linked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut journal = Journal::open(&dir).unwrap();
        journal
            .rebase(1, SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
        for op in &ops {
            journal_op(&mut journal, op);
        }
        for file in marks {
            journal.linked(file);
        }
        let (_, _, set) = journal.snapshot().unwrap();
        // The files keep their ranges; the walk compares every name of a
        // marked file by checksums, whatever name its ranges came under.
        let plan = Plan::new(Some(set), None, true);
        assert!(plan.ranges.contains_key(&p("a/one")) && plan.ranges.contains_key(&p("a/linked")));
        assert!(plan.linked.contains(&(1, 6)) && !plan.linked.contains(&(1, 5)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn globs_match_within_and_across_components() {
        assert!(glob_match(b"*.tmp", b"a.tmp"));
        assert!(!glob_match(b"*.tmp", b"d/a.tmp"));
        assert!(glob_match(b"**/*.tmp", b"d/e/a.tmp"));
        assert!(glob_match(b"**/*.tmp", b"a.tmp"));
        assert!(glob_match(b"cache/**", b"cache/x/y"));
        assert!(glob_match(b"log?", b"log1"));
        assert!(!glob_match(b"log?", b"log/"));
        assert!(!glob_match(b"cache", b"cache2"));
    }
}
