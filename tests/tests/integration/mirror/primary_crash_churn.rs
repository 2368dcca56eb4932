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
    cluster::Cluster,
    lab::{self, LabBuilder},
};

use super::{
    common::{
        self, start_prim_script, stop_prim_script, wait_module, Churn, CHURN_PY, PROCESS_GONE,
    },
    roles::start_with_arbiter,
};

const APP: &str = "/etc/halo/app";
const PID: &str = "/run/halo/churn.pid";

/// Overwrites, appends and truncations (changes that keep a file's name,
/// which only a block comparison can find), and renames across
/// directories.
fn churn(seed: u64) -> Churn {
    Churn {
        seed,
        dir: "churn",
        ops: "cwwwwaattrrru",
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
    let args = churn(seed).args().join(" ");
    start_prim_script(":", &format!("/usr/bin/python3 {APP}/app.py {args}"), PID)
}

/// Kills the churn and waits until it is gone.
fn stop_prim() -> String {
    stop_prim_script(PID, "KILL", PROCESS_GONE)
}

/// Installs the churn and its scripts on n1 and n2; the module's
/// `[module.scripts]` section.
fn install_app(lab: &lab::Lab) -> String {
    common::install_app(lab, APP, CHURN_PY, start_prim, &stop_prim())
}

/// Whether `node`'s churn runs (its pid file is there).
fn churning(lab: &lab::Lab, node: &str) -> bool {
    lab.host(node).outside_path(PID).exists()
}

/// Lets n2's churn run on a while, stops it (the application is paused
/// for the comparison) and compares the trees.
fn finish(lab: &lab::Lab) {
    std::thread::sleep(Duration::from_secs(5));
    lab.host("n2").sh(&stop_prim()).unwrap();
    common::wait_settled(lab, "n1");
    common::wait_identical(lab, Duration::from_secs(30));
}

#[test]
fn a_primary_daemon_killed_under_churn_rejoins_with_the_survivors_tree() {
    let lab = LabBuilder::new("mirrorprimchurn")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let scripts = install_app(&lab);
    let mut cluster = common::start(&lab, &scripts, "n1");
    lab::wait_until(Duration::from_secs(10), "the churn on n1", || {
        Ok(churning(&lab, "n1"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(8));

    // n1's daemon dies; its churn goes on. n2 takes over and churns too.
    cluster.kill("n1").unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert!(churning(&lab, "n1"), "n1's churn outlives its daemon");

    // The next daemon on n1 stops the churn its predecessor started, then
    // follows n2.
    cluster.start("n1").unwrap();
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(60));
    assert!(!churning(&lab, "n1"), "n1's next daemon stopped its churn");
    finish(&lab);
}

/// The same with the arbiter witness and n1's daemon frozen (SIGSTOP) past
/// its lease rather than killed: its churn writes on while it is frozen,
/// and it stops the churn itself once it wakes and finds n2 serving. The
/// hour-long chaos campaign found a file with one 4 KiB block of other
/// content on the woken node after this fault.
#[test]
fn a_primary_daemon_frozen_under_churn_rejoins_with_the_survivors_tree() {
    let lab = LabBuilder::new("mirrorprimfreeze")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let scripts = install_app(&lab);
    let (_witness, mut cluster) = start_with_arbiter(&lab, &scripts);
    lab::wait_until(Duration::from_secs(10), "the churn on n1", || {
        Ok(churning(&lab, "n1"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(8));

    let signal = |cluster: &mut Cluster<'_>, s| cluster.daemon("n1").unwrap().signal(s).unwrap();
    signal(&mut cluster, nix::sys::signal::Signal::SIGSTOP);
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(15));
    signal(&mut cluster, nix::sys::signal::Signal::SIGCONT);
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(60));
    assert!(!churning(&lab, "n1"), "n1 stopped its churn once it woke");
    finish(&lab);
}
