//! An fsync right after a file was created or resized must not return
//! before the secondary holds the file's bytes.
//!
//! - A file created in the tracker's batch travels whole. Above the
//!   small-file size it used to be compared by checksums, whose blocks
//!   follow the secondary's answer, while the durability call's barrier
//!   went at once: the writer went on with its file not yet on the
//!   secondary, and a crash then lost it.
//! - A file resized in the batch is still compared by checksums: the
//!   release now waits until the blocks it asks for are sent.
//!
//! To see what the secondary holds when the fsync returns, the writer
//! stops the primary's daemon (SIGSTOP) at once, before it can send more;
//! the test compares both copies, then lets the daemon go on. The heartbeat
//! timeout is long, so that the pause changes no role.

use std::time::Duration;

use halo_tests::{
    cluster::{install_script, Cluster, Timing},
    lab::{Lab, LabBuilder, Signal},
};

use super::common::{mirror_toml, wait_module, DIR};

/// `new`: writes `size` random bytes to a new file with one write(2);
/// `resize`: truncates an existing file to `size` + 4 KiB and writes
/// `size` random bytes at its start. Then fsyncs it, and stops the daemon
/// `pid` as soon as the fsync returns.
const WRITER: &str = r#"
import os, signal, sys
mode, path, daemon, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = os.urandom(size)
if mode == "new":
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
else:
    fd = os.open(path, os.O_WRONLY)
    os.ftruncate(fd, size + 4096)
assert os.pwrite(fd, data, 0) == size
os.fsync(fd)
os.kill(daemon, signal.SIGSTOP)
os.close(fd)
"#;

const ROUNDS: usize = 8;
/// Above 256 KiB, the size up to which the sender always ships a file whole
/// (smaller files never travelled as checksums).
const SIZE: usize = 1 << 20;

/// Continues the stopped daemon even when an assertion fails.
struct Resume<'c, 'lab>(&'c mut Cluster<'lab>);

impl Drop for Resume<'_, '_> {
    fn drop(&mut self) {
        if let Ok(daemon) = self.0.daemon("n1") {
            let _ = daemon.signal(Signal::SIGCONT);
        }
    }
}

/// Runs the writer in `mode` on n1's `name`; once it stopped n1's daemon,
/// asserts that n2 holds the same bytes, then lets the daemon go on.
fn fsync_round(lab: &Lab, cluster: &mut Cluster<'_>, mode: &str, name: &str) {
    let pid = cluster.daemon("n1").unwrap().pid();
    let _resume = Resume(cluster);
    lab.host("n1")
        .sh(&format!(
            "/usr/bin/python3 /etc/halo/fsync_writer.py {mode} {name} {pid} {SIZE}"
        ))
        .unwrap();
    let written = std::fs::read(lab.host("n1").outside_path(name)).unwrap();
    let replicated = std::fs::read(lab.host("n2").outside_path(name)).unwrap_or_default();
    let differing = written
        .chunks(4096)
        .zip(replicated.chunks(4096).chain(std::iter::repeat(&[][..])))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing == 0 && replicated.len() == written.len(),
        "{mode} {name}: when its fsync returned, n2 held {} of its {} bytes \
         ({differing} of its 4 KiB blocks differed)",
        replicated.len(),
        written.len()
    );
}

/// A 2-node mirror whose heartbeat timeout outlasts the rounds' pauses,
/// with the writer installed on n1.
fn start(lab: &Lab) -> Cluster<'_> {
    let timing = Timing {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    };
    let mut cluster = Cluster::configure(lab, &["n1", "n2"], 1, timing, &mirror_toml("")).unwrap();
    cluster.start_all().unwrap();
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(30));
    install_script(lab.host("n1"), "/etc/halo/fsync_writer.py", WRITER).unwrap();
    cluster
}

/// The pauses changed no role: still one primary and one secondary.
fn roles_unchanged(cluster: &Cluster<'_>) {
    wait_module(cluster, "n1", "PRIM", Duration::from_secs(10));
    wait_module(cluster, "n2", "SECOND", Duration::from_secs(10));
}

#[test]
fn an_fsync_after_creating_a_file_returns_once_the_secondary_holds_its_bytes() {
    let lab = LabBuilder::new("mirrorfsyncnew")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = start(&lab);
    for round in 0..ROUNDS {
        fsync_round(&lab, &mut cluster, "new", &format!("{DIR}/new{round}.bin"));
    }
    roles_unchanged(&cluster);
}

#[test]
fn an_fsync_after_resizing_a_file_returns_once_the_secondary_holds_its_bytes() {
    let lab = LabBuilder::new("mirrorfsyncsize")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = start(&lab);
    for round in 0..ROUNDS {
        let name = format!("{DIR}/sized{round}.bin");
        fsync_round(&lab, &mut cluster, "new", &name);
        fsync_round(&lab, &mut cluster, "resize", &name);
    }
    roles_unchanged(&cluster);
}
