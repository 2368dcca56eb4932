//! A reference model of the farm ingress policy (SPEC §4), written from the
//! specification and the program's documented policy rather than from its
//! code: given the configuration and a raw frame, what the XDP program must
//! do with it and what the frame must look like afterwards.
//!
//! The policy, as modelled:
//! - a frame that is not for a VIP passes byte for byte untouched, and so
//!   does one whose headers cannot be read far enough to know (too short,
//!   a bad IPv4 version or header length, more VLAN tags than the program
//!   walks, an ARP body that is not Ethernet/IPv4);
//! - an ARP request for a VIP (not a gratuitous one) is answered with the
//!   VIP's virtual MAC by the node whose bucket (`Owned` or `Incoming`)
//!   holds the requester's address, and dropped by every other node; any
//!   other ARP frame about a VIP is dropped;
//! - a neighbour solicitation for a VIP target, with exactly one source
//!   link-layer option and a unicast source, is answered the same way;
//!   another solicitation for a VIP target is dropped; a solicitation that
//!   is too short to name its target, or names another target, is an
//!   ordinary ICMPv6 packet;
//! - an IP packet for a VIP is accepted (destination MAC rewritten to the
//!   node's own, passed) only in a bucket this node serves, and dropped
//!   otherwise: TCP and UDP need a rule naming their protocol and
//!   destination port (the first that matches decides the filter), ICMP
//!   (IPv4) and ICMPv6 (IPv6) are bucketed by the client's address,
//!   fragments by the client's address when a rule names their protocol,
//!   anything else is dropped. IPv6 extension headers (hop-by-hop, routing,
//!   fragment, destination options) are walked, at most
//!   [`MAX_IPV6_EXTENSION_HEADERS`]; a VIP packet whose transport header
//!   cannot be reached or read is dropped, because no bucket can be computed
//!   for it and SPEC §4 accepts VIP traffic only in the node's own buckets.
//!
//! Handover buckets: `Draining` keeps TCP only for connections with a
//! socket on this node and `Incoming` takes those with a socket, and new
//! TCP connections (SYN without ACK) only once the old owner's cut is
//! known. UDP: the program records every flow of a rule it sees, with
//! whether it took its last datagram; `Draining` keeps the flows it took
//! last, and so does `Incoming` while the old owner's cut is unknown. The
//! test writes its tables with every cut unknown (a known cut depends on
//! the time of the program's clock, which the model does not see), so an
//! `Incoming` bucket takes no SYN here. The model has no sockets: it predicts for a host where no
//! TCP socket matches the frames (the test's VIPs are addresses nobody
//! holds), and it remembers which UDP flows it took last, as the program's
//! flow table does, with an idle time longer than any test run.

use std::{collections::HashSet, net::IpAddr};

use halo_common::farm::{
    bucket_of, filter, BucketState, FarmRule, VipKey, BUCKETS, MAX_IPV6_EXTENSION_HEADERS,
    MAX_VLAN_TAGS,
};

use crate::frames::Mac;

/// `XDP_DROP`, `XDP_PASS` and `XDP_TX`, as the program returns them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Drop = 1,
    Pass = 2,
    Tx = 3,
}

impl Action {
    /// The action of an `XDP_*` return value, if it is one of the three.
    pub fn from_xdp(value: u32) -> Option<Action> {
        match value {
            1 => Some(Action::Drop),
            2 => Some(Action::Pass),
            3 => Some(Action::Tx),
            _ => None,
        }
    }
}

/// Why the model decided what it did (for statistics and failure reports).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Headers unreadable before anything says it is for a VIP: passed.
    Unparsed,
    /// Not for a VIP: passed untouched.
    NotVip,
    /// For a VIP, in a bucket this node serves: passed with the own MAC.
    Accepted,
    /// For a VIP, in a bucket this node does not serve (now): dropped.
    OtherNode,
    /// For a VIP, but no rule names it: dropped.
    NoRule,
    /// For a VIP, but cut short or nested too deep to bucket: dropped.
    Unreadable,
    ArpAnswered,
    ArpLeft,
    NdAnswered,
    NdLeft,
}

/// What the program must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    pub action: Action,
    pub reason: Reason,
    /// The frame as the program must leave it, for `Pass` and `Tx`.
    pub output: Option<Vec<u8>>,
}

impl Prediction {
    fn untouched(frame: &[u8], reason: Reason) -> Prediction {
        Prediction {
            action: Action::Pass,
            reason,
            output: Some(frame.to_vec()),
        }
    }

    fn drop(reason: Reason) -> Prediction {
        Prediction {
            action: Action::Drop,
            reason,
            output: None,
        }
    }
}

