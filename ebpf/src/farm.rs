//! The farm's XDP ingress program: the virtual IP's layer 2 and the bucket
//! filter (SPEC §4).
//!
//! Every node of a farm sees every frame for the VIP, because the VIP's
//! virtual MAC is never a source address and switches flood it. For each
//! frame this program decides, without asking any other node:
//! - an ARP request or IPv6 neighbour solicitation for a VIP is answered
//!   with the VIP's virtual MAC by exactly one node, the owner of the
//!   requester's bucket, and dropped by the others (so no kernel answers
//!   with its own MAC);
//! - an IP packet for a VIP is hashed into one of 4096 buckets by the
//!   client's address (and port, per rule); the bucket's owner rewrites the
//!   destination MAC to its own and passes it up, every other node drops it;
//!   buckets in a planned handover keep the connections their old owner has
//!   sockets for and the UDP flows it served (every node records every UDP
//!   flow it sees, so old and new owner judge a datagram alike); a VIP packet cut short before what its bucket depends on,
//!   or behind more IPv6 extension headers than are walked, is dropped by
//!   every node, as is VIP traffic no rule names;
//! - everything else passes untouched, after one look at the VIP index
//!   (an array slot picked by the address's low 12 bits).

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
        BPF_F_CURRENT_NETNS,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
    EbpfContext as _,
};
use halo_common::farm::{
    bucket_of, bucket_of_v4, filter, incoming_takes_syn, slot, udp_decision, udp_owned_unchanged,
    BucketState, FarmRule, FarmSettings, FarmStats, UdpFlow, UdpFlowKey, Verdict, VipKey, VipSlot,
    VipValue, BUCKETS, CUT_UNKNOWN, MAX_IPV6_EXTENSION_HEADERS, MAX_RULES, MAX_VLAN_TAGS,
    VIP_SLOTS,
};
use halo_ebpf::packet::{
    be16, has_bytes, ptr_at, ptr_at_mut, ArpHdr, EthHdr, Ipv4Hdr, Ipv6FragmentHdr, Ipv6Hdr,
    Ipv6OptionsHead, NeighbourMessage, Ports, TcpHead, Truncated, VlanHdr, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, ICMPV6_NEIGHBOUR_ADVERTISEMENT,
    ICMPV6_NEIGHBOUR_SOLICITATION, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN,
};

/// Frames for a VIP per [`Verdict`], per CPU (no atomics on the hot
/// path), in one entry.
#[map]
static FARM_STATS: PerCpuArray<FarmStats> = PerCpuArray::with_max_entries(1, 0);

/// Packets accepted per bucket, per CPU.
#[map]
static FARM_BUCKET_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(BUCKETS, 0);

/// The program's settings; until the daemon writes them, nothing is a VIP.
#[map]
static FARM_SETTINGS: Array<FarmSettings> = Array::with_max_entries(1, 0);

/// The VIPs, IPv4 mapped into IPv6, with their virtual MACs: asked only
/// for the addresses of a `SHARED` slot of `FARM_VIP_SLOTS`.
#[map]
static FARM_VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(64, 0);

/// The VIP index (common::farm::VipSlot): IPv4 slots, then IPv6 ones, each
/// picked by the low 12 bits of the address. Every frame's destination is
/// checked here; an array lookup costs a few instructions.
#[map]
static FARM_VIP_SLOTS: Array<VipSlot> = Array::with_max_entries(2 * VIP_SLOTS, 0);

/// The rules, `FarmSettings::rule_count` of them in use.
#[map]
static FARM_RULES: Array<FarmRule> = Array::with_max_entries(MAX_RULES, 0);

/// Two bucket tables of [`BucketState`] values; `active_table` says which
/// one is live.
#[map]
static FARM_BUCKETS: Array<u8> = Array::with_max_entries(2 * BUCKETS, 0);

/// The UDP flows to a VIP rule this node saw, whether it accepted them or
/// not (common::farm::UdpFlow).
#[map]
static FARM_UDP_FLOWS: LruHashMap<UdpFlowKey, UdpFlow> = LruHashMap::with_max_entries(65_536, 0);

