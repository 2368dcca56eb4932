//! The JSON shape of `/api/v1/state`: the contract between the daemon and
//! the CLI (and scripts that read it).

use serde::{Deserialize, Serialize};

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
    /// `halo state -q`'s exit code for the state.
    pub exit_code: u8,
    /// The data generation (mirror); 0 for a farm.
    pub generation: u64,
    pub failover: bool,
    pub checkers: bool,
    /// The latest event of the module log, for the status table.
    pub last_event: String,
}

/// Heartbeat path counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatCounters {
    pub sent: u64,
    pub received: u64,
    pub late_ticks: u64,
    /// Dropped frames by reason.
    pub rejected: std::collections::BTreeMap<String, u64>,
}
