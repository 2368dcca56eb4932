//! The farm's XDP ingress program.
//!
//! For now it classifies every frame (Ethernet, VLAN, ARP, IPv4, IPv6) and
//! counts the classes; the bucket filter of the farm module builds on the
//! same parser.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use halo_common::farm::{PacketClass, MAX_VLAN_TAGS};

use halo_ebpf::packet::{
    be16, has_bytes, ptr_at, ArpHdr, EthHdr, Ipv4Hdr, Ipv6Hdr, Truncated, VlanHdr, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6,
};

/// Frames seen per [`PacketClass`], per CPU (no atomics on the hot path).
#[map]
static FARM_CLASS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

#[xdp]
pub fn farm_ingress(ctx: XdpContext) -> u32 {
    // Every frame passes for now; the fallback on a parse failure is PASS as
    // well, because dropping what we failed to understand would cut the node
    // off its own network, while the kernel's stack validates anything it
    // receives anyway.
    let (class, tagged) = classify(&ctx);
    count(class);
    if tagged {
        count(PacketClass::VlanTagged);
    }
    XDP_PASS
}

#[inline(always)]
fn count(class: PacketClass) {
    if let Some(counter) = FARM_CLASS_COUNTERS.get_ptr_mut(class as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array value;
        // XDP programs run with preemption disabled, so nothing else writes it.
        unsafe { *counter += 1 };
    }
}

/// The class of the frame, and whether it carried a VLAN tag.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (PacketClass, bool) {
    match try_classify(ctx) {
        Ok(found) => found,
        Err(Truncated) => (PacketClass::Malformed, false),
    }
}

#[inline(always)]
fn try_classify(ctx: &XdpContext) -> Result<(PacketClass, bool), Truncated> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked that the whole header lies inside the frame.
    let mut ether_type = be16(unsafe { (*eth).ether_type });
    let mut offset = core::mem::size_of::<EthHdr>();
    let mut tagged = false;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Ok(tag) = ptr_at::<VlanHdr>(ctx, offset) else {
            return Ok((PacketClass::Malformed, true));
        };
        // SAFETY: bounds checked by ptr_at.
        ether_type = be16(unsafe { (*tag).ether_type });
        offset += core::mem::size_of::<VlanHdr>();
        tagged = true;
    }
    let class = match ether_type {
        ETH_P_ARP => classify_arp(ctx, offset),
        ETH_P_IPV4 => classify_ipv4(ctx, offset),
        ETH_P_IPV6 => classify_ipv6(ctx, offset),
        _ => PacketClass::Other,
    };
    Ok((class, tagged))
}

#[inline(always)]
fn classify_arp(ctx: &XdpContext, offset: usize) -> PacketClass {
    let Ok(arp) = ptr_at::<ArpHdr>(ctx, offset) else {
        return PacketClass::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &*arp };
    let ethernet_ipv4 =
        be16(arp.htype) == 1 && be16(arp.ptype) == ETH_P_IPV4 && arp.hlen == 6 && arp.plen == 4;
    if ethernet_ipv4 {
        PacketClass::Arp
    } else {
        PacketClass::Malformed
    }
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext, offset: usize) -> PacketClass {
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return PacketClass::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let well_formed = ip.version_ihl >> 4 == 4
        && header_len >= core::mem::size_of::<Ipv4Hdr>()
        && usize::from(be16(ip.total_len)) >= header_len
        && has_bytes(ctx, offset, header_len);
    if well_formed {
        PacketClass::Ipv4
    } else {
        PacketClass::Malformed
    }
}

#[inline(always)]
fn classify_ipv6(ctx: &XdpContext, offset: usize) -> PacketClass {
    let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return PacketClass::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*ip).version_class_flow[0] } >> 4 == 6 {
        PacketClass::Ipv6
    } else {
        PacketClass::Malformed
    }
}