/// Per bucket, in the same two halves as `FARM_BUCKETS`: when the old
/// owner of an `Incoming` bucket stopped taking new flows
/// (`bpf_ktime_get_ns` time; `CUT_UNKNOWN` while this node does not
/// know, and then the bucket takes neither new UDP flows nor new TCP
/// connections). Unused in other states.
#[map]
static FARM_CUTS: Array<u64> = Array::with_max_entries(2 * BUCKETS, 0);

#[xdp]
pub fn farm_ingress(ctx: XdpContext) -> u32 {
    // A frame the parser cannot read passes: dropping what we failed to
    // understand would cut the node off its own network, and the kernel's
    // stack validates whatever it receives anyway. Once a frame is known to
    // be for a VIP, what cannot be read of it is dropped instead (see
    // `unreadable`), and it is read completely before any decision to
    // accept it.
    try_farm_ingress(&ctx).unwrap_or(XDP_PASS)
}

/// The baseline of `cargo xtask bench farm`: an XDP program that passes
/// every frame and does nothing else, in the same object so that both run
/// under the same kernel, loader and attach path. The daemon never loads it.
#[xdp]
pub fn farm_noop(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The load generator of `cargo xtask bench farm`'s filter rate, run by
/// `BPF_PROG_RUN` in live-frame mode on one IPv4 TCP frame without IP
/// options: it gives each copy a client address drawn among 4096 (the low
/// 12 bits of the source, checksums kept right) and sends it out of the
/// interface it runs for (`XDP_TX`), so that the frames reach the peer
/// veth's XDP program as frames, as a NIC driver hands them over, rather
/// than as socket buffers. The daemon never loads it.
#[xdp]
pub fn farm_blast(ctx: XdpContext) -> u32 {
    const SRC_LOW: usize = 14 + 14;
    const IP_CHECK: usize = 14 + 10;
    const TCP_CHECK: usize = 14 + 20 + 16;
    let (Ok(src), Ok(ip_check), Ok(tcp_check)) = (
        ptr_at_mut::<[u8; 2]>(&ctx, SRC_LOW),
        ptr_at_mut::<[u8; 2]>(&ctx, IP_CHECK),
        ptr_at_mut::<[u8; 2]>(&ctx, TCP_CHECK),
    ) else {
        return XDP_ABORTED;
    };
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() } as u16;
    // SAFETY: each pointer was bounds checked by ptr_at_mut; the frame is
    // this program's to rewrite.
    unsafe {
        let old = be16(*src);
        let new = (old & 0xf000) | (random & 0x0fff);
        *src = new.to_be_bytes();
        // The address is in the IP header's sum and the TCP pseudo-header's.
        *ip_check = checksum_replace(be16(*ip_check), old, new).to_be_bytes();
        *tcp_check = checksum_replace(be16(*tcp_check), old, new).to_be_bytes();
    }
    XDP_TX
}

/// An Internet checksum after one 16-bit word of what it covers changed
/// from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
fn checksum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn count(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs run with
        // preemption disabled, so nothing else writes it concurrently.
        unsafe { *counter += 1 };
    }
}

/// Counts `v` in this CPU's `FARM_STATS` entry. Only frames for a VIP
/// are counted, each once (an accepted one in its bucket instead,
/// `FARM_BUCKET_PACKETS`): a frame that is not for one passes without a
/// look at the counters (the interface's own counters have it), so that
/// the rest of a host's traffic pays as little as the VIP lookup allows.
#[inline(always)]
fn count_verdict(v: Verdict) {
    if let Some(stats) = FARM_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's entry of a per-CPU array; XDP programs run
        // with preemption disabled, so nothing else writes it meanwhile.
        unsafe { (*stats).verdicts[v as usize] += 1 };
    }
}

/// Counts `v` and returns `action`.
#[inline(always)]
fn verdict(v: Verdict, action: u32) -> u32 {
    count_verdict(v);
    action
}

/// The verdict on a VIP packet cut short before what its bucket depends on
/// (ports, TCP flags, an IPv6 extension header), or behind more extension
/// headers than are walked: no node can tell whose it is, and SPEC §4
/// passes VIP traffic only in the buckets a node serves, so every node
/// drops it, as it drops VIP traffic no rule names. Passing it would hand
/// it to every node's kernel.
#[inline(always)]
fn unreadable(_: Truncated) -> Result<u32, Truncated> {
    Ok(verdict(Verdict::NoRule, XDP_DROP))
}

