//! Random farm configurations and random frames for them, from a seeded
//! PRNG so that a failing frame can be replayed from its seed and index:
//! valid traffic to and not to the VIPs, ARP and neighbour discovery,
//! IPv4 options and fragments, IPv6 extension chains, VLAN stacks, odd
//! EtherTypes, garbage, and truncated or bit-flipped versions of them all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use halo_common::farm::{filter, BucketState, FarmRule, BUCKETS};

use crate::{frames::Mac, xdp_model::FarmConfig};

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough to
/// drive a test generator.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    pub fn fill(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What the generator meant a frame to be, before truncation or mutation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ipv4Tcp,
    Ipv4Udp,
    Ipv4Icmp,
    Ipv4OtherProto,
    Ipv4Fragment,
    Ipv4BadHeader,
    Ipv6Tcp,
    Ipv6Udp,
    Ipv6Icmp,
    Ipv6OtherProto,
    Ipv6ExtensionChain,
    ArpRequest,
    ArpOther,
    NeighbourSolicitation,
    OddEtherType,
    Garbage,
}

/// How a generated frame was damaged after it was built.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Damage {
    None,
    Truncated,
    BitFlips,
}

/// One generated frame and how it came about.
pub struct Generated {
    pub frame: Vec<u8>,
    pub kind: Kind,
    pub vlan_tags: usize,
    pub ipv4_options: bool,
    pub damage: Damage,
}

/// A random farm configuration: 0 to 3 IPv4 and 0 to 2 IPv6 VIPs, up to 6
/// TCP/UDP rules (overlapping ranges, both filters) and a bucket table of a
/// random shape. VIPs come from the documentation ranges, which no host of
/// this machine holds, so no kernel socket can match a generated frame.
pub fn config(rng: &mut SplitMix64) -> FarmConfig {
    let mut vips = Vec::new();
    for _ in 0..rng.below(4) {
        let vip = Ipv4Addr::new(198, 51, 100, 1 + rng.below(250) as u8);
        vips.push((IpAddr::V4(vip), virtual_mac(rng)));
    }
    for _ in 0..rng.below(3) {
        let vip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + rng.below(0xfff0) as u16);
        vips.push((IpAddr::V6(vip), virtual_mac(rng)));
    }
    vips.dedup_by_key(|(vip, _)| *vip);
    let rules = (0..rng.below(7))
        .map(|_| {
            let first_port: u16 = *rng.pick(&[22, 53, 80, 443, 1000, 8080, 0, 65_535]);
            let last_port = if rng.chance(60) {
                first_port
            } else {
                first_port.saturating_add(rng.below(3000) as u16)
            };
            FarmRule {
                proto: *rng.pick(&[6, 17]),
                filter: *rng.pick(&[filter::SOURCE_ADDR, filter::SOURCE_PORT]),
                first_port,
                last_port,
                _pad: 0,
            }
        })
        .collect();
    let mut own_mac: Mac = rng.bytes();
    own_mac[0] = (own_mac[0] & 0xfc) | 0x02;
    FarmConfig {
        own_mac,
        vips,
        rules,
        buckets: bucket_table(rng),
    }
}

fn virtual_mac(rng: &mut SplitMix64) -> Mac {
    let tail: [u8; 4] = rng.bytes();
    [0x5a, 0xfe, tail[0], tail[1], tail[2], tail[3]]
}

/// A bucket table of one of several shapes: all one state, one node of
/// two or three, a handover in progress, or any state per bucket.
pub fn bucket_table(rng: &mut SplitMix64) -> Vec<BucketState> {
    use BucketState::*;
    let all = [NotMine, Owned, Draining, Incoming];
    let shape = rng.below(6);
    let single = *rng.pick(&all);
    let nodes = 2 + rng.below(2);
    (0..BUCKETS as usize)
        .map(|b| match shape {
            0 => single,
            1 if b % nodes == 0 => Owned,
            1 => NotMine,
            2 if b % nodes == 0 => *rng.pick(&[Owned, Owned, Owned, Draining]),
            2 => *rng.pick(&[NotMine, NotMine, NotMine, Incoming]),
            _ => *rng.pick(&all),
        })
        .collect()
}

