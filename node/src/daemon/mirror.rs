//! The driver of one mirror module: feeds the pure `fsm::mirror::Mirror`
//! machine with commands, the peer's reports, replication results, witness
//! answers, checker results, script completions and time, and performs
//! what it returns: scripts, the VIP, read-only directories, replication
//! sessions (`mirror::session`), the data stamp, the witness.
//!
//! Replication runs on threads of its own (`mirror::session`); they report
//! to this task through a channel. The secondary connects to the primary's
//! replication address; the primary accepts only its peer's addresses and
//! only while it serves.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant as TokioInstant,
};
use tracing::{info, warn};

use crate::{
    api::{progress::ReplicationProgress, ActionRequest, ModuleAction, SharedStatus},
    app::{self, checker::CheckerReport, LogSink},
    cluster::{frame::ModuleReport, keys::ClusterSecret},
    config::{self, Config, MirrorModule, Witness},
    fsm::{
        self,
        mirror::{
            Action, DataStamp, DataState, Generation, Handover, Input, Mirror, MirrorConfig,
            PeerReport, ReplRole, WitnessKind,
        },
        Command, Instant, Phase, RestartPolicy, ScriptTimeouts, State,
    },
    mirror::{
        apply::Applier,
        channel::SessionKey,
        hub::{CaptureHub, Wake},
        journal::Journal,
        session::{
            self, CaptureFeed, PrimarySession, Progress, SecondarySession, SessionEvent, Setup,
            Tracker,
        },
        stamp::StampFiles,
    },
};

use super::{
    farm::ModuleInput,
    module::{self, CheckerInput, ModuleCore, STOP_GRACE},
    module_log::ModuleLog,
};

/// How often a primary in sync records its sync point (a barrier round trip).
const SYNC_POINT_EVERY: Duration = Duration::from_secs(2);
/// How long a secondary keeps trying to reach its primary before giving up.
const CONNECT_TRIES: u32 = 20;

/// Bits of `ModuleReport::flags` for a mirror: the data state (2 bits),
/// then the handover (2 bits).
mod flags {
    pub const STATE_MASK: u8 = 0b0011;
    pub const HANDOVER_SHIFT: u8 = 2;
}

fn state_code(state: DataState) -> u8 {
    match state {
        DataState::Partial => 0,
        DataState::Copy => 1,
        DataState::Shared => 2,
        DataState::Newest => 3,
    }
}

/// The data state a secondary announces in `Join`. A node marks its data
/// Partial as it starts to follow, but a former primary's files also hold
/// its own writes since its last sync point (its journal has a base until
/// its data is a copy again): it must not pass for a copy, whose files the
/// primary's journaled ranges alone bring up to date.
fn join_state(state: DataState, written_since_copy: bool) -> u8 {
    match state {
        DataState::Partial if written_since_copy => state_code(DataState::Shared),
        _ => state_code(state),
    }
}

fn state_of(code: u8) -> DataState {
    match code & flags::STATE_MASK {
        0 => DataState::Partial,
        1 => DataState::Copy,
        2 => DataState::Shared,
        _ => DataState::Newest,
    }
}

/// The heartbeat report of a mirror's machine.
pub fn encode_report(name: &str, report: &PeerReport) -> ModuleReport {
    let handover = match report.handover {
        None => 0,
        Some(Handover::Stopped) => 1,
        Some(Handover::Swap) => 2,
    };
    ModuleReport {
        name: name.to_owned(),
        state: report.state.code(),
        phase: u8::from(report.phase == Phase::Transient),
        flags: state_code(report.stamp.state) | (handover << flags::HANDOVER_SHIFT),
        generation: report.stamp.generation.0,
        following: report.following.map_or(0, |g| g.0),
    }
}

/// A peer's mirror report from its heartbeat; `None` if the state is unknown.
pub fn decode_report(report: &ModuleReport) -> Option<PeerReport> {
    Some(PeerReport {
        state: State::from_code(report.state)?,
        phase: if report.phase == 0 {
            Phase::Ready
        } else {
            Phase::Transient
        },
        stamp: DataStamp {
            generation: Generation(report.generation),
            state: state_of(report.flags),
        },
        following: (report.following != 0).then_some(Generation(report.following)),
        handover: match report.flags >> flags::HANDOVER_SHIFT & 0b11 {
            1 => Some(Handover::Stopped),
            2 => Some(Handover::Swap),
            _ => None,
        },
    })
}

/// What reaches the driver from its own helpers.
pub enum Internal {
    Session(u64, SessionEvent),
    Accepted(std::net::TcpStream),
    Witness(bool),
    /// When a granted lease ends, the generation its request claimed and
    /// the one the witness had recorded; or why there is none.
    Lease(Result<(TokioInstant, u64, u64), String>),
    /// The witness refused the lease to our older data (it granted newer).
    LeaseStale {
        newer: u64,
        ours: u64,
    },
    /// A secondary's session, with the key it was keyed from.
    SecondaryStarted(u64, Result<(SecondarySession, SessionKey), String>),
}

/// Everything a mirror driver needs.
pub struct MirrorDriver {
    module: MirrorModule,
    peer: String,
    machine: Mirror,
    origin: TokioInstant,
    core: ModuleCore,
    reports: Arc<Mutex<Vec<ModuleReport>>>,
    /// The heartbeat thread's view of this process's pauses.
    pauses: Arc<crate::daemon::heartbeat::PauseWatch>,
    /// The pauses already told to the machine (`PauseWatch::paused_since`).
    pauses_seen: u64,
    files: StampFiles,
    /// The dirty ranges since the sync point (`mirror::journal`), fed by
    /// the tracker while this node serves.
    journal: Arc<Mutex<Journal>>,
    /// The stamp as last persisted (a secondary taking over sees its copy's).
    persisted: DataStamp,
    /// Whether the last `PersistStamp` reached the disk.
    stamp_stored: bool,
    setup: Setup,
    checkers_on: watch::Sender<bool>,
    progress: Arc<Progress>,
    /// Opened before any read-only mount (see `mirror::apply`).
    applier: Arc<Mutex<Applier>>,
    tracker: Option<Tracker>,
    primary: Option<PrimarySession>,
    secondary: Option<SecondarySession>,
    /// The listener accepts only while this node serves.
    serving: Arc<AtomicBool>,
    peer_replication: SocketAddr,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// As primary in sync: the barrier of the next sync point, sent at.
    sync_barrier: Option<(u64, SystemTime, TokioInstant)>,
    /// How long the last sync point's barrier took to be acknowledged: how
    /// far the secondary was behind then.
    lag: Duration,
    /// The previous progress sample (when, bytes done), for the ETA.
    sample: Option<(TokioInstant, u64)>,
    drain_barrier: Option<u64>,
    in_sync: bool,
    /// Identifies the current session; events of older ones are ignored.
    session_id: u64,
    /// A secondary's connection attempt is under way.
    connecting: bool,
    read_only: bool,
    lease_task: Option<tokio::task::JoinHandle<()>>,
    /// The witness client, kept for the daemon's life: the witness drops a
    /// request whose sequence number does not grow within this daemon's
    /// epoch, so every request must come from the same counter.
    lease_client: Option<Arc<crate::witness::arbiter::ArbiterClient>>,
    /// Why the last lease request failed (logged once per reason).
    lease_refusal: Option<String>,
    cluster_id: u64,
    epoch: u64,
    /// The cluster secrets as last reloaded: each new session and witness
    /// request takes its keys from them.
    secret: watch::Receiver<ClusterSecret>,
    /// The key the current session was keyed from.
    session_key: Option<SessionKey>,
    /// The daemon's write capture, if it loaded, and this module's roots in it.
    hub: Option<Arc<CaptureHub>>,
    roots: Vec<crate::ebpf::capture::RootId>,
    /// Where the capture sends this module's records while a session runs.
    feed: Option<(
        std::sync::mpsc::Sender<crate::ebpf::capture::Captured>,
        Arc<Wake>,
    )>,
    /// Says, across a crash of the daemon, that the application is started.
    started: module::StartedMarker,
    /// The last `stop_prim` asked for was the forced call.
    stop_prim_forced: bool,
    /// Durable writes are paused although no session is in sync: this node
    /// serves but may not yet let them go unacknowledged.
    unacked_pause: bool,
    /// Why the capture could not be attached when this module last needed
    /// it, as logged and shown in the status.
    attach_error: Option<String>,
    /// This node took (or began to take) its peer's data since the start:
    /// what a dead daemon's held writers wrote here is gone.
    data_replaced: bool,
    /// The writers a dead daemon held for these directories were resumed,
    /// or given up on.
    orphans_settled: bool,
}

