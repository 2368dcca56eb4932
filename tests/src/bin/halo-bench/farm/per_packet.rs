//! The farm program's cost per packet class, through `BPF_PROG_TEST_RUN`,
//! against `farm_noop` (returns `XDP_PASS`, nothing else) on the same frame
//! in the same round.
//!
//! The kernel runs every repeat of one test run on the same buffer. Frames
//! the program answers in place (ARP requests and neighbour solicitations
//! for the VIP) would be seen as the answer from the second repeat on, so
//! those classes are timed by many test runs of one repeat each instead,
//! baseline included; the fixed cost of a run then enters both sides and
//! cancels in the difference.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Context as _, Result};
use halo::ebpf::farm::FarmIngress;
use halo_common::farm::{bucket_of, filter, BucketState, FarmRule, VipKey, BUCKETS};
use halo_tests::frames::{self, Mac};

use crate::report::{median, Table};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const OWN_MAC: Mac = [0x02, 0x68, 0x61, 0x6c, 0x6f, 0x01];
const CLIENT_MAC: Mac = [0x02, 0x63, 0x6c, 0x69, 0x65, 0x01];
const VMAC: Mac = [0x02, 0x76, 0x69, 0x70, 0x00, 0x01];
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x200);

/// SPEC §10: extra ns per packet for frames the farm acts on.
pub const VIP_TARGET_NS: f64 = 30.0;
/// SPEC §10: extra ns per packet for everything else.
pub const OTHER_TARGET_NS: f64 = 5.0;

/// What `per_packet::run` was asked to do.
pub struct Options {
    /// Rounds; every class is timed once per round on both programs.
    pub rounds: u32,
    /// Repeats of one test run, for the classes whose frame stays as is.
    pub repeat: u32,
    /// Test runs of one repeat per round, for the classes answered in place.
    pub single_runs: u32,
}

/// How a class is timed.
#[derive(Clone, Copy)]
enum Method {
    /// One test run of `repeat` repeats.
    Repeat,
    /// `single_runs` test runs of one repeat, averaged.
    Single,
}

/// One packet class and its frame.
struct Class {
    name: &'static str,
    frame: Vec<u8>,
    /// The verdict the farm program must give it.
    verdict: u32,
    /// Whether the SPEC counts it as a VIP packet (30 ns) or not (5 ns).
    vip: bool,
    method: Method,
}

/// The figures of one class.
pub struct ClassResult {
    pub name: &'static str,
    pub vip: bool,
    pub method: &'static str,
    pub verdict: &'static str,
    /// ns per packet of each round: (no-op, farm).
    pub rounds: Vec<(f64, f64)>,
}

impl ClassResult {
    pub fn noop(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.0))
    }

    pub fn farm(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.1))
    }

    /// The median over rounds of the farm's extra time in that round.
    pub fn extra(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.1 - r.0))
    }

    pub fn target(&self) -> f64 {
        if self.vip {
            VIP_TARGET_NS
        } else {
            OTHER_TARGET_NS
        }
    }
}

