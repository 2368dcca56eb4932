//! Pure state machines of the farm and mirror modules (sans-IO).
//!
//! One machine per module on this node: [`farm::Farm`] (STOP, WAIT, UP) and
//! [`mirror::Mirror`] (STOP, WAIT, ALONE, PRIM, SECOND), each state Ready or
//! Transient, with SafeKit's semantics (reference/safekit-spec.md §2–§5,
//! SPEC §7–§8). The transition tables are in the docs of [`farm`] and
//! [`mirror`].
//!
//! # Shape
//! Like quinn-proto or openraft's `Engine`, a machine is driven by two calls:
//! `handle(now, input) -> Vec<Action>` and `next_deadline() -> Option<Instant>`.
//! Inputs are commands, heartbeat reports, script and replication results and
//! the passing of time; actions are what the daemon must do (run a script,
//! claim or release the VIP, set the bucket table, start or stop replication,
//! ask the witness, persist the data stamp, log an event). The machine never
//! does I/O and never reads a clock.
//!
//! # Contract with the driver
//! - Actions are executed **in the order given**. A `PersistStamp` is durable
//!   (written and fsynced) before the next action runs: the stamp is what
//!   keeps a stale node from serving after a crash.
//! - Every `RunScript` is answered by exactly one `ScriptDone` of the same
//!   kind. The driver enforces the action's `timeout` (killing the script and
//!   answering `ok: false`), and answers `ok: true` at once for a script that
//!   is not configured. The machine runs at most one script at a time.
//! - When `next_deadline()` returns `Some(t)`, the driver calls
//!   `handle(t, Input::Timer)` at `t` (or any input at or after `t`). Every
//!   call re-reads the deadline.
//! - The driver runs the `transition` script, logs and counts metrics on
//!   `Log(Event::StateChanged{..})`; the machine does not wait for it.
//! - Mirror heartbeats: every heartbeat from the peer is fed as
//!   `PeerReport` (the peer's [`mirror::Mirror::report`]); `PeerLost` comes
//!   when no heartbeat arrived on any network for the timeout, including
//!   within the timeout of the daemon's start. The machine never guesses
//!   liveness itself.
//! - Arbiter lease client: after `AcquireLease` it answers `LeaseGranted`,
//!   `LeaseStale` or `LeaseLost` within its request timeout, then keeps the
//!   lease renewed (one `LeaseGranted` per renewal) until `ReleaseLease`; a
//!   new `AcquireLease` replaces the claim (generation, forced) of the
//!   requests at once. `until` is the local expiry minus a safety margin;
//!   the arbiter must not grant the lease to the other node before the
//!   expiry plus the stop budget plus clock drift, nor to a claim of a lower
//!   generation than it granted to unless forced.
//! - Held writers: after every input the driver applies
//!   [`mirror::Mirror::may_release_unacknowledged`] to the writers no
//!   secondary can acknowledge any more (docs/mirror-durability.md).
//!
//! # Time
//! [`Instant`] is a `Duration` since an epoch that the driver picks (its own
//! start, from `tokio::time::Instant`). `std::time::Instant` cannot be built
//! at a chosen value, so tests could not script a virtual clock with it, and
//! `tokio::time::Instant` would tie a pure module to tokio and to a paused
//! runtime. A `Duration` since an epoch is `Copy`, totally ordered, prints as
//! a readable time in test failures ("t=1.500s"), and the driver maps it with
//! one addition both ways.

pub mod farm;
pub mod mirror;
pub mod restart;
#[cfg(test)]
mod sim;

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use restart::{RestartBudget, RestartPolicy};

/// Name of a node of the cluster, as written in the configuration.
pub type NodeName = String;

/// A point on the machines' clock: the time elapsed since the driver's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The driver's epoch.
    pub const START: Instant = Instant(Duration::ZERO);

    /// The instant `elapsed` after the epoch.
    pub const fn from_start(elapsed: Duration) -> Self {
        Instant(elapsed)
    }

    /// Time elapsed between the epoch and this instant.
    pub const fn since_start(self) -> Duration {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:.3}s", self.0.as_secs_f64())
    }
}

/// State of a module on this node (SafeKit's names; farm uses STOP, WAIT, UP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// The module is stopped: no application, no VIP.
    Stop,
    /// Started but not serving: waiting for a peer, a resource, the witness or an administrator.
    Wait,
    /// Mirror primary without a secondary in sync: the application runs and changes are journaled.
    Alone,
    /// Mirror primary with a secondary: the application runs and changes are replicated.
    Prim,
    /// Mirror secondary: receives the primary's changes; its directories are read-only.
    Second,
    /// Farm member: the application runs and this node owns its share of the buckets.
    Up,
}

