//! The handover states of the buckets that move between live nodes, and
//! when they end (pure: the kernel's sockets and flows, the peers' reports
//! and the time are inputs).
//!
//! A bucket that moves from node A to node B while both are alive goes
//! `Draining` on A and `Incoming` on B (common::farm::BucketState). A keeps
//! the TCP connections it has sockets for and the UDP flows it served; B
//! takes new TCP connections and the UDP flows A does not serve, once it
//! knows that A stopped taking them (the *cut*, below). A bucket
//! leaves `Draining` when this node's kernel has no more connection in it
//! (read from `/proc/net/tcp{,6}`) and no fresh UDP flow it serves, or,
//! on a node of power 0, when `drain_timeout` runs out. B's `Incoming`
//! becomes `Owned` once A applies the same table as B (so A has stopped
//! taking new flows in the bucket) and no longer reports draining, or is
//! gone. A bucket whose owner died moves to its new owner at once.
//!
//! UDP has no handshake to tell a new flow from an old one, so B judges a
//! datagram by its own flow table, which records every flow it sees
//! (common::farm::UdpFlow): a fresh flow B does not serve and first saw
//! before A stopped taking new flows in the bucket (its *cut*) is A's;
//! every other flow is B's. B learns the cut from A's heartbeat (the time
//! A applied its table, placed on B's clock: cluster::instant); until then
//! it takes no UDP flow in the bucket but its own, as A may still own the
//! bucket outright. A later heartbeat that places the same moment earlier
//! moves the cut earlier, never later. When the bucket
//! moved before and an earlier owner still drains it, the cut is also no
//! earlier than when that owner stopped taking new flows there (when it
//! applied the table that took the bucket from it). A node that serves the
//! bucket no more (its drain ended, or, of power 0, it gave its flows up;
//! it shows B's table, or is gone) no longer counts: the cut becomes the
//! latest of those that still drain, so the flows it took after theirs are
//! B's at once. A stop time B learned late (a drain it inherited, a table
//! it saw no report for) is an upper bound: the flows begun between the
//! real stop and that bound stay with the earlier owner, which never
//! served them, until its drain ends. TCP needs only to know
//! that the cut is past: until then B drops SYNs (common::farm::
//! incoming_takes_syn), which A still answers as the owner.
//!
//! A bucket B keeps can have another server too: a peer whose table B
//! does not know (nodes that start together, each first alone; a partial
//! view) may own it outright, and a peer that drains may drain it. Such a
//! bucket also goes `Incoming` on B, from that peer (a *holder*), and ends
//! like any other: B takes its new flows once the holder shows B's table,
//! and owns it outright once the holder drains no more.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use halo_common::farm::{
    bucket_of, filter, BucketState, FarmRule, UdpFlowKey, VipKey, BUCKETS, CUT_UNKNOWN,
};

use super::buckets::BucketTable;

/// One bucket's handover state on this node, with the other party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    NotMine,
    Owned,
    /// Was ours until `since` (CLOCK_MONOTONIC ns); `to` takes new flows.
    Draining {
        to: String,
        since: u64,
    },
    /// Ours; `from` still serves its old flows. `cut`: when `from` stopped
    /// taking new UDP flows here (CLOCK_MONOTONIC ns), once known.
    Incoming {
        from: String,
        cut: Option<u64>,
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

    /// The bucket's cut the ingress program reads.
    pub fn cut(&self) -> u64 {
        match self {
            Slot::Incoming { cut: Some(cut), .. } => *cut,
            _ => CUT_UNKNOWN,
        }
    }
}

/// What this node knows of a peer's handovers, from its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHandover {
    /// Which table the peer applies.
    pub table: PeerTable,
    /// The peer still drains buckets it handed over.
    pub draining: bool,
}

/// A peer's table, compared with this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTable {
    /// The same as this node's, applied at this time (CLOCK_MONOTONIC ns
    /// of this node, as far as the clocks agree).
    Same { applied_at: u64 },
    /// Another one: the peer has not read the change yet (or this node
    /// has not read the peer's).
    Other,
    /// The peer announces none (it applies no table, or its daemon is too
    /// old to announce it).
    Unknown,
}

/// When the handovers of a [`Handover::confirm`] may end without the old
/// owner's word: `agreement_waited` after a table change whose old owners
/// do not show the same table (they may never, e.g. behind a partial
/// partition), `unknown_waited` for an old owner that announces no table
/// (the heartbeat that would say it is draining comes within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    pub agreement_waited: bool,
    pub unknown_waited: bool,
}

/// This node's view of every bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    me: String,
    slots: Vec<Slot>,
    /// Per bucket, whatever its owner: the live nodes that handed it over
    /// and may still serve flows in it. A bucket can move again before its
    /// first handover ends (a join, then a new power), and then its new
    /// owner must wait for every earlier owner, not only the last. With
    /// each, when it is known to have stopped taking new flows in the
    /// bucket (CLOCK_MONOTONIC ns): the time it applied a table of this
    /// node's that gave the bucket to another.
    drainers: Vec<BTreeMap<String, Option<u64>>>,
    table: Option<BucketTable>,
}

