//! The driver of one farm module: feeds the pure `fsm::farm::Farm` machine
//! with commands, peer reports, checker results, script completions and
//! time, and performs the actions it returns.
//!
//! The node's own power (`power` of its configuration, then of each
//! `halo reload`) is announced in its heartbeat; the members' powers come
//! from their announcements (`farm::members` states the agreement rule).
//!
//! The data path actions (`ClaimVip`, `ReleaseVip`, `SetBuckets`) go to
//! [`FarmDataPath`]; a failure there is a resource down for the machine
//! (the node leaves the farm) and is logged.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant as TokioInstant,
};
use tracing::warn;

use crate::{
    api::{ActionRequest, ModuleAction, SharedStatus},
    app::{self, checker::CheckerReport, LogSink},
    cluster::{frame::ModuleReport, instant::FLAG_INSTANT},
    config::FarmModule,
    farm::{
        datapath::{FarmDataPath, PeerAnnouncement, PeerInstant},
        members::{peer_members, PeerFarm},
        SharedTables,
    },
    fsm::{
        self,
        farm::{Action, Farm, FarmConfig, Input},
        Command, Instant, Phase, RestartPolicy, ScriptTimeouts, State,
    },
};

use super::{
    heartbeat::Heartbeat,
    module::{self, CheckerInput, ModuleCore, STOP_GRACE},
    module_log::ModuleLog,
};

/// What reaches a farm module driver.
#[derive(Debug)]
pub enum FarmInput {
    /// A peer's report of this module (`None`: the peer is down), and the
    /// power it announces for it (`None`: its frames carry none).
    Peer {
        peer: String,
        report: Option<ModuleReport>,
        power: Option<u32>,
    },
    /// This node's power for the module, changed by a reload.
    Power(u32),
}

/// What reaches a mirror module driver from the cluster.
#[derive(Debug)]
pub enum ModuleInput {
    /// A peer's report of this module (`None`: the peer is down).
    Peer {
        peer: String,
        report: Option<ModuleReport>,
    },
}

/// Everything a farm driver needs, shared with the daemon.
pub struct FarmDriver {
    module: FarmModule,
    core: ModuleCore,
    machine: Farm,
    origin: TokioInstant,
    reports: Arc<Mutex<Vec<ModuleReport>>>,
    /// The powers this node announces, by farm module (the heartbeat's).
    powers: Arc<Mutex<BTreeMap<String, u32>>>,
    /// This node's power, as announced.
    power: u32,
    /// Peers whose module is UP Ready.
    members: BTreeMap<String, u32>,
    peer_reports: HashMap<String, ModuleReport>,
    /// The power each peer announces (`None`: its frames carry none).
    peer_powers: HashMap<String, Option<u32>>,
    checkers_on: watch::Sender<bool>,
    datapath: FarmDataPath,
    /// The live bucket table, shared with the API (`halo buckets`).
    tables: SharedTables,
    /// The module's first start waits to hear from its peers.
    start_pending: bool,
    /// Peers heard from since the daemon started (a report or a loss).
    heard: std::collections::BTreeSet<String>,
}

/// Bit of `ModuleReport::flags`: the node still drains buckets it handed
/// over, so their new owner keeps them `Incoming`.
pub const FLAG_DRAINING: u8 = 1;

/// What the peers' last reports announce of their tables and handovers.
fn announcements(reports: &HashMap<String, ModuleReport>) -> BTreeMap<String, PeerAnnouncement> {
    reports
        .iter()
        .map(|(peer, report)| {
            let applied = if report.flags & FLAG_INSTANT != 0 {
                PeerInstant::Here(report.following)
            } else {
                PeerInstant::Wall(report.following)
            };
            let announcement = PeerAnnouncement {
                fingerprint: report.generation,
                applied,
                draining: report.flags & FLAG_DRAINING != 0,
            };
            (peer.clone(), announcement)
        })
        .collect()
}

/// The longest a farm module's first start waits to hear from every peer.
const JOIN_WAIT: Duration = Duration::from_secs(3);

/// How often handovers settle while a graceful leave drains.
const DRAIN_TICK: Duration = Duration::from_millis(200);

/// The resource name under which data path failures take the node out.
const DATAPATH: &str = "datapath";

