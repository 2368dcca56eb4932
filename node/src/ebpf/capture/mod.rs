//! User-space side of the mirror's write capture: loading the tracepoint
//! programs with the kernel's struct offsets, registering the replicated
//! directories (roots), reading the reported changes, and resuming the
//! processes that a durability call paused.
//!
//! - `event`: the ring's records decoded into [`Captured`] (pure);
//! - `load`: BTF offsets and the tracefs layout check;
//! - `resolve`: `truncate(path)` resolved through `/proc/<tid>/{cwd,root}`;
//! - `process`: signals only to the very processes that were paused.
//!
//! docs/mirror-durability.md explains the pause (`SIGSTOP` at syscall exit,
//! `SIGCONT` from here) and its measured cost.

mod event;
mod load;
mod process;
mod resolve;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        TracePoint,
    },
    Ebpf, EbpfLoader,
};
use halo_common::capture::{
    CaptureSettings, FileKey, PausedTask, RootCount, RootPolicy, WriteKind, GENERATION_ATTACH,
    GENERATION_ROOTS, ROOT_SYNC_PAUSE,
};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout},
    sys::signal::Signal,
};

use self::{
    event::{kernel_dev_to_st_dev, parse_record, st_dev_to_kernel},
    load::{check_tracepoint_layout, EXIT_PROGRAM, NAMESPACE_HOOKS, SYSCALLS},
    resolve::{mapped_ranges, resolve_truncate, Resolution},
};
pub use self::{
    event::{Captured, Change, RootId, SyncScope},
    load::capture_offsets,
    process::{signal_process, stopped},
};
use super::{btf::Btf, CAPTURE_OBJECT};

/// How the capture is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// A process never reported nor paused: the daemon itself, which writes
    /// replicated data on the secondary. 0 excludes nothing.
    pub exclude_tgid: u32,
    /// The ring buffer's size in bytes: a power of two, at least a page.
    /// A record takes 72 bytes (336 for a truncate by path).
    pub ring_bytes: u32,
    /// A bpffs directory (created here) where the programs' links and the
    /// root and paused-task maps are pinned, so that the capture outlives a
    /// daemon that dies: its writers stay held, and the next daemon finds
    /// them ([`PreviousCapture`]). `None` pins nothing: the capture detaches
    /// with its last descriptor.
    pub pin_dir: Option<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            // The calling process: what the daemon wants.
            exclude_tgid: std::process::id(),
            // 4 MiB: about 58,000 records of slack for a daemon that is late.
            ring_bytes: 1 << 22,
            pin_dir: None,
        }
    }
}

/// The bpffs directory below which the daemons of node `node` pin their
/// captures, one subdirectory per daemon (one per node name, so that lab
/// nodes sharing a kernel keep theirs apart).
pub fn capture_pins(node: &str) -> PathBuf {
    let name: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("/sys/fs/bpf/halo-capture-{name}"))
}

/// The pinned name of a capture's map of registered roots.
const ROOTS_PIN: &str = "roots";
/// The pinned name of a capture's map of paused tasks.
const PAUSED_PIN: &str = "paused";
/// The pinned names of a capture's links begin so, followed by their
/// tracepoint; a capture without any is detached.
const LINK_PIN_PREFIX: &str = "link-";
/// The pinned name of a capture's change counters, which a change of its
/// roots must bump (captures pinned before it existed have none).
const GENERATIONS_PIN: &str = "generations";
/// The pinned names of a capture's root counts, per device and in total,
/// which its programs test before anything else: a root taken over must
/// leave them (captures pinned before the eighteenth session have none).
const DEVS_PIN: &str = "devs";
const TOTALS_PIN: &str = "totals";

/// The pinned capture of a daemon that died: if one of its modules served
/// (or stopped less than 5 s before), its programs are still attached and still stop the writers that make
/// data durable under its roots; the writers it stopped stay stopped (nobody
/// resumes them) until the next daemon takes each root
/// over ([`PreviousCapture::take_over`]) and then retires it.
pub struct PreviousCapture {
    dir: PathBuf,
    roots: HashMap<MapData, FileKey, RootPolicy>,
    paused: PinnedPaused,
    generations: Option<Array<MapData, u64>>,
    counts: Option<PinnedCounts>,
}

/// A pinned capture's root counts (`CAPTURE_DEVS`, `CAPTURE_TOTALS`).
struct PinnedCounts {
    devs: HashMap<MapData, u32, RootCount>,
    totals: Array<MapData, RootCount>,
}

/// A pinned capture's map of paused tasks, in the layout of the daemon
/// that pinned it.
enum PinnedPaused {
    Current(HashMap<MapData, u32, PausedTask>),
    /// Pinned before the entries carried their process's start.
    WithoutStart(HashMap<MapData, u32, PausedTaskWithoutStart>),
}

/// [`PausedTask`] without `start`, as captures pinned before it list
/// their tasks.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct PausedTaskWithoutStart {
    seq: u64,
    root: u64,
    ino: u64,
    tgid: u32,
    dev: u32,
}

// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for PausedTaskWithoutStart {}

impl From<PausedTaskWithoutStart> for PausedTask {
    fn from(old: PausedTaskWithoutStart) -> Self {
        PausedTask {
            seq: old.seq,
            root: old.root,
            ino: old.ino,
            tgid: old.tgid,
            dev: old.dev,
            start: 0,
        }
    }
}