impl Handover {
    /// Nothing owned, no table yet.
    pub fn new(me: &str) -> Self {
        Handover {
            me: me.to_owned(),
            slots: vec![Slot::NotMine; BUCKETS as usize],
            drainers: vec![BTreeMap::new(); BUCKETS as usize],
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

    /// The cuts the ingress program reads, in bucket order.
    pub fn cuts(&self) -> Vec<u64> {
        self.slots.iter().map(Slot::cut).collect()
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

    /// Whether some bucket is still incoming here.
    pub fn incoming(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Incoming { .. }))
    }

    /// After this node's first table (it joined, or its daemon restarted):
    /// `draining` are the live peers that report draining at `now`. This
    /// node saw none of the handovers they drain (a bucket handed over
    /// before it came, which may be one of those it now takes), and they
    /// report draining per node, not per bucket: each incoming bucket waits
    /// for them too before it is owned outright (their old flows keep their
    /// node). They stopped taking new flows in it no later than `now`.
    pub fn inherit_drains(&mut self, draining: &BTreeSet<String>, now: u64) {
        for (slot, drainers) in self.slots.iter().zip(self.drainers.iter_mut()) {
            if !matches!(slot, Slot::Incoming { .. }) {
                continue;
            }
            for peer in draining.iter().filter(|p| **p != self.me) {
                drainers.entry(peer.clone()).or_insert(Some(now));
            }
        }
    }

    /// Moves to the table of a new membership at `now`. `alive` tells
    /// whether a peer is still running the farm (a planned handover) or is
    /// gone (its buckets move at once); `holders` are the live peers that
    /// may serve buckets this node keeps (see the module's documentation).
    pub fn retable(
        &mut self,
        next: BucketTable,
        alive: &dyn Fn(&str) -> bool,
        holders: &BTreeSet<String>,
        now: u64,
    ) {
        for bucket in 0..BUCKETS as usize {
            let new_owner = next.owner(bucket as u16);
            let old_owner = self
                .table
                .as_ref()
                .and_then(|t| t.owner(bucket as u16))
                .map(str::to_owned);
            let drainers = &mut self.drainers[bucket];
            drainers.retain(|node, _| alive(node) && Some(node.as_str()) != new_owner);
            if let (Some(old), Some(new)) = (&old_owner, new_owner) {
                if old != new && alive(old) && (alive(new) || new == self.me) {
                    // It owned the bucket until now: it takes new flows in
                    // it until it applies this table.
                    drainers.insert(old.clone(), None);
                }
            }
            let kept = matches!(self.slots[bucket], Slot::Owned | Slot::Incoming { .. });
            let mut new_holder = false;
            if kept && new_owner == Some(self.me.as_str()) {
                for holder in holders.iter().filter(|h| alive(h) && **h != self.me) {
                    if !drainers.contains_key(holder) {
                        drainers.insert(holder.clone(), None);
                        new_holder = true;
                    }
                }
            }
            drainers.remove(&self.me);
            // Ours, outright unless a live node may still serve flows in it;
            // new flows are ours at once if every such node is known to
            // have stopped taking them (an earlier owner still draining the
            // bucket of a node that died).
            let held = || match drainers.keys().next() {
                Some(from) => Slot::Incoming {
                    from: from.clone(),
                    cut: drainers
                        .values()
                        .copied()
                        .collect::<Option<Vec<u64>>>()
                        .and_then(|stopped| stopped.into_iter().max()),
                },
                None => Slot::Owned,
            };
            let slot = std::mem::replace(&mut self.slots[bucket], Slot::NotMine);
            self.slots[bucket] = match (new_owner, slot) {
                (Some(n), slot) if n == self.me => match slot {
                    // A new holder may take new flows here: the cut is
                    // known again only once it shows this node's table.
                    Slot::Incoming { from, cut } if alive(&from) => Slot::Incoming {
                        from,
                        cut: cut.filter(|_| !new_holder),
                    },
                    Slot::NotMine => match old_owner {
                        Some(from) if from != self.me && alive(&from) => {
                            Slot::Incoming { from, cut: None }
                        }
                        _ => held(),
                    },
                    Slot::Owned | Slot::Incoming { .. } | Slot::Draining { .. } => held(),
                },
                (Some(n), Slot::Owned | Slot::Incoming { .. }) if alive(n) => Slot::Draining {
                    to: n.to_owned(),
                    since: now,
                },
                (Some(n), Slot::Draining { since, .. }) if alive(n) => Slot::Draining {
                    to: n.to_owned(),
                    since,
                },
                _ => Slot::NotMine,
            };
        }
        self.table = Some(next);
    }

    /// Advances the incoming buckets at `now` by what the peers report
    /// (`None`: no report, the peer is gone): an old owner that applies
    /// this node's table gives the bucket's cut (the time it applied
    /// it); the bucket is this node's outright once, besides, no node that
    /// handed it over (that one or an earlier owner) still drains. Once the
    /// old owner drains no more, the bucket waits for the earlier ones
    /// alone, and its cut is theirs. Returns whether anything changed.
    pub fn confirm(
        &mut self,
        peer: &dyn Fn(&str) -> Option<PeerHandover>,
        patience: Patience,
        now: u64,
    ) -> bool {
        // When a peer applies this node's table, or is waited for no more.
        let applied = |name: &str| match peer(name) {
            None => Some(now),
            Some(PeerHandover { table, .. }) => match table {
                PeerTable::Same { applied_at } => Some(applied_at.min(now)),
                PeerTable::Other if patience.agreement_waited => Some(now),
                PeerTable::Unknown if patience.unknown_waited => Some(now),
                PeerTable::Other | PeerTable::Unknown => None,
            },
        };
        // A node drains nothing of this node's table: it applies the table
        // and reports no draining bucket (or is gone).
        let done = |name: &str| applied(name).is_some() && peer(name).is_none_or(|p| !p.draining);
        // Done, and known to serve nothing in this node's buckets: gone, or
        // showing this node's table. A peer only waited out (it shows
        // another table or none) may still own the bucket under its own
        // table and serve flows in it.
        let serves_nothing = |name: &str| match peer(name) {
            None => true,
            Some(p) => matches!(p.table, PeerTable::Same { .. }) && !p.draining,
        };
        let mut changed = false;
        for (slot, drainers) in self.slots.iter_mut().zip(self.drainers.iter_mut()) {
            drainers.retain(|node, _| !done(node));
            // Known once, then only ever earlier: a later heartbeat may
            // place the same moment earlier (placements are late, never
            // early: cluster::instant), and a later table of that node is
            // not when it stopped here.
            for (node, stopped) in drainers.iter_mut() {
                *stopped = match (*stopped, applied(node)) {
                    (Some(known), Some(now_placed)) => Some(known.min(now_placed)),
                    (known, placed) => known.or(placed),
                };
            }
            let Slot::Incoming { from, cut } = slot else {
                continue;
            };
            if done(from) {
                let Some(next) = drainers.keys().next() else {
                    *slot = Slot::Owned;
                    changed = true;
                    continue;
                };
                if serves_nothing(from) {
                    // The old owner serves nothing here any more (its
                    // flows ended, or it gave them up: a node of power 0
                    // at drain_timeout). Its flows are this node's from
                    // now on; the bucket waits for the earlier owners
                    // that still drain alone, below.
                    *from = next.clone();
                    changed = true;
                }
            }
            // The cut is the latest moment one of the nodes that still
            // serve the bucket stopped taking its new flows (each drainer's
            // is when it applied the table that took the bucket from it,
            // not when it applies this one: waiting for that, new flows
            // begun in between would belong to nobody). A node that serves
            // it no more counts no more: the flows it took after an earlier
            // owner's cut are this node's, as nobody else answers them. One
            // only waited out counts from the moment it was given up.
            let mut latest = if drainers.contains_key(from.as_str()) {
                Some(0)
            } else {
                applied(from)
            };
            for stopped in drainers.values() {
                latest = latest.zip(*stopped).map(|(a, b)| a.max(b));
            }
            let Some(applied_at) = latest else {
                continue;
            };
            if cut.is_none_or(|known| applied_at < known) {
                // Known, or placed earlier than before: flows first seen
                // in between were taken by nobody until now.
                *cut = Some(applied_at);
                changed = true;
            }
        }
        changed
    }

    /// Ends the draining buckets with no flow left here (`busy` holds the
    /// buckets that still have one), and, when `limit` is given as
    /// `(from, duration)`, those that drained for `duration` by `now`,
    /// counted from `from` for a bucket that drained already (a drain
    /// before `from` had no limit). Returns how many ended with flows still
    /// open (cut short by `limit`) and whether anything changed.
    pub fn drain(
        &mut self,
        busy: &BTreeSet<u32>,
        limit: Option<(u64, u64)>,
        now: u64,
    ) -> (usize, bool) {
        let (mut cut_short, mut changed) = (0, false);
        for (bucket, slot) in self.slots.iter_mut().enumerate() {
            let Slot::Draining { since, .. } = slot else {
                continue;
            };
            let open = busy.contains(&(bucket as u32));
            let expired = limit
                .is_some_and(|(from, duration)| now.saturating_sub((*since).max(from)) >= duration);
            if !open || expired {
                cut_short += usize::from(open);
                *slot = Slot::NotMine;
                changed = true;
            }
        }
        (cut_short, changed)
    }
}

/// The buckets of the UDP flows this node serves, from its flow table's
/// keys, by the first UDP rule naming each flow's VIP port.
pub fn busy_udp_buckets(flows: &[UdpFlowKey], rules: &[FarmRule]) -> BTreeSet<u32> {
    flows
        .iter()
        .filter_map(|flow| {
            let rule = rules.iter().find(|r| {
                r.proto == 17 && r.first_port <= flow.vip_port && flow.vip_port <= r.last_port
            })?;
            let port = (rule.filter == filter::SOURCE_PORT).then_some(flow.client_port);
            Some(bucket_of(&flow.client, port))
        })
        .collect()
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

    const SECOND: u64 = 1_000_000_000;

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn patient() -> Patience {
        Patience {
            agreement_waited: false,
            unknown_waited: false,
        }
    }

    fn peer(table: PeerTable, draining: bool) -> Option<PeerHandover> {
        Some(PeerHandover { table, draining })
    }

    #[test]
    fn a_joining_node_takes_buckets_as_incoming_and_the_old_owner_drains() {
        let alive = |_: &str| true;
        let mut a = Handover::new("a");
        let mut c = Handover::new("c");
        a.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 0);
        c.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 0);
        let owned_before = count(&a, |s| *s == Slot::Owned);
        assert!(owned_before > 1900, "a owns about half: {owned_before}");
        assert_eq!(
            count(&c, |s| *s != Slot::NotMine),
            0,
            "c is not a member yet"
        );

