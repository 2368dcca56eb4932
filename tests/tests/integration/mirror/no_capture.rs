//! A node whose kernel offers no BTF cannot load the write capture (its
//! programs read kernel structs at offsets found there): the daemon runs on,
//! says so wherever an administrator looks (the API's state, `halo status`,
//! `/metrics`), and still replicates, through inotify and checksums.

use std::time::Duration;

use halo_tests::lab::LabBuilder;

use super::common::{self, DIR, MODULE};
use crate::daemon::api::http;

#[test]
fn without_the_write_capture_a_mirror_says_so_everywhere_and_still_replicates() {
    // Each host sees an empty /sys/kernel/btf: no vmlinux to read offsets from.
    let lab = LabBuilder::new("mirrornobtf")
        .hosts(&["n1", "n2"])
        .private_path("/sys/kernel/btf")
        .build()
        .unwrap();
    let cluster = common::start(&lab, "", "n1");
    for node in ["n1", "n2"] {
        let status = cluster.status(node).unwrap();
        let module = status
            .modules
            .iter()
            .find(|m| m.name == MODULE)
            .expect("the mirror module");
        let error = module.capture_error.as_deref().unwrap_or_else(|| {
            panic!("{node}: the capture cannot load without BTF, yet no capture_error: {module:?}")
        });
        assert!(error.contains("/sys/kernel/btf/vmlinux"), "{node}: {error}");
    }
    let shown = cluster.cli("n1", &["status"]).unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success()
            && text.contains("WARNING: db: the write capture did not load")
            && text.contains("durable writes are not held"),
        "{shown:?}"
    );
    let metrics = http(lab.host("n1"), "GET", "/metrics", None, None);
    assert!(
        metrics
            .body
            .contains("halo_mirror_capture_up{module=\"db\"} 0\n"),
        "{}",
        metrics.body
    );
    lab.host("n1")
        .sh(&format!(
            "mkdir -p {DIR}/late && head -c 300000 /dev/urandom > {DIR}/late/file && \\
             echo tail >> {DIR}/late/file"
        ))
        .unwrap();
    common::wait_identical(&lab, Duration::from_secs(30));
}
