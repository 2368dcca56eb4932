//! The farm module's data path on this node: the VIPs on the interface, the
//! ingress program attached to it, and the bucket table it filters with,
//! including the handover states that keep established connections on
//! their node across a planned rebalance.
//!
//! A bucket that moves from node A to node B while both are alive goes
//! `Draining` on A and `Incoming` on B (common::farm::BucketState). A keeps
//! the flows it has sockets or recent UDP entries for; B takes new TCP
//! connections. A bucket leaves `Draining` when this node's kernel has no
//! more connection in it (read from `/proc/net/tcp{,6}`) and no fresh UDP
//! flow; B's `Incoming` becomes `Owned` when A no longer reports draining,
//! or is gone. A bucket whose owner died moves to its new owner at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use halo_common::farm::{bucket_of, filter, BucketState, FarmRule, VipKey, BUCKETS};

use super::buckets::BucketTable;

/// One bucket's handover state on this node, with the other party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    NotMine,
    Owned,
    /// Was ours; `to` takes new flows.
    Draining {
        to: String,
    },
    /// Ours; `from` still serves its old flows.
    Incoming {
        from: String,
    },
}

impl Slot {
    /// The value the ingress program reads.
    pub fn state(&self) -> BucketState {
        match self {
            Slot::NotMine => BucketState::NotMine,
            Slot::Owned => BucketState::Owned,
            Slot::Draining { .. } => BucketState::Draining,
            Slot::Incoming { .. } => BucketState::Incoming,
        }
    }
}

/// This node's view of every bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    me: String,
    slots: Vec<Slot>,
    table: Option<BucketTable>,
}

impl Handover {
    /// Nothing owned, no table yet.
    pub fn new(me: &str) -> Self {
        Handover {
            me: me.to_owned(),
            slots: vec![Slot::NotMine; BUCKETS as usize],
            table: None,
        }
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The slots, in bucket order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The states the ingress program reads, in bucket order.
    pub fn states(&self) -> Vec<BucketState> {
        self.slots.iter().map(Slot::state).collect()
    }

    /// The current table.
    pub fn table(&self) -> Option<&BucketTable> {
        self.table.as_ref()
    }

    /// Whether some bucket is still draining here (reported to peers).
    pub fn draining(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Draining { .. }))
    }

    /// Moves to the table of a new membership. `alive` tells whether a peer
    /// is still running the farm (a planned handover) or is gone (its
    /// buckets move at once).
    pub fn retable(&mut self, next: BucketTable, alive: &dyn Fn(&str) -> bool) {
        for bucket in 0..BUCKETS as usize {
            let new_owner = next.owner(bucket as u16);
            let old_owner = self
                .table
                .as_ref()
                .and_then(|t| t.owner(bucket as u16))
                .map(str::to_owned);
            let slot = std::mem::replace(&mut self.slots[bucket], Slot::NotMine);
            self.slots[bucket] = match (new_owner, slot) {
                (Some(n), slot) if n == self.me => match slot {
                    Slot::Owned => Slot::Owned,
                    Slot::Incoming { from } if alive(&from) => Slot::Incoming { from },
                    Slot::Incoming { .. } | Slot::Draining { .. } => Slot::Owned,
                    Slot::NotMine => match old_owner {
                        Some(from) if from != self.me && alive(&from) => Slot::Incoming { from },
                        _ => Slot::Owned,
                    },
                },
                (Some(n), Slot::Owned | Slot::Incoming { .. }) if alive(n) => {
                    Slot::Draining { to: n.to_owned() }
                }
                (Some(n), Slot::Draining { .. }) if alive(n) => Slot::Draining { to: n.to_owned() },
                _ => Slot::NotMine,
            };
        }
        self.table = Some(next);
    }

    /// Ends handovers that are over: draining buckets with no flow left
    /// here (`busy` holds the buckets that still have one), and incoming
    /// buckets whose old owner stopped draining or is gone. Returns whether
    /// anything changed.
    pub fn settle(&mut self, busy: &BTreeSet<u32>, still_draining: &dyn Fn(&str) -> bool) -> bool {
        let mut changed = false;
        for (bucket, slot) in self.slots.iter_mut().enumerate() {
            let next = match slot {
                Slot::Draining { .. } if !busy.contains(&(bucket as u32)) => Some(Slot::NotMine),
                Slot::Incoming { from } if !still_draining(from) => Some(Slot::Owned),
                _ => None,
            };
            if let Some(next) = next {
                *slot = next;
                changed = true;
            }
        }
        changed
    }
}

/// The buckets of this node's open TCP connections to the farm's VIPs, from
/// the kernel's socket tables (`/proc/net/tcp` and `/proc/net/tcp6` text).
pub fn busy_tcp_buckets(tables: &[&str], vips: &[IpAddr], rules: &[FarmRule]) -> BTreeSet<u32> {
    let vip_keys: BTreeSet<[u8; 16]> = vips.iter().map(|v| key(*v)).collect();
    let mut busy = BTreeSet::new();
    for table in tables {
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            // 0A is LISTEN: a listener is no connection. 06 is TIME_WAIT:
            // the connection is over (the server closed first, as HTTP/1.0
            // does); waiting out its 60 s would hold every handover, and a
            // graceful leave, for nothing.
            if matches!(*state, "0A" | "06") {
                continue;
            }
            let (Some((local_addr, local_port)), Some((remote_addr, remote_port))) =
                (parse_endpoint(local), parse_endpoint(remote))
            else {
                continue;
            };
            if !vip_keys.contains(&local_addr) {
                continue;
            }
            let Some(rule) = rules
                .iter()
                .find(|r| r.proto == 6 && r.first_port <= local_port && local_port <= r.last_port)
            else {
                continue;
            };
            let port = (rule.filter == filter::SOURCE_PORT).then_some(remote_port);
            busy.insert(bucket_of(&remote_addr, port));
        }
    }
    busy
}

fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => VipKey::v4(v4.octets()).addr,
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `0100007F:1F90` (IPv4, one little-endian word) or 32 hex digits of
/// four such words (IPv6), and a big-endian hex port.
fn parse_endpoint(text: &str) -> Option<([u8; 16], u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut bytes = [0u8; 16];
    match words.as_slice() {
        [v4] => bytes = VipKey::v4(v4.to_le_bytes()).addr,
        [a, b, c, d] => {
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        _ => return None,
    }
    Some((bytes, port))
}

/// The members of a farm table: every UP peer with its power, and this
/// node when it takes traffic.
pub fn members_with(
    me: Option<(&str, u32)>,
    peers: &BTreeMap<String, u32>,
) -> BTreeMap<String, u32> {
    let mut members = peers.clone();
    if let Some((name, power)) = me {
        members.insert(name.to_owned(), power);
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(members: &[(&str, u32)]) -> BucketTable {
        BucketTable::compute(&members.iter().map(|(n, p)| (n.to_string(), *p)).collect()).unwrap()
    }

    fn count(h: &Handover, f: impl Fn(&Slot) -> bool) -> usize {
        h.slots().iter().filter(|s| f(s)).count()
    }

    #[test]
    fn a_joining_node_takes_buckets_as_incoming_and_the_old_owner_drains() {
        let alive = |_: &str| true;
        let mut a = Handover::new("a");
        let mut c = Handover::new("c");
        a.retable(table(&[("a", 1), ("b", 1)]), &alive);
        c.retable(table(&[("a", 1), ("b", 1)]), &alive);
        let owned_before = count(&a, |s| *s == Slot::Owned);
        assert!(owned_before > 1900, "a owns about half: {owned_before}");
        assert_eq!(
            count(&c, |s| *s != Slot::NotMine),
            0,
            "c is not a member yet"
        );

        let next = table(&[("a", 1), ("b", 1), ("c", 1)]);
        a.retable(next.clone(), &alive);
        c.retable(next.clone(), &alive);
        let draining_to_c = count(&a, |s| matches!(s, Slot::Draining { to } if to == "c"));
        let incoming_from_a = count(&c, |s| matches!(s, Slot::Incoming { from } if from == "a"));
        assert!(
            draining_to_c > 500,
            "a hands about a third of its buckets to c: {draining_to_c}"
        );
        assert_eq!(
            draining_to_c, incoming_from_a,
            "every bucket a drains, c receives from a"
        );
        assert!(a.draining());

        // a has no connections left: its draining buckets end; then c owns
        // them outright once a stops reporting draining.
        assert!(a.settle(&BTreeSet::new(), &|_| false));
        assert!(!a.draining());
        assert!(c.settle(&BTreeSet::new(), &|peer| peer == "a" && a.draining()));
        assert_eq!(count(&c, |s| matches!(s, Slot::Incoming { .. })), 0);
    }

    #[test]
    fn buckets_of_a_dead_node_move_at_once() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true);
        a.retable(table(&[("a", 1)]), &|peer| peer != "b");
        assert_eq!(
            count(&a, |s| *s == Slot::Owned),
            BUCKETS as usize,
            "the survivor owns every bucket, not incoming"
        );
    }

    #[test]
    fn a_busy_draining_bucket_keeps_draining() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true);
        a.retable(table(&[("b", 1)]), &|_| true);
        let draining: Vec<u32> = (0..BUCKETS)
            .filter(|b| matches!(a.slots()[*b as usize], Slot::Draining { .. }))
            .collect();
        let busy = BTreeSet::from([draining[0]]);
        a.settle(&busy, &|_| false);
        assert_eq!(count(&a, |s| matches!(s, Slot::Draining { .. })), 1);
    }

    #[test]
    fn proc_net_tcp_connections_to_the_vip_give_their_buckets() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let rules = [FarmRule {
            proto: 6,
            filter: filter::SOURCE_PORT,
            first_port: 80,
            last_port: 80,
            _pad: 0,
        }];
        // 10.0.0.100:80 <- 10.0.0.7:40000 established (01), a listener (0A),
        // a connection to another address, and one in TIME_WAIT (06).
        let tcp = "  sl  local_address rem_address   st\n\
   0: 6400000A:0050 0700000A:9C40 01 0\n\
   1: 6400000A:0050 00000000:0000 0A 0\n\
   2: 0100000A:0016 0700000A:9C41 01 0\n\
   3: 6400000A:0050 0700000A:9C42 06 0\n";
        let busy = busy_tcp_buckets(&[tcp], &[vip], &rules);
        let client = VipKey::v4([10, 0, 0, 7]).addr;
        assert_eq!(busy, BTreeSet::from([bucket_of(&client, Some(40_000))]));
    }
}
