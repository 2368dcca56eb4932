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
//! - Stores through a shared mapping reach no tracepoint and make no
//!   inotify event before the file is closed: an `msync(MS_SYNC)` of
//!   them used to be released with none of them on the secondary. The
//!   daemon now reads the caller's mappings while it is held and ships
//!   the range the msync names, for a file it knew and for one no event
//!   had named (copied at the pair's first resync, never written since);
//!   a range over 8 MiB makes the file compared by checksums instead.
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
/// `pid` as soon as the fsync returns. `mmap`: maps an existing file of
/// at least `size` bytes shared, stores `size` random bytes at its start,
/// msyncs them (`flush` is `msync(MS_SYNC)`), and stops the daemon as soon
/// as the msync returns, the file still mapped and open.
const WRITER: &str = r#"
import mmap, os, signal, sys
mode, path, daemon, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = os.urandom(size)
if mode == "mmap":
    fd = os.open(path, os.O_RDWR)
    mapped = mmap.mmap(fd, size)
    mapped[0:size] = data
    mapped.flush()
    os.kill(daemon, signal.SIGSTOP)
    mapped.close()
    os.close(fd)
    sys.exit(0)
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
    sized_round(lab, cluster, mode, name, SIZE);
}

/// [`fsync_round`] with `size` bytes.
fn sized_round(lab: &Lab, cluster: &mut Cluster<'_>, mode: &str, name: &str, size: usize) {
    let pid = cluster.daemon("n1").unwrap().pid();
    let _resume = Resume(cluster);
    lab.host("n1")
        .sh(&format!(
            "/usr/bin/python3 /etc/halo/fsync_writer.py {mode} {name} {pid} {size}"
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
    start_with(lab, "true")
}

/// [`start`], after running `before` on n1 once the replicated directory
/// exists (before either daemon starts).
fn start_with<'lab>(lab: &'lab Lab, before: &str) -> Cluster<'lab> {
    let timing = Timing {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    };
    let mut cluster = Cluster::configure(lab, &["n1", "n2"], 1, timing, &mirror_toml("")).unwrap();
    lab.host("n1")
        .sh(&format!("mkdir -p {DIR} && {before}"))
        .unwrap();
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

#[test]
fn an_msync_of_mapped_stores_returns_once_the_secondary_holds_them() {
    let lab = LabBuilder::new("mirrormsync")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    // A file only the first resync copies: no event ever names it.
    let seeded = format!("{DIR}/seeded.bin");
    let mut cluster = start_with(&lab, &format!("head -c {SIZE} /dev/urandom > {seeded}"));
    for round in 0..ROUNDS {
        fsync_round(&lab, &mut cluster, "mmap", &seeded);
        let name = format!("{DIR}/mapped{round}.bin");
        fsync_round(&lab, &mut cluster, "new", &name);
        fsync_round(&lab, &mut cluster, "mmap", &name);
    }
    // An msync of more than 8 MiB: the file is compared by checksums
    // rather than its range shipped, and the msync waits for the blocks.
    let big = format!("{DIR}/big.bin");
    sized_round(&lab, &mut cluster, "new", &big, 16 * SIZE);
    for _ in 0..2 {
        sized_round(&lab, &mut cluster, "mmap", &big, 16 * SIZE);
    }
    roles_unchanged(&cluster);
}
