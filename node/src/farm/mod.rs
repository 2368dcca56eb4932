//! The farm's data path as seen from user space: which node accepts which
//! clients.
//!
//! - [`buckets`]: the bucket table, computed from the membership alone, the
//!   same on every node (pure logic, no I/O).
//! - [`members`]: who is in the table and with which power: the powers
//!   the members announce (pure).

pub mod buckets;
pub mod datapath;
pub mod handover;
pub mod members;

pub use buckets::{BucketError, BucketTable, Move, Share, BUCKETS, MAX_MEMBERS};

/// What the API shows of one farm module on this node: its live bucket
/// table and the filter's counters, refreshed by the module driver.
#[derive(Clone, Debug)]
pub struct FarmView {
    pub table: BucketTable,
    pub counters: FarmCounters,
}

/// The XDP filter's counters on this node, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FarmCounters {
    /// Frames per verdict (`accepted`, `other_node`, `arp_answered`, …).
    pub verdicts: std::collections::BTreeMap<String, u64>,
    /// Packets this node accepted, per bucket (buckets with none left out).
    pub buckets: std::collections::BTreeMap<u16, u64>,
}

/// Each farm module's view, by module name: written by the module drivers,
/// read by the API (`halo buckets`, counters).
pub type SharedTables =
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, FarmView>>>;