fn try_farm_ingress(ctx: &XdpContext) -> Result<u32, Truncated> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let mut ether_type = be16(unsafe { (*eth).ether_type });
    let mut offset = core::mem::size_of::<EthHdr>();
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = ptr_at::<VlanHdr>(ctx, offset)?;
        // SAFETY: bounds checked by ptr_at.
        ether_type = be16(unsafe { (*tag).ether_type });
        offset += core::mem::size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_ARP => on_arp(ctx, offset),
        ETH_P_IPV4 => on_ipv4(ctx, offset),
        ETH_P_IPV6 => on_ipv6(ctx, offset),
        _ => Ok(XDP_PASS),
    }
}

/// The state of `bucket` in the live table.
#[inline(always)]
fn bucket_state(settings: &FarmSettings, bucket: u32) -> BucketState {
    let index = (settings.active_table & 1) * BUCKETS + (bucket % BUCKETS);
    match FARM_BUCKETS.get(index) {
        Some(raw) => BucketState::from_raw(*raw),
        None => BucketState::NotMine,
    }
}

#[inline(always)]
fn settings() -> Option<&'static FarmSettings> {
    FARM_SETTINGS.get(0)
}

#[inline(always)]
fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    VipKey::v4(octets).addr
}

/// `a[at..at + 4]` as one word, for comparisons without a call to `bcmp`.
#[inline(always)]
fn word(a: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]])
}

/// The virtual MAC of `dst` if it is an IPv4 VIP.
#[inline(always)]
fn vip_v4(dst: [u8; 4]) -> Option<[u8; 6]> {
    let index = ((u32::from(dst[2]) & 0x0f) << 8) | u32::from(dst[3]);
    let entry = FARM_VIP_SLOTS.get(index)?;
    match entry.state {
        // The slot is an IPv4 one: its first 12 bytes are the mapped prefix.
        slot::ONE if word(&entry.addr, 12) == u32::from_ne_bytes(dst) => Some(entry.vmac),
        // SAFETY: a map lookup; the value is copied out.
        slot::SHARED => unsafe { FARM_VIPS.get(VipKey::v4(dst)) }.map(|v| v.vmac),
        _ => None,
    }
}

/// The virtual MAC of `dst` if it is an IPv6 VIP.
#[inline(always)]
fn vip_v6(dst: &[u8; 16]) -> Option<[u8; 6]> {
    let index = VIP_SLOTS + (((u32::from(dst[14]) & 0x0f) << 8) | u32::from(dst[15]));
    let entry = FARM_VIP_SLOTS.get(index)?;
    match entry.state {
        slot::ONE
            if word(&entry.addr, 12) == word(dst, 12)
                && word(&entry.addr, 8) == word(dst, 8)
                && word(&entry.addr, 4) == word(dst, 4)
                && word(&entry.addr, 0) == word(dst, 0) =>
        {
            Some(entry.vmac)
        }
        // SAFETY: a map lookup; the value is copied out.
        slot::SHARED => unsafe { FARM_VIPS.get(VipKey { addr: *dst }) }.map(|v| v.vmac),
        _ => None,
    }
}

fn on_arp(ctx: &XdpContext, offset: usize) -> Result<u32, Truncated> {
    let arp = ptr_at_mut::<ArpHdr>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at_mut; the frame is ours to rewrite.
    let arp = unsafe { &mut *arp };
    let ethernet_ipv4 =
        be16(arp.htype) == 1 && be16(arp.ptype) == ETH_P_IPV4 && arp.hlen == 6 && arp.plen == 4;
    if !ethernet_ipv4 {
        return Ok(XDP_PASS);
    }
    // One after the other: most ARP is for no VIP and needs no settings.
    let Some(vmac) = vip_v4(arp.tpa) else {
        return Ok(XDP_PASS);
    };
    let Some(settings) = settings() else {
        return Ok(XDP_PASS);
    };
    // Only requests from others are answered: a gratuitous announcement of
    // the VIP (sender = target) comes from a farm node.
    if be16(arp.oper) != 1 || arp.spa == arp.tpa {
        return Ok(verdict(Verdict::ArpLeft, XDP_DROP));
    }
    let bucket = bucket_of_v4(arp.spa, None);
    match bucket_state(settings, bucket) {
        BucketState::Owned | BucketState::Incoming => {}
        BucketState::NotMine | BucketState::Draining => {
            return Ok(verdict(Verdict::ArpLeft, XDP_DROP));
        }
    }
    let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked; rewriting the request into its reply in place.
    let eth = unsafe { &mut *eth };
    let requester_mac = Mac::of(&arp.sha);
    let requester_ip = Ipv4::of(&arp.spa);
    let vip_ip = Ipv4::of(&arp.tpa);
    requester_mac.store(&mut eth.dst);
    // Never the virtual MAC as a source: switches must not learn it.
    Mac::of(&settings.own_mac).store(&mut eth.src);
    arp.oper = [0, 2];
    Mac::of(&vmac).store(&mut arp.sha);
    vip_ip.store(&mut arp.spa);
    requester_mac.store(&mut arp.tha);
    requester_ip.store(&mut arp.tpa);
    Ok(verdict(Verdict::ArpAnswered, XDP_TX))
}