/// One node's farm configuration as the program sees it.
#[derive(Clone, Debug)]
pub struct FarmConfig {
    pub own_mac: Mac,
    pub vips: Vec<(IpAddr, Mac)>,
    pub rules: Vec<FarmRule>,
    /// `BUCKETS` entries.
    pub buckets: Vec<BucketState>,
}

/// The reference model of one node's farm ingress program.
pub struct FarmModel {
    config: FarmConfig,
    /// UDP flows (client, client port, VIP port) whose last datagram this
    /// node took.
    udp_flows: HashSet<([u8; 16], u16, u16)>,
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn mapped(v4: &[u8]) -> [u8; 16] {
    VipKey::v4([v4[0], v4[1], v4[2], v4[3]]).addr
}

fn addr16(bytes: &[u8]) -> [u8; 16] {
    bytes[..16].try_into().expect("16 bytes")
}

/// An IP packet for a VIP, as far as the bucket decision needs it.
struct VipPacket {
    client: [u8; 16],
    proto: u8,
    l4: usize,
    fragmented: bool,
    is_v4: bool,
}

impl FarmModel {
    pub fn new(config: FarmConfig) -> FarmModel {
        assert_eq!(
            config.buckets.len(),
            BUCKETS as usize,
            "a full bucket table"
        );
        FarmModel {
            config,
            udp_flows: HashSet::new(),
        }
    }

    pub fn config(&self) -> &FarmConfig {
        &self.config
    }

    /// Replaces the bucket table; remembered UDP flows stay, as in the
    /// program's flow table.
    pub fn set_buckets(&mut self, buckets: Vec<BucketState>) {
        assert_eq!(buckets.len(), BUCKETS as usize, "a full bucket table");
        self.config.buckets = buckets;
    }

    /// What the program does with `frame`; remembers which UDP flows it
    /// took last.
    pub fn predict(&mut self, frame: &[u8]) -> Prediction {
        if frame.len() < 14 {
            return Prediction::untouched(frame, Reason::Unparsed);
        }
        let mut ether_type = be16(&frame[12..]);
        let mut offset = 14;
        for _ in 0..MAX_VLAN_TAGS {
            if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
                break;
            }
            let Some(tag) = frame.get(offset..offset + 4) else {
                return Prediction::untouched(frame, Reason::Unparsed);
            };
            ether_type = be16(&tag[2..]);
            offset += 4;
        }
        match ether_type {
            ETH_P_ARP => self.arp(frame, offset),
            ETH_P_IPV4 => self.ipv4(frame, offset),
            ETH_P_IPV6 => self.ipv6(frame, offset),
            _ => Prediction::untouched(frame, Reason::Unparsed),
        }
    }

    fn vmac(&self, addr: &[u8; 16]) -> Option<Mac> {
        self.config.vips.iter().find_map(|(vip, vmac)| {
            let key = match vip {
                IpAddr::V4(v4) => VipKey::v4(v4.octets()).addr,
                IpAddr::V6(v6) => v6.octets(),
            };
            (key == *addr).then_some(*vmac)
        })
    }

    fn state(&self, bucket: u32) -> BucketState {
        self.config.buckets[bucket as usize]
    }

    /// Whether this node answers for and takes new traffic of `bucket`.
    fn serves(&self, bucket: u32) -> bool {
        matches!(
            self.state(bucket),
            BucketState::Owned | BucketState::Incoming
        )
    }

    fn accepted(&self, frame: &[u8]) -> Prediction {
        let mut out = frame.to_vec();
        out[..6].copy_from_slice(&self.config.own_mac);
        Prediction {
            action: Action::Pass,
            reason: Reason::Accepted,
            output: Some(out),
        }
    }

    fn arp(&self, frame: &[u8], offset: usize) -> Prediction {
        let Some(arp) = frame.get(offset..offset + 28) else {
            return Prediction::untouched(frame, Reason::Unparsed);
        };
        let ethernet_ipv4 =
            be16(&arp[0..]) == 1 && be16(&arp[2..]) == ETH_P_IPV4 && arp[4] == 6 && arp[5] == 4;
        if !ethernet_ipv4 {
            return Prediction::untouched(frame, Reason::Unparsed);
        }
        let (sha, spa, tpa) = (&arp[8..14], &arp[14..18], &arp[24..28]);
        let Some(vmac) = self.vmac(&mapped(tpa)) else {
            return Prediction::untouched(frame, Reason::NotVip);
        };
        let request = be16(&arp[6..]) == 1;
        if !request || spa == tpa || !self.serves(bucket_of(&mapped(spa), None)) {
            return Prediction::drop(Reason::ArpLeft);
        }
        let mut out = frame.to_vec();
        out[..6].copy_from_slice(sha);
        out[6..12].copy_from_slice(&self.config.own_mac);
        let reply = &mut out[offset..offset + 28];
        reply[6..8].copy_from_slice(&[0, 2]);
        reply[8..14].copy_from_slice(&vmac);
        reply[14..18].copy_from_slice(tpa);
        reply[18..24].copy_from_slice(sha);
        reply[24..28].copy_from_slice(spa);
        Prediction {
            action: Action::Tx,
            reason: Reason::ArpAnswered,
            output: Some(out),
        }
    }

