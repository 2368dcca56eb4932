//! An in-memory cluster for the mirror machine's tests: two nodes, a witness,
//! a virtual clock, and a network with `cut`, `isolate` and `heal`.
//!
//! The harness plays the daemon around each machine: it sends heartbeats
//! every `pulse` (when the link is up) and reports `PeerLost` after `timeout`
//! without one; it runs scripts (they end after `script`, failing when told
//! to), replication (a drain or a resynchronisation ends after its delay, or
//! breaks if the link is cut by then; a resynchronisation's end waits for
//! the primary's `EndResync`), the ping witness (answers whoever
//! reaches it) and the arbiter (one lease per module, renewed every `renew`,
//! granted to another node only `grace` after it expired), and a disk that
//! keeps the data stamp across crashes. After every event it records whether
//! both nodes were active (holding the VIP or running the application) at
//! once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use super::mirror::{
    Action, DataStamp, Generation, Input, Mirror, MirrorConfig, ReplRole, WitnessKind,
};
use super::{Command, Event, Instant, Phase, RestartPolicy, ScriptKind, State};

/// Something on the network: a node or the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Endpoint {
    Node(usize),
    Witness,
}

/// Delays of the simulated world.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    pub pulse: Duration,
    pub timeout: Duration,
    pub script: Duration,
    pub resync: Duration,
    pub drain: Duration,
    /// How long a cut link takes to break a replication stream.
    pub repl_break: Duration,
    pub ping: Duration,
    pub lease: Duration,
    pub renew: Duration,
    pub grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            pulse: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            script: Duration::from_millis(50),
            resync: Duration::from_millis(300),
            drain: Duration::from_millis(20),
            // Shorter than the heartbeat timeout: the secondary learns of the
            // break before it learns that the peer is lost.
            repl_break: Duration::from_millis(200),
            ping: Duration::from_millis(10),
            lease: Duration::from_secs(2),
            renew: Duration::from_millis(500),
            grace: Duration::from_secs(1),
        }
    }
}

/// One simulated node: its machine (absent while crashed) and what it holds.
pub(crate) struct SimNode {
    pub machine: Option<Mirror>,
    pub cfg: MirrorConfig,
    pub disk: DataStamp,
    pub app: bool,
    pub vip: bool,
    pub repl: Option<ReplRole>,
    pub read_only: bool,
    /// Scripts that fail, by kind and forced call.
    pub failing: BTreeSet<(ScriptKind, bool)>,
    /// Every (state, phase) the machine went through, with when.
    pub history: Vec<(Instant, State, Phase)>,
    /// Every action emitted, with when.
    pub actions: Vec<(Instant, Action)>,
    incarnation: u64,
    last_heard: Instant,
    lost_sent: bool,
    lease_wanted: bool,
    /// The (generation, forced) of the last `AcquireLease`.
    lease_claim: (Generation, bool),
    lease_epoch: u64,
    lease_until: Option<Instant>,
    timer: Option<Instant>,
}

#[derive(Clone, Debug)]
enum Ev {
    ScriptEnd {
        node: usize,
        kind: ScriptKind,
        force: bool,
        ok: bool,
    },
    Pulse,
    Resync(usize),
    /// The primary let the end of node `i`'s resynchronisation go.
    ResyncEnd(usize),
    Drain(usize),
    ReplBreak(usize),
    Ping(usize),
    LeaseTick(usize, u64),
    Timer(usize, Instant),
}

pub(crate) struct Sim {
    pub now: Instant,
    pub t: Timings,
    pub nodes: Vec<SimNode>,
    witness: WitnessKind,
    arbiter: Option<(usize, Instant)>,
    /// The highest generation the arbiter granted to.
    arbiter_generation: Generation,
    cuts: BTreeSet<(Endpoint, Endpoint)>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, (u64, Ev)>,
    seq: u64,
    /// Instants at which both nodes were active (VIP or application).
    pub overlaps: Vec<Instant>,
}

