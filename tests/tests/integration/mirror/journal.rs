//! The dirty-range journal: after an absence, a resynchronisation sends
//! the ranges written meanwhile, not the 64 KiB blocks around them; after
//! a crash of the serving daemon, the trees still end identical.

use std::time::{Duration, SystemTime};

use halo_tests::{
    cluster::Cluster,
    lab::{Lab, LabBuilder},
};

use super::common::{self, wait_module, DIR, MODULE};

/// Bytes a resynchronisation may send beyond 1.2 × the changed bytes:
/// directory listings, per-file size and metadata, message framing and
/// the checksums of files the journals cannot vouch for.
const FIXED_OVERHEAD: f64 = 256.0 * 1024.0;

/// `count` writes of 100 to 4000 random bytes at random offsets of the
/// given files (seeded); prints the bytes changed (the union of the
/// written ranges).
const SCATTER: &str = r#"
import os, random, sys
rng = random.Random(int(sys.argv[1]))
count = int(sys.argv[2])
files = sys.argv[3:]
ranges = {f: [] for f in files}
for _ in range(count):
    f = rng.choice(files)
    size = os.path.getsize(f)
    n = rng.randint(100, 4000)
    off = rng.randrange(0, size - n)
    fd = os.open(f, os.O_WRONLY)
    os.pwrite(fd, os.urandom(n), off)
    os.close(fd)
    ranges[f].append((off, off + n))
changed = 0
for rs in ranges.values():
    rs.sort()
    end = -1
    for s, e in rs:
        if s > end:
            changed += e - s
        elif e > end:
            changed += e - end
        end = max(end, e)
print(changed)
"#;

const FILES: [&str; 3] = ["a.db", "b.db", "c.db"];

fn make_files(lab: &Lab, host: &str) {
    for name in FILES {
        lab.host(host)
            .sh(&format!("head -c 4000000 /dev/urandom > {DIR}/{name}"))
            .unwrap();
    }
}

/// Scattered writes on `host`; the bytes they changed.
fn scatter(lab: &Lab, host: &str, seed: u64, count: u32) -> u64 {
    let files: Vec<String> = FILES.iter().map(|f| format!("{DIR}/{f}")).collect();
    let out = lab
        .host(host)
        .run_timeout(
            std::process::Command::new("/usr/bin/python3")
                .args(["-c", SCATTER, &seed.to_string(), &count.to_string()])
                .args(&files),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(out.status.success(), "scattered writes on {host}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The bytes `node` reported sending for the last resynchronisation.
fn resync_bytes(cluster: &Cluster<'_>, node: &str) -> u64 {
    cluster
        .module_log(node, MODULE)
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| {
            e.text
                .strip_prefix("the secondary is in sync with generation ")?
                .split(": ")
                .nth(1)?
                .strip_suffix(" bytes sent")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{node} logs no resynchronisation's bytes"))
}

/// `host`'s "secondary joined" log lines: how each resync was planned.
fn joined_lines(lab: &Lab, host: &str) -> String {
    let log = std::fs::read_to_string(lab.dir().join(host).join("halo.log")).unwrap_or_default();
    halo_tests::cluster::strip_ansi(&log)
        .lines()
        .filter(|l| l.contains("secondary joined"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_old_primary_returns_and_receives_only_the_scattered_ranges_written_meanwhile() {
    let lab = LabBuilder::new("mirrorjrnl")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    make_files(&lab, "n1");
    let written = SystemTime::now();
    let mut cluster = common::start(&lab, "", "n1");
    common::wait_identical(&lab, Duration::from_secs(60));
    // Neither the old primary's journal nor the secondary taking over may
    // name the files the copy sent.
    common::wait_journal_settled(&lab, "n1", written);
    common::wait_copy_settled(&lab, "n2");

    lab.kill_host("n1").unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(10));
    let changed = scatter(&lab, "n2", 7, 500);

    cluster.start("n1").unwrap();
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(60));
    let sent = resync_bytes(&cluster, "n2");
    eprintln!("resync after {changed} bytes changed in 500 scattered writes: {sent} bytes sent");
    assert!(
        sent as f64 <= 1.2 * changed as f64 + FIXED_OVERHEAD,
        "the resync sent {sent} bytes for {changed} changed (limit 1.2 × changed + {FIXED_OVERHEAD}); \
         n2's plan: {}",
        joined_lines(&lab, "n2")
    );
}

#[test]
fn a_primary_daemon_killed_while_alone_still_resyncs_its_returning_peer_to_identical_trees() {
    let lab = LabBuilder::new("mirrorjcrash")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    make_files(&lab, "n1");
    let written = SystemTime::now();
    let mut cluster = common::start(&lab, "", "n1");
    common::wait_identical(&lab, Duration::from_secs(60));
    common::wait_journal_settled(&lab, "n1", written);

    // The secondary goes away; the primary serves alone and writes.
    cluster.kill("n2").unwrap();
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(10));
    let mut changed = scatter(&lab, "n1", 11, 200);
    // Its daemon dies right after more writes (some not yet journaled),
    // and writes go on while no daemon runs.
    changed += scatter(&lab, "n1", 12, 50);
    cluster.kill("n1").unwrap();
    changed += scatter(&lab, "n1", 13, 50);
    lab.host("n1")
        .sh(&format!("echo written-without-daemon > {DIR}/new.txt"))
        .unwrap();
    cluster.start("n1").unwrap();
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(20));
    changed += scatter(&lab, "n1", 14, 100);

    cluster.start("n2").unwrap();
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(60));
    let sent = resync_bytes(&cluster, "n1");
    eprintln!("resync after a crash, {changed} bytes changed: {sent} bytes sent");
}

#[test]
fn a_file_written_through_a_name_removed_while_its_peer_was_away_reaches_it_whole() {
    let lab = LabBuilder::new("mirrorjlink")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    // One file with two names, replicated before the absence.
    lab.host("n1")
        .sh(&format!(
            "head -c 1000000 /dev/urandom > {DIR}/first.db && ln {DIR}/first.db {DIR}/second.db"
        ))
        .unwrap();
    let written = SystemTime::now();
    let mut cluster = common::start(&lab, "", "n1");
    common::wait_identical(&lab, Duration::from_secs(60));
    common::wait_journal_settled(&lab, "n1", written);

    cluster.kill("n2").unwrap();
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    // Written through both names, in two tracker batches (each journaled
    // before the next change); then the first name goes. The journal holds
    // each write under the name it came through: the chaos campaign found
    // the removed name's blocks missing on the returning secondary, which
    // took the other name's ranges alone.
    common::change_journaled(
        &lab,
        "n1",
        &format!("dd if=/dev/urandom of={DIR}/first.db bs=4096 count=2 conv=notrunc status=none"),
    );
    common::change_journaled(
        &lab,
        "n1",
        &format!(
            "dd if=/dev/urandom of={DIR}/second.db bs=4096 seek=100 count=1 conv=notrunc status=none"
        ),
    );
    lab.host("n1").sh(&format!("rm {DIR}/first.db")).unwrap();

    cluster.start("n2").unwrap();
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(60));
    common::wait_identical(&lab, Duration::from_secs(30));
}
