//! A secondary restarted while the primary's application renames files:
//! the resynchronisation that follows must leave identical trees. The
//! chaos campaign found renamed files left for good with another content,
//! often with mode 0600 (the mode the secondary creates files with): a
//! file moved out of a directory the resynchronisation had not compared
//! yet into one it had already compared kept the secondary's old copy,
//! and a file whose checksums had travelled, renamed before the blocks
//! the secondary asked for were read, never received them.

use std::time::Duration;

use halo_tests::lab::{LabBuilder, Signal};

use super::common::{self, wait_module, Churn};

/// Rounds of churn with a secondary restart in each: one round does not
/// always hit the races.
const ROUNDS: u64 = 3;
/// How long the churn runs before the secondary's daemon gets SIGTERM, how
/// long that daemon stays away, and how long the churn goes on once the
/// secondary is SECOND again.
const BEFORE_STOP: Duration = Duration::from_secs(3);
const DOWN_FOR: Duration = Duration::from_secs(2);
const AFTER_SYNC: Duration = Duration::from_millis(500);

#[test]
fn files_renamed_while_a_restarted_secondary_resyncs_end_identical() {
    let lab = LabBuilder::new("mirrorrename")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = common::start(&lab, "", "n1");
    for round in 0..ROUNDS {
        // Creates, overwrites, appends, truncates, renames (also into
        // another directory) and unlinks, with an fsync now and then.
        let mut churn = common::spawn_churn(
            &lab,
            "n1",
            &Churn {
                seed: 17 + round,
                dir: "churn",
                ops: "ccwwatrrrru",
                dirs: 5,
                most_files: 120,
                new_file_bytes: 96 * 1024,
                grow_to_bytes: 300 * 1024,
                fsync_probability: 0.2,
            },
        );
        std::thread::sleep(BEFORE_STOP);
        let daemon = cluster.daemon("n2").unwrap();
        daemon.signal(Signal::SIGTERM).unwrap();
        let status = daemon.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            status.success(),
            "round {round}: n2's daemon after SIGTERM exited {status}, expected 0"
        );
        std::thread::sleep(DOWN_FOR);
        cluster.start("n2").unwrap();
        // The whole resynchronisation runs under the churn, which it serves
        // first: on a loaded machine it can take tens of seconds.
        wait_module(&cluster, "n2", "SECOND", Duration::from_secs(90));
        std::thread::sleep(AFTER_SYNC);
        common::stop_churn(&mut churn);
        common::wait_settled(&lab, "n2");
        common::wait_identical(&lab, Duration::from_secs(30));
    }
}
