//! One write capture per daemon, shared by its mirror modules: a thread
//! waits on the capture's ring and routes each record to the tracker of
//! the module whose directory it names.
//!
//! A durability call (`Change::Sync { paused: true }`) stops its caller
//! until the module's peer acknowledged everything written before it. When
//! no session can acknowledge it (no tracker takes the record, no session,
//! the session ended), the caller goes on without an acknowledgement only
//! once its module's driver allows it ([`CaptureHub::hold_unacknowledged`]:
//! the module serves ALONE on a generation its witness knows, see
//! docs/mirror-durability.md); until then it stays stopped, and a driver
//! that stops serving instead kills it ([`CaptureHub::discard_held`]): a
//! durable write is never acknowledged on data that may be overtaken.
//!
//! The programs are attached only while a module needs them: a tracker
//! takes a root's records (the module serves) or a root pauses durable
//! writes. A secondary, or a node whose modules are stopped, runs with the
//! capture loaded but detached, so that its system calls pay nothing for
//! it (docs/mirror-durability.md has the figures).
//!
//! The capture is pinned in bpffs: when the daemon dies, its programs stay
//! attached (if a module served, or stopped less than 5 s before) and
//! keep stopping durable writers under
//! the roots it paused (nobody acknowledges their writes, so nobody resumes
//! them). The next daemon loads its own capture first, then each mirror
//! module takes its
//! directories over from the dead daemon's capture once the application
//! that daemon started is stopped ([`CaptureHub::take_over`]). The writers
//! it still held become *orphans*: they are resumed only when their module
//! serves the data they wrote ([`CaptureHub::release_orphans`]).

