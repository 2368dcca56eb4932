//! The farm's data path as seen from user space: which node accepts which
//! clients.
//!
//! - [`buckets`]: the bucket table, computed from the membership alone, the
//!   same on every node (pure logic, no I/O).

pub mod buckets;
pub mod datapath;
pub mod handover;

pub use buckets::{BucketError, BucketTable, Move, Share, BUCKETS, MAX_MEMBERS};

/// Each farm module's live bucket table, by module name: written by the
/// module drivers, read by the API (`halo buckets`).
pub type SharedTables =
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, BucketTable>>>;