impl PinnedPaused {
    fn open(map: MapData) -> anyhow::Result<Self> {
        let size = map.info()?.value_size() as usize;
        let map = aya::maps::Map::HashMap(map);
        Ok(if size == std::mem::size_of::<PausedTaskWithoutStart>() {
            PinnedPaused::WithoutStart(HashMap::try_from(map)?)
        } else {
            PinnedPaused::Current(HashMap::try_from(map)?)
        })
    }

    fn tasks(&self) -> Vec<Paused> {
        match self {
            PinnedPaused::Current(map) => map
                .iter()
                .filter_map(Result::ok)
                .map(|(tid, task)| paused_from(tid, &task))
                .collect(),
            PinnedPaused::WithoutStart(map) => map
                .iter()
                .filter_map(Result::ok)
                .map(|(tid, task)| paused_from(tid, &task.into()))
                .collect(),
        }
    }

    fn remove(&mut self, tid: u32) {
        let _ = match self {
            PinnedPaused::Current(map) => map.remove(&tid),
            PinnedPaused::WithoutStart(map) => map.remove(&tid),
        };
    }
}

impl PreviousCapture {
    /// The captures pinned below `base` by earlier daemons, except `own`.
    /// A directory that cannot be opened (a daemon killed while pinning)
    /// is removed, which detaches whatever it held.
    pub fn find(base: &Path, own: &Path) -> Vec<PreviousCapture> {
        let Ok(entries) = std::fs::read_dir(base) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
            if dir == own {
                continue;
            }
            match PreviousCapture::open(&dir) {
                Ok(previous) => found.push(previous),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), error = %format!("{error:#}"), "removing an incomplete pinned capture");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        found
    }

    fn open(dir: &Path) -> anyhow::Result<PreviousCapture> {
        let map = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))
        };
        let generations = match dir.join(GENERATIONS_PIN).exists() {
            true => Some(Array::try_from(aya::maps::Map::Array(map(
                GENERATIONS_PIN,
            )?))?),
            false => None,
        };
        // Optional: without them a root taken over still counts on its
        // device until the capture is retired, which is safe; a capture
        // still holding writers is not dropped for their sake.
        let counts = match dir.join(DEVS_PIN).exists() && dir.join(TOTALS_PIN).exists() {
            true => {
                let opened = || -> anyhow::Result<PinnedCounts> {
                    Ok(PinnedCounts {
                        devs: HashMap::try_from(aya::maps::Map::HashMap(map(DEVS_PIN)?))?,
                        totals: Array::try_from(aya::maps::Map::Array(map(TOTALS_PIN)?))?,
                    })
                };
                match opened() {
                    Ok(counts) => Some(counts),
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), error = %format!("{error:#}"), "cannot open a dead daemon's root counts: a root taken over from it still counts on its device until it is retired");
                        None
                    }
                }
            }
            false => None,
        };
        Ok(PreviousCapture {
            roots: HashMap::try_from(aya::maps::Map::HashMap(map(ROOTS_PIN)?))?,
            paused: PinnedPaused::open(map(PAUSED_PIN)?)?,
            generations,
            counts,
            dir: dir.to_owned(),
        })
    }

    /// Where it is pinned.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether its programs are still attached: a daemon whose modules did
    /// not serve when it died had detached them.
    pub fn attached(&self) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(LINK_PIN_PREFIX)
            })
        })
    }

    /// The roots it still holds.
    pub fn roots(&self) -> Vec<RootId> {
        self.roots
            .keys()
            .filter_map(Result::ok)
            .map(|key| RootId {
                st_dev: kernel_dev_to_st_dev(key.dev),
                ino: key.ino,
            })
            .collect()
    }

    /// Stops holding writers below `root`, and returns the tasks it holds
    /// for that root: they stay stopped, now the caller's to resume.
    pub fn take_over(&mut self, root: RootId) -> anyhow::Result<Vec<Paused>> {
        match self.roots.remove(&root_key(root)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "removing {root:?} from {}",
                        self.dir.join(ROOTS_PIN).display()
                    )
                })
            }
        }
        // Its programs test the counts first: left as they were, a sync of
        // the device (or of every root) would still be held for this root.
        // Counted from the whole map, or not at all: a walk cut short would
        // drop roots it still holds (and the pauses their writers need).
        let counted = match &mut self.counts {
            Some(counts) => self
                .roots
                .iter()
                .map(|entry| {
                    entry.map(|(key, policy)| (key.dev, policy.flags & ROOT_SYNC_PAUSE != 0))
                })
                .collect::<Result<Vec<(u32, bool)>, _>>()
                .map_err(anyhow::Error::from)
                .and_then(|remaining| {
                    write_root_counts(&mut counts.devs, &mut counts.totals, &remaining)
                })
                .with_context(|| format!("updating the root counts in {}", self.dir.display())),
            None => Ok(()),
        };
        // Bumped whatever became of the counts: the verdicts its programs
        // remembered under the root must go.
        if let Some(generations) = &mut self.generations {
            bump_roots_generation(generations).with_context(|| {
                format!("updating {}", self.dir.join(GENERATIONS_PIN).display())
            })?;
        }
        counted?;
        let tasks: Vec<Paused> = self
            .paused_tasks()
            .into_iter()
            .filter(|task| task.root == Some(root))
            .collect();
        for task in &tasks {
            self.paused.remove(task.tid);
        }
        Ok(tasks)
    }

    /// Detaches its programs and removes its pins; returns the tasks it
    /// still held (syncs of every root, or of roots nobody took over): they
    /// stay stopped, now the caller's to resume.
    pub fn retire(self) -> anyhow::Result<Vec<Paused>> {
        let tasks = self.paused_tasks();
        // The links' pins are their last references: removing them detaches
        // the programs, which then release the maps.
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing the pinned capture {}", self.dir.display()))?;
        Ok(tasks)
    }

    pub fn paused_tasks(&self) -> Vec<Paused> {
        self.paused.tasks()
    }
}

