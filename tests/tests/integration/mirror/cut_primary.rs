//! A primary cut off entirely while it streams to its secondary, with the
//! arbiter witness: its lease runs out and it must stop serving then, even
//! though its replication stream still holds unsent data toward a peer it
//! can no longer reach. The long chaos campaign saw both nodes answer
//! `ready.txt` 200 just after such a cut healed: the primary's driver was
//! blocked up to 2 s flushing the stream toward the lost peer, which held
//! back the lease's end, and the peer had already taken over.

use std::time::Duration;

use halo_tests::lab::LabBuilder;

use super::{
    common::{self, wait_module, Churn},
    roles::{spawn_ready_probe, start_with_arbiter},
};

/// Longer than it takes n2 to take over (its lease request comes at the
/// heartbeat timeout, 0.5 s; the witness frees n1's lease, renewed just
/// before the cut, about 1.6 s after it: 1 s of lease plus its grace, and
/// n2 asks again the moment it frees); shorter than the old 2 s flush.
const CUT: Duration = Duration::from_millis(1850);

#[test]
fn a_primary_cut_off_while_it_streams_stops_serving_when_its_lease_ends() {
    let lab = LabBuilder::new("mirrorcutprim")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let (_witness, cluster) = start_with_arbiter(&lab, "");
    let probe = spawn_ready_probe(&lab);
    // Large appends, so the stream to n2 always has data in flight: once
    // n1 is cut its socket's buffer fills and a write to it blocks.
    let mut churn = common::spawn_churn(
        &lab,
        "n1",
        &Churn {
            seed: 31,
            dir: "stream",
            ops: "caaaaaaw",
            dirs: 2,
            most_files: 16,
            new_file_bytes: 65536,
            grow_to_bytes: 8 << 20,
            fsync_probability: 0.0,
        },
    );
    std::thread::sleep(Duration::from_secs(3));

    lab.cut("n1").unwrap();
    std::thread::sleep(CUT);
    lab.heal("n1").unwrap();
    // n2 took over with the lease; n1, with its lease long over, follows.
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
    common::stop_churn(&mut churn);

    let samples = probe.log().unwrap();
    let after_heal: Vec<&str> = samples
        .lines()
        .skip_while(|l| !l.starts_with('-'))
        .collect();
    assert!(
        after_heal.iter().any(|l| l.ends_with(" 200")),
        "the probe must see n2 serve after the heal: {samples}"
    );
    let both = samples.lines().filter(|l| *l == "200 200").count();
    assert_eq!(
        both,
        0,
        "both nodes answered ready.txt 200 in {both} of {} samples",
        samples.lines().count()
    );
    // What n1 wrote after it lost the role is undone on it.
    common::wait_settled(&lab, "n1");
    common::wait_identical(&lab, Duration::from_secs(60));
}
