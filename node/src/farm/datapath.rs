//! The farm module's data path on this node, as the module driver performs
//! it: VIPs bound on the interface, the XDP filter attached and configured,
//! the bucket table written, gratuitous announcements sent, and handovers
//! settled as connections end.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::xdp::XdpMode;
use halo_common::farm::{filter, BucketState, FarmRule, CUT_UNKNOWN, UDP_KEEP_MARGIN_NS};

use super::{
    buckets::BucketTable,
    handover::{Handover, Patience, PeerHandover, PeerTable},
};
use crate::{
    config::{self, FarmModule, Filter, Proto},
    ebpf::farm::{monotonic_ns, wall_ns, FarmIngress},
    net,
};

/// The data path of one farm module: inactive until [`claim`](Self::claim).
pub struct FarmDataPath {
    module: FarmModule,
    rules: Vec<FarmRule>,
    handover: Handover,
    ingress: Option<FarmIngress>,
    /// The table this node applies: its fingerprint (announced to peers),
    /// since when this node's power is 0, and when it was applied (for
    /// patience) and went live (announced).
    applied: Option<Applied>,
}

/// What a peer's heartbeat announces of its table: another node's
/// [`FarmDataPath::announcement`] and draining flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAnnouncement {
    /// Its table's fingerprint (0: none announced).
    pub fingerprint: u64,
    /// When that table took effect on it.
    pub applied: PeerInstant,
    /// It still drains buckets it handed over.
    pub draining: bool,
}

/// When a peer's table took effect, as its heartbeat tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerInstant {
    /// On this node's CLOCK_MONOTONIC (ns), placed from the age the
    /// heartbeat carries (cluster::instant): late by the frame's transit,
    /// whatever the two hosts' clocks say.
    Here(u64),
    /// On the wall clock (ns), as daemons from before cluster::instant
    /// announce it: as good as the two hosts' wall clocks agree.
    Wall(u64),
}

#[derive(Debug, Clone, Copy)]
struct Applied {
    fingerprint: u64,
    /// Since when (CLOCK_MONOTONIC ns) this node's power is 0, if it is.
    zero_since: Option<u64>,
    at: tokio::time::Instant,
    /// When the table went live (CLOCK_MONOTONIC ns), announced.
    live_ns: u64,
}

/// How long after a table change an Incoming bucket whose old owner
/// announces no table stays Incoming though that owner does not report
/// draining: that report comes one heartbeat after the old owner read the
/// change, itself one heartbeat after this node made it. Taking the bucket
/// as Owned before would accept the old owner's established connections
/// here and reset them. Owners that announce their table are waited for
/// until they show this node's ([`AGREEMENT_WAIT`]).
const INCOMING_GRACE: Duration = Duration::from_secs(2);

/// The longest an Incoming bucket waits for its old owner to show the same
/// table as this node: the nodes agree one heartbeat after a change unless
/// they do not see the same members (a partial partition), and then no
/// handover can be agreed on anyway.
const AGREEMENT_WAIT: Duration = Duration::from_secs(10);

/// How much earlier than this node places it an old owner's table change
/// is taken to be. The placement (cluster::instant) is late by the
/// heartbeat's transit, from the old owner's clock reading to the kernel's
/// receive stamp here, and the two filters see a datagram at slightly
/// different moments. A cut too late would leave a UDP flow that began just
/// after the change served by nobody (until a faster heartbeat places the
/// change earlier: the cut then moves earlier, handover::Handover::confirm);
/// too early, it makes a flow that began in the margin before the change
/// served twice, for as long as the flow lasts. 0.5 ms is several times
/// the transit measured in the lab (41–216 µs).
const CUT_MARGIN_NS: u64 = 500_000;

/// [`CUT_MARGIN_NS`] for a peer that announces its change on the wall
/// clock ([`PeerInstant::Wall`]): the two hosts' wall clocks disagree too.
const WALL_CUT_MARGIN_NS: u64 = 2_000_000;

