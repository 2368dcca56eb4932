//! Labs with several networks, as redundant heartbeat links need: every
//! network carries traffic on its own, and a cut takes down one network or,
//! as a partition does, all of them.

use halo_tests::lab::{
    lab_ipv4_on, lab_ipv6_on, Lab, LabBuilder, IPV4_PREFIX_LEN, IPV6_PREFIX_LEN,
};

use super::network::{assert_reachable, assert_unreachable, wait_reachable};

fn two_network_lab(label: &str, hosts: &[&str]) -> Lab {
    LabBuilder::new(label)
        .hosts(hosts)
        .networks(2)
        .build()
        .expect("build a lab with two networks")
}

#[test]
fn hosts_reach_each_other_on_every_network() {
    let lab = two_network_lab("two_networks", &["n1", "n2"]);
    assert_eq!(lab.networks(), 2, "networks of the lab");
    for (number, host) in (1..).zip(lab.hosts()) {
        assert_eq!(
            (host.iface(), host.ipv4(), host.ipv6()),
            (host.iface_on(0), host.ipv4_on(0), host.ipv6_on(0)),
            "{}'s interface and addresses without a network are network 0's",
            host.name()
        );
        for network in 0..lab.networks() {
            let (iface, ipv4, ipv6) = (
                host.iface_on(network),
                host.ipv4_on(network),
                host.ipv6_on(network),
            );
            assert_eq!(
                (iface, ipv4, ipv6),
                (
                    format!("eth{network}").as_str(),
                    lab_ipv4_on(network, number),
                    lab_ipv6_on(network, number)
                ),
                "{}'s interface and addresses on network {network}",
                host.name()
            );
            let listed = host
                .sh(&format!("ip -oneline address show dev {iface}"))
                .unwrap_or_else(|error| panic!("expected to list {iface}: {error:#}"));
            let cidrs = [
                format!("{ipv4}/{IPV4_PREFIX_LEN}"),
                format!("{ipv6}/{IPV6_PREFIX_LEN}"),
            ];
            for addr in cidrs {
                assert!(
                    listed.contains(&format!(" {addr} ")),
                    "expected {addr} on {}'s {iface}, found:\n{listed}",
                    host.name()
                );
            }
        }
    }
    let interfaces = lab
        .host("n1")
        .sh("ls /sys/class/net")
        .expect("list /sys/class/net in n1");
    assert_eq!(
        interfaces, "eth0\neth1\nlo\n",
        "interfaces in n1's /sys/class/net"
    );

    let (n1, n2) = (lab.host("n1"), lab.host("n2"));
    for network in 0..lab.networks() {
        assert_reachable(n1, n2, network, "every network is up");
        assert_reachable(n2, n1, network, "every network is up");
    }
}

#[test]
fn losing_one_network_leaves_the_other_working() {
    let lab = two_network_lab("one_network_down", &["n1", "n2"]);
    let (n1, n2) = (lab.host("n1"), lab.host("n2"));

    lab.cut_network("n2", 1).expect("cut n2 off network 1");
    assert_unreachable(n1, n2, 1, "n2 is cut off network 1");
    assert_reachable(n1, n2, 0, "only network 1 is cut");
    assert_reachable(n2, n1, 0, "only network 1 is cut");
    lab.heal_network("n2", 1).expect("heal n2 on network 1");
    wait_reachable(&lab, "n1", "n2", 1, "network 1 is healed");

    lab.cut_network("n2", 0).expect("cut n2 off network 0");
    assert_unreachable(n1, n2, 0, "n2 is cut off network 0");
    assert_reachable(n1, n2, 1, "only network 0 is cut");
    assert_reachable(n2, n1, 1, "only network 0 is cut");
    lab.heal_network("n2", 0).expect("heal n2 on network 0");
    wait_reachable(&lab, "n1", "n2", 0, "network 0 is healed");
    assert_reachable(n1, n2, 1, "healing network 0 leaves network 1 alone");
}

#[test]
fn a_cut_host_is_isolated_on_every_network_until_healed() {
    let lab = two_network_lab("partition", &["n1", "n2", "n3"]);
    let (n1, n2, n3) = (lab.host("n1"), lab.host("n2"), lab.host("n3"));

    lab.cut("n2").expect("cut n2");
    for network in 0..lab.networks() {
        assert_unreachable(n1, n2, network, "n2 is cut off every network");
        assert_reachable(n1, n3, network, "only n2 is cut");
    }

    // Healing one network of a host cut off all of them reconnects just it.
    lab.heal_network("n2", 0).expect("heal n2 on network 0");
    wait_reachable(&lab, "n1", "n2", 0, "network 0 is healed");
    assert_unreachable(n1, n2, 1, "network 1 is still cut");

    lab.heal("n2").expect("heal n2");
    for network in 0..lab.networks() {
        wait_reachable(&lab, "n1", "n2", network, "n2 is healed");
        wait_reachable(&lab, "n3", "n2", network, "n2 is healed");
    }
}

#[test]
fn a_pair_cut_on_one_network_still_meets_on_the_other() {
    let lab = two_network_lab("pair_on", &["n1", "n2", "n3"]);
    let (n1, n2, n3) = (lab.host("n1"), lab.host("n2"), lab.host("n3"));

    lab.cut_pair("n1", "n2").expect("cut n1 and n2 apart");
    for network in 0..lab.networks() {
        assert_unreachable(n1, n2, network, "the pair is cut on every network");
    }
    assert_reachable(n3, n1, 1, "only the pair n1, n2 is cut");
    assert_reachable(n3, n2, 1, "only the pair n1, n2 is cut");

    // Healing one network of a pair cut on all of them reconnects just it.
    lab.heal_pair_on(1, "n2", "n1")
        .expect("heal n1 and n2 on network 1");
    wait_reachable(&lab, "n1", "n2", 1, "the pair is healed on network 1");
    assert_unreachable(n2, n1, 0, "the pair is still cut on network 0");
    lab.heal_pair("n1", "n2").expect("heal n1 and n2");
    wait_reachable(&lab, "n1", "n2", 0, "the pair is healed");
    wait_reachable(&lab, "n2", "n1", 0, "the pair is healed");

    lab.cut_pair_on(1, "n1", "n2")
        .expect("cut n1 and n2 apart on network 1");
    assert_unreachable(n2, n1, 1, "the pair is cut on network 1");
    assert_reachable(n1, n2, 0, "the pair is cut on network 1 only");
    assert_reachable(n2, n1, 0, "the pair is cut on network 1 only");
    lab.heal_pair("n1", "n2").expect("heal n1 and n2");
    wait_reachable(&lab, "n2", "n1", 1, "the pair is healed on every network");
}

#[test]
fn a_network_the_lab_lacks_is_refused() {
    let lab = two_network_lab("no_network_2", &["n1", "n2"]);
    let refusals = [
        ("cut_network", lab.cut_network("n1", 2)),
        ("heal_network", lab.heal_network("n1", 2)),
        ("cut_pair_on", lab.cut_pair_on(2, "n1", "n2")),
        ("heal_pair_on", lab.heal_pair_on(2, "n1", "n2")),
    ];
    for (call, result) in refusals {
        let error = result.map_err(|error| format!("{error:#}"));
        assert!(
            matches!(&error, Err(message) if message.contains("no network 2")),
            "expected {call} of network 2 to fail naming the missing network, got {error:?}"
        );
    }
    let asked = std::panic::catch_unwind(|| lab.host("n1").ipv4_on(2));
    assert!(
        asked.is_err(),
        "expected ipv4_on(2) to panic in a lab with 2 networks, got {asked:?}"
    );
}
