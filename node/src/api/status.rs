//! The JSON shape of `/api/v1/state`: the contract between the daemon and
//! the CLI (and scripts that read it).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::progress::ReplicationProgress;

/// Everything one node knows about itself and its peers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub cluster: String,
    /// This daemon's boot epoch.
    pub epoch: u64,
    pub peers: Vec<PeerStatus>,
    pub modules: Vec<ModuleStatus>,
    pub heartbeat: HeartbeatCounters,
}

/// A peer as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub up: bool,
    /// Per heartbeat network, by name: whether the peer is heard on it.
    pub networks: Vec<NetworkStatus>,
}

/// One heartbeat network's view of one peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub up: bool,
}

/// One module on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub name: String,
    /// `farm` or `mirror`.
    pub kind: String,
    /// `STOP`, `WAIT`, `UP`, `ALONE`, `PRIM` or `SECOND`.
    pub state: String,
    /// `ready` or `transient`.
    pub phase: String,
    /// Whether ready.txt answers 200.
    pub serving: bool,
    /// Mirror: the pauses of this process the driver had taken into
    /// account when it published `serving` (`PauseWatch`): ready.txt
    /// answers 200 only if no pause came since.
    #[serde(skip)]
    pub pauses_seen: Option<u64>,
    /// `halo state -q`'s exit code for the state.
    pub exit_code: u8,
    /// The data generation (mirror); 0 for a farm.
    pub generation: u64,
    pub failover: bool,
    pub checkers: bool,
    /// The latest event of the module log, for the status table.
    pub last_event: String,
    /// Replication progress (mirror), `null` until the module publishes it.
    #[serde(default)]
    pub progress: Option<ReplicationProgress>,
    /// Mirror: why the kernel write capture is not running (it did not load
    /// when the daemon started); `null` while it runs, and for a farm.
    /// Without it the module replicates through inotify and checksums only,
    /// and `sync = "fsync"` cannot hold durable writes until the peer has
    /// them.
    #[serde(default)]
    pub capture_error: Option<String>,
    /// What happened to the module since the daemon started.
    #[serde(default)]
    pub counters: ModuleCounters,
}

/// A module's counters since the daemon started: the source of its
/// `/metrics` series and of the checkers endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModuleCounters {
    /// State changes, by the states left and entered.
    pub transitions: Vec<TransitionCount>,
    /// Results of each checker, by checker id (`tcp:127.0.0.1:80`, …).
    pub checkers: BTreeMap<String, CheckerCounters>,
    /// Runs of each script, by script (`start_both`, `transition`, …).
    pub scripts: BTreeMap<String, ScriptCounters>,
    /// Answers of each witness (`ping:10.0.0.9`, …), by result (`granted`,
    /// `refused`, `unreachable`, …).
    pub witness: BTreeMap<String, BTreeMap<String, u64>>,
}

/// How often the module went from one state to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionCount {
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// One checker's results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerCounters {
    pub passed: u64,
    pub failed: u64,
    /// Whether the latest check passed.
    pub last_ok: bool,
    /// What the latest check saw.
    pub last_detail: String,
    /// When the latest check ended, in milliseconds since the Unix epoch.
    pub last_at_ms: u64,
}

/// One script's runs (scripts that are not configured are not counted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptCounters {
    pub runs: u64,
    /// Runs that exited non-zero, were killed, timed out or did not start.
    pub failures: u64,
    /// Time spent in all runs, in seconds.
    pub seconds: f64,
    /// Time of the latest run, in seconds.
    pub last_seconds: f64,
}

impl ModuleCounters {
    /// Counts a state change.
    pub fn record_transition(&mut self, from: &str, to: &str) {
        match self
            .transitions
            .iter_mut()
            .find(|t| t.from == from && t.to == to)
        {
            Some(t) => t.count += 1,
            None => self.transitions.push(TransitionCount {
                from: from.to_owned(),
                to: to.to_owned(),
                count: 1,
            }),
        }
    }

    /// Counts a checker's result.
    pub fn record_checker(&mut self, id: &str, ok: bool, detail: &str) {
        let c = self.checkers.entry(id.to_owned()).or_default();
        if ok {
            c.passed += 1;
        } else {
            c.failed += 1;
        }
        c.last_ok = ok;
        c.last_detail = detail.to_owned();
        c.last_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
    }

    /// Counts one run of a script.
    pub fn record_script(&mut self, script: &str, ok: bool, elapsed: Duration) {
        let s = self.scripts.entry(script.to_owned()).or_default();
        s.runs += 1;
        if !ok {
            s.failures += 1;
        }
        s.seconds += elapsed.as_secs_f64();
        s.last_seconds = elapsed.as_secs_f64();
    }

    /// Counts a witness's answer.
    pub fn record_witness(&mut self, witness: &str, result: &str) {
        *self
            .witness
            .entry(witness.to_owned())
            .or_default()
            .entry(result.to_owned())
            .or_default() += 1;
    }
}

/// Heartbeat path counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatCounters {
    pub sent: u64,
    pub received: u64,
    pub late_ticks: u64,
    /// Dropped frames by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Frames that could not be sent (the network is unreachable).
    #[serde(default)]
    pub send_errors: u64,
    /// Accepted and lost frames per peer and network.
    #[serde(default)]
    pub links: Vec<LinkCounters>,
}

/// Frames of one peer on one heartbeat network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    pub peer: String,
    pub network: String,
    /// Frames accepted (authenticated, fresh).
    pub accepted: u64,
    /// Frames the peer sent that never arrived, from the gaps in their
    /// sequence numbers.
    pub lost: u64,
    /// Of the accepted frames, those signed with this node's accepted
    /// secret (`cluster.accept_secret_file`) rather than its signing one:
    /// during a rotation, the peer has not switched to the same secret.
    #[serde(default)]
    pub accepted_secret: u64,
}

/// What `POST /api/v1/reload` (and SIGHUP) did with the re-read
/// configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The configuration file re-read.
    pub file: String,
    /// What changed live, one line each.
    pub applied: Vec<String>,
    /// What changed in the file but needs a restart, one line each naming
    /// the file and the key; the daemon keeps running on the old value.
    pub refused: Vec<String>,
}