impl FarmDriver {
    /// A driver that reports and announces its power through `heartbeat`.
    pub fn new(
        module: FarmModule,
        node: &str,
        status: SharedStatus,
        heartbeat: &Heartbeat,
        log: ModuleLog,
        sink: LogSink,
        tables: SharedTables,
    ) -> Self {
        let power = module.power.get(node).copied().unwrap_or(1);
        let (reports, powers) = (
            Arc::clone(&heartbeat.reports),
            Arc::clone(&heartbeat.powers),
        );
        powers
            .lock()
            .expect("powers lock")
            .insert(module.name.clone(), power);
        let machine = Farm::new(FarmConfig {
            node: node.to_owned(),
            weight: power,
            scripts: ScriptTimeouts {
                start: module.scripts.start_timeout,
                nice_stop: module.scripts.nicestoptimeout,
                force_stop: module.scripts.forcestoptimeout,
            },
            restart: RestartPolicy {
                maxloop: module.maxloop,
                loop_interval: module.loop_interval,
            },
            drain_timeout: module.drain_timeout,
        });
        let (checkers_on, _) = watch::channel(true);
        let datapath = FarmDataPath::new(module.clone(), node);
        FarmDriver {
            datapath,
            tables,
            core: ModuleCore::new(&module.name, node, status, log, sink),
            module,
            machine,
            origin: TokioInstant::now(),
            reports,
            powers,
            power,
            members: BTreeMap::new(),
            peer_reports: HashMap::new(),
            peer_powers: HashMap::new(),
            checkers_on,
            start_pending: true,
            heard: std::collections::BTreeSet::new(),
        }
    }

    /// Starts the module once every peer of the module was heard from, or
    /// at `JOIN_WAIT`: a node that joined a running farm before knowing
    /// every member would take buckets as if their owner were gone (Owned,
    /// not Incoming) and reset that owner's established connections.
    fn start_when_peers_known(&mut self, timed_out: bool, scripts: &mpsc::UnboundedSender<Input>) {
        if !self.start_pending {
            return;
        }
        let known = self
            .module
            .nodes
            .iter()
            .all(|n| *n == self.core.node || self.heard.contains(n));
        if known || timed_out {
            self.start_pending = false;
            self.feed(Input::Command(Command::Start), scripts);
        }
    }

    fn now(&self) -> Instant {
        Instant::from_start(self.origin.elapsed())
    }

