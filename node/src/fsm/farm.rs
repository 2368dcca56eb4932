//! The farm module's machine: STOP, WAIT, UP.
//!
//! Every UP node runs the application (start_both) and owns its share of the
//! buckets; the bucket table itself is computed elsewhere from the member set
//! that this machine publishes with `SetBuckets`. A node that leaves (stop,
//! a resource down, a restart) first publishes a member set without itself,
//! so that the others take its new flows, then stops the application.
//!
//! # Transitions
//! `step?` marks a step taken only when needed (the VIP is not held, the
//! application is running, …). Every script step waits for its `ScriptDone`;
//! a stop script that fails or times out is run again with `force`, and the
//! transition goes on whatever the forced call returns.
//!
//! | from | on | steps | to |
//! |---|---|---|---|
//! | STOP | `Start` | prestart | WAIT, then on to UP |
//! | WAIT | no resource down | ClaimVip?, start_both, SetBuckets(peers + me) | UP |
//! | UP | `Members(peers)` changes | SetBuckets(peers + me) | UP |
//! | UP | `Weight(w)` changes | SetBuckets(peers + me with w) | UP |
//! | UP | `ResourceDown` | SetBuckets(peers), stop_both, ReleaseVip | WAIT |
//! | WAIT | every resource up again | as WAIT → UP | UP |
//! | UP | `CheckerFailed{Restart}` within maxloop | SetBuckets(peers), stop_both, start_both, SetBuckets(peers + me) | UP |
//! | UP | `CheckerFailed{StopStart}` within maxloop | as `Stop`, then as `Start` | UP |
//! | UP | `CheckerFailed{Restart or StopStart}` beyond maxloop | log MaxloopReached, as `Stop` | STOP |
//! | any | `CheckerFailed{Stop}` | as `Stop` | STOP |
//! | UP | `Stop` | SetBuckets(peers), drain, stop_both, ReleaseVip, poststop | STOP |
//! | any other | `Stop` | SetBuckets(peers)?, stop_both?, ReleaseVip?, poststop | STOP |
//! | any | `Restart` | as `Stop`, then as `Start` | UP |
//! | any | prestart or start_both fails | log StartFailed, as `Stop` | STOP |
//!
//! # Graceful leave
//! `drain` is the step of a leave that an administrator asked for (`Stop`
//! or `Restart` while the node is a member of the bucket table): once the
//! table without this node is published, the node's buckets are
//! `Draining` in its data path, so it still serves the connections it has
//! while its peers take every new one. The machine waits for `Drained`
//! (the driver sees no `Draining` bucket left: every such connection
//! ended) or for `drain_timeout`, whichever comes first, then stops the
//! application and releases the VIP. Meanwhile the state stays **UP
//! Transient**: the node still serves, but is not a member (`is_serving`
//! is false, ready.txt answers 503, peers drop it from their table); the
//! state becomes STOP Transient when the drain ends. A checker stop, a
//! failed script, a resource down or a checker restart leave at once:
//! they do not drain, and one of them arriving during a drain ends it.
//! A `Start` during the drain cancels the leave: the node publishes the
//! table with itself again and is UP Ready.
//!
//! A transition that must change course (a `Stop` while start_both runs) lets
//! the running script end, drops the remaining steps, and plans again from
//! what is really held (VIP, application, membership). Phase is Transient
//! while steps are in flight and Ready when the state is reached.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use super::{
    CheckerAction, Command, Event, Instant, NodeName, Phase, RestartBudget, RestartPolicy,
    RunningScript, ScriptCall, ScriptEnd, ScriptKind, ScriptRun, ScriptTimeouts, State, WaitReason,
};

/// Members of the farm and their weights (`power`; 0 means no traffic).
pub type Members = BTreeMap<NodeName, u32>;

/// The farm machine's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FarmConfig {
    /// This node's name.
    pub node: NodeName,
    /// This node's weight in the bucket table.
    pub weight: u32,
    /// Script timeouts.
    pub scripts: ScriptTimeouts,
    /// The maxloop policy of checker restarts.
    pub restart: RestartPolicy,
    /// The longest a graceful leave keeps serving established connections.
    pub drain_timeout: Duration,
}

