//! Instants of one node's clock, told to another through heartbeats.
//!
//! A module report may carry in `following` an instant of its sender's
//! CLOCK_MONOTONIC, flagged [`FLAG_INSTANT`]: a farm module says so when
//! its bucket table took effect, and a new owner compares the times its
//! own filter first saw each UDP flow against that moment. Two hosts'
//! clocks need not agree (nor their wall clocks, without NTP), so the
//! instant travels as its age when the frame is sent ([`outgoing`]) and
//! the receiver places it on its own clock: when the frame arrived, minus
//! that age ([`Placements::incoming`]).
//!
//! The placement is late by the time between the sender's clock reading
//! and the frame's arrival (the receiver takes the kernel's receive stamp),
//! never early. Every later frame about the same instant places it again,
//! and the earliest placement is kept, so one frame held up (a preempted
//! sender, a queue on the link) costs only until the next. Only frames
//! sent within [`FRESH_AGE_NS`] of the instant refine it: the two hosts'
//! clocks run at slightly different rates, so an old age measured on the
//! sender's clock could place the instant early on this one.

use std::collections::HashMap;

use super::frame::ModuleReport;

/// Bit of [`ModuleReport::flags`], for every module kind: `following` is an
/// instant of the sender's clock. On the wire it is the instant's age in
/// nanoseconds when the frame was encoded; as received (after
/// [`Placements::incoming`]) it is the instant on this node's
/// CLOCK_MONOTONIC. Daemons from before this bit read `following` of a
/// farm report as a wall-clock instant.
pub const FLAG_INSTANT: u8 = 0x80;

/// How much later than the earliest placement of an instant a new one may
/// be and still be taken for the same instant (kept earliest): beyond,
/// the sender moved to another instant with the same `generation` (a
/// farm that left a membership and came back to it), and the placement
/// starts over. No frame spends that long between two daemons' clock
/// readings unless a process was paused, and then the next frames place
/// the instant again.
pub const SAME_INSTANT_NS: u64 = 50_000_000;

/// The oldest age that may move an instant's placement earlier (a clock
/// 100 ppm fast moves it by 0.1 ms at most).
pub const FRESH_AGE_NS: u64 = 1_000_000_000;

/// `report` as sent at `now_ns` (this node's CLOCK_MONOTONIC): a flagged
/// instant becomes its age.
pub fn outgoing(report: &ModuleReport, now_ns: u64) -> ModuleReport {
    let mut out = report.clone();
    if out.flags & FLAG_INSTANT != 0 {
        out.following = now_ns.saturating_sub(out.following);
    }
    out
}

/// Where this node placed each peer's flagged instants, by peer and module.
#[derive(Debug, Default)]
pub struct Placements {
    by: HashMap<(String, String), Placement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    generation: u64,
    at: u64,
}

impl Placements {
    /// Places the instant a report of `peer` received at `now_ns` carries
    /// (this node's CLOCK_MONOTONIC) on this node's clock, in place: the
    /// earliest placement of that instant so far. Reports without
    /// [`FLAG_INSTANT`] are left as they are.
    pub fn incoming(&mut self, peer: &str, report: &mut ModuleReport, now_ns: u64) {
        if report.flags & FLAG_INSTANT == 0 {
            return;
        }
        let placed = Placement {
            generation: report.generation,
            at: now_ns.saturating_sub(report.following),
        };
        let key = (peer.to_owned(), report.name.clone());
        let fresh = report.following <= FRESH_AGE_NS;
        let kept = match self.by.get(&key) {
            Some(kept)
                if kept.generation == placed.generation
                    && placed.at <= kept.at.saturating_add(SAME_INSTANT_NS) =>
            {
                Placement {
                    at: if fresh {
                        kept.at.min(placed.at)
                    } else {
                        kept.at
                    },
                    ..*kept
                }
            }
            _ => placed,
        };
        self.by.insert(key, kept);
        report.following = kept.at;
    }