impl State {
    /// Exit code of `halo state -q`: STOP 0, WAIT 1, ALONE or UP 2, PRIM 3, SECOND 4.
    pub const fn exit_code(self) -> u8 {
        match self {
            State::Stop => 0,
            State::Wait => 1,
            State::Alone | State::Up => 2,
            State::Prim => 3,
            State::Second => 4,
        }
    }

    /// The state's code in heartbeat frames (`cluster::frame::ModuleReport`).
    pub const fn code(self) -> u8 {
        match self {
            State::Stop => 0,
            State::Wait => 1,
            State::Alone => 2,
            State::Prim => 3,
            State::Second => 4,
            State::Up => 5,
        }
    }

    /// The state of a heartbeat code, if it is one.
    pub const fn from_code(code: u8) -> Option<State> {
        Some(match code {
            0 => State::Stop,
            1 => State::Wait,
            2 => State::Alone,
            3 => State::Prim,
            4 => State::Second,
            5 => State::Up,
            _ => return None,
        })
    }

    /// The upper-case name used by the CLI, the scripts' arguments and the console.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Stop => "STOP",
            State::Wait => "WAIT",
            State::Alone => "ALONE",
            State::Prim => "PRIM",
            State::Second => "SECOND",
            State::Up => "UP",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a state is settled (green) or work towards it is still in flight (orange).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Settled: every script of the state has completed.
    Ready,
    /// Scripts, a resynchronisation or a question to the witness are in flight.
    Transient,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Ready => "ready",
            Phase::Transient => "transient",
        })
    }
}

/// The module scripts that the machines run (SPEC §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    /// Before anything else when the module starts.
    Prestart,
    /// Farm: start the application (every UP node).
    StartBoth,
    /// Farm: stop the application.
    StopBoth,
    /// Mirror: start the application on the primary.
    StartPrim,
    /// Mirror: stop the application on the primary.
    StopPrim,
    /// Last, when the module has stopped.
    Poststop,
}

impl ScriptKind {
    /// The script's file name in the module's directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            ScriptKind::Prestart => "prestart",
            ScriptKind::StartBoth => "start_both",
            ScriptKind::StopBoth => "stop_both",
            ScriptKind::StartPrim => "start_prim",
            ScriptKind::StopPrim => "stop_prim",
            ScriptKind::Poststop => "poststop",
        }
    }
}

impl fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One run of a module script, as the driver must perform it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRun {
    /// Which script.
    pub kind: ScriptKind,
    /// State being left: the script's first argument.
    pub from: State,
    /// State being entered: the script's second argument.
    pub to: State,
    /// Second call of a stop script after the graceful one failed or timed out: pass `force`.
    pub force: bool,
    /// Kill the script and answer `ok: false` after this long.
    pub timeout: Duration,
}

/// How long scripts may run (SafeKit's nicestoptimeout / forcestoptimeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptTimeouts {
    /// prestart, start_* and poststop.
    pub start: Duration,
    /// The graceful call of a stop script.
    pub nice_stop: Duration,
    /// The forced call of a stop script.
    pub force_stop: Duration,
}

impl Default for ScriptTimeouts {
    fn default() -> Self {
        ScriptTimeouts {
            // SafeKit's defaults: 300 s for each.
            start: Duration::from_secs(300),
            nice_stop: Duration::from_secs(300),
            force_stop: Duration::from_secs(300),
        }
    }
}

/// Administrator commands (`halo start|stop|restart|prim|second|swap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Start the module on this node.
    Start,
    /// Stop the module on this node.
    Stop,
    /// Stop the module, then start it again.
    Restart,
    /// Mirror: start (or go on) as primary even with stale data or no data yet.
    Prim,
    /// Mirror: start (or go on) as secondary of the peer, whatever the data generations.
    Second,
    /// Mirror, on the primary: planned switch-over with no data loss.
    Swap,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Restart => "restart",
            Command::Prim => "prim",
            Command::Second => "second",
            Command::Swap => "swap",
        })
    }
}

/// What a checker asks for when it detects a failure (`action=` of SafeKit's checkers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckerAction {
    /// Restart the application in place (stop then start scripts), within the maxloop budget.
    Restart,
    /// Stop the module then start it again (a mirror primary hands over first), within the budget.
    StopStart,
    /// Stop the module.
    Stop,
}