/// Generates frames for one configuration, from pools of clients and ports
/// small enough that flows recur (so remembered UDP flows are exercised).
pub struct FrameGenerator {
    vips4: Vec<([u8; 4], Mac)>,
    vips6: Vec<([u8; 16], Mac)>,
    own_mac: Mac,
    clients4: Vec<[u8; 4]>,
    clients6: Vec<[u8; 16]>,
    client_ports: Vec<u16>,
    vip_ports: Vec<u16>,
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

impl FrameGenerator {
    pub fn new(config: &FarmConfig, rng: &mut SplitMix64) -> FrameGenerator {
        let mut vips4 = Vec::new();
        let mut vips6 = Vec::new();
        for (vip, vmac) in &config.vips {
            match vip {
                IpAddr::V4(v4) => vips4.push((v4.octets(), *vmac)),
                IpAddr::V6(v6) => vips6.push((v6.octets(), *vmac)),
            }
        }
        let mut vip_ports: Vec<u16> = config
            .rules
            .iter()
            .flat_map(|r| [r.first_port, r.last_port, r.last_port.wrapping_add(1)])
            .collect();
        vip_ports.extend([22, 53, 80, 443, 8080, 0, 65_535]);
        FrameGenerator {
            vips4,
            vips6,
            own_mac: config.own_mac,
            clients4: (0..32).map(|_| rng.bytes()).collect(),
            clients6: (0..32)
                .map(|_| {
                    let mut a: [u8; 16] = rng.bytes();
                    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                    a
                })
                .collect(),
            client_ports: (0..16).map(|_| rng.u16()).collect(),
            vip_ports,
        }
    }

    /// One random frame (at least the 14 bytes BPF_PROG_TEST_RUN needs).
    pub fn frame(&self, rng: &mut SplitMix64) -> Generated {
        let mut ipv4_options = false;
        let (kind, mut frame) = match rng.below(100) {
            0..=11 => (
                Kind::Ipv4Tcp,
                self.ipv4_transport(rng, 6, &mut ipv4_options),
            ),
            12..=21 => (
                Kind::Ipv4Udp,
                self.ipv4_transport(rng, 17, &mut ipv4_options),
            ),
            22..=25 => (
                Kind::Ipv4Icmp,
                self.ipv4_transport(rng, 1, &mut ipv4_options),
            ),
            26..=28 => {
                let any = rng.byte();
                let proto = *rng.pick(&[0, 2, 4, 41, 47, 50, 51, 58, 132, 255, any]);
                (
                    Kind::Ipv4OtherProto,
                    self.ipv4_transport(rng, proto, &mut ipv4_options),
                )
            }
            29..=35 => (Kind::Ipv4Fragment, self.ipv4_fragment(rng)),
            36..=38 => (Kind::Ipv4BadHeader, self.ipv4_bad_header(rng)),
            39..=46 => (Kind::Ipv6Tcp, self.ipv6_packet(rng, &[], 6)),
            47..=52 => (Kind::Ipv6Udp, self.ipv6_packet(rng, &[], 17)),
            53..=55 => (Kind::Ipv6Icmp, self.ipv6_packet(rng, &[], 58)),
            56..=57 => {
                let any = rng.byte();
                let proto = *rng.pick(&[1, 41, 47, 50, 51, 59, 132, 135, 253, any]);
                (Kind::Ipv6OtherProto, self.ipv6_packet(rng, &[], proto))
            }
            58..=67 => (Kind::Ipv6ExtensionChain, self.ipv6_chain(rng)),
            68..=77 => (Kind::ArpRequest, self.arp(rng, true)),
            78..=81 => (Kind::ArpOther, self.arp(rng, false)),
            82..=91 => (Kind::NeighbourSolicitation, self.solicitation(rng)),
            92..=95 => (Kind::OddEtherType, self.odd_ether_type(rng)),
            _ => {
                let len = 14 + rng.below(120);
                (Kind::Garbage, rng.fill(len))
            }
        };
        let vlan_tags = match rng.below(100) {
            0..=79 => 0,
            80..=91 => 1,
            92..=97 => 2,
            _ => 3,
        };
        if kind != Kind::Garbage {
            for _ in 0..vlan_tags {
                let tpid: u16 = *rng.pick(&[0x8100, 0x8100, 0x88a8]);
                let tci = rng.u16();
                let mut tag = tpid.to_be_bytes().to_vec();
                tag.extend_from_slice(&tci.to_be_bytes());
                frame.splice(12..12, tag);
            }
        }
        let damage = match rng.below(100) {
            0..=74 => Damage::None,
            75..=89 => Damage::Truncated,
            _ => Damage::BitFlips,
        };
        match damage {
            Damage::None => {}
            Damage::Truncated => {
                let len = 14 + rng.below(frame.len().saturating_sub(14).max(1));
                frame.truncate(len.max(14));
            }
            Damage::BitFlips => {
                for _ in 0..1 + rng.below(4) {
                    let byte = rng.below(frame.len().min(96));
                    frame[byte] ^= 1 << rng.below(8);
                }
            }
        }
        if frame.len() < 14 {
            frame.resize(14, 0);
        }
        Generated {
            frame,
            kind,
            vlan_tags: if kind == Kind::Garbage { 0 } else { vlan_tags },
            ipv4_options,
            damage,
        }
    }

