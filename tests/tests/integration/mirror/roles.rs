//! Planned role changes and split brain: `halo swap` hands the primary role
//! over without losing a write; with the arbiter witness a partial
//! partition never yields two serving nodes, and after the heal the newer
//! data wins and the other node resynchronises; a primary that served
//! ALONE and is then cut off entirely is not replaced by the stale node.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use halo_tests::{
    cluster::{halo_bin, module_in, Cluster, TEST_SECRET},
    lab::{Lab, LabBuilder, LabProcess},
};

use super::common::{self, wait_module, DIR, MODULE};

fn records(lab: &Lab, host: &str, file: &str) -> Vec<u64> {
    lab.host(host)
        .sh(&format!("cat {DIR}/{file} 2>/dev/null || true"))
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[test]
fn a_swap_hands_the_primary_role_over_without_losing_a_write() {
    let lab = LabBuilder::new("mirrorswap")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let cluster = common::start(&lab, "", "n1");
    // Only the primary's capture is attached: a secondary's system calls
    // pay nothing for it.
    common::wait_capture(&lab, "n1", true, Duration::from_secs(10));
    assert_eq!(common::capture_links(&lab, "n2"), 0, "n2 is SECOND");
    lab.host("n1")
        .sh(&format!(
            "for i in $(seq 0 1999); do echo $i >> {DIR}/journal; done"
        ))
        .unwrap();
    common::swap(&cluster, "n1");
    // `halo wait` (SafeKit's waitstate) returns once the new primary serves
    // (within the lab's run timeout, so that it says why if it does not)…
    let waited = cluster
        .cli("n2", &["wait", MODULE, "PRIM", "--timeout", "25s"])
        .unwrap();
    assert!(waited.status.success(), "halo wait: {waited:?}");
    // …and gives up with exit 1 and the reason on a state that does not come.
    let gave_up = cluster
        .cli("n2", &["wait", MODULE, "STOP", "--timeout", "500ms"])
        .unwrap();
    assert_eq!(gave_up.status.code(), Some(1), "{gave_up:?}");
    let said = String::from_utf8_lossy(&gave_up.stderr);
    assert!(said.contains("is PRIM (ready)"), "{said}");
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
    common::wait_capture(&lab, "n2", true, Duration::from_secs(10));
    common::wait_capture(&lab, "n1", false, Duration::from_secs(20));
    assert_eq!(
        records(&lab, "n2", "journal"),
        (0..2000).collect::<Vec<_>>()
    );

    // The new primary's writes reach the old one.
    lab.host("n2")
        .sh(&format!("echo 2000 >> {DIR}/journal"))
        .unwrap();
    common::wait_identical(&lab, Duration::from_secs(30));
    assert_eq!(records(&lab, "n1", "journal").len(), 2001);
}

/// Starts `halo witness` on host w and the mirror with the arbiter witness
/// and `extra` module settings (n1 primary), and waits until n1 holds the
/// lease (the witness grants nothing during its start-up quiet period).
pub(super) fn start_with_arbiter<'lab>(lab: &'lab Lab, extra: &str) -> (LabProcess, Cluster<'lab>) {
    let witness_at = format!("{}:4810", lab.host("w").ipv4());
    std::fs::create_dir_all(lab.host("w").outside_path("/etc/halo")).unwrap();
    let key = lab.host("w").outside_path("/etc/halo/cluster.key");
    std::fs::write(&key, TEST_SECRET).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let witness = lab
        .host("w")
        .spawn(
            "witness",
            Command::new(halo_bin()).args([
                "witness",
                "--listen",
                &witness_at,
                "--max-lease",
                "2s",
            ]),
        )
        .unwrap();
    let extra = format!(
        "{extra}\n[module.witness]\nkind = \"arbiter\"\naddress = \"{witness_at}\"\nlease = \"1s\"\n"
    );
    let cluster = common::start(lab, &extra, "n1");
    cluster
        .wait_status("n1", Duration::from_secs(15), "n1 to hold the lease", |s| {
            s.modules.iter().any(|m| {
                m.name == MODULE
                    && m.counters
                        .witness
                        .get("arbiter")
                        .and_then(|r| r.get("granted"))
                        .is_some_and(|n| *n > 0)
            })
        })
        .unwrap_or_else(|error| {
            let log: Vec<String> = cluster
                .module_log("n1", MODULE)
                .unwrap_or_default()
                .iter()
                .filter(|e| e.source == "witness")
                .map(|e| e.text.clone())
                .collect();
            panic!("{error:#}\nn1's witness log: {log:#?}")
        });
    (witness, cluster)
}

