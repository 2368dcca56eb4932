//! Load spread over the nodes of a farm, one ping reply, and failover when
//! a whole host dies.

use std::{net::IpAddr, process::Command};

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, assert_even, farm_toml, MODULE, NODES};

fn vip() -> IpAddr {
    lab::lab_ipv4(200).into()
}

fn hosts() -> Vec<&'static str> {
    NODES.iter().copied().chain(["client"]).collect()
}

#[test]
fn three_nodes_share_3000_connections_evenly_and_a_ping_gets_one_reply() {
    let lab = LabBuilder::new("farmspread")
        .hosts(&hosts())
        .build()
        .unwrap();
    let farm = common::start(&lab, &farm_toml(&[vip()], "source_port", ""));
    let probe = || common::connect(&lab, "client", vip(), 80, 20, &[]);
    farm.wait_answers(&lab, "the VIP to answer", probe, |o| o.fails() == 0);

    let outcome = common::connect(&lab, "client", vip(), 80, 3000, &[]);
    eprintln!(
        "3000 connections: {:?}, errors {:?}",
        outcome.counts(),
        outcome.errors
    );
    assert_eq!(outcome.fails(), 0, "every connection succeeds: {outcome:?}");
    assert_even(&outcome.counts(), &NODES, 3000, 0.15);

    let ping = lab
        .host("client")
        .run(Command::new("ping").args(["-c", "3", "-i", "0.2", "-W", "1", &vip().to_string()]))
        .unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "the VIP answers pings: {text}");
    assert!(
        text.contains("3 received") && !text.contains("DUP!"),
        "exactly one reply per ping: {text}"
    );

    let buckets = farm.cluster.cli("n1", &["buckets", MODULE]).unwrap();
    let table = String::from_utf8_lossy(&buckets.stdout);
    assert!(buckets.status.success(), "halo buckets: {buckets:?}");
    for node in NODES {
        assert!(table.contains(node), "the table shows {node}: {table}");
    }
}

#[test]
fn when_a_host_dies_its_buckets_move_to_the_survivors() {
    let lab = LabBuilder::new("farmkill").hosts(&hosts()).build().unwrap();
    let farm = common::start(&lab, &farm_toml(&[vip()], "source_port", ""));
    let probe = || common::connect(&lab, "client", vip(), 80, 20, &[]);
    farm.wait_answers(&lab, "the VIP to answer", probe, |o| o.fails() == 0);

    lab.kill_host("n3").unwrap();
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    let took = farm.wait_answers(&lab, "every connection to succeed again", probe, |o| {
        o.fails() == 0
    });
    eprintln!(
        "all connections succeed again {} ms after n3 died",
        took.as_millis()
    );

    let outcome = common::connect(&lab, "client", vip(), 80, 300, &[]);
    let counts = outcome.counts();
    assert_eq!(outcome.fails(), 0, "{outcome:?}");
    assert!(!counts.contains_key("n3"), "n3 is dead: {counts:?}");
    assert_even(&counts, &["n1", "n2"], 300, 0.3);
    // Both survivors agree on the table, and every bucket has one owner.
    for node in ["n1", "n2"] {
        let out = farm
            .cluster
            .cli(node, &["buckets", MODULE, "--json"])
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let owners = json["owners"].as_array().unwrap();
        assert!(
            owners.iter().all(|o| !o.is_null()),
            "every bucket has an owner on {node}"
        );
        assert_eq!(
            farm.bucket_shares(node).keys().collect::<Vec<_>>(),
            ["n1", "n2"],
            "{node}'s table has the survivors only"
        );
    }
}

#[test]
fn a_node_whose_daemon_crashed_neither_answers_for_the_vip_nor_takes_its_traffic() {
    let lab = LabBuilder::new("farmcrash")
        .hosts(&hosts())
        .build()
        .unwrap();
    let mut farm = common::start(&lab, &farm_toml(&[vip()], "source_port", ""));
    let probe = || common::connect(&lab, "client", vip(), 80, 20, &[]);
    farm.wait_answers(&lab, "the VIP to answer", probe, |o| o.fails() == 0);

    // Only the daemon dies: n3's kernel keeps the VIP bound and its web
    // server runs, but the filter is gone with the daemon.
    farm.cluster.kill("n3").unwrap();
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    farm.wait_answers(&lab, "the survivors to take n3's buckets", probe, |o| {
        o.fails() == 0
    });

    // A client that asks anew for the VIP's MAC gets the virtual one: n3's
    // kernel does not answer for the VIP.
    let client = lab.host("client");
    client.sh("ip neigh flush all").unwrap();
    let outcome = common::connect(&lab, "client", vip(), 80, 300, &[]);
    assert_eq!(outcome.fails(), 0, "{outcome:?}");
    assert!(
        !outcome.counts().contains_key("n3"),
        "n3 takes nothing: {:?}",
        outcome.counts()
    );
    let neighbours = client.sh(&format!("ip neigh show {}", vip())).unwrap();
    let [a, b, c, d] = lab::lab_ipv4(200).octets();
    let vmac = format!("5a:fe:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
    assert!(
        neighbours.contains(&vmac),
        "expected the VIP at {vmac}, saw {neighbours}"
    );
}
