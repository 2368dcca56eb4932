//! The mirror module's machine: STOP, WAIT, ALONE, PRIM, SECOND.
//!
//! Two nodes; the primary (ALONE or PRIM) holds the VIP and runs the
//! application, the secondary (SECOND) receives its writes and keeps its
//! directories read-only. The machine decides roles from what it knows —
//! commands, the peer's heartbeat reports, the witness, replication results,
//! and the *data stamp* of each node — and emits what the daemon must do.
//!
//! # Data stamp: who has the good data
//! Each node persists a [`DataStamp`] beside its data (action `PersistStamp`):
//! a [`Generation`] and a [`DataState`]:
//! - **Newest**: this node served as the only writer (ALONE) when it last
//!   persisted: nobody can have newer data, it may start alone.
//! - **Shared**: this node was primary with a secondary in sync: the secondary
//!   may have taken over since, so it must not start alone.
//! - **Copy**: a complete copy of the generation, received as secondary.
//! - **Partial**: a resynchronisation into this node was interrupted: never
//!   primary unless forced.
//!
//! Every start of serving ALONE raises the generation above every generation
//! the node knows of (its own, the peer's, the witness's), to the next number
//! of its own parity (odd for the node whose name sorts first, even for the
//! other), persisted before the VIP is claimed: the node left behind is known
//! to be stale, and two nodes that start serving without seeing each other
//! never claim the same generation. A secondary takes the primary's
//! generation (as Copy) only when its resynchronisation completes; the
//! primary turns Newest into Shared once it sees that. A planned swap keeps
//! the generation: the old primary becomes its Copy, the new one its writer.
//!
//! When both nodes see each other and neither serves, the one whose data ranks
//! higher leads: usable data (generation > 0 and not Partial) first, then the
//! higher generation, then the writer (Shared/Newest) over a Copy; equal ranks
//! go to a node whose peer is stopped, then to `defaultprim`, then to the
//! smaller node name. A node that does not serve follows a peer that serves,
//! whatever the generations (the peer may have been forced with `halo prim`,
//! or won the witness during a split): it logs `DivergentData` when that
//! discards writes of its own, so that the cluster converges by itself.
//!
//! # Witness and split brain
//! Serving without seeing the peer needs the witness (`WitnessKind`):
//! - **none**: no check; in a partition both nodes serve (SafeKit without a
//!   split-brain checker) and on reconnection one is resynchronised from the other.
//! - **ping** (SafeKit-compatible): `AskWitness` when a node that serves or
//!   could take over loses its peer (SafeKit asks from PRIM and SECOND; halo
//!   also from ALONE, since a primary that went ALONE when replication broke
//!   just before the heartbeats did is the node an isolation must stop); the
//!   node that reaches the witness serves (a serving node keeps serving while
//!   it asks), the other WAITs and asks again every `witness_retry`. In a
//!   *partial* partition (heartbeats lost, witness reachable from both)
//!   **both** nodes reach it and both serve: the ping tells "I can reach the
//!   witness", not "the other cannot". On reconnection both are primary; the
//!   node with the higher-ranked data stays and the other logs
//!   `DivergentData` and is resynchronised: its writes during the split are
//!   lost.
//! - **arbiter** (safer): a `halo witness` process grants one time-limited
//!   lease per module. A primary asks for it (`AcquireLease`) as soon as it
//!   serves, and the lease client keeps it renewed (`LeaseGranted{until}`),
//!   so a secondary that loses its peer in a partial partition is refused
//!   (`LeaseLost`) while the primary still holds it. Without the peer, a node
//!   serves only while its lease is valid: at `until` without renewal it
//!   releases the VIP at once, stops the application and WAITs. The arbiter
//!   must not grant the lease to the other node before `until` plus the time a
//!   stop takes plus clock drift, so at most one node serves at every instant.
//!
//! With the peer in sight no witness is asked (the peer says what it does),
//! except that with the arbiter, serving ALONE always needs a valid lease:
//! what a node sees of its peer is a pulse old, or one-way, and a peer that
//! lost it takes the lease once its own runs out. Only a heal where both
//! serve is settled by the data rather than the lease.
//!
//! # Pauses
//! A node whose process was paused (a frozen VM, SIGSTOP, a CPU-starved
//! cgroup) longer than the heartbeats allow may wake up believing a past:
//! its peer may have lost it and taken over meanwhile. The driver feeds
//! `PeerStale` before anything else after such a pause; the peer's last
//! report is then no longer trusted until a fresh one arrives. A serving
//! node meanwhile holds its role (Transient), except with the arbiter when
//! its lease has run out: it releases the VIP at once and WAITs.
//!
//! # Transitions
//! `step?` marks a step taken only when needed. Scripts wait for `ScriptDone`;
//! a stop script that fails or times out runs again with `force`, and the
//! transition goes on whatever the forced call returns. "leave" is:
//! ReleaseVip?, stop_prim?, (DrainReplication → hand over)? when the peer is a
//! SECOND in sync, StopReplication?. Phase is Transient while steps or a
//! question (peer, witness, lease) are in flight, Ready otherwise.
//!
//! | from | on | condition | steps | to |
//! |---|---|---|---|---|
//! | STOP | `Start` / `Prim` / `Second` | | prestart | WAIT (then decide) |
//! | WAIT | peer unknown | | (wait for a heartbeat or `PeerLost`) | WAIT Transient |
//! | WAIT | peer seen, neither serves | our data ranks higher, or `Prim`; arbiter: lease valid (else ask it, or WAIT) | bump generation, ClaimVip, start_prim | ALONE |
//! | WAIT | peer seen, neither serves | neither has data, `defaultprim` is us | as above | ALONE |
//! | WAIT | peer seen, neither serves | otherwise | log "data is stale: run halo prim to force" (or no data, …) | WAIT |
//! | WAIT | peer serves | | log DivergentData?, SetReadOnly(true), StartReplication(secondary), StartResync … `ResyncDone` | SECOND |
//! | WAIT | peer lost | Newest data, `Prim`, or in-sync ex-SECOND with failover on; witness won | as WAIT → ALONE | ALONE |
//! | WAIT | peer lost | otherwise | log the reason | WAIT |
//! | ALONE | peer becomes SECOND of our generation | | StartReplication(primary) | PRIM |
//! | ALONE | peer serves too (split healed) | peer's data ranks higher | log DivergentData, leave, as WAIT → SECOND | SECOND |
//! | ALONE | lease not renewed by `until` (arbiter, peer not seen) | | ReleaseVip at once, stop_prim | WAIT |
//! | PRIM | peer stops, waits, or replication breaks | arbiter: lease valid | bump generation, StopReplication | ALONE |
//! | PRIM | peer stops, waits, or replication breaks | arbiter, no valid lease | ReleaseVip, stop_prim, StopReplication | WAIT |
//! | PRIM, ALONE | `PeerStale` | arbiter, lease run out | ReleaseVip at once, stop_prim, StopReplication | WAIT |
//! | PRIM, ALONE | `PeerStale` | otherwise | (hold the role, Transient, until the peer's next report or `PeerLost`) | same |
//! | PRIM | `PeerLost` | witness none / lease valid | as above | ALONE |
//! | PRIM, ALONE | `PeerLost` | ping | AskWitness (still serving, Transient); won: as above; lost: leave | ALONE / WAIT |
//! | PRIM | `PeerLost` | arbiter, no valid lease | ReleaseVip, stop_prim, StopReplication | WAIT |
//! | PRIM | `Swap` | SECOND in sync | ReleaseVip, stop_prim, DrainReplication … `ReplicationDrained`, hand over, StopReplication; when the peer is primary: as WAIT → SECOND | SECOND |
//! | SECOND | peer hands over (swap) | | StopReplication, SetReadOnly(false), ClaimVip, start_prim, StartReplication(primary) | PRIM |
//! | SECOND | peer hands over (stop) | failover on | StopReplication, SetReadOnly(false), bump, ClaimVip, start_prim | ALONE |
//! | SECOND | `PeerLost` | in sync, failover on, witness won | as above | ALONE |
//! | SECOND | `PeerLost` | not in sync, failover off, or witness lost | StopReplication, SetReadOnly(false) | WAIT |
//! | SECOND | `ReplicationBroken` | | StopReplication, SetReadOnly(false); after `rejoin_delay`: as WAIT → SECOND | WAIT |
//! | ALONE, PRIM | `CheckerFailed{Restart}` | within maxloop | stop_prim, start_prim (VIP and replication kept) | same |
//! | any | `CheckerFailed{StopStart}` | within maxloop | as `Stop` (hands over), then as `Start` | … |
//! | any | `CheckerFailed{Restart or StopStart}` | beyond maxloop | log MaxloopReached, as `Stop` | STOP |
//! | any | `ResourceDown` | | leave (hands over) | WAIT |
//! | any | `Stop`, `CheckerFailed{Stop}`, start script failed | | leave (hands over), SetReadOnly(false)?, poststop | STOP |
//!
//! A node that handed its role over (swap, or a stop with a SECOND in sync)
//! reports it in every heartbeat and does not lead again until the peer
//! either takes the role (it then follows) or declines it by reporting WAIT
//! or STOP (failover off, data not in sync): the handover is then cleared.
//!
//! A transition that must change course lets the running script end (a
//! resynchronisation is dropped at once), discards the remaining steps, and
//! plans again from what is really held (VIP, application, replication).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CheckerAction, Command, Event, Instant, NodeName, Phase, RestartBudget, RestartPolicy,
    RunningScript, ScriptCall, ScriptEnd, ScriptKind, ScriptRun, ScriptTimeouts, State, WaitReason,
};

/// Generation of a node's replicated data; 0 means no data yet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

/// What a node's data is, relative to its generation (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    /// A resynchronisation into this node was interrupted: the files mix two generations.
    Partial,
    /// A complete copy of the generation, received as secondary.
    Copy,
    /// Written as primary while a secondary was in sync: the secondary may have taken over since.
    Shared,
    /// Written as the only writer: nobody can have newer data.
    Newest,
}

/// The persisted description of a node's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataStamp {
    /// The generation.
    pub generation: Generation,
    /// What the data is within it.
    pub state: DataState,
}

impl DataStamp {
    /// The stamp of a node that never held data (fresh installation).
    pub const EMPTY: DataStamp = DataStamp {
        generation: Generation(0),
        state: DataState::Copy,
    };

    /// Whether this data may serve: it exists and is consistent.
    pub fn usable(&self) -> bool {
        self.generation.0 > 0 && self.state != DataState::Partial
    }

    fn writer(&self) -> bool {
        matches!(self.state, DataState::Shared | DataState::Newest)
    }

    /// Preference between two nodes' data, before tie-breaks.
    fn rank(&self) -> (bool, Generation, bool) {
        (self.usable(), self.generation, self.writer())
    }
}

/// A primary's message to its secondary that it has left the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handover {
    /// It stopped (command, checker, resource) after flushing replication: take over if failover is on.
    Stopped,
    /// Planned swap, replication flushed: take over whatever failover says.
    Swap,
}

/// What a node tells its peer in every heartbeat about this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Its state.
    pub state: State,
    /// Its phase.
    pub phase: Phase,
    /// Its data stamp.
    pub stamp: DataStamp,
    /// As secondary: the generation of the primary it replicates.
    pub following: Option<Generation>,
    /// Set by a former primary once its replication is flushed.
    pub handover: Option<Handover>,
}

/// How a node that lost its peer decides whether it may serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WitnessKind {
    /// No witness: serve whenever the data allows (both nodes serve in a partition).
    None,
    /// Ping one or more addresses (SafeKit's split-brain checker).
    Ping,
    /// A `halo witness` arbiter granting one time-limited lease per module.
    Arbiter,
}

/// The mirror machine's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorConfig {
    /// This node's name.
    pub node: NodeName,
    /// The other node's name.
    pub peer: NodeName,
    /// The node that becomes primary on a first start (no data on either side) and wins ties.
    pub defaultprim: Option<NodeName>,
    /// Whether a secondary takes over by itself (`halo failover on|off`); the initial value.
    pub failover: bool,
    /// Split-brain protection.
    pub witness: WitnessKind,
    /// How long a node that could not reach the ping witness waits before asking again.
    pub witness_retry: Duration,
    /// How long a secondary whose replication broke waits before rejoining.
    pub rejoin_delay: Duration,
    /// Script timeouts.
    pub scripts: ScriptTimeouts,
    /// The maxloop policy of checker restarts.
    pub restart: RestartPolicy,
}

