//! The heartbeat thread: sends this node's frame on every heartbeat network
//! each pulse, reads, authenticates and de-duplicates the peers' frames, and
//! runs the failure detector.
//!
//! It is a plain OS thread at raised (real-time) priority rather than a tokio
//! task, so that a busy runtime, a slow script or an overloaded machine does
//! not delay heartbeats; and it reads every waiting frame before each
//! detector tick, so a stall of this process is never blamed on a peer.

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage},
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::cluster::{
    detector::{FailureDetector, Liveness},
    frame::{cluster_id, HeartbeatFrame, ModuleReport},
    instant::{self, Placements},
    keys::{KeyUsed, MacKey},
    replay::ReplayGuard,
};
use crate::ebpf::farm::{monotonic_ns, wall_ns};

/// One heartbeat network as the thread sees it.
#[derive(Debug, Clone)]
pub struct HeartbeatNetwork {
    pub name: String,
    /// Time between two frames on this network.
    pub pulse: Duration,
    /// Silence after which this network has lost a peer.
    pub timeout: Duration,
    /// This node's address on the network (bound).
    pub local: SocketAddr,
    /// Every peer's address on the network, by peer name.
    pub peers: Vec<(String, SocketAddr)>,
}

/// What the heartbeat thread needs to run.
#[derive(Debug, Clone)]
pub struct HeartbeatSetup {
    pub cluster: String,
    pub node: String,
    pub epoch: u64,
    pub networks: Vec<HeartbeatNetwork>,
    pub key: MacKey,
    /// Lowest acceptable epoch per peer (persisted from earlier runs).
    pub epoch_floors: HashMap<String, u64>,
}

/// What the heartbeat thread tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    Liveness(Liveness),
    /// A peer's latest module reports (sent with every accepted frame whose
    /// content changed).
    Reports {
        peer: String,
        modules: Vec<ModuleReport>,
        /// The powers the peer announces for its farm modules.
        powers: BTreeMap<String, u32>,
    },
    /// A peer restarted its daemon: its new epoch should be persisted.
    NewEpoch {
        peer: String,
        epoch: u64,
    },
}

/// Counters of the heartbeat path, shared with the API and metrics.
#[derive(Debug, Default)]
pub struct HeartbeatStats {
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub received: AtomicU64,
    pub late_ticks: AtomicU64,
    /// Dropped frames by reason (`malformed`, `forged`, `replayed`, …).
    pub rejected: Mutex<HashMap<&'static str, u64>>,
    /// Accepted and lost frames, by peer and network name.
    pub links: Mutex<BTreeMap<(String, String), LinkFrames>>,
}

/// The frames of one peer on one network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFrames {
    pub accepted: u64,
    pub lost: u64,
    /// Of the accepted frames, those signed with the accepted secret
    /// (`cluster.accept_secret_file`), not this node's signing one.
    pub accepted_secret: u64,
    /// The epoch and sequence number of the latest accepted frame.
    last: Option<(u64, u64)>,
}

impl LinkFrames {
    /// Counts an accepted frame, and the frames lost since the previous one.
    /// The sender numbers its detector ticks (its shortest pulse, `tick`)
    /// and sends on a network every `pulse`, so a gap of `n` sequence
    /// numbers spans `n · tick / pulse` of that network's frames.
    fn accept(&mut self, epoch: u64, seq: u64, tick: Duration, pulse: Duration, key: KeyUsed) {
        self.accepted += 1;
        if key == KeyUsed::Accepted {
            self.accepted_secret += 1;
        }
        if let Some((last_epoch, last_seq)) = self.last {
            if epoch == last_epoch && seq > last_seq {
                let span = (seq - last_seq) as u128 * tick.as_micros();
                let pulse = pulse.as_micros().max(1);
                let frames = ((span + pulse / 2) / pulse) as u64;
                self.lost += frames.saturating_sub(1);
            }
        }
        self.last = Some((epoch, seq));
    }
}

impl HeartbeatStats {
    /// A copy of the per-link counters.
    pub fn links(&self) -> BTreeMap<(String, String), LinkFrames> {
        self.links.lock().expect("stats lock").clone()
    }

