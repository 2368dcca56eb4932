//! Replication progress: what a mirror module's driver publishes about its
//! copy to the peer, for `/api/v1/modules/<module>` (the `progress` field),
//! `/api/v1/modules/<module>/progress`, the console and `/metrics`.
//!
//! A module that replicates nothing (a farm, a mirror not started) has no
//! progress: the field is `null` and the replication metrics are absent,
//! never zeros that would read as "in sync".

use serde::{Deserialize, Serialize};

use super::SharedStatus;

/// A mirror module's replication, as its driver last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationProgress {
    /// Bytes of the current copy (initial copy or resynchronisation)
    /// already on the peer; equal to `bytes_total` once in sync.
    pub bytes_done: u64,
    /// Bytes the current copy has to send in all.
    pub bytes_total: u64,
    /// Files of the current copy already on the peer.
    pub files_done: u64,
    /// Files the current copy has to send in all.
    pub files_total: u64,
    /// Estimated seconds until the copy is done; `None` while unknown.
    pub eta_seconds: Option<f64>,
    /// Age of the oldest write not yet acknowledged by the peer, in seconds.
    pub lag_seconds: f64,
    /// Bytes written on this node and not yet acknowledged by the peer.
    pub backlog_bytes: u64,
}

impl ReplicationProgress {
    /// The copy's completion, 0 to 1 (1 when there is nothing to copy).
    pub fn ratio(&self) -> f64 {
        if self.bytes_total == 0 {
            1.0
        } else {
            (self.bytes_done as f64 / self.bytes_total as f64).min(1.0)
        }
    }
}

/// Sets (or, with `None`, clears) the replication progress of `module`:
/// what a mirror driver calls whenever its figures change. An unknown
/// module is ignored: the API shows only configured modules.
pub fn publish(status: &SharedStatus, module: &str, progress: Option<ReplicationProgress>) {
    super::update_module(status, module, |m| m.progress = progress);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModuleStatus, NodeStatus};
    use std::sync::{Arc, RwLock};

    #[test]
    fn progress_is_null_until_published_and_cleared_by_none() {
        let status: SharedStatus = Arc::new(RwLock::new(NodeStatus {
            modules: vec![ModuleStatus {
                name: "data".into(),
                ..ModuleStatus::default()
            }],
            ..NodeStatus::default()
        }));
        let json = serde_json::to_value(&status.read().unwrap().modules[0]).unwrap();
        assert_eq!(json["progress"], serde_json::Value::Null);

        let progress = ReplicationProgress {
            bytes_done: 50,
            bytes_total: 200,
            files_done: 1,
            files_total: 4,
            eta_seconds: Some(3.0),
            lag_seconds: 0.002,
            backlog_bytes: 4096,
        };
        publish(&status, "data", Some(progress));
        publish(&status, "not-configured", Some(progress));
        {
            let modules = &status.read().unwrap().modules;
            assert_eq!(modules.len(), 1, "an unknown module is not added");
            assert_eq!(modules[0].progress, Some(progress));
        }
        assert_eq!(progress.ratio(), 0.25);

        publish(&status, "data", None);
        assert_eq!(status.read().unwrap().modules[0].progress, None);
    }
}