use std::{
    collections::{HashMap, HashSet},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tracing::{info, trace, warn};

use crate::ebpf::capture::{
    capture_pins, signal_process, stopped, CaptureConfig, Captured, Change, DetachedLinks, Paused,
    PreviousCapture, RootId, SyncScope, WriteCapture,
};

/// Where a root's records go.
struct Route {
    tx: Option<mpsc::Sender<Captured>>,
    wake: Option<Arc<Wake>>,
}

/// An eventfd a tracker polls beside inotify, and whether records were
/// lost since the tracker last looked.
pub struct Wake(std::os::fd::OwnedFd, AtomicBool);

impl Wake {
    pub fn new() -> std::io::Result<Arc<Self>> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Arc::new(Wake(
            unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            AtomicBool::new(false),
        )))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Whether the capture lost records since the last call.
    pub fn overflowed(&self) -> bool {
        self.1.swap(false, Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from an eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

struct Inner {
    capture: WriteCapture,
    routes: HashMap<RootId, Route>,
    /// Captures of daemons that died, still pinned (and attached if their
    /// modules served), holding the roots no module has taken over yet.
    previous: Vec<PreviousCapture>,
    /// Tasks those captures stopped and nobody acknowledged.
    orphans: Vec<Paused>,
    /// Roots whose paused writers are not released without an
    /// acknowledgement (every root, until its driver says otherwise).
    held: HashSet<RootId>,
    /// Why the capture is not attached (or detached) as the modules need,
    /// while that lasts.
    attach_error: Option<String>,
    /// The threads releasing the links of earlier detaches.
    releasing: Vec<std::thread::JoinHandle<()>>,
    /// Links of a detach that no thread could be started for: the routing
    /// thread releases them, without the lock.
    unreleased: Vec<DetachedLinks>,
    /// The routing thread is releasing such links.
    releasing_inline: bool,
    /// Since when no module needs the attached capture.
    unwanted_since: Option<Instant>,
}

/// What [`Inner::settle_attachment`] leaves to its caller.
#[derive(PartialEq, Eq)]
enum Settled {
    Done,
    /// A release is still running: wait a little without the hub's lock,
    /// then settle again.
    Wait,
}

/// How long the capture stays attached once no module needs it.
const DETACH_AFTER: Duration = Duration::from_secs(5);

impl Inner {
    /// Attaches the capture while a module needs it (a tracker takes its
    /// records, or its durability calls pause), and detaches it otherwise:
    /// a node that serves no mirror module (a secondary, a stopped module)
    /// then pays nothing for it on any system call. Called on every route
    /// change and by the routing thread every 100 ms, which retries an
    /// attach or a detach that failed, and detaches [`DETACH_AFTER`] the
    /// last need.
    ///
    /// An attach must wait for the release of an earlier detach's links
    /// (the kernel takes a program once per tracepoint): with `may_wait`,
    /// the caller is told to wait without the hub's lock and call again;
    /// without, the attach is left to a later call.
    fn settle_attachment(&mut self, may_wait: bool) -> Settled {
        let wanted = self.routes.values().any(|route| route.tx.is_some())
            || self.capture.roots().any(|(_, pause)| pause);
        if wanted {
            self.unwanted_since = None;
            if self.capture.attached() {
                self.attach_error = None;
                return Settled::Done;
            }
            self.releasing.retain(|release| !release.is_finished());
            if !self.releasing.is_empty() || !self.unreleased.is_empty() || self.releasing_inline {
                return if may_wait {
                    Settled::Wait
                } else {
                    Settled::Done
                };
            }
        } else {
            if self.capture.detached() {
                self.attach_error = None;
                return Settled::Done;
            }
            // A node that stops serving may serve again at once (a lease
            // regained): the links of a detach are only gone a while after
            // it, and an attach must wait for that.
            let since = *self.unwanted_since.get_or_insert_with(Instant::now);
            if since.elapsed() < DETACH_AFTER {
                return Settled::Done;
            }
        }
        let result = if wanted {
            self.capture.set_attached(true)
        } else {
            let (links, result) = self.capture.detach_later();
            if !links.is_empty() {
                match release_detached(links) {
                    Ok(release) => self.releasing.push(release),
                    Err(links) => self.unreleased.push(links),
                }
            }
            result
        };
        match result {
            Ok(()) if wanted => {
                info!("write capture attached: a mirror module serves here");
                self.attach_error = None;
            }
            Ok(()) => {
                info!("write capture detached: no mirror module serves here, so it costs this host's system calls nothing");
                self.attach_error = None;
            }
            Err(error) => {
                let error = format!("{error:#}");
                if self.attach_error.as_ref() != Some(&error) {
                    warn!(%error, wanted, "cannot change the write capture's attachment; retrying");
                }
                self.attach_error = Some(error);
            }
        }
        Settled::Done
    }

    /// Whether a writer paused for `root` (`None`: every root) must wait
    /// for an acknowledgement.
    fn holds(&self, root: Option<RootId>) -> bool {
        match root {
            Some(root) => self.held.contains(&root),
            None => !self.held.is_empty(),
        }
    }

    /// Releases `tid` from the pause of record `seq` without an
    /// acknowledgement, unless its root holds it.
    fn release_unacknowledged(&mut self, tid: u32, seq: u64, root: Option<RootId>) {
        if !self.holds(root) {
            self.release(tid, seq, "unacknowledged, allowed");
        }
    }

    /// Releases `tid` from the pause of record `seq`, saying why.
    fn release(&mut self, tid: u32, seq: u64, why: &str) {
        match self.capture.release(tid, seq) {
            Ok(done) => trace!(tid, seq, ?done, why, "paused writer released"),
            Err(error) => {
                warn!(tid, seq, error = %format!("{error:#}"), "cannot resume a paused writer")
            }
        }
    }
}

/// The daemon's write capture and its routing thread.
pub struct CaptureHub {
    inner: Arc<Mutex<Inner>>,
    /// The capture's ring buffer, readable when records wait.
    ring: RawFd,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptureHub {
    /// Loads the capture programs, pinned for node `node` (attached only
    /// while a module needs them), and starts routing. `dirs` are the replicated directories of this
    /// daemon's mirror modules: a dead daemon's capture stops holding the
    /// others at once (nobody replicates them any more).
    pub fn start(node: &str, dirs: &[PathBuf]) -> anyhow::Result<Arc<Self>> {
        crate::ebpf::ensure_mounted("bpf", "/sys/fs/bpf")?;
        let base = capture_pins(node);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let own = base.join(format!("{}-{started}", std::process::id()));
        let previous = PreviousCapture::find(&base, &own);
        for capture in &previous {
            if capture.attached() || !capture.paused_tasks().is_empty() {
                warn!(
                    pins = %capture.dir().display(),
                    roots = capture.roots().len(),
                    attached = capture.attached(),
                    "a daemon that died left its write capture pinned: it holds durable writers until each mirror module has stopped the application that daemon started"
                );
            }
        }
        // Loaded (the verifier and the tracepoint formats checked now), and
        // attached only while a module needs it.
        let capture = WriteCapture::load_with(CaptureConfig {
            exclude_tgid: std::process::id(),
            pin_dir: Some(own),
            ..CaptureConfig::default()
        })?;
        let mut inner = Inner {
            capture,
            routes: HashMap::new(),
            previous,
            orphans: Vec::new(),
            held: HashSet::new(),
            attach_error: None,
            releasing: Vec::new(),
            unreleased: Vec::new(),
            releasing_inline: false,
            unwanted_since: None,
        };
        let replicated: Vec<RootId> = dirs
            .iter()
            .filter_map(|dir| std::fs::metadata(dir).ok())
            .map(|meta| RootId {
                st_dev: meta.dev(),
                ino: meta.ino(),
            })
            .collect();
        let unclaimed: Vec<RootId> = inner
            .previous
            .iter()
            .flat_map(PreviousCapture::roots)
            .filter(|root| !replicated.contains(root))
            .collect();
        if !unclaimed.is_empty() {
            take_over(&mut inner, &unclaimed);
            let resumed = release_orphans(&mut inner, &unclaimed, replicated.is_empty());
            if !resumed.is_empty() {
                info!(pids = ?resumed, "resumed writers a dead daemon held below directories no module replicates any more");
            }
        }
        let capture = &inner.capture;
        let ring = capture.ring_fd().as_raw_fd();
        let inner = Arc::new(Mutex::new(inner));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let inner = Arc::clone(&inner);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("halo-capture".into())
                .spawn(move || route(&inner, ring, &stop))?
        };
        Ok(Arc::new(CaptureHub {
            inner,
            ring,
            stop,
            thread: Some(thread),
        }))
    }

    /// Starts capturing below `dir`; records are dropped until [`CaptureHub::route`].
    pub fn add_root(&self, dir: &Path) -> anyhow::Result<RootId> {
        let mut inner = self.inner.lock().expect("capture hub");
        let root = inner.capture.add_root(dir, false)?;
        inner.held.insert(root);
        inner.routes.entry(root).or_insert(Route {
            tx: None,
            wake: None,
        });
        Ok(root)
    }

    /// Sends `root`'s records to `tx` (waking `wake`), or drops them (and
    /// releases paused callers) with `None`; turns the durability pause on
    /// or off for `dir`. The capture is attached while some root has a
    /// route or a pause, detached otherwise ([`CaptureHub::attach_error`]
    /// says when it cannot be).
    pub fn route(
        &self,
        root: RootId,
        dir: &Path,
        target: Option<(mpsc::Sender<Captured>, Arc<Wake>)>,
        pause: bool,
    ) {
        let mut inner = self.inner.lock().expect("capture hub");
        if let Err(error) = inner.capture.add_root(dir, pause) {
            warn!(dir = %dir.display(), error = %format!("{error:#}"), "cannot change the capture's pause policy");
        }
        let (tx, wake) = match target {
            Some((tx, wake)) => (Some(tx), Some(wake)),
            None => (None, None),
        };
        inner.routes.insert(root, Route { tx, wake });
        if !pause && !inner.holds(Some(root)) {
            release_paused_under(&mut inner, root);
        }
        // An attach that waits for a release waits here, before the caller
        // goes on (it may be about to start the application), but without
        // the lock: the routing and the other modules go on meanwhile.
        while inner.settle_attachment(true) == Settled::Wait {
            drop(inner);
            std::thread::sleep(Duration::from_millis(10));
            inner = self.inner.lock().expect("capture hub");
        }
    }

    /// Why the capture is not attached while a module needs it (then
    /// nothing is captured nor paused; it is retried every 100 ms), or not
    /// detached while none does.
    pub fn attach_error(&self) -> Option<String> {
        self.inner.lock().expect("capture hub").attach_error.clone()
    }

    /// Whether writers paused under `roots` must wait for an acknowledgement
    /// (`hold`), or may go on without one (their module serves alone on a
    /// generation its witness knows): then those waiting are released now.
    pub fn hold_unacknowledged(&self, roots: &[RootId], hold: bool) {
        let mut inner = self.inner.lock().expect("capture hub");
        for root in roots {
            if hold {
                inner.held.insert(*root);
            } else {
                inner.held.remove(root);
                release_paused_under(&mut inner, *root);
            }
        }
    }

    /// Lets the thread `tid` go on from the pause of record `seq` although
    /// no peer acknowledged its sync (the session ended): only if its root
    /// does not hold it.
    pub fn release_unacknowledged(&self, tid: u32, seq: u64) {
        let mut inner = self.inner.lock().expect("capture hub");
        let root = match inner.capture.pending() {
            Ok(pending) => match pending.iter().find(|p| p.tid == tid && p.seq == seq) {
                Some(paused) => paused.root,
                None => return,
            },
            Err(error) => {
                warn!(tid, error = %format!("{error:#}"), "cannot read the paused writers");
                return;
            }
        };
        inner.release_unacknowledged(tid, seq, root);
    }

    /// Kills the processes still held under `roots` (and those of syncs of
    /// every root) without an acknowledgement: their module stopped serving,
    /// so their durable writes may be overtaken by the peer's data and must
    /// never be reported durable. The stop script normally killed them
    /// already; this catches a process that survived it. Returns the pids.
    pub fn discard_held(&self, roots: &[RootId]) -> Vec<u32> {
        let mut inner = self.inner.lock().expect("capture hub");
        let Ok(pending) = inner.capture.pending() else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for paused in pending {
            let ours = paused.root.is_none_or(|root| roots.contains(&root));
            if ours && inner.holds(paused.root) {
                if signal_process(paused.pid, paused.start, Signal::SIGKILL) == Ok(true) {
                    killed.push(paused.pid);
                }
                inner.release(paused.tid, paused.seq, "killed");
            }
        }
        killed.sort_unstable();
        killed.dedup();
        killed
    }

    /// Takes `roots` over from the captures of daemons that died: they stop
    /// holding writers below them. Call it once the application a dead
    /// daemon may have started is stopped: until then its durable writes
    /// must stay held. The tasks they held become orphans.
    pub fn take_over(&self, roots: &[RootId]) {
        let mut inner = self.inner.lock().expect("capture hub");
        take_over(&mut inner, roots);
    }

    /// Resumes the orphans held for `roots` (and those of syncs of every
    /// root): call it only when this node serves the data they wrote.
    /// Returns the pids of the live ones resumed.
    pub fn release_orphans(&self, roots: &[RootId]) -> Vec<u32> {
        let mut inner = self.inner.lock().expect("capture hub");
        release_orphans(&mut inner, roots, true)
    }

    /// Kills the orphans held for `roots` (and those of syncs of every
    /// root) and forgets them: their module takes its peer's data, so their
    /// durable writes are lost and must never be reported durable. Returns
    /// the pids of those that were still alive.
    pub fn discard_orphans(&self, roots: &[RootId]) -> Vec<u32> {
        let mut inner = self.inner.lock().expect("capture hub");
        let (discard, keep): (Vec<Paused>, Vec<Paused>) = std::mem::take(&mut inner.orphans)
            .into_iter()
            .partition(|task| task.root.is_none_or(|root| roots.contains(&root)));
        inner.orphans = keep;
        // Only a process still stopped and still the one paused: a gone
        // one's pid may be reused.
        signal_each(&discard, Signal::SIGKILL, stopped)
    }

    /// The capture's ring buffer, for a tracker's poll: a tracker that
    /// routes the ring itself ([`CaptureHub::forward_now`]) when it is
    /// readable takes a durability call's record without waiting for the
    /// routing thread to wake.
    pub fn ring_fd(&self) -> RawFd {
        self.ring
    }

    /// Routes what the capture's ring holds now, before returning: every
    /// write that returned before this call is then in its tracker's
    /// channel (a record enters the ring before its syscall returns).
    pub fn forward_now(&self) {
        forward(&mut self.inner.lock().expect("capture hub"));
    }

    /// Lets the thread `tid` go on from the pause of record `seq` (its
    /// durability call is acknowledged).
    pub fn release(&self, tid: u32, seq: u64) {
        self.inner
            .lock()
            .expect("capture hub")
            .release(tid, seq, "acknowledged");
    }
}

/// Sends `signal` once to each process of `tasks` for which `first` holds
/// (each pid and start once), if it is still the process that was paused;
/// the pids signalled.
fn signal_each(tasks: &[Paused], signal: Signal, first: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut processes: Vec<(u32, u64)> = tasks.iter().map(|t| (t.pid, t.start)).collect();
    processes.sort_unstable();
    processes.dedup();
    let mut pids: Vec<u32> = processes
        .into_iter()
        .filter(|(pid, start)| first(*pid) && signal_process(*pid, *start, signal) == Ok(true))
        .map(|(pid, _)| pid)
        .collect();
    pids.dedup();
    pids
}

fn take_over(inner: &mut Inner, roots: &[RootId]) {
    for capture in &mut inner.previous {
        for root in roots {
            match capture.take_over(*root) {
                Ok(tasks) => inner.orphans.extend(tasks),
                Err(error) => {
                    warn!(pins = %capture.dir().display(), error = %format!("{error:#}"), "cannot take a directory over from a dead daemon's capture")
                }
            }
        }
    }
    let (done, held): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.previous)
        .into_iter()
        .partition(|capture| capture.roots().is_empty());
    inner.previous = held;
    for capture in done {
        let dir = capture.dir().to_owned();
        match capture.retire() {
            Ok(tasks) => {
                info!(pins = %dir.display(), "detached the capture of a daemon that died");
                inner.orphans.extend(tasks);
            }
            Err(error) => {
                warn!(pins = %dir.display(), error = %format!("{error:#}"), "cannot detach a dead daemon's capture")
            }
        }
    }
}

/// Sends `SIGCONT` to the orphans held for `roots` (and, with `every_root`,
/// to those of syncs of every root) and forgets them; the pids of the live
/// ones.
fn release_orphans(inner: &mut Inner, roots: &[RootId], every_root: bool) -> Vec<u32> {
    let (release, keep): (Vec<Paused>, Vec<Paused>) = std::mem::take(&mut inner.orphans)
        .into_iter()
        .partition(|task| match task.root {
            Some(root) => roots.contains(&root),
            None => every_root,
        });
    inner.orphans = keep;
    // A gone process is not resumed, nor another with its pid.
    signal_each(&release, Signal::SIGCONT, |_| true)
}

fn release_paused_under(inner: &mut Inner, root: RootId) {
    let Ok(pending) = inner.capture.pending() else {
        return;
    };
    for paused in pending {
        if paused.root.is_none() || paused.root == Some(root) {
            inner.release(paused.tid, paused.seq, "not held");
        }
    }
}

impl Drop for CaptureHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(mut inner) = self.inner.lock() {
            let _ = inner.capture.resume_all();
            let held: Vec<u32> = inner.orphans.iter().map(|task| task.pid).collect();
            if !held.is_empty() {
                warn!(pids = ?held, "writers a dead daemon held stay stopped: their durable writes were never acknowledged");
            }
        }
    }
}