    fn ipv4(&mut self, frame: &[u8], offset: usize) -> Prediction {
        let Some(ip) = frame.get(offset..offset + 20) else {
            return Prediction::untouched(frame, Reason::Unparsed);
        };
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || header_len < 20 || frame.len() < offset + header_len {
            return Prediction::untouched(frame, Reason::Unparsed);
        }
        if self.vmac(&mapped(&ip[16..20])).is_none() {
            return Prediction::untouched(frame, Reason::NotVip);
        }
        // More fragments, or an offset: not the DF bit.
        let fragmented = be16(&ip[6..]) & 0x3fff != 0;
        let packet = VipPacket {
            client: mapped(&ip[12..16]),
            proto: ip[9],
            l4: offset + header_len,
            fragmented,
            is_v4: true,
        };
        self.decide(frame, &packet)
    }

    fn ipv6(&mut self, frame: &[u8], offset: usize) -> Prediction {
        let Some(ip) = frame.get(offset..offset + 40) else {
            return Prediction::untouched(frame, Reason::Unparsed);
        };
        if ip[0] >> 4 != 6 {
            return Prediction::untouched(frame, Reason::Unparsed);
        }
        let l4 = offset + 40;
        if ip[6] == ICMPV6 && frame.get(l4) == Some(&135) {
            if let Some(prediction) = self.neighbour_solicitation(frame, offset) {
                return prediction;
            }
        }
        if self.vmac(&addr16(&ip[24..40])).is_none() {
            return Prediction::untouched(frame, Reason::NotVip);
        }
        let Some((proto, l4, fragmented)) = ipv6_transport(frame, ip[6], l4) else {
            return Prediction::drop(Reason::Unreadable);
        };
        let packet = VipPacket {
            client: addr16(&ip[8..24]),
            proto,
            l4,
            fragmented,
            is_v4: false,
        };
        self.decide(frame, &packet)
    }

    /// The answer to a solicitation for a VIP target, or `None` when the
    /// frame is no such solicitation (too short, another target).
    fn neighbour_solicitation(&self, frame: &[u8], offset: usize) -> Option<Prediction> {
        let ip = &frame[offset..offset + 40];
        let l4 = offset + 40;
        let ns = frame.get(l4..l4 + 32)?;
        let vmac = self.vmac(&addr16(&ns[8..24]))?;
        let answerable = be16(&ip[4..]) == 32
            && ns[1] == 0
            && ns[24] == 1
            && ns[25] == 1
            && ip[8..24] != [0; 16];
        if !answerable || !self.serves(bucket_of(&addr16(&ip[8..24]), None)) {
            return Some(Prediction::drop(Reason::NdLeft));
        }
        let mut out = frame.to_vec();
        out[..6].copy_from_slice(&ns[26..32]);
        out[6..12].copy_from_slice(&self.config.own_mac);
        let (target, requester) = (addr16(&ns[8..24]), addr16(&ip[8..24]));
        out[offset + 7] = 255;
        out[offset + 8..offset + 24].copy_from_slice(&target);
        out[offset + 24..offset + 40].copy_from_slice(&requester);
        let na = &mut out[l4..l4 + 32];
        na[0] = 136;
        na[2..4].copy_from_slice(&[0, 0]);
        na[4..8].copy_from_slice(&[0x60, 0, 0, 0]);
        na[24] = 2;
        na[26..32].copy_from_slice(&vmac);
        let checksum = icmpv6_checksum(&target, &requester, &out[l4..l4 + 32]);
        out[l4 + 2..l4 + 4].copy_from_slice(&checksum.to_be_bytes());
        Some(Prediction {
            action: Action::Tx,
            reason: Reason::NdAnswered,
            output: Some(out),
        })
    }

