//! Hand-built Ethernet frames and a raw sender, for tests that must control
//! exactly what reaches an interface (the XDP programs' tests).

use std::{ffi::CString, net::Ipv4Addr, net::Ipv6Addr};

use anyhow::{bail, Context as _, Result};

/// A MAC address.
pub type Mac = [u8; 6];

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

fn ethernet(dst: Mac, src: Mac, ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// An ARP who-has request from (`src_mac`, `src_ip`) for `target`.
pub fn arp_request(src_mac: Mac, src_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet([0xff; 6], src_mac, ETH_P_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&src_ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// The IPv4 header checksum (RFC 1071) over `header`.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_udp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&udp_len.to_be_bytes());
    // A zero UDP checksum means "none" over IPv4.
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// TCP flag bits.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 TCP segment (no options, no payload, checksum left zero: the
/// XDP program under test does not check it) in an Ethernet frame.
pub fn ipv4_tcp(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV4);
    frame.extend(ipv4_packet(src, dst, 6, &tcp));
    frame
}

/// An ICMP echo request in an Ethernet frame.
pub fn ipv4_echo(dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV4);
    frame.extend(ipv4_packet(src, dst, 1, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]));
    frame
}

/// An IPv6 neighbour solicitation for `target` from (`src_mac`, `src`),
/// with its source link-layer address option, to the solicited-node
/// multicast address (checksum left zero).
pub fn neighbour_solicitation(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let mut group = [0xff02, 0, 0, 0, 0, 1, 0xff00, 0]
        .map(|w: u16| w.to_be_bytes())
        .concat();
    group[13..16].copy_from_slice(&t[13..16]);
    let dst_mac = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&group);
    frame.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&t);
    frame.extend_from_slice(&[1, 1]);
    frame.extend_from_slice(&src_mac);
    frame
}

/// The ICMPv6 checksum of the packet in `frame` (an untagged Ethernet
/// frame holding IPv6 and ICMPv6): zero when the checksum field is right.
pub fn icmpv6_checksum_residue(frame: &[u8]) -> u16 {
    let ip = &frame[14..];
    let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&ip[40..40 + len]);
    ipv4_checksum(&pseudo)
}

/// An IPv4 UDP datagram in an Ethernet frame.
pub fn ipv4_udp(dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    ipv4_udp_from(dst_mac, src_mac, src, dst, 40_000, dport)
}

/// An IPv4 UDP datagram from source port `sport` in an Ethernet frame.
pub fn ipv4_udp_from(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV4);
    frame.extend(ipv4_udp_packet(src, dst, sport, dport, b"halo"));
    frame
}

/// The same, behind one 802.1Q tag with VLAN id `vid`.
pub fn vlan_ipv4_udp(
    dst_mac: Mac,
    src_mac: Mac,
    vid: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_8021Q);
    frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    frame.extend(ipv4_udp_packet(src, dst, 40_000, 9, b"halo"));
    frame
}

/// An IPv6 UDP datagram in an Ethernet frame (checksum left zero: the
/// receiving stack drops it, the XDP program under test still sees it).
pub fn ipv6_udp(dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV6);
    let payload = b"halo";
    let udp_len = 8 + payload.len() as u16;
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[17, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&40_000u16.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Pads `frame` with zeros to Ethernet's 60-byte minimum (without FCS), as a
/// NIC would: shorter frames are runts that switches drop.
pub fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

/// Frames of full Ethernet size whose headers are wrong, one per way the
/// farm parser must call malformed: an IPv4 version of 5, an IPv4 header
/// length under 20 bytes, an IPv4 header length (60 bytes) longer than the
/// frame holds, and an ARP body that is not Ethernet/IPv4.
pub fn malformed(dst_mac: Mac, src_mac: Mac) -> Vec<Vec<u8>> {
    let ip = |version_ihl: u8| {
        let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV4);
        frame.push(version_ihl);
        frame.extend_from_slice(&[0, 0, 20]);
        padded(frame)
    };
    let mut arp = arp_request(
        src_mac,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
    );
    arp[18] = 8;
    vec![ip(0x55), ip(0x43), ip(0x4f), padded(arp)]
}

/// The MAC address of `iface` in the calling thread's network namespace.
pub fn mac_of(iface: &str) -> Result<Mac> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the MAC {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{path} does not hold a 6-byte MAC"))
}

/// Sends each frame, as is, out of `iface` through an `AF_PACKET` socket of
/// the calling thread's network namespace.
pub fn send_raw(iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let name = CString::new(iface)?;
    // SAFETY: plain libc calls with valid arguments; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {iface}: {}", std::io::Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let mut result = Ok(());
        for frame in frames {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent != frame.len() as isize {
                result = Err(anyhow::anyhow!(
                    "sending a {}-byte frame on {iface}: {}",
                    frame.len(),
                    std::io::Error::last_os_error()
                ));
                break;
            }
        }
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let packet = ipv4_udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1,
            2,
            b"x",
        );
        assert_eq!(ipv4_checksum(&packet[..20]), 0);
    }

    #[test]
    fn arp_request_is_a_42_byte_frame() {
        let frame = arp_request(
            [2; 6],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
    }
}