impl MirrorConfig {
    /// The defaults for the pair `node`, `peer`: failover on, ping witness.
    pub fn new(node: impl Into<NodeName>, peer: impl Into<NodeName>) -> Self {
        MirrorConfig {
            node: node.into(),
            peer: peer.into(),
            defaultprim: None,
            failover: true,
            witness: WitnessKind::Ping,
            witness_retry: Duration::from_secs(5),
            rejoin_delay: Duration::from_secs(5),
            scripts: ScriptTimeouts::default(),
            restart: RestartPolicy::default(),
        }
    }
}

/// Which end of the replication this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplRole {
    /// Ships writes (and serves resynchronisations) to the peer.
    Primary,
    /// Receives and applies the peer's writes.
    Secondary,
}

/// What happens to a mirror module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An administrator command.
    Command(Command),
    /// `halo failover on|off`.
    SetFailover(bool),
    /// A checker detected a failure.
    CheckerFailed {
        /// What the checker asks for.
        action: CheckerAction,
    },
    /// A resource that the node needs is down: leave the primary role, do not take it.
    ResourceDown {
        /// The resource's name.
        resource: String,
    },
    /// A resource reported down is up again.
    ResourceUp {
        /// The resource's name.
        resource: String,
    },
    /// A script started by `RunScript` ended.
    ScriptDone {
        /// Which script.
        kind: ScriptKind,
        /// Whether it succeeded in time.
        ok: bool,
    },
    /// A heartbeat from the peer arrived (the peer is seen).
    PeerReport(PeerReport),
    /// No heartbeat from the peer on any network for the timeout (also sent when none
    /// arrived within the timeout of the daemon's start).
    PeerLost,
    /// This node was paused (its heartbeat thread missed its ticks: a frozen
    /// VM, SIGSTOP, CPU starvation): the peer may have lost it meanwhile and
    /// taken over, so what it last reported is no longer known to be true
    /// until its next report (or `PeerLost`).
    PeerStale,
    /// The ping witness's answer to `AskWitness`.
    WitnessAnswer {
        /// Whether it was reached.
        won: bool,
    },
    /// The arbiter granted or renewed the lease until `until` (on this machine's clock).
    LeaseGranted {
        /// End of validity, minus the lease client's safety margin.
        until: Instant,
        /// The data generation the request claimed: the witness now knows
        /// this node's data is at least that new.
        generation: Generation,
        /// The highest generation the witness had granted to before (above
        /// ours only when a forced claim overrode it).
        recorded: Generation,
    },
    /// The arbiter refused the lease: it granted it before to data of the
    /// newer generation `newer` (the peer served alone since).
    LeaseStale {
        /// The generation the witness knows of.
        newer: Generation,
    },
    /// The arbiter refused the lease, revoked it, or could not be reached for a first grant.
    LeaseLost,
    /// Every write made before `DrainReplication` is on the secondary.
    ReplicationDrained,
    /// The resynchronisation asked by `StartResync` completed: the secondary is in sync.
    ResyncDone,
    /// Primary: a secondary's resynchronisation to `generation` has sent
    /// everything; its end (after which the secondary counts itself a copy
    /// and may take over) waits for `EndResync`.
    ResyncSent {
        /// The generation the secondary is being brought to.
        generation: u64,
    },
    /// Replication (or a resynchronisation, or a drain) broke.
    ReplicationBroken,
    /// The deadline from `next_deadline` passed.
    Timer,
}

/// What the driver must do for a mirror module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run a module script and answer `ScriptDone`.
    RunScript(ScriptRun),
    /// Take the VIP.
    ClaimVip,
    /// Give up the VIP.
    ReleaseVip,
    /// Make the replicated directories read-only to applications (secondary) or writable.
    SetReadOnly(bool),
    /// Start replicating in the given role.
    StartReplication {
        /// Which end.
        role: ReplRole,
    },
    /// Stop replicating (the primary keeps journaling what changes).
    StopReplication,
    /// Primary: flush every write made so far to the secondary, answer `ReplicationDrained`.
    DrainReplication,
    /// Secondary: bring the data in sync with the primary, answer `ResyncDone`.
    StartResync,
    /// Write the data stamp durably before the next action.
    PersistStamp(DataStamp),
    /// Primary: tell the secondary its resynchronisation to `generation`
    /// is complete (only once the stamp before it is durable).
    EndResync(u64),
    /// Ping the witness, answer `WitnessAnswer`.
    AskWitness,
    /// Obtain the arbiter's lease and keep it renewed until `ReleaseLease`,
    /// claiming data of `generation` (forced by `halo prim` when `forced`);
    /// emitted again when the claim changes.
    AcquireLease {
        /// This node's data generation.
        generation: Generation,
        /// Grant even if the witness granted to newer data before.
        forced: bool,
    },
    /// Give the lease back.
    ReleaseLease,
    /// Log an event.
    Log(Event),
}

/// A forced role asked by `halo prim` / `halo second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Force {
    Prim,
    Second,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    /// No heartbeat yet since the daemon started.
    Unknown,
    Lost,
    Seen,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PingState {
    asked: bool,
    answer: Option<bool>,
    retry_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LeaseState {
    wanted: bool,
    until: Option<Instant>,
    refused: bool,
    /// The last refusal said the witness knows newer data.
    stale: bool,
    /// The (generation, forced) of the last `AcquireLease`.
    claim: Option<(Generation, bool)>,
    /// The highest generation of a grant: what the witness knows of our data.
    registered: Option<Generation>,
}

/// What this node really holds, whatever the state says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    vip: bool,
    app: bool,
    repl: Option<ReplRole>,
    read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Question {
    Peer,
    Witness,
    Lease,
}

/// Where the module should be, given what is known now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Stop,
    Prestart,
    Wait(WaitReason),
    /// Stay where we are (Transient) until the question is answered.
    Ask(Question),
    Alone,
    Prim,
    Second,
}

impl Decision {
    fn state(&self) -> Option<State> {
        match self {
            Decision::Stop => Some(State::Stop),
            Decision::Prestart | Decision::Wait(_) => Some(State::Wait),
            Decision::Ask(_) => None,
            Decision::Alone => Some(State::Alone),
            Decision::Prim => Some(State::Prim),
            Decision::Second => Some(State::Second),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Act(Action),
    Script(ScriptCall),
    Drain(Handover),
    Resync,
    /// Start a new generation as the only writer.
    Bump,
    /// Become the writer of the current generation (swap).
    TakeOver,
    /// Become the secondary of the peer's generation.
    Follow,
    MarkPartial,
    Synced,
    Prestarted,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Script(RunningScript),
    Drain(Handover),
    Resync,
}

#[derive(Debug)]
struct Plan {
    from: State,
    goal: State,
    steps: VecDeque<Step>,
    awaiting: Option<Awaiting>,
    abort: bool,
}

/// The mirror module's state machine on this node.
#[derive(Debug)]
pub struct Mirror {
    cfg: MirrorConfig,
    state: State,
    phase: Phase,
    reported: (State, Phase),
    stamp: DataStamp,
    enabled: bool,
    prestarted: bool,
    restart_after_stop: bool,
    failover: bool,
    force: Option<Force>,
    liveness: Liveness,
    peer: Option<PeerReport>,
    peer_max_generation: Generation,
    /// As secondary: the generation of which our data is a complete copy.
    in_sync_with: Option<Generation>,
    following: Option<Generation>,
    handover: Option<Handover>,
    swapping: bool,
    /// As primary: replication to the secondary broke.
    pair_broken: bool,
    /// The generation was raised for the current ALONE episode.
    alone_bumped: bool,
    rejoin_after: Option<Instant>,
    ping: PingState,
    lease: LeaseState,
    resources_down: BTreeSet<String>,
    budget: RestartBudget,
    held: Held,
    plan: Option<Plan>,
    wait_logged: Option<WaitReason>,
}

impl Mirror {
    /// A stopped mirror module whose data carries `stamp` (read from disk by the driver).
    pub fn new(cfg: MirrorConfig, stamp: DataStamp) -> Self {
        let budget = RestartBudget::new(cfg.restart);
        let failover = cfg.failover;
        Mirror {
            cfg,
            state: State::Stop,
            phase: Phase::Ready,
            reported: (State::Stop, Phase::Ready),
            stamp,
            enabled: false,
            prestarted: false,
            restart_after_stop: false,
            failover,
            force: None,
            liveness: Liveness::Unknown,
            peer: None,
            peer_max_generation: Generation(0),
            in_sync_with: None,
            following: None,
            handover: None,
            swapping: false,
            pair_broken: false,
            alone_bumped: false,
            rejoin_after: None,
            ping: PingState::default(),
            lease: LeaseState::default(),
            resources_down: BTreeSet::new(),
            budget,
            held: Held::default(),
            plan: None,
            wait_logged: None,
        }
    }

    /// The module's state on this node.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the state is settled.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether this node serves the module: PRIM or ALONE, Ready (ready.txt answers 200).
    pub fn is_serving(&self) -> bool {
        matches!(self.state, State::Prim | State::Alone) && self.phase == Phase::Ready
    }

    /// Exit code of `halo state -q`.
    pub fn exit_code(&self) -> u8 {
        self.state.exit_code()
    }

    /// This node's data stamp, as last persisted.
    pub fn stamp(&self) -> DataStamp {
        self.stamp
    }

    /// Whether failover is on.
    pub fn failover(&self) -> bool {
        self.failover
    }

    /// Whether the peer's heartbeats are heard now (and not in doubt after a pause).
    pub fn peer_seen(&self) -> bool {
        self.liveness == Liveness::Seen
    }

    /// What to put in the next heartbeat to the peer.
    pub fn report(&self) -> PeerReport {
        PeerReport {
            state: self.state,
            phase: self.phase,
            stamp: self.stamp,
            following: self.following,
            handover: self.handover,
        }
    }

    /// When the driver must call `handle(_, Input::Timer)`.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.lease.until, self.ping.retry_at, self.rejoin_after]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feeds one input at `now`; returns the actions to perform, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let lease_expired = self.expire(now);
        self.fence(now, &mut out);
        if lease_expired {
            out.push(Action::Log(Event::LeaseExpired));
        }
        self.apply(now, input, &mut out);
        self.fence(now, &mut out);
        let decision = self.decide(now);
        if let Some(plan) = &mut self.plan {
            if decision.state().is_some_and(|goal| goal != plan.goal) {
                plan.abort = true;
                // A resynchronisation may take hours: drop it now rather than
                // wait; the next plan stops the replication it belongs to.
                if plan.awaiting == Some(Awaiting::Resync) {
                    plan.awaiting = None;
                }
            }
        }
        self.run(now, &mut out);
        let decision = self.decide(now);
        self.side_effects(&decision, &mut out);
        self.settle_stamp(&mut out);
        if self.reported != (self.state, self.phase) {
            out.push(Action::Log(Event::StateChanged {
                from: self.reported.0,
                to: self.state,
                phase: self.phase,
            }));
            self.reported = (self.state, self.phase);
        }
        out
    }

    fn serving(&self) -> bool {
        matches!(self.state, State::Alone | State::Prim)
    }

    fn peer_generation(&self) -> Generation {
        self.peer.map_or(Generation(0), |r| r.stamp.generation)
    }

    fn lease_valid(&self, now: Instant) -> bool {
        self.lease.until.is_some_and(|until| now < until)
    }

    /// Whether a writer held by a durability call may go on although no
    /// secondary acknowledged its data: only once this node is allowed to
    /// serve alone, on a generation the peer cannot overtake. That is ALONE
    /// on its own generation (bumped), and with a ping witness not while it
    /// asks; with the arbiter, while the lease is valid and granted to a
    /// claim of that very generation (so the witness refuses the peer's older
    /// data). Otherwise the writer stays held: the node either gets there,
    /// or stops the application without ever acknowledging it.
    pub fn may_release_unacknowledged(&self, now: Instant) -> bool {
        self.state == State::Alone
            && self.alone_bumped
            && match self.cfg.witness {
                WitnessKind::None => true,
                WitnessKind::Ping => !self.ping.asked,
                WitnessKind::Arbiter => {
                    self.lease_valid(now) && self.lease.registered >= Some(self.stamp.generation)
                }
            }
    }

    /// As secondary (or ex-secondary): our data is a complete copy of the peer's current generation.
    fn in_sync(&self) -> bool {
        self.stamp.state == DataState::Copy
            && self.in_sync_with.is_some()
            && self.in_sync_with == self.peer.map(|r| r.stamp.generation)
    }

    /// As primary: the peer is our secondary and in sync.
    fn peer_in_sync(&self) -> bool {
        self.liveness == Liveness::Seen
            && self.peer.is_some_and(|r| {
                r.state == State::Second
                    && r.phase == Phase::Ready
                    && r.following == Some(self.stamp.generation)
            })
    }

    /// The generation of a new ALONE episode: above every generation this
    /// node knows of (its own, the peer's, the witness's), and of this
    /// node's parity (odd for the node whose name sorts first), so that two
    /// nodes that bump without seeing each other never claim the same
    /// number: "the newer generation wins" then never meets a tie.
    fn next_generation(&self) -> Generation {
        let base = self.stamp.generation.max(self.peer_max_generation).0;
        let odd = self.cfg.node < self.cfg.peer;
        let mut next = base.saturating_add(1);
        if (next % 2 == 1) != odd {
            next = next.saturating_add(1);
        }
        Generation(next)
    }

    fn tie_break_is_ours(&self) -> bool {
        match &self.cfg.defaultprim {
            Some(name) if *name == self.cfg.node => true,
            Some(name) if *name == self.cfg.peer => false,
            _ => self.cfg.node < self.cfg.peer,
        }
    }

    fn unusable_reason(&self) -> WaitReason {
        if self.stamp.state == DataState::Partial {
            WaitReason::Partial
        } else if self.stamp.generation.0 == 0 && self.peer_max_generation.0 == 0 {
            WaitReason::NoData
        } else {
            WaitReason::Stale
        }
    }

    /// Forgets what `now` makes obsolete; true if the lease just ran out.
    fn expire(&mut self, now: Instant) -> bool {
        let lease_expired = self.lease.until.is_some_and(|until| until <= now);
        if lease_expired {
            self.lease.until = None;
            self.lease.refused = true;
        }
        if self.ping.retry_at.is_some_and(|at| at <= now) {
            self.ping = PingState::default();
        }
        if self.rejoin_after.is_some_and(|at| at <= now) {
            self.rejoin_after = None;
        }
        lease_expired
    }

    fn apply(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Command(command) => self.command(command, out),
            Input::SetFailover(on) => self.failover = on,
            Input::CheckerFailed { action } => self.checker_failed(now, action, out),
            Input::ResourceDown { resource } => {
                self.resources_down.insert(resource);
            }
            Input::ResourceUp { resource } => {
                self.resources_down.remove(&resource);
            }
            Input::ScriptDone { kind, ok } => self.script_done(kind, ok, out),
            Input::PeerReport(report) => self.peer_report(report, out),
            Input::PeerLost => self.liveness = Liveness::Lost,
            Input::PeerStale => {
                if self.liveness == Liveness::Seen {
                    self.liveness = Liveness::Unknown;
                    self.ping = PingState::default();
                    out.push(Action::Log(Event::PeerStale));
                }
            }
            Input::WitnessAnswer { won } => {
                if self.ping.asked {
                    self.ping.asked = false;
                    self.ping.answer = Some(won);
                    if !won {
                        self.ping.retry_at = Some(now + self.cfg.witness_retry);
                    }
                }
            }
            Input::LeaseGranted {
                until,
                generation,
                recorded,
            } => {
                if self.lease.wanted && now < until {
                    self.lease.until = Some(until);
                    self.lease.refused = false;
                    self.lease.stale = false;
                    self.lease.registered = self.lease.registered.max(Some(generation));
                    // A forced claim overrode newer data: the next generation
                    // goes above it, so that data never wins over ours again.
                    self.peer_max_generation = self.peer_max_generation.max(recorded);
                }
            }
            Input::LeaseLost => {
                if self.lease.wanted {
                    self.lease.until = None;
                    self.lease.refused = true;
                    self.lease.stale = false;
                }
            }
            Input::LeaseStale { newer } => {
                if self.lease.wanted {
                    self.lease.until = None;
                    self.lease.refused = true;
                    self.lease.stale = true;
                    self.peer_max_generation = self.peer_max_generation.max(newer);
                }
            }
            Input::ReplicationDrained => {
                if let Some(plan) = &mut self.plan {
                    if let Some(Awaiting::Drain(handover)) = plan.awaiting {
                        plan.awaiting = None;
                        self.hand_over(handover, out);
                    }
                }
            }
            Input::ResyncDone => {
                if let Some(plan) = &mut self.plan {
                    if plan.awaiting == Some(Awaiting::Resync) {
                        plan.awaiting = None;
                    }
                }
            }
            Input::ResyncSent { generation } => self.resync_sent(generation, out),
            Input::ReplicationBroken => self.replication_broken(now, out),
            Input::Timer => {}
        }
    }

