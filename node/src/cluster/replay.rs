//! Replay protection for authenticated cluster frames.
//!
//! A sender numbers its frames `(epoch, seq)`: the epoch grows at every start
//! of its daemon, the sequence within an epoch. A receiver accepts a frame
//! only if it is newer than the newest it accepted from the same sender on
//! the same network; every network is tracked apart because each carries the
//! same sequence, and the network index is inside the MAC so a frame cannot
//! be moved from one network to another.

use std::collections::HashMap;

/// Why a frame was refused as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    #[error("epoch {got} is older than the sender's current epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("sequence {got} is not newer than {last} in the current epoch")]
    OldSequence { got: u64, last: u64 },
}

/// The newest `(epoch, seq)` accepted per (sender, network).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    newest: HashMap<(String, u8), (u64, u64)>,
    /// The lowest epoch accepted per sender: the newest seen before this
    /// process started, from the state directory, so a restart of the
    /// receiver does not reopen the door to frames of older epochs.
    floor: HashMap<String, u64>,
}

impl ReplayGuard {
    /// A guard that refuses epochs below `floor` for each named sender.
    pub fn with_floors(floor: HashMap<String, u64>) -> Self {
        ReplayGuard {
            newest: HashMap::new(),
            floor,
        }
    }

    /// Accepts and records `(epoch, seq)` if it is fresh. Returns `true` when
    /// the epoch is new for this sender (its daemon restarted), which the
    /// caller persists as the new floor.
    pub fn check(
        &mut self,
        sender: &str,
        network: u8,
        epoch: u64,
        seq: u64,
    ) -> Result<bool, Replay> {
        let floor = self.floor.get(sender).copied().unwrap_or(0);
        if epoch < floor {
            return Err(Replay::StaleEpoch {
                got: epoch,
                current: floor,
            });
        }
        let key = (sender.to_owned(), network);
        match self.newest.get(&key) {
            Some(&(current, _)) if epoch < current => {
                return Err(Replay::StaleEpoch {
                    got: epoch,
                    current,
                });
            }
            Some(&(current, last)) if epoch == current && seq <= last => {
                return Err(Replay::OldSequence { got: seq, last });
            }
            _ => {}
        }
        self.newest.insert(key, (epoch, seq));
        let new_epoch = epoch > floor;
        if new_epoch {
            self.floor.insert(sender.to_owned(), epoch);
        }
        Ok(new_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_frames_pass_and_replays_are_refused() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.check("a", 0, 5, 1), Ok(true));
        assert_eq!(guard.check("a", 0, 5, 2), Ok(false));
        assert_eq!(
            guard.check("a", 0, 5, 2),
            Err(Replay::OldSequence { got: 2, last: 2 })
        );
        assert_eq!(
            guard.check("a", 0, 5, 1),
            Err(Replay::OldSequence { got: 1, last: 2 })
        );
    }

    #[test]
    fn the_same_frame_on_each_network_is_accepted_once_per_network() {
        let mut guard = ReplayGuard::default();
        assert!(guard.check("a", 0, 5, 1).is_ok());
        assert!(guard.check("a", 1, 5, 1).is_ok());
        assert!(guard.check("a", 1, 5, 1).is_err());
    }

    #[test]
    fn a_restarted_sender_starts_a_new_epoch_and_old_epochs_stay_refused() {
        let mut guard = ReplayGuard::default();
        guard.check("a", 0, 5, 900).unwrap();
        assert_eq!(guard.check("a", 0, 6, 1), Ok(true), "restart with seq 1");
        assert_eq!(
            guard.check("a", 0, 5, 901),
            Err(Replay::StaleEpoch { got: 5, current: 6 })
        );
        assert_eq!(
            guard.check("a", 1, 5, 901),
            Err(Replay::StaleEpoch { got: 5, current: 6 }),
            "the epoch floor holds on every network"
        );
    }

    #[test]
    fn a_restarted_receiver_keeps_refusing_epochs_below_its_floor() {
        let mut guard = ReplayGuard::with_floors(HashMap::from([("a".to_owned(), 6)]));
        assert!(guard.check("a", 0, 5, 10_000).is_err());
        assert_eq!(guard.check("a", 0, 6, 3), Ok(false));
    }
}