/// What happens to a farm module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An administrator command (prim, second and swap are refused).
    Command(Command),
    /// The live peers whose farm module is UP Ready, with their weights (this node is ignored if present).
    Members(Members),
    /// This node's weight changed (a reload of its `power`); it counts
    /// from now on, in this node's table and in what it announces.
    Weight(u32),
    /// A checker detected a failure.
    CheckerFailed {
        /// What the checker asks for.
        action: CheckerAction,
    },
    /// A resource that the node needs is down (interface, ping or custom checker): leave the farm.
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
    /// The data path has no `Draining` bucket left: the connections this
    /// node served in the buckets it handed over have ended. Sent while
    /// [`Farm::awaiting_drain`].
    Drained,
    /// The deadline from `next_deadline` passed.
    Timer,
}

/// What the driver must do for a farm module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run a module script and answer `ScriptDone`.
    RunScript(ScriptRun),
    /// Bind the VIP and attach the farm's packet filter.
    ClaimVip,
    /// Unbind the VIP and detach the filter.
    ReleaseVip,
    /// The member set from which to compute this node's bucket table.
    SetBuckets {
        /// Members and weights; this node is absent when it must accept no new flow.
        members: Members,
    },
    /// Log an event.
    Log(Event),
}

/// Where the module should be, given what is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Goal {
    Stop,
    Prestart,
    Wait(WaitReason),
    Up,
}