    fn client_mac(&self, rng: &mut SplitMix64) -> Mac {
        let mut mac: Mac = rng.bytes();
        mac[0] &= 0xfe;
        mac
    }

    /// An IPv4 destination and the MAC a frame for it carries: mostly a
    /// VIP and its virtual MAC, otherwise another address.
    fn dst4(&self, rng: &mut SplitMix64) -> ([u8; 4], Mac) {
        if !self.vips4.is_empty() && rng.chance(75) {
            let (vip, vmac) = *rng.pick(&self.vips4);
            let mac = if rng.chance(90) { vmac } else { self.own_mac };
            return (vip, mac);
        }
        let dst = if rng.chance(50) {
            [198, 51, 100, rng.byte()]
        } else {
            rng.bytes()
        };
        let other = self.client_mac(rng);
        (dst, *rng.pick(&[self.own_mac, [0xff; 6], other]))
    }

    fn dst6(&self, rng: &mut SplitMix64) -> ([u8; 16], Mac) {
        if !self.vips6.is_empty() && rng.chance(75) {
            let (vip, vmac) = *rng.pick(&self.vips6);
            let mac = if rng.chance(90) { vmac } else { self.own_mac };
            return (vip, mac);
        }
        let mut dst: [u8; 16] = rng.bytes();
        if rng.chance(50) {
            dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        }
        (dst, self.client_mac(rng))
    }

    fn src4(&self, rng: &mut SplitMix64) -> [u8; 4] {
        if rng.chance(70) {
            *rng.pick(&self.clients4)
        } else {
            rng.bytes()
        }
    }

    fn src6(&self, rng: &mut SplitMix64) -> [u8; 16] {
        match rng.below(10) {
            0..=6 => *rng.pick(&self.clients6),
            7 => [0; 16],
            _ => rng.bytes(),
        }
    }

