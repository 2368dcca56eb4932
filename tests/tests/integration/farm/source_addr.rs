//! A farm rule with `filter = "source_addr"`: every connection of a client
//! address goes to one node, whatever its source port, and many client
//! addresses spread evenly over the nodes.

use std::net::IpAddr;

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, assert_even, NODES};

/// Client addresses beside the client host's own.
const ADDRESSES: u16 = 200;
/// Connections per client address.
const REPEAT: u32 = 4;

#[test]
fn each_client_address_sticks_to_one_node_and_addresses_spread_evenly() {
    let lab = LabBuilder::new("farmsrcaddr")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let vip = IpAddr::from(lab::lab_ipv4(200));
    let farm = common::start(&lab, &common::farm_toml(&[vip], "source_addr", ""));
    // One node per address is the steady state: while the three nodes that
    // went UP alone still converge, a bucket moves between their tables,
    // and a connection begun before a move stays on its node (README
    // "Nodes that went UP alone"; a clean CI run of the eighteenth session
    // saw one address split so).
    for node in NODES {
        farm.wait_members(&lab, node, &NODES);
    }
    let sources: Vec<IpAddr> = (0..ADDRESSES)
        .map(|i| IpAddr::from(lab::lab_ipv4(1000 + i)))
        .collect();
    lab.host("client").add_addresses(&sources).unwrap();
    farm.wait_answers(
        &lab,
        "the VIP to answer",
        || common::connect(&lab, "client", vip, 80, 1, &sources[..20]),
        |o| o.fails() == 0,
    );

    let outcome = common::connect(&lab, "client", vip, 80, REPEAT, &sources);
    let counts = outcome.counts();
    eprintln!(
        "{} connections from {ADDRESSES} addresses: {counts:?}, errors {:?}",
        ADDRESSES as u32 * REPEAT,
        outcome.errors
    );
    assert!(
        outcome.errors.is_empty(),
        "expected every connection to succeed, saw errors {:?} (answered: {counts:?})",
        outcome.errors
    );
    let split: Vec<_> = outcome
        .by_source
        .iter()
        .filter(|(_, nodes)| nodes.len() != 1)
        .collect();
    assert!(
        split.is_empty(),
        "expected each source address answered by one node only, saw {} split, first: {:?}",
        split.len(),
        &split[..split.len().min(10)]
    );
    assert_eq!(
        outcome.by_source.len(),
        usize::from(ADDRESSES),
        "expected answers from all {ADDRESSES} source addresses, saw {:?}",
        outcome.by_source.keys().collect::<Vec<_>>()
    );
    assert!(
        outcome
            .by_source
            .values()
            .all(|nodes| nodes.values().sum::<u64>() == u64::from(REPEAT)),
        "expected {REPEAT} answers per address: {:?}",
        outcome.by_source
    );
    assert_even(
        &counts,
        &NODES,
        u64::from(ADDRESSES) * u64::from(REPEAT),
        0.2,
    );
}