/// A task stopped by a durability call, waiting for [`WriteCapture::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    pub tid: u32,
    pub pid: u32,
    /// The [`Captured::seq`] of the sync record that paused it.
    pub seq: u64,
    /// The root concerned; `None` for a sync of every root.
    pub root: Option<RootId>,
    /// The file synced; 0 if not one file.
    pub ino: u64,
    /// When its process started (ns since boot; 0 if unknown): signals go
    /// to `pid` only while it is that process ([`signal_process`]).
    pub start: u64,
}

/// What [`WriteCapture::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The process was sent `SIGCONT`: none of its threads waits any more.
    Resumed,
    /// Other threads of the process still wait for their syncs: it stays
    /// stopped until the last one is released.
    StillHeld { waiting: usize },
    /// The thread was not paused by this capture; nothing was sent.
    NotPaused,
    /// The thread waits for a later sync (record `paused_by`): this release
    /// is stale, nothing was sent.
    Superseded { paused_by: u64 },
}

/// The loaded capture programs, attached or not
/// ([`WriteCapture::set_attached`]); dropping it detaches them and resumes
/// every task still paused.
pub struct WriteCapture {
    roots_map: HashMap<MapData, FileKey, RootPolicy>,
    generations: Array<MapData, u64>,
    devs: HashMap<MapData, u32, RootCount>,
    totals: Array<MapData, RootCount>,
    paused: HashMap<MapData, u32, PausedTask>,
    lost: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    /// The registered roots and whether each pauses on sync.
    roots: BTreeMap<RootId, bool>,
    /// Where the capture is pinned, if it is.
    pinned: Option<PathBuf>,
    /// The programs' attachments, in attach order; empty while detached.
    links: Vec<Link>,
    // Keeps the programs and maps alive.
    ebpf: Ebpf,
}

/// One program's attachment to one tracepoint.
struct Link {
    held: Held,
    hook: Hook,
    /// The tracepoint (`sys_enter_write`, …).
    event: String,
}

/// Which part of the capture a link belongs to; detached in this order,
/// the reverse of the attach: a call that entered meanwhile still finds its
/// exit, and no verdict is remembered without the renames watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hook {
    Enter,
    Namespace,
    Exit,
}

/// How many links a fully attached capture holds: one per [`hooks`].
const HOOKED: usize = SYSCALLS.len() * 2 + NAMESPACE_HOOKS.len();

/// Every tracepoint the capture hooks, with its program, in attach order:
/// exits first (an enter without its exit would leave a stale entry per
/// call until the LRU evicts it), then the renames (a verdict remembered
/// before they are attached could outlive a rename), then the enters.
fn hooks() -> Vec<(&'static str, String, Hook)> {
    let exits = SYSCALLS
        .iter()
        .map(|(syscall, _)| (EXIT_PROGRAM, format!("sys_exit_{syscall}"), Hook::Exit));
    let renames = NAMESPACE_HOOKS
        .iter()
        .map(|(event, program)| (*program, (*event).to_owned(), Hook::Namespace));
    let enters = SYSCALLS
        .iter()
        .map(|(syscall, program)| (*program, format!("sys_enter_{syscall}"), Hook::Enter));
    exits.chain(renames).chain(enters).collect()
}

/// What keeps a [`Link`] attached.
enum Held {
    /// Pinned at the path in the capture's bpffs directory, so that it
    /// outlives the daemon.
    Pinned(PinnedLink, PathBuf),
    /// Pinned once, the pin now removed.
    Unpinned(#[allow(dead_code, reason = "held: dropping it ends the attachment")] PinnedLink),
    Owned(#[allow(dead_code, reason = "held: dropping it ends the attachment")] FdLink),
}

impl Link {
    /// Removes its pin (one already gone counts as removed), so that its
    /// descriptor is its last reference: the attachment ends when what is
    /// returned is dropped. A pin that cannot be removed keeps the program
    /// attached: the link comes back, to be counted and tried again.
    fn detach(self) -> Result<Link, (Link, std::io::Error)> {
        let Link { held, hook, event } = self;
        let held = match held {
            Held::Pinned(link, path) => match std::fs::remove_file(&path) {
                Ok(()) => Held::Unpinned(link),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Held::Unpinned(link),
                Err(error) => {
                    let held = Held::Pinned(link, path);
                    return Err((Link { held, hook, event }, error));
                }
            },
            held => held,
        };
        Ok(Link { held, hook, event })
    }
}

/// Links taken off a capture by [`WriteCapture::detach_later`]: dropping
/// them ends their attachments, enters first, then renames, then exits.
///
/// The kernel waits for an RCU grace period when a tracepoint loses its
/// last program, one tracepoint at a time: 2.8 s for the capture's 39
/// links released one after the other here, 1.5 s with each link released
/// in a thread of its own, as here.
pub struct DetachedLinks(Vec<Link>);

impl DetachedLinks {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for DetachedLinks {
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self.0);
        for hook in [Hook::Enter, Hook::Namespace, Hook::Exit] {
            let (these, rest): (Vec<Link>, Vec<Link>) =
                links.into_iter().partition(|link| link.hook == hook);
            links = rest;
            std::thread::scope(|scope| {
                for link in these {
                    let released = std::thread::Builder::new()
                        .name("halo-capture-detach".into())
                        .spawn_scoped(scope, move || drop(link));
                    // Without a thread, here (its drop waits, no more).
                    drop(released);
                }
            });
        }
    }
}

impl WriteCapture {
    /// Loads the capture with the default ring, excluding `exclude_tgid`
    /// (the daemon's own pid), and attaches it to the syscall tracepoints.
    /// Nothing is reported until a root is added.
    pub fn attach(exclude_tgid: u32) -> anyhow::Result<Self> {
        Self::attach_with(CaptureConfig {
            exclude_tgid,
            ..CaptureConfig::default()
        })
    }

