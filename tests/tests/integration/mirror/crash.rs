//! A daemon that crashes while it holds a durable writer (its fsync waits
//! for the secondary) must not leave the application stopped for ever: the
//! next daemon resumes it, but only once its node serves the data the
//! writer made durable (resuming it earlier would acknowledge a write the
//! secondary may never get).

use std::{process::Command, time::Duration};

use halo_tests::lab::{self, LabBuilder};
use nix::sys::signal::Signal;

use super::common::{self, DIR};

/// One write made durable, then a line on stdout.
const ONE_FSYNC: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"record\n")
os.fsync(fd)
print("returned", flush=True)
"#;

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

#[test]
fn a_writer_held_by_a_crashed_daemon_is_resumed_by_the_next_one_once_it_serves_the_data() {
    let lab = LabBuilder::new("mirrorcrash")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = common::start(&lab, "", "n1");
    // n1's stamp says "shared" (n2 may take over) before n2 can count
    // itself in sync: a crash of n1 in between would leave it believing it
    // holds the only copy (docs/mirror-durability.md, "The end of a
    // resynchronisation"). n2 is SECOND, so it must say so already.
    let stamp = common::state_file(&lab, "n1", "stamp.json");
    let stamped = std::fs::read_to_string(&stamp).unwrap();
    assert!(
        stamped.contains("\"shared\""),
        "n2 is in sync but n1's stamp says {stamped}"
    );
    // The secondary freezes: nothing acknowledges the next fsync.
    cluster
        .daemon("n2")
        .unwrap()
        .signal(Signal::SIGSTOP)
        .unwrap();
    let writer = lab
        .host("n1")
        .spawn(
            "writer",
            Command::new("/usr/bin/python3").args(["-c", ONE_FSYNC, &format!("{DIR}/held")]),
        )
        .unwrap();
    lab::wait_until(
        Duration::from_secs(5),
        "the writer held in its fsync",
        || Ok(process_state(writer.pid()) == Some('T')),
    )
    .unwrap();
    // The primary's daemon crashes before the heartbeat timeout frees it.
    cluster.kill("n1").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        process_state(writer.pid()),
        Some('T'),
        "the writer stays stopped while no daemon runs"
    );
    // The next daemon cannot tell whether the frozen n2 took over: it
    // waits, and so does the writer.
    cluster.start("n1").unwrap();
    common::wait_module(&cluster, "n1", "WAIT", Duration::from_secs(20));
    assert_eq!(
        (process_state(writer.pid()), writer.log().unwrap()),
        (Some('T'), String::new()),
        "the writer stays held while n1 does not serve its data"
    );
    // n2 returns as the secondary: once n1 is PRIM with n2 in sync, the
    // writer's data is on both nodes and the next daemon lets it go.
    cluster
        .daemon("n2")
        .unwrap()
        .signal(Signal::SIGCONT)
        .unwrap();
    common::wait_module(&cluster, "n1", "PRIM", Duration::from_secs(20));
    lab::wait_until(Duration::from_secs(10), "the writer to return", || {
        Ok(writer.log()?.contains("returned"))
    })
    .unwrap();
}
