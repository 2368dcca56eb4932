//! `power`: a node with power 0 is a member of the farm that takes no
//! traffic, and the others share it evenly.

use std::net::IpAddr;

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, assert_even};

const CONNECTIONS: u32 = 600;

#[test]
fn a_node_with_power_0_gets_no_connection_and_the_others_share_them() {
    let lab = LabBuilder::new("farmpower")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let vip = IpAddr::from(lab::lab_ipv4(200));
    let farm = common::start(
        &lab,
        &common::farm_toml(&[vip], "source_port", "power = { n1 = 1, n2 = 1, n3 = 0 }"),
    );
    farm.wait_answers(
        &lab,
        "the VIP to answer",
        || common::connect(&lab, "client", vip, 80, 20, &[]),
        |o| o.fails() == 0,
    );
    let shares = farm.bucket_shares("n3");
    eprintln!("buckets per node on n3: {shares:?}");
    assert_eq!(
        shares.get("n3").copied(),
        Some(0),
        "expected n3 a member owning no bucket, saw {shares:?}"
    );

    let outcome = common::connect(&lab, "client", vip, 80, CONNECTIONS, &[]);
    let counts = outcome.counts();
    eprintln!(
        "{CONNECTIONS} connections: {counts:?}, errors {:?}",
        outcome.errors
    );
    assert!(
        outcome.errors.is_empty(),
        "expected every connection to succeed, saw errors {:?} (answered: {counts:?})",
        outcome.errors
    );
    assert_eq!(
        counts.get("n3").copied().unwrap_or(0),
        0,
        "expected no connection on n3 (power 0), saw {counts:?}"
    );
    assert_even(&counts, &["n1", "n2"], u64::from(CONNECTIONS), 0.2);
}