    /// Loads the capture programs with offsets from the running kernel's BTF
    /// and attaches them to the syscall tracepoints.
    pub fn attach_with(config: CaptureConfig) -> anyhow::Result<Self> {
        let mut capture = Self::load_with(config)?;
        capture.set_attached(true)?;
        Ok(capture)
    }

    /// Loads the capture programs with offsets from the running kernel's BTF
    /// (the verifier checks them now) without attaching them: until
    /// [`WriteCapture::set_attached`], they cost the host's system calls
    /// nothing and report nothing.
    pub fn load_with(config: CaptureConfig) -> anyhow::Result<Self> {
        ensure!(
            config.ring_bytes.is_power_of_two() && config.ring_bytes >= 4096,
            "the capture ring's size must be a power of two of at least 4096 bytes, not {}",
            config.ring_bytes
        );
        check_tracepoint_layout().context("checking the syscall tracepoint formats")?;
        let btf = Btf::from_kernel().context("reading the kernel's BTF")?;
        let offsets = capture_offsets(&btf)?;
        let settings = CaptureSettings {
            exclude_tgid: config.exclude_tgid,
            _pad: 0,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CAPTURE_OFFSETS", &offsets, true)
            .override_global("CAPTURE_SETTINGS", &settings, true)
            .map_max_entries("CAPTURE_EVENTS", config.ring_bytes)
            .load(CAPTURE_OBJECT)
            .context("loading the write-capture object")?;
        let mut programs: Vec<&str> = SYSCALLS.iter().map(|(_, program)| *program).collect();
        programs.push(EXIT_PROGRAM);
        for (_, program) in NAMESPACE_HOOKS {
            if !programs.contains(&program) {
                programs.push(program);
            }
        }
        load_in_parallel(&mut ebpf, &programs)?;
        if let Some(dir) = &config.pin_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the bpffs directory {}", dir.display()))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the capture object has no {name} map"))
        };
        let roots_map = take("CAPTURE_ROOTS")?;
        let paused_map = take("CAPTURE_PAUSED")?;
        let generations_map = take("CAPTURE_GENERATIONS")?;
        let devs_map = take("CAPTURE_DEVS")?;
        let totals_map = take("CAPTURE_TOTALS")?;
        if let Some(dir) = &config.pin_dir {
            for (map, name) in [
                (&roots_map, ROOTS_PIN),
                (&paused_map, PAUSED_PIN),
                (&generations_map, GENERATIONS_PIN),
                (&devs_map, DEVS_PIN),
                (&totals_map, TOTALS_PIN),
            ] {
                let path = dir.join(name);
                map.pin(&path)
                    .with_context(|| format!("pinning a capture map at {}", path.display()))?;
            }
        }
        let roots_map = HashMap::try_from(roots_map)?;
        let paused = HashMap::try_from(paused_map)?;
        let generations = Array::try_from(generations_map)?;
        let devs = HashMap::try_from(devs_map)?;
        let totals = Array::try_from(totals_map)?;
        let lost = PerCpuArray::try_from(take("CAPTURE_LOST")?)?;
        let events = RingBuf::try_from(take("CAPTURE_EVENTS")?)?;
        Ok(WriteCapture {
            roots_map,
            generations,
            devs,
            totals,
            paused,
            lost,
            events,
            roots: BTreeMap::new(),
            pinned: config.pin_dir,
            links: Vec::new(),
            ebpf,
        })
    }

    /// Whether the programs are attached to every hooked tracepoint.
    pub fn attached(&self) -> bool {
        self.links.len() == HOOKED
    }

    /// Whether no program is attached anywhere.
    pub fn detached(&self) -> bool {
        self.links.is_empty()
    }

    /// Attaches the programs to the syscall tracepoints, or detaches them.
    ///
    /// Attached, they cost every hooked call on the host (writes anywhere,
    /// syncs, renames) a few hundred nanoseconds, and every other system
    /// call the kernel's slower path for traced tasks; detached, nothing,
    /// and nothing is reported or paused. Verdicts remembered before a
    /// detach do not outlive it: renames while detached go unseen. An
    /// attach that fails part way keeps what it attached, and the next one
    /// attaches the rest. A detach here waits for the kernel (see
    /// [`WriteCapture::detach_later`]).
    pub fn set_attached(&mut self, on: bool) -> anyhow::Result<()> {
        if on {
            if self.attached() {
                return Ok(());
            }
            return self.attach_links();
        }
        let (links, result) = self.detach_later();
        drop(links);
        result
    }

    /// Takes the links off the capture, enters first, then renames, then
    /// exits, and removes their pins: the capture counts as detached at
    /// once. The attachments end when the links returned are dropped,
    /// which waits for the kernel (a grace period per tracepoint), so a
    /// thread that must stay responsive drops them elsewhere. A pin that
    /// cannot be removed keeps its link, and every link of a later part:
    /// no enter is left without its exit.
    pub fn detach_later(&mut self) -> (DetachedLinks, anyhow::Result<()>) {
        let mut links = std::mem::take(&mut self.links);
        links.sort_by_key(|link| link.hook);
        let mut taken = Vec::new();
        let mut failed: Option<(Hook, std::io::Error)> = None;
        for link in links {
            if failed.as_ref().is_some_and(|(hook, _)| link.hook > *hook) {
                self.links.push(link);
                continue;
            }
            match link.detach() {
                Ok(link) => taken.push(link),
                Err((link, error)) => {
                    failed.get_or_insert((link.hook, error));
                    self.links.push(link);
                }
            }
        }
        let result = match failed {
            None => Ok(()),
            Some((_, error)) => {
                Err(anyhow::Error::from(error).context("removing a capture link's pin"))
            }
        };
        (DetachedLinks(taken), result)
    }

    fn attach_links(&mut self) -> anyhow::Result<()> {
        // Calls that entered under an earlier attachment and whose exit was
        // missed left records a new exit must not take for its own. Not
        // while enters of a partial attach still run: their calls' records
        // are good.
        if !self.links.iter().any(|link| link.hook == Hook::Enter) {
            bump_generation(&mut self.generations, GENERATION_ATTACH)
                .context("updating CAPTURE_GENERATIONS")?;
        }
        let mut roots_bumped = false;
        for (program, event, hook) in hooks() {
            if hook == Hook::Enter && !roots_bumped {
                // Verdicts remembered before (under earlier roots, or before
                // a detach that hid renames) are stale for the walks from
                // here on.
                bump_generation(&mut self.generations, GENERATION_ROOTS)
                    .context("updating CAPTURE_GENERATIONS")?;
                roots_bumped = true;
            }
            self.attach_link(program, &event, hook)?;
        }
        Ok(())
    }

    /// Attaches `name` to `event`, unless an earlier attach that failed
    /// part way did.
    fn attach_link(&mut self, name: &str, event: &str, hook: Hook) -> anyhow::Result<()> {
        if self.links.iter().any(|link| link.event == event) {
            return Ok(());
        }
        let program = tracepoint(&mut self.ebpf, name)?;
        let link = program.attach("syscalls", event).with_context(|| {
            format!("attaching {name} to syscalls:{event} (is tracefs mounted?)")
        })?;
        let link = FdLink::try_from(program.take_link(link)?)
            .with_context(|| format!("syscalls:{event} has no bpf link"))?;
        let held = match &self.pinned {
            Some(dir) => {
                let path = dir.join(format!("{LINK_PIN_PREFIX}{event}"));
                let pinned = link
                    .pin(&path)
                    .with_context(|| format!("pinning a link at {}", path.display()))?;
                Held::Pinned(pinned, path)
            }
            None => Held::Owned(link),
        };
        self.links.push(Link {
            held,
            hook,
            event: event.to_owned(),
        });
        Ok(())
    }

    /// Starts reporting changes to every file below the directory `dir`
    /// (same filesystem only: a filesystem mounted below it is a root of its
    /// own). With `sync_pause` (`sync = "fsync"`), a durability call on such
    /// a file stops the caller until [`WriteCapture::release`]. Adding a
    /// root again changes its `sync_pause`.
    pub fn add_root(&mut self, dir: &Path, sync_pause: bool) -> anyhow::Result<RootId> {
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        ensure!(
            meta.is_dir(),
            "{} is not a directory: only directories can be replicated roots",
            dir.display()
        );
        let root = RootId {
            st_dev: meta.dev(),
            ino: meta.ino(),
        };
        let policy = RootPolicy {
            flags: if sync_pause { ROOT_SYNC_PAUSE } else { 0 },
            _pad: 0,
        };
        self.roots_map
            .insert(root_key(root), policy, 0)
            .with_context(|| format!("adding {} to CAPTURE_ROOTS", dir.display()))?;
        self.roots.insert(root, sync_pause);
        self.write_counts()?;
        Ok(root)
    }

    /// Stops reporting changes below `root`, and resumes the tasks paused
    /// for it.
    pub fn remove_root(&mut self, root: RootId) -> anyhow::Result<()> {
        ensure!(
            self.roots.remove(&root).is_some(),
            "{root:?} is not a registered root"
        );
        self.roots_map
            .remove(&root_key(root))
            .with_context(|| format!("removing {root:?} from CAPTURE_ROOTS"))?;
        self.write_counts()?;
        for task in self.pending()? {
            if task.root == Some(root) {
                self.release(task.tid, task.seq)?;
            }
        }
        Ok(())
    }

    /// The registered roots, with their `sync_pause`.
    pub fn roots(&self) -> impl Iterator<Item = (RootId, bool)> + '_ {
        self.roots.iter().map(|(root, pause)| (*root, *pause))
    }

    /// Writes the per-device and total root counts the programs test first,
    /// and makes the verdicts the programs remembered under the old roots
    /// stale.
    fn write_counts(&mut self) -> anyhow::Result<()> {
        let roots: Vec<(u32, bool)> = self
            .roots
            .iter()
            .map(|(root, pause)| (st_dev_to_kernel(root.st_dev), *pause))
            .collect();
        write_root_counts(&mut self.devs, &mut self.totals, &roots)?;
        bump_roots_generation(&mut self.generations).context("updating CAPTURE_GENERATIONS")
    }

    /// The ring buffer's descriptor: readable when records wait, for the
    /// daemon's poll or epoll.
    pub fn ring_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Waits up to `timeout` for records; whether some are ready.
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<bool> {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(self.ring_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(ready) => Ok(ready > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(error) => Err(error).context("polling the capture ring"),
        }
    }

    /// The changes reported so far and not yet taken, in ring order (the
    /// order of the calls). Truncates by path are resolved here: those
    /// outside every root are dropped, those that cannot be resolved come
    /// back as [`Change::TruncatePath`]. An `msync(MS_SYNC)` comes after
    /// a [`Change::Mapped`] for each file under a root that the caller's
    /// shared mappings give the synced addresses.
    pub fn drain(&mut self) -> Vec<Captured> {
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(record) = parse_record(&item) {
                records.push(record);
            }
        }
        let mut drained = Vec::with_capacity(records.len());
        for record in records {
            let Some(mut captured) = record.to_captured() else {
                continue;
            };
            if captured.syscall == WriteKind::Msync {
                // What the caller stored through its mappings travels
                // before its msync is released, like a write's range.
                let (addr, len) = (record.event.offset, record.event.len);
                for range in mapped_ranges(captured.pid, addr, len, &self.roots) {
                    drained.push(Captured {
                        st_dev: range.st_dev,
                        ino: range.ino,
                        root: Some(range.root),
                        unresolved: false,
                        change: Change::Mapped {
                            offset: range.offset,
                            len: range.len,
                            path: range.path,
                        },
                        pause_refused: false,
                        ..captured.clone()
                    });
                }
            }
            if let Change::TruncatePath { path, size } = &captured.change {
                match resolve_truncate(captured.pid, captured.tid, path, &self.roots) {
                    Resolution::Under { st_dev, ino, root } => {
                        captured.st_dev = st_dev;
                        captured.ino = ino;
                        captured.root = Some(root);
                        captured.change = Change::Truncate { size: *size };
                    }
                    Resolution::Outside => continue,
                    Resolution::Unknown => {}
                }
            }
            drained.push(captured);
        }
        drained
    }

    /// Records the programs could not report because the ring buffer was
    /// full: the daemon must resync rather than trust the stream, and look
    /// at [`WriteCapture::pending`] for tasks paused by a lost sync record.
    pub fn lost(&self) -> anyhow::Result<u64> {
        Ok(self
            .lost
            .get(&0, 0)
            .context("reading CAPTURE_LOST")?
            .iter()
            .sum())
    }

    /// The tasks paused by a durability call and not yet released.
    pub fn pending(&self) -> anyhow::Result<Vec<Paused>> {
        let mut tasks = Vec::new();
        for entry in self.paused.iter() {
            let (tid, task) = entry.context("reading CAPTURE_PAUSED")?;
            tasks.push(paused_from(tid, &task));
        }
        tasks.sort_by_key(|task| task.tid);
        Ok(tasks)
    }

    /// Releases thread `tid` from the pause of sync record `seq`, which the
    /// peer has acknowledged: its process is resumed once none of its
    /// threads waits any more (one `SIGSTOP` holds them all).
    ///
    /// A release names the record because the map is keyed by thread: a
    /// late one (its thread already let go otherwise, and paused again by a
    /// later sync) must not resume the later sync, whose data the peer may
    /// not have.
    pub fn release(&mut self, tid: u32, seq: u64) -> anyhow::Result<Release> {
        let task = match self.paused.get(&tid, 0) {
            Ok(task) => task,
            Err(MapError::KeyNotFound) => return Ok(Release::NotPaused),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("looking up thread {tid} in CAPTURE_PAUSED"))
            }
        };
        if task.seq != seq {
            return Ok(Release::Superseded {
                paused_by: task.seq,
            });
        }
        self.paused
            .remove(&tid)
            .with_context(|| format!("removing thread {tid} from CAPTURE_PAUSED"))?;
        let waiting = self.waiting_threads(task.tgid, task.start)?;
        if waiting > 0 {
            return Ok(Release::StillHeld { waiting });
        }
        self.continue_process(task.tgid, task.start)?;
        Ok(Release::Resumed)
    }

    /// Resumes process `tgid` whatever its threads wait for (the peer is
    /// gone: stop waiting at once). Only a process this capture paused is
    /// signalled; how many of its threads were waiting.
    pub fn resume(&mut self, tgid: u32) -> anyhow::Result<usize> {
        let tasks: Vec<Paused> = self
            .pending()?
            .into_iter()
            .filter(|task| task.pid == tgid)
            .collect();
        for task in &tasks {
            let tid = task.tid;
            self.paused
                .remove(&tid)
                .with_context(|| format!("removing thread {tid} from CAPTURE_PAUSED"))?;
        }
        // Entries of a process that died stopped may share the pid with
        // the one that has it now: each start is its own process.
        let mut starts: Vec<u64> = tasks.iter().map(|task| task.start).collect();
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            self.continue_process(tgid, start)?;
        }
        Ok(tasks.len())
    }

    /// Resumes every paused process.
    pub fn resume_all(&mut self) -> anyhow::Result<usize> {
        let mut pids: Vec<u32> = self.pending()?.iter().map(|task| task.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let mut released = 0;
        for pid in pids {
            released += self.resume(pid)?;
        }
        Ok(released)
    }

    /// The live threads of process `tgid` (the one that started at
    /// `start`) still listed: an entry left by another process that had
    /// the pid and died stopped holds nothing.
    fn waiting_threads(&self, tgid: u32, start: u64) -> anyhow::Result<usize> {
        Ok(self
            .pending()?
            .iter()
            .filter(|task| task.pid == tgid && task.start == start)
            .filter(|task| thread_alive(tgid, task.tid))
            .count())
    }

    /// Sends `SIGCONT` to `tgid` (if it is still the process that started
    /// at `start`), then stops it again if a thread of it was paused
    /// meanwhile: its program listed it before raising its own `SIGSTOP`,
    /// which our `SIGCONT` may have discarded.
    fn continue_process(&self, tgid: u32, start: u64) -> anyhow::Result<()> {
        // Gone: nothing to resume.
        if !signal_process(tgid, start, Signal::SIGCONT)
            .with_context(|| format!("sending SIGCONT to {tgid}"))?
        {
            return Ok(());
        }
        let raced = self
            .pending()?
            .iter()
            .any(|task| task.pid == tgid && task.start == start && thread_alive(tgid, task.tid));
        if raced {
            signal_process(tgid, start, Signal::SIGSTOP)
                .with_context(|| format!("sending SIGSTOP to {tgid}"))?;
        }
        Ok(())
    }
}