fn route(hub: &Mutex<Inner>, ring: RawFd, stop: &AtomicBool) {
    let mut last_lost = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut poll = [libc::pollfd {
            fd: ring,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, 100) };
        let mut inner = hub.lock().expect("capture hub");
        if ready > 0 {
            forward(&mut inner);
        }
        inner.settle_attachment(false);
        let unreleased = std::mem::take(&mut inner.unreleased);
        inner.releasing_inline = !unreleased.is_empty();
        if let Ok(lost) = inner.capture.lost() {
            if lost > last_lost {
                for route in inner.routes.values() {
                    if let Some(wake) = &route.wake {
                        wake.1.store(true, Ordering::Relaxed);
                        wake.ring();
                    }
                }
                info!(
                    lost = lost - last_lost,
                    "the capture ring was full: the inotify safety net covers the lost writes"
                );
                last_lost = lost;
            }
        }
        drop(inner);
        if !unreleased.is_empty() {
            drop(unreleased);
            hub.lock().expect("capture hub").releasing_inline = false;
        }
        if ready < 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Ends the attachments of links a detach took off the capture, in a
/// thread of its own: the kernel waits for a grace period per tracepoint
/// (1.5 to 3 s in all here), which must not hold up a module's driver nor
/// the routing. The links come back if no thread can be started.
fn release_detached(links: DetachedLinks) -> Result<std::thread::JoinHandle<()>, DetachedLinks> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("halo-capture-detach".into())
        .spawn(move || {
            if let Ok(links) = rx.recv() {
                drop::<DetachedLinks>(links);
                trace!(elapsed = ?started.elapsed(), "capture links released");
            }
        });
    match spawned {
        Ok(release) => match tx.send(links) {
            Ok(()) => Ok(release),
            Err(mpsc::SendError(links)) => Err(links),
        },
        Err(error) => {
            warn!(%error, "cannot start a thread to release the capture's links: the routing thread releases them");
            Err(links)
        }
    }
}