impl Sim {
    /// Two stopped nodes "a" and "b" with the given witness; nothing booted yet.
    pub fn new(witness: WitnessKind) -> Self {
        let names = ["a", "b"];
        let nodes = (0..2)
            .map(|i| {
                let mut cfg = MirrorConfig::new(names[i], names[1 - i]);
                cfg.witness = witness;
                cfg.witness_retry = Duration::from_secs(1);
                cfg.rejoin_delay = Duration::from_secs(1);
                cfg.restart = RestartPolicy {
                    maxloop: 2,
                    loop_interval: Duration::from_secs(3600),
                };
                SimNode {
                    machine: None,
                    cfg,
                    disk: DataStamp::EMPTY,
                    app: false,
                    vip: false,
                    repl: None,
                    read_only: false,
                    failing: BTreeSet::new(),
                    history: Vec::new(),
                    actions: Vec::new(),
                    incarnation: 0,
                    last_heard: Instant::START,
                    lost_sent: false,
                    lease_wanted: false,
                    lease_claim: (Generation(0), false),
                    lease_epoch: 0,
                    lease_until: None,
                    timer: None,
                }
            })
            .collect();
        let mut sim = Sim {
            now: Instant::START,
            t: Timings::default(),
            nodes,
            witness,
            arbiter: None,
            arbiter_generation: Generation(0),
            cuts: BTreeSet::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            overlaps: Vec::new(),
        };
        sim.schedule(Duration::ZERO, 0, Ev::Pulse);
        sim
    }

    /// Starts node `i`'s daemon: a stopped machine over its disk's stamp.
    pub fn boot(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.machine = Some(Mirror::new(node.cfg.clone(), node.disk));
        node.incarnation += 1;
        node.last_heard = self.now;
        node.lost_sent = false;
        node.timer = None;
        node.history.push((self.now, State::Stop, Phase::Ready));
    }

    /// Boots both nodes and starts the module on both.
    pub fn start_both(&mut self) {
        for i in 0..2 {
            self.boot(i);
        }
        for i in 0..2 {
            self.command(i, Command::Start);
        }
    }

