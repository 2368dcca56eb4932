//! Gratuitous announcements of a VIP: ARP for IPv4, an unsolicited
//! neighbour advertisement for IPv6, written whole and sent through an
//! `AF_PACKET` socket bound to the interface.
//!
//! The link-layer address announced (ARP sender hardware address, NA target
//! link-layer option) is the caller's choice: the farm announces the VIP's
//! virtual MAC, a mirror moving the VIP announces the node's own MAC. The
//! Ethernet source is always the interface's own MAC, so switches never
//! learn the virtual MAC and keep flooding its frames to every node.
//!
//! What receivers do with them (Linux, checked by this module's tests):
//! - An existing ARP entry for the VIP is updated by either frame (they are
//!   gratuitous: sender IP = target IP, and the reply's target hardware
//!   address equals its sender's, which Linux requires of a gratuitous
//!   reply), whatever `arp_accept` says. A host that has no entry creates one
//!   only with `arp_accept=1` (or `2` when the VIP is in one of its subnets);
//!   the default, `0`, ignores it, and such a host asks with an ARP request
//!   the day it needs the VIP, which the farm program answers.
//! - An existing neighbour entry is updated by the NA (the Override flag
//!   replaces the link-layer address; the entry becomes STALE and is
//!   confirmed on its next use). Hosts never create an entry from an
//!   unsolicited NA; routers do with `forwarding=1` and `accept_untracked_na`.
//!   Linux checks the hop limit (255) and the checksum, not the IPv6 source:
//!   the VIP and a link-local source are both accepted. The VIP is used, as
//!   Linux does for the unsolicited NAs of its own addresses (the source of
//!   an NA is the target when the sender holds it): it exists as soon as the
//!   VIP is claimed, while a link-local address may be absent or still
//!   tentative on a freshly started interface.
//! - A node that holds the VIP itself (another farm node) ignores both, and
//!   its kernel logs a rate-limited "NA: … advertised our address" for the
//!   NA (read in Linux's `ndisc_recv_na`, not tested here).

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tracing::debug;

use super::{
    mac::{format_mac, ifindex, interface_mac, is_running},
    NetError,
};

const ETH_BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HEADER_LEN: usize = 14;
/// Ethernet's minimum frame size without the FCS: shorter frames are padded
/// here, since a packet socket sends what it is given.
const ETH_MIN_FRAME: usize = 60;

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// `ff02::1`, all nodes on the link, and its Ethernet multicast address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const IPPROTO_ICMPV6: u8 = 58;
/// Receivers drop neighbour discovery with any other hop limit: it proves
/// the message was not forwarded (RFC 4861 §7.1.2).
const ND_HOP_LIMIT: u8 = 255;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// The Override flag, in the first byte after the checksum.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPTION_TARGET_LINK_LAYER: u8 = 2;
/// Type, length, target address, then one 8-byte target link-layer option.
const NA_LEN: usize = 4 + 4 + 16 + 8;

/// Announces that `vip` is at `mac` on `iface`, `count` times back to back:
/// per round, a gratuitous ARP request and reply for IPv4, an unsolicited
/// neighbour advertisement to all nodes for IPv6.
///
/// The farm passes the VIP's [`virtual_mac`](super::virtual_mac); a mirror
/// taking the VIP over passes the interface's own MAC
/// ([`interface_mac`]). Spacing rounds out in time (a second burst a few
/// seconds later, for a host that was busy) is the caller's, which owns
/// the timers; this function does not sleep.
pub fn announce(iface: &str, vip: IpAddr, mac: [u8; 6], count: u32) -> Result<(), NetError> {
    let vip = vip.to_canonical();
    let own_mac = interface_mac(iface)?;
    let index = ifindex(iface)?;
    // A packet socket "sends" on an interface without a carrier by
    // dropping the frame; say so instead.
    if !is_running(iface)? {
        return Err(NetError::NotRunning {
            iface: iface.to_owned(),
        });
    }
    let frames = match vip {
        IpAddr::V4(v4) => vec![
            gratuitous_arp(own_mac, v4, mac, ARP_REQUEST),
            gratuitous_arp(own_mac, v4, mac, ARP_REPLY),
        ],
        IpAddr::V6(v6) => vec![neighbour_advertisement(own_mac, v6, mac, v6)],
    };
    let socket = PacketSocket::bind(index).map_err(|source| NetError::PacketSocket {
        iface: iface.to_owned(),
        source,
    })?;
    for _ in 0..count {
        for frame in &frames {
            socket.send(frame).map_err(|source| NetError::Send {
                iface: iface.to_owned(),
                vip,
                source,
            })?;
        }
    }
    debug!(iface, %vip, mac = %format_mac(mac), count, "announced");
    Ok(())
}