/// Routes every record the capture's ring holds to its tracker.
fn forward(inner: &mut Inner) {
    let records = inner.capture.drain();
    let mut woken: Vec<Arc<Wake>> = Vec::new();
    for record in records {
        let targets: Vec<RootId> = match (&record.change, record.root) {
            (_, Some(root)) => vec![root],
            // Every-root syncs go to every root (of the device).
            (Change::Sync { scope, .. }, None) => inner
                .routes
                .keys()
                .filter(|r| *scope == SyncScope::AllRoots || r.st_dev == record.st_dev)
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        if record.pause_refused {
            warn!(
                pid = record.pid,
                tid = record.tid,
                "the kernel refused to stop a durability call (bpf_send_signal failed): its caller went on before the peer had its data"
            );
        }
        let paused = matches!(record.change, Change::Sync { paused: true, .. });
        let mut taken = false;
        for root in targets {
            if let Some(Route {
                tx: Some(tx),
                wake: Some(wake),
            }) = inner.routes.get(&root)
            {
                if tx.send(record.clone()).is_ok() {
                    taken = true;
                    if !woken.iter().any(|w| Arc::ptr_eq(w, wake)) {
                        woken.push(Arc::clone(wake));
                    }
                }
            }
        }
        if paused && !taken {
            inner.release_unacknowledged(record.tid, record.seq, record.root);
        }
    }
    for wake in woken {
        wake.ring();
    }
}
