//! Who is in a farm's bucket table, and with what power.
//!
//! # Agreement rule
//! A member's power is the one it announces in its heartbeat reports, for
//! every node alike, the member itself included: a node announces the power
//! of its own configuration (or of its last `halo reload`), and counts
//! itself with that same value from the moment it publishes it. Only a peer
//! whose frames carry no power (a daemon older than the announcement, whose
//! version 1 frames have no such field) counts with the power this node's
//! file gives it, and while such a peer is a member, nodes agree only if
//! their files agree about it. The powers of the other nodes in a file are
//! thus defaults and nothing more: two nodes that receive the same
//! announcements compute the same table, whatever their files say.
//!
//! A change of power reaches the peers with the next heartbeat (one pulse):
//! during that pulse the changing node's table differs from its peers', as
//! a joining node's does between its UP report and its peers' reading of it.
//! The buckets that move go through the handover (Incoming on the new owner
//! takes only new connections, Draining on the old keeps its own), so an
//! established connection is never lost to that window.

use std::collections::BTreeMap;

/// What a peer's heartbeat says about a farm module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFarm {
    /// Whether the peer's module is UP Ready: a member of the table.
    pub serving: bool,
    /// The power it announces; `None` from a peer whose frames carry none.
    pub power: Option<u32>,
}

/// The peers that are members of the table, with the power that counts
/// for each: the announced one, else `defaults` (the file's `power`),
/// else 1.
pub fn peer_members(
    peers: &BTreeMap<String, PeerFarm>,
    defaults: &BTreeMap<String, u32>,
) -> BTreeMap<String, u32> {
    peers
        .iter()
        .filter(|(_, peer)| peer.serving)
        .map(|(name, peer)| {
            let power = peer
                .power
                .unwrap_or_else(|| defaults.get(name).copied().unwrap_or(1));
            (name.clone(), power)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::BucketTable;

    fn powers(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    fn peer(power: Option<u32>) -> PeerFarm {
        PeerFarm {
            serving: true,
            power,
        }
    }

    /// The table `me` computes: its peers' announcements, and itself with
    /// the power it announces.
    fn table_of(
        me: (&str, u32),
        peers: &BTreeMap<String, PeerFarm>,
        file: &BTreeMap<String, u32>,
    ) -> BucketTable {
        let mut members = peer_members(peers, file);
        members.insert(me.0.to_owned(), me.1);
        BucketTable::compute(&members).unwrap()
    }

    #[test]
    fn nodes_with_different_files_agree_on_the_announced_powers() {
        // a's file is older: it still gives c power 1; c reloaded to 3.
        let a_file = powers(&[("a", 1), ("b", 1), ("c", 1)]);
        let b_file = powers(&[("a", 1), ("b", 1), ("c", 3)]);
        let c_file = powers(&[("a", 2), ("b", 2), ("c", 3)]);
        let announced = powers(&[("a", 1), ("b", 1), ("c", 3)]);
        let peers_of = |me: &str| -> BTreeMap<String, PeerFarm> {
            announced
                .iter()
                .filter(|(n, _)| n.as_str() != me)
                .map(|(n, p)| (n.clone(), peer(Some(*p))))
                .collect()
        };
        let a = table_of(("a", 1), &peers_of("a"), &a_file);
        let b = table_of(("b", 1), &peers_of("b"), &b_file);
        let c = table_of(("c", 3), &peers_of("c"), &c_file);
        assert!(a == b && b == c, "every node computes the same table");
        let shares = a.shares();
        let c_share = shares.iter().find(|s| s.node == "c").unwrap();
        assert!(
            (55.0..65.0).contains(&c_share.percent),
            "c owns about 3/5 of the buckets: {c_share:?}"
        );
    }

    #[test]
    fn a_peer_without_a_power_counts_with_the_files_and_only_serving_peers_count() {
        let file = powers(&[("a", 1), ("b", 4), ("c", 2)]);
        let peers = BTreeMap::from([
            ("b".to_owned(), peer(None)),
            ("c".to_owned(), peer(Some(0))),
            (
                "d".to_owned(),
                PeerFarm {
                    serving: false,
                    power: Some(5),
                },
            ),
            ("e".to_owned(), peer(None)),
        ]);
        assert_eq!(
            peer_members(&peers, &file),
            powers(&[("b", 4), ("c", 0), ("e", 1)]),
            "b from the file, c as announced (0 included), d not serving, e unknown to the file"
        );
    }

    #[test]
    fn a_power_change_moves_buckets_only_to_or_from_the_changed_node() {
        let file = powers(&[]);
        let before = table_of(
            ("a", 1),
            &BTreeMap::from([
                ("b".to_owned(), peer(Some(1))),
                ("c".to_owned(), peer(Some(1))),
            ]),
            &file,
        );
        let after = table_of(
            ("a", 1),
            &BTreeMap::from([
                ("b".to_owned(), peer(Some(1))),
                ("c".to_owned(), peer(Some(3))),
            ]),
            &file,
        );
        let moves = before.diff(&after);
        assert!(!moves.is_empty());
        assert!(
            moves.iter().all(|m| m.to == Some("c")),
            "a higher power only gains buckets: {moves:?}"
        );
    }
}
