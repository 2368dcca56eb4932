//! The farm module's data path on this node, as the module driver performs
//! it: VIPs bound on the interface, the XDP filter attached and configured,
//! the bucket table written, gratuitous announcements sent, and handovers
//! settled as connections end.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::programs::xdp::XdpMode;
use halo_common::farm::{filter, FarmRule};

use super::{buckets::BucketTable, handover::Handover};
use crate::{
    config::{self, FarmModule, Filter, Proto},
    ebpf::farm::FarmIngress,
    net,
};

/// The data path of one farm module: inactive until [`claim`](Self::claim).
pub struct FarmDataPath {
    module: FarmModule,
    rules: Vec<FarmRule>,
    handover: Handover,
    ingress: Option<FarmIngress>,
    /// When the table last changed: its Incoming buckets wait
    /// [`INCOMING_GRACE`] before they may become Owned.
    retabled_at: Option<tokio::time::Instant>,
}

/// How long after a table change an Incoming bucket stays Incoming even
/// though its old owner does not report draining: that report comes one
/// heartbeat after the old owner read the change, itself one heartbeat
/// after this node made it (a join, a new power). Taking the bucket as
/// Owned before would accept the old owner's established connections here
/// and reset them.
const INCOMING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl FarmDataPath {
    pub fn new(module: FarmModule, node: &str) -> Self {
        let rules = module.rules.iter().map(rule).collect();
        FarmDataPath {
            module,
            rules,
            handover: Handover::new(node),
            ingress: None,
            retabled_at: None,
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
        self.handover = Handover::new(self.handover_node());
        first_error.map_or(Ok(()), Err)
    }

    fn handover_node(&self) -> &str {
        self.handover.me()
    }

    /// Writes the table of a new membership, with handover states for the
    /// buckets that move between live nodes.
    pub fn set_members(
        &mut self,
        members: &BTreeMap<String, u32>,
        alive: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        if self.handover.table().is_none() {
            // A node joining a running farm takes its buckets from their
            // current owners: the table without it is the one they serve.
            let mut before = members.clone();
            before.remove(self.handover.me());
            self.handover.retable(BucketTable::compute(&before)?, alive);
        }
        let table = BucketTable::compute(members)?;
        self.handover.retable(table, alive);
        self.retabled_at = Some(tokio::time::Instant::now());
        self.write()
    }

    /// Ends the handovers that are over; `still_draining` says whether a
    /// peer still reports draining buckets.
    pub fn settle(&mut self, still_draining: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
        if self.ingress.is_none() {
            return Ok(());
        }
        let tables = [
            std::fs::read_to_string("/proc/net/tcp").unwrap_or_default(),
            std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default(),
        ];
        let busy = super::handover::busy_tcp_buckets(
            &[&tables[0], &tables[1]],
            &self.module.vips,
            &self.rules,
        );
        let young = self
            .retabled_at
            .is_some_and(|at| at.elapsed() < INCOMING_GRACE);
        let still_draining = |peer: &str| young || still_draining(peer);
        if self.handover.settle(&busy, &still_draining) {
            self.write()?;
        }
        Ok(())
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
        let verdicts = ingress
            .verdict_counts()?
            .into_iter()
            .map(|(verdict, n)| (verdict.name().to_owned(), n))
            .collect();
        let buckets = ingress
            .bucket_packets()?
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(bucket, n)| (bucket as u16, n))
            .collect();
        Ok(Some(super::FarmCounters { verdicts, buckets }))
    }

    fn write(&mut self) -> anyhow::Result<()> {
        if let Some(ingress) = &mut self.ingress {
            ingress.set_buckets(&self.handover.states())?;
        }
        Ok(())
    }
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
