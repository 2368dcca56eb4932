//! The farm ingress program's view of the frames it sees.

/// How many VLAN tags the parser walks through before giving up on a frame
/// (QinQ is two; more is not a frame a farm interface should see).
pub const MAX_VLAN_TAGS: usize = 2;

/// How many IPv6 extension headers (hop-by-hop, routing, fragment,
/// destination options) the parser walks to find a VIP packet's transport
/// header; a VIP packet with a longer chain is dropped, as one no rule
/// names.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 6;

/// Buckets of the farm's client hash (SafeKit has 256).
pub const BUCKETS: u32 = 4096;

/// What this node does with the frames of one bucket; the values of the
/// `FARM_BUCKETS` table.
///
/// A bucket that changes owner in a planned rebalance passes through
/// `Draining` on the old owner and `Incoming` on the new one: the old owner
/// keeps the TCP connections it has sockets for and the UDP flows it
/// served, the new one takes new connections (SYN), what it has sockets
/// for, and the UDP flows the old owner does not serve. No state is shared
/// per packet: each node asks its own kernel and its own flow table, which
/// records every UDP flow it sees (see [`UdpFlow`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BucketState {
    /// Another node's bucket: drop.
    NotMine = 0,
    /// This node's bucket: accept.
    Owned = 1,
    /// Was this node's: accept only flows it still has a socket (TCP) or a
    /// fresh flow entry it accepted (UDP) for.
    Draining = 2,
    /// Now this node's, while the old owner drains: accept new TCP
    /// connections and flows with a socket here; UDP as the bucket's
    /// `FARM_CUTS` entry says ([`UdpFlow`]).
    Incoming = 3,
}

impl BucketState {
    /// Decodes a table value; unknown values are treated as `NotMine`.
    pub const fn from_raw(raw: u8) -> BucketState {
        match raw {
            1 => BucketState::Owned,
            2 => BucketState::Draining,
            3 => BucketState::Incoming,
            _ => BucketState::NotMine,
        }
    }
}

/// How a rule hashes a client into a bucket.
pub mod filter {
    /// The client's source address: one client, one node (sticky).
    pub const SOURCE_ADDR: u8 = 0;
    /// The client's source address and port: connections spread.
    pub const SOURCE_PORT: u8 = 1;
}

/// The most rules a farm module may have.
pub const MAX_RULES: u32 = 16;

/// One rule: traffic to the VIP on `proto` and a destination port in
/// `first..=last` is load-balanced with `filter`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FarmRule {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// A [`filter`] value.
    pub filter: u8,
    pub first_port: u16,
    pub last_port: u16,
    pub _pad: u16,
}

/// A VIP, as the ingress program keys it: IPv4 as an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`), so one map holds both families.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct VipKey {
    pub addr: [u8; 16],
}

impl VipKey {
    /// The key of an IPv4 VIP.
    pub const fn v4(octets: [u8; 4]) -> VipKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = octets[0];
        addr[13] = octets[1];
        addr[14] = octets[2];
        addr[15] = octets[3];
        VipKey { addr }
    }
}

/// Per-VIP data: the virtual MAC that ARP and neighbour answers carry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VipValue {
    pub vmac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The farm program's counters on one CPU (`FARM_STATS`). Only frames
/// for a VIP are counted: the others pass without a look at the counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FarmStats {
    /// Frames per [`Verdict`].
    pub verdicts: [u64; Verdict::COUNT as usize],
}

/// Slots of the VIP index per address family: the low 12 bits of an
/// address pick its slot (`FARM_VIP_SLOTS`, IPv4 first, then IPv6).
pub const VIP_SLOTS: u32 = 4096;

/// What a slot of the VIP index holds; [`VipSlot::state`].
pub mod slot {
    /// No VIP of this family ends with the slot's 12 bits: not a VIP.
    pub const EMPTY: u8 = 0;
    /// Exactly one VIP does: the slot holds it.
    pub const ONE: u8 = 1;
    /// Several do: ask `FARM_VIPS`.
    pub const SHARED: u8 = 2;
}

