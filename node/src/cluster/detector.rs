//! The failure detector: decides, from the heartbeats heard on each network
//! and the time, when a peer is up or down.
//!
//! A network loses a peer when it has been silent for that network's
//! `timeout`; a peer is down only when every heartbeat network lost it. The detector also watches its own ticks: when the process was
//! not scheduled (CPU starvation, a frozen VM), the frames peers sent during
//! the stall may still sit in the socket, and the silence it measures is its
//! own, not theirs. So a late tick is reported, and the time it was late by
//! is not counted against any peer.

use std::{collections::BTreeMap, time::Duration};

/// A point in time, as a duration since an arbitrary origin: the daemon
/// passes `tokio::time::Instant`-derived values, tests a virtual clock.
pub type Millis = Duration;

/// What the detector concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The first frame from a peer, or the first after it was down.
    PeerUp {
        peer: String,
    },
    /// Every network silent for `timeout`.
    PeerDown {
        peer: String,
    },
    /// One network stopped carrying a peer's heartbeats (others may still).
    NetworkDown {
        peer: String,
        network: u8,
    },
    NetworkUp {
        peer: String,
        network: u8,
    },
    /// This node's own tick came `late` after it was due.
    LateTick {
        late: Duration,
    },
}

#[derive(Debug)]
struct Peer {
    /// Per network: when a frame was last heard, if ever.
    heard: Vec<Option<Millis>>,
    network_up: Vec<bool>,
    up: bool,
}

/// Liveness of every peer on every heartbeat network.
#[derive(Debug)]
pub struct FailureDetector {
    /// How often `tick` is called.
    pulse: Duration,
    /// Per network.
    timeouts: Vec<Duration>,
    peers: BTreeMap<String, Peer>,
    last_tick: Option<Millis>,
    late_ticks: u64,
}

impl FailureDetector {
    /// A detector for `peers`, ticked every `pulse`, with one heartbeat
    /// network per entry of `timeouts`.
    pub fn new(pulse: Duration, timeouts: Vec<Duration>, peers: &[String]) -> Self {
        let networks = timeouts.len();
        let peers = peers
            .iter()
            .map(|name| {
                let peer = Peer {
                    heard: vec![None; networks],
                    network_up: vec![false; networks],
                    up: false,
                };
                (name.clone(), peer)
            })
            .collect();
        FailureDetector {
            pulse,
            timeouts,
            peers,
            last_tick: None,
            late_ticks: 0,
        }
    }

    /// A tick is late when it comes this much after it was due: half a pulse
    /// absorbs ordinary timer jitter.
    fn lateness_allowance(&self) -> Duration {
        self.pulse / 2
    }

    /// An authenticated, fresh frame from `peer` arrived on `network`.
    pub fn heard(&mut self, peer: &str, network: u8, now: Millis) -> Vec<Liveness> {
        let mut events = Vec::new();
        let Some(state) = self.peers.get_mut(peer) else {
            return events;
        };
        let Some(slot) = state.heard.get_mut(usize::from(network)) else {
            return events;
        };
        *slot = Some(now);
        if !state.network_up[usize::from(network)] {
            state.network_up[usize::from(network)] = true;
            events.push(Liveness::NetworkUp {
                peer: peer.to_owned(),
                network,
            });
        }
        if !state.up {
            state.up = true;
            events.push(Liveness::PeerUp {
                peer: peer.to_owned(),
            });
        }
        events
    }

    /// The periodic check, due every `pulse`. The caller reads every frame
    /// waiting in its sockets first.
    pub fn tick(&mut self, now: Millis) -> Vec<Liveness> {
        let mut events = Vec::new();
        if let Some(last) = self.last_tick {
            let due = last + self.pulse;
            let late = now.saturating_sub(due);
            if late > self.lateness_allowance() {
                self.late_ticks += 1;
                events.push(Liveness::LateTick { late });
                // The stall was ours: forgive it to every peer.
                for peer in self.peers.values_mut() {
                    for heard in peer.heard.iter_mut().flatten() {
                        *heard += late;
                    }
                }
            }
        }
        self.last_tick = Some(now);
        events.extend(self.check(now));
        events
    }