impl Drop for WriteCapture {
    fn drop(&mut self) {
        // Detached first (in parallel: see DetachedLinks), so that nothing
        // is paused after the resume below.
        let (links, _) = self.detach_later();
        drop(links);
        // A clean end: nothing is left to hold once the daemon is gone (a
        // link whose pin could not be removed above goes with it).
        if let Some(dir) = &self.pinned {
            let _ = std::fs::remove_dir_all(dir);
        }
        drop(std::mem::take(&mut self.links));
        // Nobody would ever resume them once the maps are gone.
        if let Err(error) = self.resume_all() {
            tracing::warn!(error = %format!("{error:#}"), "could not resume paused writers");
        }
    }
}

/// `capture_noop`, a program that does nothing, attached to every
/// tracepoint the capture hooks: the baseline that `cargo xtask bench
/// mirror` measures the capture's cost against (what the kernel spends to
/// run any program there). The daemon never loads it; dropping it detaches
/// it.
pub struct NoopCapture {
    _links: Vec<FdLink>,
    _ebpf: Ebpf,
}

impl NoopCapture {
    /// Loads `capture_noop` and attaches it where the capture would be.
    pub fn attach() -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(CAPTURE_OBJECT)
            .context("loading the write-capture object")?;
        let program = tracepoint(&mut ebpf, "capture_noop")?;
        program.load().context("the kernel refused capture_noop")?;
        let mut links = Vec::new();
        for (_, event, _) in hooks() {
            let link = program
                .attach("syscalls", &event)
                .with_context(|| format!("attaching capture_noop to syscalls:{event}"))?;
            links.push(FdLink::try_from(program.take_link(link)?)?);
        }
        Ok(NoopCapture {
            _links: links,
            _ebpf: ebpf,
        })
    }
}