    fn reject(&self, reason: &'static str) {
        let mut rejected = self.rejected.lock().expect("stats lock");
        *rejected.entry(reason).or_default() += 1;
    }

    /// A copy of the per-reason drop counters.
    pub fn rejected(&self) -> HashMap<&'static str, u64> {
        self.rejected.lock().expect("stats lock").clone()
    }
}

/// Whether this process was paused long enough for its peers to lose it
/// (a frozen VM, SIGSTOP, a CPU-starved cgroup), as seen by the heartbeat
/// thread: it beats at least every tick, so a gap between two beats longer
/// than `limit` (half the shortest network timeout) is a pause. The module
/// drivers ask it before each input: after a pause, a peer's last report
/// may describe a past the peer has left (it may have taken over), so the
/// machines hear `PeerStale` and wait for a fresh report, which the thread
/// forwards even when unchanged.
#[derive(Debug)]
pub struct PauseWatch {
    origin: Instant,
    limit: Duration,
    /// Nanoseconds since `origin` of the thread's last beat.
    last_beat: AtomicU64,
    /// Pauses the thread saw.
    pauses: AtomicU64,
    /// A driver asked for every peer's next report to be forwarded.
    refresh: AtomicBool,
}

impl PauseWatch {
    pub fn new(limit: Duration) -> Self {
        let origin = Instant::now();
        PauseWatch {
            origin,
            limit,
            last_beat: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            refresh: AtomicBool::new(false),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// The heartbeat thread is alive at `now`; true if it had been silent
    /// for longer than the limit (a pause, now counted).
    fn beat(&self, now: Instant) -> bool {
        let now = self.nanos(now);
        let last = self.last_beat.swap(now, Ordering::AcqRel);
        let paused = now.saturating_sub(last) > self.limit.as_nanos() as u64;
        if paused {
            self.pauses.fetch_add(1, Ordering::AcqRel);
        }
        paused
    }

    /// Whether a driver that has seen `seen` pauses is up to date: no pause
    /// since, none under way.
    pub fn settled(&self, seen: u64) -> bool {
        let silent = self
            .nanos(Instant::now())
            .saturating_sub(self.last_beat.load(Ordering::Acquire));
        self.pauses.load(Ordering::Acquire) <= seen && silent <= self.limit.as_nanos() as u64
    }

    /// For a driver, before it handles an input: whether a pause happened
    /// since its last call (`seen` keeps its count), or is happening (the
    /// thread has not beaten for longer than the limit: it is the driver
    /// that woke first). Either way the thread forwards every peer's next
    /// report.
    pub fn paused_since(&self, seen: &mut u64) -> bool {
        let pauses = self.pauses.load(Ordering::Acquire);
        let silent = self
            .nanos(Instant::now())
            .saturating_sub(self.last_beat.load(Ordering::Acquire));
        let behind = silent > self.limit.as_nanos() as u64;
        let paused = pauses != *seen || behind;
        // A pause still under way is counted by the thread when it beats
        // again: take that count as seen now, not as a second pause.
        *seen = if behind { pauses + 1 } else { pauses };
        if paused {
            self.refresh.store(true, Ordering::Release);
        }
        paused
    }
}

/// A running heartbeat thread; dropping it stops the thread.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The module reports this node sends; the daemon updates them.
    pub reports: Arc<Mutex<Vec<ModuleReport>>>,
    /// The power this node announces for each farm module; the farm
    /// drivers update it.
    pub powers: Arc<Mutex<BTreeMap<String, u32>>>,
    pub stats: Arc<HeartbeatStats>,
    /// Pauses of this process, for the module drivers.
    pub pauses: Arc<PauseWatch>,
    /// The key frames are signed and checked with; a reload replaces it.
    key: Arc<Mutex<MacKey>>,
}

impl Heartbeat {
    /// Binds every network's socket and starts the thread.
    pub fn start(
        setup: HeartbeatSetup,
        events: UnboundedSender<ClusterEvent>,
    ) -> anyhow::Result<Self> {
        let mut sockets = Vec::new();
        for network in &setup.networks {
            let socket = UdpSocket::bind(network.local).with_context(|| {
                format!(
                    "binding the heartbeat socket of network {} on {}",
                    network.name, network.local
                )
            })?;
            socket.set_nonblocking(true)?;
            // The kernel stamps each frame as it arrives: a peer's instant
            // is placed from then, not from when this thread woke.
            setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
                .context("asking for receive timestamps on the heartbeat socket")?;
            sockets.push(socket);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let powers = Arc::new(Mutex::new(BTreeMap::new()));
        let stats = Arc::new(HeartbeatStats::default());
        let tick = setup
            .networks
            .iter()
            .map(|n| n.pulse)
            .min()
            .context("no heartbeat network")?;
        let timeouts: Vec<Duration> = setup.networks.iter().map(|n| n.timeout).collect();
        let shortest = timeouts.iter().copied().min().unwrap_or(tick * 5);
        // Never below two ticks: the thread beats every tick, and a tick a
        // little late is no pause.
        let pauses = Arc::new(PauseWatch::new((shortest / 2).max(tick * 2)));
        pauses.beat(Instant::now());
        let key = Arc::new(Mutex::new(setup.key.clone()));
        let mut runner = Runner {
            key: Arc::clone(&key),
            detector: FailureDetector::new(tick, timeouts, &peer_names(&setup)),
            tick,
            next_send: vec![Instant::now(); setup.networks.len()],
            guard: ReplayGuard::with_floors(setup.epoch_floors.clone()),
            cluster: cluster_id(&setup.cluster),
            setup,
            sockets,
            events,
            stop: Arc::clone(&stop),
            reports: Arc::clone(&reports),
            powers: Arc::clone(&powers),
            stats: Arc::clone(&stats),
            pauses: Arc::clone(&pauses),
            last_reports: HashMap::new(),
            pending_reports: HashMap::new(),
            placements: Placements::default(),
            seq: 0,
            origin: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("halo-heartbeat".into())
            .spawn(move || runner.run())
            .context("spawning the heartbeat thread")?;
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
            reports,
            powers,
            stats,
            pauses,
            key,
        })
    }

