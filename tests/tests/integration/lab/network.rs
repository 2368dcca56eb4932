//! The lab network: addresses, reachability, cuts and heals.

use std::{net::IpAddr, time::Duration};

use halo_tests::lab::{lab_ipv4, lab_ipv6, wait_until, Host, Lab, LabBuilder};

use super::{REPLY_WAIT, SILENCE_WAIT};

/// How long a healed link may take to carry traffic again (neighbour
/// entries that failed during the cut are resolved anew).
const HEAL_TIMEOUT: Duration = Duration::from_secs(5);

fn reaches(from: &Host, to: impl Into<IpAddr>) -> bool {
    let to = to.into();
    from.ping(to, REPLY_WAIT)
        .unwrap_or_else(|error| panic!("expected to ping {to} from {}: {error:#}", from.name()))
}

/// Asserts that `from` gets no reply from either address of `to`.
fn assert_unreachable(from: &Host, to: &Host, why: &str) {
    for addr in [IpAddr::from(to.ipv4()), IpAddr::from(to.ipv6())] {
        let replied = from
            .ping(addr, SILENCE_WAIT)
            .unwrap_or_else(|error| panic!("expected to ping {addr}: {error:#}"));
        assert!(
            !replied,
            "expected no reply from {} ({addr}) to {} ({why}), got one",
            to.name(),
            from.name()
        );
    }
}

/// Asserts that `from` reaches both addresses of `to`.
fn assert_reachable(from: &Host, to: &Host, why: &str) {
    for addr in [IpAddr::from(to.ipv4()), IpAddr::from(to.ipv6())] {
        assert!(
            reaches(from, addr),
            "expected {} to reach {} at {addr} ({why}), no reply came",
            from.name(),
            to.name()
        );
    }
}

/// Waits until `from` reaches both addresses of `to` again.
fn wait_reachable(lab: &Lab, from: &str, to: &str, why: &str) {
    let (from, to) = (lab.host(from), lab.host(to));
    for addr in [IpAddr::from(to.ipv4()), IpAddr::from(to.ipv6())] {
        wait_until(
            HEAL_TIMEOUT,
            &format!("{} to reach {addr} ({why})", from.name()),
            || from.ping(addr, SILENCE_WAIT),
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
    }
}

#[test]
fn hosts_reach_each_other_over_ipv4_and_ipv6() {
    let lab = LabBuilder::new("reach")
        .hosts(&["n1", "n2"])
        .build()
        .expect("build lab");
    let (n1, n2) = (lab.host("n1"), lab.host("n2"));
    assert_eq!(
        (n1.ipv4(), n1.ipv6()),
        (lab_ipv4(1), lab_ipv6(1)),
        "n1's addresses"
    );
    assert_eq!(
        (n2.ipv4(), n2.ipv6()),
        (lab_ipv4(2), lab_ipv6(2)),
        "n2's addresses"
    );
    assert_reachable(n1, n2, "same bridge");
    assert_reachable(n2, n1, "same bridge");
}

#[test]
fn added_client_addresses_are_reachable() {
    let lab = LabBuilder::new("clients")
        .hosts(&["n1", "client"])
        .build()
        .expect("build lab");
    let (n1, client) = (lab.host("n1"), lab.host("client"));
    let mut extra: Vec<IpAddr> = (1000..1200).map(|n| lab_ipv4(n).into()).collect();
    extra.push(lab_ipv6(1000).into());
    client.add_addresses(&extra).expect("add client addresses");

    let listed = client
        .sh("ip -oneline address show dev eth0")
        .expect("list addresses");
    for addr in &extra {
        assert!(
            listed.contains(&format!(" {addr}/")),
            "expected {addr} on the client's eth0, found:\n{listed}"
        );
    }
    for addr in [extra[0], extra[199], extra[200]] {
        assert!(
            reaches(n1, addr),
            "expected n1 to reach client address {addr}, no reply came"
        );
    }
}

#[test]
fn a_cut_host_is_unreachable_until_healed() {
    let lab = LabBuilder::new("cut")
        .hosts(&["n1", "n2", "n3"])
        .build()
        .expect("build lab");
    let (n1, n2, n3) = (lab.host("n1"), lab.host("n2"), lab.host("n3"));

    lab.cut("n2").expect("cut n2");
    assert_unreachable(n1, n2, "n2 is cut");
    assert_unreachable(n3, n2, "n2 is cut");
    assert_reachable(n1, n3, "only n2 is cut");

    lab.heal("n2").expect("heal n2");
    wait_reachable(&lab, "n1", "n2", "n2 is healed");
    wait_reachable(&lab, "n3", "n2", "n2 is healed");
    lab.heal("n2").expect("a second heal is harmless");
}

#[test]
fn a_cut_pair_loses_only_each_other() {
    let lab = LabBuilder::new("cut_pair")
        .hosts(&["n1", "n2", "n3"])
        .build()
        .expect("build lab");
    let (n1, n2, n3) = (lab.host("n1"), lab.host("n2"), lab.host("n3"));

    lab.cut_pair("n1", "n2").expect("cut n1 and n2 apart");
    assert_unreachable(n1, n2, "n1 and n2 are cut apart");
    assert_unreachable(n2, n1, "n1 and n2 are cut apart");
    assert_reachable(n3, n1, "only the pair n1, n2 is cut");
    assert_reachable(n3, n2, "only the pair n1, n2 is cut");

    lab.heal_pair("n2", "n1").expect("heal n1 and n2");
    wait_reachable(&lab, "n1", "n2", "the pair is healed");
    wait_reachable(&lab, "n2", "n1", "the pair is healed");
}