/// Why a started module does not serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// Neither node has data of any generation (first start).
    NoData,
    /// The peer may have newer data (or has it).
    Stale,
    /// A resynchronisation into this node was interrupted: its files are a mix.
    Partial,
    /// Same generation, and the peer is preferred (it wrote it, or defaultprim, or name order).
    PeerPreferred,
    /// The peer stopped or was lost, and failover is off.
    FailoverOff,
    /// The ping witness did not answer: no serving without the peer.
    WitnessLost,
    /// The arbiter did not grant (or renew) the lease: no serving without the peer.
    NoLease,
    /// Replication broke; rejoining as secondary after a pause.
    ReplicationBroken,
    /// The peer does not serve, and `halo second` asked to follow it.
    PeerNotPrimary,
    /// A checker reported this resource down.
    ResourceDown(String),
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NoData => f.write_str(
                "no data generation on either node yet: run halo prim on the node with the good data",
            ),
            WaitReason::Stale => f.write_str("data is stale: run halo prim to force"),
            WaitReason::Partial => f.write_str(
                "data is incomplete (interrupted resynchronisation): run halo prim to force",
            ),
            WaitReason::PeerPreferred => {
                f.write_str("the peer's data is preferred: waiting for it to become primary")
            }
            WaitReason::FailoverOff => f.write_str("failover is off: not taking over"),
            WaitReason::WitnessLost => {
                f.write_str("the witness is unreachable: not serving without the peer")
            }
            WaitReason::NoLease => {
                f.write_str("the arbiter did not grant the lease: not serving without the peer")
            }
            WaitReason::ReplicationBroken => {
                f.write_str("replication broke: rejoining as secondary shortly")
            }
            WaitReason::PeerNotPrimary => {
                f.write_str("waiting for the peer to become primary (halo second)")
            }
            WaitReason::ResourceDown(name) => write!(f, "resource {name} is down"),
        }
    }
}

/// Something worth a line in the module log, a metric or the console timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The state or its phase changed (the driver runs the `transition` script on this).
    StateChanged {
        /// State before.
        from: State,
        /// State now.
        to: State,
        /// Phase now.
        phase: Phase,
    },
    /// The module waits instead of serving, and why.
    Waiting(WaitReason),
    /// A script failed or timed out.
    ScriptFailed {
        /// Which script.
        kind: ScriptKind,
        /// Whether it was the forced call of a stop script.
        forced: bool,
    },
    /// A command was refused, and why.
    CommandRejected {
        /// The command.
        command: Command,
        /// Why.
        reason: &'static str,
    },
    /// A checker asked for a restart and the budget allowed it.
    CheckerRestart {
        /// Restart or stopstart.
        action: CheckerAction,
        /// Restarts within the current loop interval, this one included.
        count: u32,
    },
    /// A checker asked for a restart beyond `maxloop` within `loop_interval`: the module stops.
    MaxloopReached {
        /// The configured maxloop.
        maxloop: u32,
    },
    /// A checker asked the module to stop.
    CheckerStop,
    /// A start script failed: the module stops.
    StartFailed(ScriptKind),
    /// The arbiter's lease ran out without renewal.
    LeaseExpired,
    /// This node was paused: the peer's last report is no longer trusted.
    PeerStale,
    /// Mirror: this node follows a peer whose generation cannot contain our writes (a split, or a forced primary): they are overwritten.
    DivergentData {
        /// Our generation, discarded.
        ours: u64,
        /// The peer's generation, kept.
        theirs: u64,
    },
    /// Mirror: replication to or from the peer broke.
    ReplicationBroken,
    /// Mirror: a swap did not complete (replication could not be flushed, or the peer did not take over).
    SwapFailed,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::StateChanged { from, to, phase } => write!(f, "{from} -> {to} ({phase})"),
            Event::Waiting(reason) => write!(f, "waiting: {reason}"),
            Event::ScriptFailed { kind, forced } => {
                let call = if *forced { " (forced)" } else { "" };
                write!(f, "script {kind}{call} failed or timed out")
            }
            Event::CommandRejected { command, reason } => {
                write!(f, "{command} rejected: {reason}")
            }
            Event::CheckerRestart { action, count } => {
                write!(f, "checker asked for {action:?}: restart {count} in the loop interval")
            }
            Event::MaxloopReached { maxloop } => write!(
                f,
                "checker failed after {maxloop} restarts within the loop interval: stopping the module"
            ),
            Event::CheckerStop => f.write_str("checker asked to stop the module"),
            Event::StartFailed(kind) => write!(f, "{kind} failed: stopping the module"),
            Event::LeaseExpired => f.write_str("the arbiter's lease expired without renewal"),
            Event::PeerStale => f.write_str(
                "this node was paused longer than the heartbeats allow: waiting for the peer's next report before trusting its role",
            ),
            Event::DivergentData { ours, theirs } => write!(
                f,
                "following the peer's generation {theirs}: our writes of generation {ours} \
                 (a split, or a forced primary) are overwritten"
            ),
            Event::ReplicationBroken => f.write_str("replication broke"),
            Event::SwapFailed => f.write_str("swap did not complete"),
        }
    }
}