    /// The silence check alone, for the moment a silence deadline
    /// ([`FailureDetector::next_silence`]) passes between two ticks: a
    /// peer is lost `timeout` after its last frame, not at the next tick
    /// after that (up to a pulse later). The caller reads every frame
    /// waiting in its sockets first.
    pub fn check(&mut self, now: Millis) -> Vec<Liveness> {
        let mut events = Vec::new();
        for (name, peer) in &mut self.peers {
            for (network, heard) in peer.heard.iter().enumerate() {
                let timeout = self.timeouts[network];
                let silent = heard.is_none_or(|at| now.saturating_sub(at) >= timeout);
                if silent && peer.network_up[network] {
                    peer.network_up[network] = false;
                    events.push(Liveness::NetworkDown {
                        peer: name.clone(),
                        network: network as u8,
                    });
                }
            }
            if peer.up && peer.network_up.iter().all(|up| !up) {
                peer.up = false;
                events.push(Liveness::PeerDown { peer: name.clone() });
            }
        }
        events
    }

    /// When the first network that still carries a peer goes silent for
    /// its timeout, if no frame comes before.
    pub fn next_silence(&self) -> Option<Millis> {
        self.peers
            .values()
            .flat_map(|peer| {
                peer.heard
                    .iter()
                    .zip(&peer.network_up)
                    .zip(&self.timeouts)
                    .filter(|((_, up), _)| **up)
                    .filter_map(|((heard, _), timeout)| heard.map(|at| at + *timeout))
            })
            .min()
    }

