//! An application that makes a durable write while its `start_prim` still
//! runs, on the node a swap makes primary: the write returns, and its data
//! reaches the old primary. The pause of `sync = "fsync"` (and the capture
//! attached for it) is set before `start_prim` starts, so this is the path
//! a database's recovery checkpoint takes after a switch-over.

use std::time::Duration;

use halo_tests::lab::{self, LabBuilder};

use super::common::{self, start_prim_script, stop_prim_script, wait_module, DIR, PROCESS_GONE};

const APP: &str = "/etc/halo/app";
const PID: &str = "/run/halo/app.pid";
/// Outside the replicated directory: the application's fsync returned.
const DONE: &str = "/run/halo/app.done";

/// Writes a marker below the replicated directory, fsyncs it, says so
/// outside it, then stays until stopped.
const APP_PY: &str = r#"
import os, sys, time
marker, done = sys.argv[1], sys.argv[2]
fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"recovered\n")
os.fsync(fd)
with open(done + ".tmp", "w") as f:
    f.write("ok")
os.rename(done + ".tmp", done)
while True:
    time.sleep(1)
"#;

/// Starts the application, then stays 1 s more: its fsync comes while
/// `start_prim` runs.
fn start_prim() -> String {
    let script = start_prim_script(
        &format!("rm -f {DONE}"),
        &format!("/usr/bin/python3 {APP}/app.py {DIR}/marker-$HALO_NODE {DONE}"),
        PID,
    );
    format!("{script}sleep 1\n")
}

#[test]
fn a_durable_write_made_while_start_prim_runs_is_released_once_the_secondary_has_it() {
    let lab = LabBuilder::new("mirrorstartfs")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let scripts = common::install_app(
        &lab,
        APP,
        APP_PY,
        |_| start_prim(),
        &stop_prim_script(PID, "KILL", PROCESS_GONE),
    );
    let cluster = common::start(&lab, &scripts, "n1");
    let done = |node: &str| lab.host(node).outside_path(DONE);
    lab::wait_until(Duration::from_secs(20), "n1's application's fsync", || {
        Ok(done("n1").exists())
    })
    .unwrap();

    common::swap(&cluster, "n1");
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
    lab::wait_until(
        Duration::from_secs(20),
        "n2's application's fsync to return",
        || Ok(done("n2").exists()),
    )
    .unwrap_or_else(|error| {
        let state = lab
            .host("n2")
            .sh(&format!("cut -d' ' -f3 /proc/$(cat {PID})/stat"))
            .unwrap_or_default();
        panic!("{error:#}: its process is in state {state}")
    });
    // And the secondary has it.
    common::wait_identical(&lab, Duration::from_secs(30));
    let marker = lab.host("n1").outside_path(format!("{DIR}/marker-n2"));
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "recovered\n");
}