/// A script the machine waits for, and how to react to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScriptCall {
    /// A start script (prestart, start_*): failure stops the module.
    Start(ScriptKind),
    /// A stop script (stop_*): graceful, then forced if that fails; the transition goes on regardless.
    Stop(ScriptKind),
    /// A hook (poststop): run once, a failure is only logged.
    Hook(ScriptKind),
}

impl ScriptCall {
    fn kind(self) -> ScriptKind {
        match self {
            ScriptCall::Start(kind) | ScriptCall::Stop(kind) | ScriptCall::Hook(kind) => kind,
        }
    }
}

/// What to do when a script the machine waits for ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScriptEnd {
    /// Go on with the next step.
    Next,
    /// Run the same stop script again with `force`.
    Force,
    /// A start script failed: stop the module.
    Failed,
}

/// A script in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunningScript {
    call: ScriptCall,
    from: State,
    to: State,
    force: bool,
}

impl RunningScript {
    fn new(call: ScriptCall, from: State, to: State) -> Self {
        RunningScript {
            call,
            from,
            to,
            force: false,
        }
    }

    fn run(&self, timeouts: &ScriptTimeouts) -> ScriptRun {
        let timeout = match (self.call, self.force) {
            (ScriptCall::Stop(_), false) => timeouts.nice_stop,
            (ScriptCall::Stop(_), true) => timeouts.force_stop,
            _ => timeouts.start,
        };
        ScriptRun {
            kind: self.call.kind(),
            from: self.from,
            to: self.to,
            force: self.force,
            timeout,
        }
    }

    /// Reacts to the script's end; logs a failure into `log`.
    fn ended(&mut self, ok: bool, log: &mut Vec<Event>) -> ScriptEnd {
        if ok {
            return ScriptEnd::Next;
        }
        log.push(Event::ScriptFailed {
            kind: self.call.kind(),
            forced: self.force,
        });
        match self.call {
            ScriptCall::Stop(_) if !self.force => {
                self.force = true;
                ScriptEnd::Force
            }
            // A stop that fails even when forced must not block the failover:
            // the transition goes on and the failure is in the log.
            ScriptCall::Stop(_) | ScriptCall::Hook(_) => ScriptEnd::Next,
            ScriptCall::Start(kind) => {
                log.push(Event::StartFailed(kind));
                ScriptEnd::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_codes_round_trip_and_are_distinct() {
        let all = [
            State::Stop,
            State::Wait,
            State::Alone,
            State::Prim,
            State::Second,
            State::Up,
        ];
        for state in all {
            assert_eq!(State::from_code(state.code()), Some(state));
        }
        let mut codes: Vec<u8> = all.iter().map(|s| s.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(State::from_code(6), None);
    }

    #[test]
    fn exit_codes_match_safekit_state_q() {
        let expected = [
            (State::Stop, 0),
            (State::Wait, 1),
            (State::Alone, 2),
            (State::Up, 2),
            (State::Prim, 3),
            (State::Second, 4),
        ];
        for (state, code) in expected {
            assert_eq!(
                state.exit_code(),
                code,
                "expected exit code {code} for {state}, saw {}",
                state.exit_code()
            );
        }
    }

    #[test]
    fn stop_script_is_forced_once_then_the_transition_goes_on() {
        let mut script = RunningScript::new(
            ScriptCall::Stop(ScriptKind::StopPrim),
            State::Prim,
            State::Stop,
        );
        let timeouts = ScriptTimeouts {
            start: Duration::from_secs(1),
            nice_stop: Duration::from_secs(2),
            force_stop: Duration::from_secs(3),
        };
        assert_eq!(script.run(&timeouts).timeout, Duration::from_secs(2));
        let mut log = Vec::new();
        let first = script.ended(false, &mut log);
        assert_eq!(
            first,
            ScriptEnd::Force,
            "expected a forced retry, saw {first:?}"
        );
        let run = script.run(&timeouts);
        assert!(
            run.force && run.timeout == Duration::from_secs(3),
            "expected the forced call with forcestoptimeout, saw {run:?}"
        );
        let second = script.ended(false, &mut log);
        assert_eq!(second, ScriptEnd::Next, "expected to go on, saw {second:?}");
        assert_eq!(log.len(), 2, "expected two failures logged, saw {log:?}");
    }

    #[test]
    fn instants_print_as_seconds_since_start() {
        let t = Instant::START + Duration::from_millis(1500);
        assert_eq!(t.to_string(), "t=1.500s");
        assert_eq!(
            t.saturating_duration_since(Instant::START + Duration::from_secs(2)),
            Duration::ZERO
        );
    }
}