    /// When the next tick is due.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.last_tick.map(|last| last + self.pulse)
    }

    /// Whether `peer` is up.
    pub fn is_up(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.up)
    }

    /// How many ticks came late since start.
    pub fn late_ticks(&self) -> u64 {
        self.late_ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_lost_its_timeout_after_its_last_frame_not_at_the_next_tick() {
        let mut d = detector(2);
        d.tick(ms(0));
        d.heard("b", 0, ms(50));
        d.heard("b", 1, ms(70));
        assert!(d.tick(ms(100)).is_empty());
        assert_eq!(
            d.next_silence(),
            Some(ms(550)),
            "network 0 goes silent first"
        );
        // Ticks every pulse would see the silence only at 600.
        for t in [200, 300, 400, 500] {
            assert!(d.tick(ms(t)).is_empty(), "tick at {t}");
        }
        assert!(d.check(ms(549)).is_empty());
        assert_eq!(
            d.check(ms(550)),
            [Liveness::NetworkDown {
                peer: "b".into(),
                network: 0
            }]
        );
        assert_eq!(d.next_silence(), Some(ms(570)), "network 1 is left");
        assert_eq!(
            d.check(ms(570)),
            [
                Liveness::NetworkDown {
                    peer: "b".into(),
                    network: 1
                },
                Liveness::PeerDown { peer: "b".into() }
            ]
        );
        assert_eq!(d.next_silence(), None, "nothing left to lose");
        assert!(d.tick(ms(600)).is_empty(), "a loss is reported once");
    }

    const PULSE: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(500);

    fn ms(n: u64) -> Millis {
        Duration::from_millis(n)
    }

    fn detector(networks: usize) -> FailureDetector {
        FailureDetector::new(PULSE, vec![TIMEOUT; networks], &["b".to_owned()])
    }

    /// Runs ticks every pulse from `from` to `to` (inclusive), with the peer
    /// heard on `networks` before each tick, and returns every event.
    fn run(d: &mut FailureDetector, from: u64, to: u64, networks: &[u8]) -> Vec<Liveness> {
        let mut events = Vec::new();
        for t in (from..=to).step_by(100) {
            for &n in networks {
                events.extend(d.heard("b", n, ms(t)));
            }
            events.extend(d.tick(ms(t)));
        }
        events
    }

    #[test]
    fn a_peer_goes_down_exactly_timeout_after_its_last_frame() {
        let mut d = detector(1);
        let events = run(&mut d, 0, 1000, &[0]);
        assert!(events.contains(&Liveness::PeerUp { peer: "b".into() }));
        // Last frame at 1000 ms: still up at 1400, down at 1500.
        assert!(run(&mut d, 1100, 1400, &[]).is_empty());
        let events = run(&mut d, 1500, 1500, &[]);
        assert_eq!(
            events,
            vec![
                Liveness::NetworkDown {
                    peer: "b".into(),
                    network: 0
                },
                Liveness::PeerDown { peer: "b".into() }
            ]
        );
        assert!(!d.is_up("b"));
    }

    #[test]
    fn losing_one_network_of_two_does_not_bring_the_peer_down() {
        let mut d = detector(2);
        run(&mut d, 0, 1000, &[0, 1]);
        let events = run(&mut d, 1100, 5000, &[1]);
        assert_eq!(
            events,
            vec![Liveness::NetworkDown {
                peer: "b".into(),
                network: 0
            }],
            "only network 0 is reported down"
        );
        assert!(d.is_up("b"));
        let events = run(&mut d, 5100, 5600, &[]);
        assert!(events.contains(&Liveness::PeerDown { peer: "b".into() }));
    }

    #[test]
    fn a_peer_that_comes_back_is_up_again() {
        let mut d = detector(1);
        run(&mut d, 0, 300, &[0]);
        run(&mut d, 400, 1000, &[]);
        assert!(!d.is_up("b"));
        let events = run(&mut d, 1100, 1100, &[0]);
        assert!(events.contains(&Liveness::PeerUp { peer: "b".into() }));
    }

    #[test]
    fn a_stall_of_this_node_is_not_blamed_on_its_peers() {
        let mut d = detector(1);
        run(&mut d, 0, 1000, &[0]);
        // This node is frozen for 2 s: its next tick comes at 3100 instead of
        // 1100, and no frame was read (they are still in the socket, or were
        // lost while the machine was paused).
        let events = d.tick(ms(3100));
        assert_eq!(events, vec![Liveness::LateTick { late: ms(2000) }]);
        assert!(
            d.is_up("b"),
            "a stall of our own must not declare the peer down"
        );
        assert_eq!(d.late_ticks(), 1);
        // Once running again, a silent peer goes down `timeout` after its
        // last frame plus the 2 s we were away: at 3500, not at 1500.
        assert!(run(&mut d, 3200, 3400, &[]).is_empty());
        let events = run(&mut d, 3500, 3500, &[]);
        assert!(events.contains(&Liveness::PeerDown { peer: "b".into() }));
    }

    #[test]
    fn each_network_loses_the_peer_after_its_own_timeout() {
        let mut d = FailureDetector::new(PULSE, vec![TIMEOUT, ms(1000)], &["b".to_owned()]);
        run(&mut d, 0, 1000, &[0, 1]);
        let events = run(&mut d, 1100, 1500, &[]);
        assert_eq!(
            events,
            vec![Liveness::NetworkDown {
                peer: "b".into(),
                network: 0
            }]
        );
        let events = run(&mut d, 1600, 2000, &[]);
        assert!(
            events.contains(&Liveness::PeerDown { peer: "b".into() }),
            "{events:?}"
        );
    }

    #[test]
    fn timer_jitter_under_half_a_pulse_is_not_a_late_tick() {
        let mut d = detector(1);
        d.tick(ms(0));
        assert!(d.tick(ms(149)).is_empty());
        assert_eq!(d.late_ticks(), 0);
    }

    #[test]
    fn frames_from_unknown_peers_or_networks_are_ignored() {
        let mut d = detector(1);
        assert!(d.heard("stranger", 0, ms(0)).is_empty());
        assert!(d.heard("b", 7, ms(0)).is_empty());
        assert!(!d.is_up("b"));
    }
}