fn on_ipv4(ctx: &XdpContext, offset: usize) -> Result<u32, Truncated> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // The destination first: most frames are for no VIP and end here.
    if vip_v4(ip.dst).is_none() {
        return Ok(XDP_PASS);
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4
        || header_len < core::mem::size_of::<Ipv4Hdr>()
        || !has_bytes(ctx, offset, header_len)
    {
        return Ok(XDP_PASS);
    }
    let Some(settings) = settings() else {
        return Ok(XDP_PASS);
    };
    // Fragments after the first carry no ports: every fragment of a
    // datagram is bucketed by address alone so that they meet on one node.
    let fragmented = be16(ip.frag) & 0x3fff != 0;
    let packet = Packet {
        addrs: offset + 12,
        proto: ip.proto,
        l4: offset + header_len,
        fragmented,
        is_v4: true,
    };
    Ok(decide(ctx, settings, &packet))
}

fn on_ipv6(ctx: &XdpContext, offset: usize) -> Result<u32, Truncated> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.version_class_flow[0] >> 4 != 6 {
        return Ok(XDP_PASS);
    }
    let l4 = offset + core::mem::size_of::<Ipv6Hdr>();
    if ip.next_header == IPPROTO_ICMPV6 {
        if let Ok(icmp_type) = ptr_at::<u8>(ctx, l4) {
            // SAFETY: bounds checked by ptr_at.
            if unsafe { *icmp_type } == ICMPV6_NEIGHBOUR_SOLICITATION {
                if let Some(action) = on_neighbour_solicitation(ctx, offset) {
                    return Ok(action);
                }
            }
        }
    }
    if vip_v6(&ip.dst).is_none() {
        return Ok(XDP_PASS);
    }
    let Some(settings) = settings() else {
        return Ok(XDP_PASS);
    };
    let (proto, l4, fragmented) = match ipv6_transport(ctx, ip.next_header, l4) {
        Ok(transport) => transport,
        Err(cut) => return unreadable(cut),
    };
    let packet = Packet {
        addrs: offset + 8,
        proto,
        l4,
        fragmented,
        is_v4: false,
    };
    Ok(decide(ctx, settings, &packet))
}

/// Walks the IPv6 extension headers that start with `next_header` at `at`
/// (at most `MAX_IPV6_EXTENSION_HEADERS`): the transport protocol, the
/// offset of its header, and whether the packet is a fragment. Fragments,
/// first or later, are bucketed by address alone like IPv4's, so that they
/// meet on one node; after a later fragment's header comes data, not
/// headers. `Truncated` also for a chain longer than is walked.
#[inline(always)]
fn ipv6_transport(
    ctx: &XdpContext,
    next_header: u8,
    at: usize,
) -> Result<(u8, usize, bool), Truncated> {
    let (mut proto, mut at, mut fragmented) = (next_header, at, false);
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let head = ptr_at::<Ipv6OptionsHead>(ctx, at)?;
                // SAFETY: bounds checked by ptr_at.
                let (next, len) = unsafe { ((*head).next_header, (*head).len) };
                proto = next;
                at += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let fragment = ptr_at::<Ipv6FragmentHdr>(ctx, at)?;
                // SAFETY: bounds checked by ptr_at.
                let (next, offset_flags) =
                    unsafe { ((*fragment).next_header, be16((*fragment).offset_flags)) };
                proto = next;
                at += core::mem::size_of::<Ipv6FragmentHdr>();
                // The offset or More Fragments, not the reserved bits.
                if offset_flags & 0xfff9 != 0 {
                    fragmented = true;
                }
                if offset_flags >> 3 != 0 {
                    return Ok((proto, at, true));
                }
            }
            _ => return Ok((proto, at, fragmented)),
        }
    }
    match proto {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS => Err(Truncated),
        _ => Ok((proto, at, fragmented)),
    }
}