    /// Signs and checks every frame from now on with `key` (a reload of the
    /// cluster secrets); the thread's next frame already uses it.
    pub fn set_key(&self, key: MacKey) {
        *self.key.lock().expect("key lock") = key;
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The next time after `scheduled` a periodic event of `period` is due:
/// from the ideal time, so the pulse does not drift, but never in the past
/// after a stall.
fn advance(scheduled: Instant, period: Duration, now: Instant) -> Instant {
    let next = scheduled + period;
    if next <= now {
        now + period
    } else {
        next
    }
}

fn peer_names(setup: &HeartbeatSetup) -> Vec<String> {
    let mut names: Vec<String> = setup
        .networks
        .iter()
        .flat_map(|n| n.peers.iter().map(|(name, _)| name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

struct Runner {
    setup: HeartbeatSetup,
    /// The live key (`setup.key` is the one it started with).
    key: Arc<Mutex<MacKey>>,
    /// The detector's tick: the shortest pulse.
    tick: Duration,
    /// Per network: when its next frame is due.
    next_send: Vec<Instant>,
    cluster: u64,
    sockets: Vec<UdpSocket>,
    detector: FailureDetector,
    guard: ReplayGuard,
    events: UnboundedSender<ClusterEvent>,
    stop: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<ModuleReport>>>,
    powers: Arc<Mutex<BTreeMap<String, u32>>>,
    stats: Arc<HeartbeatStats>,
    pauses: Arc<PauseWatch>,
    /// What each peer last reported, as forwarded to the modules.
    last_reports: HashMap<String, (Vec<ModuleReport>, BTreeMap<String, u32>)>,
    /// The newest report of each peer in the frames being read.
    pending_reports: HashMap<String, (Vec<ModuleReport>, BTreeMap<String, u32>)>,
    /// The peers' instants (a farm's table change) on this node's clock.
    placements: Placements,
    seq: u64,
    origin: Instant,
}

impl Runner {
    fn run(&mut self) {
        raise_priority();
        let mut next_tick = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.beat(now);
            if now >= next_tick {
                self.send(now);
                self.receive_waiting();
                let events = self.detector.tick(self.clock(now));
                self.publish(events);
                next_tick = advance(next_tick, self.tick, now);
            }
            // Also wake when a peer's silence reaches its timeout: it is
            // lost then, not at the next tick (up to a pulse later).
            let wake = match self.detector.next_silence() {
                Some(at) => next_tick.min(self.origin + at),
                None => next_tick,
            };
            self.wait_for_frames(wake.saturating_duration_since(Instant::now()));
            self.beat(Instant::now());
            self.receive_waiting();
            let now = Instant::now();
            let silence_due = self
                .detector
                .next_silence()
                .is_some_and(|at| self.clock(now) >= at);
            // A tick due now does the check itself, after forgiving a stall
            // of this process.
            if silence_due && now < next_tick {
                let events = self.detector.check(self.clock(now));
                self.publish(events);
            }
        }
    }

    /// Before reading frames: after a pause (or when a driver asks), the
    /// next report of every peer goes to the modules even if unchanged.
    fn beat(&mut self, now: Instant) {
        let paused = self.pauses.beat(now);
        if paused || self.pauses.refresh.swap(false, Ordering::AcqRel) {
            self.last_reports.clear();
        }
    }

    fn clock(&self, at: Instant) -> Duration {
        at.duration_since(self.origin)
    }

    fn send(&mut self, now: Instant) {
        self.seq += 1;
        let modules = self.reports.lock().expect("reports lock").clone();
        let mut powers = self.powers.lock().expect("powers lock").clone();
        // A farm driver sets its power before its first report: announce
        // the power with the report.
        powers.retain(|name, _| modules.iter().any(|m| m.name == *name));
        let key = self.key.lock().expect("key lock").clone();
        for (index, network) in self.setup.networks.iter().enumerate() {
            if now < self.next_send[index] {
                continue;
            }
            self.next_send[index] = advance(self.next_send[index], network.pulse, now);
            // Instants travel as their age, read as late as can be.
            let clock = monotonic_ns();
            let frame = HeartbeatFrame {
                network: index as u8,
                cluster: self.cluster,
                sender: self.setup.node.clone(),
                epoch: self.setup.epoch,
                seq: self.seq,
                modules: modules
                    .iter()
                    .map(|m| instant::outgoing(m, clock))
                    .collect(),
                powers: powers.clone(),
            };
            let bytes = match frame.encode(&key) {
                Ok(bytes) => bytes,
                Err(error) => {
                    warn!(%error, "cannot encode this node's heartbeat");
                    return;
                }
            };
            for (peer, addr) in &network.peers {
                match self.sockets[index].send_to(&bytes, addr) {
                    Ok(_) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        // An unreachable network is what heartbeats exist to
                        // detect; count it and say it at debug level.
                        self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        debug!(%error, peer, network = %network.name, "heartbeat send failed");
                    }
                }
            }
        }
    }

    fn wait_for_frames(&self, timeout: Duration) {
        let mut fds: Vec<PollFd> = self
            .sockets
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        // EINTR and friends just end the wait early; the loop re-checks.
        let _ = poll(&mut fds, PollTimeout::from(millis));
    }

    fn receive_waiting(&mut self) {
        let mut buf = [0u8; 2048];
        for index in 0..self.sockets.len() {
            loop {
                let (len, from, arrived) = match receive(&self.sockets[index], &mut buf) {
                    Ok(received) => received,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => {
                        debug!(%error, "heartbeat receive failed");
                        break;
                    }
                };
                let now = self.clock(Instant::now());
                self.accept(index as u8, &buf[..len], from, now, arrived);
            }
        }
        // Only each peer's newest report goes on: after a pause the sockets
        // hold a backlog of what the peer was, not what it is.
        for (peer, latest) in std::mem::take(&mut self.pending_reports) {
            if self.last_reports.get(&peer) != Some(&latest) {
                self.last_reports.insert(peer.clone(), latest.clone());
                let (modules, powers) = latest;
                let _ = self.events.send(ClusterEvent::Reports {
                    peer,
                    modules,
                    powers,
                });
            }
        }
    }

    /// Takes a frame received at `now` (the detector's clock) and `clock`
    /// (CLOCK_MONOTONIC ns).
    fn accept(&mut self, network: u8, bytes: &[u8], from: SocketAddr, now: Duration, clock: u64) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let decoded = {
            let key = self.key.lock().expect("key lock");
            HeartbeatFrame::decode_keyed(bytes, &key, self.cluster)
        };
        let (frame, key_used) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.reject(error.reason());
                debug!(%error, %from, "heartbeat dropped");
                return;
            }
        };
        let expected = self.setup.networks[usize::from(network)]
            .peers
            .iter()
            .any(|(name, _)| *name == frame.sender);
        if !expected {
            self.stats.reject("unknown_sender");
            return;
        }
        if frame.network != network {
            self.stats.reject("wrong_network");
            return;
        }
        match self
            .guard
            .check(&frame.sender, network, frame.epoch, frame.seq)
        {
            Ok(new_epoch) => {
                if new_epoch {
                    let _ = self.events.send(ClusterEvent::NewEpoch {
                        peer: frame.sender.clone(),
                        epoch: frame.epoch,
                    });
                }
            }
            Err(error) => {
                self.stats.reject("replayed");
                debug!(%error, peer = %frame.sender, "heartbeat replay dropped");
                return;
            }
        }
        let link = &self.setup.networks[usize::from(network)];
        self.stats
            .links
            .lock()
            .expect("stats lock")
            .entry((frame.sender.clone(), link.name.clone()))
            .or_default()
            .accept(frame.epoch, frame.seq, self.tick, link.pulse, key_used);
        let events = self.detector.heard(&frame.sender, network, now);
        self.publish(events);
        let mut modules = frame.modules;
        for report in &mut modules {
            self.placements.incoming(&frame.sender, report, clock);
        }
        self.pending_reports
            .insert(frame.sender, (modules, frame.powers));
    }

