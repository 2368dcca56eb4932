//! Application checkers in a farm: a node whose application fails its
//! check leaves the farm (WAIT) and rejoins once the check passes again.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use halo_tests::{
    cluster::module_in,
    lab::{self, LabBuilder},
};

use super::common::{self, farm_toml, MODULE, NODES};

/// Every node checks its own web server; `wait` takes the node out of the
/// farm while it fails.
const CHECKER: &str = "\n[[module.checker]]\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n\
                       interval = \"200ms\"\ntimeout = \"200ms\"\naction = \"wait\"\n";

fn vip() -> IpAddr {
    lab::lab_ipv4(200).into()
}

/// Waits until `node`'s module is ready in `state`; returns how long.
fn wait_module(farm: &common::Farm<'_>, lab: &lab::Lab, node: &str, state: &str) -> Duration {
    let started = Instant::now();
    let what = format!("{node}'s {MODULE} {state}");
    if let Err(error) = farm
        .cluster
        .wait_status(node, Duration::from_secs(20), &what, |s| {
            module_in(s, MODULE, state, "ready")
        })
    {
        panic!("{error:#}\n{}", farm.diagnostics(lab));
    }
    started.elapsed()
}

#[test]
fn a_failed_application_checker_takes_the_node_out_of_the_farm_until_it_is_healthy() {
    let hosts: Vec<&str> = NODES.iter().copied().chain(["client"]).collect();
    let lab = LabBuilder::new("farmcheck").hosts(&hosts).build().unwrap();
    let mut farm = common::start(&lab, &farm_toml(&[vip()], "source_port", CHECKER));
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    farm.wait_answers(&lab, "every node to answer on the VIP", probe, |o| {
        o.fails() == 0 && o.counts().len() == 3
    });

    // n3's application dies: its checker fails and n3 leaves the farm.
    farm.kill_server("n3");
    let left = wait_module(&farm, &lab, "n3", "WAIT");
    eprintln!("n3 WAIT {} ms after its web server died", left.as_millis());
    for node in ["n1", "n2"] {
        farm.wait_members(&lab, node, &["n1", "n2"]);
    }
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    farm.wait_answers(&lab, "n1 and n2 to take every connection", probe, |o| {
        o.fails() == 0 && !o.counts().contains_key("n3")
    });
    let outcome = common::connect(&lab, "client", vip(), 80, 300, &[]);
    let counts = outcome.counts();
    assert_eq!(
        outcome.fails(),
        0,
        "expected every connection to succeed, saw {outcome:?}"
    );
    assert!(
        counts.keys().map(String::as_str).eq(["n1", "n2"]),
        "expected connections on n1 and n2 only, saw {counts:?}"
    );
    let status = farm.cluster.status("n3").unwrap();
    assert!(
        module_in(&status, MODULE, "WAIT", "ready"),
        "expected n3 still WAIT, saw {:?}",
        status.modules
    );

    // The application is back: n3 goes UP and rejoins the farm.
    farm.restart_server(&lab, "n3");
    let back = wait_module(&farm, &lab, "n3", "UP");
    eprintln!(
        "n3 UP {} ms after its web server restarted",
        back.as_millis()
    );
    for node in NODES {
        farm.wait_members(&lab, node, &NODES);
    }
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    farm.wait_answers(&lab, "n3 to answer connections again", probe, |o| {
        o.fails() == 0 && o.counts().len() == 3
    });
    let outcome = common::connect(&lab, "client", vip(), 80, 300, &[]);
    let counts = outcome.counts();
    assert_eq!(
        outcome.fails(),
        0,
        "expected every connection to succeed, saw {outcome:?}"
    );
    assert!(
        counts.keys().map(String::as_str).eq(NODES) && counts.values().all(|&n| n > 0),
        "expected connections on every node, saw {counts:?}"
    );
}