impl FarmDataPath {
    pub fn new(module: FarmModule, node: &str) -> Self {
        let rules = module.rules.iter().map(rule).collect();
        FarmDataPath {
            module,
            rules,
            handover: Handover::new(node),
            ingress: None,
            applied: None,
        }
    }

    /// Attaches the filter (owning no bucket yet), binds the VIPs and
    /// announces them with their virtual MACs.
    pub async fn claim(&mut self) -> anyhow::Result<()> {
        let iface = self.module.interface.clone();
        let mode = match self.module.xdp_mode {
            config::XdpMode::Native => XdpMode::Driver,
            config::XdpMode::Generic => XdpMode::Skb,
        };
        keep_kernel_out_of_vip_layer2(&iface)?;
        let mut ingress = FarmIngress::attach(&iface, mode)?;
        let own_mac = net::interface_mac(&iface)?;
        let vips: Vec<(IpAddr, [u8; 6])> = self
            .module
            .vips
            .iter()
            .map(|vip| (*vip, net::virtual_mac(*vip)))
            .collect();
        ingress.configure(own_mac, &vips, &self.rules, self.module.udp_idle)?;
        ingress.set_buckets(&self.handover.states())?;
        self.ingress = Some(ingress);
        for (vip, vmac) in vips {
            net::claim(VIP_DEVICE, vip)
                .await
                .with_context(|| format!("binding VIP {vip} on {VIP_DEVICE}"))?;
            // Clients that cached another MAC for the VIP learn the virtual one.
            net::announce(&iface, vip, vmac, 2)
                .with_context(|| format!("announcing VIP {vip} on {iface}"))?;
        }
        Ok(())
    }

    /// Unbinds the VIPs and detaches the filter.
    pub async fn release(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for vip in self.module.vips.clone() {
            if let Err(error) = net::release(VIP_DEVICE, vip).await {
                first_error.get_or_insert(anyhow::Error::from(error));
            }
        }
        self.ingress = None;
        self.applied = None;
        self.handover = Handover::new(self.handover_node());
        first_error.map_or(Ok(()), Err)
    }

    fn handover_node(&self) -> &str {
        self.handover.me()
    }

    /// Writes the table of a new membership, with handover states for the
    /// buckets that move between live nodes; `peers` holds what each peer
    /// announces of its own table.
    pub fn set_members(
        &mut self,
        members: &BTreeMap<String, u32>,
        alive: &dyn Fn(&str) -> bool,
        peers: &BTreeMap<String, PeerAnnouncement>,
    ) -> anyhow::Result<()> {
        let now = monotonic_ns();
        let first = self.handover.table().is_none();
        if first {
            // A node joining a running farm takes its buckets from their
            // current owners: the table without it is the one they serve.
            let mut before = members.clone();
            before.remove(self.handover.me());
            self.handover
                .retable(BucketTable::compute(&before)?, alive, &BTreeSet::new(), now);
        }
        let table = BucketTable::compute(members)?;
        let holders = holders(
            peers,
            self.applied.map(|a| a.fingerprint),
            fingerprint(members),
            alive,
        );
        self.handover.retable(table, alive, &holders, now);
        if first {
            let draining: BTreeSet<String> = peers
                .iter()
                .filter(|(name, peer)| peer.draining && alive(name))
                .map(|(name, _)| name.clone())
                .collect();
            self.handover.inherit_drains(&draining, now);
        }
        let power = members.get(self.handover.me()).copied();
        let was_zero = self.applied.and_then(|a| a.zero_since);
        self.applied = Some(Applied {
            fingerprint: fingerprint(members),
            zero_since: (power == Some(0)).then(|| was_zero.unwrap_or(now)),
            at: tokio::time::Instant::now(),
            live_ns: 0,
        });
        // An old owner that changed first (a graceful leave, a lower power)
        // already shows this table: its cut is known now, not at the next
        // settle.
        let views = self.peer_handovers(peers);
        self.handover
            .confirm(&|peer| views.get(peer).copied(), self.patience(), now);
        self.write()?;
        // The table is live from the program's flip, at the end of the
        // write (thousands of map updates): announced earlier, a new owner
        // would take the flows that began in between, which this node
        // still took as their owner.
        if let Some(applied) = &mut self.applied {
            applied.live_ns = monotonic_ns();
        }
        let states = self.handover.states();
        let count = |state| states.iter().filter(|s| **s == state).count();
        let members: Vec<String> = members.iter().map(|(n, p)| format!("{n}={p}")).collect();
        // `holders`: peers whose table this node does not know, or that
        // drain, so that the buckets this node keeps wait for them too;
        // `at_ns`: when the table went live (CLOCK_MONOTONIC).
        tracing::info!(
            module = %self.module.name,
            members = %members.join(","),
            owned = count(BucketState::Owned),
            incoming = count(BucketState::Incoming),
            draining = count(BucketState::Draining),
            holders = ?holders,
            at_ns = self.applied.map_or(0, |a| a.live_ns),
            "bucket table applied"
        );
        Ok(())
    }