/// Loads the farm program with one IPv4 and one IPv6 VIP, a TCP and a UDP
/// rule and a table where this node owns every other bucket, then times
/// each class.
pub fn run(options: &Options) -> Result<Vec<ClassResult>> {
    let mut ingress = FarmIngress::load().context("load the farm program")?;
    let rules = [
        FarmRule {
            proto: 6,
            filter: filter::SOURCE_ADDR,
            first_port: 80,
            last_port: 80,
            _pad: 0,
        },
        FarmRule {
            proto: 17,
            filter: filter::SOURCE_ADDR,
            first_port: 53,
            last_port: 53,
            _pad: 0,
        },
    ];
    ingress.configure(
        OWN_MAC,
        &[(IpAddr::V4(VIP4), VMAC), (IpAddr::V6(VIP6), VMAC)],
        &rules,
        std::time::Duration::from_secs(30),
    )?;
    let table: Vec<BucketState> = (0..BUCKETS)
        .map(|b| {
            if b % 2 == 0 {
                BucketState::Owned
            } else {
                BucketState::NotMine
            }
        })
        .collect();
    ingress.set_buckets(&table)?;

    let classes = classes(&table)?;
    let mut results: Vec<ClassResult> = classes
        .iter()
        .map(|c| ClassResult {
            name: c.name,
            vip: c.vip,
            method: match c.method {
                Method::Repeat => "repeat",
                Method::Single => "single",
            },
            verdict: verdict_name(c.verdict),
            rounds: Vec::new(),
        })
        .collect();
    for class in &classes {
        let (verdict, _) = ingress.test_run_timed(&class.frame, 1)?;
        ensure!(
            verdict == class.verdict,
            "class {:?}: farm_ingress gave verdict {verdict}, expected {} ({})",
            class.name,
            class.verdict,
            verdict_name(class.verdict)
        );
    }
    for round in 0..options.rounds {
        for (class, result) in classes.iter().zip(&mut results) {
            // Alternate which program goes first, so that a drift within a
            // round favours neither.
            let (noop, farm) = if round % 2 == 0 {
                let noop = time(&mut ingress, class, options, true)?;
                (noop, time(&mut ingress, class, options, false)?)
            } else {
                let farm = time(&mut ingress, class, options, false)?;
                (time(&mut ingress, class, options, true)?, farm)
            };
            result.rounds.push((noop, farm));
        }
    }
    Ok(results)
}

/// Mean ns per packet of one measurement of `class` on the no-op program
/// or the farm program.
fn time(ingress: &mut FarmIngress, class: &Class, options: &Options, noop: bool) -> Result<f64> {
    let mut run = |repeat: u32| {
        if noop {
            ingress.noop_test_run_timed(&class.frame, repeat)
        } else {
            ingress.test_run_timed(&class.frame, repeat)
        }
    };
    match class.method {
        Method::Repeat => Ok(run(options.repeat)?.1.as_nanos() as f64),
        Method::Single => {
            let mut total = 0u128;
            for _ in 0..options.single_runs {
                total += run(1)?.1.as_nanos();
            }
            Ok(total as f64 / f64::from(options.single_runs))
        }
    }
}

fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        XDP_TX => "TX",
        _ => "?",
    }
}

/// The first IPv4 client from 10.77.1.1 on whose bucket is (not) owned.
fn client_v4(table: &[BucketState], owned: bool) -> Result<Ipv4Addr> {
    (1..=u16::MAX)
        .map(|n| {
            let [a, b] = n.to_be_bytes();
            Ipv4Addr::new(10, 77, 1 + a % 100, b)
        })
        .find(|ip| {
            let bucket = bucket_of(&VipKey::v4(ip.octets()).addr, None);
            (table[bucket as usize] == BucketState::Owned) == owned
        })
        .context("no IPv4 client address with the wanted bucket")
}

/// The first IPv6 client from fd77::1:1 on whose bucket is owned.
fn client_v6_owned(table: &[BucketState]) -> Result<Ipv6Addr> {
    (1..=u16::MAX)
        .map(|n| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 1, n))
        .find(|ip| table[bucket_of(&ip.octets(), None) as usize] == BucketState::Owned)
        .context("no IPv6 client address in an owned bucket")
}

