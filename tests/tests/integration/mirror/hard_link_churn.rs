//! Hard-linked files under churn (linked, written through one name,
//! unlinked through another, renamed) while the secondary's daemon is
//! killed and comes back: every name must end as one file on the secondary
//! too, with the primary's content. The chaos campaign found names of such
//! a file left on the secondary as a separate file with an older content,
//! which writes through the other names never reached: the primary linked
//! a name to another one that the secondary did not have yet (one the
//! resynchronisation walk had not reached, or whose change was still
//! queued), and the secondary dropped the name before the link failed.

use std::{process::Command, time::Duration};

use halo_tests::lab::{LabBuilder, Signal};

use super::common;

/// How long the churn runs before the secondary is killed, and after it
/// is SECOND again.
const BEFORE_KILL: Duration = Duration::from_secs(12);
const AFTER_REJOIN: Duration = Duration::from_secs(12);

/// Churns `DIR/links` with a seeded generator until SIGTERM (or 120 s):
/// mostly hard links, writes and appends through any name, unlinks and
/// renames, with creations and truncations now and then.
const CHURN_PY: &str = r#"
import os, random, signal, time, sys
root = "/var/lib/app/links"
rng = random.Random(int(sys.argv[1]))
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
end = time.time() + 120
def files():
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs]
    return out
def new_dir():
    d = os.path.join(root, "d%d" % rng.randrange(4))
    os.makedirs(d, exist_ok=True)
    return d
os.makedirs(root, exist_ok=True)
while not stop and time.time() < end:
    time.sleep(0.01)
    try:
        fs = files()
        op = rng.choice("cwwwaatrruuhhhh")
        if op == "c" or not fs:
            if len(fs) < 80:
                with open(os.path.join(new_dir(), "f%d" % rng.randrange(10**6)), "wb") as f:
                    f.write(os.urandom(rng.randrange(1, 65536)))
        elif op == "w":
            with open(rng.choice(fs), "r+b") as f:
                f.seek(rng.randrange(65536))
                f.write(os.urandom(rng.randrange(1, 8192)))
        elif op == "a":
            p = rng.choice(fs)
            if os.path.getsize(p) < 200000:
                with open(p, "ab") as f:
                    f.write(os.urandom(rng.randrange(1, 4096)))
        elif op == "t":
            os.truncate(rng.choice(fs), rng.randrange(4096))
        elif op == "r":
            os.rename(rng.choice(fs), os.path.join(new_dir(), "r%d" % rng.randrange(10**6)))
        elif op == "u":
            os.unlink(rng.choice(fs))
        elif op == "h":
            p = rng.choice(fs)
            os.link(p, os.path.join(new_dir(), "h%d" % rng.randrange(10**6)))
    except OSError:
        pass
sys.exit(0 if stop else 1)
"#;

#[test]
fn hard_linked_files_stay_one_file_on_a_secondary_killed_under_churn() {
    let lab = LabBuilder::new("mirrorhlchurn")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = common::start(&lab, "", "n1");
    let mut churn = lab
        .host("n1")
        .spawn(
            "churn",
            Command::new("/usr/bin/python3").args(["-c", CHURN_PY, "11"]),
        )
        .unwrap();
    std::thread::sleep(BEFORE_KILL);
    cluster.kill("n2").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    cluster.start("n2").unwrap();
    // The resynchronisation runs under the churn, which it serves first.
    common::wait_module(&cluster, "n2", "SECOND", Duration::from_secs(60));
    std::thread::sleep(AFTER_REJOIN);
    churn.signal(Signal::SIGTERM).unwrap();
    let status = churn.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "the churn exited {status}, expected 0 (stopped by SIGTERM)"
    );
    // The digest lists every name of each file: a name split off on n2 is
    // a difference even while its content still matches.
    common::wait_identical(&lab, Duration::from_secs(30));
}
