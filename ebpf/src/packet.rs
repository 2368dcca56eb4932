//! Bounds-checked access to packet bytes and the headers the farm parses.
//!
//! Every read of packet memory goes through [`ptr_at`]: the verifier accepts
//! a packet access only after a comparison against `data_end` that it can
//! see, and keeping that comparison in one place keeps it right.

use core::mem;

use aya_ebpf::programs::XdpContext;

/// The packet is shorter than the header the caller asked for.
pub struct Truncated;

/// A pointer to a `T` at `offset` bytes into the frame, or [`Truncated`] if
/// the frame ends before the whole `T`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Truncated> {
    if !has_bytes(ctx, offset, mem::size_of::<T>()) {
        return Err(Truncated);
    }
    Ok((ctx.data() + offset) as *const T)
}

/// A writable pointer to a `T` at `offset` bytes into the frame, for the
/// answers the program builds in place; bounds checked like [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Truncated> {
    Ok(ptr_at::<T>(ctx, offset)? as *mut T)
}

/// Whether the frame holds `len` bytes from `offset` on.
#[inline(always)]
pub fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Big-endian EtherType.
    pub ether_type: [u8; 2],
}

/// The 4 bytes an 802.1Q or 802.1ad tag inserts before the EtherType.
#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    /// Big-endian EtherType of what follows the tag.
    pub ether_type: [u8; 2],
}

/// An ARP packet for IPv4 over Ethernet (RFC 826).
#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The fixed part of an IPv4 header.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The fixed IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first 2 bytes of an IPv6 hop-by-hop, routing or destination options
/// header (RFC 8200 §4.3–4.6).
#[repr(C)]
pub struct Ipv6OptionsHead {
    pub next_header: u8,
    /// The header's length in 8-byte units, not counting the first 8.
    pub len: u8,
}

/// An IPv6 fragment header (RFC 8200 §4.5).
#[repr(C)]
pub struct Ipv6FragmentHdr {
    pub next_header: u8,
    pub _reserved: u8,
    /// Big-endian: offset in 8-byte units (13 bits), 2 reserved bits, M.
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// The first 4 bytes of a TCP or UDP header.
#[repr(C)]
pub struct Ports {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

/// The first 14 bytes of a TCP header: ports, sequence numbers, offset and
/// flags.
#[repr(C)]
pub struct TcpHead {
    pub ports: Ports,
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub offset: u8,
    pub flags: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An ICMPv6 neighbour solicitation or advertisement with one link-layer
/// address option, as exchanged for a unicast address (RFC 4861 §4.3, §4.4).
#[repr(C)]
pub struct NeighbourMessage {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: [u8; 2],
    pub flags: [u8; 4],
    pub target: [u8; 16],
    pub option_type: u8,
    pub option_len: u8,
    pub mac: [u8; 6],
}

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// Reads a big-endian `u16` stored as two bytes (packet headers are not
/// aligned, so no `u16` field is read directly).
#[inline(always)]
pub fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}