/// One slot of the VIP index: a map lookup that the verifier turns into a
/// few instructions, where the hash map of VIPs costs a hash of 16 bytes
/// on every frame. Frames for no VIP stop at an empty slot or an address
/// that differs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VipSlot {
    /// The VIP (IPv4 mapped into IPv6), when `state` is [`slot::ONE`].
    pub addr: [u8; 16],
    pub vmac: [u8; 6],
    /// A [`slot`] value.
    pub state: u8,
    pub _pad: u8,
}

/// The slot of the VIP index for `addr` (IPv4 mapped into IPv6, or IPv6).
pub const fn vip_slot_of(addr: &[u8; 16], is_v4: bool) -> u32 {
    let low = (((addr[14] & 0x0f) as u32) << 8) | addr[15] as u32;
    if is_v4 {
        low
    } else {
        VIP_SLOTS + low
    }
}

/// Settings of the farm ingress program (one entry).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FarmSettings {
    /// The farm interface's own MAC: the destination of accepted frames
    /// and the Ethernet source of ARP and neighbour answers.
    pub own_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// How many entries of `FARM_RULES` are in use.
    pub rule_count: u32,
    /// Which half of `FARM_BUCKETS` is live (0 or 1): the daemon writes the
    /// other half, then flips this, so a table change is atomic per node.
    pub active_table: u32,
    /// Idle time after which a UDP flow entry no longer keeps its node.
    pub udp_idle_ns: u64,
}

/// What the farm ingress program did with a frame; indices of
/// `FarmStats::verdicts`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    /// For the VIP, in a bucket this node serves: passed up. Counted per
    /// bucket (`FARM_BUCKET_PACKETS`) only; this verdict's slot stays 0
    /// and user space sums the buckets.
    Accepted = 0,
    /// For the VIP, in another node's bucket: dropped.
    OtherNode = 1,
    /// For the VIP, but no rule names its protocol and port, or the packet
    /// is cut short (or nested too deep) before them: dropped.
    NoRule = 2,
    /// An ARP request for the VIP answered by this node.
    ArpAnswered = 3,
    /// An ARP request for the VIP left to another node.
    ArpLeft = 4,
    /// An IPv6 neighbour solicitation for the VIP answered by this node.
    NdAnswered = 5,
    /// A neighbour solicitation for the VIP left to another node.
    NdLeft = 6,
    /// A draining bucket's packet kept because this node has its flow
    /// (also counted as accepted).
    KeptFlow = 7,
}

impl Verdict {
    /// Every verdict, in counter order.
    pub const ALL: [Verdict; 8] = [
        Verdict::Accepted,
        Verdict::OtherNode,
        Verdict::NoRule,
        Verdict::ArpAnswered,
        Verdict::ArpLeft,
        Verdict::NdAnswered,
        Verdict::NdLeft,
        Verdict::KeptFlow,
    ];

    /// The number of verdict counters.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// A stable lowercase name, for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::OtherNode => "other_node",
            Verdict::NoRule => "no_rule",
            Verdict::ArpAnswered => "arp_answered",
            Verdict::ArpLeft => "arp_left",
            Verdict::NdAnswered => "nd_answered",
            Verdict::NdLeft => "nd_left",
            Verdict::KeptFlow => "kept_flow",
        }
    }
}

/// A UDP flow as the ingress program remembers it: client address and
/// port, VIP port.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct UdpFlowKey {
    pub client: [u8; 16],
    pub client_port: u16,
    pub vip_port: u16,
    pub _pad: u32,
}