    /// A TCP, UDP or other transport header and a little payload.
    fn transport(&self, rng: &mut SplitMix64, proto: u8) -> Vec<u8> {
        let sport = if rng.chance(70) {
            *rng.pick(&self.client_ports)
        } else {
            rng.u16()
        };
        let dport = if rng.chance(80) {
            *rng.pick(&self.vip_ports)
        } else {
            rng.u16()
        };
        let mut l4 = Vec::with_capacity(40);
        match proto {
            6 => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&rng.bytes::<8>());
                let any = rng.byte();
                let flags = *rng.pick(&[0x02, 0x02, 0x10, 0x12, 0x18, 0x04, 0x11, any]);
                l4.extend_from_slice(&[0x50, flags]);
                l4.extend_from_slice(&rng.bytes::<6>());
            }
            17 => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[0, 12, 0, 0]);
            }
            1 | 58 => {
                let types: &[u8] = if proto == 1 {
                    &[8, 0, 3, 11]
                } else {
                    &[128, 129, 1, 134, 136]
                };
                l4.extend_from_slice(&[*rng.pick(types), 0, 0, 0, 0, 1, 0, 1]);
            }
            _ => l4.extend_from_slice(&rng.fill(8)),
        }
        let payload = rng.below(24);
        l4.extend(rng.fill(payload));
        l4
    }

    fn ipv4_header(
        &self,
        rng: &mut SplitMix64,
        dst: [u8; 4],
        proto: u8,
        frag: u16,
        options: &[u8],
        l4_len: usize,
    ) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + l4_len) as u16;
        let mut ip = vec![0x40 | ihl as u8, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&rng.bytes::<2>());
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0]);
        ip.extend_from_slice(&self.src4(rng));
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(options);
        ip
    }

    fn ethernet(&self, rng: &mut SplitMix64, dst: Mac, ether_type: u16) -> Vec<u8> {
        let mut frame = Vec::with_capacity(96);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&self.client_mac(rng));
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame
    }

    fn ipv4_transport(&self, rng: &mut SplitMix64, proto: u8, options: &mut bool) -> Vec<u8> {
        let (dst, mac) = self.dst4(rng);
        let opts = if rng.chance(15) {
            *options = true;
            let words = 1 + rng.below(10);
            rng.fill(4 * words)
        } else {
            Vec::new()
        };
        // Mostly DF, sometimes nothing: neither makes a fragment.
        let frag = if rng.chance(70) { 0x4000 } else { 0 };
        let l4 = self.transport(rng, proto);
        let mut frame = self.ethernet(rng, mac, ETH_P_IPV4);
        frame.extend(self.ipv4_header(rng, dst, proto, frag, &opts, l4.len()));
        frame.extend(l4);
        frame
    }

    /// A first, middle or last fragment (or a random fragment field) of
    /// TCP, UDP, ICMP or another protocol; later fragments carry data, not
    /// ports.
    fn ipv4_fragment(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let (dst, mac) = self.dst4(rng);
        let proto = *rng.pick(&[6, 6, 17, 17, 1, 47]);
        let offset = 1 + rng.below(0x1fff) as u16;
        let frag = match rng.below(4) {
            0 => 0x2000,
            1 => 0x2000 | offset,
            2 => offset,
            _ => rng.u16(),
        };
        let l4 = if frag & 0x1fff == 0 {
            self.transport(rng, proto)
        } else {
            let len = 8 + rng.below(24);
            rng.fill(len)
        };
        let mut frame = self.ethernet(rng, mac, ETH_P_IPV4);
        frame.extend(self.ipv4_header(rng, dst, proto, frag, &[], l4.len()));
        frame.extend(l4);
        frame
    }

    /// An IPv4 header with a bad version, a header length under 5 words,
    /// or one longer than the frame.
    fn ipv4_bad_header(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let (dst, mac) = self.dst4(rng);
        let proto = *rng.pick(&[6, 17, 1]);
        let l4 = self.transport(rng, proto);
        let mut frame = self.ethernet(rng, mac, ETH_P_IPV4);
        let mut ip = self.ipv4_header(rng, dst, proto, 0, &[], l4.len());
        ip[0] = match rng.below(3) {
            0 => (rng.byte() & 0xf0) | 5,
            1 => 0x40 | rng.below(5) as u8,
            _ => 0x40 | (6 + rng.below(10)) as u8,
        };
        frame.extend(ip);
        // Long headers: a frame that ends inside or just after them.
        let keep = rng.below(l4.len() + 1);
        frame.extend(&l4[..keep]);
        frame
    }

    fn ipv6_header(&self, src: [u8; 16], dst: [u8; 16], next: u8, payload: usize) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload as u16).to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip
    }

    /// An IPv6 packet whose `extensions` (already chained to `proto`)
    /// precede a transport header of `proto`.
    fn ipv6_packet(
        &self,
        rng: &mut SplitMix64,
        extensions: &[(u8, Vec<u8>)],
        proto: u8,
    ) -> Vec<u8> {
        let (dst, mac) = self.dst6(rng);
        let src = self.src6(rng);
        let l4 = self.transport(rng, proto);
        let first = extensions.first().map_or(proto, |(kind, _)| *kind);
        let ext_len: usize = extensions.iter().map(|(_, bytes)| bytes.len()).sum();
        let mut frame = self.ethernet(rng, mac, ETH_P_IPV6);
        frame.extend(self.ipv6_header(src, dst, first, ext_len + l4.len()));
        for (_, bytes) in extensions {
            frame.extend_from_slice(bytes);
        }
        frame.extend(l4);
        frame
    }

    /// A chain of 1 to 9 extension headers (hop-by-hop, routing, fragment
    /// with any offset, destination options) before TCP, UDP, ICMPv6 or
    /// an unknown header.
    fn ipv6_chain(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let count = 1 + rng.below(9);
        let kinds: Vec<u8> = (0..count).map(|_| *rng.pick(&[0, 43, 44, 60])).collect();
        let any = rng.byte();
        let proto = *rng.pick(&[6, 6, 17, 17, 58, 59, 50, any]);
        let mut extensions = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(proto);
            let bytes = if *kind == 44 {
                let offset_flags = match rng.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => (rng.u16() & 0xfff8) | 1,
                    _ => rng.u16(),
                };
                let mut header = vec![next, 0];
                header.extend_from_slice(&offset_flags.to_be_bytes());
                header.extend_from_slice(&rng.bytes::<4>());
                header
            } else {
                let units = rng.below(3);
                let mut header = vec![next, units as u8];
                header.extend(rng.fill(6 + 8 * units));
                header
            };
            extensions.push((*kind, bytes));
        }
        self.ipv6_packet(rng, &extensions, proto)
    }

    /// An ARP request (for a VIP or another address, sometimes a
    /// gratuitous one or a probe from 0.0.0.0), or with `request` false a
    /// reply, another operation or a body that is not Ethernet/IPv4.
    fn arp(&self, rng: &mut SplitMix64, request: bool) -> Vec<u8> {
        let (target, _) = self.dst4(rng);
        let sha = self.client_mac(rng);
        let mut spa = self.src4(rng);
        let mut head = [0, 1, 0x08, 0x00, 6, 4, 0, 1];
        if request {
            match rng.below(10) {
                0 => spa = target,
                1 => spa = [0; 4],
                _ => {}
            }
        } else {
            match rng.below(4) {
                0 => head[7] = 2,
                1 => head[7] = rng.byte(),
                2 => {
                    head[6] = rng.byte();
                    head[7] = rng.byte();
                }
                _ => {
                    let field = rng.below(6);
                    head[field] = rng.byte();
                }
            }
        }
        let dst = if rng.chance(80) {
            [0xff; 6]
        } else {
            rng.bytes()
        };
        let mut frame = self.ethernet(rng, dst, ETH_P_ARP);
        frame[6..12].copy_from_slice(&sha);
        frame.extend_from_slice(&head);
        frame.extend_from_slice(&sha);
        frame.extend_from_slice(&spa);
        frame.extend_from_slice(&if rng.chance(80) { [0; 6] } else { rng.bytes() });
        frame.extend_from_slice(&target);
        if rng.chance(50) {
            frame.resize(60, 0);
        }
        frame
    }

    /// A neighbour solicitation: for a VIP or another target, to the
    /// solicited-node group or to the VIP itself, from a client or from the
    /// unspecified address, with one source link-layer option, none, or
    /// more options after it.
    fn solicitation(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let (target, _) = self.dst6(rng);
        let src = self.src6(rng);
        let mac = self.client_mac(rng);
        let dst: [u8; 16] = match rng.below(4) {
            0 => target,
            1 => self.dst6(rng).0,
            _ => {
                let mut group = [0u8; 16];
                group[..2].copy_from_slice(&[0xff, 0x02]);
                group[11] = 1;
                group[12] = 0xff;
                group[13..].copy_from_slice(&target[13..]);
                group
            }
        };
        let mut ns = vec![135, if rng.chance(95) { 0 } else { rng.byte() }];
        ns.extend_from_slice(&rng.bytes::<2>());
        ns.extend_from_slice(&[0; 4]);
        ns.extend_from_slice(&target);
        match rng.below(10) {
            0 => {}
            1 => {
                ns.extend_from_slice(&[1, 1]);
                ns.extend_from_slice(&mac);
                ns.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
            }
            2 => {
                ns.extend_from_slice(&[rng.byte(), rng.byte()]);
                ns.extend_from_slice(&mac);
            }
            _ => {
                ns.extend_from_slice(&[1, 1]);
                ns.extend_from_slice(&mac);
            }
        }
        let eth_dst = [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]];
        let mut frame = self.ethernet(rng, eth_dst, ETH_P_IPV6);
        frame[6..12].copy_from_slice(&mac);
        let mut ip = self.ipv6_header(src, dst, 58, ns.len());
        ip[7] = 255;
        frame.extend(ip);
        frame.extend(ns);
        frame
    }

    fn odd_ether_type(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let any = rng.u16();
        let ether_type = *rng.pick(&[0x88cc, 0x8847, 0x8035, 0x0842, 0x9100, 0x05dc, any]);
        let (_, mac) = self.dst4(rng);
        let mut frame = self.ethernet(rng, mac, ether_type);
        let len = rng.below(64);
        frame.extend(rng.fill(len));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_frames() {
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            let config = config(&mut rng);
            let generator = FrameGenerator::new(&config, &mut rng);
            (0..200)
                .map(|_| generator.frame(&mut rng).frame)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn every_frame_is_long_enough_for_bpf_prog_test_run() {
        let mut rng = SplitMix64::new(1);
        let config = config(&mut rng);
        let generator = FrameGenerator::new(&config, &mut rng);
        for _ in 0..10_000 {
            let generated = generator.frame(&mut rng);
            assert!(
                (14..=1500).contains(&generated.frame.len()),
                "{} bytes",
                generated.frame.len()
            );
        }
    }
}
