//! The farm ingress program classifies and counts exactly the frames that
//! reach it, and passes every one.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use aya::programs::xdp::XdpMode;
use halo::ebpf::farm::{ClassCounts, FarmIngress};
use halo_common::farm::PacketClass;
use halo_tests::{
    frames,
    lab::{self, LabBuilder},
};

const XDP_PASS: u32 = 2;

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

#[test]
fn xdp_program_counts_the_exact_frames_sent_to_a_host() {
    let lab = LabBuilder::new("xdpcount")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    quiet(&lab).unwrap();
    let n1 = lab.host("n1");
    let n2 = lab.host("n2");

    let (ingress, n1_mac) = n1
        .enter(|| {
            let ingress = FarmIngress::attach(n1.iface(), XdpMode::Driver)?;
            Ok((ingress, frames::mac_of(n1.iface())?))
        })
        .unwrap();
    let before = ingress.class_counts().unwrap();

    // Addresses in the lab's range that no host holds.
    let nobody_v4 = lab::lab_ipv4(250);
    let nobody_v6 = lab::lab_ipv6(250);
    n2.enter(|| {
        let mac = frames::mac_of(n2.iface())?;
        let mut sent = Vec::new();
        for i in 0..5u8 {
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
        // switch's forwarding path drops IPv4 frames with bad headers (seen
        // here; which check does it is not pinned down), so those are fed
        // through BPF_PROG_TEST_RUN in the next test.
        sent.extend(frames::malformed(n1_mac, mac).into_iter().skip(3));
        // An LLDP-typed frame: neither ARP nor IP.
        let mut other = n1_mac.to_vec();
        other.extend_from_slice(&mac);
        other.extend_from_slice(&[0x88, 0xcc]);
        sent.push(frames::padded(other));
        frames::send_raw(n2.iface(), &sent)
    })
    .unwrap();

    let expected = [
        (PacketClass::Arp, 5),
        (PacketClass::Ipv4, 7),
        (PacketClass::Ipv6, 3),
        (PacketClass::Other, 1),
        (PacketClass::Malformed, 1),
        (PacketClass::VlanTagged, 0),
    ];
    let delta = |counts: &ClassCounts| counts.since(&before);
    let matches = |d: &ClassCounts| expected.iter().all(|&(class, n)| d.get(class) == n);
    let mut seen = ClassCounts::default();
    let arrived = lab::wait_until(Duration::from_secs(5), "the frames to be counted", || {
        seen = delta(&ingress.class_counts()?);
        Ok(matches(&seen))
    });
    assert!(
        arrived.is_ok(),
        "expected arp=5 ipv4=7 ipv6=3 other=1 malformed=1 vlan_tagged=0, saw {seen}"
    );
    // Nothing more trickles in afterwards: the counts were exact, not a
    // lower bound that noise happened to reach.
    std::thread::sleep(Duration::from_millis(300));
    let after = delta(&ingress.class_counts().unwrap());
    assert!(
        matches(&after),
        "counts moved after the test's frames: {after}"
    );
}

/// VLAN tags, truncated frames and bad IPv4 headers cannot cross the lab's
/// bridge as they are (the bridge moves a tag into packet metadata, as NICs
/// with VLAN offload do, and drops runts and bad IPv4 headers), so they are
/// fed to the program directly.
#[test]
fn xdp_program_parses_vlan_stacks_and_truncations_through_test_run() {
    let mut ingress = FarmIngress::load().unwrap();
    let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let untagged = frames::ipv4_udp(a, b, src, dst, 80);
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

    let cases: Vec<(&str, Vec<u8>, PacketClass)> = vec![
        ("one 802.1Q tag", one_tag.clone(), PacketClass::Ipv4),
        ("QinQ", two_tags, PacketClass::Ipv4),
        // Past two tags the parser stops looking: the frame is not IP to it.
        ("three tags", three_tags, PacketClass::Other),
        (
            "a tag cut short",
            one_tag[..16].to_vec(),
            PacketClass::Malformed,
        ),
    ];
    for (what, frame, class) in cases {
        let before = ingress.class_counts().unwrap();
        assert_eq!(
            ingress.test_run(&frame).unwrap(),
            XDP_PASS,
            "{what} must pass"
        );
        let delta = ingress.class_counts().unwrap().since(&before);
        assert_eq!(
            delta.get(class),
            1,
            "{what}: expected one {class:?}, saw {delta}"
        );
        assert_eq!(
            delta.get(PacketClass::VlanTagged),
            1,
            "{what}: tagged, saw {delta}"
        );
    }

    for (i, frame) in frames::malformed(a, b).into_iter().enumerate() {
        let before = ingress.class_counts().unwrap();
        assert_eq!(ingress.test_run(&frame).unwrap(), XDP_PASS);
        let delta = ingress.class_counts().unwrap().since(&before);
        assert_eq!(
            delta.get(PacketClass::Malformed),
            1,
            "malformed frame {i}: saw {delta}"
        );
    }

    // An IPv4 frame cut at every length from the bare Ethernet header on:
    // malformed until the 20-byte IPv4 header is whole, IPv4 after.
    for len in 14..=untagged.len() {
        let before = ingress.class_counts().unwrap();
        assert_eq!(ingress.test_run(&untagged[..len]).unwrap(), XDP_PASS);
        let delta = ingress.class_counts().unwrap().since(&before);
        let class = if len < 34 {
            PacketClass::Malformed
        } else {
            PacketClass::Ipv4
        };
        assert_eq!(
            delta.get(class),
            1,
            "{len} bytes: expected {class:?}, saw {delta}"
        );
    }
}