/// An IP packet for a VIP, as far as the bucket decision needs it. Its
/// addresses stay in the frame until needed: copying them costs more than
/// most decisions.
struct Packet {
    /// Offset of the source address, which the destination follows.
    addrs: usize,
    proto: u8,
    /// Offset of the transport header.
    l4: usize,
    /// A fragment: no ports to read, or not in every fragment.
    fragmented: bool,
    is_v4: bool,
}

/// The rule for `proto` and destination `port` (any port when the packet
/// is a fragment), if one names them.
#[inline(always)]
fn find_rule(settings: &FarmSettings, proto: u8, port: Option<u16>) -> Option<FarmRule> {
    for i in 0..MAX_RULES {
        if i >= settings.rule_count {
            break;
        }
        let Some(rule) = FARM_RULES.get(i) else {
            break;
        };
        let port_matches = match port {
            Some(port) => rule.first_port <= port && port <= rule.last_port,
            None => true,
        };
        if rule.proto == proto && port_matches {
            return Some(*rule);
        }
    }
    None
}

/// The verdict on an IP packet for a VIP (a VIP packet this cannot read
/// far enough is [`unreadable`]). A subprogram that returns the action
/// itself: returning a `Result` through memory, LLVM left a pointer to the
/// subprogram's stack in its return register, which the verifier refuses.
#[inline(never)]
fn decide(ctx: &XdpContext, settings: &FarmSettings, packet: &Packet) -> u32 {
    match try_decide(ctx, settings, packet) {
        Ok(action) => action,
        Err(cut) => unreadable(cut).unwrap_or(XDP_DROP),
    }
}

#[inline(always)]
fn try_decide(
    ctx: &XdpContext,
    settings: &FarmSettings,
    packet: &Packet,
) -> Result<u32, Truncated> {
    let (bucket, state) = match packet.proto {
        IPPROTO_TCP | IPPROTO_UDP if !packet.fragmented => {
            let ports = ptr_at::<Ports>(ctx, packet.l4)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport) = unsafe { (be16((*ports).source), be16((*ports).dest)) };
            let Some(rule) = find_rule(settings, packet.proto, Some(dport)) else {
                return Ok(verdict(Verdict::NoRule, XDP_DROP));
            };
            let port = (rule.filter == filter::SOURCE_PORT).then_some(sport);
            let bucket = client_bucket(ctx, packet, port)?;
            let state = bucket_state(settings, bucket);
            let keep = match state {
                _ if packet.proto == IPPROTO_UDP => {
                    let client = client_of(ctx, packet)?;
                    let kept = udp_keeps(settings, client, bucket, sport, dport, state);
                    if kept && state == BucketState::Draining {
                        count_verdict(Verdict::KeptFlow);
                    }
                    kept
                }
                BucketState::Owned => true,
                BucketState::NotMine => false,
                BucketState::Draining => {
                    // A new connection (a SYN without ACK) belongs to the
                    // new owner, even where an old one with the same ports
                    // lingers here in TIME_WAIT.
                    let tcp = ptr_at::<TcpHead>(ctx, packet.l4)?;
                    // SAFETY: bounds checked by ptr_at.
                    let flags = unsafe { (*tcp).flags };
                    let new_connection = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
                    let kept = !new_connection && has_tcp_socket(ctx, packet, sport, dport);
                    if kept {
                        count_verdict(Verdict::KeptFlow);
                    }
                    kept
                }
                BucketState::Incoming => {
                    let tcp = ptr_at::<TcpHead>(ctx, packet.l4)?;
                    // SAFETY: bounds checked by ptr_at.
                    let flags = unsafe { (*tcp).flags };
                    let new_connection = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
                    if new_connection {
                        incoming_takes_syn(bucket_cut(settings, bucket))
                    } else {
                        has_tcp_socket(ctx, packet, sport, dport)
                    }
                }
            };
            if !keep {
                return Ok(verdict(Verdict::OtherNode, XDP_DROP));
            }
            (bucket, state)
        }
        IPPROTO_TCP | IPPROTO_UDP => {
            if find_rule(settings, packet.proto, None).is_none() {
                return Ok(verdict(Verdict::NoRule, XDP_DROP));
            }
            let bucket = client_bucket(ctx, packet, None)?;
            (bucket, bucket_state(settings, bucket))
        }
        // ICMP (echo and errors) follows the client's address: a ping to
        // the VIP gets exactly one reply.
        IPPROTO_ICMP if packet.is_v4 => {
            let bucket = client_bucket(ctx, packet, None)?;
            (bucket, bucket_state(settings, bucket))
        }
        IPPROTO_ICMPV6 if !packet.is_v4 => {
            let bucket = client_bucket(ctx, packet, None)?;
            (bucket, bucket_state(settings, bucket))
        }
        _ => return Ok(verdict(Verdict::NoRule, XDP_DROP)),
    };
    match state {
        BucketState::Owned | BucketState::Incoming => {}
        // TCP and UDP in a draining bucket were decided above.
        BucketState::Draining
            if matches!(packet.proto, IPPROTO_TCP | IPPROTO_UDP) && !packet.fragmented => {}
        _ => return Ok(verdict(Verdict::OtherNode, XDP_DROP)),
    }
    let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked; the frame was sent to the virtual MAC, which
    // the kernel would not take as its own.
    Mac::of(&settings.own_mac).store(unsafe { &mut (*eth).dst });
    // Counted once, in its bucket: `accepted` is the buckets' sum (one
    // counter less on the path most frames take).
    count(&FARM_BUCKET_PACKETS, bucket);
    Ok(XDP_PASS)
}