    fn reject(&self, command: Command, reason: &'static str, out: &mut Vec<Action>) {
        out.push(Action::Log(Event::CommandRejected { command, reason }));
    }

    fn enable(&mut self) {
        if !self.enabled {
            self.enabled = true;
            self.budget.reset();
        }
        self.restart_after_stop = false;
    }

    fn command(&mut self, command: Command, out: &mut Vec<Action>) {
        let peer_serving = self.liveness == Liveness::Seen
            && self
                .peer
                .is_some_and(|r| matches!(r.state, State::Alone | State::Prim));
        match command {
            Command::Start => {
                if !self.enabled {
                    self.force = None;
                }
                self.enable();
            }
            Command::Stop => {
                self.enabled = false;
                self.restart_after_stop = false;
                self.force = None;
                self.swapping = false;
            }
            Command::Restart => {
                if self.enabled {
                    self.enabled = false;
                    self.restart_after_stop = true;
                    self.swapping = false;
                } else {
                    self.enable();
                }
            }
            Command::Prim => {
                if self.enabled && self.serving() {
                    self.reject(command, "this node is already primary", out);
                } else if peer_serving {
                    self.reject(command, "the peer is primary: stop it first", out);
                } else {
                    self.force = Some(Force::Prim);
                    self.enable();
                }
            }
            Command::Second => {
                if self.enabled && self.serving() {
                    self.reject(
                        command,
                        "this node is primary: use swap, or stop it first",
                        out,
                    );
                } else {
                    self.force = Some(Force::Second);
                    self.enable();
                }
            }
            Command::Swap => {
                let ready = self.enabled
                    && self.state == State::Prim
                    && self.phase == Phase::Ready
                    && self.plan.is_none();
                if !ready {
                    self.reject(command, "swap runs on the primary (PRIM, ready)", out);
                } else if !self.peer_in_sync() {
                    self.reject(command, "the secondary is not in sync", out);
                } else {
                    self.swapping = true;
                    let mut steps = Vec::new();
                    self.leave(Some(Handover::Swap), &mut steps);
                    self.begin(State::Second, steps);
                }
            }
        }
    }

    fn checker_failed(&mut self, now: Instant, action: CheckerAction, out: &mut Vec<Action>) {
        if action == CheckerAction::Stop {
            out.push(Action::Log(Event::CheckerStop));
            self.enabled = false;
            self.restart_after_stop = false;
            return;
        }
        // A failure reported while a transition runs, or about an application
        // that is not running here, is stale.
        if !self.enabled || self.plan.is_some() {
            return;
        }
        if action == CheckerAction::Restart && !(self.held.app && self.serving()) {
            return;
        }
        match self.budget.try_restart(now) {
            Some(count) => {
                out.push(Action::Log(Event::CheckerRestart { action, count }));
                if action == CheckerAction::Restart {
                    self.begin(
                        self.state,
                        vec![
                            Step::Script(ScriptCall::Stop(ScriptKind::StopPrim)),
                            Step::Script(ScriptCall::Start(ScriptKind::StartPrim)),
                        ],
                    );
                } else {
                    self.enabled = false;
                    self.restart_after_stop = true;
                }
            }
            None => {
                out.push(Action::Log(Event::MaxloopReached {
                    maxloop: self.budget.policy().maxloop,
                }));
                self.enabled = false;
                self.restart_after_stop = false;
            }
        }
    }

    fn script_done(&mut self, kind: ScriptKind, ok: bool, out: &mut Vec<Action>) {
        let Some(plan) = &mut self.plan else { return };
        let Some(Awaiting::Script(running)) = &mut plan.awaiting else {
            return;
        };
        if running.call.kind() != kind {
            return;
        }
        let mut log = Vec::new();
        let end = running.ended(ok, &mut log);
        out.extend(log.into_iter().map(Action::Log));
        match end {
            ScriptEnd::Next => {
                if kind == ScriptKind::StopPrim {
                    self.held.app = false;
                }
                plan.awaiting = None;
            }
            ScriptEnd::Force => out.push(Action::RunScript(running.run(&self.cfg.scripts))),
            ScriptEnd::Failed => {
                plan.awaiting = None;
                plan.abort = true;
                self.enabled = false;
                self.restart_after_stop = false;
                self.force = None;
            }
        }
    }

    fn peer_report(&mut self, report: PeerReport, out: &mut Vec<Action>) {
        if self.liveness != Liveness::Seen {
            // A new episode: answers about a lost peer no longer apply.
            self.ping = PingState::default();
        }
        self.liveness = Liveness::Seen;
        self.peer_max_generation = self.peer_max_generation.max(report.stamp.generation);
        let peer_declined =
            matches!(report.state, State::Stop | State::Wait) && report.phase == Phase::Ready;
        if self.handover.is_some() && peer_declined {
            if self.handover == Some(Handover::Swap) {
                out.push(Action::Log(Event::SwapFailed));
                self.swapping = false;
            }
            self.handover = None;
        }
        self.peer = Some(report);
    }

    fn replication_broken(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut relevant = self.held.repl.is_some();
        if let Some(plan) = &mut self.plan {
            match plan.awaiting {
                Some(Awaiting::Drain(_)) => {
                    relevant = true;
                    plan.awaiting = None;
                    if self.swapping {
                        self.swapping = false;
                        plan.abort = true;
                        out.push(Action::Log(Event::SwapFailed));
                    }
                }
                Some(Awaiting::Resync) => {
                    relevant = true;
                    plan.awaiting = None;
                    plan.abort = true;
                }
                _ => {}
            }
        }
        if !relevant {
            return;
        }
        out.push(Action::Log(Event::ReplicationBroken));
        match self.held.repl {
            Some(ReplRole::Primary) => self.pair_broken = true,
            Some(ReplRole::Secondary) => self.rejoin_after = Some(now + self.cfg.rejoin_delay),
            None => {}
        }
    }

    /// Releases the VIP at once when serving without the peer and without a valid lease.
    fn fence(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.cfg.witness == WitnessKind::Arbiter
            && self.held.vip
            && self.liveness != Liveness::Seen
            && !self.lease_valid(now)
        {
            self.held.vip = false;
            out.push(Action::ReleaseVip);
            if let Some(plan) = &mut self.plan {
                plan.abort = true;
            }
        }
    }

    fn decide(&self, now: Instant) -> Decision {
        if !self.enabled {
            return Decision::Stop;
        }
        if !self.prestarted {
            return Decision::Prestart;
        }
        if let Some(resource) = self.resources_down.first() {
            return Decision::Wait(WaitReason::ResourceDown(resource.clone()));
        }
        let serving = self.serving();
        match (self.liveness, self.peer) {
            (Liveness::Seen, Some(report)) => {
                let decision = self.decide_with_peer(now, &report, serving);
                // Serving alone needs the lease with the arbiter, also with
                // the peer in sight: what we see of it may be a pulse old
                // (or one-way), and a peer that lost us takes the lease once
                // ours runs out. Only a heal where both serve is settled by
                // the data, not by the lease.
                let both_serving = serving && matches!(report.state, State::Alone | State::Prim);
                if decision == Decision::Alone && !both_serving {
                    self.gate_alone(now)
                } else {
                    decision
                }
            }
            (Liveness::Unknown, _) if !serving => Decision::Ask(Question::Peer),
            // Serving, and just back from a pause: wait for the peer's next
            // report before deciding anything from its old one; with the
            // arbiter, stop at once unless the lease is still ours.
            (Liveness::Unknown, _) => match self.cfg.witness {
                WitnessKind::Arbiter if !self.lease_valid(now) => {
                    Decision::Wait(WaitReason::NoLease)
                }
                _ => Decision::Ask(Question::Peer),
            },
            _ => self.decide_without_peer(now, serving),
        }
    }

    /// A decision to serve alone with the peer in sight, under the arbiter.
    fn gate_alone(&self, now: Instant) -> Decision {
        if self.cfg.witness != WitnessKind::Arbiter || self.lease_valid(now) {
            Decision::Alone
        } else if self.lease.stale {
            Decision::Wait(WaitReason::Stale)
        } else if self.lease.refused {
            Decision::Wait(WaitReason::NoLease)
        } else {
            Decision::Ask(Question::Lease)
        }
    }