impl MirrorDriver {
    /// Builds the driver; the replicated directories are created if missing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        module: MirrorModule,
        config: &Config,
        secret: watch::Receiver<ClusterSecret>,
        epoch: u64,
        status: SharedStatus,
        reports: Arc<Mutex<Vec<ModuleReport>>>,
        pauses: Arc<crate::daemon::heartbeat::PauseWatch>,
        log: ModuleLog,
        sink: LogSink,
        hub: Option<Arc<CaptureHub>>,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Internal>)> {
        use anyhow::Context as _;
        let node = config.node.name.clone();
        let peer = module
            .nodes
            .iter()
            .find(|n| **n != node)
            .cloned()
            .context("a mirror module needs two nodes")?;
        let files = StampFiles::new(&config.node.state_dir, &module.name)?;
        let stamp = files.load_stamp()?;
        let journal = Journal::open(files.dir()).with_context(|| {
            format!(
                "opening the dirty-range journal in {}",
                files.dir().display()
            )
        })?;
        let dirs: Vec<PathBuf> = module.dirs.iter().map(|d| d.path.clone()).collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the replicated directory {}", dir.display()))?;
        }
        release_read_only(&dirs);
        let applier = Applier::open(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>())
            .context("opening the replicated directories")?;
        let network = &module.replication.network;
        let address_of = |name: &str| {
            config
                .cluster
                .nodes
                .iter()
                .find(|n| n.name == name)
                .and_then(|n| n.addresses.get(network).copied())
        };
        let own_ip = address_of(&node)
            .with_context(|| format!("node {node} has no address on network {network}"))?;
        let peer_ip = address_of(&peer)
            .with_context(|| format!("node {peer} has no address on network {network}"))?;
        let peer_ips = config
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == peer)
            .map(|n| n.addresses.values().copied().collect())
            .unwrap_or_default();
        let mut cfg = MirrorConfig::new(node.clone(), peer.clone());
        cfg.defaultprim = module.defaultprim.clone();
        cfg.failover = module.failover;
        cfg.witness = match &module.witness {
            None => WitnessKind::None,
            Some(Witness::Ping(_)) => WitnessKind::Ping,
            Some(Witness::Arbiter(_)) => WitnessKind::Arbiter,
        };
        cfg.scripts = ScriptTimeouts {
            start: module.scripts.start_timeout,
            nice_stop: module.scripts.nicestoptimeout,
            force_stop: module.scripts.forcestoptimeout,
        };
        cfg.restart = RestartPolicy {
            maxloop: module.maxloop,
            loop_interval: module.loop_interval,
        };
        let setup = Setup {
            module: module.name.clone(),
            node: node.clone(),
            dirs,
            excludes: module.dirs.iter().map(|d| d.exclude.clone()).collect(),
            encrypt: module.replication.encrypt,
            // Replaced by a fresh one, of the current secrets, per session.
            key: SessionKey::new(secret.borrow().replication_key()),
        };
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let serving = Arc::new(AtomicBool::new(false));
        spawn_listener(
            SocketAddr::new(own_ip, module.replication.port),
            peer_ips,
            Arc::clone(&serving),
            internal_tx.clone(),
            module.name.clone(),
        )?;
        let (checkers_on, _) = watch::channel(true);
        let mut roots = Vec::new();
        if let Some(hub) = &hub {
            for dir in &setup.dirs {
                roots.push(
                    hub.add_root(dir)
                        .with_context(|| format!("capturing writes below {}", dir.display()))?,
                );
            }
        }
        let driver = MirrorDriver {
            hub,
            roots,
            feed: None,
            started: module::StartedMarker::new(files.dir()),
            stop_prim_forced: false,
            unacked_pause: false,
            attach_error: None,
            data_replaced: false,
            orphans_settled: false,
            machine: Mirror::new(cfg, stamp),
            peer_replication: SocketAddr::new(peer_ip, module.replication.port),
            core: ModuleCore::new(&module.name, &node, status, log, sink),
            module,
            peer,
            origin: TokioInstant::now(),
            reports,
            pauses,
            pauses_seen: 0,
            files,
            journal: Arc::new(Mutex::new(journal)),
            persisted: stamp,
            stamp_stored: true,
            setup,
            checkers_on,
            progress: Arc::default(),
            applier: Arc::new(Mutex::new(applier)),
            tracker: None,
            primary: None,
            secondary: None,
            serving,
            internal_tx,
            sync_barrier: None,
            lag: Duration::ZERO,
            sample: None,
            drain_barrier: None,
            in_sync: false,
            session_id: 0,
            connecting: false,
            read_only: false,
            lease_task: None,
            lease_client: None,
            lease_refusal: None,
            cluster_id: crate::cluster::frame::cluster_id(&config.cluster.name),
            epoch,
            secret,
            session_key: None,
        };
        Ok((driver, internal_rx))
    }

    fn now(&self) -> Instant {
        Instant::from_start(self.origin.elapsed())
    }

    /// Runs the module until `shutdown`, then stops it.
    pub async fn run(
        mut self,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut inputs: mpsc::UnboundedReceiver<ModuleInput>,
        mut actions: mpsc::UnboundedReceiver<ActionRequest>,
        mut log_lines: mpsc::UnboundedReceiver<app::LogLine>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (script_tx, mut script_done) = mpsc::unbounded_channel();
        let (checker_tx, mut checker_reports) = mpsc::channel(64);
        let context =
            app::checker::CheckerContext::of(&config::Module::Mirror(self.module.clone()));
        for checker in &self.module.checkers {
            app::checker::spawn(
                checker.clone(),
                context.clone(),
                checker_tx.clone(),
                self.checkers_on.subscribe(),
            );
        }
        self.publish();
        self.recover_application().await;
        self.feed(Input::Command(Command::Start), &script_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut sync_tick = tokio::time::interval(SYNC_POINT_EVERY);
        let mut stopping = false;
        let mut stop_deadline = None;
        // No heartbeat within the timeout of the start counts as a lost peer.
        let peer_deadline = TokioInstant::now() + Duration::from_secs(2);
        let mut peer_heard = false;
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(|t| self.origin + t.since_start());
            tokio::select! {
                _ = shutdown.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    stop_deadline = Some(TokioInstant::now() + STOP_GRACE);
                    self.feed(Input::Command(Command::Stop), &script_tx);
                }
                Some(input) = inputs.recv() => {
                    let ModuleInput::Peer { peer, report } = input;
                    if peer == self.peer {
                        peer_heard = true;
                        let input = match report.as_ref().and_then(decode_report) {
                            Some(report) => Input::PeerReport(report),
                            None => Input::PeerLost,
                        };
                        self.feed(input, &script_tx);
                    }
                }
                _ = tokio::time::sleep_until(peer_deadline), if !peer_heard => {
                    peer_heard = true;
                    self.feed(Input::PeerLost, &script_tx);
                }
                Some(event) = internal.recv() => self.on_internal(event, &script_tx),
                Ok(()) = self.secret.changed() => self.follow_secrets(&script_tx),
                Some(action) = actions.recv() => self.on_action(action, &script_tx),
                Some(done) = script_done.recv() => self.feed(done, &script_tx),
                Some(report) = checker_reports.recv() => self.on_checker(report, &script_tx),
                Some(line) = log_lines.recv() => self.write_log(&line.source, &line.text),
                _ = module::sleep_until(deadline) => self.feed(Input::Timer, &script_tx),
                _ = tick.tick() => {
                    // A pause with no input after it (no peer to report):
                    // the machine still hears of it, and ready.txt answers again.
                    if !self.pauses.settled(self.pauses_seen) {
                        self.feed(Input::Timer, &script_tx);
                    }
                    self.publish_progress();
                    self.follow_attach_error();
                }
                _ = sync_tick.tick() => self.take_sync_point(),
                _ = module::sleep_until(stop_deadline) => {
                    warn!(module = %self.module.name, "stop scripts did not finish within the grace period");
                    break;
                }
            }
            if stopping
                && self.machine.state() == State::Stop
                && self.machine.phase() == Phase::Ready
            {
                break;
            }
        }
        self.close_sessions();
        self.stop_tracker();
        if self.read_only {
            release_read_only(&self.setup.dirs);
        }
        while let Ok(line) = log_lines.try_recv() {
            self.write_log(&line.source, &line.text);
        }
    }

    /// A daemon that died with the application started left it running,
    /// still writing through the descriptors it holds, and left its capture
    /// holding the writers' durable writes: stop the application as a
    /// normal stop would, before the machine starts (this node may become
    /// SECOND) and before any held writer is let go; then take the
    /// directories over from the dead daemon's capture.
    async fn recover_application(&mut self) {
        if let Some(from) = self.started.read() {
            warn!(module = %self.module.name, state = from.as_str(), "the previous daemon died with the application started: running stop_prim before the module starts");
            self.write_log(
                "app",
                &format!(
                    "the previous daemon died with the application started ({}): running stop_prim",
                    from.as_str()
                ),
            );
            let path = self.script_path(fsm::ScriptKind::StopPrim);
            let timeouts = self.machine_timeouts();
            let stopped = module::stop_outside_machine(
                &self.core,
                fsm::ScriptKind::StopPrim,
                path,
                from,
                timeouts,
            )
            .await;
            if !stopped {
                self.write_log(
                    "app",
                    "stop_prim force failed: the application the previous daemon started may still run",
                );
            }
            if let Err(error) = self.started.clear() {
                warn!(module = %self.module.name, error = %format!("{error:#}"), "cannot record that the application is stopped");
            }
        }
        if let Some(hub) = &self.hub {
            hub.take_over(&self.roots);
        }
    }

    fn machine_timeouts(&self) -> ScriptTimeouts {
        ScriptTimeouts {
            start: self.module.scripts.start_timeout,
            nice_stop: self.module.scripts.nicestoptimeout,
            force_stop: self.module.scripts.forcestoptimeout,
        }
    }

    /// The writers a dead daemon held for these directories are resumed
    /// only once this node serves the data they wrote: ALONE, or PRIM with
    /// the secondary in sync, without having taken the peer's data since
    /// the start. Once it takes the peer's data their writes are gone and
    /// must never be acknowledged: they are killed, as `settle_held` kills
    /// this daemon's own held writers when it stops serving.
    fn settle_orphans(&mut self) {
        if self.orphans_settled {
            return;
        }
        let Some(hub) = self.hub.clone() else {
            return;
        };
        if self.data_replaced {
            self.orphans_settled = true;
            let killed = hub.discard_orphans(&self.roots);
            if !killed.is_empty() {
                warn!(module = %self.module.name, pids = ?killed, "killed writers a daemon that died held: this node takes its peer's data, their durable writes are lost and must not be acknowledged");
                self.write_log("app", &format!("killed writers held by a daemon that died, whose durable writes were never acknowledged, since this node takes its peer's data: pids {killed:?}"));
            }
            return;
        }
        // ALONE: as for the writers this daemon held, only once this node
        // may serve alone (`settle_held`).
        let own_data_served = self.machine.is_serving()
            && (self.in_sync
                || (self.machine.state() == State::Alone
                    && self.machine.may_release_unacknowledged(self.now())));
        if own_data_served {
            self.orphans_settled = true;
            let resumed = hub.release_orphans(&self.roots);
            if !resumed.is_empty() {
                info!(module = %self.module.name, pids = ?resumed, "resumed writers a daemon that died held");
                self.write_log(
                    "app",
                    &format!("resumed processes {resumed:?}, held by a daemon that died"),
                );
            }
        }
    }

    fn on_internal(&mut self, event: Internal, scripts: &mpsc::UnboundedSender<Input>) {
        match event {
            Internal::Accepted(stream) => self.accept(stream, scripts),
            Internal::Witness(won) => {
                let result = if won { "reached" } else { "unreachable" };
                self.core
                    .update(|m| m.counters.record_witness("ping", result));
                self.feed(Input::WitnessAnswer { won }, scripts)
            }
            Internal::Lease(Ok((valid_until, generation, recorded))) => {
                self.lease_refusal = None;
                self.core
                    .update(|m| m.counters.record_witness("arbiter", "granted"));
                let until =
                    self.now() + valid_until.saturating_duration_since(TokioInstant::now());
                let input = Input::LeaseGranted {
                    until,
                    generation: Generation(generation),
                    recorded: Generation(recorded),
                };
                self.feed(input, scripts);
            }
            Internal::LeaseStale { newer, ours } => {
                let kind = format!("stale {newer} {ours}");
                if self.lease_refusal.as_deref() != Some(kind.as_str()) {
                    self.write_log("witness", &format!("no lease: the witness granted it to newer data (generation {newer}, ours {ours}): waiting for the peer, or run halo prim to force"));
                    self.lease_refusal = Some(kind);
                }
                self.core
                    .update(|m| m.counters.record_witness("arbiter", "stale"));
                let newer = Generation(newer);
                self.feed(Input::LeaseStale { newer }, scripts)
            }
            Internal::Lease(Err(reason)) => {
                // Logged once per kind of refusal (the figures change).
                let kind: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
                if self.lease_refusal.as_deref() != Some(kind.as_str()) {
                    self.write_log("witness", &format!("no lease: {reason}"));
                    self.lease_refusal = Some(kind);
                }
                self.core
                    .update(|m| m.counters.record_witness("arbiter", "refused"));
                self.feed(Input::LeaseLost, scripts)
            }
            Internal::SecondaryStarted(id, _) | Internal::Session(id, _) if id != self.session_id => {
                // A session this driver has replaced or closed since.
            }
            Internal::SecondaryStarted(_, Ok((session, key))) => {
                self.connecting = false;
                if self.machine.state() == State::Stop {
                    return;
                }
                self.write_log("replication", "connected to the primary");
                self.secondary = Some(session);
                self.session_key = Some(key);
                // The secrets may have been reloaded while it connected.
                self.end_session_of_dropped_secret(scripts);
            }
            Internal::SecondaryStarted(_, Err(reason)) => {
                self.connecting = false;
                self.write_log(
                    "replication",
                    &format!("cannot reach the primary: {reason}"),
                );
                self.feed(Input::ReplicationBroken, scripts);
            }
            Internal::Session(_, event) => match event {
                SessionEvent::Joined { peer, generation } => self.write_log(
                    "replication",
                    &format!("secondary {peer} joined with generation {generation}"),
                ),
                SessionEvent::ResyncSent { generation } => {
                    self.feed(Input::ResyncSent { generation }, scripts)
                }
                SessionEvent::PeerInSync {
                    generation,
                    bytes_sent,
                } => self.write_log(
                    "replication",
                    &format!(
                        "the secondary is in sync with generation {generation}: {bytes_sent} bytes sent"
                    ),
                ),
                SessionEvent::ResyncDone { generation } => {
                    // This node's data is now a copy: its own journal is moot.
                    if let Err(error) = self.journal.lock().expect("journal").reset() {
                        warn!(module = %self.module.name, %error, "cannot reset the dirty-range journal");
                    }
                    self.write_log(
                        "replication",
                        &format!("resynchronised with generation {generation}"),
                    );
                    self.feed(Input::ResyncDone, scripts);
                }
                SessionEvent::Drained { seq } => {
                    if self.drain_barrier == Some(seq) {
                        self.drain_barrier = None;
                        self.feed(Input::ReplicationDrained, scripts);
                    }
                    if let Some((barrier, at, sent)) = self.sync_barrier {
                        if seq == barrier {
                            self.sync_barrier = None;
                            self.lag = sent.elapsed();
                            let generation = self.machine.stamp().generation.0;
                            self.store_sync_point(generation, at);
                        }
                    }
                }
                SessionEvent::Ended { reason } => {
                    self.route_feed(false);
                    let had = self.primary.take().is_some() | self.secondary.take().is_some();
                    if let Some(tracker) = &self.tracker {
                        session::detach(tracker);
                    }
                    if had && reason == session::HANDED_OVER {
                        // Not a break: the heartbeat's handover tells the machine what to do.
                        self.write_log("replication", &format!("session ended: {reason}"));
                        self.in_sync = false;
                    } else if had {
                        self.write_log("replication", &format!("session ended: {reason}"));
                        self.in_sync = false;
                        self.drain_barrier = None;
                        self.sync_barrier = None;
                        self.feed(Input::ReplicationBroken, scripts);
                    }
                }
            },
        }
    }

    /// A connection from the peer while this node serves: a new session
    /// replaces any previous one.
    fn accept(&mut self, stream: std::net::TcpStream, scripts: &mpsc::UnboundedSender<Input>) {
        if !self.machine.is_serving() {
            return;
        }
        if self.primary.take().is_some() {
            self.feed(Input::ReplicationBroken, scripts);
        }
        self.route_feed(false);
        self.ensure_tracker();
        let Some(tracker) = self.tracker.as_ref() else {
            return;
        };
        let mut setup = self.setup.clone();
        setup.key = SessionKey::new(self.secret.borrow().replication_key());
        let hub = self.hub.clone();
        let sync_point = self.files.load_sync_point();
        let sync_point_ns = self.files.load_sync_point_ns();
        let generation = self.machine.stamp().generation.0;
        let progress = Arc::clone(&self.progress);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let forward = self.internal_tx.clone();
        self.session_id += 1;
        let id = self.session_id;
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send(Internal::Session(id, event)).is_err() {
                    break;
                }
            }
        });
        let started = tokio::task::block_in_place(|| {
            PrimarySession::start(
                stream,
                &setup,
                tracker,
                session::PrimaryData {
                    sync_point,
                    sync_point_ns,
                    generation,
                },
                progress,
                hub,
                tx,
            )
        });
        match started {
            Ok(session) => {
                self.primary = Some(session);
                self.session_key = Some(setup.key);
            }
            Err(error) => self.write_log(
                "replication",
                &format!("a secondary's connection failed: {error}"),
            ),
        }
    }

    /// As primary in sync: send a barrier; its acknowledgement records the
    /// sync point (everything changed before it is on the secondary).
    fn take_sync_point(&mut self) {
        if !self.in_sync || self.sync_barrier.is_some() {
            return;
        }
        if let Some(session) = self.primary.as_mut() {
            let _between = self.tracker.as_ref().map(Tracker::between_batches);
            let at = SystemTime::now();
            self.journal.lock().expect("journal").mark(at);
            let seq = session.barrier();
            self.sync_barrier = Some((seq, at, TokioInstant::now()));
        }
    }

    /// Routes this module's capture records to a new channel (no pause yet:
    /// the secondary is not in sync before its resynchronisation ends).
    fn open_feed(&mut self) -> Option<CaptureFeed> {
        self.hub.as_ref()?;
        let wake = match Wake::new() {
            Ok(wake) => wake,
            Err(error) => {
                warn!(module = %self.module.name, %error, "cannot create an eventfd: replicating without the capture");
                return None;
            }
        };
        let (tx, records) = std::sync::mpsc::channel();
        self.feed = Some((tx, Arc::clone(&wake)));
        self.route_feed(false);
        let hub = Arc::clone(self.hub.as_ref()?);
        Some(CaptureFeed { records, wake, hub })
    }

    /// While this node serves, a tracker journals every change (and feeds
    /// the session when one runs); otherwise there is none.
    fn ensure_tracker(&mut self) {
        if !self.machine.is_serving() {
            if self.primary.is_none() {
                self.stop_tracker();
            }
            return;
        }
        if self.tracker.is_some() {
            return;
        }
        let feed = self.open_feed();
        match Tracker::start(
            self.setup.clone(),
            feed,
            Arc::clone(&self.progress),
            Arc::clone(&self.journal),
        ) {
            Ok(tracker) => self.tracker = Some(tracker),
            Err(error) => {
                self.write_log(
                    "replication",
                    &format!("cannot watch the replicated directories: {error}"),
                );
                // Changes now go unseen: the journal cannot tell them.
                self.journal.lock().expect("journal").untrust();
            }
        }
    }

    fn stop_tracker(&mut self) {
        if self.tracker.take().is_some() && self.feed.take().is_some() {
            self.route_feed(false);
        }
    }

    /// Records an acknowledged sync point; the journal starts there.
    fn store_sync_point(&mut self, generation: u64, at: SystemTime) {
        if let Err(error) = self.files.store_sync_point(generation, at) {
            warn!(module = %self.module.name, error = %format!("{error:#}"), "cannot store the sync point");
            return;
        }
        if let Err(error) = self.journal.lock().expect("journal").rebase(generation, at) {
            warn!(module = %self.module.name, %error, "cannot rewrite the dirty-range journal");
        }
    }

    /// Re-routes the capture: to the feed (pausing durable writes when
    /// `pause`), or nowhere once the feed is closed.
    fn route_feed(&mut self, pause: bool) {
        let Some(hub) = &self.hub else { return };
        let pause = pause || self.unacked_pause;
        // An attach may wait for the release of an earlier detach's links
        // (up to 3 s, rarely): not on a runtime worker other tasks need.
        tokio::task::block_in_place(|| {
            for (root, dir) in self.roots.iter().zip(&self.setup.dirs) {
                hub.route(*root, dir, self.feed.clone(), pause);
            }
        });
        self.follow_attach_error();
    }

    /// Shows, in the module log and as `capture_error`, that the daemon's
    /// capture cannot be attached although a module serves (or detached
    /// although none does), and when that ends. The hub retries by itself.
    fn follow_attach_error(&mut self) {
        let Some(hub) = &self.hub else { return };
        let error = hub.attach_error();
        if error == self.attach_error {
            return;
        }
        match &error {
            Some(error) => {
                warn!(module = %self.module.name, %error, "the write capture's attachment cannot follow the modules");
                self.write_log("replication", &format!("cannot attach or detach the write capture (retried every 100 ms; while it is not attached, durable writes are not held until the secondary has them, and changes reach it through inotify and checksums only): {error}"));
            }
            None => self.write_log(
                "replication",
                "the write capture's attachment follows the modules again",
            ),
        }
        self.core.update(|m| m.capture_error = error.clone());
        self.attach_error = error;
    }

    fn close_sessions(&mut self) {
        self.route_feed(false);
        self.session_id += 1;
        self.connecting = false;
        self.primary = None;
        self.secondary = None;
        if let Some(tracker) = &self.tracker {
            session::detach(tracker);
        }
        self.in_sync = false;
    }

    /// The cluster secrets were reloaded: the witness client signs its next
    /// request with the new witness key, and a session keyed from a secret
    /// no longer accepted ends; one whose secrets are all still accepted
    /// goes on untouched (steps 2 and 3 of a rotation break nothing).
    fn follow_secrets(&mut self, scripts: &mpsc::UnboundedSender<Input>) {
        let witness_key = self.secret.borrow_and_update().witness_key();
        if let Some(client) = &self.lease_client {
            client.set_key(witness_key);
        }
        self.end_session_of_dropped_secret(scripts);
    }

    /// Ends the session, as a broken one ends, if it was keyed from a
    /// secret the current ones no longer accept: whoever holds that secret
    /// could read or forge its frames. The secondary then connects again,
    /// under the current keys.
    fn end_session_of_dropped_secret(&mut self, scripts: &mpsc::UnboundedSender<Input>) {
        if self.primary.is_none() && self.secondary.is_none() {
            return;
        }
        let Some(used) = self.session_key.as_ref().map(SessionKey::in_use) else {
            return;
        };
        if self.secret.borrow().replication_key().accepts_all_of(&used) {
            return;
        }
        info!(module = %self.module.name, "the replication session was keyed from a secret no longer accepted: ending it");
        let reason = "it was keyed from a cluster secret no longer accepted".to_owned();
        let ended = SessionEvent::Ended { reason };
        self.on_internal(Internal::Session(self.session_id, ended), scripts);
    }

    fn on_action(&mut self, request: ActionRequest, scripts: &mpsc::UnboundedSender<Input>) {
        let ActionRequest { action, verdict } = request;
        self.core.new_action();
        self.write_log("admin", action.path());
        let command = match action {
            ModuleAction::Start => Command::Start,
            ModuleAction::Stop => Command::Stop,
            ModuleAction::Restart => Command::Restart,
            ModuleAction::Prim => Command::Prim,
            ModuleAction::Second => Command::Second,
            ModuleAction::Swap => Command::Swap,
            ModuleAction::CheckersOn | ModuleAction::CheckersOff => {
                self.checkers_on
                    .send_replace(action == ModuleAction::CheckersOn);
                self.publish();
                self.core.answer(verdict);
                return;
            }
            ModuleAction::FailoverOn | ModuleAction::FailoverOff => {
                self.feed(
                    Input::SetFailover(action == ModuleAction::FailoverOn),
                    scripts,
                );
                self.core.answer(verdict);
                return;
            }
        };
        self.feed(Input::Command(command), scripts);
        self.core.answer(verdict);
    }

    fn on_checker(&mut self, report: CheckerReport, scripts: &mpsc::UnboundedSender<Input>) {
        let input = match self.core.checker(report) {
            Some(CheckerInput::ResourceDown(resource)) => Input::ResourceDown { resource },
            Some(CheckerInput::ResourceUp(resource)) => Input::ResourceUp { resource },
            Some(CheckerInput::Failed(action)) => Input::CheckerFailed { action },
            None => return,
        };
        self.feed(input, scripts);
    }

    /// Hands `input` to the machine and performs every action, in order.
    fn feed(&mut self, input: Input, scripts: &mpsc::UnboundedSender<Input>) {
        if let Input::ScriptDone {
            kind: fsm::ScriptKind::StopPrim,
            ok,
        } = input
        {
            // The machine goes on after a forced call whatever it returned.
            if ok || self.stop_prim_forced {
                if let Err(error) = self.started.clear() {
                    warn!(module = %self.module.name, error = %format!("{error:#}"), "cannot record that the application is stopped");
                }
            }
        }
        let now = self.now();
        let mut queue: std::collections::VecDeque<Input> = [input].into();
        // Back from a pause: before anything else (a replication that broke
        // meanwhile, a lease that ran out), the machine learns that what the
        // peer last said may be over.
        if self.pauses.paused_since(&mut self.pauses_seen) {
            warn!(module = %self.module.name, "this node was paused: the peer's role is checked again before anything is decided from it");
            queue.push_front(Input::PeerStale);
        }
        while let Some(input) = queue.pop_front() {
            for action in self.machine.handle(now, input) {
                if let Some(next) = self.perform(action, scripts) {
                    queue.push_back(next);
                }
            }
        }
        self.serving
            .store(self.machine.is_serving(), Ordering::Relaxed);
        self.ensure_tracker();
        self.settle_orphans();
        self.settle_held();
        self.publish();
    }

    /// Applies the machine's rule to writers held by a durability call that
    /// no secondary can acknowledge any more (docs/mirror-durability.md):
    /// they go on only once this node may serve alone; while it serves
    /// without that right every durable write is paused, session or not;
    /// once it stopped serving instead, those still held are killed.
    fn settle_held(&mut self) {
        let Some(hub) = self.hub.clone() else { return };
        let may_release = self.machine.may_release_unacknowledged(self.now());
        hub.hold_unacknowledged(&self.roots, !may_release);
        let fsync = self.module.sync == config::SyncMode::Fsync;
        let serving = matches!(self.machine.state(), State::Alone | State::Prim);
        let pause = fsync && serving && !may_release;
        if pause != self.unacked_pause {
            self.unacked_pause = pause;
            self.route_feed(fsync && self.in_sync);
        }
        if !serving && self.machine.phase() == Phase::Ready {
            let killed = hub.discard_held(&self.roots);
            if !killed.is_empty() {
                self.write_log(
                    "replication",
                    &format!("killed writers still held on durable writes no peer acknowledged, since this node stopped serving: pids {killed:?}"),
                );
            }
        }
    }

    /// Performs one action; some answer at once with the machine's next input.
    fn perform(&mut self, action: Action, scripts: &mpsc::UnboundedSender<Input>) -> Option<Input> {
        match action {
            Action::RunScript(run) => {
                let path = self.script_path(run.kind);
                match run.kind {
                    fsm::ScriptKind::StartPrim => {
                        if let Err(error) = self.started.set(run.to) {
                            warn!(module = %self.module.name, error = %format!("{error:#}"), "cannot record that the application is started: a crash of this daemon would leave it running");
                        }
                        // The pause set, and the capture attached for it,
                        // before the application runs.
                        self.settle_held();
                    }
                    fsm::ScriptKind::StopPrim => self.stop_prim_forced = run.force,
                    _ => {}
                }
                self.core
                    .run_script(&run, path, scripts, |kind, ok| Input::ScriptDone {
                        kind,
                        ok,
                    });
            }
            Action::ClaimVip => {
                if let Err(error) = self.vip(true) {
                    self.write_log("vip", &format!("claiming the VIP failed: {error:#}"));
                    return Some(Input::ResourceDown {
                        resource: "vip".to_owned(),
                    });
                }
            }
            Action::ReleaseVip => {
                if let Err(error) = self.vip(false) {
                    self.write_log("vip", &format!("releasing the VIP failed: {error:#}"));
                }
            }
            Action::SetReadOnly(on) => {
                let result = if on {
                    make_read_only(&self.setup.dirs)
                } else {
                    release_read_only(&self.setup.dirs);
                    Ok(())
                };
                match result {
                    Ok(()) => self.read_only = on,
                    Err(error) => self.write_log(
                        "replication",
                        &format!("cannot make the directories read-only: {error:#}"),
                    ),
                }
            }
            Action::StartReplication { role } => match role {
                ReplRole::Primary => {
                    if self.primary.as_ref().is_some_and(PrimarySession::alive) {
                        self.in_sync = true;
                        let pause = self.module.sync == config::SyncMode::Fsync;
                        self.route_feed(pause);
                        if pause && self.hub.is_none() {
                            self.write_log("replication", "sync = \"fsync\" without the write capture: durable writes are not held until the secondary has them");
                        }
                    } else {
                        return Some(Input::ReplicationBroken);
                    }
                }
                ReplRole::Secondary => self.connect_to_primary(),
            },
            Action::StopReplication if self.machine.report().handover.is_some() => {
                // The role is handed over: end the session on purpose, after
                // everything queued.
                if let Some(session) = self.primary.take() {
                    tokio::task::block_in_place(|| session.bye());
                }
                self.close_sessions();
            }
            Action::StopReplication => {
                // Flush what is queued, so that the sync point stays true;
                // not toward a peer that is lost: that cannot succeed, and
                // the wait (up to 2 s) would hold up this driver, and with
                // it the lease's fence, while the peer takes over. The
                // journal then goes on from the last sync point, as after
                // any broken stream.
                if let (true, true, Some(session)) = (
                    self.in_sync,
                    self.machine.peer_seen(),
                    self.primary.as_mut(),
                ) {
                    let at = SystemTime::now();
                    let seq = {
                        let _between = self.tracker.as_ref().map(Tracker::between_batches);
                        self.journal.lock().expect("journal").mark(at);
                        session.barrier()
                    };
                    let flushed = tokio::task::block_in_place(|| {
                        session.wait_acked(seq, Duration::from_secs(2))
                    });
                    if flushed {
                        let generation = self.machine.stamp().generation.0;
                        self.store_sync_point(generation, at);
                    }
                }
                self.close_sessions();
            }
            Action::DrainReplication => match self.primary.as_mut() {
                Some(session) => {
                    let seq = session.barrier_after_writes(self.tracker.as_ref());
                    self.drain_barrier = Some(seq);
                }
                None => return Some(Input::ReplicationBroken),
            },
            Action::StartResync => {
                if self.secondary.is_none() && !self.connecting {
                    self.connect_to_primary();
                }
            }
            Action::PersistStamp(stamp) => {
                let before = std::mem::replace(&mut self.persisted, stamp);
                if before.state == DataState::Copy
                    && before.generation.0 != 0
                    && stamp.generation != before.generation
                    && matches!(stamp.state, DataState::Newest | DataState::Shared)
                {
                    // A secondary takes over: its old primary held this
                    // copy's generation (plus what its own journal names),
                    // so a later resync of it starts here.
                    self.store_sync_point(before.generation.0, SystemTime::now());
                }
                self.stamp_stored = match self.files.store_stamp(&stamp) {
                    Ok(()) => true,
                    Err(error) => {
                        warn!(module = %self.module.name, error = %format!("{error:#}"), "cannot persist the data stamp");
                        self.write_log("fsm", &format!("cannot persist the data stamp: {error:#}"));
                        false
                    }
                };
            }
            Action::EndResync(generation) => {
                if !self.stamp_stored {
                    // The secondary would count itself a copy that this
                    // node's stamp does not know of: it stays partial.
                    warn!(module = %self.module.name, generation, "the resynchronisation is not ended: the data stamp could not be persisted");
                    self.write_log(
                        "replication",
                        "the secondary's resynchronisation is held at its end: the data stamp could not be persisted",
                    );
                } else if let Some(session) = &self.primary {
                    session.end_resync(generation);
                }
            }
            Action::AskWitness => self.ask_witness(),
            Action::AcquireLease { generation, forced } => {
                let claim = crate::witness::Claim {
                    generation: generation.0,
                    forced,
                };
                self.acquire_lease(claim)
            }
            Action::ReleaseLease => {
                if let Some(task) = self.lease_task.take() {
                    task.abort();
                }
            }
            Action::Log(event) => {
                if let Some((from, to)) = self.core.event(&event) {
                    let scripts = &self.module.scripts;
                    self.core.run_transition(
                        scripts.transition.clone(),
                        from,
                        to,
                        scripts.nicestoptimeout,
                    );
                }
            }
        }
        None
    }

    /// Starts the secondary's session on a blocking thread (connecting may
    /// take a few tries while the primary gets ready).
    fn connect_to_primary(&mut self) {
        self.data_replaced = true;
        self.secondary = None;
        self.session_id += 1;
        self.connecting = true;
        let id = self.session_id;
        let mut setup = self.setup.clone();
        let secret = self.secret.clone();
        let applier = Arc::clone(&self.applier);
        let stamp = self.machine.stamp();
        let written = self.journal.lock().expect("journal").base().is_some();
        let join = (stamp.generation.0, join_state(stamp.state, written));
        let primary = self.peer_replication;
        let internal = self.internal_tx.clone();
        let journal = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || {
            let diverged = divergence(&setup, &journal, stamp.generation.0);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut last = String::new();
            for attempt in 0..CONNECT_TRIES {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(250));
                }
                setup.key = SessionKey::new(secret.borrow().replication_key());
                match SecondarySession::start(
                    primary,
                    &setup,
                    Arc::clone(&applier),
                    join,
                    diverged.clone(),
                    tx.clone(),
                ) {
                    Ok(session) => {
                        let key = setup.key;
                        let _ = internal.send(Internal::SecondaryStarted(id, Ok((session, key))));
                        // Forward the session's events until it ends: only
                        // its thread may hold a sender now, or this loop (and
                        // the runtime's shutdown, which waits for it) would
                        // never end.
                        drop(tx);
                        while let Some(event) = rx.blocking_recv() {
                            if internal.send(Internal::Session(id, event)).is_err() {
                                break;
                            }
                        }
                        return;
                    }
                    Err(error) => last = error.to_string(),
                }
            }
            let _ = internal.send(Internal::SecondaryStarted(id, Err(last)));
        });
    }

    fn ask_witness(&mut self) {
        let Some(Witness::Ping(ping)) = self.module.witness.clone() else {
            let _ = self.internal_tx.send(Internal::Witness(true));
            return;
        };
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let won =
                crate::witness::ping::ping_any_every(&ping.addresses, ping.interval, ping.timeout)
                    .await;
            let _ = internal.send(Internal::Witness(won));
        });
    }

    fn acquire_lease(&mut self, claim: crate::witness::Claim) {
        let Some(Witness::Arbiter(arbiter)) = self.module.witness.clone() else {
            return;
        };
        if let Some(task) = self.lease_task.take() {
            task.abort();
        }
        let client = Arc::clone(self.lease_client.get_or_insert_with(|| {
            Arc::new(crate::witness::arbiter::ArbiterClient::new(
                arbiter.address,
                self.secret.borrow().witness_key(),
                self.cluster_id,
                self.epoch,
            ))
        }));
        let internal = self.internal_tx.clone();
        let module = self.module.name.clone();
        let node = self.core.node.clone();
        self.lease_task = Some(tokio::spawn(async move {
            let every = arbiter.lease / 3;
            loop {
                let started = tokio::time::Instant::now();
                let answer = client
                    .request_lease(&module, &node, arbiter.lease, claim, every)
                    .await;
                use crate::witness::protocol::Verdict;
                // A lease held by the peer (or a witness still starting)
                // frees at a known instant: ask again then, not at the next
                // regular request, up to a third of a lease later.
                let frees_in = match &answer {
                    Ok(reply) => match &reply.verdict {
                        Verdict::Held { remaining, .. } | Verdict::Starting { remaining } => {
                            Some(*remaining)
                        }
                        _ => None,
                    },
                    Err(_) => None,
                };
                let message = match answer {
                    Ok(reply) => match reply.verdict {
                        Verdict::Granted {
                            duration,
                            generation,
                            ..
                        } => {
                            // Valid from when the request left, minus a margin
                            // for this node's clock: an instant, not a length,
                            // so that a pause before the driver reads it does
                            // not stretch the lease.
                            let until = started + duration.saturating_sub(duration / 10);
                            Internal::Lease(Ok((until, claim.generation, generation)))
                        }
                        Verdict::Stale { generation } => Internal::LeaseStale {
                            newer: generation,
                            ours: claim.generation,
                        },
                        Verdict::Held { holder, remaining } => Internal::Lease(Err(format!(
                            "held by {holder} for {} ms more",
                            remaining.as_millis()
                        ))),
                        Verdict::Starting { remaining } => Internal::Lease(Err(format!(
                            "the witness started recently and grants nothing for {} ms",
                            remaining.as_millis()
                        ))),
                    },
                    Err(error) => Internal::Lease(Err(error.to_string())),
                };
                if internal.send(message).is_err() {
                    return;
                }
                let next = started + every;
                let next = frees_in.map_or(next, |after| {
                    next.min(tokio::time::Instant::now() + after + Duration::from_millis(1))
                });
                tokio::time::sleep_until(next).await;
            }
        }));
    }

    /// Claims (or releases) the VIP and announces it.
    fn vip(&self, claim: bool) -> anyhow::Result<()> {
        let Some(vip) = self.module.vip else {
            return Ok(());
        };
        let iface = self.module.interface.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                if claim {
                    crate::net::vip::claim(&iface, vip).await?;
                    let mac = crate::net::interface_mac(&iface)?;
                    crate::net::announce(&iface, vip, mac, 3)?;
                } else {
                    crate::net::vip::release(&iface, vip).await?;
                }
                anyhow::Ok(())
            })
        })
    }

    fn publish_progress(&mut self) {
        let p = &self.progress;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let role_active = self.primary.is_some() || self.secondary.is_some();
        let (done, total) = (load(&p.bytes_done), load(&p.bytes_total));
        let now = TokioInstant::now();
        // ETA from the rate since the last sample, once the walk knows the total.
        let eta_seconds = match self.sample {
            Some((then, before)) if done > before && p.walk_complete.load(Ordering::Relaxed) => {
                let rate = (done - before) as f64 / now.duration_since(then).as_secs_f64();
                Some(total.saturating_sub(done) as f64 / rate)
            }
            _ if done >= total => Some(0.0),
            _ => None,
        };
        self.sample = Some((now, done));
        let in_sync = self.in_sync;
        let lag = self.lag;
        let progress = role_active.then(|| ReplicationProgress {
            bytes_done: done,
            bytes_total: total,
            files_done: load(&p.files_done),
            files_total: load(&p.files_total),
            eta_seconds,
            lag_seconds: if in_sync { lag.as_secs_f64() } else { 0.0 },
            backlog_bytes: load(&p.backlog),
        });
        crate::api::progress::publish(&self.core.status, &self.module.name, progress);
    }

    fn script_path(&self, kind: fsm::ScriptKind) -> Option<PathBuf> {
        let scripts = &self.module.scripts;
        match kind {
            fsm::ScriptKind::Prestart => scripts.prestart.clone(),
            fsm::ScriptKind::StartPrim => scripts.start_prim.clone(),
            fsm::ScriptKind::StopPrim => scripts.stop_prim.clone(),
            fsm::ScriptKind::Poststop => scripts.poststop.clone(),
            fsm::ScriptKind::StartBoth | fsm::ScriptKind::StopBoth => None,
        }
    }

    fn write_log(&mut self, source: &str, text: &str) {
        self.core.write_log(source, text);
    }

    /// Publishes the machine's state to the API and the heartbeat.
    fn publish(&self) {
        let (state, phase) = (self.machine.state(), self.machine.phase());
        {
            let mut status = self.core.status.write().expect("status lock");
            if let Some(m) = status
                .modules
                .iter_mut()
                .find(|m| m.name == self.module.name)
            {
                m.state = state.as_str().to_owned();
                m.phase = phase.to_string();
                m.serving = self.machine.is_serving();
                m.pauses_seen = Some(self.pauses_seen);
                m.exit_code = self.machine.exit_code();
                m.checkers = *self.checkers_on.borrow();
                m.failover = self.machine.failover();
                m.generation = self.machine.stamp().generation.0;
            }
        }
        let report = encode_report(&self.module.name, &self.machine.report());
        let mut reports = self.reports.lock().expect("reports lock");
        match reports.iter_mut().find(|r| r.name == report.name) {
            Some(slot) => *slot = report,
            None => reports.push(report),
        }
    }
}

