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

    let before = settled_counters(&lab, "n1", 0);
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

    // n1's counters: during the 3000 connections only buckets n1 owns
    // carried packets on it, and they add up to what it accepted.
    let owners = bucket_owners(&farm, "n1");
    let served = outcome.counts()["n1"];
    let accepted = |c: &serde_json::Value| c["verdicts"]["accepted"].as_u64().unwrap_or(0);
    let after = settled_counters(&lab, "n1", accepted(&before) + served);
    let packets = |c: &serde_json::Value, bucket: &str| c["buckets"][bucket].as_u64().unwrap_or(0);
    let mut sum = 0;
    for bucket in after["buckets"].as_object().unwrap().keys() {
        let delta = packets(&after, bucket) - packets(&before, bucket);
        let owner = &owners[bucket.parse::<usize>().unwrap()];
        assert!(
            delta == 0 || owner == "n1",
            "bucket {bucket} carried {delta} packets on n1 but belongs to {owner}"
        );
        sum += delta;
    }
    assert_eq!(
        sum,
        accepted(&after) - accepted(&before),
        "{before}\n{after}"
    );
    let counters = after;
    assert!(
        counters["verdicts"]["other_node"].as_u64().unwrap() > 0,
        "{counters}"
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

/// The owner of every bucket in `node`'s live table.
fn bucket_owners(farm: &common::Farm<'_>, node: &str) -> Vec<String> {
    let out = farm
        .cluster
        .cli(node, &["buckets", MODULE, "--json"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    json["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o.as_u64()
                .map_or("none", |i| members[i as usize])
                .to_owned()
        })
        .collect()
}

/// GETs `path` from `node`'s own API, inside the host.
fn api_get(lab: &lab::Lab, node: &str, path: &str) -> serde_json::Value {
    let script = format!(
        "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9010{path}').read().decode())"
    );
    let out = lab
        .host(node)
        .run(Command::new("/usr/bin/python3").args(["-c", &script]))
        .unwrap();
    assert!(out.status.success(), "GET {path} on {node}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `node`'s farm counters once they stop moving for the VIP (the driver
/// refreshes them every second; the last segments of closing connections
/// may be counted after the client is done) and count at least
/// `at_least` accepted packets.
fn settled_counters(lab: &lab::Lab, node: &str, at_least: u64) -> serde_json::Value {
    let path = format!("/api/v1/modules/{MODULE}/counters");
    let mut counters = api_get(lab, node, &path);
    lab::wait_until(
        std::time::Duration::from_secs(10),
        "the counters to settle",
        || {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let again = api_get(lab, node, &path);
            let accepted = &again["verdicts"]["accepted"];
            let settled = again["buckets"] == counters["buckets"]
                && *accepted == counters["verdicts"]["accepted"]
                && accepted.as_u64().unwrap_or(0) >= at_least;
            counters = again;
            Ok(settled)
        },
    )
    .unwrap();
    counters
}