impl Goal {
    fn state(&self) -> State {
        match self {
            Goal::Stop => State::Stop,
            Goal::Prestart | Goal::Wait(_) => State::Wait,
            Goal::Up => State::Up,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Act(Action),
    Script(ScriptCall),
    /// SetBuckets with (true) or without (false) this node.
    Publish(bool),
    /// Wait for `Drained` or `drain_timeout`.
    Drain,
    Prestarted,
    Stopped,
}

#[derive(Debug)]
struct Plan {
    from: State,
    goal: State,
    steps: VecDeque<Step>,
    running: Option<RunningScript>,
    abort: bool,
    /// While the `Drain` step waits: until when.
    drain_until: Option<Instant>,
}

/// The farm module's state machine on this node.
#[derive(Debug)]
pub struct Farm {
    cfg: FarmConfig,
    state: State,
    phase: Phase,
    reported: (State, Phase),
    enabled: bool,
    prestarted: bool,
    restart_after_stop: bool,
    resources_down: BTreeSet<String>,
    peers: Members,
    published: Option<Members>,
    member: bool,
    app: bool,
    vip: bool,
    plan: Option<Plan>,
    budget: RestartBudget,
    wait_logged: Option<WaitReason>,
    /// The leave under way was asked for by an administrator: it drains.
    graceful: bool,
    /// The time of the input being handled.
    now: Instant,
}

impl Farm {
    /// A stopped farm module.
    pub fn new(cfg: FarmConfig) -> Self {
        let budget = RestartBudget::new(cfg.restart);
        Farm {
            cfg,
            state: State::Stop,
            phase: Phase::Ready,
            reported: (State::Stop, Phase::Ready),
            enabled: false,
            prestarted: false,
            restart_after_stop: false,
            resources_down: BTreeSet::new(),
            peers: Members::new(),
            published: None,
            member: false,
            app: false,
            vip: false,
            plan: None,
            budget,
            wait_logged: None,
            graceful: false,
            now: Instant::START,
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

    /// Whether this node serves the module: UP and Ready (ready.txt answers 200).
    pub fn is_serving(&self) -> bool {
        self.state == State::Up && self.phase == Phase::Ready
    }

    /// Exit code of `halo state -q`.
    pub fn exit_code(&self) -> u8 {
        self.state.exit_code()
    }

    /// Whether a graceful leave waits for `Input::Drained`.
    pub fn awaiting_drain(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.drain_until.is_some())
    }

    /// When the driver must call `handle(_, Input::Timer)`: the end of a
    /// drain's timeout, if one runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.plan.as_ref().and_then(|p| p.drain_until)
    }

    /// Feeds one input at `now`; returns the actions to perform, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        self.now = now;
        self.apply(now, input, &mut out);
        self.end_drain(now);
        let goal = self.goal();
        if let Some(plan) = &mut self.plan {
            if plan.goal != goal.state() {
                plan.abort = true;
            }
        }
        self.run(&mut out);
        self.log_wait(&mut out);
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

    fn apply(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Command(command) => self.command(command, out),
            Input::Members(mut members) => {
                members.remove(&self.cfg.node);
                self.peers = members;
                if self.member {
                    self.publish(true, out);
                }
            }
            Input::Weight(weight) => {
                self.cfg.weight = weight;
                if self.member {
                    self.publish(true, out);
                }
            }
            Input::CheckerFailed { action } => self.checker_failed(now, action, out),
            Input::ResourceDown { resource } => {
                self.resources_down.insert(resource);
            }
            Input::ResourceUp { resource } => {
                self.resources_down.remove(&resource);
            }
            Input::ScriptDone { kind, ok } => self.script_done(kind, ok, out),
            Input::Drained => {
                if let Some(plan) = &mut self.plan {
                    if plan.drain_until.take().is_some() {
                        self.state = plan.goal;
                    }
                }
            }
            Input::Timer => {}
        }
    }

    /// Ends a drain whose deadline passed, or that is no longer graceful
    /// (a crash path came in meanwhile).
    fn end_drain(&mut self, now: Instant) {
        let graceful = self.graceful;
        if let Some(plan) = &mut self.plan {
            if plan
                .drain_until
                .is_some_and(|until| now >= until || !graceful)
            {
                plan.drain_until = None;
                self.state = plan.goal;
            }
        }
    }

    fn command(&mut self, command: Command, out: &mut Vec<Action>) {
        match command {
            Command::Start => {
                if !self.enabled {
                    self.enabled = true;
                    self.budget.reset();
                }
                self.restart_after_stop = false;
                self.graceful = false;
            }
            Command::Stop => {
                self.graceful |= self.enabled;
                self.enabled = false;
                self.restart_after_stop = false;
            }
            Command::Restart => {
                self.graceful |= self.enabled;
                self.restart_after_stop = self.enabled;
                self.enabled = !self.enabled;
            }
            Command::Prim | Command::Second | Command::Swap => {
                out.push(Action::Log(Event::CommandRejected {
                    command,
                    reason: "a farm module has no primary",
                }));
            }
        }
    }

    fn checker_failed(&mut self, now: Instant, action: CheckerAction, out: &mut Vec<Action>) {
        if action == CheckerAction::Stop {
            self.graceful = false;
            out.push(Action::Log(Event::CheckerStop));
            self.enabled = false;
            self.restart_after_stop = false;
            return;
        }
        // Checkers watch the running application; a failure reported while it
        // is not up, or while a transition is already under way, is stale.
        if !self.enabled || self.state != State::Up || !self.app || self.plan.is_some() {
            return;
        }
        match self.budget.try_restart(now) {
            Some(count) => {
                self.graceful = false;
                out.push(Action::Log(Event::CheckerRestart { action, count }));
                if action == CheckerAction::Restart {
                    self.begin(
                        State::Up,
                        vec![
                            Step::Publish(false),
                            Step::Script(ScriptCall::Stop(ScriptKind::StopBoth)),
                            Step::Script(ScriptCall::Start(ScriptKind::StartBoth)),
                            Step::Publish(true),
                        ],
                    );
                } else {
                    self.enabled = false;
                    self.restart_after_stop = true;
                }
            }
            None => {
                self.graceful = false;
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
        let Some(running) = &mut plan.running else {
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
                if kind == ScriptKind::StopBoth {
                    self.app = false;
                }
                plan.running = None;
            }
            ScriptEnd::Force => {
                out.push(Action::RunScript(running.run(&self.cfg.scripts)));
            }
            ScriptEnd::Failed => {
                plan.running = None;
                plan.abort = true;
                self.enabled = false;
                self.restart_after_stop = false;
                self.graceful = false;
            }
        }
    }

    fn goal(&self) -> Goal {
        if !self.enabled {
            Goal::Stop
        } else if !self.prestarted {
            Goal::Prestart
        } else if let Some(resource) = self.resources_down.first() {
            Goal::Wait(WaitReason::ResourceDown(resource.clone()))
        } else {
            Goal::Up
        }
    }

    fn steps_to(&self, goal: &Goal) -> Vec<Step> {
        let mut steps = Vec::new();
        let leave = |steps: &mut Vec<Step>, drain: bool| {
            if self.member {
                steps.push(Step::Publish(false));
                if drain && self.graceful && !self.cfg.drain_timeout.is_zero() {
                    steps.push(Step::Drain);
                }
            }
            if self.app {
                steps.push(Step::Script(ScriptCall::Stop(ScriptKind::StopBoth)));
            }
            if self.vip {
                steps.push(Step::Act(Action::ReleaseVip));
            }
        };
        match goal {
            Goal::Stop => {
                leave(&mut steps, true);
                if self.prestarted {
                    steps.push(Step::Script(ScriptCall::Hook(ScriptKind::Poststop)));
                    steps.push(Step::Stopped);
                }
            }
            Goal::Prestart => {
                // Marked first so that a failed prestart is still followed by poststop.
                steps.push(Step::Prestarted);
                steps.push(Step::Script(ScriptCall::Start(ScriptKind::Prestart)));
            }
            Goal::Wait(_) => leave(&mut steps, false),
            Goal::Up => {
                if !self.vip {
                    steps.push(Step::Act(Action::ClaimVip));
                }
                if !self.app {
                    steps.push(Step::Script(ScriptCall::Start(ScriptKind::StartBoth)));
                }
                if !self.member {
                    steps.push(Step::Publish(true));
                }
            }
        }
        steps
    }

    fn begin(&mut self, goal: State, steps: Vec<Step>) {
        self.plan = Some(Plan {
            from: self.state,
            goal,
            steps: steps.into(),
            running: None,
            abort: false,
            drain_until: None,
        });
        // A draining node still serves its connections: it stays UP until
        // the drain ends (`Input::Drained`, `end_drain`).
        if !self
            .plan
            .as_ref()
            .is_some_and(|p| p.steps.contains(&Step::Drain))
        {
            self.state = goal;
        }
        self.phase = Phase::Transient;
    }

    /// Runs plans until one waits for a script or the goal is reached.
    fn run(&mut self, out: &mut Vec<Action>) {
        // Each pass either waits, or reaches a state; a few passes suffice
        // (stop → start for a restart), the bound only guards against a bug.
        for _ in 0..8 {
            if self.plan.is_some() {
                self.advance(out);
                if self.plan.is_some() {
                    return;
                }
            }
            let goal = self.goal();
            let steps = self.steps_to(&goal);
            if steps.is_empty() && goal.state() == self.state {
                self.phase = Phase::Ready;
                if goal == Goal::Stop && self.restart_after_stop {
                    self.restart_after_stop = false;
                    self.graceful = false;
                    self.enabled = true;
                    continue;
                }
                return;
            }
            self.begin(goal.state(), steps);
        }
        debug_assert!(false, "farm machine did not settle");
    }

    fn advance(&mut self, out: &mut Vec<Action>) {
        loop {
            let Some(plan) = &mut self.plan else { return };
            if plan.running.is_some() {
                return;
            }
            if plan.abort {
                self.plan = None;
                return;
            }
            if plan.drain_until.is_some() {
                return;
            }
            let Some(step) = plan.steps.pop_front() else {
                self.plan = None;
                return;
            };
            match step {
                Step::Act(action) => {
                    match action {
                        Action::ClaimVip => self.vip = true,
                        Action::ReleaseVip => self.vip = false,
                        _ => {}
                    }
                    out.push(action);
                }
                Step::Script(call) => {
                    let running = RunningScript::new(call, plan.from, plan.goal);
                    out.push(Action::RunScript(running.run(&self.cfg.scripts)));
                    plan.running = Some(running);
                    if call == ScriptCall::Start(ScriptKind::StartBoth) {
                        self.app = true;
                    }
                }
                Step::Publish(with_me) => self.publish(with_me, out),
                Step::Drain => plan.drain_until = Some(self.now + self.cfg.drain_timeout),
                Step::Prestarted => self.prestarted = true,
                Step::Stopped => self.prestarted = false,
            }
        }
    }

    fn publish(&mut self, with_me: bool, out: &mut Vec<Action>) {
        let mut members = self.peers.clone();
        if with_me {
            members.insert(self.cfg.node.clone(), self.cfg.weight);
        }
        self.member = with_me;
        if self.published.as_ref() != Some(&members) {
            self.published = Some(members.clone());
            out.push(Action::SetBuckets { members });
        }
    }

    fn log_wait(&mut self, out: &mut Vec<Action>) {
        let reason = match self.goal() {
            Goal::Wait(reason) => Some(reason),
            _ => None,
        };
        if reason != self.wait_logged {
            if let Some(reason) = &reason {
                out.push(Action::Log(Event::Waiting(reason.clone())));
            }
            self.wait_logged = reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> FarmConfig {
        FarmConfig {
            node: "n1".into(),
            weight: 2,
            scripts: ScriptTimeouts::default(),
            restart: RestartPolicy {
                maxloop: 2,
                loop_interval: Duration::from_secs(3600),
            },
            drain_timeout: Duration::from_secs(30),
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_start(Duration::from_millis(ms))
    }

    fn members(list: &[(&str, u32)]) -> Members {
        list.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    /// Feeds `input`, then answers every script with `ok` until none is pending;
    /// returns every action emitted.
    fn drive(
        farm: &mut Farm,
        now: Instant,
        input: Input,
        ok: impl Fn(&ScriptRun) -> bool,
    ) -> Vec<Action> {
        let mut all = Vec::new();
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let actions = farm.handle(now, input);
            for action in &actions {
                if let Action::RunScript(run) = action {
                    pending.push(Input::ScriptDone {
                        kind: run.kind,
                        ok: ok(run),
                    });
                }
            }
            all.extend(actions);
        }
        all
    }

    fn scripts(actions: &[Action]) -> Vec<(ScriptKind, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RunScript(run) => Some((run.kind, run.force)),
                _ => None,
            })
            .collect()
    }

    fn buckets(actions: &[Action]) -> Vec<Members> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetBuckets { members } => Some(members.clone()),
                _ => None,
            })
            .collect()
    }

