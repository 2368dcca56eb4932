//! Traffic to a node's own addresses is none of the filter's business:
//! every connection to n1's own address is answered by n1, a closed port is
//! refused at once, and pings get their reply, while the VIP is filtered.

use std::{net::IpAddr, process::Command, time::Duration};

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, NODES};

const CONNECTIONS: u32 = 300;

#[test]
fn connections_to_a_nodes_own_address_are_all_answered_by_that_node() {
    let lab = LabBuilder::new("farmown")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let vip4 = IpAddr::from(lab::lab_ipv4(200));
    let vip6 = IpAddr::from(lab::lab_ipv6(200));
    let farm = common::start(&lab, &common::farm_toml(&[vip4, vip6], "source_port", ""));
    // The filter is live: the VIP's connections spread over every node.
    farm.wait_answers(
        &lab,
        "the VIP to answer from every node",
        || common::connect(&lab, "client", vip4, 80, 30, &[]),
        |o| o.fails() == 0 && NODES.iter().all(|n| o.counts().contains_key(*n)),
    );

    let n1 = lab.host("n1");
    for own in [IpAddr::from(n1.ipv4()), IpAddr::from(n1.ipv6())] {
        let outcome = common::connect(&lab, "client", own, 80, CONNECTIONS, &[]);
        let counts = outcome.counts();
        eprintln!(
            "{CONNECTIONS} connections to n1's {own}: {counts:?}, errors {:?}",
            outcome.errors
        );
        assert!(
            outcome.errors.is_empty() && counts.keys().eq(["n1"]),
            "expected all {CONNECTIONS} connections to n1's own {own} answered by n1, \
             saw {counts:?} and errors {:?}",
            outcome.errors
        );

        // Port 22 has no listener: refused by n1's kernel, not dropped.
        let closed = common::connect(&lab, "client", own, 22, 20, &[]);
        eprintln!(
            "20 connections to {own} port 22: errors {:?}, slowest {} ms",
            closed.errors,
            closed.slowest.as_millis()
        );
        assert!(
            closed.errors.get("ConnectionRefusedError") == Some(&20)
                && closed.slowest < Duration::from_millis(500),
            "expected 20 connections to {own} port 22 refused at once, saw errors {:?}, \
             answers {:?}, slowest attempt {:?}",
            closed.errors,
            closed.counts(),
            closed.slowest
        );

        let ping = lab
            .host("client")
            .run(Command::new("ping").args([
                "-n",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                &own.to_string(),
            ]))
            .unwrap();
        let text = String::from_utf8_lossy(&ping.stdout);
        assert!(
            ping.status.success() && text.contains("5 received") && !text.contains("DUP!"),
            "expected one reply per ping to n1's own {own}, saw: {text}"
        );
    }
}
