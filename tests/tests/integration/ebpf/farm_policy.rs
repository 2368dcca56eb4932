//! The farm ingress policy, checked frame by frame through
//! BPF_PROG_TEST_RUN against the same bucket hash in user space: VIP
//! frames pass only in owned buckets (with the node's own MAC), ARP and
//! neighbour solicitations for a VIP are answered by the owner alone, and
//! frames that are not for a VIP pass untouched.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    time::Duration,
};

use halo::ebpf::farm::FarmIngress;
use halo_common::farm::{bucket_of, filter, BucketState, FarmRule, VipKey, BUCKETS, CUT_UNKNOWN};
use halo_tests::frames::{self, Mac};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const OWN_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xcc];
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VMAC4: Mac = [0x5a, 0xfe, 10, 0, 0, 100];
const VMAC6: Mac = [0x5a, 0xfe, 0, 0, 0x01, 0x00];

fn vip6() -> Ipv6Addr {
    "fd00::100".parse().unwrap()
}

fn mapped(ip: Ipv4Addr) -> [u8; 16] {
    VipKey::v4(ip.octets()).addr
}

/// Every other bucket is ours: a table that splits any traffic.
fn half_table() -> Vec<BucketState> {
    (0..BUCKETS)
        .map(|b| {
            if b.is_multiple_of(2) {
                BucketState::Owned
            } else {
                BucketState::NotMine
            }
        })
        .collect()
}

fn owned(bucket: u32) -> bool {
    bucket.is_multiple_of(2)
}

fn farm(vips: &[(IpAddr, Mac)]) -> FarmIngress {
    let mut ingress = FarmIngress::load().unwrap();
    let rules = [
        FarmRule {
            proto: 6,
            filter: filter::SOURCE_PORT,
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
    ingress
        .configure(OWN_MAC, vips, &rules, Duration::from_secs(30))
        .unwrap();
    ingress.set_buckets(&half_table()).unwrap();
    ingress
}

fn default_vips() -> Vec<(IpAddr, Mac)> {
    vec![(VIP4.into(), VMAC4), (vip6().into(), VMAC6)]
}

#[test]
fn vip_tcp_passes_only_in_owned_buckets_with_the_nodes_own_mac() {
    let mut ingress = farm(&default_vips());
    let client = Ipv4Addr::new(192, 168, 7, 9);
    let (mut passed, mut dropped) = (0, 0);
    for sport in 40_000..40_400u16 {
        let frame = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client, VIP4, sport, 80, frames::TCP_SYN);
        let (verdict, out) = ingress.test_run_output(&frame).unwrap();
        let bucket = bucket_of(&mapped(client), Some(sport));
        if owned(bucket) {
            assert_eq!(verdict, XDP_PASS, "port {sport}, bucket {bucket} is ours");
            assert_eq!(
                out[..6],
                OWN_MAC,
                "an accepted frame is readdressed to the node's MAC"
            );
            assert_eq!(out[6..], frame[6..], "nothing else changes");
            passed += 1;
        } else {
            assert_eq!(
                verdict, XDP_DROP,
                "port {sport}, bucket {bucket} is another node's"
            );
            dropped += 1;
        }
    }
    // source_port spreads one client's connections over the nodes.
    assert!(
        passed > 150 && dropped > 150,
        "passed {passed}, dropped {dropped} of 400"
    );
}

#[test]
fn source_addr_rules_and_pings_follow_the_client_address_only() {
    let mut ingress = farm(&default_vips());
    for last in 1..=60u8 {
        let client = Ipv4Addr::new(172, 16, 3, last);
        let expected = if owned(bucket_of(&mapped(client), None)) {
            XDP_PASS
        } else {
            XDP_DROP
        };
        for sport in [1000, 2000, 3000] {
            let frame = frames::ipv4_udp_from(VMAC4, CLIENT_MAC, client, VIP4, sport, 53);
            assert_eq!(
                ingress.test_run(&frame).unwrap(),
                expected,
                "udp from {client}:{sport}"
            );
        }
        let ping = frames::ipv4_echo(VMAC4, CLIENT_MAC, client, VIP4);
        assert_eq!(
            ingress.test_run(&ping).unwrap(),
            expected,
            "ping from {client}"
        );
    }
}

#[test]
fn vip_traffic_no_rule_names_is_dropped_and_other_traffic_passes_untouched() {
    let mut ingress = farm(&default_vips());
    let client = Ipv4Addr::new(192, 168, 7, 9);
    let no_rule = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client, VIP4, 40_000, 81, frames::TCP_SYN);
    assert_eq!(
        ingress.test_run(&no_rule).unwrap(),
        XDP_DROP,
        "port 81 has no rule"
    );
    let own_address = Ipv4Addr::new(10, 0, 0, 1);
    for sport in 40_000..40_050 {
        let frame = frames::ipv4_tcp(
            OWN_MAC,
            CLIENT_MAC,
            client,
            own_address,
            sport,
            22,
            frames::TCP_SYN,
        );
        let (verdict, out) = ingress.test_run_output(&frame).unwrap();
        assert_eq!(
            (verdict, out),
            (XDP_PASS, frame),
            "traffic to the node's own address"
        );
    }
    let arp = frames::arp_request(CLIENT_MAC, client, own_address);
    let (verdict, out) = ingress.test_run_output(&arp).unwrap();
    assert_eq!(
        (verdict, out),
        (XDP_PASS, arp),
        "ARP for another address is the kernel's"
    );
}