/// What this node may have changed in `generation` that its peer lacks:
/// everything its journal names since the sync point of that generation
/// (every name of a file it marks `linked`), and every entry changed since
/// the journal's last durable batch; `None`
/// when the journal cannot tell (see `mirror::journal`).
fn divergence(
    setup: &Setup,
    journal: &Mutex<Journal>,
    generation: u64,
) -> Option<Vec<crate::mirror::path::RelPath>> {
    let journal = journal.lock().expect("journal");
    let (base, _, set) = journal.snapshot()?;
    if base != generation || generation == 0 || set.untrusted {
        return None;
    }
    // A file marked `linked` is named by every name it has now.
    let changed = session::changed_since(setup, journal.cutoff(), &set.linked);
    let mut paths: Vec<_> = set.files.into_keys().chain(set.trees).collect();
    paths.extend(changed);
    paths.sort();
    paths.dedup();
    (paths.len() <= crate::mirror::wire::MAX_DIVERGED).then_some(paths)
}

/// Accepts the peer's replication connections and hands them to the driver
/// while this node serves.
fn spawn_listener(
    listen: SocketAddr,
    peer_ips: Vec<IpAddr>,
    serving: Arc<AtomicBool>,
    internal: mpsc::UnboundedSender<Internal>,
    module: String,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(listen)
        .with_context(|| format!("binding the replication port {listen} of module {module}"))?;
    std::thread::Builder::new()
        .name(format!("halo-listen-{module}"))
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let from = stream.peer_addr().map(|a| a.ip().to_canonical());
                let known = from
                    .as_ref()
                    .is_ok_and(|ip| peer_ips.iter().any(|p| p.to_canonical() == *ip));
                if !known {
                    warn!(module = %module, from = ?from, "replication connection from an address that is not the peer's: refused");
                    continue;
                }
                if !serving.load(Ordering::Relaxed) {
                    continue;
                }
                if internal.send(Internal::Accepted(stream)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Makes `dirs` read-only to applications: a read-only bind mount of each
/// over itself (the applier writes through descriptors opened before).
fn make_read_only(dirs: &[PathBuf]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use nix::mount::{mount, MsFlags};
    for dir in dirs {
        if read_only_bind(dir) {
            continue;
        }
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {}", dir.display()))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("remounting {} read-only", dir.display()))?;
    }
    Ok(())
}

/// Removes the read-only bind mounts (also those a crashed daemon left).
fn release_read_only(dirs: &[PathBuf]) {
    for dir in dirs {
        // Only read-only mounts: the directory may itself be a mount point
        // of the administrator's (a writable one).
        while read_only_bind(dir) {
            if nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

fn mount_entries() -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let options = fields.next()?;
            Some((PathBuf::from(unescape(mount_point)), options.to_owned()))
        })
        .collect()
}

fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn read_only_bind(dir: &std::path::Path) -> bool {
    mount_entries()
        .iter()
        .rev()
        .find(|(p, _)| p == dir)
        .is_some_and(|(_, options)| options.split(',').any(|o| o == "ro"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_former_primary_never_joins_as_a_copy() {
        // A secondary's interrupted resync: still a copy plus the primary's
        // own changes, which the primary compares.
        assert_eq!(join_state(DataState::Partial, false), 0);
        assert_eq!(join_state(DataState::Copy, false), 1);
        // A former primary starting to follow: its own writes may differ.
        assert_eq!(join_state(DataState::Partial, true), 2);
        assert_eq!(join_state(DataState::Shared, true), 2);
        assert_eq!(join_state(DataState::Newest, true), 3);
    }

    #[test]
    fn reports_cross_the_heartbeat_unchanged() {
        for state in [
            State::Stop,
            State::Wait,
            State::Alone,
            State::Prim,
            State::Second,
        ] {
            for data in [
                DataState::Partial,
                DataState::Copy,
                DataState::Shared,
                DataState::Newest,
            ] {
                for handover in [None, Some(Handover::Stopped), Some(Handover::Swap)] {
                    for following in [None, Some(Generation(9))] {
                        let report = PeerReport {
                            state,
                            phase: Phase::Transient,
                            stamp: DataStamp {
                                generation: Generation(12),
                                state: data,
                            },
                            following,
                            handover,
                        };
                        let wire = encode_report("db", &report);
                        assert_eq!(decode_report(&wire), Some(report));
                    }
                }
            }
        }
    }
}