    fn decide_without_peer(&self, now: Instant, serving: bool) -> Decision {
        if !serving {
            let eligible = if self.force == Some(Force::Prim) {
                Ok(())
            } else if self.in_sync() {
                if self.failover {
                    Ok(())
                } else {
                    Err(WaitReason::FailoverOff)
                }
            } else if self.stamp.state == DataState::Newest && self.stamp.usable() {
                Ok(())
            } else {
                Err(self.unusable_reason())
            };
            if let Err(reason) = eligible {
                return Decision::Wait(reason);
            }
        }
        match self.cfg.witness {
            WitnessKind::None => Decision::Alone,
            // SafeKit pings when a PRIM or a SECOND loses its peer. halo also
            // pings from ALONE: a primary that went ALONE because replication
            // broke just before the heartbeats did is exactly the node an
            // isolated network must stop, and the peer may still count itself
            // in sync with the generation it last saw.
            WitnessKind::Ping => match self.ping.answer {
                Some(true) => Decision::Alone,
                Some(false) => Decision::Wait(WaitReason::WitnessLost),
                None => Decision::Ask(Question::Witness),
            },
            WitnessKind::Arbiter => {
                if self.lease_valid(now) {
                    Decision::Alone
                } else if self.lease.stale {
                    Decision::Wait(WaitReason::Stale)
                } else if serving || self.lease.refused {
                    Decision::Wait(WaitReason::NoLease)
                } else {
                    Decision::Ask(Question::Lease)
                }
            }
        }
    }

    fn decide_with_peer(&self, now: Instant, report: &PeerReport, serving: bool) -> Decision {
        let peer_serving = matches!(report.state, State::Alone | State::Prim);
        if serving {
            if peer_serving {
                return if self.ranks_above(report) {
                    Decision::Alone
                } else {
                    Decision::Second
                };
            }
            let paired = report.state == State::Second
                && report.following == Some(self.stamp.generation)
                && !self.pair_broken;
            return if paired {
                Decision::Prim
            } else {
                Decision::Alone
            };
        }
        // We gave the role away (swap, or a stop that handed over): wait for
        // the peer to take it; a peer that declines clears the handover.
        if self.swapping || self.handover.is_some() {
            if peer_serving {
                return Decision::Second;
            }
            if report.state == State::Second {
                return Decision::Ask(Question::Peer);
            }
        }
        // Our primary is leaving the role (a swap or a stop that drains
        // replication first): it hands over once drained, or settles in a
        // state that says what it does. Until then, stay its secondary.
        if self.state == State::Second
            && !peer_serving
            && report.phase == Phase::Transient
            && report.handover.is_none()
            && self.in_sync()
        {
            return Decision::Ask(Question::Peer);
        }
        if let (false, Some(handover), true) = (peer_serving, report.handover, self.in_sync()) {
            return match handover {
                Handover::Swap => Decision::Prim,
                Handover::Stopped if self.failover => Decision::Alone,
                Handover::Stopped => Decision::Wait(WaitReason::FailoverOff),
            };
        }
        match self.force {
            Some(Force::Second) if !peer_serving => {
                return Decision::Wait(WaitReason::PeerNotPrimary)
            }
            Some(Force::Second) => return Decision::Second,
            Some(Force::Prim) if !peer_serving => return Decision::Alone,
            _ => {}
        }
        if peer_serving {
            if self.rejoin_after.is_some_and(|at| now < at) {
                return Decision::Wait(WaitReason::ReplicationBroken);
            }
            return Decision::Second;
        }
        match self.leads(report) {
            Ok(()) => Decision::Alone,
            Err(reason) => Decision::Wait(reason),
        }
    }

    /// Neither node serves: whether ours is the data to serve.
    fn leads(&self, report: &PeerReport) -> Result<(), WaitReason> {
        let ours = self.stamp;
        let theirs = report.stamp;
        if !ours.usable() {
            let first_start = ours.generation.0 == 0
                && ours.state != DataState::Partial
                && theirs.generation.0 == 0;
            if first_start && self.cfg.defaultprim.as_ref() == Some(&self.cfg.node) {
                return Ok(());
            }
            return Err(self.unusable_reason());
        }
        match ours.rank().cmp(&theirs.rank()) {
            std::cmp::Ordering::Greater => Ok(()),
            std::cmp::Ordering::Less if theirs.generation > ours.generation => {
                Err(WaitReason::Stale)
            }
            std::cmp::Ordering::Less => Err(WaitReason::PeerPreferred),
            // A stopped peer will not take the role: equal data is enough.
            std::cmp::Ordering::Equal if report.state == State::Stop => Ok(()),
            std::cmp::Ordering::Equal if self.tie_break_is_ours() => Ok(()),
            std::cmp::Ordering::Equal => Err(WaitReason::PeerPreferred),
        }
    }

    /// Both nodes serve (a split healed): whether we stay primary.
    fn ranks_above(&self, report: &PeerReport) -> bool {
        match self.stamp.rank().cmp(&report.stamp.rank()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.tie_break_is_ours(),
        }
    }

    /// About to follow the peer: whether we wrote data that the peer's generation
    /// cannot contain (both served during a split, or the peer was forced):
    /// a generation of ours that nobody copied (Newest), or one at least as
    /// new as the peer's.
    fn discards_writes(&self) -> bool {
        self.state != State::Second
            && (self.stamp.state == DataState::Newest
                || (self.stamp.writer() && self.stamp.generation >= self.peer_generation()))
    }

    /// Steps that give up the primary role: VIP, application, replication.
    fn leave(&self, handover: Option<Handover>, steps: &mut Vec<Step>) {
        if self.held.vip {
            steps.push(Step::Act(Action::ReleaseVip));
        }
        if self.held.app {
            steps.push(Step::Script(ScriptCall::Stop(ScriptKind::StopPrim)));
        }
        if let (Some(ReplRole::Primary), Some(handover), true, false) = (
            self.held.repl,
            handover,
            self.peer_in_sync(),
            self.pair_broken,
        ) {
            steps.push(Step::Drain(handover));
        }
        if self.held.repl.is_some() {
            steps.push(Step::Act(Action::StopReplication));
        }
    }

    /// The steps from what is held now to the decision's state; `None` when already there.
    fn steps_for(&self, decision: &Decision) -> Option<(State, Vec<Step>)> {
        let mut steps = Vec::new();
        let goal = match decision {
            Decision::Ask(_) => return None,
            Decision::Stop => {
                self.leave(Some(Handover::Stopped), &mut steps);
                if self.held.read_only {
                    steps.push(Step::Act(Action::SetReadOnly(false)));
                }
                if self.prestarted {
                    steps.push(Step::Script(ScriptCall::Hook(ScriptKind::Poststop)));
                    steps.push(Step::Stopped);
                }
                State::Stop
            }
            Decision::Prestart => {
                // Marked first so that a failed prestart is still followed by poststop.
                steps.push(Step::Prestarted);
                steps.push(Step::Script(ScriptCall::Start(ScriptKind::Prestart)));
                State::Wait
            }
            Decision::Wait(_) => {
                self.leave(Some(Handover::Stopped), &mut steps);
                if self.held.read_only {
                    steps.push(Step::Act(Action::SetReadOnly(false)));
                }
                State::Wait
            }
            Decision::Alone => {
                if self.held.repl == Some(ReplRole::Secondary) {
                    steps.push(Step::Act(Action::StopReplication));
                }
                if self.held.read_only {
                    steps.push(Step::Act(Action::SetReadOnly(false)));
                }
                if !self.alone_bumped {
                    steps.push(Step::Bump);
                }
                if !self.held.vip {
                    steps.push(Step::Act(Action::ClaimVip));
                }
                if !self.held.app {
                    steps.push(Step::Script(ScriptCall::Start(ScriptKind::StartPrim)));
                }
                if self.held.repl == Some(ReplRole::Primary) {
                    steps.push(Step::Act(Action::StopReplication));
                }
                State::Alone
            }
            Decision::Prim => {
                if !self.serving() {
                    if self.held.repl.is_some() {
                        steps.push(Step::Act(Action::StopReplication));
                    }
                    if self.held.read_only {
                        steps.push(Step::Act(Action::SetReadOnly(false)));
                    }
                    steps.push(Step::TakeOver);
                    if !self.held.vip {
                        steps.push(Step::Act(Action::ClaimVip));
                    }
                    if !self.held.app {
                        steps.push(Step::Script(ScriptCall::Start(ScriptKind::StartPrim)));
                    }
                }
                if self.held.repl != Some(ReplRole::Primary) {
                    steps.push(Step::Act(Action::StartReplication {
                        role: ReplRole::Primary,
                    }));
                }
                State::Prim
            }
            Decision::Second => {
                let generation = Some(self.peer_generation());
                let following = self.state == State::Second
                    && self.held.repl == Some(ReplRole::Secondary)
                    && self.following == generation
                    && self.in_sync_with == generation;
                if !following {
                    self.leave(None, &mut steps);
                    if !self.held.read_only {
                        steps.push(Step::Act(Action::SetReadOnly(true)));
                    }
                    steps.push(Step::Follow);
                    steps.push(Step::MarkPartial);
                    steps.push(Step::Act(Action::StartReplication {
                        role: ReplRole::Secondary,
                    }));
                    steps.push(Step::Resync);
                    steps.push(Step::Synced);
                }
                State::Second
            }
        };
        if steps.is_empty() && goal == self.state {
            None
        } else {
            Some((goal, steps))
        }
    }

    fn begin(&mut self, goal: State, steps: Vec<Step>) {
        self.plan = Some(Plan {
            from: self.state,
            goal,
            steps: steps.into(),
            awaiting: None,
            abort: false,
        });
        self.state = goal;
        self.phase = Phase::Transient;
    }