/// A broadcast gratuitous ARP `op` (request or reply) saying `vip` is at
/// `mac`, sent from `own_mac`.
///
/// Sender and target protocol addresses are both the VIP (RFC 5227's
/// announcement). The request's target hardware address is zero
/// (RFC 5227); the reply's is `mac`, as RFC 5944 §4.6 asks and as Linux
/// requires before it treats a reply as gratuitous.
fn gratuitous_arp(own_mac: [u8; 6], vip: Ipv4Addr, mac: [u8; 6], op: u16) -> Vec<u8> {
    let target_mac = if op == ARP_REPLY { mac } else { [0; 6] };
    let mut frame = Vec::with_capacity(ETH_MIN_FRAME);
    frame.extend_from_slice(&ETH_BROADCAST);
    frame.extend_from_slice(&own_mac);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    frame.extend_from_slice(&ARP_PTYPE_IPV4.to_be_bytes());
    frame.push(6);
    frame.push(4);
    frame.extend_from_slice(&op.to_be_bytes());
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&target_mac);
    frame.extend_from_slice(&vip.octets());
    frame.resize(ETH_MIN_FRAME, 0);
    frame
}

/// An unsolicited neighbour advertisement to all nodes, from `own_mac` and
/// IPv6 `source`, saying `vip` is at `mac`: Override set, Solicited and
/// Router clear.
fn neighbour_advertisement(
    own_mac: [u8; 6],
    vip: Ipv6Addr,
    mac: [u8; 6],
    source: Ipv6Addr,
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(NA_LEN);
    icmp.push(ICMPV6_NEIGHBOUR_ADVERTISEMENT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled in below
    icmp.extend_from_slice(&[NA_FLAG_OVERRIDE, 0, 0, 0]);
    icmp.extend_from_slice(&vip.octets());
    icmp.push(ND_OPTION_TARGET_LINK_LAYER);
    icmp.push(1); // the option's length, in units of 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(source, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(ETH_HEADER_LEN + 40 + NA_LEN);
    frame.extend_from_slice(&ALL_NODES_MAC);
    frame.extend_from_slice(&own_mac);
    frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class, no flow
    frame.extend_from_slice(&(NA_LEN as u16).to_be_bytes());
    frame.push(IPPROTO_ICMPV6);
    frame.push(ND_HOP_LIMIT);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&ALL_NODES.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 checksum of `message` (its checksum field zero) between
/// `source` and `destination`: the one's complement of the one's complement
/// sum over the pseudo-header (RFC 8200 §8.1) and the message.
fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    let mut sum: u32 = 0;
    for chunk in pseudo.chunks(2).chain(message.chunks(2)) {
        let word = match *chunk {
            [hi, lo] => u16::from_be_bytes([hi, lo]),
            [hi] => u16::from_be_bytes([hi, 0]),
            _ => unreachable!("chunks(2) yields one or two bytes"),
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A send-only `AF_PACKET` socket bound to one interface: protocol 0, so
/// the kernel queues no received frame on it.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(ifindex: u32) -> io::Result<PacketSocket> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed bytes are a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid `sockaddr_ll` of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rtnetlink::{packet_route::neighbour::NeighbourState, LinkUnspec};

    use super::*;
    use crate::net::{
        lab::{
            add_address, add_stale_neighbour, index_of, neighbour, rtnetlink_handle, sysctl,
            wait_for_neighbour, Capture, Link, Neighbour, A, B,
        },
        mac::virtual_mac,
    };

    const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    /// The MAC a client's stale entry holds before the announcement.
    const OLD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const WAIT: Duration = Duration::from_secs(2);

    fn is_arp(frame: &[u8]) -> bool {
        frame.len() >= 42 && frame[12..14] == ETHERTYPE_ARP.to_be_bytes()
    }

    fn is_na(frame: &[u8]) -> bool {
        frame.len() >= 54 + 4
            && frame[12..14] == ETHERTYPE_IPV6.to_be_bytes()
            && frame[20] == IPPROTO_ICMPV6
            && frame[54] == ICMPV6_NEIGHBOUR_ADVERTISEMENT
    }

    /// Verifies an ICMPv6 checksum the receiver's way: the one's
    /// complement sum of pseudo-header and message, checksum included,
    /// is all ones.
    fn icmpv6_checksum_verifies(source: [u8; 16], destination: [u8; 16], message: &[u8]) -> bool {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&source);
        bytes.extend_from_slice(&destination);
        bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        bytes.extend_from_slice(message);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u64 = bytes
            .chunks_exact(2)
            .map(|w| u64::from(w[0]) << 8 | u64::from(w[1]))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn mac_at(frame: &[u8], at: usize) -> [u8; 6] {
        frame[at..at + 6].try_into().unwrap()
    }

    #[test]
    fn gratuitous_arp_layout() {
        let own = [2, 0, 0, 0, 0, 0xaa];
        let vmac = virtual_mac(VIP4.into());
        for (op, tha) in [(ARP_REQUEST, [0; 6]), (ARP_REPLY, vmac)] {
            let frame = gratuitous_arp(own, VIP4, vmac, op);
            assert_eq!(frame.len(), 60, "expected a padded minimum frame");
            assert_eq!(mac_at(&frame, 0), ETH_BROADCAST);
            assert_eq!(mac_at(&frame, 6), own);
            assert_eq!(
                frame[12..22],
                [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op as u8]
            );
            assert_eq!(mac_at(&frame, 22), vmac, "sha");
            assert_eq!(frame[28..32], VIP4.octets(), "spa");
            assert_eq!(mac_at(&frame, 32), tha, "tha of op {op}");
            assert_eq!(frame[38..42], VIP4.octets(), "tpa");
            assert!(frame[42..].iter().all(|&b| b == 0), "expected zero padding");
        }
    }

    #[test]
    fn neighbour_advertisement_checksum_verifies() {
        let own = [2, 0, 0, 0, 0, 0xaa];
        let vmac = virtual_mac(VIP6.into());
        for source in [VIP6, "fe80::4c:41ff:fe42:a".parse().unwrap()] {
            let frame = neighbour_advertisement(own, VIP6, vmac, source);
            assert_eq!(frame.len(), 14 + 40 + 32);
            assert!(
                icmpv6_checksum_verifies(source.octets(), ALL_NODES.octets(), &frame[54..]),
                "expected the checksum of an NA from {source} to verify"
            );
            let mut corrupted = frame.clone();
            corrupted[70] ^= 1;
            assert!(
                !icmpv6_checksum_verifies(source.octets(), ALL_NODES.octets(), &corrupted[54..]),
                "expected a corrupted target to fail the checksum"
            );
        }
    }

    #[test]
    fn arp_announcement_carries_the_virtual_mac_from_the_interface_mac() {
        let link = Link::new();
        let vmac = virtual_mac(VIP4.into());
        let capture = link.b.run(|| Capture::open(B));
        link.a
            .run(|| announce(A, VIP4.into(), vmac, 2))
            .unwrap_or_else(|e| panic!("expected the announcement to be sent, saw {e:#?}"));
        let frames = capture.frames(4, WAIT, is_arp);
        let ops: Vec<u16> = frames
            .iter()
            .map(|f| u16::from_be_bytes([f[20], f[21]]))
            .collect();
        assert_eq!(
            ops,
            [ARP_REQUEST, ARP_REPLY, ARP_REQUEST, ARP_REPLY],
            "expected two rounds of request and reply on {B}"
        );
        for frame in &frames {
            let (source, sha) = (mac_at(frame, 6), mac_at(frame, 22));
            assert_eq!(
                source,
                link.a_mac,
                "expected the Ethernet source to be {A}'s own MAC {}, saw {}",
                format_mac(link.a_mac),
                format_mac(source)
            );
            assert_ne!(
                source, vmac,
                "the virtual MAC must never be an Ethernet source"
            );
            assert_eq!(mac_at(frame, 0), ETH_BROADCAST);
            assert_eq!(
                sha,
                vmac,
                "expected the ARP sender hardware address {}, saw {}",
                format_mac(vmac),
                format_mac(sha)
            );
            assert_eq!(frame[28..32], VIP4.octets(), "expected spa = VIP");
            assert_eq!(frame[38..42], VIP4.octets(), "expected tpa = VIP");
        }
    }

    #[test]
    fn mirror_announcement_carries_the_interface_mac() {
        let link = Link::new();
        let capture = link.b.run(|| Capture::open(B));
        link.a
            .run(|| announce(A, VIP4.into(), interface_mac(A)?, 1))
            .unwrap_or_else(|e| panic!("expected the announcement to be sent, saw {e:#?}"));
        let frames = capture.frames(2, WAIT, is_arp);
        assert_eq!(frames.len(), 2, "expected a request and a reply on {B}");
        for frame in &frames {
            assert_eq!(mac_at(frame, 6), link.a_mac, "Ethernet source");
            assert_eq!(mac_at(frame, 22), link.a_mac, "ARP sender hardware address");
        }
    }

    #[test]
    fn announcing_without_a_carrier_is_an_error_not_a_silent_drop() {
        let link = Link::new();
        link.b.block_on(|| async {
            rtnetlink_handle()
                .link()
                .set(LinkUnspec::new_with_index(index_of(B)).down().build())
                .execute()
                .await
                .expect("B's end down");
        });
        // IFF_RUNNING follows A's operational state, which the kernel's link
        // watch updates asynchronously (seconds on a loaded machine): poll
        // for up to 10 s.
        let mut result = Ok(());
        for _ in 0..500 {
            result = link
                .a
                .run(|| announce(A, VIP4.into(), virtual_mac(VIP4.into()), 1));
            // Until the link watch has run, a send may also fail with
            // ENOBUFS: an error too, but the test waits for the precise one.
            if matches!(result, Err(NetError::NotRunning { .. })) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match result {
            Err(error @ NetError::NotRunning { .. }) => {
                assert_eq!(error.to_string(), format!("{A} is down or has no carrier"))
            }
            other => panic!("expected NotRunning with {B} down, saw {other:?}"),
        }
    }

    #[test]
    fn gratuitous_arp_updates_an_existing_entry_with_default_arp_accept() {
        let link = Link::new();
        let vmac = virtual_mac(VIP4.into());
        link.b.block_on(|| async {
            sysctl(&format!("net/ipv4/conf/{B}/arp_accept"), "0");
            add_address(B, "10.0.0.2".parse().unwrap(), 24).await;
            add_stale_neighbour(B, VIP4.into(), OLD_MAC).await;
        });
        link.a.run(|| announce(A, VIP4.into(), vmac, 1)).unwrap();
        let entry = link.b.block_on(|| async {
            wait_for_neighbour(B, VIP4.into(), WAIT, |e| {
                e.as_ref().is_some_and(|n| n.lladdr == vmac)
            })
            .await
        });
        assert_eq!(
            entry,
            Some(Neighbour {
                lladdr: vmac.to_vec(),
                state: NeighbourState::Stale
            }),
            "expected B's entry for {VIP4} to move from {} to {}",
            format_mac(OLD_MAC),
            format_mac(vmac)
        );
    }

    #[test]
    fn gratuitous_arp_creates_an_entry_only_with_arp_accept() {
        let link = Link::new();
        let vmac = virtual_mac(VIP4.into());
        let capture = link.b.block_on(|| async {
            add_address(B, "10.0.0.2".parse().unwrap(), 24).await;
            Capture::open(B)
        });
        for (arp_accept, learns) in [("0", false), ("1", true)] {
            link.b
                .run(|| sysctl(&format!("net/ipv4/conf/{B}/arp_accept"), arp_accept));
            link.a.run(|| announce(A, VIP4.into(), vmac, 1)).unwrap();
            assert_eq!(
                capture.frames(2, WAIT, is_arp).len(),
                2,
                "expected the frames on {B}"
            );
            let entry = link.b.block_on(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                neighbour(B, VIP4.into()).await
            });
            let learned = entry.as_ref().is_some_and(|n| n.lladdr == vmac);
            assert_eq!(
                learned, learns,
                "with arp_accept={arp_accept}, expected learned={learns}, saw entry {entry:?}"
            );
        }
    }

    #[test]
    fn neighbour_advertisement_on_the_wire() {
        let link = Link::new();
        let vmac = virtual_mac(VIP6.into());
        let capture = link.b.run(|| Capture::open(B));
        link.a
            .run(|| announce(A, VIP6.into(), vmac, 2))
            .unwrap_or_else(|e| panic!("expected the announcement to be sent, saw {e:#?}"));
        let frames = capture.frames(2, WAIT, is_na);
        assert_eq!(
            frames.len(),
            2,
            "expected two neighbour advertisements on {B}"
        );
        for frame in &frames {
            assert_eq!(mac_at(frame, 0), ALL_NODES_MAC, "Ethernet destination");
            assert_eq!(
                mac_at(frame, 6),
                link.a_mac,
                "expected the Ethernet source to be {A}'s own MAC, saw {}",
                format_mac(mac_at(frame, 6))
            );
            assert_eq!(frame[14] >> 4, 6, "IP version");
            assert_eq!(
                u16::from_be_bytes([frame[18], frame[19]]),
                32,
                "payload length"
            );
            assert_eq!(frame[21], 255, "hop limit");
            assert_eq!(frame[22..38], VIP6.octets(), "IPv6 source");
            assert_eq!(frame[38..54], ALL_NODES.octets(), "IPv6 destination");
            let icmp = &frame[54..];
            assert_eq!((icmp[0], icmp[1]), (136, 0), "type and code");
            assert_eq!(icmp[4], NA_FLAG_OVERRIDE, "expected O set, R and S clear");
            assert_eq!(icmp[5..8], [0, 0, 0], "reserved");
            assert_eq!(icmp[8..24], VIP6.octets(), "target");
            assert_eq!((icmp[24], icmp[25]), (2, 1), "target link-layer option");
            assert_eq!(
                mac_at(icmp, 26),
                vmac,
                "expected the option to carry {}, saw {}",
                format_mac(vmac),
                format_mac(mac_at(icmp, 26))
            );
            assert!(
                icmpv6_checksum_verifies(VIP6.octets(), ALL_NODES.octets(), icmp),
                "expected the received NA's checksum to verify"
            );
        }
    }

    /// Sends an NA for the VIP from IPv6 `source` out of A, and returns B's
    /// entry for the VIP after it, B having held a stale one if `tracked`.
    fn na_from(
        source: Option<Ipv6Addr>,
        tracked: bool,
        b_sysctls: &[(&str, &str)],
    ) -> Option<Neighbour> {
        let link = Link::new();
        let vmac = virtual_mac(VIP6.into());
        let capture = link.b.block_on(|| async {
            for (key, value) in b_sysctls {
                sysctl(&format!("net/ipv6/conf/{B}/{key}"), value);
            }
            if tracked {
                add_stale_neighbour(B, VIP6.into(), OLD_MAC).await;
            }
            Capture::open(B)
        });
        link.a.run(|| match source {
            None => announce(A, VIP6.into(), vmac, 1).unwrap(),
            Some(source) => {
                let frame = neighbour_advertisement(link.a_mac, VIP6, vmac, source);
                PacketSocket::bind(link.a_index)
                    .unwrap()
                    .send(&frame)
                    .unwrap();
            }
        });
        assert_eq!(
            capture.frames(1, WAIT, is_na).len(),
            1,
            "expected the NA on {B}"
        );
        link.b.block_on(|| async {
            if tracked {
                wait_for_neighbour(B, VIP6.into(), WAIT, |e| {
                    e.as_ref().is_some_and(|n| n.lladdr == vmac)
                })
                .await
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                neighbour(B, VIP6.into()).await
            }
        })
    }

    #[test]
    fn neighbour_advertisement_updates_an_existing_entry_from_the_vip_or_a_link_local_source() {
        let vmac = virtual_mac(VIP6.into());
        let link_local: Ipv6Addr = "fe80::4c:41ff:fe42:a".parse().unwrap();
        for (source, name) in [
            (None, "the VIP (announce)"),
            (Some(link_local), "a link-local"),
        ] {
            let entry = na_from(source, true, &[]);
            assert_eq!(
                entry,
                Some(Neighbour {
                    lladdr: vmac.to_vec(),
                    state: NeighbourState::Stale
                }),
                "expected an NA from {name} source to move B's entry from {} to {}",
                format_mac(OLD_MAC),
                format_mac(vmac)
            );
        }
    }

    #[test]
    fn unsolicited_na_creates_no_entry_on_a_host_but_does_on_an_accepting_router() {
        let on_host = na_from(None, false, &[]);
        assert_eq!(
            on_host, None,
            "expected a host to create no entry, saw {on_host:?}"
        );
        let on_router = na_from(
            None,
            false,
            &[("forwarding", "1"), ("accept_untracked_na", "1")],
        );
        assert!(
            on_router
                .as_ref()
                .is_some_and(|n| n.lladdr == virtual_mac(VIP6.into())),
            "expected a router with accept_untracked_na=1 to learn the VIP, saw {on_router:?}"
        );
    }
}