/// Whether this node's kernel has a live TCP socket (not a listener, not
/// TIME_WAIT) for the packet's connection, a handshake in progress
/// included: the lookup
/// returns request sockets (`TCP_NEW_SYN_RECV`) too, so a connection whose
/// SYN this node accepted just before its bucket moved completes here.
#[inline(always)]
fn has_tcp_socket(ctx: &XdpContext, packet: &Packet, sport: u16, dport: u16) -> bool {
    // SAFETY: an all-zero tuple is valid; the fields are filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if packet.is_v4 {
        let Ok(addrs) = read::<[u8; 8]>(ctx, packet.addrs) else {
            return false;
        };
        // SAFETY: writing the IPv4 member of a plain-data union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([addrs[0], addrs[1], addrs[2], addrs[3]]);
            t.daddr = u32::from_ne_bytes([addrs[4], addrs[5], addrs[6], addrs[7]]);
            t.sport = sport.to_be();
            t.dport = dport.to_be();
            core::mem::size_of_val(t)
        }
    } else {
        let Ok(addrs) = read::<[[u8; 16]; 2]>(ctx, packet.addrs) else {
            return false;
        };
        // SAFETY: writing the IPv6 member of a plain-data union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(addrs[0]);
            t.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(addrs[1]);
            t.sport = sport.to_be();
            t.dport = dport.to_be();
            core::mem::size_of_val(t)
        }
    };
    // SAFETY: the helper takes the context, a tuple of `size` bytes, and
    // returns a referenced socket or null; a non-null one is released.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        // TCP_LISTEN: a listener is no connection of ours; TCP_TIME_WAIT:
        // a connection that ended, whose ports a new one may reuse.
        let state = (*sk).state;
        let connected = state != 10 && state != 6;
        bpf_sk_release(sk.cast());
        connected
    }
}

/// A copy of the `T` at `offset` of the frame.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Truncated> {
    let at = ptr_at::<T>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at; T is plain bytes.
    Ok(unsafe { core::ptr::read_unaligned(at) })
}

/// The client's address, IPv4 mapped into IPv6.
#[inline(always)]
fn client_of(ctx: &XdpContext, packet: &Packet) -> Result<[u8; 16], Truncated> {
    if packet.is_v4 {
        Ok(mapped_v4(read(ctx, packet.addrs)?))
    } else {
        read(ctx, packet.addrs)
    }
}

/// The client's bucket, with its `port` for `filter::SOURCE_PORT`.
#[inline(always)]
fn client_bucket(ctx: &XdpContext, packet: &Packet, port: Option<u16>) -> Result<u32, Truncated> {
    if packet.is_v4 {
        Ok(bucket_of_v4(read(ctx, packet.addrs)?, port))
    } else {
        Ok(bucket_of(&read(ctx, packet.addrs)?, port))
    }
}

