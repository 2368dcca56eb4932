//! A secondary whose disk fills up: it refuses the change it cannot apply
//! and says why, the primary goes on alone (nothing waits for the full
//! disk), both daemons keep running, and once there is room again the
//! secondary resynchronises by itself.

use std::time::Duration;

use halo_tests::{cluster::module_in, lab::LabBuilder};

use super::common::{self, wait_module, DIR, MODULE};

#[test]
fn a_full_secondary_disk_breaks_replication_cleanly_and_it_recovers_by_itself() {
    let lab = LabBuilder::new("mirrorfull")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    // n2's replicated directory is a 4 MiB file system (inside its own
    // mount namespace, gone with the lab).
    lab.host("n2")
        .sh(&format!("mount -t tmpfs -o size=4m halo-full {DIR}"))
        .unwrap();
    let cluster = common::start(&lab, "", "n1");
    lab.host("n1")
        .sh(&format!("head -c 8000000 /dev/urandom > {DIR}/too-big.bin"))
        .unwrap();

    // The secondary refuses and leaves; the primary serves alone.
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(30));
    let refused = cluster
        .module_log("n2", MODULE)
        .unwrap()
        .iter()
        .any(|e| e.text.contains("No space left on device"));
    assert!(refused, "n2's log names the full disk");
    let n2 = cluster.status("n2").unwrap();
    assert!(
        !module_in(&n2, MODULE, "SECOND", "ready"),
        "a secondary that cannot apply is not in sync: {n2:#?}"
    );

    // Room again: the secondary comes back by itself.
    lab.host("n1")
        .sh(&format!(
            "rm {DIR}/too-big.bin && head -c 1000000 /dev/urandom > {DIR}/fits.bin"
        ))
        .unwrap();
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));
}