    /// What this node announces of its table in its heartbeat: the table's
    /// fingerprint and when it went live (CLOCK_MONOTONIC ns), if it has one.
    pub fn announcement(&self) -> Option<(u64, u64)> {
        match (&self.ingress, &self.applied) {
            // Not live yet (its write failed): no instant to announce.
            (Some(_), Some(applied)) if applied.live_ns != 0 => {
                Some((applied.fingerprint, applied.live_ns))
            }
            _ => None,
        }
    }

    /// The peers' handovers, from what they announce.
    fn peer_handovers(
        &self,
        peers: &BTreeMap<String, PeerAnnouncement>,
    ) -> BTreeMap<String, PeerHandover> {
        let (mono, wall) = (monotonic_ns(), wall_ns());
        peers
            .iter()
            .map(|(name, peer)| {
                let table = match &self.applied {
                    _ if peer.fingerprint == 0 => PeerTable::Unknown,
                    Some(mine) if mine.fingerprint == peer.fingerprint => {
                        let applied_at = match peer.applied {
                            PeerInstant::Here(at) => at.saturating_sub(CUT_MARGIN_NS),
                            PeerInstant::Wall(at) => {
                                let ago = wall.saturating_sub(at);
                                mono.saturating_sub(ago.saturating_add(WALL_CUT_MARGIN_NS))
                            }
                        };
                        PeerTable::Same { applied_at }
                    }
                    _ => PeerTable::Other,
                };
                let handover = PeerHandover {
                    table,
                    draining: peer.draining,
                };
                (name.clone(), handover)
            })
            .collect()
    }

    fn patience(&self) -> Patience {
        let waited = |limit| self.applied.is_none_or(|a| a.at.elapsed() >= limit);
        Patience {
            agreement_waited: waited(AGREEMENT_WAIT),
            unknown_waited: waited(INCOMING_GRACE),
        }
    }

    /// Whether some bucket waits for its old owner (settle on its news).
    pub fn incoming(&self) -> bool {
        self.handover.incoming()
    }

    /// Ends the handovers that are over; `peers` holds what each peer
    /// announces. Returns how many draining buckets this node gave up with
    /// flows still open (power 0, `drain_timeout`).
    pub fn settle(&mut self, peers: &BTreeMap<String, PeerAnnouncement>) -> anyhow::Result<usize> {
        if self.ingress.is_none() {
            return Ok(0);
        }
        let now = monotonic_ns();
        let views = self.peer_handovers(peers);
        let mut changed =
            self.handover
                .confirm(&|peer| views.get(peer).copied(), self.patience(), now);
        let mut cut_short = 0;
        if self.handover.draining() {
            let busy = self.busy_buckets(now)?;
            // A node of power 0 stays UP but is given no flow: the flows it
            // still serves leave it at `drain_timeout`, as at a graceful
            // leave, instead of holding it (and the new owners' buckets
            // Incoming) for as long as a client keeps them.
            let limit = self
                .applied
                .and_then(|a| a.zero_since)
                .map(|from| (from, self.module.drain_timeout.as_nanos() as u64));
            let (short, drained) = self.handover.drain(&busy, limit, now);
            cut_short = short;
            changed |= drained;
        }
        if changed {
            self.write()?;
        }
        Ok(cut_short)
    }