#[inline(always)]
fn udp_key(client: [u8; 16], sport: u16, dport: u16) -> UdpFlowKey {
    UdpFlowKey {
        client,
        client_port: sport,
        vip_port: dport,
        _pad: 0,
    }
}

/// Whether this node takes a UDP datagram of a rule in `bucket`
/// (common::farm::udp_decision), recording the flow in its table either
/// way: the other nodes decide from the same datagrams.
#[inline(always)]
fn udp_keeps(
    settings: &FarmSettings,
    client: [u8; 16],
    bucket: u32,
    sport: u16,
    dport: u16,
    state: BucketState,
) -> bool {
    let key = udp_key(client, sport, dport);
    let cut = match state {
        BucketState::Incoming => bucket_cut(settings, bucket),
        _ => CUT_UNKNOWN,
    };
    udp_flow_decision(&key, state as u8, cut, settings.udp_idle_ns) != 0
}

/// The cut of `bucket` in the active table (`FARM_CUTS`).
#[inline(always)]
fn bucket_cut(settings: &FarmSettings, bucket: u32) -> u64 {
    let index = (settings.active_table & 1) * BUCKETS + (bucket % BUCKETS);
    FARM_CUTS.get(index).copied().unwrap_or(CUT_UNKNOWN)
}

/// The flow-table half of [`udp_keeps`], a subprogram of its own: inlined
/// into `decide`, LLVM's code read on one path a register it had not set,
/// which the verifier refuses (`R4 !read_ok`).
#[inline(never)]
fn udp_flow_decision(key: &UdpFlowKey, state: u8, cut: u64, idle_ns: u64) -> u32 {
    let state = BucketState::from_raw(state);
    // SAFETY: a map lookup. The entry is copied at once: an LRU map
    // reuses a replaced entry for another key without waiting for
    // readers. Copied into a local behind a reference, not as an
    // `Option<UdpFlow>`: LLVM's code for that read a register it never set
    // on the path without an entry (`R4 !read_ok`).
    let copy: UdpFlow;
    let entry = match unsafe { FARM_UDP_FLOWS.get(key) } {
        Some(flow) => {
            copy = *flow;
            Some(&copy)
        }
        None => None,
    };
    // Most datagrams: a flow this node serves in a bucket it owns, its
    // entry recent. The coarse clock (the last tick) tells so for a
    // fraction of the precise one's cost.
    if let Some(flow) = entry {
        // SAFETY: the helper only reads the clock.
        if udp_owned_unchanged(state, flow, unsafe { bpf_ktime_get_coarse_ns() }, idle_ns) {
            return 1;
        }
    }
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let (keep, write) = udp_decision(state, entry, now, idle_ns, cut);
    if let Some(flow) = write {
        let _ = FARM_UDP_FLOWS.insert(key, flow, 0);
    }
    u32::from(keep)
}

/// Answers or leaves a neighbour solicitation for a VIP target; `None`
/// when the frame is too short to be one or its target is no VIP: then it
/// is an ordinary ICMPv6 packet, bucketed if it is sent to a VIP.
fn on_neighbour_solicitation(ctx: &XdpContext, offset: usize) -> Option<u32> {
    let l4 = offset + core::mem::size_of::<Ipv6Hdr>();
    let ip = ptr_at_mut::<Ipv6Hdr>(ctx, offset).ok()?;
    let ns = ptr_at_mut::<NeighbourMessage>(ctx, l4).ok()?;
    // SAFETY: both bounds checked; the frame is ours to rewrite.
    let (ip, ns) = unsafe { (&mut *ip, &mut *ns) };
    let vmac = vip_v6(&ns.target)?;
    let settings = settings()?;
    // Answerable: a solicitation with exactly one source link-layer option
    // (32 bytes), from a unicast address (not duplicate address detection).
    let answerable = be16(ip.payload_len) == 32
        && ns.code == 0
        && ns.option_type == 1
        && ns.option_len == 1
        && ip.src != [0u8; 16];
    if !answerable {
        return Some(verdict(Verdict::NdLeft, XDP_DROP));
    }
    match bucket_state(settings, bucket_of(&ip.src, None)) {
        BucketState::Owned | BucketState::Incoming => {}
        BucketState::NotMine | BucketState::Draining => {
            return Some(verdict(Verdict::NdLeft, XDP_DROP));
        }
    }
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok()?;
    // SAFETY: bounds checked; rewriting the solicitation into an advertisement.
    let eth = unsafe { &mut *eth };
    Mac::of(&ns.mac).store(&mut eth.dst);
    Mac::of(&settings.own_mac).store(&mut eth.src);
    Ipv6::of(&ip.src).store(&mut ip.dst);
    Ipv6::of(&ns.target).store(&mut ip.src);
    ip.hop_limit = 255;
    ns.icmp_type = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    // Solicited and Override.
    ns.flags = [0x60, 0, 0, 0];
    ns.option_type = 2;
    Mac::of(&vmac).store(&mut ns.mac);
    ns.checksum = [0, 0];
    ns.checksum = icmpv6_checksum(ip, ns).to_be_bytes();
    Some(verdict(Verdict::NdAnswered, XDP_TX))
}