#[test]
fn with_the_arbiter_a_partial_partition_never_yields_two_serving_nodes() {
    let lab = LabBuilder::new("mirrorsplit")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let (_witness, cluster) = start_with_arbiter(&lab, "");

    // Heartbeats between the nodes are lost; both still reach the witness.
    lab.cut_pair("n1", "n2").unwrap();
    let serving = |c: &Cluster<'_>, node: &str| {
        c.status(node)
            .is_ok_and(|s| s.modules.iter().any(|m| m.name == MODULE && m.serving))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut samples = 0;
    while std::time::Instant::now() < deadline {
        let (a, b) = (serving(&cluster, "n1"), serving(&cluster, "n2"));
        assert!(!(a && b), "both nodes serve during the partition");
        samples += 1;
    }
    assert!(samples > 10, "too few samples ({samples})");
    let n1 = cluster.status("n1").unwrap();
    assert!(
        module_in(&n1, MODULE, "ALONE", "ready"),
        "the lease holder keeps serving: {n1:#?}"
    );
    lab.host("n1")
        .sh(&format!("echo written-alone > {DIR}/alone"))
        .unwrap();

    // After the heal, the node with the newer data stays primary and the
    // other resynchronises.
    lab.heal_pair("n1", "n2").unwrap();
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));
}