    /// The buckets with a TCP connection or a fresh UDP flow this node
    /// serves.
    fn busy_buckets(&self, now: u64) -> anyhow::Result<std::collections::BTreeSet<u32>> {
        let tables = [
            std::fs::read_to_string("/proc/net/tcp").unwrap_or_default(),
            std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default(),
        ];
        let mut busy = super::handover::busy_tcp_buckets(
            &[&tables[0], &tables[1]],
            &self.module.vips,
            &self.rules,
        );
        if let Some(ingress) = &self.ingress {
            // As long as the program keeps them (common::farm::udp_decision).
            let within =
                (self.module.udp_idle.as_nanos() as u64).saturating_add(UDP_KEEP_MARGIN_NS);
            let flows = ingress
                .udp_flows_served(now, within)
                .context("reading the UDP flow table")?;
            busy.extend(super::handover::busy_udp_buckets(&flows, &self.rules));
        }
        Ok(busy)
    }

    /// Whether this node still drains buckets it handed over.
    pub fn draining(&self) -> bool {
        self.handover.draining()
    }

    /// The current bucket table.
    pub fn table(&self) -> Option<&BucketTable> {
        self.handover.table()
    }

    /// The attached filter, for its counters.
    pub fn ingress(&self) -> Option<&FarmIngress> {
        self.ingress.as_ref()
    }

    /// The filter's counters, if it is attached.
    pub fn counters(&self) -> anyhow::Result<Option<super::FarmCounters>> {
        let Some(ingress) = &self.ingress else {
            return Ok(None);
        };
        let (verdicts, buckets) = ingress.counters()?;
        let verdicts = verdicts
            .into_iter()
            .map(|(verdict, n)| (verdict.name().to_owned(), n))
            .collect();
        let buckets = buckets
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(bucket, n)| (bucket as u16, n))
            .collect();
        Ok(Some(super::FarmCounters { verdicts, buckets }))
    }

    fn write(&mut self) -> anyhow::Result<()> {
        let states = self.handover.states();
        let count = |state| states.iter().filter(|s| **s == state).count();
        tracing::debug!(
            module = %self.module.name,
            owned = count(BucketState::Owned),
            incoming = count(BucketState::Incoming),
            draining = count(BucketState::Draining),
            cuts = self.handover.cuts().iter().filter(|c| **c != CUT_UNKNOWN).count(),
            now = monotonic_ns(),
            table = self.applied.map_or(0, |a| a.fingerprint),
            "bucket states written"
        );
        if let Some(ingress) = &mut self.ingress {
            ingress.set_buckets_with_cuts(&self.handover.states(), &self.handover.cuts())?;
        }
        Ok(())
    }
}

