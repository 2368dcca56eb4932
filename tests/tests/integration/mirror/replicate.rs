//! Replication of a real tree: the initial copy, then a mixed workload on
//! the primary, checked entry by entry on the secondary.

use std::time::Duration;

use halo_tests::lab::LabBuilder;

use super::common::{self, DIR};

/// Files the primary holds before the module starts.
const INITIAL: &str = r#"
set -e
cd /var/lib/app
mkdir -p docs/deep/er empty
echo hello > docs/a.txt
head -c 5000000 /dev/urandom > big.bin
head -c 300000 /dev/urandom > docs/deep/er/mid.bin
ln -s docs/a.txt link
ln -s /etc/passwd outside-link
ln big.bin big.hard
echo nope > ignored.skip
chmod 640 docs/a.txt
chown 1234:5678 docs/deep
truncate -s 20000000 sparse.img
"#;

/// The workload: every kind of change the issue names.
const WORKLOAD: &str = r#"
import os, mmap, random
os.chdir("/var/lib/app")
random.seed(7)
with open("huge.bin", "wb") as f:                 # a 1 GiB file, streamed
    for i in range(1024):
        f.write(os.urandom(1 << 20))
with open("huge.bin", "r+b") as f:                # then overwritten here and there
    for _ in range(20):
        f.seek(random.randrange(0, (1 << 30) - 100000))
        f.write(os.urandom(random.randrange(1, 100000)))
with open("big.bin", "r+b") as f:                 # random overwrites
    for _ in range(50):
        f.seek(random.randrange(0, 5000000))
        f.write(os.urandom(random.randrange(1, 9000)))
with open("docs/a.txt", "a") as f:                # appends
    for i in range(100):
        f.write(f"line {i}\n")
with open("docs/deep/er/mid.bin", "r+b") as f:    # truncate
    f.truncate(1000)
with open("sparse.img", "r+b") as f:              # sparse write far out
    f.seek(15000000); f.write(b"sparse data")
os.makedirs("new/sub", exist_ok=True)             # mkdir, new files inside
for i in range(20):
    with open(f"new/sub/f{i}", "wb") as f:
        f.write(os.urandom(1000 * i))
os.rename("new/sub/f3", "docs/moved-f3")          # rename across directories
os.rename("docs/deep", "deep-moved")              # rename a directory
os.remove("new/sub/f4")                           # delete
os.mkdir("gone"); os.rmdir("gone")                # mkdir/rmdir
os.rmdir("empty")
os.symlink("new/sub/f5", "link2")                 # symlink
os.link("docs/a.txt", "docs/a-hard")              # hard link
os.chmod("new/sub/f6", 0o600)                     # chmod
os.chown("new/sub/f7", 4321, 8765)                # chown
with open("tmp.write", "wb") as f:                # write-then-rename
    f.write(b"atomic replace")
os.replace("tmp.write", "docs/replaced")
with open("mapped.bin", "wb") as f:               # mmap stores
    f.truncate(1 << 20)
with open("mapped.bin", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    for i in range(0, 1 << 20, 4096):
        m[i:i + 8] = b"mmapped!"
    m.flush(); m.close()
with open("also.skip", "w") as f:
    f.write("excluded")
"#;

#[test]
fn the_secondary_holds_an_identical_tree_after_the_initial_copy_and_a_mixed_workload() {
    let lab = LabBuilder::new("mirrorrep")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    lab.host("n1").sh(INITIAL).unwrap();
    let cluster = common::start(&lab, "", "n1");

    // The initial copy: everything but the excluded file.
    common::wait_identical(&lab, Duration::from_secs(60));
    let secondary = common::digest(&lab, "n2");
    assert!(secondary.contains_key("big.bin"), "{secondary:?}");
    assert!(
        !secondary.contains_key("ignored.skip"),
        "excluded files stay home"
    );
    assert_eq!(
        secondary["outside-link"][4], "/etc/passwd",
        "a symlink is copied as a link, never followed"
    );
    let n2_sparse = lab
        .host("n2")
        .sh(&format!("du -k {DIR}/sparse.img | cut -f1"))
        .unwrap();
    assert!(
        n2_sparse.trim().parse::<u64>().unwrap() < 1000,
        "a sparse file stays sparse on the secondary ({n2_sparse} KiB used)"
    );

    // The secondary's directory is read-only to applications.
    let refused = lab
        .host("n2")
        .sh(&format!("(echo x > {DIR}/intruder) 2>&1 || true"))
        .unwrap();
    assert!(
        refused.contains("Read-only"),
        "writing on the secondary: {refused}"
    );

    // A mixed workload on the primary reaches the secondary.
    let output = lab
        .host("n1")
        .run_timeout(
            std::process::Command::new("/usr/bin/python3").args(["-c", WORKLOAD]),
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(output.status.success(), "workload: {output:?}");
    common::wait_identical(&lab, Duration::from_secs(180));
    let secondary = common::digest(&lab, "n2");
    assert!(!secondary.contains_key("also.skip"));
    assert_eq!(secondary["huge.bin"][4], 1u64 << 30, "the 1 GiB file whole");
    assert!(secondary.contains_key("deep-moved/er/mid.bin"));
    assert!(!secondary.contains_key("docs/deep"));

    // Both daemons stop cleanly on SIGTERM (a secondary's session thread
    // once kept its daemon from exiting).
    let mut cluster = cluster;
    for node in ["n2", "n1"] {
        let daemon = cluster.daemon(node).unwrap();
        daemon.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = daemon.wait_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            status.success(),
            "{node}'s daemon after SIGTERM: {status:?}"
        );
    }
}