fn classes(table: &[BucketState]) -> Result<Vec<Class>> {
    let owned = client_v4(table, true)?;
    let other = client_v4(table, false)?;
    let owned6 = client_v6_owned(table)?;
    let not_vip4 = Ipv4Addr::new(10, 77, 0, 2);
    let not_vip6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
    let tcp4 = |src, dst, dport| {
        frames::padded(frames::ipv4_tcp(
            VMAC,
            CLIENT_MAC,
            src,
            dst,
            40_000,
            dport,
            frames::TCP_ACK,
        ))
    };
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lldp.extend_from_slice(&CLIENT_MAC);
    lldp.extend_from_slice(&[0x88, 0xcc]);
    let lldp = frames::padded(lldp);
    let class = |name, frame, verdict, vip, method| Class {
        name,
        frame,
        verdict,
        vip,
        method,
    };
    Ok(vec![
        class(
            "ARP request for the VIP, answered here",
            frames::padded(frames::arp_request(CLIENT_MAC, owned, VIP4)),
            XDP_TX,
            true,
            Method::Single,
        ),
        class(
            "ARP request for the VIP, another node answers",
            frames::padded(frames::arp_request(CLIENT_MAC, other, VIP4)),
            XDP_DROP,
            true,
            Method::Repeat,
        ),
        class(
            "ARP request, not for a VIP",
            frames::padded(frames::arp_request(CLIENT_MAC, owned, not_vip4)),
            XDP_PASS,
            false,
            Method::Repeat,
        ),
        class(
            "IPv4 TCP to the VIP, owned bucket",
            tcp4(owned, VIP4, 80),
            XDP_PASS,
            true,
            Method::Repeat,
        ),
        class(
            "IPv4 TCP to the VIP, another node's bucket",
            tcp4(other, VIP4, 80),
            XDP_DROP,
            true,
            Method::Repeat,
        ),
        class(
            "IPv4 UDP to the VIP, owned bucket (flow table)",
            frames::padded(frames::ipv4_udp(VMAC, CLIENT_MAC, owned, VIP4, 53)),
            XDP_PASS,
            true,
            Method::Repeat,
        ),
        class(
            "ICMP echo to the VIP, owned bucket",
            frames::padded(frames::ipv4_echo(VMAC, CLIENT_MAC, owned, VIP4)),
            XDP_PASS,
            true,
            Method::Repeat,
        ),
        class(
            "IPv6 TCP to the VIP, owned bucket",
            ipv6_tcp(VMAC, CLIENT_MAC, owned6, VIP6, 80),
            XDP_PASS,
            true,
            Method::Repeat,
        ),
        class(
            "IPv6 neighbour solicitation for the VIP, answered here",
            frames::neighbour_solicitation(CLIENT_MAC, owned6, VIP6),
            XDP_TX,
            true,
            Method::Single,
        ),
        class(
            "IPv4 TCP, not to a VIP",
            tcp4(owned, not_vip4, 80),
            XDP_PASS,
            false,
            Method::Repeat,
        ),
        class(
            "IPv6 UDP, not to a VIP",
            frames::ipv6_udp(OWN_MAC, CLIENT_MAC, owned6, not_vip6, 53),
            XDP_PASS,
            false,
            Method::Repeat,
        ),
        class(
            "other ethertype (LLDP)",
            lldp,
            XDP_PASS,
            false,
            Method::Repeat,
        ),
    ])
}

/// An IPv6 TCP segment with the ACK flag (no options, checksum left zero:
/// the program does not check it) in an Ethernet frame.
fn ipv6_tcp(dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(74);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&40_000u16.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, frames::TCP_ACK, 0xff, 0xff]);
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame
}

/// The per-packet table: one row per class.
pub fn table(results: &[ClassResult], options: &Options) -> Table {
    let mut table = Table::new(
        format!(
            "ns per packet, BPF_PROG_TEST_RUN, farm_ingress vs farm_noop (XDP_PASS) on the same \
             frame, median of {} rounds (repeat: {} repeats per run; single: {} runs of 1 \
             repeat, for frames answered in place)",
            options.rounds, options.repeat, options.single_runs
        ),
        &[
            "packet class",
            "verdict",
            "timed by",
            "no-op ns",
            "farm ns",
            "extra ns",
            "target",
            "",
        ],
    );
    for r in results {
        let extra = r.extra();
        table.row(vec![
            r.name.to_owned(),
            r.verdict.to_owned(),
            r.method.to_owned(),
            format!("{:.1}", r.noop()),
            format!("{:.1}", r.farm()),
            format!("{extra:.1}"),
            format!("≤ {:.0}", r.target()),
            if extra <= r.target() { "met" } else { "MISSED" }.to_owned(),
        ]);
    }
    table
}