    /// Kills node `i` (daemon, application, VIP: the whole host); its disk survives.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.machine = None;
        node.app = false;
        node.vip = false;
        node.repl = None;
        node.lease_wanted = false;
        node.lease_until = None;
        node.timer = None;
        let peer = 1 - i;
        if self.nodes[peer].repl.is_some() {
            self.schedule_for(peer, self.t.repl_break, Ev::ReplBreak(peer));
        }
    }

    pub fn command(&mut self, i: usize, command: Command) {
        self.deliver(i, Input::Command(command));
    }

    pub fn input(&mut self, i: usize, input: Input) {
        self.deliver(i, input);
    }

    /// Cuts the link between two endpoints.
    pub fn cut(&mut self, a: Endpoint, b: Endpoint) {
        self.cuts.insert(if a < b { (a, b) } else { (b, a) });
        if let (Endpoint::Node(_), Endpoint::Node(_)) = (a, b) {
            for i in 0..2 {
                if self.nodes[i].repl.is_some() {
                    self.schedule_for(i, self.t.repl_break, Ev::ReplBreak(i));
                }
            }
        }
    }

    /// Cuts every link of `x`.
    pub fn isolate(&mut self, x: Endpoint) {
        for other in [Endpoint::Node(0), Endpoint::Node(1), Endpoint::Witness] {
            if other != x {
                self.cut(x, other);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    pub fn connected(&self, a: Endpoint, b: Endpoint) -> bool {
        !self.cuts.contains(&if a < b { (a, b) } else { (b, a) })
    }

    fn nodes_connected(&self, i: usize) -> bool {
        let j = 1 - i;
        self.nodes[j].machine.is_some() && self.connected(Endpoint::Node(i), Endpoint::Node(j))
    }

    pub fn machine(&self, i: usize) -> &Mirror {
        self.nodes[i]
            .machine
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is crashed"))
    }

    pub fn state(&self, i: usize) -> (State, Phase) {
        let m = self.machine(i);
        (m.state(), m.phase())
    }

    /// Whether node `i` holds the VIP or runs the application.
    pub fn active(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some() && (self.nodes[i].app || self.nodes[i].vip)
    }

    /// The first time node `i` entered `state` with `phase` at or after `since`.
    pub fn reached(&self, i: usize, state: State, phase: Phase, since: Instant) -> Option<Instant> {
        self.nodes[i]
            .history
            .iter()
            .find(|(at, s, p)| *at >= since && *s == state && *p == phase)
            .map(|(at, _, _)| *at)
    }

    /// Whether node `i` logged an event matching `pred`.
    pub fn logged(&self, i: usize, pred: impl Fn(&Event) -> bool) -> bool {
        self.nodes[i]
            .actions
            .iter()
            .any(|(_, a)| matches!(a, Action::Log(e) if pred(e)))
    }

    /// Node `i`'s actions at or after `since`, without logs.
    pub fn actions_since(&self, i: usize, since: Instant) -> Vec<Action> {
        self.nodes[i]
            .actions
            .iter()
            .filter(|(at, a)| *at >= since && !matches!(a, Action::Log(_)))
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// A one-line summary of both nodes, for failure messages.
    pub fn describe(&self) -> String {
        (0..2)
            .map(|i| match &self.nodes[i].machine {
                Some(m) => format!(
                    "{}: {} {} stamp {:?} app={} vip={}",
                    self.nodes[i].cfg.node,
                    m.state(),
                    m.phase(),
                    m.stamp(),
                    self.nodes[i].app,
                    self.nodes[i].vip
                ),
                None => format!("{}: crashed", self.nodes[i].cfg.node),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    pub fn run_until(&mut self, end: Instant) {
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some((incarnation, ev)) = self.events.remove(&id) else {
                continue;
            };
            self.fire(incarnation, ev);
            self.check();
        }
        self.now = end;
    }

    fn schedule(&mut self, after: Duration, incarnation: u64, ev: Ev) {
        self.seq += 1;
        let at = self.now + after;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, (incarnation, ev));
    }

    fn schedule_for(&mut self, i: usize, after: Duration, ev: Ev) {
        let incarnation = self.nodes[i].incarnation;
        self.schedule(after, incarnation, ev);
    }

    fn check(&mut self) {
        if self.active(0) && self.active(1) && self.overlaps.last() != Some(&self.now) {
            self.overlaps.push(self.now);
        }
    }

    fn current(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].machine.is_some() && self.nodes[i].incarnation == incarnation
    }

    fn fire(&mut self, incarnation: u64, ev: Ev) {
        match ev {
            Ev::Pulse => self.pulse(),
            Ev::ScriptEnd {
                node,
                kind,
                force,
                ok,
            } => {
                if !self.current(node, incarnation) {
                    return;
                }
                if kind == ScriptKind::StopPrim && (ok || force) {
                    self.nodes[node].app = false;
                }
                self.deliver(node, Input::ScriptDone { kind, ok });
            }
            Ev::Resync(i) | Ev::ResyncEnd(i) | Ev::Drain(i) | Ev::ReplBreak(i)
                if !self.current(i, incarnation) => {}
            // Everything is sent: the primary decides when the end goes.
            Ev::Resync(i) => {
                if self.nodes_connected(i) && self.active(1 - i) {
                    let generation = self.machine(1 - i).stamp().generation.0;
                    self.deliver(1 - i, Input::ResyncSent { generation });
                } else {
                    self.deliver(i, Input::ReplicationBroken);
                }
            }
            Ev::ResyncEnd(i) => {
                let input = if self.nodes_connected(i) {
                    Input::ResyncDone
                } else {
                    Input::ReplicationBroken
                };
                self.deliver(i, input);
            }
            Ev::Drain(i) => {
                let input = if self.nodes_connected(i) {
                    Input::ReplicationDrained
                } else {
                    Input::ReplicationBroken
                };
                self.deliver(i, input);
            }
            Ev::ReplBreak(i) => {
                if self.nodes[i].repl.is_some() && !self.nodes_connected(i) {
                    self.deliver(i, Input::ReplicationBroken);
                }
            }
            Ev::Ping(i) => {
                if self.current(i, incarnation) {
                    let won = self.connected(Endpoint::Node(i), Endpoint::Witness);
                    self.deliver(i, Input::WitnessAnswer { won });
                }
            }
            Ev::LeaseTick(i, epoch) => {
                let node = &self.nodes[i];
                if self.current(i, incarnation) && node.lease_wanted && node.lease_epoch == epoch {
                    self.lease_request(i);
                    self.schedule_for(i, self.t.renew, Ev::LeaseTick(i, epoch));
                }
            }
            Ev::Timer(i, at) => {
                if self.current(i, incarnation) && self.nodes[i].timer == Some(at) {
                    self.nodes[i].timer = None;
                    self.deliver(i, Input::Timer);
                }
            }
        }
    }

    fn pulse(&mut self) {
        for i in 0..2 {
            let j = 1 - i;
            if self.nodes[i].machine.is_some() && self.nodes_connected(i) {
                let report = self.machine(j).report();
                self.deliver(i, Input::PeerReport(report));
            }
        }
        for i in 0..2 {
            let node = &self.nodes[i];
            if node.machine.is_some()
                && !node.lost_sent
                && self.now.saturating_duration_since(node.last_heard) >= self.t.timeout
            {
                self.nodes[i].lost_sent = true;
                self.deliver(i, Input::PeerLost);
            }
        }
        self.schedule(self.t.pulse, 0, Ev::Pulse);
    }

    fn lease_request(&mut self, i: usize) {
        if !self.connected(Endpoint::Node(i), Endpoint::Witness) {
            // The lease client answers a first request it cannot deliver; a
            // held lease simply runs out.
            if self.nodes[i]
                .lease_until
                .is_none_or(|until| until <= self.now)
            {
                self.nodes[i].lease_until = None;
                self.deliver(i, Input::LeaseLost);
            }
            return;
        }
        let granted = match self.arbiter {
            None => true,
            Some((holder, _)) if holder == i => true,
            Some((_, expires)) => self.now >= expires + self.t.grace,
        };
        let (generation, forced) = self.nodes[i].lease_claim;
        let recorded = self.arbiter_generation;
        if granted && generation < recorded && !forced {
            self.nodes[i].lease_until = None;
            self.deliver(i, Input::LeaseStale { newer: recorded });
        } else if granted {
            let until = self.now + self.t.lease;
            self.arbiter = Some((i, until));
            self.arbiter_generation = if forced {
                generation
            } else {
                recorded.max(generation)
            };
            self.nodes[i].lease_until = Some(until);
            self.deliver(
                i,
                Input::LeaseGranted {
                    until,
                    generation,
                    recorded,
                },
            );
        } else {
            self.nodes[i].lease_until = None;
            self.deliver(i, Input::LeaseLost);
        }
    }

    fn deliver(&mut self, i: usize, input: Input) {
        let now = self.now;
        if matches!(input, Input::PeerReport(_)) {
            self.nodes[i].last_heard = now;
            self.nodes[i].lost_sent = false;
        }
        let Some(machine) = self.nodes[i].machine.as_mut() else {
            return;
        };
        let actions = machine.handle(now, input);
        let seen = (machine.state(), machine.phase());
        let deadline = machine.next_deadline();
        let node = &mut self.nodes[i];
        if node.history.last().map(|(_, s, p)| (*s, *p)) != Some(seen) {
            node.history.push((now, seen.0, seen.1));
        }
        for action in actions {
            self.nodes[i].actions.push((now, action.clone()));
            self.effect(i, action);
        }
        if let Some(at) = deadline {
            if self.nodes[i].timer != Some(at) {
                self.nodes[i].timer = Some(at);
                let after = at.saturating_duration_since(now);
                self.schedule_for(i, after, Ev::Timer(i, at));
            }
        }
        self.check();
    }

    fn effect(&mut self, i: usize, action: Action) {
        match action {
            Action::RunScript(run) => {
                if run.kind == ScriptKind::StartPrim {
                    self.nodes[i].app = true;
                }
                let ok = !self.nodes[i].failing.contains(&(run.kind, run.force));
                let ev = Ev::ScriptEnd {
                    node: i,
                    kind: run.kind,
                    force: run.force,
                    ok,
                };
                self.schedule_for(i, self.t.script, ev);
            }
            Action::ClaimVip => self.nodes[i].vip = true,
            Action::ReleaseVip => self.nodes[i].vip = false,
            Action::SetReadOnly(on) => self.nodes[i].read_only = on,
            Action::StartReplication { role } => self.nodes[i].repl = Some(role),
            Action::StopReplication => self.nodes[i].repl = None,
            Action::DrainReplication => self.schedule_for(i, self.t.drain, Ev::Drain(i)),
            Action::StartResync => self.schedule_for(i, self.t.resync, Ev::Resync(i)),
            Action::PersistStamp(stamp) => self.nodes[i].disk = stamp,
            Action::EndResync(_) => self.schedule_for(1 - i, Duration::ZERO, Ev::ResyncEnd(1 - i)),
            Action::AskWitness => {
                assert_eq!(
                    self.witness,
                    WitnessKind::Ping,
                    "AskWitness without a ping witness"
                );
                self.schedule_for(i, self.t.ping, Ev::Ping(i));
            }
            Action::AcquireLease { generation, forced } => {
                assert_eq!(
                    self.witness,
                    WitnessKind::Arbiter,
                    "AcquireLease without an arbiter"
                );
                let node = &mut self.nodes[i];
                node.lease_wanted = true;
                node.lease_claim = (generation, forced);
                node.lease_epoch += 1;
                let epoch = node.lease_epoch;
                self.schedule_for(i, Duration::ZERO, Ev::LeaseTick(i, epoch));
            }
            Action::ReleaseLease => {
                self.nodes[i].lease_wanted = false;
                self.nodes[i].lease_until = None;
                let reachable = self.connected(Endpoint::Node(i), Endpoint::Witness);
                if reachable && self.arbiter.is_some_and(|(holder, _)| holder == i) {
                    self.arbiter = None;
                }
            }
            Action::Log(_) => {}
        }
    }
}
