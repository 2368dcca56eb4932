//! kill -9 of the primary's daemon while its application churns files.
//! The application is the module's: `start_prim` starts the churn and
//! `stop_prim` kills it. It outlives its daemon and writes on until the
//! next daemon stops it. The peer takes over and starts its own churn on
//! the same files at once. The old primary's daemon comes back and rejoins
//! as SECOND, and at the end both trees are identical.
//!
//! Whatever the old primary wrote that its peer never received, queued at
//! the death or written after it, must be undone on its side by the
//! resynchronisation. So must what the new primary wrote just as it took
//! over. The long chaos campaign found a file left with other content of
//! the same size after this fault.

use std::time::Duration;

use halo_tests::{
    cluster::install_script,
    lab::{self, LabBuilder},
};

use super::common::{self, wait_module, Churn, CHURN_PY};

const APP: &str = "/etc/halo/app";
const PID: &str = "/run/halo/churn.pid";

/// Overwrites, appends and truncations mostly: changes that keep a file's
/// name, which only a block comparison can find.
fn churn(seed: u64) -> Churn {
    Churn {
        seed,
        dir: "churn",
        ops: "cwwwwaattru",
        dirs: 4,
        most_files: 60,
        new_file_bytes: 65536,
        grow_to_bytes: 200_000,
        fsync_probability: 0.0,
    }
}

/// Starts the churn (another seed on each node) in its own session.
fn start_prim(node: &str) -> String {
    let seed = if node == "n1" { 21 } else { 22 };
    format!(
        "#!/bin/sh\n\
         setsid /usr/bin/python3 {APP}/churn.py {} </dev/null >/dev/null 2>&1 &\n\
         echo $! > {PID}\n",
        churn(seed).args().join(" ")
    )
}

/// Kills the churn and waits until it is gone.
fn stop_prim() -> String {
    format!(
        "#!/bin/sh\n\
         pid=$(cat {PID} 2>/dev/null)\n\
         [ -n \"$pid\" ] || exit 0\n\
         kill -KILL $pid 2>/dev/null\n\
         for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done\n\
         rm -f {PID}\n"
    )
}

#[test]
fn a_primary_daemon_killed_under_churn_rejoins_with_the_survivors_tree() {
    let lab = LabBuilder::new("mirrorprimchurn")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    for node in ["n1", "n2"] {
        let host = lab.host(node);
        install_script(host, &format!("{APP}/churn.py"), CHURN_PY).unwrap();
        install_script(host, &format!("{APP}/start_prim"), &start_prim(node)).unwrap();
        install_script(host, &format!("{APP}/stop_prim"), &stop_prim()).unwrap();
    }
    let scripts = format!(
        "[module.scripts]\nstart_prim = \"{APP}/start_prim\"\nstop_prim = \"{APP}/stop_prim\"\n"
    );
    let mut cluster = common::start(&lab, &scripts, "n1");
    let churning = |node: &str| lab.host(node).outside_path(PID).exists();
    lab::wait_until(Duration::from_secs(10), "the churn on n1", || {
        Ok(churning("n1"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(8));

    // n1's daemon dies; its churn goes on. n2 takes over and churns too.
    cluster.kill("n1").unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert!(churning("n1"), "n1's churn outlives its daemon");

    // The next daemon on n1 stops the churn its predecessor started, then
    // follows n2.
    cluster.start("n1").unwrap();
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(60));
    assert!(!churning("n1"), "n1's next daemon stopped its churn");
    std::thread::sleep(Duration::from_secs(5));

    // n2's churn stops (the application is paused for the comparison).
    lab.host("n2").sh(&stop_prim()).unwrap();
    common::wait_settled(&lab, "n1");
    common::wait_identical(&lab, Duration::from_secs(30));
}