/// What a node's flow table holds of one UDP flow to a VIP rule: every
/// node records every such flow it sees, the ones it drops included,
/// because every node sees every datagram (the virtual MAC is flooded).
///
/// The UDP handover follows from it, per datagram and without asking the
/// other node:
/// - the old owner (`Draining`) keeps a flow whose entry is fresh and
///   `mine`: one it served while it owned the bucket;
/// - the new owner (`Incoming`) leaves to the old owner a fresh flow it
///   does not serve itself and first saw before the bucket's cut (the
///   moment the old owner stopped taking new flows, `FARM_CUTS`), and
///   takes every other one: new flows, flows first seen after the cut
///   (the old owner dropped them), flows idle for `udp_idle`. Until the
///   new owner knows that moment (the cut is [`CUT_UNKNOWN`]) the old
///   owner may still own the bucket outright, so it takes no flow but its
///   own.
///
/// Both nodes saw the same datagrams, so they agree on "fresh" and "first
/// seen before the cut" except within [`UDP_KEEP_MARGIN_NS`] of the idle limit
/// (the old owner keeps its flows that much longer, so that doubt ends in
/// a datagram taken twice, never in one dropped twice).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UdpFlow {
    /// When this node saw the flow's first datagram after an idle time
    /// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub first_seen: u64,
    /// When this node last recorded a datagram of it (at most
    /// [`UDP_KEEP_MARGIN_NS`] behind the last datagram).
    pub last_seen: u64,
    /// 1 when this node accepted the last datagram it recorded. A word
    /// and a word of padding, not a byte and seven: the kernel program
    /// would clear those seven with a call to `memset` on every write.
    pub mine: u32,
    pub _pad: u32,
}

/// How stale a flow entry's `last_seen` may get before a datagram
/// rewrites it: the flow table is written at most this often per flow
/// while nothing else about the flow changes.
pub const UDP_REFRESH_NS: u64 = 100_000_000;

/// A bucket's `FARM_CUTS` value while the new owner does not know
/// when the old one stopped taking new flows (UDP flows and TCP
/// connections).
pub const CUT_UNKNOWN: u64 = u64::MAX;

/// Whether an `Incoming` bucket whose cut is `cut` takes a new TCP
/// connection (a SYN without ACK). Only once the cut is known: before,
/// the old owner may still own the bucket outright and answer the same
/// SYN, and of the two SYN-ACKs the client gets, the node whose answer
/// came second resets the connection the other accepted (its request
/// socket refuses the client's ACK). Dropped, the SYN comes again after
/// the client's retransmission timeout (1 s on Linux), by then to a
/// bucket whose cut is known.
pub fn incoming_takes_syn(cut: u64) -> bool {
    cut != CUT_UNKNOWN
}

/// How far `bpf_ktime_get_coarse_ns` may lag `bpf_ktime_get_ns` and
/// [`udp_owned_unchanged`] still hold: the coarse clock is the time of the
/// last tick (4 ms at `CONFIG_HZ=250`, 10 ms at 100), brought up to date
/// when a CPU leaves idle on an interrupt. Should it lag more (a virtual
/// CPU descheduled that long), a refresh is skipped and `last_seen` trails
/// the flow by that much more: a flow within that much of `udp_idle` may
/// then go from a draining node to the new owner early.
pub const COARSE_LAG_NS: u64 = 20_000_000;

/// How much longer than `udp_idle` an old owner keeps a flow it served:
/// its `last_seen` may trail the flow's last datagram by up to
/// [`UDP_REFRESH_NS`], and by [`COARSE_LAG_NS`] more where the refresh was
/// judged on the coarse clock ([`udp_owned_unchanged`]), differently from
/// the new owner's.
pub const UDP_KEEP_MARGIN_NS: u64 = UDP_REFRESH_NS + COARSE_LAG_NS;

/// Whether a datagram of a flow whose entry is `entry`, in a bucket in
/// `state`, is accepted with nothing to write, judged by a clock reading
/// `coarse_now` that lags the precise one by at most [`COARSE_LAG_NS`]:
/// then [`udp_decision`] would say the same at the precise time. Only in
/// an `Owned` bucket: the common case (a flow this node serves, refreshed
/// less than `UDP_REFRESH_NS - COARSE_LAG_NS` ago) costs no precise clock
/// read.
#[inline(always)]
pub fn udp_owned_unchanged(
    state: BucketState,
    entry: &UdpFlow,
    coarse_now: u64,
    idle_ns: u64,
) -> bool {
    let limit = if idle_ns < UDP_REFRESH_NS {
        idle_ns
    } else {
        UDP_REFRESH_NS
    };
    state == BucketState::Owned
        && entry.mine != 0
        && coarse_now.saturating_sub(entry.last_seen) + COARSE_LAG_NS < limit
}

