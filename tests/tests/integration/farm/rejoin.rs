//! A node whose link flaps, so that it and its peers declare each other
//! down and up at different moments, is back in every node's bucket table
//! once the link holds, and the farm answers from all three. The chaos
//! campaign found such a node serving alone for good, every bucket owned
//! twice: a peer's first frame after it came back reached the modules only
//! if its reports had changed meanwhile.

use std::{net::IpAddr, time::Duration};

use halo_tests::{
    cluster::peer_up,
    lab::{self, LabBuilder},
};

use super::common::{self, farm_toml, NODES};

fn vip() -> IpAddr {
    lab::lab_ipv4(200).into()
}

#[test]
fn a_node_whose_link_flapped_rejoins_every_table() {
    let hosts: Vec<&str> = NODES.iter().copied().chain(["client"]).collect();
    let lab = LabBuilder::new("farmrejoin").hosts(&hosts).build().unwrap();
    let farm = common::start(&lab, &farm_toml(&[vip()], "source_port", ""));
    for node in NODES {
        farm.wait_members(&lab, node, &NODES);
    }

    // n1's link flaps: cut and healed in turns of 100 to 700 ms, so that
    // each side declares the other down at its own moments.
    let turns = [300, 650, 120, 700, 450, 200, 680, 150, 560, 330, 700, 100];
    for (i, ms) in turns.iter().enumerate() {
        if i % 2 == 0 {
            lab.cut("n1").unwrap();
        } else {
            lab.heal("n1").unwrap();
        }
        std::thread::sleep(Duration::from_millis(*ms));
    }
    lab.heal("n1").unwrap();
    for node in NODES {
        farm.cluster
            .wait_status(node, Duration::from_secs(10), "every peer up", |s| {
                NODES.iter().filter(|p| **p != node).all(|p| peer_up(s, p))
            })
            .unwrap();
    }
    for node in NODES {
        farm.wait_members(&lab, node, &NODES);
    }
    let probe = || common::connect(&lab, "client", vip(), 80, 30, &[]);
    farm.wait_answers(&lab, "every node to answer on the VIP", probe, |o| {
        o.fails() == 0 && o.counts().len() == 3
    });
}