#[test]
fn exactly_the_owner_of_the_requesters_bucket_answers_arp_for_the_vip() {
    let mut ingress = farm(&default_vips());
    let mut answered = 0;
    for last in 1..=100u8 {
        let requester = Ipv4Addr::new(192, 168, 50, last);
        let request = frames::arp_request(CLIENT_MAC, requester, VIP4);
        let (verdict, reply) = ingress.test_run_output(&request).unwrap();
        if !owned(bucket_of(&mapped(requester), None)) {
            assert_eq!(
                verdict, XDP_DROP,
                "{requester}'s bucket is another node's: it answers"
            );
            continue;
        }
        answered += 1;
        assert_eq!(verdict, XDP_TX, "{requester}'s bucket is ours: answer");
        assert_eq!(
            reply[0..6],
            CLIENT_MAC,
            "Ethernet destination: the requester"
        );
        assert_eq!(
            reply[6..12],
            OWN_MAC,
            "Ethernet source: the node's own MAC, never the virtual one"
        );
        assert_eq!(reply[20..22], [0, 2], "an ARP reply");
        assert_eq!(
            reply[22..28],
            VMAC4,
            "sender hardware address: the virtual MAC"
        );
        assert_eq!(
            reply[28..32],
            VIP4.octets(),
            "sender protocol address: the VIP"
        );
        assert_eq!(
            reply[32..38],
            CLIENT_MAC,
            "target hardware address: the requester"
        );
        assert_eq!(
            reply[38..42],
            requester.octets(),
            "target protocol address: the requester"
        );
    }
    assert!(
        (30..=70).contains(&answered),
        "answered {answered} of 100 requesters"
    );
}

#[test]
fn exactly_the_owner_answers_neighbour_solicitations_for_the_ipv6_vip() {
    let mut ingress = farm(&default_vips());
    let mut answered = 0;
    for last in 1..=100u16 {
        let requester = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, last);
        let solicitation = frames::neighbour_solicitation(CLIENT_MAC, requester, vip6());
        let (verdict, na) = ingress.test_run_output(&solicitation).unwrap();
        if !owned(bucket_of(&requester.octets(), None)) {
            assert_eq!(verdict, XDP_DROP, "{requester}'s bucket is another node's");
            continue;
        }
        answered += 1;
        assert_eq!(verdict, XDP_TX);
        assert_eq!(na[0..6], CLIENT_MAC, "to the requester");
        assert_eq!(na[6..12], OWN_MAC, "from the node's own MAC");
        assert_eq!(na[22..38], vip6().octets(), "IPv6 source: the VIP");
        assert_eq!(
            na[38..54],
            requester.octets(),
            "IPv6 destination: the requester"
        );
        assert_eq!(na[54], 136, "a neighbour advertisement");
        assert_eq!(na[58], 0x60, "solicited and override");
        assert_eq!(na[62..78], vip6().octets(), "target: the VIP");
        assert_eq!(na[78..80], [2, 1], "a target link-layer address option");
        assert_eq!(na[80..86], VMAC6, "carrying the virtual MAC");
        assert_eq!(
            frames::icmpv6_checksum_residue(&na),
            0,
            "a valid ICMPv6 checksum"
        );
    }
    assert!(
        (30..=70).contains(&answered),
        "answered {answered} of 100 requesters"
    );
}