        // c applies the new table first (it joins), a one heartbeat later.
        let next = table(&[("a", 1), ("b", 1), ("c", 1)]);
        c.retable(next.clone(), &alive, &none(), SECOND);
        // a still shows the old table: c waits, taking no UDP flow.
        assert!(!c.confirm(&|_| peer(PeerTable::Other, false), patient(), SECOND));
        assert!(c.cuts().iter().all(|cut| *cut == CUT_UNKNOWN));
        a.retable(next.clone(), &alive, &none(), 2 * SECOND);
        let draining_to_c = count(&a, |s| matches!(s, Slot::Draining { to, .. } if to == "c"));
        let incoming_from_a = count(
            &c,
            |s| matches!(s, Slot::Incoming { from, .. } if from == "a"),
        );
        assert!(
            draining_to_c > 500,
            "a hands about a third of its buckets to c: {draining_to_c}"
        );
        assert_eq!(
            draining_to_c, incoming_from_a,
            "every bucket a drains, c receives from a"
        );
        assert!(a.draining());

        // a shows c's table and drains: c learns when a stopped taking new
        // UDP flows, and keeps the buckets incoming.
        let a_applied = PeerTable::Same {
            applied_at: 2 * SECOND,
        };
        assert!(c.confirm(&|_| peer(a_applied, true), patient(), 3 * SECOND));
        let cuts: Vec<u64> = c
            .slots()
            .iter()
            .filter(|s| matches!(s, Slot::Incoming { .. }))
            .map(Slot::cut)
            .collect();
        assert!(
            cuts.len() > 500 && cuts.iter().all(|cut| *cut == 2 * SECOND),
            "{cuts:?}"
        );

