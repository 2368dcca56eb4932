//! Hard-linked files under churn (linked, written through one name,
//! unlinked through another, renamed) while the secondary's daemon is
//! killed and comes back: every name must end as one file on the secondary
//! too, with the primary's content. The chaos campaign found names of such
//! a file left on the secondary as a separate file with an older content,
//! which writes through the other names never reached: the primary linked
//! a name to another one that the secondary did not have yet (one the
//! resynchronisation walk had not reached, or whose change was still
//! queued), and the secondary dropped the name before the link failed.

use std::time::Duration;

use halo_tests::lab::LabBuilder;

use super::common::{self, Churn};

/// How long the churn runs before the secondary is killed, and after it
/// is SECOND again.
const BEFORE_KILL: Duration = Duration::from_secs(12);
const AFTER_REJOIN: Duration = Duration::from_secs(12);

#[test]
fn hard_linked_files_stay_one_file_on_a_secondary_killed_under_churn() {
    let lab = LabBuilder::new("mirrorhlchurn")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = common::start(&lab, "", "n1");
    // Mostly hard links, writes and appends through any name, unlinks and
    // renames, with creations and truncations now and then.
    let mut churn = common::spawn_churn(
        &lab,
        "n1",
        &Churn {
            seed: 11,
            dir: "links",
            ops: "cwwwaatrruuhhhh",
            dirs: 4,
            most_files: 80,
            new_file_bytes: 65536,
            grow_to_bytes: 200_000,
            fsync_probability: 0.0,
        },
    );
    std::thread::sleep(BEFORE_KILL);
    cluster.kill("n2").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    cluster.start("n2").unwrap();
    // The resynchronisation runs under the churn, which it serves first.
    common::wait_module(&cluster, "n2", "SECOND", Duration::from_secs(60));
    std::thread::sleep(AFTER_REJOIN);
    common::stop_churn(&mut churn);
    common::wait_settled(&lab, "n2");
    // The digest lists every name of each file: a name split off on n2 is
    // a difference even while its content still matches.
    common::wait_identical(&lab, Duration::from_secs(30));
}
