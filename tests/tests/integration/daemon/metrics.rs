//! `/metrics` of real daemons: `promtool check metrics` accepts it, and its
//! values follow the module's state, its scripts and its peer.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use halo_tests::{
    cluster::{module_in, peer_up, Cluster, Timing, TEST_TOKEN},
    lab::{wait_until, Host, LabBuilder},
};

use super::api::{farm_with_scripts, http};

/// The exposition of `host`'s daemon, after checking it is served as such.
fn scrape(host: &Host) -> String {
    let answer = http(host, "GET", "/metrics", None, None);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "{answer:?}"
    );
    answer.body
}

/// The value of the sample written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{series}: bad value {v:?}"))
        })
}

fn expect(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text` and fails on any problem it finds.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian package prometheus, `cargo xtask setup` installs it): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems ({}):\n{report}\nin:\n{text}",
        out.status
    );
}

const UP: &str = r#"halo_module_state{module="web",kind="farm",state="UP"}"#;
const STOP: &str = r#"halo_module_state{module="web",kind="farm",state="STOP"}"#;
const TO_STOP: &str = r#"halo_module_transitions_total{module="web",from="UP",to="STOP"}"#;
const TO_UP: &str = r#"halo_module_transitions_total{module="web",from="WAIT",to="UP"}"#;
const STOP_RUNS: &str = r#"halo_script_duration_seconds_count{module="web",script="stop_both"}"#;
const PEER_B: &str = r#"halo_peer_up{peer="b"}"#;

#[test]
fn metrics_pass_promtool_and_move_with_the_module_state() {
    let lab = LabBuilder::new("metrics")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let modules = farm_with_scripts(&lab);
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &modules).unwrap();
    cluster.start_all().unwrap();
    let wait = Duration::from_secs(15);
    cluster
        .wait_status("a", wait, "web UP on a, b up", |s| {
            module_in(s, "web", "UP", "ready") && peer_up(s, "b")
        })
        .unwrap();
    let a = lab.host("a");
    // The heartbeat and farm counters are published once a second.
    std::thread::sleep(Duration::from_millis(1500));

    let before = scrape(a);
    promtool_check(&before);
    assert_eq!(expect(&before, UP), 1.0);
    assert_eq!(expect(&before, STOP), 0.0);
    assert!(expect(&before, TO_UP) >= 1.0);
    assert_eq!(expect(&before, PEER_B), 1.0);
    assert!(
        expect(
            &before,
            r#"halo_heartbeat_frames_accepted_total{peer="b",network="net0"}"#
        ) > 0.0
    );
    assert!(expect(&before, r#"halo_farm_buckets{module="web",node="a"}"#) > 0.0);
    assert!(
        before.lines().any(|l| l
            .starts_with(r#"halo_checker_results_total{module="web",checker="interface:"#)
            && l.contains(r#"result="passed"} "#)
            && !l.ends_with(" 0")),
        "the interface checker passed at least once:\n{before}"
    );
    assert!(
        expect(
            &before,
            r#"halo_script_duration_seconds_count{module="web",script="start_both"}"#
        ) >= 1.0
    );
    assert!(
        !before.contains("halo_replication_"),
        "no replication series without a mirror module"
    );

    let answer = http(
        a,
        "POST",
        "/api/v1/modules/web/stop",
        Some(TEST_TOKEN),
        None,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    cluster
        .wait_status("a", wait, "web STOP", |s| {
            module_in(s, "web", "STOP", "ready")
        })
        .unwrap();
    let after = scrape(a);
    promtool_check(&after);
    assert_eq!(expect(&after, UP), 0.0, "UP after the stop");
    assert_eq!(expect(&after, STOP), 1.0, "STOP after the stop");
    assert!(expect(&after, TO_STOP) >= 1.0);
    assert!(expect(&after, STOP_RUNS) >= value(&before, STOP_RUNS).unwrap_or(0.0) + 1.0);

    // A dead peer shows as such.
    cluster.kill("b").unwrap();
    wait_until(wait, "halo_peer_up of b at 0", || {
        Ok(value(&scrape(a), PEER_B) == Some(0.0))
    })
    .unwrap();
    promtool_check(&scrape(a));
}
