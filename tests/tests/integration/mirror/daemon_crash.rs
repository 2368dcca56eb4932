//! kill -9 of the primary's daemon while the application it started writes
//! durably (SPEC §11). The host and the application stay up: the pinned
//! capture keeps holding the writer's fsyncs (nobody acknowledges them), the
//! peer takes over with every acknowledged record, and the restarted daemon
//! stops the application its predecessor started before it becomes SECOND;
//! a writer the dead daemon's capture held, whose write n1 then loses to
//! n2's data, is never acknowledged.

use std::{collections::BTreeSet, process::Command, time::Duration};

use halo_tests::lab::{self, LabBuilder};

use super::common::{
    self, start_prim_script, stop_prim_script, wait_module, DIR, MODULE, PROCESS_GONE,
};

/// One write made durable, then a line on stdout.
const ONE_FSYNC: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"late\n")
os.fsync(fd)
print("returned", flush=True)
"#;

/// Appends numbered records, each made durable, and notes every number
/// whose fsync returned.
const WRITER: &str = r#"
import os, sys
records, acks = sys.argv[1], sys.argv[2]
fd = os.open(records, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
ack = open(acks, "a", buffering=1)
n = 0
while True:
    os.write(fd, b"%08d\n" % n)
    os.fsync(fd)
    ack.write("%d\n" % n)
    n += 1
"#;

const APP: &str = "/etc/halo/app";
/// Outside the replicated directory: what the writer was told is durable.
const ACKS: &str = "/run/halo/writer.acks";
const PID: &str = "/run/halo/writer.pid";

/// Starts the writer in its own session, recording its pid.
fn start_prim() -> String {
    start_prim_script(
        ":",
        &format!("/usr/bin/python3 {APP}/app.py {DIR}/records-$HALO_NODE {ACKS}"),
        PID,
    )
}

/// Stops the writer: SIGTERM, or SIGKILL on the forced call (a writer held
/// in its fsync is stopped, and a stopped process dies only of SIGKILL).
fn stop_prim() -> String {
    stop_prim_script(
        PID,
        "$([ \"$HALO_FORCE\" = 1 ] && echo KILL || echo TERM)",
        PROCESS_GONE,
    )
}

fn numbers(text: &str) -> BTreeSet<u64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`…), if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

#[test]
fn a_killed_primary_daemon_loses_no_acknowledged_record_and_its_application_is_stopped() {
    let lab = LabBuilder::new("mirrordaemonkill")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let scripts = common::install_app(&lab, APP, WRITER, |_| start_prim(), &stop_prim())
        + "nicestoptimeout = \"2s\"\nforcestoptimeout = \"5s\"\n";
    let mut cluster = common::start(&lab, &scripts, "n1");
    let n1 = lab.host("n1");
    let acks_of = |node: &str| {
        numbers(&std::fs::read_to_string(lab.host(node).outside_path(ACKS)).unwrap_or_default())
    };
    let mut writer = 0;
    lab::wait_until(
        Duration::from_secs(10),
        "the writer on n1 to acknowledge 100 records",
        || {
            writer = std::fs::read_to_string(n1.outside_path(PID))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            Ok(writer != 0 && acks_of("n1").len() >= 100)
        },
    )
    .unwrap();

    // The daemon dies; the host and the writer stay.
    cluster.kill("n1").unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(10));
    // The capture outlived its daemon: the writer's next fsync holds it.
    lab::wait_until(
        Duration::from_secs(5),
        "the writer held in its fsync (stopped) after its daemon died",
        || Ok(state(writer) == Some('T')),
    )
    .unwrap();
    let acked_while_dead = acks_of("n1");
    // A process that starts writing after the death is held too: the
    // capture is still attached, not merely a stop raised before it.
    let late = n1
        .spawn(
            "late-writer",
            Command::new("/usr/bin/python3").args(["-c", ONE_FSYNC, &format!("{DIR}/late")]),
        )
        .unwrap();
    lab::wait_until(
        Duration::from_secs(5),
        "a writer started after the daemon died held in its fsync",
        || Ok(state(late.pid()) == Some('T')),
    )
    .unwrap();

    // The next daemon stops the application its predecessor started, then
    // follows n2, which has the newer data.
    cluster.start("n1").unwrap();
    lab::wait_until(
        Duration::from_secs(20),
        "the restarted daemon to stop the writer",
        || Ok(!running(writer)),
    )
    .unwrap();
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
    // n1 took n2's data: the late write is gone and is never acknowledged.
    lab::wait_until(
        Duration::from_secs(10),
        "the late writer, whose write n1 lost, to be killed",
        || Ok(!running(late.pid())),
    )
    .unwrap();
    assert!(
        !late.log().unwrap().contains("returned"),
        "the late writer's fsync must never return: its write is not on the primary n2"
    );
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    let log = cluster.module_log("n1", MODULE).unwrap();
    assert!(
        log.iter()
            .any(|e| e.source == "app" && e.text.contains("died with the application started")),
        "expected n1's module log to say the previous daemon died with the application started, saw {log:#?}"
    );
    let stops =
        std::fs::read_to_string(n1.outside_path("/run/halo/stop_prim.log")).unwrap_or_default();
    assert!(
        stops.contains(&format!("pid={writer}")),
        "expected stop_prim to stop pid {writer}, its log reads {stops:?}"
    );

    // Every record the writer was told is durable is on the new primary.
    let acked = acks_of("n1");
    assert_eq!(
        acked, acked_while_dead,
        "no fsync may return after the daemon died"
    );
    let records = numbers(
        &std::fs::read_to_string(lab.host("n2").outside_path(format!("{DIR}/records-n1")))
            .unwrap_or_default(),
    );
    let lost: Vec<u64> = acked.difference(&records).copied().collect();
    assert!(
        lost.is_empty(),
        "{} records acknowledged on n1; {} are not on the new primary n2 (first: {:?})",
        acked.len(),
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // The writer n2 started when it took over would keep the trees moving.
    lab.host("n2")
        .sh(&format!("kill -KILL $(cat {PID})"))
        .unwrap();
    common::wait_identical(&lab, Duration::from_secs(30));
}