    fn publish(&mut self, events: Vec<Liveness>) {
        for event in events {
            match &event {
                Liveness::LateTick { late } => {
                    self.stats.late_ticks.fetch_add(1, Ordering::Relaxed);
                    warn!(late_ms = late.as_millis() as u64, "heartbeat tick late: this node was starved of CPU or paused; not counted against peers");
                }
                Liveness::PeerDown { peer } => {
                    info!(peer, "peer down on every heartbeat network");
                    // The modules forget a peer that goes down: its first
                    // frame after it comes back must reach them even when
                    // its reports did not change meanwhile (a cut link,
                    // not a restart).
                    self.last_reports.remove(peer);
                    self.placements.forget(peer);
                }
                Liveness::PeerUp { peer } => info!(peer, "peer up"),
                Liveness::NetworkDown { peer, network } => {
                    info!(peer, network = %self.setup.networks[usize::from(*network)].name, "heartbeat network lost")
                }
                Liveness::NetworkUp { peer, network } => {
                    info!(peer, network = %self.setup.networks[usize::from(*network)].name, "heartbeat network up")
                }
            }
            let _ = self.events.send(ClusterEvent::Liveness(event));
        }
    }
}

/// Reads one waiting datagram into `buf`: its length, its sender, and when
/// it arrived on this node's CLOCK_MONOTONIC (ns): the kernel's receive
/// timestamp, which is on the wall clock, moved to the monotonic one; now,
/// if the kernel gave none. (The kernel turns stamping on shortly after
/// the socket asks; until then it stamps a datagram as it is read.)
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let (mono, wall) = (monotonic_ns(), wall_ns());
    let stamped = message.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(at) => {
                Some(at.tv_sec() as u64 * 1_000_000_000 + at.tv_nsec() as u64)
            }
            _ => None,
        })
    });
    // A stamp from the future, or from long ago, says nothing (the wall
    // clock stepped, or the host slept, since the frame came: moved to the
    // monotonic clock it would be early, and a placement may be late, never
    // early): the frame arrived now at the latest.
    let arrived = match stamped {
        Some(at) if at <= wall && wall - at <= STAMP_TRUSTED_NS => mono - (wall - at).min(mono),
        _ => mono,
    };
    let from = message
        .address
        .and_then(|a: SockaddrStorage| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("a datagram without an IP sender"))?;
    Ok((message.bytes, from, arrived))
}