        // a has no flow left: its draining buckets end; then c owns them
        // outright once a stops reporting draining.
        let (cut_short, changed) = a.drain(&BTreeSet::new(), None, 3 * SECOND);
        assert!(changed && cut_short == 0);
        assert!(!a.draining());
        assert!(c.confirm(&|_| peer(a_applied, a.draining()), patient(), 4 * SECOND));
        assert_eq!(count(&c, |s| matches!(s, Slot::Incoming { .. })), 0);
    }

    /// The flake of `farm::long_lived` under load: a new owner that took
    /// its buckets as Owned after a fixed grace, before a slow old owner
    /// had even read the change, accepted (and reset) that owner's
    /// established connections.
    #[test]
    fn an_incoming_bucket_waits_for_its_old_owner_to_show_the_same_table() {
        let mut c = Handover::new("c");
        c.retable(table(&[("a", 1)]), &|_| true, &none(), 0);
        c.retable(table(&[("a", 1), ("c", 1)]), &|_| true, &none(), 0);
        let incoming = count(&c, |s| matches!(s, Slot::Incoming { .. }));
        assert!(incoming > 1000, "{incoming}");
        // a reports no draining, but from the old table: long after any
        // fixed grace, c still waits.
        for at in 1..9 {
            c.confirm(&|_| peer(PeerTable::Other, false), patient(), at * SECOND);
        }
        assert_eq!(count(&c, |s| matches!(s, Slot::Incoming { .. })), incoming);
        // Agreement that never comes (a partial partition) ends the wait.
        let waited = Patience {
            agreement_waited: true,
            unknown_waited: true,
        };
        assert!(c.confirm(&|_| peer(PeerTable::Other, false), waited, 10 * SECOND));
        assert_eq!(count(&c, |s| *s == Slot::Owned), incoming);
    }

    /// A bucket that moves again before its first handover ended (a join,
    /// then a new power): its newest owner waits for the first owner too,
    /// which still serves that bucket's old flows, not only for the owner
    /// of the table before.
    #[test]
    fn a_bucket_moved_twice_waits_for_every_earlier_owner() {
        let alive = |_: &str| true;
        let mut b = Handover::new("b");
        b.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 0);
        b.retable(
            table(&[("a", 1), ("b", 1), ("c", 1)]),
            &alive,
            &none(),
            SECOND,
        );
        let heavy = table(&[("a", 1), ("b", 3), ("c", 1)]);
        let moved: Vec<u16> = (0..BUCKETS as u16)
            .filter(|&x| {
                let join = table(&[("a", 1), ("b", 1), ("c", 1)]);
                table(&[("a", 1), ("b", 1)]).owner(x) == Some("a")
                    && join.owner(x) == Some("c")
                    && heavy.owner(x) == Some("b")
            })
            .collect();
        assert!(!moved.is_empty(), "some bucket goes a -> c -> b");
        b.retable(heavy, &alive, &none(), 2 * SECOND);
        let same = PeerTable::Same {
            applied_at: 2 * SECOND,
        };
        // c applied the table and drains nothing; a still drains (the
        // flows it kept since the join).
        let reports = |draining_a: bool| {
            move |name: &str| match name {
                "a" => peer(same, draining_a),
                _ => peer(same, false),
            }
        };
        b.confirm(&reports(true), patient(), 3 * SECOND);
        for x in &moved {
            // c serves nothing: only a's flows are left to a. b saw no
            // report between the join and now, so a's stop in the bucket
            // is known no earlier than its table of now (2 s).
            assert!(
                matches!(&b.slots()[*x as usize], Slot::Incoming { from, cut: Some(cut) } if from == "a" && *cut == 2 * SECOND),
                "bucket {x} stays incoming while a drains: {:?}",
                b.slots()[*x as usize]
            );
        }
        b.confirm(&reports(false), patient(), 4 * SECOND);
        assert!(moved.iter().all(|x| b.slots()[*x as usize] == Slot::Owned));
    }

    /// b's view of the buckets that go a -> c -> b: c joins a and b at
    /// 1 s (a applies that table at 1.5 s and keeps draining the flows it
    /// had there), then b's power goes up at 3 s. Returns b and the
    /// buckets, which are Incoming on b.
    fn moved_a_c_b() -> (Handover, Vec<u16>) {
        let alive = |_: &str| true;
        let two = table(&[("a", 1), ("b", 1)]);
        let join = table(&[("a", 1), ("b", 1), ("c", 1)]);
        let heavy = table(&[("a", 1), ("b", 3), ("c", 1)]);
        let moved: Vec<u16> = (0..BUCKETS as u16)
            .filter(|&x| {
                two.owner(x) == Some("a")
                    && join.owner(x) == Some("c")
                    && heavy.owner(x) == Some("b")
            })
            .collect();
        assert!(!moved.is_empty(), "some bucket goes a -> c -> b");
        let mut b = Handover::new("b");
        b.retable(two, &alive, &none(), 0);
        b.retable(join, &alive, &none(), SECOND);
        let joined = PeerTable::Same {
            applied_at: SECOND + SECOND / 2,
        };
        b.confirm(&|_| peer(joined, true), patient(), 2 * SECOND);
        b.retable(heavy, &alive, &none(), 3 * SECOND);
        (b, moved)
    }

    #[test]
    fn an_earlier_owner_still_draining_gives_the_cut_from_when_it_stopped_taking_new_flows() {
        // c applies the new table at 3 s and drains what it served there;
        // a, slower, has not read it yet.
        let (mut b, moved) = moved_a_c_b();
        let heavy_at = |at| PeerTable::Same { applied_at: at };
        let reports = |name: &str| match name {
            "c" => peer(heavy_at(3 * SECOND), true),
            _ => peer(PeerTable::Other, true),
        };
        b.confirm(&reports, patient(), 3 * SECOND + 1);
        for x in &moved {
            // The cut is when c stopped: a stopped taking new flows there
            // at 1.5 s already. Waiting for a to apply this table, b would
            // refuse the flows begun meanwhile, which nobody serves.
            assert_eq!(
                b.slots()[*x as usize],
                Slot::Incoming {
                    from: "c".to_owned(),
                    cut: Some(3 * SECOND)
                },
                "bucket {x}"
            );
        }
    }

    /// A bucket that moved a -> c -> b, when c stops serving it (its
    /// flows ended, or c of power 0 gave them up at drain_timeout) while a
    /// still drains it: the flows c took are b's at once. Kept at c's cut,
    /// b would leave them to a, which never served them, for as long as
    /// a's own old flows last.
    #[test]
    fn the_flows_of_an_owner_that_serves_no_more_go_to_the_new_owner_while_an_earlier_one_drains() {
        let (mut b, moved) = moved_a_c_b();
        let heavy_at = PeerTable::Same {
            applied_at: 3 * SECOND,
        };
        // Both drain: the cut is c's, the later of the two.
        b.confirm(&|_| peer(heavy_at, true), patient(), 4 * SECOND);
        for x in &moved {
            assert_eq!(
                b.slots()[*x as usize],
                Slot::Incoming {
                    from: "c".to_owned(),
                    cut: Some(3 * SECOND)
                },
                "bucket {x} while a and c drain"
            );
        }
        // c drains no more; a still does.
        let reports = |name: &str| peer(heavy_at, name == "a");
        assert!(b.confirm(&reports, patient(), 20 * SECOND));
        for x in &moved {
            assert_eq!(
                b.slots()[*x as usize],
                Slot::Incoming {
                    from: "a".to_owned(),
                    cut: Some(SECOND + SECOND / 2)
                },
                "bucket {x}: only a's old flows are a's"
            );
        }
        assert!(!b.confirm(&reports, patient(), 21 * SECOND), "settled");
        b.confirm(&|_| peer(heavy_at, false), patient(), 22 * SECOND);
        assert!(moved.iter().all(|x| b.slots()[*x as usize] == Slot::Owned));
    }

    /// The same, but c is only waited out: it shows another table (behind
    /// a partial partition, say) and may still own the bucket under it and
    /// serve its flows there. b keeps leaving those to c: the cut stays c's.
    #[test]
    fn an_owner_only_waited_out_keeps_its_flows_while_an_earlier_one_drains() {
        let (mut b, moved) = moved_a_c_b();
        let heavy_at = PeerTable::Same {
            applied_at: 3 * SECOND,
        };
        b.confirm(&|_| peer(heavy_at, true), patient(), 4 * SECOND);
        let waited = Patience {
            agreement_waited: true,
            unknown_waited: true,
        };
        for (table, at) in [(PeerTable::Other, 20), (PeerTable::Unknown, 21)] {
            let reports = |name: &str| match name {
                "a" => peer(heavy_at, true),
                _ => peer(table, false),
            };
            b.confirm(&reports, waited, at * SECOND);
            for x in &moved {
                assert_eq!(
                    b.slots()[*x as usize],
                    Slot::Incoming {
                        from: "c".to_owned(),
                        cut: Some(3 * SECOND)
                    },
                    "bucket {x}, c showing {table:?}"
                );
            }
        }
    }

    /// Nodes that start together, each first alone: each owned every
    /// bucket outright, so when they see each other, the buckets each
    /// keeps may still be served by the other (its new connections, its
    /// UDP flows, what it drains later). Kept as Owned, both took the same
    /// SYNs and datagrams until their tables agreed, and a connection one
    /// accepted was reset by the other.
    #[test]
    fn nodes_that_started_alone_take_the_buckets_they_keep_only_once_the_other_agrees() {
        let alive = |_: &str| true;
        let (mut a, mut b) = (Handover::new("a"), Handover::new("b"));
        a.retable(table(&[("a", 1)]), &alive, &none(), 0);
        b.retable(table(&[("b", 1)]), &alive, &none(), 0);
        assert_eq!(count(&a, |s| *s == Slot::Owned), BUCKETS as usize);

        // a sees b first; b still applies its table of itself alone.
        let both = table(&[("a", 1), ("b", 1)]);
        let b_alone = BTreeSet::from(["b".to_owned()]);
        a.retable(both.clone(), &alive, &b_alone, SECOND);
        let kept: Vec<usize> = (0..BUCKETS as usize)
            .filter(|x| both.owner(*x as u16) == Some("a"))
            .collect();
        assert!(kept.len() > 1900, "{}", kept.len());
        for x in &kept {
            assert_eq!(
                a.slots()[*x],
                Slot::Incoming {
                    from: "b".to_owned(),
                    cut: None
                },
                "bucket {x}: b may own it outright until it shows a's table"
            );
        }
        assert!(a.cuts().iter().all(|c| *c == CUT_UNKNOWN));
        assert!(!a.confirm(&|_| peer(PeerTable::Other, false), patient(), SECOND));

        // b applies the same table at 1.2 s and drains the buckets it gave
        // a: a takes new flows in them from then, and owns them outright
        // once b drains no more.
        b.retable(both.clone(), &alive, &none(), SECOND + SECOND / 5);
        assert!(b.draining());
        let b_applied = PeerTable::Same {
            applied_at: SECOND + SECOND / 5,
        };
        assert!(a.confirm(&|_| peer(b_applied, true), patient(), 2 * SECOND));
        assert!(kept
            .iter()
            .all(|x| a.slots()[*x].cut() == SECOND + SECOND / 5));
        b.drain(&BTreeSet::new(), None, 3 * SECOND);
        assert!(a.confirm(&|_| peer(b_applied, b.draining()), patient(), 3 * SECOND));
        assert!(kept.iter().all(|x| a.slots()[*x] == Slot::Owned));
    }

    /// A peer that went UP alone appears while a bucket is incoming here
    /// with its cut known: that peer may take the bucket's new flows too,
    /// so the bucket takes none until it shows this node's table.
    #[test]
    fn a_new_holder_makes_a_known_cut_unknown_again() {
        let alive = |_: &str| true;
        let mut c = Handover::new("c");
        c.retable(table(&[("a", 1)]), &alive, &none(), 0);
        c.retable(table(&[("a", 1), ("c", 1)]), &alive, &none(), SECOND);
        let a_applied = PeerTable::Same { applied_at: SECOND };
        c.confirm(&|_| peer(a_applied, true), patient(), 2 * SECOND);
        let incoming: Vec<usize> = (0..BUCKETS as usize)
            .filter(|x| matches!(c.slots()[*x], Slot::Incoming { cut: Some(_), .. }))
            .collect();
        assert!(!incoming.is_empty());
        let d_alone = BTreeSet::from(["d".to_owned()]);
        c.retable(
            table(&[("a", 1), ("c", 1), ("d", 1)]),
            &alive,
            &d_alone,
            3 * SECOND,
        );
        let still: Vec<&usize> = incoming
            .iter()
            .filter(|x| matches!(c.slots()[**x], Slot::Incoming { .. }))
            .collect();
        assert!(!still.is_empty());
        assert!(still.iter().all(|x| c.slots()[**x].cut() == CUT_UNKNOWN));
    }

    #[test]
    fn a_node_keeps_its_buckets_owned_when_no_peer_may_serve_them() {
        let alive = |_: &str| true;
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 0);
        let owned = count(&a, |s| *s == Slot::Owned);
        a.retable(
            table(&[("a", 1), ("b", 1), ("c", 1)]),
            &alive,
            &none(),
            SECOND,
        );
        let kept = count(&a, |s| *s == Slot::Owned);
        assert!(kept > owned / 2 && kept < owned, "{kept} of {owned}");
        assert_eq!(count(&a, |s| matches!(s, Slot::Incoming { .. })), 0);
    }

    /// A bucket that comes back while this node still drains it (a power
    /// raised again, a join undone) may hold the new connections the other
    /// node took meanwhile: taken as Owned, they were reset here.
    #[test]
    fn a_bucket_back_while_it_drains_waits_for_the_node_it_went_to() {
        let alive = |_: &str| true;
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 0);
        a.retable(table(&[("a", 1), ("b", 3)]), &alive, &none(), SECOND);
        let went: Vec<usize> = (0..BUCKETS as usize)
            .filter(|x| matches!(&a.slots()[*x], Slot::Draining { to, .. } if to == "b"))
            .collect();
        assert!(!went.is_empty());
        a.retable(table(&[("a", 1), ("b", 1)]), &alive, &none(), 2 * SECOND);
        for x in &went {
            assert_eq!(
                a.slots()[*x],
                Slot::Incoming {
                    from: "b".to_owned(),
                    cut: None
                },
                "bucket {x}"
            );
        }
        let b_back = PeerTable::Same {
            applied_at: 2 * SECOND,
        };
        assert!(a.confirm(&|_| peer(b_back, false), patient(), 3 * SECOND));
        assert!(went.iter().all(|x| a.slots()[*x] == Slot::Owned));
    }

    #[test]
    fn an_old_owner_that_announces_no_table_is_waited_for_a_grace() {
        let mut c = Handover::new("c");
        c.retable(table(&[("a", 1)]), &|_| true, &none(), 0);
        c.retable(table(&[("a", 1), ("c", 1)]), &|_| true, &none(), 0);
        let unknown = |_: &str| peer(PeerTable::Unknown, false);
        assert!(!c.confirm(&unknown, patient(), SECOND));
        let grace = Patience {
            agreement_waited: false,
            unknown_waited: true,
        };
        assert!(c.confirm(&unknown, grace, 2 * SECOND));
        assert_eq!(count(&c, |s| matches!(s, Slot::Incoming { .. })), 0);
    }

    #[test]
    fn an_old_owner_that_left_first_gives_the_cut_at_once() {
        // a leaves (a graceful stop): it applies the table without itself
        // and drains; c reads it from a's report and applies the same.
        let mut c = Handover::new("c");
        c.retable(table(&[("a", 1), ("c", 1)]), &|_| true, &none(), 0);
        c.retable(table(&[("c", 1)]), &|_| true, &none(), 5 * SECOND);
        let applied = PeerTable::Same {
            applied_at: 4 * SECOND,
        };
        assert!(c.confirm(&|_| peer(applied, true), patient(), 5 * SECOND));
        assert!(c
            .slots()
            .iter()
            .filter(|s| matches!(s, Slot::Incoming { .. }))
            .all(|s| s.cut() == 4 * SECOND));
        // The cut is never later than now, whatever the clocks say.
        let mut d = Handover::new("d");
        d.retable(table(&[("a", 1), ("d", 1)]), &|_| true, &none(), 0);
        d.retable(table(&[("d", 1)]), &|_| true, &none(), 5 * SECOND);
        let ahead = PeerTable::Same {
            applied_at: 9 * SECOND,
        };
        d.confirm(&|_| peer(ahead, true), patient(), 5 * SECOND);
        assert!(d
            .slots()
            .iter()
            .filter(|s| matches!(s, Slot::Incoming { .. }))
            .all(|s| s.cut() == 5 * SECOND));
    }

    #[test]
    fn a_cut_placed_earlier_by_a_later_heartbeat_moves_earlier_and_never_later() {
        // a leaves; c's first placement of a's change was late (a heartbeat
        // held up), the next one earlier, the one after later again.
        let mut c = Handover::new("c");
        c.retable(table(&[("a", 1), ("c", 1)]), &|_| true, &none(), 0);
        c.retable(table(&[("c", 1)]), &|_| true, &none(), 5 * SECOND);
        let incoming_cuts = |c: &Handover| -> BTreeSet<u64> {
            c.slots()
                .iter()
                .filter(|s| matches!(s, Slot::Incoming { .. }))
                .map(Slot::cut)
                .collect()
        };
        let placed = |at| PeerTable::Same { applied_at: at };
        assert!(c.confirm(&|_| peer(placed(4 * SECOND), true), patient(), 5 * SECOND));
        assert_eq!(incoming_cuts(&c), BTreeSet::from([4 * SECOND]));
        let earlier = 4 * SECOND - 3 * MS;
        assert!(
            c.confirm(&|_| peer(placed(earlier), true), patient(), 5 * SECOND),
            "an earlier placement changes the cut (FARM_CUTS is written again)"
        );
        assert_eq!(incoming_cuts(&c), BTreeSet::from([earlier]));
        assert!(!c.confirm(&|_| peer(placed(4 * SECOND), true), patient(), 6 * SECOND));
        assert_eq!(incoming_cuts(&c), BTreeSet::from([earlier]), "never later");
    }

    #[test]
    fn a_joining_node_waits_for_the_drains_it_did_not_see_before_owning_a_bucket() {
        // b handed a bucket to c before d came (b still serves a flow in
        // it); then d joins and that bucket comes to d from c. d never saw
        // b's handover: b reports draining, so every bucket d takes waits
        // for b too.
        let mut d = Handover::new("d");
        let three = table(&[("b", 1), ("c", 1), ("d", 1)]);
        d.retable(table(&[("b", 1), ("c", 1)]), &|_| true, &none(), 0);
        d.retable(three, &|_| true, &none(), SECOND);
        d.inherit_drains(&BTreeSet::from(["b".to_owned(), "d".to_owned()]), SECOND);
        let from_c: Vec<usize> = (0..BUCKETS as usize)
            .filter(|x| matches!(&d.slots()[*x], Slot::Incoming { from, .. } if from == "c"))
            .collect();
        assert!(!from_c.is_empty());
        let applied = PeerTable::Same {
            applied_at: 2 * SECOND,
        };
        // c shows d's table and drains no more; b shows it and still drains.
        // The flows c took are d's; b stopped taking new flows no later
        // than when d saw it draining.
        let views = |name: &str| peer(applied, name == "b");
        d.confirm(&views, patient(), 3 * SECOND);
        for x in &from_c {
            assert_eq!(
                d.slots()[*x],
                Slot::Incoming {
                    from: "b".to_owned(),
                    cut: Some(SECOND)
                },
                "bucket {x}: owned while b may still serve flows in it"
            );
        }
        // b's drain ends: d owns them outright.
        d.confirm(&|_| peer(applied, false), patient(), 4 * SECOND);
        for x in &from_c {
            assert_eq!(d.slots()[*x], Slot::Owned, "bucket {x}");
        }
    }

    #[test]
    fn buckets_of_a_dead_node_move_at_once() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true, &none(), 0);
        a.retable(table(&[("a", 1)]), &|peer| peer != "b", &none(), 0);
        assert_eq!(
            count(&a, |s| *s == Slot::Owned),
            BUCKETS as usize,
            "the survivor owns every bucket, not incoming"
        );
    }

    /// A bucket that moved from a to c (a still draining it) when c dies
    /// and it comes to b: b takes its new flows at once (a stopped taking
    /// them at the move) and leaves a its old flows until a drains no more.
    #[test]
    fn a_dead_nodes_bucket_still_drained_by_an_earlier_owner_takes_new_flows_at_once() {
        let two = table(&[("a", 1), ("b", 1)]);
        let join = table(&[("a", 1), ("b", 1), ("c", 1)]);
        let after = table(&[("a", 1), ("b", 3)]);
        let moved: Vec<usize> = (0..BUCKETS as usize)
            .filter(|x| {
                let x = *x as u16;
                two.owner(x) == Some("a")
                    && join.owner(x) == Some("c")
                    && after.owner(x) == Some("b")
            })
            .collect();
        assert!(!moved.is_empty(), "some bucket goes a -> c -> b");
        let mut b = Handover::new("b");
        b.retable(two, &|_| true, &none(), 0);
        b.retable(join, &|_| true, &none(), SECOND);
        // a applied the join at 1.5 s and drains what it gave c.
        let joined = PeerTable::Same {
            applied_at: SECOND + SECOND / 2,
        };
        b.confirm(&|_| peer(joined, true), patient(), 2 * SECOND);
        // c dies (and b's power goes up).
        b.retable(after, &|n| n != "c", &none(), 3 * SECOND);
        for x in &moved {
            assert_eq!(
                b.slots()[*x],
                Slot::Incoming {
                    from: "a".to_owned(),
                    cut: Some(SECOND + SECOND / 2)
                },
                "bucket {x}: a still drains it, and stopped taking new flows at the join"
            );
        }
        let done = PeerTable::Same {
            applied_at: 3 * SECOND,
        };
        b.confirm(&|_| peer(done, false), patient(), 4 * SECOND);
        assert!(moved.iter().all(|x| b.slots()[*x] == Slot::Owned));
    }

    #[test]
    fn a_busy_draining_bucket_keeps_draining() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true, &none(), 0);
        a.retable(table(&[("b", 1)]), &|_| true, &none(), 0);
        let draining: Vec<u32> = (0..BUCKETS)
            .filter(|b| matches!(a.slots()[*b as usize], Slot::Draining { .. }))
            .collect();
        let busy = BTreeSet::from([draining[0]]);
        a.drain(&busy, None, 3600 * SECOND);
        assert_eq!(count(&a, |s| matches!(s, Slot::Draining { .. })), 1);
    }

    #[test]
    fn a_node_of_power_0_gives_up_its_busy_buckets_at_the_limit() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true, &none(), 0);
        a.retable(table(&[("a", 0), ("b", 1)]), &|_| true, &none(), SECOND);
        let draining: BTreeSet<u32> = (0..BUCKETS)
            .filter(|b| matches!(a.slots()[*b as usize], Slot::Draining { .. }))
            .collect();
        let limit = Some((SECOND, 30 * SECOND));
        assert_eq!(a.drain(&draining, limit, 30 * SECOND), (0, false));
        assert!(a.draining());
        let (cut_short, changed) = a.drain(&draining, limit, 31 * SECOND);
        assert!(changed && cut_short == draining.len());
        assert!(!a.draining());
        // A later table change does not restart a bucket's drain.
        let mut b = Handover::new("a");
        b.retable(table(&[("a", 1), ("b", 1)]), &|_| true, &none(), 0);
        b.retable(table(&[("a", 0), ("b", 1)]), &|_| true, &none(), SECOND);
        b.retable(
            table(&[("a", 0), ("b", 1), ("c", 0)]),
            &|_| true,
            &none(),
            20 * SECOND,
        );
        assert_eq!(b.drain(&draining, limit, 31 * SECOND).0, draining.len());
    }

    /// A bucket that drained without a limit since a join (its flows are
    /// long-lived) gets the whole `drain_timeout` from the moment its node's
    /// power goes to 0, not what is left of it counted from the join.
    #[test]
    fn the_limit_of_power_0_counts_from_the_power_change() {
        let mut a = Handover::new("a");
        a.retable(table(&[("a", 1), ("b", 1)]), &|_| true, &none(), 0);
        a.retable(
            table(&[("a", 1), ("b", 1), ("c", 1)]),
            &|_| true,
            &none(),
            SECOND,
        );
        let to_c: BTreeSet<u32> = (0..BUCKETS)
            .filter(|b| matches!(&a.slots()[*b as usize], Slot::Draining { to, .. } if to == "c"))
            .collect();
        assert!(!to_c.is_empty());
        a.retable(
            table(&[("a", 0), ("b", 1), ("c", 1)]),
            &|_| true,
            &none(),
            100 * SECOND,
        );
        let limit = Some((100 * SECOND, 30 * SECOND));
        let (cut_short, _) = a.drain(&to_c, limit, 101 * SECOND);
        assert_eq!(cut_short, 0, "the drain since the join is not over");
        assert_eq!(a.drain(&to_c, limit, 130 * SECOND).0, to_c.len());
    }

    #[test]
    fn served_udp_flows_give_their_buckets_by_the_rule_of_their_port() {
        let rules = [
            FarmRule {
                proto: 17,
                filter: filter::SOURCE_PORT,
                first_port: 53,
                last_port: 53,
                _pad: 0,
            },
            FarmRule {
                proto: 17,
                filter: filter::SOURCE_ADDR,
                first_port: 5000,
                last_port: 5100,
                _pad: 0,
            },
        ];
        let client = VipKey::v4([10, 0, 0, 7]).addr;
        let flow = |client_port, vip_port| UdpFlowKey {
            client,
            client_port,
            vip_port,
            _pad: 0,
        };
        let busy = busy_udp_buckets(&[flow(4000, 53), flow(4001, 5050), flow(4002, 9)], &rules);
        assert_eq!(
            busy,
            BTreeSet::from([bucket_of(&client, Some(4000)), bucket_of(&client, None)])
        );
    }

    /// One node's flow table as the ingress program keeps it.
    #[derive(Default)]
    struct FlowTable(std::collections::HashMap<u32, halo_common::farm::UdpFlow>);

    impl FlowTable {
        fn datagram(&mut self, flow: u32, state: BucketState, now: u64, cut: u64) -> bool {
            let (keep, write) = udp_decision(state, self.0.get(&flow), now, IDLE, cut);
            if let Some(write) = write {
                self.0.insert(flow, write);
            }
            keep
        }
    }

    const MS: u64 = 1_000_000;
    const IDLE: u64 = 3 * SECOND;

    /// One bucket moving from a to b, as both nodes see it: a's state, b's
    /// state and b's cut at each time.
    struct Move {
        a: Vec<(u64, BucketState)>,
        b: Vec<(u64, BucketState, u64)>,
    }

    fn at<T: Copy>(steps: &[(u64, T)], now: u64) -> T {
        steps.iter().rev().find(|(t, _)| *t <= now).unwrap().1
    }

    /// Flows start at `starts` (ms) and send a datagram every 50 ms until
    /// 6 s; returns, per flow, the datagrams taken by a, by b, by both and
    /// by neither, and the time of the last one neither took.
    fn replay(m: &Move, starts: &[u64]) -> Vec<(u32, u32, u32, u32, u64)> {
        let (mut a, mut b) = (FlowTable::default(), FlowTable::default());
        let mut out = vec![(0, 0, 0, 0, 0); starts.len()];
        for now in (0..6000).step_by(50).map(|ms| ms * MS) {
            for (flow, start) in starts.iter().enumerate() {
                if now < start * MS {
                    continue;
                }
                let a_state = at(&m.a, now);
                let b_steps: Vec<(u64, (BucketState, u64))> =
                    m.b.iter().map(|(t, s, c)| (*t, (*s, *c))).collect();
                let (b_state, cut) = at(&b_steps, now);
                let by_a = a.datagram(flow as u32, a_state, now, CUT_UNKNOWN);
                let by_b = b.datagram(flow as u32, b_state, now, cut);
                let o = &mut out[flow];
                match (by_a, by_b) {
                    (true, false) => o.0 += 1,
                    (false, true) => o.1 += 1,
                    (true, true) => o.2 += 1,
                    (false, false) => {
                        o.3 += 1;
                        o.4 = now;
                    }
                }
            }
        }
        out
    }

    use halo_common::farm::{udp_decision, BucketState::*};

    /// The program's shortcut for a datagram of a flow it serves in an
    /// owned bucket, on the coarse clock, agrees with the full decision at
    /// every precise time the coarse reading may stand for, is taken for a
    /// flow refreshed recently enough, and in no other state.
    #[test]
    fn the_coarse_clock_shortcut_agrees_with_the_udp_decision() {
        use halo_common::farm::{udp_owned_unchanged, UdpFlow, COARSE_LAG_NS, UDP_REFRESH_NS};
        let mut taken = 0;
        for state in [Owned, NotMine, Draining, Incoming] {
            for idle in [50 * MS, UDP_REFRESH_NS, 30 * SECOND] {
                for mine in [0, 1] {
                    for last_seen in [0, 5 * SECOND] {
                        let entry = UdpFlow {
                            first_seen: last_seen.saturating_sub(SECOND),
                            last_seen,
                            mine,
                            _pad: 0,
                        };
                        // Coarse readings from before the entry was written
                        // (the precise clock wrote it) to well past refresh.
                        for step in 0..400u64 {
                            let coarse = (last_seen + step * MS / 2).saturating_sub(30 * MS);
                            if !udp_owned_unchanged(state, &entry, coarse, idle) {
                                continue;
                            }
                            taken += 1;
                            for lag in [0, 1, COARSE_LAG_NS / 2, COARSE_LAG_NS] {
                                let precise = (coarse + lag).max(last_seen);
                                // Any cut: the shortcut must not depend on it.
                                for cut in [0, precise, CUT_UNKNOWN] {
                                    assert_eq!(
                                        udp_decision(state, Some(&entry), precise, idle, cut),
                                        (true, None),
                                        "{state:?} {entry:?} coarse {coarse} precise {precise} \
                                         idle {idle} cut {cut}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(taken > 100, "the shortcut is taken: {taken}");
        let served = UdpFlow {
            first_seen: 0,
            last_seen: SECOND,
            mine: 1,
            _pad: 0,
        };
        let idle = 30 * SECOND;
        assert!(udp_owned_unchanged(Owned, &served, SECOND + 50 * MS, idle));
        assert!(!udp_owned_unchanged(Owned, &served, SECOND + 90 * MS, idle));
        assert!(!udp_owned_unchanged(
            Owned,
            &UdpFlow { mine: 0, ..served },
            SECOND,
            idle
        ));
        for state in [NotMine, Draining, Incoming] {
            assert!(
                !udp_owned_unchanged(state, &served, SECOND, idle),
                "{state:?}"
            );
        }
    }

    #[test]
    fn udp_flows_keep_their_node_when_the_new_owner_changes_first() {
        // A join: b applies the table at 1 s, a at 1.2 s; b reads a's
        // report at 1.4 s (cut 1.2 s, minus the margin).
        let m = Move {
            a: vec![(0, Owned), (1200 * MS, Draining)],
            b: vec![
                (0, NotMine, CUT_UNKNOWN),
                (1000 * MS, Incoming, CUT_UNKNOWN),
                (1400 * MS, Incoming, 1198 * MS),
            ],
        };
        let flows = replay(&m, &[0, 1100, 1300, 1500]);
        let [old, early, between, new] = flows[..] else {
            unreachable!()
        };
        assert_eq!(
            (old.1, old.2, old.3),
            (0, 0, 0),
            "an established flow stays on a: {old:?}"
        );
        assert_eq!(
            (early.1, early.2, early.3),
            (0, 0, 0),
            "a took it as owner: {early:?}"
        );
        assert_eq!(
            between.0 + between.2,
            0,
            "a never takes a flow begun after its cut: {between:?}"
        );
        assert!(
            between.3 <= 3 && between.4 < 1400 * MS,
            "a flow begun between a's change and b's news is lost only until b knows the cut: {between:?}"
        );
        assert_eq!(
            (new.0, new.2, new.3),
            (0, 0, 0),
            "a new flow is b's: {new:?}"
        );
    }

    #[test]
    fn udp_flows_keep_their_node_when_the_old_owner_changes_first() {
        // A graceful leave: a applies the table at 1 s, b reads it at
        // 1.2 s and knows the cut at once.
        let m = Move {
            a: vec![(0, Owned), (1000 * MS, Draining)],
            b: vec![(0, NotMine, CUT_UNKNOWN), (1200 * MS, Incoming, 998 * MS)],
        };
        let flows = replay(&m, &[0, 1100, 1300]);
        let [old, between, new] = flows[..] else {
            unreachable!()
        };
        assert_eq!((old.1, old.2, old.3), (0, 0, 0), "{old:?}");
        assert_eq!(between.0 + between.2, 0, "{between:?}");
        assert!(between.3 <= 2 && between.4 < 1200 * MS, "{between:?}");
        assert_eq!((new.0, new.2, new.3), (0, 0, 0), "{new:?}");
    }

    #[test]
    fn a_udp_flow_idle_beyond_udp_idle_moves_to_the_new_owner() {
        let (mut a, mut b) = (FlowTable::default(), FlowTable::default());
        assert!(a.datagram(1, Owned, 0, CUT_UNKNOWN));
        assert!(!b.datagram(1, NotMine, 0, CUT_UNKNOWN));
        // Within udp_idle, during the handover: still a's.
        assert!(a.datagram(1, Draining, 2 * SECOND, CUT_UNKNOWN));
        assert!(!b.datagram(1, Incoming, 2 * SECOND, SECOND));
        // Quiet longer than udp_idle (and the old owner's margin): b's.
        let later = 2 * SECOND + IDLE + 200 * MS;
        assert!(!a.datagram(1, Draining, later, CUT_UNKNOWN));
        assert!(b.datagram(1, Incoming, later, SECOND));
        assert!(!a.datagram(1, Draining, later + 50 * MS, CUT_UNKNOWN));
        assert!(b.datagram(1, Incoming, later + 50 * MS, SECOND));
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