    fn first_rule(&self, proto: u8, port: Option<u16>) -> Option<FarmRule> {
        self.config.rules.iter().copied().find(|rule| {
            rule.proto == proto
                && port.is_none_or(|port| rule.first_port <= port && port <= rule.last_port)
        })
    }

    fn decide(&mut self, frame: &[u8], packet: &VipPacket) -> Prediction {
        let bucket = match packet.proto {
            TCP | UDP if !packet.fragmented => {
                let Some(ports) = frame.get(packet.l4..packet.l4 + 4) else {
                    return Prediction::drop(Reason::Unreadable);
                };
                let (sport, dport) = (be16(&ports[0..]), be16(&ports[2..]));
                let Some(rule) = self.first_rule(packet.proto, Some(dport)) else {
                    return Prediction::drop(Reason::NoRule);
                };
                let port = (rule.filter == filter::SOURCE_PORT).then_some(sport);
                let bucket = bucket_of(&packet.client, port);
                let flow = (packet.client, sport, dport);
                let keep = match (self.state(bucket), packet.proto) {
                    (BucketState::Owned, _) => true,
                    (BucketState::NotMine, _) => false,
                    (_, UDP) => self.udp_flows.contains(&flow),
                    // No socket on this host: nothing draining is kept.
                    (BucketState::Draining, _) => false,
                    (BucketState::Incoming, _) => {
                        if frame.get(packet.l4 + 13).is_none() {
                            return Prediction::drop(Reason::Unreadable);
                        }
                        // A SYN waits for the cut, which is unknown here,
                        // and no socket matches anything else.
                        false
                    }
                };
                if packet.proto == UDP {
                    if keep {
                        self.udp_flows.insert(flow);
                    } else {
                        self.udp_flows.remove(&flow);
                    }
                }
                if !keep {
                    return Prediction::drop(Reason::OtherNode);
                }
                return self.accepted(frame);
            }
            TCP | UDP => {
                if self.first_rule(packet.proto, None).is_none() {
                    return Prediction::drop(Reason::NoRule);
                }
                bucket_of(&packet.client, None)
            }
            ICMP if packet.is_v4 => bucket_of(&packet.client, None),
            ICMPV6 if !packet.is_v4 => bucket_of(&packet.client, None),
            _ => return Prediction::drop(Reason::NoRule),
        };
        if self.serves(bucket) {
            self.accepted(frame)
        } else {
            Prediction::drop(Reason::OtherNode)
        }
    }
}