/// The longest a frame is believed to have waited in its socket after
/// arriving (its kernel stamp, against the wall clock when it is read):
/// beyond, the wall clock more likely stepped.
const STAMP_TRUSTED_NS: u64 = 1_000_000_000;

/// Runs the calling thread under SCHED_FIFO so heartbeats keep their pace on
/// a saturated machine; without the privilege, says so and goes on.
fn raise_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot raise the heartbeat thread to SCHED_FIFO; heartbeats may lag under CPU load"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_placed_when_the_kernel_received_it_on_the_monotonic_clock() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        // The kernel turns receive stamps on a moment after the first
        // socket asks (net_enable_timestamp defers it to a work item);
        // until then a datagram is stamped as it is read, which places it
        // late, never early. So: until a stamp is the arrival, or 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let before = monotonic_ns();
            sender
                .send_to(b"frame", socket.local_addr().unwrap())
                .unwrap();
            // Read 30 ms later: the placement is the arrival, not the read.
            std::thread::sleep(Duration::from_millis(30));
            let (len, from, arrived) = receive(&socket, &mut buf).unwrap();
            let after = monotonic_ns();
            assert_eq!(&buf[..len], b"frame");
            assert_eq!(from, sender.local_addr().unwrap());
            assert!(
                before <= arrived && arrived <= after,
                "arrived at {arrived} ns, sent at {before}, read by {after}"
            );
            if arrived + 20_000_000 < after {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "every datagram was placed when read, not when it arrived: last arrived at \
                 {arrived} ns, sent at {before}, read by {after}"
            );
        }
        let error = receive(&socket, &mut buf).unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing more waits"
        );
    }

    #[test]
    fn a_pause_is_told_once_to_each_driver_and_asks_for_fresh_reports() {
        let ms = Duration::from_millis;
        let watch = PauseWatch::new(ms(100));
        let start = watch.origin;
        assert!(!watch.beat(start));
        assert!(!watch.beat(start + ms(90)), "a beat within the limit");
        let mut seen = 0;
        assert!(!watch.paused_since(&mut seen));
        assert!(!watch.refresh.load(Ordering::Acquire));
        // The thread beats again 400 ms later: a pause.
        assert!(watch.beat(start + ms(490)));
        assert!(watch.paused_since(&mut seen), "the driver hears of it");
        assert!(
            watch.refresh.swap(false, Ordering::AcqRel),
            "fresh reports asked"
        );
        assert!(!watch.paused_since(&mut seen), "only once");
        let mut other = 0;
        assert!(watch.paused_since(&mut other), "every driver hears of it");

        // The driver wakes first: the thread has not beaten for longer than
        // the limit. Its beat afterwards counts the same pause, not another.
        let watch = PauseWatch::new(ms(50));
        watch.beat(Instant::now());
        std::thread::sleep(ms(120));
        let mut seen = 0;
        assert!(watch.paused_since(&mut seen), "the thread is behind");
        assert!(watch.beat(Instant::now()));
        assert!(!watch.paused_since(&mut seen), "the same pause");
    }

    #[test]
    fn lost_frames_are_the_sequence_gaps_scaled_to_the_network_pulse() {
        let ms = Duration::from_millis;
        let mut link = LinkFrames::default();
        for seq in [1, 2, 5, 6] {
            link.accept(7, seq, ms(100), ms(100), KeyUsed::Signing);
        }
        assert_eq!((link.accepted, link.lost), (4, 2));
        // A network pulsing every other tick skips one sequence number per frame.
        let mut slow = LinkFrames::default();
        for seq in [2, 4, 6, 10] {
            slow.accept(7, seq, ms(100), ms(200), KeyUsed::Accepted);
        }
        assert_eq!((slow.accepted, slow.lost), (4, 1));
        assert_eq!(slow.accepted_secret, 4, "frames under the accepted secret");
        assert_eq!(link.accepted_secret, 0);
        // A new epoch restarts the numbering: nothing lost.
        link.accept(8, 1, ms(100), ms(100), KeyUsed::Signing);
        assert_eq!(link.lost, 2);
    }
}