/// Loads `names`, spread over the machine's cores: the verifier checks
/// each program on its own, and the capture's enter programs take it 10
/// to 30 ms each (0.3 s in all here, 0.6 s on a busy machine), which a
/// daemon's start, and so a secondary's return, used to wait for on one
/// core.
fn load_in_parallel(ebpf: &mut Ebpf, names: &[&str]) -> anyhow::Result<()> {
    let mut programs: Vec<(&str, &mut TracePoint)> = Vec::with_capacity(names.len());
    for (name, program) in ebpf.programs_mut() {
        if names.contains(&name) {
            let tracepoint: &mut TracePoint = program
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            programs.push((name, tracepoint));
        }
    }
    for name in names {
        ensure!(
            programs.iter().any(|(found, _)| found == name),
            "the capture object has no {name} program"
        );
    }
    programs.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, programs.len().max(1));
    // Dealt round-robin in the order given, where the long ones (the
    // enter programs of the write calls) come first.
    let mut shares: Vec<Vec<(&str, &mut TracePoint)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, program) in programs.into_iter().enumerate() {
        shares[i % workers].push(program);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for (name, program) in share {
                        program
                            .load()
                            .with_context(|| format!("the kernel refused {name}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|handle| handle.join().expect("a program loader panicked"))
    })
}

/// The tracepoint program `name` of the capture object.
fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut TracePoint> {
    ebpf.program_mut(name)
        .with_context(|| format!("the capture object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not a tracepoint program"))
}

/// Whether thread `tid` of `tgid` still exists.
fn thread_alive(tgid: u32, tid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
}

/// Bumps `CAPTURE_GENERATIONS[GENERATION_ROOTS]` once the roots map holds
/// the change: a verdict the programs found under the old roots no longer
/// counts. Only the capture's owner writes this slot.
fn bump_roots_generation(generations: &mut Array<MapData, u64>) -> Result<(), MapError> {
    bump_generation(generations, GENERATION_ROOTS)
}

/// Adds one to `CAPTURE_GENERATIONS[index]`.
fn bump_generation(generations: &mut Array<MapData, u64>, index: u32) -> Result<(), MapError> {
    let current = generations.get(&index, 0)?;
    generations.set(index, current.wrapping_add(1), 0)
}

fn root_key(root: RootId) -> FileKey {
    FileKey {
        ino: root.ino,
        dev: st_dev_to_kernel(root.st_dev),
        _pad: 0,
    }
}

fn paused_from(tid: u32, task: &PausedTask) -> Paused {
    let st_dev = kernel_dev_to_st_dev(task.dev);
    Paused {
        tid,
        pid: task.tgid,
        seq: task.seq,
        root: (task.root != 0).then_some(RootId {
            st_dev,
            ino: task.root,
        }),
        ino: task.ino,
        start: task.start,
    }
}

/// The per-device (kernel `s_dev`) and total root counts of `roots`.
fn root_counts(roots: &[(u32, bool)]) -> (StdHashMap<u32, RootCount>, RootCount) {
    let mut per_dev: StdHashMap<u32, RootCount> = StdHashMap::new();
    let mut totals = RootCount::default();
    for &(dev, sync_pause) in roots {
        let count = per_dev.entry(dev).or_default();
        for count in [count, &mut totals] {
            count.roots += 1;
            count.sync_roots += u32::from(sync_pause);
        }
    }
    (per_dev, totals)
}

/// Writes the counts of `roots` (kernel `s_dev`, `sync_pause`) into a
/// capture's `CAPTURE_DEVS` and `CAPTURE_TOTALS`, removing the devices
/// that have none left.
fn write_root_counts(
    devs: &mut HashMap<MapData, u32, RootCount>,
    totals: &mut Array<MapData, RootCount>,
    roots: &[(u32, bool)],
) -> anyhow::Result<()> {
    let (per_dev, total) = root_counts(roots);
    let stale: Vec<u32> = devs
        .keys()
        .filter_map(Result::ok)
        .filter(|dev| !per_dev.contains_key(dev))
        .collect();
    for (dev, count) in &per_dev {
        devs.insert(dev, count, 0)
            .context("updating CAPTURE_DEVS")?;
    }
    for dev in stale {
        devs.remove(&dev).context("updating CAPTURE_DEVS")?;
    }
    totals.set(0, total, 0).context("updating CAPTURE_TOTALS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_is_one_tracepoint_in_attach_order() {
        let hooks = hooks();
        assert_eq!(hooks.len(), HOOKED);
        let mut events: Vec<&str> = hooks.iter().map(|(_, event, _)| event.as_str()).collect();
        events.sort_unstable();
        events.dedup();
        assert_eq!(events.len(), HOOKED, "no tracepoint twice");
        let order: Vec<Hook> = hooks.iter().map(|(_, _, hook)| *hook).collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|hook| std::cmp::Reverse(*hook));
        assert_eq!(order, sorted, "exits, then renames, then enters");
    }

    #[test]
    fn root_counts_are_per_kernel_device_and_in_total() {
        let sda1 = libc::makedev(8, 1);
        let nvme = libc::makedev(259, 3);
        let roots = [
            (st_dev_to_kernel(sda1), true),
            (st_dev_to_kernel(sda1), false),
            (st_dev_to_kernel(nvme), false),
        ];
        let (per_dev, totals) = root_counts(&roots);
        assert_eq!(
            per_dev[&((8 << 20) | 1)],
            RootCount {
                roots: 2,
                sync_roots: 1
            }
        );
        assert_eq!(
            per_dev[&((259 << 20) | 3)],
            RootCount {
                roots: 1,
                sync_roots: 0
            }
        );
        assert_eq!(
            totals,
            RootCount {
                roots: 3,
                sync_roots: 1
            }
        );
        assert_eq!(root_counts(&[]).1, RootCount::default());
    }

    #[test]
    fn a_capture_pinned_before_paused_tasks_had_a_start_is_told_by_its_value_size() {
        // PinnedPaused::open picks the layout by the map's value size.
        assert_eq!(std::mem::size_of::<PausedTaskWithoutStart>(), 32);
        assert_eq!(std::mem::size_of::<PausedTask>(), 40);
        let old = PausedTaskWithoutStart {
            seq: 3,
            root: 9,
            ino: 4,
            tgid: 77,
            dev: 8,
        };
        let task = PausedTask::from(old);
        assert_eq!((task.seq, task.root, task.ino), (3, 9, 4));
        assert_eq!(
            (task.tgid, task.dev, task.start),
            (77, 8, 0),
            "start unknown"
        );
    }

    #[test]
    fn a_paused_entry_without_root_is_a_sync_of_every_root() {
        let task = PausedTask {
            seq: 7,
            root: 0,
            ino: 0,
            tgid: 10,
            dev: 0,
            start: 12_345,
        };
        assert_eq!(
            paused_from(11, &task),
            Paused {
                tid: 11,
                pid: 10,
                seq: 7,
                root: None,
                ino: 0,
                start: 12_345,
            }
        );
    }
}