    /// Forgets `peer`'s instants (it is down: what it says next is news).
    pub fn forget(&mut self, peer: &str) {
        self.by.retain(|(p, _), _| p != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn report(name: &str, flags: u8, generation: u64, following: u64) -> ModuleReport {
        ModuleReport {
            name: name.to_owned(),
            state: 2,
            phase: 0,
            flags,
            generation,
            following,
        }
    }

    #[test]
    fn an_instant_crosses_clocks_as_its_age() {
        // The sender's clock reads 1000 s when the table takes effect and
        // 1000.040 s when it sends; the receiver's reads 7 s, 0.3 ms later.
        let applied = 1_000_000 * MS;
        let sent = outgoing(
            &report("web", FLAG_INSTANT | 1, 9, applied),
            applied + 40 * MS,
        );
        assert_eq!(sent.following, 40 * MS, "the age travels");
        assert_eq!(sent.flags, FLAG_INSTANT | 1, "flags untouched");
        let mut received = sent;
        let mut placements = Placements::default();
        let arrival = 7_000 * MS + 300_000;
        placements.incoming("b", &mut received, arrival);
        assert_eq!(
            received.following,
            arrival - 40 * MS,
            "placed on the receiver's clock, late by the transit only"
        );
    }

    #[test]
    fn reports_without_the_flag_pass_untouched() {
        let mirror = report("db", 0b0111, 17, 16);
        assert_eq!(outgoing(&mirror, 5 * MS), mirror);
        let mut received = mirror.clone();
        Placements::default().incoming("b", &mut received, 9 * MS);
        assert_eq!(received, mirror);
    }

    #[test]
    fn the_earliest_placement_of_an_instant_is_kept() {
        let mut placements = Placements::default();
        let place = |placements: &mut Placements, generation, age, now| {
            let mut r = report("web", FLAG_INSTANT, generation, age);
            placements.incoming("b", &mut r, now);
            r.following
        };
        // Applied at 1000 ms on the receiver's clock: the first frame took
        // 3 ms to be read, the next 0.1 ms, the one after 2 ms.
        assert_eq!(place(&mut placements, 9, 100 * MS, 1_103 * MS), 1_003 * MS);
        assert_eq!(
            place(&mut placements, 9, 200 * MS, 1_200 * MS + MS / 10),
            1_000 * MS + MS / 10
        );
        assert_eq!(
            place(&mut placements, 9, 300 * MS, 1_302 * MS),
            1_000 * MS + MS / 10,
            "a later placement does not move it back"
        );
        // Another peer, or another module, is placed on its own.
        let mut other = report("web", FLAG_INSTANT, 9, 100 * MS);
        placements.incoming("c", &mut other, 1_105 * MS);
        assert_eq!(other.following, 1_005 * MS);
    }

    #[test]
    fn an_old_age_does_not_move_a_placement_earlier() {
        let mut placements = Placements::default();
        let mut place = |age, now| {
            let mut r = report("web", FLAG_INSTANT, 9, age);
            placements.incoming("b", &mut r, now);
            r.following
        };
        assert_eq!(place(MS, 1_001 * MS), 1_000 * MS);
        // An hour later, the sender's clock (a little fast) says the
        // instant is 20 ms older than this node's clock would.
        let hour = 3_600_000 * MS;
        assert_eq!(
            place(hour + 20 * MS, 1_000 * MS + hour),
            1_000 * MS,
            "an age beyond FRESH_AGE_NS leaves the placement"
        );
        // A fresh frame still refines it.
        assert_eq!(
            place(1_500 * MS / 2, 1_750 * MS - MS / 2),
            1_000 * MS - MS / 2
        );
    }

    #[test]
    fn a_new_instant_is_placed_anew() {
        let mut placements = Placements::default();
        let mut place = |generation, age, now| {
            let mut r = report("web", FLAG_INSTANT, generation, age);
            placements.incoming("b", &mut r, now);
            r.following
        };
        assert_eq!(place(9, 0, 1_000 * MS), 1_000 * MS);
        // Another table: its own instant, even though later.
        assert_eq!(place(11, 0, 2_000 * MS), 2_000 * MS);
        // Back to the first table's membership, applied anew.
        assert_eq!(place(9, 0, 3_000 * MS), 3_000 * MS);
        // The same table applied again (its old one is 1 s older): beyond
        // SAME_INSTANT_NS, a new instant.
        assert_eq!(place(9, 0, 4_000 * MS), 4_000 * MS);
        assert_eq!(
            place(9, 10 * MS, 4_020 * MS),
            4_000 * MS,
            "10 ms later, within SAME_INSTANT_NS: the same instant, kept where first placed"
        );
    }

    #[test]
    fn a_forgotten_peer_starts_over() {
        let mut placements = Placements::default();
        let mut r = report("web", FLAG_INSTANT, 9, 0);
        placements.incoming("b", &mut r, 1_000 * MS);
        placements.forget("b");
        let mut r = report("web", FLAG_INSTANT, 9, 0);
        placements.incoming("b", &mut r, 1_030 * MS);
        assert_eq!(r.following, 1_030 * MS);
    }
}