/// The decision on one UDP datagram of a rule in a bucket in `state`, at
/// `now`, given the flow's entry in this node's table (`None` if it has
/// none; a reference, so that no copy of an entry that is not there is
/// read: LLVM's kernel code for that read a register it never set, which
/// the verifier refuses), the idle limit and the bucket's cut (see [`UdpFlow`]): whether
/// to accept it, and the entry to write, if it must be rewritten.
#[inline(always)]
pub fn udp_decision(
    state: BucketState,
    entry: Option<&UdpFlow>,
    now: u64,
    idle_ns: u64,
    cut: u64,
) -> (bool, Option<UdpFlow>) {
    let age = |e: &UdpFlow| now.saturating_sub(e.last_seen);
    let fresh = match entry {
        Some(e) if age(e) < idle_ns => Some(e),
        _ => None,
    };
    let accept = match state {
        BucketState::Owned => true,
        BucketState::NotMine => false,
        // `last_seen` may lag the last datagram by up to UDP_KEEP_MARGIN_NS,
        // differently on the new owner: the old owner keeps its flows that
        // much longer, so that the two never both let one go.
        BucketState::Draining => {
            matches!(entry, Some(e) if e.mine != 0 && age(e) < idle_ns.saturating_add(UDP_KEEP_MARGIN_NS))
        }
        BucketState::Incoming => match fresh {
            Some(e) if e.mine != 0 => true,
            Some(e) if e.first_seen < cut => false,
            _ => now >= cut,
        },
    };
    let first_seen = match fresh {
        Some(e) => e.first_seen,
        None => now,
    };
    let rewrite = match fresh {
        None => true,
        Some(e) => (e.mine != 0) != accept || now.saturating_sub(e.last_seen) >= UDP_REFRESH_NS,
    };
    let write = UdpFlow {
        first_seen,
        last_seen: now,
        mine: u32::from(accept),
        _pad: 0,
    };
    (accept, if rewrite { Some(write) } else { None })
}

/// The farm's client hash: a bucket from the client's address (16 bytes,
/// IPv4 mapped) and, for `filter::SOURCE_PORT`, its port. Shared by the
/// kernel program and user space (the reference model of the tests), so
/// both agree bit for bit.
///
/// Each 32-bit word of the address is mixed in with a multiply–rotate
/// step and the result finished with murmur3's `fmix32`, which spreads
/// sequential addresses and ports evenly over the buckets.
#[inline(always)]
pub fn bucket_of(addr: &[u8; 16], port: Option<u16>) -> u32 {
    let mut h: u32 = SEED;
    let mut i = 0;
    while i < 4 {
        let word = u32::from_be_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        h = mix(h, word);
        i += 1;
    }
    finish(h, port)
}

/// [`bucket_of`] of an IPv4 client (`::ffff:a.b.c.d`), with the mapped
/// prefix's three words mixed in ahead of time: the same bucket, four
/// bytes read instead of sixteen.
#[inline(always)]
pub fn bucket_of_v4(octets: [u8; 4], port: Option<u16>) -> u32 {
    finish(mix(V4_PREFIX, u32::from_be_bytes(octets)), port)
}

/// The hash's starting state, "halo".
const SEED: u32 = 0x68_61_6c_6f;

/// The hash state after the three words an IPv4-mapped address starts
/// with: 0, 0 and 0x0000ffff.
const V4_PREFIX: u32 = mix(mix(mix(SEED, 0), 0), 0x0000_ffff);

#[inline(always)]
fn finish(mut h: u32, port: Option<u16>) -> u32 {
    if let Some(port) = port {
        h = mix(h, u32::from(port) | 0x1_0000);
    }
    fmix32(h) % BUCKETS
}

#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], plain integers and byte arrays, padding spelled
    // out as fields: every bit pattern is valid.
    unsafe impl aya::Pod for super::FarmRule {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::FarmStats {}
    unsafe impl aya::Pod for super::FarmSettings {}
    unsafe impl aya::Pod for super::UdpFlowKey {}
    unsafe impl aya::Pod for super::UdpFlow {}
}