/// Walks the IPv6 extension headers from `next_header` at `at`: the
/// transport protocol, its offset, and whether the packet is a fragment
/// (bucketed by address). `None` when the chain is cut short or longer
/// than the program walks.
fn ipv6_transport(frame: &[u8], next_header: u8, at: usize) -> Option<(u8, usize, bool)> {
    let (mut proto, mut at, mut fragmented) = (next_header, at, false);
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        match proto {
            // Hop-by-hop, routing, destination options: length in 8-byte
            // units, not counting the first 8.
            0 | 43 | 60 => {
                let header = frame.get(at..at + 2)?;
                proto = header[0];
                at += (usize::from(header[1]) + 1) * 8;
            }
            44 => {
                let header = frame.get(at..at + 8)?;
                let offset_flags = be16(&header[2..]);
                proto = header[0];
                at += 8;
                fragmented |= offset_flags & 0xfff9 != 0;
                if offset_flags >> 3 != 0 {
                    // Not the first fragment: what follows is data.
                    return Some((proto, at, true));
                }
            }
            _ => return Some((proto, at, fragmented)),
        }
    }
    match proto {
        0 | 43 | 44 | 60 => None,
        _ => Some((proto, at, fragmented)),
    }
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of a `message` from `src` to `dst`.
pub fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], message: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(40 + message.len());
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, ICMPV6]);
    bytes.extend_from_slice(message);
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::frames;

    const OWN: Mac = [2, 0, 0, 0, 0, 0xaa];
    const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 0xcc];
    const VMAC4: Mac = [0x5a, 0xfe, 0, 0, 0, 4];
    const VMAC6: Mac = [0x5a, 0xfe, 0, 0, 0, 6];
    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    fn vip6() -> Ipv6Addr {
        "2001:db8::1".parse().unwrap()
    }

    fn model(state: BucketState) -> FarmModel {
        FarmModel::new(FarmConfig {
            own_mac: OWN,
            vips: vec![(VIP4.into(), VMAC4), (vip6().into(), VMAC6)],
            rules: vec![FarmRule {
                proto: TCP,
                filter: filter::SOURCE_PORT,
                first_port: 80,
                last_port: 80,
                _pad: 0,
            }],
            buckets: vec![state; BUCKETS as usize],
        })
    }

    fn client() -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 7)
    }

    #[test]
    fn frames_not_for_a_vip_pass_untouched() {
        let mut model = model(BucketState::Owned);
        let other = Ipv4Addr::new(198, 51, 100, 2);
        let frame = frames::ipv4_tcp(OWN, CLIENT_MAC, client(), other, 1, 80, frames::TCP_SYN);
        assert_eq!(
            model.predict(&frame),
            Prediction::untouched(&frame, Reason::NotVip)
        );
        let arp = frames::arp_request(CLIENT_MAC, client(), other);
        assert_eq!(model.predict(&arp).reason, Reason::NotVip);
    }

    #[test]
    fn vip_tcp_is_readdressed_in_an_owned_bucket_and_dropped_elsewhere() {
        let frame = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client(), VIP4, 1, 80, frames::TCP_SYN);
        let accepted = model(BucketState::Owned).predict(&frame);
        assert_eq!(accepted.action, Action::Pass);
        let out = accepted.output.unwrap();
        assert_eq!((&out[..6], &out[6..]), (&OWN[..], &frame[6..]));
        for state in [BucketState::NotMine, BucketState::Draining] {
            assert_eq!(
                model(state).predict(&frame).action,
                Action::Drop,
                "{state:?}"
            );
        }
        assert_eq!(
            model(BucketState::Incoming).predict(&frame).action,
            Action::Drop,
            "a new connection goes to the incoming owner only once the old owner's cut is known"
        );
        let no_rule = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client(), VIP4, 1, 81, frames::TCP_SYN);
        assert_eq!(
            model(BucketState::Owned).predict(&no_rule).reason,
            Reason::NoRule
        );
    }

    #[test]
    fn a_vip_frame_cut_before_its_ports_is_dropped() {
        let frame = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client(), VIP4, 1, 80, frames::TCP_SYN);
        let cut = &frame[..14 + 20 + 3];
        assert_eq!(
            model(BucketState::Owned).predict(cut),
            Prediction::drop(Reason::Unreadable)
        );
        let cut_ip = &frame[..14 + 19];
        assert_eq!(
            model(BucketState::Owned).predict(cut_ip).reason,
            Reason::Unparsed
        );
    }

    #[test]
    fn the_owner_answers_arp_for_the_vip_with_the_virtual_mac() {
        let request = frames::arp_request(CLIENT_MAC, client(), VIP4);
        let reply = model(BucketState::Owned).predict(&request);
        assert_eq!(reply.action, Action::Tx);
        let out = reply.output.unwrap();
        assert_eq!(&out[..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &OWN);
        assert_eq!(&out[20..22], &[0, 2]);
        assert_eq!(&out[22..28], &VMAC4);
        assert_eq!(&out[28..32], &VIP4.octets());
        assert_eq!(&out[38..42], &client().octets());
        assert_eq!(
            model(BucketState::Draining).predict(&request).reason,
            Reason::ArpLeft
        );
    }

    #[test]
    fn the_owner_answers_a_solicitation_with_a_valid_advertisement() {
        let requester: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
        let ns = frames::neighbour_solicitation(CLIENT_MAC, requester, vip6());
        let na = model(BucketState::Incoming).predict(&ns);
        assert_eq!(na.action, Action::Tx);
        let out = na.output.unwrap();
        assert_eq!(frames::icmpv6_checksum_residue(&out), 0);
        assert_eq!(&out[80..86], &VMAC6);
        assert_eq!(
            model(BucketState::NotMine).predict(&ns).reason,
            Reason::NdLeft
        );
    }

    #[test]
    fn ipv6_extension_chains_are_walked_to_the_transport_header() {
        // Hop-by-hop (8 bytes) then a first fragment of TCP.
        let mut packet = vec![44, 0, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[TCP, 0, 0, 1, 0, 0, 0, 7]);
        assert_eq!(ipv6_transport(&packet, 0, 0), Some((TCP, 16, true)));
        // A later fragment: data follows, whatever it looks like.
        let later = [60, 0, 0, 8, 0, 0, 0, 7, 0, 0];
        assert_eq!(ipv6_transport(&later, 44, 0), Some((60, 8, true)));
        // Longer than the program walks.
        let long = [60u8, 0, 0, 0, 0, 0, 0, 0].repeat(MAX_IPV6_EXTENSION_HEADERS + 1);
        assert_eq!(ipv6_transport(&long, 60, 0), None);
        assert_eq!(
            ipv6_transport(&[60, 1], 60, 0),
            None,
            "cut inside the chain"
        );
    }
}