/// The live peers that may serve buckets this node keeps when it moves
/// from the table `old` (fingerprint; `None`: it had none) to `new`:
/// those that announce a table that is neither (nodes that went UP each
/// from its own partial view may own any bucket outright), and those
/// that apply `new` already and drain (they may have come to it from such
/// a table; the heartbeat says whether a node drains, not which buckets).
/// A peer that applied `old` agreed that the buckets this node keeps were
/// this node's, and what it still drains from before is known here (the
/// handover's earlier owners); a peer that announces no table applies
/// none and serves no bucket.
pub fn holders(
    peers: &BTreeMap<String, PeerAnnouncement>,
    old: Option<u64>,
    new: u64,
    alive: &dyn Fn(&str) -> bool,
) -> BTreeSet<String> {
    peers
        .iter()
        .filter(|(name, peer)| {
            alive(name)
                && match peer.fingerprint {
                    0 => false,
                    f if f == new => peer.draining,
                    f if Some(f) == old => false,
                    _ => true,
                }
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A membership's fingerprint, the same on every node that computes its
/// table from the same members and powers; never 0 (which announces no
/// table).
pub fn fingerprint(members: &BTreeMap<String, u32>) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for (name, power) in members {
        hasher.update(&(name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&power.to_be_bytes());
    }
    let digest = hasher.finalize();
    let bytes: [u8; 8] = digest.as_bytes()[..8].try_into().expect("8 bytes");
    u64::from_be_bytes(bytes) | 1
}

/// Where the VIPs are bound: on `lo`, as LVS direct routing does, for
/// both families. A VIP on `lo` is still a local address that accepts
/// packets from any interface, but the kernel never answers ARP or neighbour
/// solicitations for it on the farm interface (`arp_ignore = 1`; ND checks
/// the receiving interface), and its own solicitations carry the interface's
/// address: otherwise a node would teach clients its own MAC for the VIP,
/// whenever its daemon is not there to filter (a crash detaches the XDP
/// program) and, for IPv6, whenever it looks up a client's MAC (IPv6 has no
/// `arp_announce`). Frames sent to the virtual MAC are not for this host
/// without the filter's rewrite, so a node whose daemon died takes no VIP
/// traffic at all.
pub const VIP_DEVICE: &str = "lo";

/// Keeps the kernel out of the VIP's layer 2 on `iface`: its ARP requests
/// carry the interface's address, never a VIP (`arp_announce = 2`), and it
/// answers ARP only for addresses on the interface itself (`arp_ignore = 1`),
/// which the VIPs, bound on `lo`, are not.
fn keep_kernel_out_of_vip_layer2(iface: &str) -> anyhow::Result<()> {
    for (key, value) in [("arp_announce", "2"), ("arp_ignore", "1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
        std::fs::write(&path, value).with_context(|| format!("setting {path} to {value}"))?;
    }
    Ok(())
}

fn rule(rule: &config::Rule) -> FarmRule {
    let (first_port, last_port) = rule.port.map_or((0, u16::MAX), |p| (p.first, p.last));
    FarmRule {
        proto: match rule.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        },
        filter: match rule.filter {
            Filter::SourceAddr => filter::SOURCE_ADDR,
            Filter::SourcePort => filter::SOURCE_PORT,
        },
        first_port,
        last_port,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcing(fingerprint: u64, draining: bool) -> PeerAnnouncement {
        PeerAnnouncement {
            fingerprint,
            applied: PeerInstant::Here(0),
            draining,
        }
    }

    #[test]
    fn peers_may_serve_kept_buckets_only_from_an_unknown_table_or_a_drain() {
        let (old, new, other) = (11, 13, 17);
        let peers = BTreeMap::from([
            ("agrees-before".to_owned(), announcing(old, false)),
            ("drains-from-before".to_owned(), announcing(old, true)),
            ("agrees-after".to_owned(), announcing(new, false)),
            ("alone".to_owned(), announcing(other, false)),
            ("draining".to_owned(), announcing(new, true)),
            ("no-table".to_owned(), announcing(0, true)),
            ("dead".to_owned(), announcing(other, true)),
        ]);
        let alive = |name: &str| name != "dead";
        assert_eq!(
            holders(&peers, Some(old), new, &alive),
            BTreeSet::from(["alone".to_owned(), "draining".to_owned()])
        );
        // A node's first table: any table announced is another's.
        assert_eq!(
            holders(&peers, None, new, &alive),
            BTreeSet::from([
                "agrees-before".to_owned(),
                "alone".to_owned(),
                "draining".to_owned(),
                "drains-from-before".to_owned()
            ])
        );
    }
}