    fn up(farm: &mut Farm) -> Vec<Action> {
        drive(farm, t(0), Input::Members(members(&[("n2", 1)])), |_| true);
        drive(farm, t(0), Input::Command(Command::Start), |_| true)
    }

    #[test]
    fn start_runs_prestart_then_start_both_then_joins_the_buckets() {
        let mut farm = Farm::new(config());
        let actions = up(&mut farm);
        let ran = scripts(&actions);
        assert_eq!(
            ran,
            vec![
                (ScriptKind::Prestart, false),
                (ScriptKind::StartBoth, false)
            ],
            "expected prestart then start_both, saw {ran:?}"
        );
        let claim = actions.iter().position(|a| *a == Action::ClaimVip);
        let start = actions
            .iter()
            .position(|a| matches!(a, Action::RunScript(r) if r.kind == ScriptKind::StartBoth));
        assert!(
            claim < start,
            "expected the VIP claimed before start_both, saw {actions:?}"
        );
        let sets = buckets(&actions);
        assert_eq!(
            sets,
            vec![members(&[("n1", 2), ("n2", 1)])],
            "expected one bucket set with this node and its peer, saw {sets:?}"
        );
        assert!(
            farm.state() == State::Up && farm.is_serving() && farm.exit_code() == 2,
            "expected UP ready (exit 2), saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    #[test]
    fn not_serving_while_start_both_runs() {
        let mut farm = Farm::new(config());
        farm.handle(t(0), Input::Command(Command::Start));
        farm.handle(
            t(1),
            Input::ScriptDone {
                kind: ScriptKind::Prestart,
                ok: true,
            },
        );
        assert!(
            farm.state() == State::Up && farm.phase() == Phase::Transient && !farm.is_serving(),
            "expected UP transient and not serving while start_both runs, saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    #[test]
    fn membership_changes_reach_the_buckets_only_while_up() {
        let mut farm = Farm::new(config());
        let before = drive(
            &mut farm,
            t(0),
            Input::Members(members(&[("n2", 1)])),
            |_| true,
        );
        assert!(
            buckets(&before).is_empty(),
            "expected no bucket set while STOP, saw {before:?}"
        );
        up(&mut farm);
        let actions = drive(
            &mut farm,
            t(5),
            Input::Members(members(&[("n2", 1), ("n3", 4)])),
            |_| true,
        );
        let sets = buckets(&actions);
        assert_eq!(
            sets,
            vec![members(&[("n1", 2), ("n2", 1), ("n3", 4)])],
            "expected the new member set with this node, saw {sets:?}"
        );
        let same = drive(
            &mut farm,
            t(6),
            Input::Members(members(&[("n2", 1), ("n3", 4)])),
            |_| true,
        );
        assert!(
            buckets(&same).is_empty(),
            "expected no repeat of an unchanged set, saw {same:?}"
        );
    }

    #[test]
    fn a_weight_change_reaches_the_buckets_while_up_and_counts_at_the_next_join() {
        let mut farm = Farm::new(config());
        let weight = drive(&mut farm, t(0), Input::Weight(5), |_| true);
        assert_eq!(buckets(&weight), Vec::<Members>::new(), "not a member yet");
        let start = up(&mut farm);
        assert_eq!(
            buckets(&start).last(),
            Some(&members(&[("n1", 5), ("n2", 1)])),
            "joins with the weight it was given while stopped"
        );
        let zero = drive(&mut farm, t(10_000), Input::Weight(0), |_| true);
        assert_eq!(
            buckets(&zero),
            vec![members(&[("n1", 0), ("n2", 1)])],
            "power 0 stays a member, owning nothing"
        );
        assert!(farm.is_serving(), "a node of power 0 stays UP");
        let same = drive(&mut farm, t(11_000), Input::Weight(0), |_| true);
        assert_eq!(buckets(&same), Vec::<Members>::new());
    }

    #[test]
    fn resource_down_leaves_the_farm_and_rejoins_when_up() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        let down = drive(
            &mut farm,
            t(10),
            Input::ResourceDown {
                resource: "eth0".into(),
            },
            |_| true,
        );
        let sets = buckets(&down);
        assert_eq!(
            sets,
            vec![members(&[("n2", 1)])],
            "expected the bucket set without this node first, saw {sets:?}"
        );
        let publish = down
            .iter()
            .position(|a| matches!(a, Action::SetBuckets { .. }));
        let stop = down
            .iter()
            .position(|a| matches!(a, Action::RunScript(r) if r.kind == ScriptKind::StopBoth));
        assert!(
            publish < stop,
            "expected leaving the buckets before stop_both, saw {down:?}"
        );
        assert!(
            down.contains(&Action::ReleaseVip),
            "expected the VIP released, saw {down:?}"
        );
        assert!(
            down.contains(&Action::Log(Event::Waiting(WaitReason::ResourceDown(
                "eth0".into()
            )))),
            "expected the reason logged, saw {down:?}"
        );
        assert!(
            farm.state() == State::Wait && farm.phase() == Phase::Ready && farm.exit_code() == 1,
            "expected WAIT ready, saw {} {}",
            farm.state(),
            farm.phase()
        );
        let quiet = drive(
            &mut farm,
            t(11),
            Input::Members(members(&[("n3", 1)])),
            |_| true,
        );
        assert!(
            buckets(&quiet).is_empty(),
            "expected no bucket set while WAIT, saw {quiet:?}"
        );
        let back = drive(
            &mut farm,
            t(20),
            Input::ResourceUp {
                resource: "eth0".into(),
            },
            |_| true,
        );
        assert_eq!(scripts(&back), vec![(ScriptKind::StartBoth, false)]);
        assert_eq!(buckets(&back), vec![members(&[("n1", 2), ("n3", 1)])]);
        assert!(
            farm.is_serving(),
            "expected UP ready again, saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetBuckets { .. } => Some("buckets"),
                Action::RunScript(r) => Some(r.kind.file_name()),
                Action::ReleaseVip => Some("release"),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_stop_drains_until_drained_then_stops() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        let leave = drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        assert_eq!(
            buckets(&leave),
            vec![members(&[("n2", 1)])],
            "expected the table without this node, saw {leave:?}"
        );
        assert_eq!(
            kinds(&leave),
            vec!["buckets"],
            "expected nothing stopped while draining, saw {leave:?}"
        );
        assert!(
            farm.state() == State::Up
                && farm.phase() == Phase::Transient
                && !farm.is_serving()
                && farm.awaiting_drain(),
            "expected UP transient, not serving, draining; saw {} {}",
            farm.state(),
            farm.phase()
        );
        assert_eq!(farm.next_deadline(), Some(t(10) + Duration::from_secs(30)));
        let members_meanwhile = drive(
            &mut farm,
            t(500),
            Input::Members(members(&[("n2", 1), ("n3", 1)])),
            |_| true,
        );
        assert!(
            buckets(&members_meanwhile).is_empty() && farm.awaiting_drain(),
            "expected no rejoin while draining, saw {members_meanwhile:?}"
        );
        let early = drive(&mut farm, t(1000), Input::Timer, |_| true);
        assert!(
            kinds(&early).is_empty() && farm.awaiting_drain(),
            "expected a timer before the deadline to change nothing, saw {early:?}"
        );
        let drained = drive(&mut farm, t(2000), Input::Drained, |_| true);
        assert_eq!(
            kinds(&drained),
            vec!["stop_both", "release", "poststop"],
            "expected the stop once drained, saw {drained:?}"
        );
        assert!(
            farm.state() == State::Stop && farm.phase() == Phase::Ready,
            "expected STOP ready, saw {} {}",
            farm.state(),
            farm.phase()
        );
        assert_eq!(farm.next_deadline(), None);
    }

    #[test]
    fn a_drain_ends_at_its_timeout_without_drained() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        let deadline = farm.next_deadline().expect("a drain deadline");
        assert_eq!(deadline, t(30_010));
        let before = drive(&mut farm, t(30_009), Input::Timer, |_| true);
        assert!(
            kinds(&before).is_empty() && farm.state() == State::Up,
            "expected the drain to go on before its deadline, saw {before:?}"
        );
        let at = drive(&mut farm, deadline, Input::Timer, |_| true);
        assert_eq!(
            kinds(&at),
            vec!["stop_both", "release", "poststop"],
            "expected the stop at the deadline, saw {at:?}"
        );
        assert_eq!(farm.state(), State::Stop);
        let late = drive(&mut farm, t(40_000), Input::Drained, |_| true);
        assert!(
            kinds(&late).is_empty(),
            "expected a late Drained to be ignored, saw {late:?}"
        );
    }

    #[test]
    fn crash_paths_do_not_drain() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        let stop = drive(
            &mut farm,
            t(10),
            Input::CheckerFailed {
                action: CheckerAction::Stop,
            },
            |_| true,
        );
        assert_eq!(
            kinds(&stop),
            vec!["buckets", "stop_both", "release", "poststop"],
            "expected a checker stop to leave at once, saw {stop:?}"
        );
        assert!(!farm.awaiting_drain());

        let mut farm = Farm::new(config());
        up(&mut farm);
        drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        assert!(farm.awaiting_drain());
        let during = drive(
            &mut farm,
            t(20),
            Input::CheckerFailed {
                action: CheckerAction::Stop,
            },
            |_| true,
        );
        assert_eq!(
            kinds(&during),
            vec!["stop_both", "release", "poststop"],
            "expected a checker stop to end the drain, saw {during:?}"
        );
        assert_eq!(farm.state(), State::Stop);
    }

    #[test]
    fn a_start_during_the_drain_cancels_the_leave() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        let back = drive(&mut farm, t(20), Input::Command(Command::Start), |_| true);
        assert_eq!(
            kinds(&back),
            vec!["buckets"],
            "expected a rejoin and nothing else, saw {back:?}"
        );
        assert_eq!(buckets(&back), vec![members(&[("n1", 2), ("n2", 1)])]);
        assert!(
            farm.is_serving() && !farm.awaiting_drain(),
            "expected UP ready, saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    #[test]
    fn stop_leaves_buckets_stops_app_releases_vip_then_poststop() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        let mut actions = drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        actions.extend(drive(&mut farm, t(11), Input::Drained, |_| true));
        let kinds: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::SetBuckets { .. } => Some("buckets"),
                Action::RunScript(r) => Some(r.kind.file_name()),
                Action::ReleaseVip => Some("release"),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["buckets", "stop_both", "release", "poststop"],
            "expected the stop order, saw {kinds:?}"
        );
        assert!(
            farm.state() == State::Stop && farm.phase() == Phase::Ready && farm.exit_code() == 0,
            "expected STOP ready, saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    #[test]
    fn stop_both_is_forced_when_the_graceful_call_fails() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        drive(&mut farm, t(10), Input::Command(Command::Stop), |_| true);
        let actions = drive(&mut farm, t(11), Input::Drained, |run| {
            run.kind != ScriptKind::StopBoth || run.force
        });
        let ran = scripts(&actions);
        assert_eq!(
            ran,
            vec![
                (ScriptKind::StopBoth, false),
                (ScriptKind::StopBoth, true),
                (ScriptKind::Poststop, false)
            ],
            "expected stop_both, stop_both force, poststop, saw {ran:?}"
        );
        assert_eq!(farm.state(), State::Stop);
    }

    #[test]
    fn stop_during_start_both_waits_for_it_then_stops() {
        let mut farm = Farm::new(config());
        farm.handle(t(0), Input::Command(Command::Start));
        farm.handle(
            t(1),
            Input::ScriptDone {
                kind: ScriptKind::Prestart,
                ok: true,
            },
        );
        let during = farm.handle(t(2), Input::Command(Command::Stop));
        assert!(
            scripts(&during).is_empty(),
            "expected nothing run while start_both runs, saw {during:?}"
        );
        let after = drive(
            &mut farm,
            t(3),
            Input::ScriptDone {
                kind: ScriptKind::StartBoth,
                ok: true,
            },
            |_| true,
        );
        let ran = scripts(&after);
        assert_eq!(
            ran,
            vec![(ScriptKind::StopBoth, false), (ScriptKind::Poststop, false)],
            "expected stop_both then poststop once start_both ended, saw {ran:?}"
        );
        assert!(
            buckets(&after).is_empty(),
            "expected no join of the buckets, saw {after:?}"
        );
        assert_eq!(farm.state(), State::Stop);
    }

    #[test]
    fn failed_start_both_stops_the_module() {
        let mut farm = Farm::new(config());
        let actions = drive(&mut farm, t(0), Input::Command(Command::Start), |run| {
            run.kind != ScriptKind::StartBoth
        });
        assert!(
            actions.contains(&Action::Log(Event::StartFailed(ScriptKind::StartBoth))),
            "expected StartFailed logged, saw {actions:?}"
        );
        let ran = scripts(&actions);
        assert_eq!(
            ran,
            vec![
                (ScriptKind::Prestart, false),
                (ScriptKind::StartBoth, false),
                (ScriptKind::StopBoth, false),
                (ScriptKind::Poststop, false)
            ],
            "expected the partial start to be cleaned up, saw {ran:?}"
        );
        assert_eq!(
            farm.state(),
            State::Stop,
            "expected STOP, saw {}",
            farm.state()
        );
    }

    #[test]
    fn checker_restart_cycles_the_app_then_stops_beyond_maxloop() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        for i in 0..2u64 {
            let actions = drive(
                &mut farm,
                t(100 + i),
                Input::CheckerFailed {
                    action: CheckerAction::Restart,
                },
                |_| true,
            );
            let ran = scripts(&actions);
            assert_eq!(
                ran,
                vec![
                    (ScriptKind::StopBoth, false),
                    (ScriptKind::StartBoth, false)
                ],
                "expected restart {} to cycle the app, saw {ran:?}",
                i + 1
            );
            assert!(farm.is_serving(), "expected UP after restart {}", i + 1);
        }
        let third = drive(
            &mut farm,
            t(200),
            Input::CheckerFailed {
                action: CheckerAction::Restart,
            },
            |_| true,
        );
        assert!(
            third.contains(&Action::Log(Event::MaxloopReached { maxloop: 2 })),
            "expected MaxloopReached on the 3rd failure, saw {third:?}"
        );
        assert_eq!(
            farm.state(),
            State::Stop,
            "expected STOP, saw {}",
            farm.state()
        );
    }

    #[test]
    fn restart_command_goes_through_stop_and_start() {
        let mut farm = Farm::new(config());
        up(&mut farm);
        let mut actions = drive(&mut farm, t(10), Input::Command(Command::Restart), |_| true);
        assert!(
            farm.awaiting_drain() && farm.state() == State::Up && !farm.is_serving(),
            "expected a restart to drain first"
        );
        actions.extend(drive(&mut farm, t(11), Input::Drained, |_| true));
        let ran = scripts(&actions);
        assert_eq!(
            ran,
            vec![
                (ScriptKind::StopBoth, false),
                (ScriptKind::Poststop, false),
                (ScriptKind::Prestart, false),
                (ScriptKind::StartBoth, false)
            ],
            "expected a full stop then start, saw {ran:?}"
        );
        assert!(
            farm.is_serving(),
            "expected UP ready, saw {} {}",
            farm.state(),
            farm.phase()
        );
    }

    #[test]
    fn mirror_commands_are_rejected() {
        let mut farm = Farm::new(config());
        let actions = farm.handle(t(0), Input::Command(Command::Swap));
        assert!(
            matches!(
                actions.as_slice(),
                [Action::Log(Event::CommandRejected {
                    command: Command::Swap,
                    ..
                })]
            ),
            "expected swap rejected, saw {actions:?}"
        );
    }
}
