//! The ping witness, SafeKit's tie-breaker: a mirror node that loses its
//! peer goes ALONE only while it reaches one of the witness's addresses.
//! A node cut off from everything never serves; two nodes that lose each
//! other but both reach the witness both serve (what ping cannot tell
//! apart, and why the arbiter exists), and after the heal the node with
//! the higher data generation stays primary while the other resynchronises
//! to it, its own writes of the split discarded.

use std::time::{Duration, Instant};

use halo_tests::{cluster::Cluster, lab::LabBuilder};

use super::common::{self, wait_module, DIR, MODULE};

fn serving(cluster: &Cluster<'_>, node: &str) -> bool {
    let status = cluster
        .status(node)
        .unwrap_or_else(|e| panic!("{node}'s status: {e:#}"));
    status.modules.iter().any(|m| m.name == MODULE && m.serving)
}

fn generation(cluster: &Cluster<'_>, node: &str) -> u64 {
    let status = cluster.status(node).unwrap();
    status
        .modules
        .iter()
        .find(|m| m.name == MODULE)
        .map(|m| m.generation)
        .unwrap()
}

fn exists(lab: &halo_tests::lab::Lab, host: &str, file: &str) -> bool {
    lab.host(host)
        .sh(&format!("test -e {DIR}/{file} && echo yes || true"))
        .unwrap()
        .trim()
        == "yes"
}

#[test]
fn with_ping_an_isolated_node_never_serves_and_after_a_split_the_higher_generation_wins() {
    let lab = LabBuilder::new("mirrorping")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let extra = format!(
        "[module.witness]\nkind = \"ping\"\naddresses = [\"{}\"]\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
        lab.host("w").ipv4()
    );
    let cluster = common::start(&lab, &extra, "n1");

    // (a) The secondary loses everything, the witness too: the primary,
    // which still reaches the witness, serves ALONE; the secondary waits
    // and never serves.
    lab.cut("n2").unwrap();
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(15));
    wait_module(&cluster, "n2", "WAIT", Duration::from_secs(15));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(!serving(&cluster, "n2"), "the isolated secondary serves");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.host("n1")
        .sh(&format!("echo during-the-cut > {DIR}/cut"))
        .unwrap();
    lab.heal("n2").unwrap();
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));

    // (b) The nodes lose each other, and both still reach the witness: both
    // serve, each on a new generation, and each takes writes.
    lab.cut_pair("n1", "n2").unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(15));
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(15));
    assert!(serving(&cluster, "n1") && serving(&cluster, "n2"));
    for node in ["n1", "n2"] {
        lab.host(node)
            .sh(&format!("echo split > {DIR}/split-{node}"))
            .unwrap();
    }
    let (g1, g2) = (generation(&cluster, "n1"), generation(&cluster, "n2"));
    assert_ne!(g1, g2, "the two sides of a split never share a generation");
    let (winner, loser) = if g1 > g2 { ("n1", "n2") } else { ("n2", "n1") };

    // After the heal the higher generation stays primary; the other node
    // resynchronises to it and its own writes of the split are gone.
    lab.heal_pair("n1", "n2").unwrap();
    wait_module(&cluster, winner, "PRIM", Duration::from_secs(30));
    wait_module(&cluster, loser, "SECOND", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));
    let kept = format!("split-{winner}");
    let discarded = format!("split-{loser}");
    assert!(
        exists(&lab, loser, &kept),
        "{loser} holds the winner's write"
    );
    assert!(
        !exists(&lab, loser, &discarded),
        "the loser's write of the split is discarded"
    );
    assert!(
        exists(&lab, loser, "cut"),
        "the write made during (a) stays"
    );
}