#[test]
fn a_draining_bucket_keeps_connections_this_node_has_a_socket_for() {
    // The VIP is a loopback address here so that a real TCP connection on
    // this machine's loopback is the "existing connection" the kernel finds.
    let vip = Ipv4Addr::new(127, 0, 0, 1);
    let listener = TcpListener::bind((vip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect((vip, port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap();
    let client_port = client.local_addr().unwrap().port();

    let mut ingress = FarmIngress::load().unwrap();
    let rules = [FarmRule {
        proto: 6,
        filter: filter::SOURCE_PORT,
        first_port: port,
        last_port: port,
        _pad: 0,
    }];
    ingress
        .configure(
            OWN_MAC,
            &[(vip.into(), VMAC4)],
            &rules,
            Duration::from_secs(30),
        )
        .unwrap();
    let bucket = bucket_of(&mapped(vip), Some(client_port));
    let other_port = (1..)
        .map(|p| client_port.wrapping_add(p))
        .find(|p| bucket_of(&mapped(vip), Some(*p)) != bucket && *p != port)
        .unwrap();
    let mut table = vec![BucketState::NotMine; BUCKETS as usize];

    let ack = |sport| frames::ipv4_tcp(VMAC4, CLIENT_MAC, vip, vip, sport, port, frames::TCP_ACK);
    let syn = |sport| frames::ipv4_tcp(VMAC4, CLIENT_MAC, vip, vip, sport, port, frames::TCP_SYN);

    table[bucket as usize] = BucketState::Draining;
    table[bucket_of(&mapped(vip), Some(other_port)) as usize] = BucketState::Draining;
    ingress.set_buckets(&table).unwrap();
    assert_eq!(
        ingress.test_run(&ack(client_port)).unwrap(),
        XDP_PASS,
        "our connection stays with us"
    );
    assert_eq!(
        ingress.test_run(&ack(other_port)).unwrap(),
        XDP_DROP,
        "a flow we have no socket for is the new owner's"
    );
    assert_eq!(
        ingress.test_run(&syn(other_port)).unwrap(),
        XDP_DROP,
        "new connections go to the new owner"
    );

    table[bucket as usize] = BucketState::Incoming;
    table[bucket_of(&mapped(vip), Some(other_port)) as usize] = BucketState::Incoming;
    ingress.set_buckets(&table).unwrap();
    assert_eq!(
        ingress.test_run(&syn(other_port)).unwrap(),
        XDP_DROP,
        "the old owner may still own the bucket outright: its SYN is not taken twice"
    );
    let mut cuts = vec![CUT_UNKNOWN; BUCKETS as usize];
    cuts[bucket as usize] = 1;
    cuts[bucket_of(&mapped(vip), Some(other_port)) as usize] = 1;
    ingress.set_buckets_with_cuts(&table, &cuts).unwrap();
    assert_eq!(
        ingress.test_run(&syn(other_port)).unwrap(),
        XDP_PASS,
        "once the old owner stopped taking them, the new owner takes new connections"
    );
    assert_eq!(
        ingress.test_run(&ack(other_port)).unwrap(),
        XDP_DROP,
        "but not the old owner's flows"
    );
    assert_eq!(
        ingress.test_run(&ack(client_port)).unwrap(),
        XDP_PASS,
        "and what it has sockets for"
    );

    table[bucket as usize] = BucketState::NotMine;
    ingress.set_buckets(&table).unwrap();
    assert_eq!(
        ingress.test_run(&ack(client_port)).unwrap(),
        XDP_DROP,
        "handed over: dropped"
    );
    drop((client, server));
}

/// `frame` (untagged Ethernet, IPv6) with `headers` inserted after the
/// IPv6 header: (type, body after the next-header byte), chained in order.
fn with_ipv6_extensions(frame: &[u8], headers: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let transport = frame[20];
    let mut out = frame[..54].to_vec();
    out[20] = headers[0].0;
    for (i, (_, body)) in headers.iter().enumerate() {
        out.push(headers.get(i + 1).map_or(transport, |(kind, _)| *kind));
        out.extend_from_slice(body);
    }
    out.extend_from_slice(&frame[54..]);
    let payload = (out.len() - 54) as u16;
    out[18..20].copy_from_slice(&payload.to_be_bytes());
    out
}

#[test]
fn ipv6_vip_traffic_behind_extension_headers_is_not_dropped_by_every_node() {
    // The program used to take the first extension header for the
    // transport protocol: no rule names it, so every node dropped the
    // packet and IPv6 fragments to the VIP were lost.
    let mut ingress = farm(&default_vips());
    let pad_n = vec![0, 1, 4, 0, 0, 0, 0];
    let first_fragment = vec![0, 0, 1, 0, 0, 0, 7];
    let later_fragment = vec![0, 0, 8 * 3, 0, 0, 0, 7];
    let chains = [
        vec![(0, pad_n.clone()), (60, pad_n.clone())],
        vec![(44, first_fragment)],
        vec![(0, pad_n), (44, later_fragment)],
    ];
    let (mut passed, mut dropped) = (0, 0);
    for last in 1..=60u16 {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, last);
        let datagram = frames::ipv6_udp(VMAC6, CLIENT_MAC, client, vip6(), 53);
        // The UDP rule filters by source address: every chain, fragments
        // included, lands in the client's bucket.
        let ours = owned(bucket_of(&client.octets(), None));
        for chain in &chains {
            let frame = with_ipv6_extensions(&datagram, chain);
            let (verdict, out) = ingress.test_run_output(&frame).unwrap();
            if ours {
                assert_eq!(verdict, XDP_PASS, "{client} through {chain:?}: ours");
                assert_eq!(out[..6], OWN_MAC, "readdressed to the node's MAC");
                assert_eq!(out[6..], frame[6..], "nothing else changes");
                passed += 1;
            } else {
                assert_eq!(verdict, XDP_DROP, "{client} through {chain:?}: not ours");
                dropped += 1;
            }
        }
    }
    assert!(
        passed > 0 && dropped > 0,
        "passed {passed}, dropped {dropped}"
    );
    let datagram = frames::ipv6_udp(
        VMAC6,
        CLIENT_MAC,
        "2001:db8:7::1".parse().unwrap(),
        vip6(),
        53,
    );
    let too_long = vec![(60, vec![0, 1, 4, 0, 0, 0, 0]); 7];
    assert_eq!(
        ingress
            .test_run(&with_ipv6_extensions(&datagram, &too_long))
            .unwrap(),
        XDP_DROP,
        "a chain longer than the program walks: no node can bucket it"
    );
}

#[test]
fn a_vip_frame_cut_short_before_its_ports_is_dropped_not_passed() {
    // The program used to pass it untouched on every node, whatever the
    // bucket: SPEC §4 passes VIP traffic only in the node's own buckets.
    let mut ingress = farm(&default_vips());
    for last in 1..=20u8 {
        let client = Ipv4Addr::new(192, 168, 8, last);
        let segment = frames::ipv4_tcp(VMAC4, CLIENT_MAC, client, VIP4, 40_000, 80, 0);
        for len in [14 + 20, 14 + 20 + 3] {
            assert_eq!(
                ingress.test_run(&segment[..len]).unwrap(),
                XDP_DROP,
                "{client}: a TCP segment to the VIP cut at {len} bytes"
            );
        }
        let datagram = frames::ipv6_udp(
            VMAC6,
            CLIENT_MAC,
            Ipv6Addr::new(0x2001, 0xdb8, 8, 0, 0, 0, 0, last.into()),
            vip6(),
            53,
        );
        assert_eq!(
            ingress.test_run(&datagram[..14 + 40 + 2]).unwrap(),
            XDP_DROP,
            "a UDP datagram to the IPv6 VIP cut inside its ports"
        );
    }
}

#[test]
fn a_solicitation_sent_to_the_vip_for_another_target_is_bucketed_not_passed_by_all() {
    // The program used to pass any solicitation whose target is no VIP,
    // untouched and on every node, even one sent to the VIP itself.
    let mut ingress = farm(&default_vips());
    let other_target: Ipv6Addr = "2001:db8:9::1".parse().unwrap();
    for last in 1..=40u16 {
        let requester = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, last);
        let mut frame = frames::neighbour_solicitation(CLIENT_MAC, requester, other_target);
        frame[..6].copy_from_slice(&VMAC6);
        frame[38..54].copy_from_slice(&vip6().octets());
        let (verdict, out) = ingress.test_run_output(&frame).unwrap();
        if owned(bucket_of(&requester.octets(), None)) {
            assert_eq!(verdict, XDP_PASS, "{requester}'s bucket is ours");
            assert_eq!(out[..6], OWN_MAC, "readdressed to the node's MAC");
        } else {
            assert_eq!(verdict, XDP_DROP, "{requester}'s bucket is another node's");
        }
    }
}

/// The program finds VIPs through an index slot picked by an address's
/// low 12 bits. Two VIPs that end alike share one (the program then asks
/// its hash map of VIPs), and an address that ends like a VIP is no VIP.
#[test]
fn vips_sharing_an_index_slot_are_both_served_and_their_neighbours_pass() {
    // 10.0.0.100, 10.1.0.100, 10.2.0.100: the same low 12 bits.
    let second = Ipv4Addr::new(10, 1, 0, 100);
    let second_mac: Mac = [0x5a, 0xfe, 10, 1, 0, 100];
    let neighbour = Ipv4Addr::new(10, 2, 0, 100);
    // fd00::100 and fd00:1::100 share an IPv6 slot.
    let second6: Ipv6Addr = "fd00:1::100".parse().unwrap();
    let mut vips = default_vips();
    vips.push((second.into(), second_mac));
    vips.push((second6.into(), VMAC6));
    for shared in [true, false] {
        let mut ingress = farm(if shared { &vips } else { &vips[..1] });
        let client = Ipv4Addr::new(192, 168, 7, 9);
        let targets: &[Ipv4Addr] = if shared { &[VIP4, second] } else { &[VIP4] };
        for &vip in targets {
            for sport in 40_000..40_040u16 {
                let frame =
                    frames::ipv4_tcp(VMAC4, CLIENT_MAC, client, vip, sport, 80, frames::TCP_SYN);
                let expected = if owned(bucket_of(&mapped(client), Some(sport))) {
                    XDP_PASS
                } else {
                    XDP_DROP
                };
                assert_eq!(
                    ingress.test_run(&frame).unwrap(),
                    expected,
                    "{vip} port {sport} (shared slot: {shared})"
                );
            }
        }
        // Not a VIP, in a VIP's slot: passes whatever its bucket, with
        // its destination MAC untouched.
        for sport in 40_000..40_040u16 {
            let frame = frames::ipv4_tcp(
                VMAC4,
                CLIENT_MAC,
                client,
                neighbour,
                sport,
                80,
                frames::TCP_SYN,
            );
            let (verdict, out) = ingress.test_run_output(&frame).unwrap();
            assert_eq!(
                verdict, XDP_PASS,
                "{neighbour} is no VIP (shared slot: {shared})"
            );
            assert_eq!(out, frame, "{neighbour}'s frame is untouched");
        }
    }
    // ARP for the second VIP of a shared slot: answered with its own MAC.
    let mut ingress = farm(&vips);
    let requester = (1..=100u8)
        .map(|last| Ipv4Addr::new(192, 168, 50, last))
        .find(|r| owned(bucket_of(&mapped(*r), None)))
        .unwrap();
    let (verdict, reply) = ingress
        .test_run_output(&frames::arp_request(CLIENT_MAC, requester, second))
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(reply[22..28], second_mac, "the second VIP's virtual MAC");
    let (verdict, _) = ingress
        .test_run_output(&frames::arp_request(CLIENT_MAC, requester, neighbour))
        .unwrap();
    assert_eq!(
        verdict, XDP_PASS,
        "an ARP request for {neighbour} is not ours"
    );
    // The second IPv6 VIP of a shared slot is served too.
    let requester6: Ipv6Addr = (1..=200u16)
        .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, i))
        .find(|r| owned(bucket_of(&r.octets(), None)))
        .unwrap();
    let (verdict, reply) = ingress
        .test_run_output(&frames::neighbour_solicitation(
            CLIENT_MAC, requester6, second6,
        ))
        .unwrap();
    assert_eq!(verdict, XDP_TX, "fd00:1::100 is a VIP: its owner answers");
    assert_eq!(
        &reply[reply.len() - 6..],
        &VMAC6,
        "with the VIP's virtual MAC"
    );
}