/// Lines of `file` on `host` (empty if missing).
fn lines(lab: &Lab, host: &str, file: &str) -> Vec<String> {
    lab.host(host)
        .sh(&format!("cat {DIR}/{file} 2>/dev/null || true"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_primary_cut_off_after_serving_alone_keeps_its_acknowledged_writes() {
    let lab = LabBuilder::new("mirrorstale")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let (_witness, mut cluster) = start_with_arbiter(&lab, "");

    // n2 goes away (its daemon dies), so n1 alone asks for the lease: it
    // serves ALONE on a new generation and acknowledges durable writes
    // only it has. (With both daemons up, either may win the lease.)
    cluster.kill("n2").unwrap();
    wait_module(&cluster, "n1", "ALONE", Duration::from_secs(15));
    let acked = common::acknowledged_records(&lab, "n1", "acked", 50);
    if !acked.status.success() {
        let log: Vec<String> = cluster
            .module_log("n1", MODULE)
            .unwrap_or_default()
            .iter()
            .map(|e| format!("{} {}", e.source, e.text))
            .collect();
        panic!(
            "the durable writes on n1 ALONE must be acknowledged: {acked:?}\nn1's events: {log:#?}\n\
             n1's daemon: {}\nwitness: {}",
            cluster.log("n1").unwrap_or_default(),
            _witness.log().unwrap_or_default()
        );
    }
    let acked: Vec<String> = String::from_utf8_lossy(&acked.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(acked.len(), 50, "acknowledged writes on n1: {acked:?}");

    // n1 is cut off entirely: its lease runs out and it stops. n2 comes
    // back with the older generation: the witness must refuse it, and it
    // must not serve.
    lab.cut("n1").unwrap();
    wait_module(&cluster, "n1", "WAIT", Duration::from_secs(15));
    cluster.start("n2").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        let n2 = cluster.status("n2").unwrap();
        assert!(
            !n2.modules.iter().any(|m| m.name == MODULE && m.serving),
            "n2, with older data, serves after n1 was cut off: {n2:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log: Vec<String> = cluster
        .module_log("n2", MODULE)
        .unwrap_or_default()
        .iter()
        .map(|e| e.text.clone())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.contains("newer data") || l.contains("stale")),
        "n2 should say that its data is stale, its log: {log:#?}"
    );

    // After the heal n1's newer generation serves again, and n2 gets every
    // acknowledged record.
    lab.heal("n1").unwrap();
    wait_module(&cluster, "n1", "PRIM", Duration::from_secs(30));
    wait_module(&cluster, "n2", "SECOND", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));
    assert_eq!(
        lines(&lab, "n2", "acked"),
        acked,
        "every acknowledged record must be on the new secondary"
    );
}

/// Polls both nodes' `ready.txt` from the witness host every 20 ms and
/// prints one line per sample: n1's HTTP status and n2's (`-` when no
/// answer came within 200 ms, as from a frozen daemon).
pub(super) const READY_PROBE: &str = r#"
import sys, time, urllib.request, urllib.error
def get(host):
    url = "http://%s:%s/var/modules/db/ready.txt" % (host, sys.argv[1])
    try:
        return str(urllib.request.urlopen(url, timeout=0.2).status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except Exception:
        return "-"
while True:
    print(" ".join(get(h) for h in sys.argv[2:]), flush=True)
    time.sleep(0.02)
"#;

/// Starts [`READY_PROBE`] on the witness host and waits for its first
/// sample of n1 serving and n2 not.
pub(super) fn spawn_ready_probe(lab: &Lab) -> LabProcess {
    let probe = lab
        .host("w")
        .spawn(
            "probe",
            Command::new("/usr/bin/python3").args([
                "-c",
                READY_PROBE,
                &halo_tests::cluster::API_PORT.to_string(),
                &lab.host("n1").ipv4().to_string(),
                &lab.host("n2").ipv4().to_string(),
            ]),
        )
        .unwrap();
    halo_tests::lab::wait_until(Duration::from_secs(10), "the probe's first samples", || {
        Ok(probe.log()?.lines().any(|l| l == "200 404"))
    })
    .unwrap();
    probe
}

#[test]
fn a_primary_frozen_past_its_lease_never_serves_beside_the_node_that_took_over() {
    let lab = LabBuilder::new("mirrorfreeze")
        .hosts(&["n1", "n2", "w"])
        .build()
        .unwrap();
    let (_witness, mut cluster) = start_with_arbiter(&lab, "");
    let probe = spawn_ready_probe(&lab);

    // n1's daemon stops (a paused VM, SIGSTOP) for longer than its lease:
    // n2 gets the lease, serves alone and acknowledges durable writes.
    cluster
        .daemon("n1")
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(15));
    let acked = common::acknowledged_records(&lab, "n2", "acked", 50);
    assert!(acked.status.success(), "n2's durable writes: {acked:?}");
    let acked: Vec<String> = String::from_utf8_lossy(&acked.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(acked.len(), 50);

    // n1 wakes with a lease long run out and a replication that broke
    // meanwhile: it must stop serving at once and follow n2, whose
    // acknowledged writes stay.
    cluster
        .daemon("n1")
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGCONT)
        .unwrap();
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(30));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(30));
    assert_eq!(
        lines(&lab, "n1", "acked"),
        acked,
        "n2's acknowledged records must survive n1's return"
    );
    let samples = probe.log().unwrap();
    let both: Vec<&str> = samples.lines().filter(|l| *l == "200 200").collect();
    assert!(
        samples.lines().any(|l| l.starts_with('-')) && samples.lines().count() > 10,
        "too few samples of ready.txt: {samples}"
    );
    assert!(
        both.is_empty(),
        "both nodes answered ready.txt 200 in {} of {} samples",
        both.len(),
        samples.lines().count()
    );
    let events: Vec<String> = cluster
        .module_log("n1", MODULE)
        .unwrap()
        .iter()
        .map(|e| e.text.clone())
        .collect();
    assert!(
        events.iter().any(|e| e.contains("paused")),
        "n1 should say it was paused: {events:#?}"
    );
}
