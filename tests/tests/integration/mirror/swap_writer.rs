//! A planned switch-over while the application writes without pause: its
//! `stop_prim` stops it mid-stream, and the new primary must hold every
//! byte it wrote before it stopped. The capture and inotify deliver those
//! last writes to the tracker a little after they return; a handover that
//! drained the session without waiting for them started the new primary
//! without its last records (seen: 718 of 2,000 appends missing).

use std::time::Duration;

use halo_tests::lab::LabBuilder;

use super::common::{self, start_prim_script, stop_prim_script, wait_module, DIR};

const APP: &str = "/etc/halo/app";
/// Outside the replicated directory: how many records the writer wrote.
const WRITTEN: &str = "/run/halo/writer.count";
const PID: &str = "/run/halo/writer.pid";

/// Appends numbered lines, one write(2) each (about 20,000 a second: fast,
/// but not so fast that the capture's ring overflows), until SIGTERM; then
/// records how many it wrote (every write it started has returned by then).
const WRITER: &str = r#"
import os, signal, sys, time
path, count_file = sys.argv[1], sys.argv[2]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while not stop:
    os.write(fd, b"%d\n" % n)
    n += 1
    if n % 20 == 0:
        time.sleep(0.001)
with open(count_file + ".tmp", "w") as f:
    f.write(str(n))
os.rename(count_file + ".tmp", count_file)
"#;

/// Starts the writer afresh in its own session.
fn start_prim() -> String {
    start_prim_script(
        &format!("rm -f {WRITTEN}"),
        &format!("/usr/bin/python3 {APP}/app.py {DIR}/stream-$HALO_NODE {WRITTEN}"),
        PID,
    )
}

/// Stops the writer and waits until it has recorded its count.
fn stop_prim() -> String {
    stop_prim_script(PID, "TERM", &format!("[ -e {WRITTEN} ]"))
}

#[test]
fn a_swap_while_the_application_writes_hands_over_every_record_it_wrote() {
    let lab = LabBuilder::new("mirrorswapw")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let scripts = common::install_app(&lab, APP, WRITER, |_| start_prim(), &stop_prim());
    let cluster = common::start(&lab, &scripts, "n1");
    let n1 = lab.host("n1");
    halo_tests::lab::wait_until(
        Duration::from_secs(20),
        "n1's writer to write 20,000 records",
        || {
            let size = std::fs::metadata(n1.outside_path(format!("{DIR}/stream-n1")))
                .map_or(0, |m| m.len());
            Ok(size > 110_000)
        },
    )
    .unwrap();

    common::swap(&cluster, "n1");
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    let written: u64 = std::fs::read_to_string(n1.outside_path(WRITTEN))
        .expect("n1's writer recorded its count when stop_prim stopped it")
        .trim()
        .parse()
        .unwrap();
    // The new primary's copy of n1's stream: every record, in order.
    let text = lab.host("n2").sh(&format!("cat {DIR}/stream-n1")).unwrap();
    let held: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        held.len() as u64 == written && held.iter().copied().eq(0..written),
        "n1's writer wrote {written} records before the swap; n2 took over with {} (last {:?})",
        held.len(),
        held.last()
    );
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
}