    /// Runs the module until `shutdown`, then stops it (scripts included).
    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<FarmInput>,
        mut actions: mpsc::UnboundedReceiver<ActionRequest>,
        mut log_lines: mpsc::UnboundedReceiver<app::LogLine>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (script_tx, mut script_done) = mpsc::unbounded_channel();
        let (checker_tx, mut checker_reports) = mpsc::channel(64);
        let context =
            app::checker::CheckerContext::of(&crate::config::Module::Farm(self.module.clone()));
        for checker in &self.module.checkers {
            app::checker::spawn(
                checker.clone(),
                context.clone(),
                checker_tx.clone(),
                self.checkers_on.subscribe(),
            );
        }
        self.publish();
        let join_deadline = TokioInstant::now() + JOIN_WAIT;
        self.start_when_peers_known(false, &script_tx);
        let mut settle = tokio::time::interval(Duration::from_secs(1));
        // While a graceful leave drains, handovers settle faster, so that
        // the stop goes on soon after the last connection ends.
        let mut drain_tick = tokio::time::interval(DRAIN_TICK);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        let mut stop_deadline = None;
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(|t| self.origin + t.since_start());
            tokio::select! {
                _ = shutdown.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    self.start_pending = false;
                    stop_deadline = Some(TokioInstant::now() + STOP_GRACE);
                    self.feed(Input::Command(Command::Stop), &script_tx);
                }
                Some(input) = inputs.recv() => {
                    self.on_input(input, &script_tx);
                    self.start_when_peers_known(false, &script_tx);
                }
                _ = tokio::time::sleep_until(join_deadline), if self.start_pending => {
                    self.start_when_peers_known(true, &script_tx);
                }
                Some(action) = actions.recv() => self.on_action(action, &script_tx),
                Some(done) = script_done.recv() => self.feed(done, &script_tx),
                Some(report) = checker_reports.recv() => self.on_checker(report, &script_tx),
                Some(line) = log_lines.recv() => self.write_log(&line.source, &line.text),
                _ = module::sleep_until(deadline) => {
                    let draining = self.machine.awaiting_drain();
                    self.feed(Input::Timer, &script_tx);
                    if draining && !self.machine.awaiting_drain() {
                        self.write_log(
                            "datapath",
                            "drain_timeout reached: stopping with connections still open",
                        );
                    }
                }
                _ = settle.tick() => {
                    self.settle();
                    self.publish_table();
                    self.check_drained(&script_tx);
                }
                _ = drain_tick.tick(), if self.machine.awaiting_drain() => {
                    self.settle();
                    self.publish_table();
                    self.check_drained(&script_tx);
                }
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
        // A script sends its last lines before its end reaches the machine,
        // but `select!` may have taken the end first: keep them in the log.
        while let Ok(line) = log_lines.try_recv() {
            self.write_log(&line.source, &line.text);
        }
    }

    /// An administrator's action, from the API.
    fn on_action(&mut self, request: ActionRequest, scripts: &mpsc::UnboundedSender<Input>) {
        let ActionRequest { action, verdict } = request;
        self.core.new_action();
        self.write_log("admin", action.path());
        if matches!(
            action,
            ModuleAction::Start | ModuleAction::Stop | ModuleAction::Restart
        ) {
            // The administrator decides: no automatic start after this.
            self.start_pending = false;
        }
        let command = match action {
            ModuleAction::Start => Command::Start,
            ModuleAction::Stop => Command::Stop,
            ModuleAction::Restart => Command::Restart,
            // The farm machine refuses these and logs why.
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
                let why = "failover applies to mirror modules: nothing to change on a farm";
                self.write_log("admin", why);
                let _ = verdict.send(Err(why.to_owned()));
                return;
            }
        };
        self.feed(Input::Command(command), scripts);
        self.core.answer(verdict);
    }

    fn on_input(&mut self, input: FarmInput, scripts: &mpsc::UnboundedSender<Input>) {
        match input {
            FarmInput::Peer {
                peer,
                report,
                power,
            } => {
                self.heard.insert(peer.clone());
                match report {
                    Some(report) => {
                        self.peer_reports.insert(peer.clone(), report);
                        self.peer_powers.insert(peer, power);
                    }
                    None => {
                        self.peer_reports.remove(&peer);
                        self.peer_powers.remove(&peer);
                    }
                }
                let peers: BTreeMap<String, PeerFarm> = self
                    .peer_reports
                    .iter()
                    .map(|(peer, r)| {
                        let farm = PeerFarm {
                            serving: r.state == State::Up.code() && r.phase == 0,
                            power: self.peer_powers.get(peer).copied().flatten(),
                        };
                        (peer.clone(), farm)
                    })
                    .collect();
                let members = peer_members(&peers, &self.module.power);
                if members != self.members {
                    self.members = members.clone();
                    self.feed(Input::Members(members), scripts);
                }
                // An old owner's news (it applies our table, it stopped
                // draining) ends an incoming bucket's wait at once: until
                // then nobody takes the bucket's new UDP flows.
                if self.datapath.incoming() {
                    self.settle();
                }
            }
            FarmInput::Power(power) => {
                if power == self.power {
                    return;
                }
                let text = format!("power {} -> {power} (reload)", self.power);
                self.write_log("admin", &text);
                self.power = power;
                // Announced first: this node counts itself with the power
                // its peers are about to read.
                self.powers
                    .lock()
                    .expect("powers lock")
                    .insert(self.module.name.clone(), power);
                self.feed(Input::Weight(power), scripts);
            }
        }
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
        let now = self.now();
        for action in self.machine.handle(now, input) {
            match action {
                Action::RunScript(run) => {
                    let path = self.script_path(run.kind);
                    self.core
                        .run_script(&run, path, scripts, |kind, ok| Input::ScriptDone {
                            kind,
                            ok,
                        });
                }
                Action::ClaimVip | Action::ReleaseVip | Action::SetBuckets { .. } => {
                    if let Err(error) = self.perform_datapath(&action) {
                        let text = format!("{action:?} failed: {error:#}");
                        warn!(module = %self.module.name, error = %format!("{error:#}"), "data path action failed");
                        self.write_log("datapath", &text);
                        if !matches!(action, Action::ReleaseVip) {
                            let _ = scripts.send(Input::ResourceDown {
                                resource: DATAPATH.to_owned(),
                            });
                        }
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
        }
        self.publish();
    }

    /// Performs one data path action. rtnetlink is async and the machine's
    /// actions must run in order, so the driver blocks on it here (a few
    /// milliseconds, on a runtime worker that tokio replaces meanwhile).
    fn perform_datapath(&mut self, action: &Action) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Handle::current();
        match action {
            Action::ClaimVip => {
                tokio::task::block_in_place(|| runtime.block_on(self.datapath.claim()))?
            }
            Action::ReleaseVip => {
                tokio::task::block_in_place(|| runtime.block_on(self.datapath.release()))?
            }
            Action::SetBuckets { members } => {
                let peers = &self.peer_reports;
                let alive = |peer: &str| peers.contains_key(peer);
                self.datapath
                    .set_members(members, &alive, &announcements(peers))?;
            }
            _ => return Ok(()),
        }
        self.publish_table();
        Ok(())
    }

    /// Tells the machine that a graceful leave has drained: no bucket this
    /// node handed over still holds one of its connections.
    fn check_drained(&mut self, scripts: &mpsc::UnboundedSender<Input>) {
        if self.machine.awaiting_drain() && !self.datapath.draining() {
            self.write_log(
                "datapath",
                "drained: no connection left in the buckets handed over",
            );
            self.feed(Input::Drained, scripts);
        }
    }

    /// Ends finished handovers (once a second, every `DRAIN_TICK` while a
    /// graceful leave drains, and at every report of a peer while a bucket
    /// waits for its old owner).
    fn settle(&mut self) {
        let was = (self.datapath.draining(), self.datapath.announcement());
        match self.datapath.settle(&announcements(&self.peer_reports)) {
            Ok(0) => {}
            Ok(cut_short) => {
                let text = format!(
                    "drain_timeout reached at power 0: {cut_short} buckets handed over with flows still open"
                );
                warn!(module = %self.module.name, buckets = cut_short, "drain_timeout reached at power 0");
                self.write_log("datapath", &text);
            }
            Err(error) => {
                warn!(module = %self.module.name, error = %format!("{error:#}"), "settling bucket handovers failed");
            }
        }
        if was != (self.datapath.draining(), self.datapath.announcement()) {
            self.publish();
        }
    }

    /// Publishes the live table and the filter's counters to the API.
    fn publish_table(&self) {
        let counters = match self.datapath.counters() {
            Ok(counters) => counters,
            Err(error) => {
                warn!(module = %self.module.name, error = %format!("{error:#}"), "reading the farm counters failed");
                None
            }
        };
        let mut tables = self.tables.write().expect("tables lock");
        match (self.datapath.table(), counters) {
            (Some(table), Some(counters)) => {
                let view = crate::farm::FarmView {
                    table: table.clone(),
                    counters,
                };
                tables.insert(self.module.name.clone(), view);
            }
            _ => {
                tables.remove(&self.module.name);
            }
        }
    }

    fn script_path(&self, kind: fsm::ScriptKind) -> Option<std::path::PathBuf> {
        let scripts = &self.module.scripts;
        match kind {
            fsm::ScriptKind::Prestart => scripts.prestart.clone(),
            fsm::ScriptKind::StartBoth => scripts.start_both.clone(),
            fsm::ScriptKind::StopBoth => scripts.stop_both.clone(),
            fsm::ScriptKind::Poststop => scripts.poststop.clone(),
            fsm::ScriptKind::StartPrim | fsm::ScriptKind::StopPrim => None,
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
                m.exit_code = self.machine.exit_code();
                m.checkers = *self.checkers_on.borrow();
            }
        }
        // A farm has no data generation: these fields carry the table this
        // node applies and when it went live on this node's clock
        // (farm::datapath::FarmDataPath::announcement, sent as its age:
        // cluster::instant), which tell a new owner when the old one handed
        // a bucket over.
        let (table, live_at, instant) = match self.datapath.announcement() {
            Some((table, live_at)) => (table, live_at, FLAG_INSTANT),
            None => (0, 0, 0),
        };
        let draining = if self.datapath.draining() {
            FLAG_DRAINING
        } else {
            0
        };
        let report = ModuleReport {
            name: self.module.name.clone(),
            state: state.code(),
            phase: u8::from(phase == Phase::Transient),
            flags: draining | instant,
            generation: table,
            following: live_at,
        };
        let mut reports = self.reports.lock().expect("reports lock");
        match reports.iter_mut().find(|r| r.name == report.name) {
            Some(slot) => *slot = report,
            None => reports.push(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(flags: u8, following: u64) -> ModuleReport {
        ModuleReport {
            name: "web".to_owned(),
            state: State::Up.code(),
            phase: 0,
            flags,
            generation: 41,
            following,
        }
    }

    #[test]
    fn a_peers_table_instant_is_read_on_the_clock_its_report_says() {
        let reports = HashMap::from([
            (
                "new".to_owned(),
                report(FLAG_INSTANT | FLAG_DRAINING, 7_000),
            ),
            ("old".to_owned(), report(0, 1_790_000_000_000_000_000)),
        ]);
        let seen = announcements(&reports);
        assert_eq!(
            seen["new"],
            PeerAnnouncement {
                fingerprint: 41,
                applied: PeerInstant::Here(7_000),
                draining: true,
            }
        );
        assert_eq!(
            seen["old"],
            PeerAnnouncement {
                fingerprint: 41,
                applied: PeerInstant::Wall(1_790_000_000_000_000_000),
                draining: false,
            },
            "a daemon from before cluster::instant announces wall-clock time"
        );
    }
}