    /// Runs plans until one waits, or the decision is reached.
    fn run(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Each pass waits or reaches a state; a handful suffice (stop, then
        // prestart for a restart), the bound only guards against a bug.
        for _ in 0..16 {
            if self.plan.is_some() {
                self.advance(out);
                if self.plan.is_some() {
                    return;
                }
            }
            let decision = self.decide(now);
            match self.steps_for(&decision) {
                None => {
                    self.phase = match decision {
                        Decision::Ask(_) => Phase::Transient,
                        _ => Phase::Ready,
                    };
                    if decision == Decision::Stop && self.restart_after_stop {
                        self.restart_after_stop = false;
                        self.enabled = true;
                        continue;
                    }
                    return;
                }
                Some((goal, steps)) => {
                    if decision == Decision::Second && self.discards_writes() {
                        out.push(Action::Log(Event::DivergentData {
                            ours: self.stamp.generation.0,
                            theirs: self.peer_generation().0,
                        }));
                    }
                    self.begin(goal, steps);
                }
            }
        }
        debug_assert!(false, "mirror machine did not settle");
    }

    fn advance(&mut self, out: &mut Vec<Action>) {
        loop {
            let Some(plan) = &mut self.plan else { return };
            if plan.awaiting.is_some() {
                return;
            }
            if plan.abort {
                self.plan = None;
                return;
            }
            let Some(step) = plan.steps.pop_front() else {
                self.plan = None;
                return;
            };
            let (from, goal) = (plan.from, plan.goal);
            self.exec(step, from, goal, out);
        }
    }

    fn exec(&mut self, step: Step, from: State, goal: State, out: &mut Vec<Action>) {
        match step {
            Step::Act(action) => {
                match action {
                    Action::ClaimVip => self.held.vip = true,
                    Action::ReleaseVip => self.held.vip = false,
                    Action::SetReadOnly(on) => self.held.read_only = on,
                    Action::StartReplication { role } => {
                        self.held.repl = Some(role);
                        if role == ReplRole::Primary {
                            self.alone_bumped = false;
                        }
                    }
                    Action::StopReplication => self.held.repl = None,
                    _ => {}
                }
                out.push(action);
            }
            Step::Script(call) => {
                let running = RunningScript::new(call, from, goal);
                out.push(Action::RunScript(running.run(&self.cfg.scripts)));
                if call == ScriptCall::Start(ScriptKind::StartPrim) {
                    self.held.app = true;
                }
                self.await_(Awaiting::Script(running));
            }
            Step::Drain(handover) => {
                out.push(Action::DrainReplication);
                self.await_(Awaiting::Drain(handover));
            }
            Step::Resync => {
                out.push(Action::StartResync);
                self.await_(Awaiting::Resync);
            }
            Step::Bump => {
                let generation = self.next_generation();
                self.persist(
                    DataStamp {
                        generation,
                        state: DataState::Newest,
                    },
                    out,
                );
                self.alone_bumped = true;
                self.in_sync_with = None;
                self.following = None;
                self.handover = None;
                self.pair_broken = false;
                self.force = None;
            }
            Step::TakeOver => {
                let stamp = DataStamp {
                    generation: self.stamp.generation,
                    state: DataState::Shared,
                };
                self.persist(stamp, out);
                self.in_sync_with = None;
                self.following = None;
                self.handover = None;
                self.force = None;
            }
            Step::Follow => {
                self.following = Some(self.peer_generation());
                self.handover = None;
                self.swapping = false;
                self.alone_bumped = false;
                self.pair_broken = false;
            }
            Step::MarkPartial => {
                let stamp = DataStamp {
                    generation: self.stamp.generation,
                    state: DataState::Partial,
                };
                self.persist(stamp, out);
                self.in_sync_with = None;
            }
            Step::Synced => {
                if let Some(generation) = self.following {
                    self.persist(
                        DataStamp {
                            generation,
                            state: DataState::Copy,
                        },
                        out,
                    );
                    self.in_sync_with = Some(generation);
                }
                self.force = None;
            }
            Step::Prestarted => self.prestarted = true,
            Step::Stopped => self.prestarted = false,
        }
    }

    fn await_(&mut self, awaiting: Awaiting) {
        if let Some(plan) = &mut self.plan {
            plan.awaiting = Some(awaiting);
        }
    }

    fn persist(&mut self, stamp: DataStamp, out: &mut Vec<Action>) {
        self.stamp = stamp;
        out.push(Action::PersistStamp(stamp));
    }

    /// Replication is flushed: tell the secondary (through our reports) to take over.
    fn hand_over(&mut self, handover: Handover, out: &mut Vec<Action>) {
        let generation = self.stamp.generation;
        match handover {
            // Our data is now exactly the secondary's: we become a copy of it,
            // and can take the role back if it dies during the switch.
            Handover::Swap => {
                self.persist(
                    DataStamp {
                        generation,
                        state: DataState::Copy,
                    },
                    out,
                );
                self.in_sync_with = Some(generation);
                self.following = Some(generation);
            }
            // The secondary may take over: we must not start alone on this data.
            Handover::Stopped => {
                if self.stamp.state != DataState::Shared {
                    self.persist(
                        DataStamp {
                            generation,
                            state: DataState::Shared,
                        },
                        out,
                    );
                }
            }
        }
        self.alone_bumped = false;
        self.handover = Some(handover);
    }

    /// Questions to ask, the lease to want or give back, the reason to log.
    fn side_effects(&mut self, decision: &Decision, out: &mut Vec<Action>) {
        if *decision == Decision::Ask(Question::Witness) && !self.ping.asked {
            self.ping.asked = true;
            out.push(Action::AskWitness);
        }
        if self.cfg.witness == WitnessKind::Arbiter {
            let want = self.enabled
                && (self.serving()
                    || matches!(
                        decision,
                        Decision::Alone
                            | Decision::Prim
                            | Decision::Ask(Question::Lease)
                            | Decision::Wait(WaitReason::NoLease)
                    )
                    || (self.lease.stale && *decision == Decision::Wait(WaitReason::Stale)));
            let claim = (self.stamp.generation, self.force == Some(Force::Prim));
            if want && !self.lease.wanted {
                self.lease = LeaseState {
                    wanted: true,
                    claim: Some(claim),
                    ..LeaseState::default()
                };
                out.push(Action::AcquireLease {
                    generation: claim.0,
                    forced: claim.1,
                });
            } else if want && self.lease.claim != Some(claim) {
                // A new generation (or `halo prim`): ask at once with it; a
                // lease already granted stays valid meanwhile.
                self.lease.claim = Some(claim);
                if self.lease.until.is_none() {
                    self.lease.refused = false;
                    self.lease.stale = false;
                }
                out.push(Action::AcquireLease {
                    generation: claim.0,
                    forced: claim.1,
                });
            } else if !want && self.lease.wanted {
                self.lease = LeaseState::default();
                out.push(Action::ReleaseLease);
            }
        }
        let reason = match decision {
            Decision::Wait(reason) => Some(reason.clone()),
            _ => None,
        };
        if reason != self.wait_logged {
            if let Some(reason) = &reason {
                out.push(Action::Log(Event::Waiting(reason.clone())));
            }
            self.wait_logged = reason;
        }
    }

    /// A secondary counts itself a copy of our generation, and may take
    /// over, from the moment it has the end of its resynchronisation: from
    /// then on this node must not restart believing it holds the only copy.
    /// So the stamp turns `Shared` first, then the end goes.
    fn resync_sent(&mut self, generation: u64, out: &mut Vec<Action>) {
        if self.stamp.state == DataState::Newest && self.stamp.generation.0 == generation {
            self.persist(
                DataStamp {
                    generation: self.stamp.generation,
                    state: DataState::Shared,
                },
                out,
            );
        }
        out.push(Action::EndResync(generation));
    }

    /// A primary whose secondary is in sync no longer holds the only copy.
    fn settle_stamp(&mut self, out: &mut Vec<Action>) {
        if self.plan.is_none()
            && self.state == State::Prim
            && self.stamp.state == DataState::Newest
            && self.peer_in_sync()
        {
            let stamp = DataStamp {
                generation: self.stamp.generation,
                state: DataState::Shared,
            };
            self.persist(stamp, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::sim::{Endpoint, Sim};
    use super::*;

    const A: usize = 0;
    const B: usize = 1;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn gen(n: u64) -> Generation {
        Generation(n)
    }

    /// A is PRIM and B is SECOND, both Ready, after a first start with `prim` on A.
    fn pair(witness: WitnessKind) -> Sim {
        let mut sim = Sim::new(witness);
        sim.start_both();
        sim.run_for(secs(1));
        sim.command(A, Command::Prim);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Prim, Phase::Ready), (State::Second, Phase::Ready)),
            "expected PRIM/SECOND ready after prim on a, saw {}",
            sim.describe()
        );
        sim
    }

    fn ran_script(actions: &[Action], kind: ScriptKind, force: bool) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::RunScript(r) if r.kind == kind && r.force == force))
    }

    fn position(actions: &[Action], pred: impl Fn(&Action) -> bool) -> Option<usize> {
        actions.iter().position(pred)
    }

    fn is_start_prim(a: &Action) -> bool {
        matches!(a, Action::RunScript(r) if r.kind == ScriptKind::StartPrim)
    }

    fn is_stop_prim(a: &Action) -> bool {
        matches!(a, Action::RunScript(r) if r.kind == ScriptKind::StopPrim)
    }

    #[test]
    fn first_start_waits_for_prim_then_the_other_becomes_second() {
        let mut sim = Sim::new(WitnessKind::Ping);
        sim.start_both();
        sim.run_for(secs(2));
        for i in [A, B] {
            assert_eq!(
                sim.state(i),
                (State::Wait, Phase::Ready),
                "expected both nodes to WAIT without data, saw {}",
                sim.describe()
            );
            assert!(
                sim.logged(i, |e| *e == Event::Waiting(WaitReason::NoData)),
                "expected node {i} to log that it needs halo prim"
            );
            assert!(
                !sim.active(i),
                "expected no application before prim, saw {}",
                sim.describe()
            );
        }
        let t0 = sim.now;
        sim.command(A, Command::Prim);
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(A),
            (State::Prim, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert_eq!(
            sim.state(B),
            (State::Second, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.reached(A, State::Alone, Phase::Ready, t0).is_some(),
            "expected a to be ALONE before its secondary joined"
        );
        let b = sim.actions_since(B, t0);
        assert!(
            b.contains(&Action::StartResync) && sim.nodes[B].read_only,
            "expected b to resynchronise with read-only directories, saw {b:?}"
        );
        assert_eq!(
            (sim.machine(A).stamp(), sim.machine(B).stamp()),
            (
                DataStamp {
                    generation: gen(1),
                    state: DataState::Shared
                },
                DataStamp {
                    generation: gen(1),
                    state: DataState::Copy
                }
            ),
            "expected generation 1 written by a and copied to b"
        );
        assert!(
            sim.machine(A).is_serving() && sim.machine(A).exit_code() == 3,
            "expected a serving with exit code 3"
        );
        assert!(
            !sim.machine(B).is_serving() && sim.machine(B).exit_code() == 4,
            "expected b not serving with exit code 4"
        );
    }

    #[test]
    fn defaultprim_makes_the_named_node_primary_on_first_start() {
        let mut sim = Sim::new(WitnessKind::Ping);
        for i in [A, B] {
            sim.nodes[i].cfg.defaultprim = Some("b".into());
        }
        sim.start_both();
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected defaultprim b to be PRIM without a command, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn defaultprim_does_not_start_alone_without_seeing_the_peer() {
        let mut sim = Sim::new(WitnessKind::Ping);
        sim.nodes[B].cfg.defaultprim = Some("b".into());
        sim.boot(B);
        sim.command(B, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(B),
            (State::Wait, Phase::Ready),
            "expected b to wait: the absent peer may hold data, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn peer_loss_goes_alone_only_after_timeout_and_with_the_witness() {
        let mut sim = pair(WitnessKind::Ping);
        let t0 = sim.now;
        sim.crash(A);
        sim.run_for(secs(3));
        let alone = sim.reached(B, State::Alone, Phase::Transient, t0);
        let timeout = sim.t.timeout;
        assert!(
            alone.is_some_and(|at| at >= t0 + timeout),
            "expected b ALONE no sooner than {} after the crash at {t0}, saw {alone:?}",
            timeout.as_millis()
        );
        let b = sim.actions_since(B, t0);
        let asked = position(&b, |a| *a == Action::AskWitness);
        let started = position(&b, is_start_prim);
        assert!(
            asked.is_some() && asked < started,
            "expected the witness asked before start_prim, saw {b:?}"
        );
        assert!(
            sim.machine(B).is_serving(),
            "expected b serving, saw {}",
            sim.describe()
        );
        assert_eq!(
            sim.machine(B).stamp(),
            DataStamp {
                generation: gen(2),
                state: DataState::Newest
            },
            "expected b to start generation 2 as only writer"
        );
        assert!(
            !sim.nodes[B].read_only,
            "expected b's directories writable again"
        );
    }

    #[test]
    fn secondary_that_cannot_reach_the_witness_waits_then_retries() {
        let mut sim = pair(WitnessKind::Ping);
        sim.cut(Endpoint::Node(B), Endpoint::Witness);
        sim.crash(A);
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(B),
            (State::Wait, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::WitnessLost)),
            "expected b to log that the witness is unreachable"
        );
        assert!(
            !sim.active(B),
            "expected b not to serve without the witness"
        );
        sim.heal();
        sim.run_for(secs(3));
        assert!(
            sim.machine(B).is_serving(),
            "expected b to ask again and serve once the witness answers, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn partial_partition_with_the_arbiter_keeps_exactly_one_server() {
        let mut sim = pair(WitnessKind::Arbiter);
        sim.run_for(secs(1));
        sim.cut(Endpoint::Node(A), Endpoint::Node(B));
        for step in 0..100 {
            sim.run_for(ms(100));
            let active: Vec<usize> = [A, B].into_iter().filter(|&i| sim.active(i)).collect();
            assert_eq!(
                active,
                vec![A],
                "expected only a active at step {step} ({}), saw {}",
                sim.now,
                sim.describe()
            );
        }
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
        assert_eq!(
            sim.state(A),
            (State::Alone, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::NoLease)),
            "expected b refused by the arbiter"
        );
        sim.heal();
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Prim, State::Second),
            "expected the pair to reform after the heal, saw {}",
            sim.describe()
        );
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
    }

    /// SafeKit-compatible, and why the arbiter exists: in a partial partition
    /// both nodes reach a ping witness, so both serve until the heal.
    #[test]
    fn partial_partition_with_ping_lets_both_serve_until_the_heal() {
        let mut sim = pair(WitnessKind::Ping);
        sim.cut(Endpoint::Node(A), Endpoint::Node(B));
        sim.run_for(secs(3));
        assert!(
            sim.machine(A).is_serving() && sim.machine(B).is_serving(),
            "expected both nodes ALONE with a ping witness, saw {}",
            sim.describe()
        );
        assert!(
            !sim.overlaps.is_empty(),
            "expected an overlap to be recorded"
        );
        sim.heal();
        sim.run_for(secs(5));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Prim, Phase::Ready), (State::Second, Phase::Ready)),
            "expected one primary after the heal (a bumped to the higher, odd, generation), saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(B, |e| matches!(e, Event::DivergentData { .. })),
            "expected b to log that its split-brain writes are discarded"
        );
        let t = sim.now;
        sim.run_for(secs(2));
        assert!(
            sim.overlaps.iter().all(|&at| at < t),
            "expected a single active node after the heal, saw {:?}",
            sim.overlaps
        );
    }

    #[test]
    fn no_witness_both_serve_in_a_partition() {
        let mut sim = pair(WitnessKind::None);
        sim.cut(Endpoint::Node(A), Endpoint::Node(B));
        sim.run_for(secs(3));
        assert!(
            sim.machine(A).is_serving() && sim.machine(B).is_serving(),
            "expected both ALONE without a witness (SafeKit default), saw {}",
            sim.describe()
        );
    }

    #[test]
    fn isolated_primary_with_the_arbiter_stops_before_the_secondary_starts() {
        let mut sim = pair(WitnessKind::Arbiter);
        sim.run_for(secs(1));
        let t0 = sim.now;
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(10));
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
        assert!(
            sim.logged(A, |e| *e == Event::LeaseExpired),
            "expected a's lease to expire"
        );
        assert_eq!(sim.state(A).0, State::Wait, "saw {}", sim.describe());
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over, saw {}",
            sim.describe()
        );
        let a_wait = sim.reached(A, State::Wait, Phase::Ready, t0);
        let b_alone = sim.reached(B, State::Alone, Phase::Transient, t0);
        assert!(
            a_wait.is_some() && a_wait < b_alone,
            "expected a stopped ({a_wait:?}) before b started ({b_alone:?})"
        );
        sim.heal();
        sim.run_for(secs(5));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected b's newer generation to stay primary, saw {}",
            sim.describe()
        );
    }

    /// A primary that served ALONE (and acknowledged writes only it has) is
    /// then cut off entirely: its lease runs out, and the peer, whose data
    /// is older, must not get the lease from the witness that registered the
    /// newer generation.
    #[test]
    fn a_primary_cut_off_after_serving_alone_is_not_replaced_by_stale_data() {
        let mut sim = pair(WitnessKind::Arbiter);
        sim.run_for(secs(1));
        let old = sim.machine(A).stamp().generation;
        sim.cut(Endpoint::Node(A), Endpoint::Node(B));
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(A),
            (State::Alone, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.machine(A).may_release_unacknowledged(sim.now),
            "a registered its ALONE generation and may release held writers, saw {}",
            sim.describe()
        );
        let alone = sim.machine(A).stamp().generation;
        assert!(alone > old);
        let t0 = sim.now;
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(10));
        assert!(
            sim.logged(A, |e| *e == Event::LeaseExpired),
            "expected a's lease to expire"
        );
        assert_eq!(sim.state(A).0, State::Wait, "saw {}", sim.describe());
        assert_eq!(
            sim.reached(B, State::Alone, Phase::Transient, t0),
            None,
            "b, with older data, must not serve: saw {}",
            sim.describe()
        );
        assert!(!sim.active(B), "saw {}", sim.describe());
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::Stale)),
            "expected b to wait as stale, saw {}",
            sim.describe()
        );
        sim.heal();
        sim.run_for(secs(5));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Prim, State::Second),
            "expected a's newer generation to serve again, saw {}",
            sim.describe()
        );
        assert_eq!(sim.machine(A).stamp().generation, alone);
        assert!(sim.overlaps.is_empty(), "saw {:?}", sim.overlaps);
    }

    #[test]
    fn halo_prim_on_the_stale_node_takes_over_from_an_unreachable_newer_one() {
        let mut sim = pair(WitnessKind::Arbiter);
        sim.run_for(secs(1));
        sim.cut(Endpoint::Node(A), Endpoint::Node(B));
        sim.run_for(secs(2));
        let alone = sim.machine(A).stamp().generation;
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(10));
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
        sim.command(B, Command::Prim);
        sim.run_for(secs(3));
        assert!(
            sim.machine(B).is_serving(),
            "halo prim forces the stale node, saw {}",
            sim.describe()
        );
        assert!(
            sim.machine(B).stamp().generation > alone,
            "the forced node goes above the generation it overrode, saw {}",
            sim.describe()
        );
        assert!(sim.overlaps.is_empty(), "saw {:?}", sim.overlaps);
    }

    #[test]
    fn heal_keeps_the_newer_generation_primary() {
        let mut sim = pair(WitnessKind::Ping);
        // The replication stream outlives the heartbeat timeout: the primary
        // learns of the loss from the heartbeats, asks the witness and loses.
        sim.t.repl_break = secs(1);
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(A).0,
            State::Wait,
            "expected a to lose the witness, saw {}",
            sim.describe()
        );
        assert!(sim.machine(B).is_serving(), "saw {}", sim.describe());
        let (a_gen, b_gen) = (
            sim.machine(A).stamp().generation,
            sim.machine(B).stamp().generation,
        );
        assert!(
            b_gen > a_gen,
            "expected b's generation above a's, saw {b_gen:?} vs {a_gen:?}"
        );
        sim.heal();
        sim.run_for(secs(5));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected the newer generation (b) to stay primary, saw {}",
            sim.describe()
        );
        assert_eq!(
            sim.machine(A).stamp(),
            DataStamp {
                generation: b_gen,
                state: DataState::Copy
            },
            "expected a to hold a copy of b's generation"
        );
        assert!(
            !sim.logged(A, |e| matches!(e, Event::DivergentData { .. })),
            "expected nothing of a's discarded: it never wrote alone"
        );
    }

    #[test]
    fn isolated_primary_that_went_alone_on_a_replication_break_yields_after_the_heal() {
        let mut sim = pair(WitnessKind::Ping);
        // Default timings: replication breaks before the heartbeats time out,
        // so a goes ALONE (and writes) before it learns that it is isolated.
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(A).0,
            State::Wait,
            "expected a to lose the witness, saw {}",
            sim.describe()
        );
        assert!(sim.machine(B).is_serving(), "saw {}", sim.describe());
        sim.heal();
        sim.run_for(secs(5));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected the serving node (b) to stay primary, saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(A, |e| matches!(e, Event::DivergentData { .. })),
            "expected a to log that its writes while isolated are discarded"
        );
    }

    #[test]
    fn stale_node_never_becomes_primary_unless_forced() {
        let mut sim = pair(WitnessKind::Ping);
        sim.command(B, Command::Stop);
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(A).0,
            State::Alone,
            "expected a ALONE once b stopped, saw {}",
            sim.describe()
        );
        sim.command(A, Command::Stop);
        sim.run_for(secs(2));
        sim.crash(A);
        let t0 = sim.now;
        sim.command(B, Command::Start);
        sim.run_for(secs(5));
        assert_eq!(
            sim.state(B),
            (State::Wait, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::Stale)),
            "expected b to log that its data is stale"
        );
        assert_eq!(
            WaitReason::Stale.to_string(),
            "data is stale: run halo prim to force"
        );
        sim.boot(A);
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(B).0,
            State::Wait,
            "expected b to keep waiting beside a's stopped, newer data, saw {}",
            sim.describe()
        );
        assert!(
            !sim.actions_since(B, t0).iter().any(is_start_prim),
            "expected no start_prim on stale b"
        );
        sim.command(B, Command::Prim);
        sim.run_for(secs(2));
        assert!(
            sim.machine(B).is_serving(),
            "expected prim to force b, saw {}",
            sim.describe()
        );
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected a to follow the forced primary, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn swap_hands_over_without_losing_writes() {
        let mut sim = pair(WitnessKind::Ping);
        let t0 = sim.now;
        let stamp = sim.machine(A).stamp();
        sim.command(A, Command::Swap);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected roles swapped, saw {}",
            sim.describe()
        );
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
        let a = sim.actions_since(A, t0);
        let order = [
            position(&a, |x| *x == Action::ReleaseVip),
            position(&a, is_stop_prim),
            position(&a, |x| *x == Action::DrainReplication),
            position(&a, |x| *x == Action::StopReplication),
        ];
        assert!(
            order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
            "expected ReleaseVip, stop_prim, drain, stop replication in order, saw {a:?}"
        );
        let drained = sim.nodes[A]
            .actions
            .iter()
            .find(|(at, x)| {
                *at >= t0 && matches!(x, Action::PersistStamp(s) if s.state == DataState::Copy)
            })
            .map(|(at, _)| *at);
        let started = sim.nodes[B]
            .actions
            .iter()
            .find(|(at, x)| *at >= t0 && is_start_prim(x))
            .map(|(at, _)| *at);
        assert!(
            drained.is_some() && drained <= started,
            "expected b to start only after a's replication was flushed ({drained:?} vs {started:?})"
        );
        assert_eq!(
            sim.machine(B).stamp().generation,
            stamp.generation,
            "expected no new generation for a planned swap"
        );
    }

    #[test]
    fn swap_completes_when_the_drain_outlasts_several_heartbeats() {
        let mut sim = pair(WitnessKind::Ping);
        sim.t.drain = ms(700);
        sim.command(A, Command::Swap);
        sim.run_for(secs(4));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected the secondary to wait for a slow drain and take over, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn swap_works_with_failover_off() {
        let mut sim = pair(WitnessKind::Ping);
        for i in [A, B] {
            sim.input(i, Input::SetFailover(false));
        }
        sim.command(A, Command::Swap);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected a planned swap to ignore failover off, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn swap_is_rejected_on_the_secondary() {
        let mut sim = pair(WitnessKind::Ping);
        let t0 = sim.now;
        sim.command(B, Command::Swap);
        assert!(
            sim.logged(B, |e| matches!(
                e,
                Event::CommandRejected {
                    command: Command::Swap,
                    ..
                }
            )),
            "expected swap on the secondary to be rejected"
        );
        sim.run_for(secs(1));
        assert!(
            sim.actions_since(A, t0).is_empty(),
            "expected the primary untouched"
        );
    }

    #[test]
    fn maxloop_stops_the_module_after_n_restarts() {
        let mut sim = pair(WitnessKind::Ping);
        for n in 1..=2 {
            let t0 = sim.now;
            sim.input(
                A,
                Input::CheckerFailed {
                    action: CheckerAction::Restart,
                },
            );
            sim.run_for(secs(1));
            let a = sim.actions_since(A, t0);
            assert!(
                position(&a, is_stop_prim) < position(&a, is_start_prim)
                    && !a.contains(&Action::ReleaseVip),
                "expected restart {n} to cycle the app and keep the VIP, saw {a:?}"
            );
            assert_eq!(
                (sim.state(A), sim.state(B).0),
                ((State::Prim, Phase::Ready), State::Second),
                "expected no failover for restart {n}, saw {}",
                sim.describe()
            );
        }
        sim.input(
            A,
            Input::CheckerFailed {
                action: CheckerAction::Restart,
            },
        );
        sim.run_for(secs(2));
        assert!(
            sim.logged(A, |e| *e == Event::MaxloopReached { maxloop: 2 }),
            "expected MaxloopReached on the 3rd failure"
        );
        assert_eq!(sim.state(A).0, State::Stop, "saw {}", sim.describe());
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over from the stopped primary, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn checker_stopstart_hands_over_then_comes_back_as_secondary() {
        let mut sim = pair(WitnessKind::Ping);
        sim.input(
            A,
            Input::CheckerFailed {
                action: CheckerAction::StopStart,
            },
        );
        sim.run_for(secs(3));
        assert!(
            sim.logged(A, |e| matches!(
                e,
                Event::CheckerRestart {
                    action: CheckerAction::StopStart,
                    count: 1
                }
            )),
            "expected the stopstart counted"
        );
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected b primary and a back as secondary, saw {}",
            sim.describe()
        );
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
    }

    #[test]
    fn resource_down_on_the_primary_hands_over() {
        let mut sim = pair(WitnessKind::Ping);
        sim.input(
            A,
            Input::ResourceDown {
                resource: "eth1".into(),
            },
        );
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(A),
            (State::Wait, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(A, |e| *e
                == Event::Waiting(WaitReason::ResourceDown("eth1".into()))),
            "expected the resource logged"
        );
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over, saw {}",
            sim.describe()
        );
        sim.input(
            A,
            Input::ResourceUp {
                resource: "eth1".into(),
            },
        );
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected a back as secondary, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn arbiter_failover_after_a_crash_waits_for_the_dead_primary_lease() {
        let mut sim = pair(WitnessKind::Arbiter);
        sim.run_for(secs(1));
        let t0 = sim.now;
        sim.crash(A);
        sim.run_for(secs(10));
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over, saw {}",
            sim.describe()
        );
        let alone = sim.reached(B, State::Alone, Phase::Transient, t0);
        let earliest = t0 + sim.t.grace;
        let latest = t0 + sim.t.lease + sim.t.grace + sim.t.renew + sim.t.timeout;
        assert!(
            alone.is_some_and(|at| at >= earliest && at <= latest),
            "expected b ALONE after the old lease and grace ({earliest}..{latest}), saw {alone:?}"
        );
    }

    #[test]
    fn failover_off_secondary_never_takes_over() {
        let mut sim = pair(WitnessKind::Ping);
        sim.input(B, Input::SetFailover(false));
        sim.crash(A);
        sim.run_for(secs(5));
        assert_eq!(
            sim.state(B),
            (State::Wait, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::FailoverOff)),
            "expected b to log that failover is off"
        );
        assert!(!sim.active(B), "expected b never active");
        sim.input(B, Input::SetFailover(true));
        sim.run_for(secs(1));
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over once failover is on, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn failover_off_secondary_does_not_take_over_a_stopped_primary() {
        let mut sim = pair(WitnessKind::Ping);
        sim.input(B, Input::SetFailover(false));
        sim.command(A, Command::Stop);
        sim.run_for(secs(3));
        assert_eq!(sim.state(A).0, State::Stop, "saw {}", sim.describe());
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
        assert!(!sim.active(B), "expected b never active");
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Prim, State::Second),
            "expected a to take its role back once b declined it, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn graceful_stop_of_the_primary_hands_over() {
        let mut sim = pair(WitnessKind::Ping);
        let t0 = sim.now;
        sim.command(A, Command::Stop);
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(A),
            (State::Stop, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.machine(B).is_serving(),
            "expected b to take over, saw {}",
            sim.describe()
        );
        assert!(
            sim.overlaps.is_empty(),
            "expected never two active nodes, saw {:?}",
            sim.overlaps
        );
        let a = sim.actions_since(A, t0);
        let order = [
            position(&a, |x| *x == Action::ReleaseVip),
            position(&a, is_stop_prim),
            position(&a, |x| *x == Action::DrainReplication),
            position(
                &a,
                |x| matches!(x, Action::RunScript(r) if r.kind == ScriptKind::Poststop),
            ),
        ];
        assert!(
            order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
            "expected ReleaseVip, stop_prim, drain, poststop in order, saw {a:?}"
        );
        assert!(
            !sim.actions_since(B, t0).contains(&Action::AskWitness),
            "expected no witness asked when the peer is seen stopping"
        );
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Second, State::Prim),
            "expected a back as secondary, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn stop_prim_is_forced_when_the_graceful_call_fails() {
        let mut sim = pair(WitnessKind::Ping);
        sim.nodes[A].failing.insert((ScriptKind::StopPrim, false));
        let t0 = sim.now;
        sim.command(A, Command::Stop);
        sim.run_for(secs(2));
        let a = sim.actions_since(A, t0);
        assert!(
            ran_script(&a, ScriptKind::StopPrim, false)
                && ran_script(&a, ScriptKind::StopPrim, true),
            "expected stop_prim then stop_prim force, saw {a:?}"
        );
        assert!(
            sim.logged(A, |e| *e
                == Event::ScriptFailed {
                    kind: ScriptKind::StopPrim,
                    forced: false
                }),
            "expected the graceful failure logged"
        );
        assert_eq!(sim.state(A).0, State::Stop, "saw {}", sim.describe());
    }

    #[test]
    fn crashed_primary_restarts_as_secondary() {
        let mut sim = pair(WitnessKind::Ping);
        sim.crash(A);
        sim.run_for(secs(2));
        assert!(sim.machine(B).is_serving(), "saw {}", sim.describe());
        sim.boot(A);
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Second, Phase::Ready), (State::Prim, Phase::Ready)),
            "expected the old primary back as secondary, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn crashed_primary_alone_on_restart_waits_for_prim() {
        let mut sim = pair(WitnessKind::Ping);
        sim.crash(A);
        sim.crash(B);
        sim.boot(A);
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(A),
            (State::Wait, Phase::Ready),
            "expected a (primary with a secondary in sync) to wait: b may have taken over, saw {}",
            sim.describe()
        );
    }

    #[test]
    fn a_primary_that_dies_as_its_secondary_completes_a_resync_never_serves_beside_it() {
        let mut sim = pair(WitnessKind::None);
        // The secondary drops out and rejoins: a resynchronisation.
        sim.input(A, Input::ReplicationBroken);
        sim.input(B, Input::ReplicationBroken);
        sim.run_for(ms(200));
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
        // The primary dies the moment the secondary counts itself in sync,
        // before any heartbeat could tell the primary so.
        let deadline = sim.now + secs(5);
        while sim.state(B) != (State::Second, Phase::Ready) {
            assert!(sim.now < deadline, "b never resynced: {}", sim.describe());
            sim.run_for(ms(1));
        }
        sim.crash(A);
        sim.isolate(Endpoint::Node(A));
        sim.run_for(secs(2));
        assert!(sim.machine(B).is_serving(), "saw {}", sim.describe());
        sim.boot(A);
        sim.command(A, Command::Start);
        sim.run_for(secs(3));
        assert_eq!(
            sim.state(A).0,
            State::Wait,
            "a's secondary may have taken over (it did): a must not serve alone, saw {}",
            sim.describe()
        );
        assert!(sim.overlaps.is_empty(), "both served at {:?}", sim.overlaps);
    }

    #[test]
    fn replication_break_leaves_the_primary_alone_and_the_secondary_rejoins() {
        let mut sim = pair(WitnessKind::Ping);
        let t0 = sim.now;
        sim.input(A, Input::ReplicationBroken);
        sim.input(B, Input::ReplicationBroken);
        sim.run_for(ms(200));
        assert_eq!(
            sim.state(A),
            (State::Alone, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
        assert_eq!(
            sim.machine(A).stamp().generation,
            gen(3),
            "expected a to start generation 3 (odd: a sorts first)"
        );
        sim.run_for(secs(3));
        assert_eq!(
            (sim.state(A), sim.state(B)),
            ((State::Prim, Phase::Ready), (State::Second, Phase::Ready)),
            "expected b to rejoin after rejoin_delay, saw {}",
            sim.describe()
        );
        let resyncs = sim
            .actions_since(B, t0)
            .iter()
            .filter(|a| **a == Action::StartResync)
            .count();
        assert_eq!(resyncs, 1, "expected one resynchronisation, saw {resyncs}");
    }

    #[test]
    fn resyncing_secondary_never_takes_over() {
        let mut sim = Sim::new(WitnessKind::Ping);
        sim.t.resync = secs(10);
        sim.start_both();
        sim.run_for(secs(1));
        sim.command(A, Command::Prim);
        sim.run_for(secs(2));
        assert_eq!(
            sim.state(B),
            (State::Second, Phase::Transient),
            "saw {}",
            sim.describe()
        );
        sim.crash(A);
        sim.run_for(secs(5));
        assert_eq!(
            sim.state(B),
            (State::Wait, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        assert!(
            sim.logged(B, |e| *e == Event::Waiting(WaitReason::Partial)),
            "expected b to log its partial data"
        );
        assert_eq!(sim.machine(B).stamp().state, DataState::Partial);
        assert!(!sim.active(B), "expected b never active");
    }

    #[test]
    fn failed_start_prim_stops_the_module() {
        let mut sim = Sim::new(WitnessKind::Ping);
        sim.nodes[A].failing.insert((ScriptKind::StartPrim, false));
        sim.start_both();
        sim.run_for(secs(1));
        let t0 = sim.now;
        sim.command(A, Command::Prim);
        sim.run_for(secs(2));
        assert!(
            sim.logged(A, |e| *e == Event::StartFailed(ScriptKind::StartPrim)),
            "expected the failed start_prim logged"
        );
        assert_eq!(
            sim.state(A),
            (State::Stop, Phase::Ready),
            "saw {}",
            sim.describe()
        );
        let a = sim.actions_since(A, t0);
        assert!(
            position(&a, is_start_prim) < position(&a, is_stop_prim) && !sim.active(A),
            "expected stop_prim to clean up the partial start, saw {a:?}"
        );
        assert_eq!(sim.state(B).0, State::Wait, "saw {}", sim.describe());
    }

    #[test]
    fn prim_is_rejected_while_the_peer_is_primary() {
        let mut sim = pair(WitnessKind::Ping);
        sim.command(B, Command::Prim);
        sim.run_for(secs(1));
        assert!(
            sim.logged(B, |e| matches!(
                e,
                Event::CommandRejected {
                    command: Command::Prim,
                    ..
                }
            )),
            "expected prim rejected on the secondary"
        );
        assert_eq!(
            (sim.state(A).0, sim.state(B).0),
            (State::Prim, State::Second)
        );
    }

    fn config(witness: WitnessKind) -> MirrorConfig {
        let mut cfg = MirrorConfig::new("a", "b");
        cfg.witness = witness;
        cfg
    }

    fn t(ms: u64) -> Instant {
        Instant::from_start(Duration::from_millis(ms))
    }

    /// Feeds `input` and completes every script at once.
    fn drive(m: &mut Mirror, now: Instant, input: Input) -> Vec<Action> {
        let mut all = Vec::new();
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let actions = m.handle(now, input);
            for action in &actions {
                if let Action::RunScript(run) = action {
                    pending.push(Input::ScriptDone {
                        kind: run.kind,
                        ok: true,
                    });
                }
            }
            all.extend(actions);
        }
        all
    }

    #[test]
    fn lease_expiry_while_alone_releases_the_vip_at_once() {
        let newest = DataStamp {
            generation: gen(3),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::Arbiter), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        let asked = drive(&mut m, t(10), Input::PeerLost);
        assert!(
            asked.contains(&Action::AcquireLease {
                generation: gen(3),
                forced: false
            }) && m.state() == State::Wait,
            "expected a lease request from WAIT, saw {asked:?}"
        );
        let until = t(2010);
        let started = drive(
            &mut m,
            t(20),
            Input::LeaseGranted {
                until,
                generation: gen(3),
                recorded: gen(0),
            },
        );
        assert!(
            started.contains(&Action::PersistStamp(DataStamp {
                generation: gen(5),
                state: DataState::Newest
            })) && m.is_serving(),
            "expected ALONE on generation 5 (the next odd one: a sorts first), saw {started:?}"
        );
        assert_eq!(
            m.next_deadline(),
            Some(until),
            "expected a deadline at the lease's end"
        );
        let fenced = m.handle(until, Input::Timer);
        assert_eq!(
            fenced.first(),
            Some(&Action::ReleaseVip),
            "expected the VIP released first, saw {fenced:?}"
        );
        assert!(
            fenced.contains(&Action::Log(Event::LeaseExpired)) && fenced.iter().any(is_stop_prim),
            "expected LeaseExpired and stop_prim, saw {fenced:?}"
        );
        drive(
            &mut m,
            until,
            Input::ScriptDone {
                kind: ScriptKind::StopPrim,
                ok: true,
            },
        );
        assert_eq!(
            (m.state(), m.phase()),
            (State::Wait, Phase::Ready),
            "expected WAIT after the lease expired"
        );
    }

    fn granted(until: Instant, generation: u64, recorded: u64) -> Input {
        Input::LeaseGranted {
            until,
            generation: gen(generation),
            recorded: gen(recorded),
        }
    }

    /// A report from b.
    fn from_b(state: State, generation: u64, data: DataState, following: Option<u64>) -> Input {
        Input::PeerReport(PeerReport {
            state,
            phase: Phase::Ready,
            stamp: DataStamp {
                generation: gen(generation),
                state: data,
            },
            following: following.map(gen),
            handover: None,
        })
    }

    /// a PRIM of generation 5 (bumped from 3) with b its SECOND in sync;
    /// with the arbiter, its lease runs until 2040 ms.
    fn primary_a(witness: WitnessKind) -> Mirror {
        let newest = DataStamp {
            generation: gen(3),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(witness), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        drive(&mut m, t(10), Input::PeerLost);
        if witness == WitnessKind::Arbiter {
            drive(&mut m, t(20), granted(t(2020), 3, 0));
            drive(&mut m, t(30), granted(t(2040), 5, 3));
        }
        assert_eq!(m.state(), State::Alone);
        drive(
            &mut m,
            t(40),
            from_b(State::Second, 3, DataState::Copy, Some(5)),
        );
        assert_eq!((m.state(), m.phase()), (State::Prim, Phase::Ready));
        assert_eq!(m.stamp().generation, gen(5));
        m
    }

    fn went_to(actions: &[Action], state: State) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Log(Event::StateChanged { to, .. }) if *to == state))
    }

    #[test]
    fn a_primary_back_from_a_pause_past_its_lease_stops_at_once_and_follows_the_peer() {
        // The chaos campaign's frozen primary: a was stopped 3 s, b took the
        // lease and went ALONE on generation 6. a wakes: its replication
        // broke meanwhile and its last report of b says SECOND.
        let mut m = primary_a(WitnessKind::Arbiter);
        let woke = drive(&mut m, t(3040), Input::PeerStale);
        assert_eq!(
            woke.iter().find(|a| !matches!(a, Action::Log(_))),
            Some(&Action::ReleaseVip),
            "expected the VIP released before anything else, saw {woke:?}"
        );
        let broke = drive(&mut m, t(3041), Input::ReplicationBroken);
        let all: Vec<Action> = woke.into_iter().chain(broke).collect();
        // WAIT, and Transient until b's next report says what b is.
        assert_eq!((m.state(), m.phase()), (State::Wait, Phase::Transient));
        assert!(!m.is_serving());
        assert!(
            !went_to(&all, State::Alone),
            "a must not serve alone: {all:?}"
        );
        assert!(
            !all.iter()
                .any(|a| matches!(a, Action::PersistStamp(s) if s.generation > gen(5))),
            "a must not start a generation of its own: {all:?}"
        );
        assert!(all.iter().any(is_stop_prim), "expected stop_prim: {all:?}");
        // b's fresh report: a follows it.
        let fresh = drive(
            &mut m,
            t(3100),
            from_b(State::Alone, 6, DataState::Newest, None),
        );
        assert_eq!(m.state(), State::Second, "saw {fresh:?}");
    }

    #[test]
    fn a_primary_back_from_a_short_pause_with_its_lease_keeps_serving() {
        let mut m = primary_a(WitnessKind::Arbiter);
        let woke = drive(&mut m, t(600), Input::PeerStale);
        assert!(
            !woke.contains(&Action::ReleaseVip) && m.state() == State::Prim,
            "the lease still runs: nobody else may serve, saw {woke:?}"
        );
        drive(
            &mut m,
            t(700),
            from_b(State::Second, 5, DataState::Copy, Some(5)),
        );
        assert_eq!((m.state(), m.phase()), (State::Prim, Phase::Ready));
    }

    #[test]
    fn without_a_witness_a_primary_back_from_a_pause_waits_for_the_peers_next_report() {
        let mut m = primary_a(WitnessKind::None);
        drive(&mut m, t(3000), Input::PeerStale);
        let broke = drive(&mut m, t(3001), Input::ReplicationBroken);
        assert!(
            !went_to(&broke, State::Alone)
                && !broke.iter().any(|a| matches!(a, Action::PersistStamp(_))),
            "a replication broken during the pause says nothing yet of b: {broke:?}"
        );
        assert_eq!(m.state(), State::Prim);
        // b took over meanwhile (generation 6): a follows, its writes since
        // the pause being unacknowledged.
        drive(
            &mut m,
            t(3100),
            from_b(State::Alone, 6, DataState::Newest, None),
        );
        assert_eq!(m.state(), State::Second);
        // Had b still been its secondary, a would have gone on alone.
        let mut m = primary_a(WitnessKind::None);
        drive(&mut m, t(3000), Input::PeerStale);
        drive(&mut m, t(3001), Input::ReplicationBroken);
        drive(
            &mut m,
            t(3100),
            from_b(State::Wait, 5, DataState::Copy, None),
        );
        assert_eq!((m.state(), m.phase()), (State::Alone, Phase::Ready));
    }

    #[test]
    fn with_the_arbiter_a_primary_serves_alone_only_while_its_lease_runs() {
        // Replication breaks while the peer is in sight: with the lease, ALONE.
        let mut m = primary_a(WitnessKind::Arbiter);
        drive(&mut m, t(100), Input::ReplicationBroken);
        assert_eq!((m.state(), m.phase()), (State::Alone, Phase::Ready));
        // Without it (the witness went away and the lease ran out while the
        // pair was healthy): the peer in sight may be about to take the
        // lease (it may not hear us), so WAIT, not ALONE.
        let mut m = primary_a(WitnessKind::Arbiter);
        drive(&mut m, t(2100), Input::Timer);
        assert_eq!(
            m.state(),
            State::Prim,
            "a healthy pair goes on without the witness"
        );
        let broke = drive(&mut m, t(2200), Input::ReplicationBroken);
        assert_eq!(
            (m.state(), m.phase()),
            (State::Wait, Phase::Ready),
            "saw {broke:?}"
        );
        assert!(!went_to(&broke, State::Alone), "saw {broke:?}");
        // The witness is back: the lease is granted and a serves alone.
        let back = drive(&mut m, t(2300), granted(t(4300), 5, 5));
        assert_eq!(
            (m.state(), m.phase()),
            (State::Alone, Phase::Ready),
            "saw {back:?}"
        );
    }

    #[test]
    fn two_nodes_that_bump_apart_never_claim_the_same_generation() {
        let newest = |n| DataStamp {
            generation: gen(n),
            state: DataState::Copy,
        };
        for base in 1..6 {
            let mut a = Mirror::new(config(WitnessKind::None), newest(base));
            let mut b = Mirror::new(MirrorConfig::new("b", "a"), newest(base));
            b.cfg.witness = WitnessKind::None;
            for m in [&mut a, &mut b] {
                m.in_sync_with = Some(gen(base));
                m.peer = Some(PeerReport {
                    state: State::Prim,
                    phase: Phase::Ready,
                    stamp: newest(base),
                    following: None,
                    handover: None,
                });
                drive(m, t(0), Input::Command(Command::Start));
                drive(m, t(10), Input::PeerLost);
                assert_eq!(m.state(), State::Alone);
            }
            let (ga, gb) = (a.stamp().generation.0, b.stamp().generation.0);
            assert!(ga > base && gb > base && ga <= base + 2 && gb <= base + 2);
            assert_ne!(ga, gb, "both bumped {base} to the same generation");
            assert_eq!(
                (ga % 2, gb % 2),
                (1, 0),
                "a (first by name) takes odd numbers"
            );
        }
    }

    #[test]
    fn held_writers_go_only_once_the_alone_generation_is_registered_with_the_arbiter() {
        let newest = DataStamp {
            generation: gen(3),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::Arbiter), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        drive(&mut m, t(10), Input::PeerLost);
        assert!(!m.may_release_unacknowledged(t(10)), "WAIT holds writers");
        let started = drive(&mut m, t(20), granted(t(2010), 3, 0));
        assert_eq!(m.state(), State::Alone);
        assert_eq!(m.stamp().generation, gen(5));
        assert!(
            started.contains(&Action::AcquireLease {
                generation: gen(5),
                forced: false
            }),
            "expected a request claiming the new generation at once, saw {started:?}"
        );
        assert!(
            !m.may_release_unacknowledged(t(20)),
            "the lease was granted to generation 3: the witness does not know 5 yet"
        );
        drive(&mut m, t(30), granted(t(2030), 3, 0));
        assert!(
            !m.may_release_unacknowledged(t(30)),
            "a late answer for the old claim"
        );
        drive(&mut m, t(40), granted(t(2040), 5, 3));
        assert!(m.may_release_unacknowledged(t(40)));
        assert!(
            !m.may_release_unacknowledged(t(2040)),
            "an expired lease releases nothing"
        );
    }

    #[test]
    fn without_a_witness_alone_releases_held_writers_and_prim_does_not() {
        let newest = DataStamp {
            generation: gen(3),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::None), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        drive(&mut m, t(10), Input::PeerLost);
        assert_eq!(m.state(), State::Alone);
        assert!(m.may_release_unacknowledged(t(10)));
        let mut m = Mirror::new(config(WitnessKind::Ping), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        drive(&mut m, t(10), Input::PeerLost);
        assert!(
            !m.may_release_unacknowledged(t(10)),
            "the ping witness has not answered"
        );
        drive(&mut m, t(20), Input::WitnessAnswer { won: true });
        assert_eq!(m.state(), State::Alone);
        assert!(m.may_release_unacknowledged(t(20)));
    }

    #[test]
    fn a_stale_refusal_waits_and_halo_prim_claims_by_force_then_goes_above() {
        let newest = DataStamp {
            generation: gen(3),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::Arbiter), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        drive(&mut m, t(10), Input::PeerLost);
        let refused = drive(&mut m, t(20), Input::LeaseStale { newer: gen(4) });
        assert_eq!((m.state(), m.phase()), (State::Wait, Phase::Ready));
        assert!(
            refused.contains(&Action::Log(Event::Waiting(WaitReason::Stale))),
            "expected to wait as stale, saw {refused:?}"
        );
        assert!(
            !refused.contains(&Action::ReleaseLease),
            "a stale node keeps asking, saw {refused:?}"
        );
        let forced = drive(&mut m, t(30), Input::Command(Command::Prim));
        assert!(
            forced.contains(&Action::AcquireLease {
                generation: gen(3),
                forced: true
            }),
            "halo prim must claim by force, saw {forced:?}"
        );
        let started = drive(&mut m, t(40), granted(t(2040), 3, 4));
        assert_eq!(m.state(), State::Alone);
        assert_eq!(
            m.stamp().generation,
            gen(5),
            "the forced node goes above the generation it overrode"
        );
        assert!(
            started.contains(&Action::AcquireLease {
                generation: gen(5),
                forced: false
            }),
            "saw {started:?}"
        );
    }

    #[test]
    fn a_forced_primary_is_followed_and_the_discarded_writes_are_logged() {
        let newest = DataStamp {
            generation: gen(5),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::Ping), newest);
        drive(&mut m, t(0), Input::Command(Command::Start));
        let forced = PeerReport {
            state: State::Alone,
            phase: Phase::Ready,
            stamp: DataStamp {
                generation: gen(3),
                state: DataState::Newest,
            },
            following: None,
            handover: None,
        };
        let actions = drive(&mut m, t(10), Input::PeerReport(forced));
        assert!(
            m.state() == State::Second
                && actions.contains(&Action::Log(Event::DivergentData { ours: 5, theirs: 3 }))
                && actions.contains(&Action::StartResync),
            "expected to follow the forced primary and log the loss, saw {} {actions:?}",
            m.state()
        );
    }

    #[test]
    fn stop_during_a_resync_drops_it_at_once() {
        let mut m = Mirror::new(config(WitnessKind::Ping), DataStamp::EMPTY);
        drive(&mut m, t(0), Input::Command(Command::Start));
        let peer = PeerReport {
            state: State::Alone,
            phase: Phase::Ready,
            stamp: DataStamp {
                generation: gen(1),
                state: DataState::Newest,
            },
            following: None,
            handover: None,
        };
        let joined = drive(&mut m, t(10), Input::PeerReport(peer));
        assert!(joined.contains(&Action::StartResync), "saw {joined:?}");
        let stopped = drive(&mut m, t(20), Input::Command(Command::Stop));
        assert!(
            stopped.contains(&Action::StopReplication)
                && stopped.contains(&Action::SetReadOnly(false))
                && m.state() == State::Stop,
            "expected the resync dropped and the module stopped, saw {stopped:?}"
        );
    }

    #[test]
    fn primary_keeps_serving_while_the_ping_witness_is_asked() {
        let shared = DataStamp {
            generation: gen(2),
            state: DataState::Newest,
        };
        let mut m = Mirror::new(config(WitnessKind::Ping), shared);
        drive(&mut m, t(0), Input::Command(Command::Start));
        let second = PeerReport {
            state: State::Second,
            phase: Phase::Ready,
            stamp: DataStamp {
                generation: gen(2),
                state: DataState::Copy,
            },
            following: Some(gen(2)),
            handover: None,
        };
        drive(&mut m, t(1), Input::PeerReport(second));
        drive(&mut m, t(2), Input::PeerReport(second));
        assert_eq!(
            m.state(),
            State::Alone,
            "expected ALONE (peer's generation is older)"
        );
        // The peer rejoins on our new generation.
        let joined = PeerReport {
            following: Some(m.stamp().generation),
            ..second
        };
        drive(&mut m, t(3), Input::PeerReport(joined));
        assert_eq!((m.state(), m.phase()), (State::Prim, Phase::Ready));
        let asked = drive(&mut m, t(4), Input::PeerLost);
        assert!(
            asked.contains(&Action::AskWitness)
                && !asked.contains(&Action::ReleaseVip)
                && (m.state(), m.phase()) == (State::Prim, Phase::Transient),
            "expected PRIM transient, still serving, while asking, saw {} {} {asked:?}",
            m.state(),
            m.phase()
        );
        let lost = drive(&mut m, t(5), Input::WitnessAnswer { won: false });
        assert!(
            lost.first() == Some(&Action::ReleaseVip) && m.state() == State::Wait,
            "expected the primary to stop when the witness is unreachable, saw {lost:?}"
        );
    }
}
