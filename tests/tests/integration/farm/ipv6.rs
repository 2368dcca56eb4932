//! An IPv6 VIP beside an IPv4 one on the same farm: neighbour discovery
//! finds it (one node's XDP program answers the solicitation), connections
//! over IPv6 spread over the nodes, and a ping gets exactly one reply.

use std::{net::IpAddr, process::Command};

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, assert_even, NODES};

const CONNECTIONS: u32 = 600;

#[test]
fn an_ipv6_vip_spreads_connections_and_answers_each_ping_once() {
    let lab = LabBuilder::new("farmipv6")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let vip4 = IpAddr::from(lab::lab_ipv4(200));
    let vip6 = IpAddr::from(lab::lab_ipv6(200));
    let farm = common::start(&lab, &common::farm_toml(&[vip4, vip6], "source_port", ""));
    let took = farm.wait_answers(
        &lab,
        "the IPv6 VIP to answer",
        || common::connect(&lab, "client", vip6, 80, 20, &[]),
        |o| o.fails() == 0,
    );
    eprintln!("the IPv6 VIP answered after {} ms", took.as_millis());
    let neighbour = lab
        .host("client")
        .sh(&format!("ip -6 neigh show {vip6}"))
        .unwrap();
    let own_macs: Vec<String> = NODES
        .iter()
        .map(|n| {
            lab.host(n)
                .sh("cat /sys/class/net/eth0/address")
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert!(
        neighbour.contains("lladdr")
            && !own_macs.iter().any(|mac| neighbour.contains(mac.as_str())),
        "expected the client to resolve {vip6} to the virtual MAC, no node's own {own_macs:?}, \
         saw: {neighbour}"
    );

    let outcome = common::connect(&lab, "client", vip6, 80, CONNECTIONS, &[]);
    let counts = outcome.counts();
    eprintln!(
        "{CONNECTIONS} IPv6 connections: {counts:?}, errors {:?}",
        outcome.errors
    );
    assert!(
        outcome.errors.is_empty(),
        "expected every IPv6 connection to succeed, saw errors {:?} (answered: {counts:?})",
        outcome.errors
    );
    assert_even(&counts, &NODES, u64::from(CONNECTIONS), 0.25);

    let ping = lab
        .host("client")
        .run(Command::new("ping").args([
            "-6",
            "-n",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            &vip6.to_string(),
        ]))
        .unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success(),
        "expected the IPv6 VIP to answer pings, saw: {text}"
    );
    assert!(
        text.contains("5 received") && !text.contains("DUP!"),
        "expected exactly one reply per ping (5 received, no DUP!), saw: {text}"
    );
}