/// A MAC address held as integers, copied with two loads and two stores:
/// copied as a byte array from one place in the frame to another, LLVM
/// calls a byte-at-a-time `memmove` (as far as it knows the two overlap).
#[derive(Clone, Copy)]
struct Mac(u32, u16);

impl Mac {
    #[inline(always)]
    fn of(mac: &[u8; 6]) -> Mac {
        let at = mac.as_ptr();
        // SAFETY: 4 and 2 bytes inside the 6 `mac` holds, read unaligned.
        unsafe {
            Mac(
                at.cast::<u32>().read_unaligned(),
                at.add(4).cast::<u16>().read_unaligned(),
            )
        }
    }

    #[inline(always)]
    fn store(self, mac: &mut [u8; 6]) {
        let at = mac.as_mut_ptr();
        // SAFETY: 4 and 2 bytes inside the 6 `mac` holds, written unaligned.
        unsafe {
            at.cast::<u32>().write_unaligned(self.0);
            at.add(4).cast::<u16>().write_unaligned(self.1);
        }
    }
}

/// An IPv4 address held as an integer (see [`Mac`]).
#[derive(Clone, Copy)]
struct Ipv4(u32);

impl Ipv4 {
    #[inline(always)]
    fn of(addr: &[u8; 4]) -> Ipv4 {
        // SAFETY: the 4 bytes `addr` holds, read unaligned.
        Ipv4(unsafe { addr.as_ptr().cast::<u32>().read_unaligned() })
    }

    #[inline(always)]
    fn store(self, addr: &mut [u8; 4]) {
        // SAFETY: the 4 bytes `addr` holds, written unaligned.
        unsafe { addr.as_mut_ptr().cast::<u32>().write_unaligned(self.0) }
    }
}

/// An IPv6 address held as integers (see [`Mac`]).
#[derive(Clone, Copy)]
struct Ipv6(u64, u64);

impl Ipv6 {
    #[inline(always)]
    fn of(addr: &[u8; 16]) -> Ipv6 {
        let at = addr.as_ptr();
        // SAFETY: two 8-byte halves of the 16 bytes `addr` holds.
        unsafe {
            Ipv6(
                at.cast::<u64>().read_unaligned(),
                at.add(8).cast::<u64>().read_unaligned(),
            )
        }
    }

    #[inline(always)]
    fn store(self, addr: &mut [u8; 16]) {
        let at = addr.as_mut_ptr();
        // SAFETY: two 8-byte halves of the 16 bytes `addr` holds.
        unsafe {
            at.cast::<u64>().write_unaligned(self.0);
            at.add(8).cast::<u64>().write_unaligned(self.1);
        }
    }
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of a 32-byte neighbour message.
#[inline(always)]
fn icmpv6_checksum(ip: &Ipv6Hdr, message: &NeighbourMessage) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut i = 0;
        while i + 1 < bytes.len() {
            sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
    };
    add(&ip.src);
    add(&ip.dst);
    // Upper-layer length (32) and next header (58), as 32-bit words.
    add(&[0, 0, 0, 32, 0, 0, 0, IPPROTO_ICMPV6]);
    // SAFETY: NeighbourMessage is 32 plain bytes.
    let raw: &[u8; 32] = unsafe { &*(message as *const NeighbourMessage).cast::<[u8; 32]>() };
    add(raw);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
