//! Hard links under churn: a file written, appended to, truncated and
//! renamed through any of its names, while new names are linked to it,
//! ends identical on the secondary, names and content (the chaos campaign
//! found writes through a new name, and changes to a file whose other name
//! had been renamed, lost for good).

use std::{process::Command, time::Duration};

use halo_tests::lab::LabBuilder;

use super::common;

/// Churns `DIR/mixed` for 15 s with a seeded generator: operations drawn
/// from `argv[2]` (c create, w overwrite, a append, t truncate, r rename,
/// u unlink, h hard link).
const MIXED: &str = r#"
import os, random, time, sys
root = "/var/lib/app/mixed"
os.makedirs(root, exist_ok=True)
rng = random.Random(int(sys.argv[1]))
ops = sys.argv[2]
def files():
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs]
    return out
end = time.time() + 15
while time.time() < end:
    time.sleep(0.02)
    try:
        fs = files()
        op = rng.choice(ops)
        if op == "c" or not fs:
            d = os.path.join(root, "d%d" % rng.randrange(4))
            os.makedirs(d, exist_ok=True)
            if len(fs) < 60:
                with open(os.path.join(d, "f%d" % rng.randrange(10**6)), "wb") as f:
                    f.write(os.urandom(rng.randrange(1, 65536)))
        elif op == "w":
            p = rng.choice(fs)
            if not os.path.islink(p):
                with open(p, "r+b") as f:
                    f.seek(rng.randrange(65536))
                    f.write(os.urandom(rng.randrange(1, 8192)))
        elif op == "a":
            p = rng.choice(fs)
            if not os.path.islink(p) and os.path.getsize(p) < 200000:
                with open(p, "ab") as f:
                    f.write(os.urandom(rng.randrange(1, 4096)))
        elif op == "t":
            p = rng.choice(fs)
            if not os.path.islink(p):
                os.truncate(p, rng.randrange(4096))
        elif op == "r":
            p = rng.choice(fs)
            d = os.path.join(root, "d%d" % rng.randrange(4))
            os.makedirs(d, exist_ok=True)
            os.rename(p, os.path.join(d, "r%d" % rng.randrange(10**6)))
        elif op == "u":
            os.unlink(rng.choice(fs))
        elif op == "h":
            p = rng.choice(fs)
            if not os.path.islink(p):
                os.link(p, p + ".hl%d" % rng.randrange(1000))
    except OSError:
        pass
"#;

#[test]
fn writes_through_any_name_of_a_hard_linked_file_reach_the_secondary() {
    let lab = LabBuilder::new("mirrorlinks")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let _cluster = common::start(&lab, "", "n1");
    let churn = lab
        .host("n1")
        .run_timeout(
            Command::new("/usr/bin/python3").args(["-c", MIXED, "3", "cwatruh"]),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(churn.status.success(), "the churn failed: {churn:?}");
    common::wait_identical(&lab, Duration::from_secs(30));
}
