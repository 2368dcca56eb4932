//! The lab network: addresses, reachability, cuts and heals.

use std::{net::IpAddr, panic, thread, time::Duration};

use halo_tests::lab::{lab_ipv4, lab_ipv6, wait_until, Host, Lab, LabBuilder};

use super::{REPLY_WAIT, SILENCE_WAIT};

/// How long a healed link may take to carry traffic again.
const HEAL_TIMEOUT: Duration = Duration::from_secs(5);

fn reaches(from: &Host, to: impl Into<IpAddr>) -> bool {
    let to = to.into();
    from.ping(to, REPLY_WAIT)
        .unwrap_or_else(|error| panic!("expected to ping {to} from {}: {error:#}", from.name()))
}

/// The IPv4 and IPv6 address of `host` on `network`.
fn addresses(host: &Host, network: u8) -> [IpAddr; 2] {
    [host.ipv4_on(network).into(), host.ipv6_on(network).into()]
}

/// Makes `from` resolve `addrs` anew on its next packet to them: a
/// resolution left failing by a cut probes only once a second, so a path
/// the switch has just opened would otherwise look cut for up to a second.
fn forget_neighbours(from: &Host, addrs: &[IpAddr]) {
    let script: Vec<String> = addrs
        .iter()
        .map(|addr| format!("ip neigh flush to {addr}"))
        .collect();
    from.sh(&script.join(" && ")).unwrap_or_else(|error| {
        panic!("expected to flush {}'s neighbours: {error:#}", from.name())
    });
}

/// Asserts that `from` gets no reply from either address of `to` on
/// `network`.
pub fn assert_unreachable(from: &Host, to: &Host, network: u8, why: &str) {
    let [ipv4, ipv6] = addresses(to, network);
    forget_neighbours(from, &[ipv4, ipv6]);
    // Both pings at once, as waiting out the silence is most of a cut test:
    // arrays map eagerly, so both start before either is joined.
    let replies = thread::scope(|scope| {
        let pings =
            [ipv4, ipv6].map(|addr| (addr, scope.spawn(move || from.ping(addr, SILENCE_WAIT))));
        pings.map(|(addr, ping)| {
            let replied = ping
                .join()
                .unwrap_or_else(|panic| panic::resume_unwind(panic))
                .unwrap_or_else(|error| panic!("expected to ping {addr}: {error:#}"));
            (addr, replied)
        })
    });
    for (addr, replied) in replies {
        assert!(
            !replied,
            "expected no reply from {} ({addr}, network {network}) to {} ({why}), got one",
            to.name(),
            from.name()
        );
    }
}

/// Asserts that `from` reaches both addresses of `to` on `network`.
pub fn assert_reachable(from: &Host, to: &Host, network: u8, why: &str) {
    for addr in addresses(to, network) {
        assert!(
            reaches(from, addr),
            "expected {} to reach {} at {addr} (network {network}, {why}), no reply came",
            from.name(),
            to.name()
        );
    }
}

/// Waits until `from` reaches both addresses of `to` on `network` again.
pub fn wait_reachable(lab: &Lab, from: &str, to: &str, network: u8, why: &str) {
    let (from, to) = (lab.host(from), lab.host(to));
    for addr in addresses(to, network) {
        wait_until(
            HEAL_TIMEOUT,
            &format!("{} to reach {addr} (network {network}, {why})", from.name()),
            || {
                forget_neighbours(from, &[addr]);
                from.ping(addr, SILENCE_WAIT)
            },
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
    assert_reachable(n1, n2, 0, "same bridge");
    assert_reachable(n2, n1, 0, "same bridge");
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
    assert_unreachable(n1, n2, 0, "n2 is cut");
    assert_unreachable(n3, n2, 0, "n2 is cut");
    assert_reachable(n1, n3, 0, "only n2 is cut");

    lab.heal("n2").expect("heal n2");
    wait_reachable(&lab, "n1", "n2", 0, "n2 is healed");
    wait_reachable(&lab, "n3", "n2", 0, "n2 is healed");
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
    assert_unreachable(n1, n2, 0, "n1 and n2 are cut apart");
    assert_unreachable(n2, n1, 0, "n1 and n2 are cut apart");
    assert_reachable(n3, n1, 0, "only the pair n1, n2 is cut");
    assert_reachable(n3, n2, 0, "only the pair n1, n2 is cut");

    lab.heal_pair("n2", "n1").expect("heal n1 and n2");
    wait_reachable(&lab, "n1", "n2", 0, "the pair is healed");
    wait_reachable(&lab, "n2", "n1", 0, "the pair is healed");
}
