//! The farm ingress program counts exactly the frames for its VIP that
//! reach it, each under its verdict, and leaves every other frame
//! uncounted and untouched.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use aya::programs::xdp::XdpMode;
use halo::ebpf::farm::FarmIngress;
use halo_common::farm::{filter, BucketState, FarmRule, Verdict, BUCKETS};
use halo_tests::{
    frames::{self, Mac},
    lab::{self, LabBuilder},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const VMAC: Mac = [0x5a, 0xfe, 0, 0, 0, 0xfa];

/// Silences everything that would otherwise reach `n1` unasked: IPv6 on the
/// sender and on the switch (router and multicast listener chatter). The
/// test's own frames are sent to addresses nobody holds, so no host answers
/// and no ARP follows.
fn quiet(lab: &lab::Lab) -> anyhow::Result<()> {
    lab.host("n2")
        .sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
    let output = Command::new("ip")
        .args(["netns", "exec", lab.switch_netns(), "sysctl", "-qw"])
        .args([
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])
        .output()?;
    anyhow::ensure!(output.status.success(), "sysctl in the switch: {output:?}");
    Ok(())
}

/// The program with `vip` as its only VIP, one TCP rule (port 80, by
/// source port) and every bucket owned.
fn configure(ingress: &mut FarmIngress, own_mac: Mac, vip: Ipv4Addr) -> anyhow::Result<()> {
    let rules = [FarmRule {
        proto: 6,
        filter: filter::SOURCE_PORT,
        first_port: 80,
        last_port: 80,
        _pad: 0,
    }];
    ingress.configure(
        own_mac,
        &[(vip.into(), VMAC)],
        &rules,
        Duration::from_secs(30),
    )?;
    ingress.set_buckets(&vec![BucketState::Owned; BUCKETS as usize])
}

/// Every verdict counter, in `Verdict::ALL` order.
fn verdicts(ingress: &FarmIngress) -> Vec<u64> {
    ingress
        .verdict_counts()
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// The counts since `before`, named, for messages.
fn delta(now: &[u64], before: &[u64]) -> Vec<(&'static str, u64)> {
    Verdict::ALL
        .iter()
        .zip(now.iter().zip(before))
        .map(|(v, (now, before))| (v.name(), now - before))
        .collect()
}

#[test]
fn xdp_program_counts_the_exact_vip_frames_sent_to_a_host() {
    let lab = LabBuilder::new("xdpcount")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    quiet(&lab).unwrap();
    let n1 = lab.host("n1");
    let n2 = lab.host("n2");
    // Addresses in the lab's range that no host holds.
    let vip = lab::lab_ipv4(250);
    let nobody_v4 = lab::lab_ipv4(251);
    let nobody_v6 = lab::lab_ipv6(251);

    let (ingress, n1_mac) = n1
        .enter(|| {
            let mut ingress = FarmIngress::attach(n1.iface(), XdpMode::Driver)?;
            let mac = frames::mac_of(n1.iface())?;
            configure(&mut ingress, mac, vip)?;
            Ok((ingress, mac))
        })
        .unwrap();
    let before = verdicts(&ingress);

    n2.enter(|| {
        let mac = frames::mac_of(n2.iface())?;
        let mut sent = Vec::new();
        // For the VIP: 5 ARP requests (answered: every bucket is n1's),
        // 7 TCP segments to the rule's port, 3 UDP datagrams no rule names.
        for _ in 0..5 {
            sent.push(frames::padded(frames::arp_request(mac, n2.ipv4(), vip)));
        }
        for port in 0..7 {
            sent.push(frames::padded(frames::ipv4_tcp(
                VMAC,
                mac,
                n2.ipv4(),
                vip,
                40_000 + port,
                80,
                frames::TCP_SYN,
            )));
        }
        for port in 0..3 {
            sent.push(frames::ipv4_udp(VMAC, mac, n2.ipv4(), vip, 9000 + port));
        }
        // Not for the VIP: counted nowhere.
        for i in 0..4u8 {
            sent.push(frames::padded(frames::arp_request(
                mac,
                n2.ipv4(),
                Ipv4Addr::new(10, 77, 9, i),
            )));
        }
        for port in 0..7 {
            sent.push(frames::ipv4_udp(
                n1_mac,
                mac,
                n2.ipv4(),
                nobody_v4,
                9000 + port,
            ));
        }
        for port in 0..3 {
            sent.push(frames::ipv6_udp(
                n1_mac,
                mac,
                n2.ipv6(),
                nobody_v6,
                9000 + port,
            ));
        }
        // Of the malformed frames only the ARP one crosses the bridge: the
        // switch's forwarding path drops IPv4 frames with bad headers, so
        // those are fed through BPF_PROG_TEST_RUN in the next test.
        sent.extend(frames::malformed(n1_mac, mac).into_iter().skip(3));
        // An LLDP-typed frame: neither ARP nor IP.
        let mut other = n1_mac.to_vec();
        other.extend_from_slice(&mac);
        other.extend_from_slice(&[0x88, 0xcc]);
        sent.push(frames::padded(other));
        frames::send_raw(n2.iface(), &sent)
    })
    .unwrap();

    let mut expected = vec![0u64; Verdict::ALL.len()];
    expected[Verdict::ArpAnswered as usize] = 5;
    expected[Verdict::Accepted as usize] = 7;
    expected[Verdict::NoRule as usize] = 3;
    let matches = |now: &[u64]| {
        now.iter()
            .zip(&before)
            .zip(&expected)
            .all(|((now, before), want)| now - before == *want)
    };
    let mut seen = before.clone();
    let arrived = lab::wait_until(Duration::from_secs(5), "the frames to be counted", || {
        seen = verdicts(&ingress);
        Ok(matches(&seen))
    });
    assert!(
        arrived.is_ok(),
        "expected arp_answered=5 accepted=7 no_rule=3, nothing else; saw {:?}",
        delta(&seen, &before)
    );
    // Nothing more trickles in afterwards: the counts were exact, not a
    // lower bound that noise happened to reach.
    std::thread::sleep(Duration::from_millis(300));
    let after = verdicts(&ingress);
    assert!(
        matches(&after),
        "counts moved after the test's frames: {:?}",
        delta(&after, &before)
    );
}

/// VLAN tags, truncated frames and bad IPv4 headers cannot cross the lab's
/// bridge as they are (the bridge moves a tag into packet metadata, as NICs
/// with VLAN offload do, and drops runts and bad IPv4 headers), so they are
/// fed to the program directly.
#[test]
fn xdp_program_counts_tagged_vip_frames_and_passes_the_rest_uncounted() {
    let mut ingress = FarmIngress::load().unwrap();
    let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    configure(&mut ingress, a, vip).unwrap();
    let client = Ipv4Addr::new(10, 0, 0, 1);
    // UDP to the VIP on a port no rule names: dropped by every node.
    let untagged = frames::ipv4_udp(VMAC, b, client, vip, 9000);
    let tag = |frame: &[u8], vid: u16| {
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00]);
        tagged.extend_from_slice(&vid.to_be_bytes());
        tagged.extend_from_slice(&frame[12..]);
        tagged
    };
    let one_tag = tag(&untagged, 10);
    let two_tags = tag(&one_tag, 20);
    let three_tags = tag(&two_tags, 30);

    let mut counted = |frame: &[u8], action: u32, what: &str| -> u64 {
        let before = verdicts(&ingress);
        assert_eq!(ingress.test_run(frame).unwrap(), action, "{what}");
        let now = verdicts(&ingress);
        let total: u64 = now.iter().zip(&before).map(|(n, b)| n - b).sum();
        if total > 0 {
            assert_eq!(
                now[Verdict::NoRule as usize] - before[Verdict::NoRule as usize],
                total,
                "{what}: counted as no_rule only, saw {:?}",
                delta(&now, &before)
            );
        }
        total
    };
    assert_eq!(counted(&untagged, XDP_DROP, "untagged"), 1);
    assert_eq!(counted(&one_tag, XDP_DROP, "one 802.1Q tag"), 1);
    assert_eq!(counted(&two_tags, XDP_DROP, "QinQ"), 1);
    // Past two tags the parser stops looking: the frame is not IP to it.
    assert_eq!(counted(&three_tags, XDP_PASS, "three tags"), 0);
    assert_eq!(counted(&one_tag[..16], XDP_PASS, "a tag cut short"), 0);
    for (i, frame) in frames::malformed(a, b).into_iter().enumerate() {
        assert_eq!(counted(&frame, XDP_PASS, &format!("malformed {i}")), 0);
    }
    // The frame cut at every length: passed uncounted until the IPv4
    // header is whole, then dropped and counted (its ports are cut off or
    // name no rule).
    for len in 14..untagged.len() {
        let (action, n) = if len < 34 {
            (XDP_PASS, 0)
        } else {
            (XDP_DROP, 1)
        };
        assert_eq!(
            counted(&untagged[..len], action, &format!("{len} bytes")),
            n,
            "{len} bytes"
        );
    }
}
