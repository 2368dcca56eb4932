//! `/metrics`: the node's state and counters in the Prometheus text
//! exposition format (0.0.4), written by hand: a few dozen families do not
//! need a client library. Names start with `halo_`, values are in base
//! units (seconds, bytes), counters end in `_total`.
//!
//! Everything comes from what the daemon already publishes to the API (the
//! node status and the farm views), so the metrics and the JSON API never
//! disagree.

use std::{collections::HashMap, fmt::Write as _};

use super::NodeStatus;
use crate::farm::FarmView;

/// The exposition's media type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a module can be in: one `halo_module_state` series each.
const STATES: [&str; 6] = ["STOP", "WAIT", "UP", "ALONE", "PRIM", "SECOND"];

/// One metric family: its samples are written together, after its
/// `# HELP` and `# TYPE` lines, and a family without samples is left out.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: String::new(),
        }
    }

    /// Adds a sample of the family (`suffix` is `_sum`/`_count` for summaries).
    fn sample_with(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        let value: f64 = value.into();
        self.samples.push_str(self.name);
        self.samples.push_str(suffix);
        if !labels.is_empty() {
            self.samples.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.samples.push(',');
                }
                let _ = write!(self.samples, "{key}=\"{}\"", escape(val));
            }
            self.samples.push('}');
        }
        let _ = writeln!(self.samples, " {}", format_value(value));
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.sample_with("", labels, value);
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.samples);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Counters are `u64`; the exposition's numbers are floats.
fn n(v: u64) -> f64 {
    v as f64
}

/// The whole exposition of this node.
pub fn render(status: &NodeStatus, farms: &HashMap<String, FarmView>) -> String {
    let mut families = Vec::new();

    let mut info = Family::new(
        "halo_node_info",
        "gauge",
        "This node and its cluster (always 1).",
    );
    info.sample(&[("node", &status.node), ("cluster", &status.cluster)], 1.0);
    families.push(info);
    let mut epoch = Family::new(
        "halo_node_boot_epoch",
        "gauge",
        "This daemon's boot epoch (grows by one at every start).",
    );
    epoch.sample(&[], n(status.epoch));
    families.push(epoch);

    let mut peer_up = Family::new(
        "halo_peer_up",
        "gauge",
        "1 when the peer is heard on at least one heartbeat network.",
    );
    let mut network_up = Family::new(
        "halo_peer_network_up",
        "gauge",
        "1 when the peer is heard on the heartbeat network.",
    );
    for peer in &status.peers {
        peer_up.sample(&[("peer", &peer.name)], flag(peer.up));
        for net in &peer.networks {
            network_up.sample(
                &[("peer", &peer.name), ("network", &net.name)],
                flag(net.up),
            );
        }
    }
    families.extend([peer_up, network_up]);

    let hb = &status.heartbeat;
    let mut sent = Family::new(
        "halo_heartbeat_frames_sent_total",
        "counter",
        "Heartbeat frames sent, all peers and networks.",
    );
    sent.sample(&[], n(hb.sent));
    let mut send_errors = Family::new(
        "halo_heartbeat_send_errors_total",
        "counter",
        "Heartbeat frames that could not be sent.",
    );
    send_errors.sample(&[], n(hb.send_errors));
    let mut received = Family::new(
        "halo_heartbeat_frames_received_total",
        "counter",
        "Datagrams received on the heartbeat sockets, rejected ones included.",
    );
    received.sample(&[], n(hb.received));
    let mut rejected = Family::new(
        "halo_heartbeat_frames_rejected_total",
        "counter",
        "Heartbeat datagrams dropped, by reason.",
    );
    for (reason, count) in &hb.rejected {
        rejected.sample(&[("reason", reason)], n(*count));
    }
    let mut accepted = Family::new(
        "halo_heartbeat_frames_accepted_total",
        "counter",
        "Authenticated, fresh heartbeat frames, by peer and network.",
    );
    let mut lost = Family::new(
        "halo_heartbeat_frames_lost_total",
        "counter",
        "Heartbeat frames a peer sent that never arrived (sequence gaps), by peer and network.",
    );
    let mut accepted_secret = Family::new(
        "halo_heartbeat_frames_accepted_secret_total",
        "counter",
        "Heartbeat frames signed with this node's accepted secret (cluster.accept_secret_file), not its signing one, by peer and network: during a rotation, 0 growth means the peer signs with the same secret as this node.",
    );
    for link in &hb.links {
        let labels = [
            ("peer", link.peer.as_str()),
            ("network", link.network.as_str()),
        ];
        accepted.sample(&labels, n(link.accepted));
        lost.sample(&labels, n(link.lost));
        accepted_secret.sample(&labels, n(link.accepted_secret));
    }
    let mut late = Family::new(
        "halo_heartbeat_late_ticks_total",
        "counter",
        "Detector ticks this node ran late (starved of CPU or paused).",
    );
    late.sample(&[], n(hb.late_ticks));
    families.extend([
        sent,
        send_errors,
        received,
        rejected,
        accepted,
        lost,
        accepted_secret,
        late,
    ]);

    let mut state = Family::new(
        "halo_module_state",
        "gauge",
        "1 for the module's current state on this node, 0 for the others.",
    );
    let mut transient = Family::new(
        "halo_module_transient",
        "gauge",
        "1 while the module is between two states (scripts running).",
    );
    let mut serving = Family::new(
        "halo_module_serving",
        "gauge",
        "1 when this node serves the module (ready.txt answers 200).",
    );
    let mut checkers_on = Family::new(
        "halo_module_checkers_enabled",
        "gauge",
        "1 while the module's checkers run.",
    );
    let mut failover_on = Family::new(
        "halo_module_failover_enabled",
        "gauge",
        "1 while automatic failover is on.",
    );
    let mut capture_up = Family::new(
        "halo_mirror_capture_up",
        "gauge",
        "1 while the kernel write capture runs for the mirror module; 0 if it did not load \
         (replication through inotify and checksums only; sync = \"fsync\" cannot hold \
         durable writes).",
    );
    let mut transitions = Family::new(
        "halo_module_transitions_total",
        "counter",
        "State changes of the module on this node.",
    );
    let mut checks = Family::new(
        "halo_checker_results_total",
        "counter",
        "Checker results, by checker and result (passed or failed).",
    );
    let mut checker_up = Family::new(
        "halo_checker_up",
        "gauge",
        "1 when the checker's latest check passed.",
    );
    let mut scripts = Family::new(
        "halo_script_duration_seconds",
        "summary",
        "Time spent in the module's scripts.",
    );
    let mut script_failures = Family::new(
        "halo_script_failures_total",
        "counter",
        "Script runs that failed, timed out or could not start.",
    );
    let mut witness = Family::new(
        "halo_witness_results_total",
        "counter",
        "Answers of the module's witnesses, by witness and result.",
    );
    let mut done_bytes = Family::new(
        "halo_replication_done_bytes",
        "gauge",
        "Bytes of the current copy to the peer already there.",
    );
    let mut target_bytes = Family::new(
        "halo_replication_target_bytes",
        "gauge",
        "Bytes the current copy to the peer has to send in all.",
    );
    let mut done_files = Family::new(
        "halo_replication_done_files",
        "gauge",
        "Files of the current copy to the peer already there.",
    );
    let mut target_files = Family::new(
        "halo_replication_target_files",
        "gauge",
        "Files the current copy to the peer has to send in all.",
    );
    let mut resync = Family::new(
        "halo_replication_progress_ratio",
        "gauge",
        "Completion of the current copy to the peer, 0 to 1.",
    );
    let mut eta = Family::new(
        "halo_replication_eta_seconds",
        "gauge",
        "Estimated time until the current copy is done.",
    );
    let mut lag = Family::new(
        "halo_replication_lag_seconds",
        "gauge",
        "Age of the oldest write the peer has not acknowledged.",
    );
    let mut backlog = Family::new(
        "halo_replication_backlog_bytes",
        "gauge",
        "Bytes written here that the peer has not acknowledged.",
    );
    for m in &status.modules {
        let module = m.name.as_str();
        for s in STATES {
            state.sample(
                &[("module", module), ("kind", &m.kind), ("state", s)],
                flag(m.state == s),
            );
        }
        transient.sample(&[("module", module)], flag(m.phase == "transient"));
        serving.sample(&[("module", module)], flag(m.serving));
        checkers_on.sample(&[("module", module)], flag(m.checkers));
        failover_on.sample(&[("module", module)], flag(m.failover));
        if m.kind == "mirror" {
            capture_up.sample(&[("module", module)], flag(m.capture_error.is_none()));
        }
        for t in &m.counters.transitions {
            transitions.sample(
                &[("module", module), ("from", &t.from), ("to", &t.to)],
                n(t.count),
            );
        }
        for (id, c) in &m.counters.checkers {
            let labels = |result| {
                [
                    ("module", module),
                    ("checker", id.as_str()),
                    ("result", result),
                ]
            };
            checks.sample(&labels("passed"), n(c.passed));
            checks.sample(&labels("failed"), n(c.failed));
            checker_up.sample(&[("module", module), ("checker", id)], flag(c.last_ok));
        }
        for (script, s) in &m.counters.scripts {
            let labels = [("module", module), ("script", script.as_str())];
            scripts.sample_with("_sum", &labels, s.seconds);
            scripts.sample_with("_count", &labels, n(s.runs));
            script_failures.sample(&labels, n(s.failures));
        }
        for (name, results) in &m.counters.witness {
            for (result, count) in results {
                witness.sample(
                    &[("module", module), ("witness", name), ("result", result)],
                    n(*count),
                );
            }
        }
        if let Some(p) = &m.progress {
            let labels = [("module", module)];
            done_bytes.sample(&labels, n(p.bytes_done));
            target_bytes.sample(&labels, n(p.bytes_total));
            done_files.sample(&labels, n(p.files_done));
            target_files.sample(&labels, n(p.files_total));
            resync.sample(&labels, p.ratio());
            if let Some(seconds) = p.eta_seconds {
                eta.sample(&labels, seconds);
            }
            lag.sample(&labels, p.lag_seconds);
            backlog.sample(&labels, n(p.backlog_bytes));
        }
    }
    families.extend([
        state,
        transient,
        serving,
        checkers_on,
        failover_on,
        capture_up,
        transitions,
        checks,
        checker_up,
        scripts,
        script_failures,
        witness,
        done_bytes,
        target_bytes,
        done_files,
        target_files,
        resync,
        eta,
        lag,
        backlog,
    ]);

    let mut owned = Family::new(
        "halo_farm_buckets",
        "gauge",
        "Buckets of the farm's table each node owns (of 4096).",
    );
    let mut share = Family::new(
        "halo_farm_load_share_ratio",
        "gauge",
        "Each node's part of the farm's buckets, 0 to 1.",
    );
    let mut verdicts = Family::new(
        "halo_farm_frames_total",
        "counter",
        "Frames for a VIP the farm's XDP filter judged on this node, by verdict.",
    );
    let mut packets = Family::new(
        "halo_farm_bucket_packets_total",
        "counter",
        "Packets this node accepted, by bucket (buckets without any left out).",
    );
    let mut names: Vec<&String> = farms.keys().collect();
    names.sort();
    for module in names {
        let view = &farms[module];
        for member in view.table.shares() {
            let labels = [("module", module.as_str()), ("node", member.node)];
            owned.sample(&labels, member.buckets as f64);
            share.sample(&labels, member.percent / 100.0);
        }
        for (verdict, count) in &view.counters.verdicts {
            verdicts.sample(&[("module", module), ("verdict", verdict)], n(*count));
        }
        for (bucket, count) in &view.counters.buckets {
            packets.sample(
                &[("module", module), ("bucket", &bucket.to_string())],
                n(*count),
            );
        }
    }
    families.extend([owned, share, verdicts, packets]);

    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{status::LinkCounters, ModuleStatus, ReplicationProgress};

    fn sample_status() -> NodeStatus {
        let mut module = ModuleStatus {
            name: "web".into(),
            kind: "farm".into(),
            state: "UP".into(),
            phase: "ready".into(),
            ..ModuleStatus::default()
        };
        module.counters.record_transition("STOP", "WAIT");
        module.counters.record_transition("WAIT", "UP");
        module
            .counters
            .record_checker("tcp:127.0.0.1:80", false, "refused");
        module
            .counters
            .record_script("start_both", true, std::time::Duration::from_millis(250));
        let mut status = NodeStatus {
            node: "a".into(),
            cluster: "lab".into(),
            modules: vec![module],
            ..NodeStatus::default()
        };
        status.heartbeat.rejected.insert("forged".into(), 3);
        status.heartbeat.links.push(LinkCounters {
            peer: "b".into(),
            network: "net0".into(),
            accepted: 10,
            lost: 2,
            accepted_secret: 4,
        });
        status
    }

    #[test]
    fn one_state_series_per_state_and_counters_in_base_units() {
        let text = render(&sample_status(), &HashMap::new());
        assert!(text.contains("halo_module_state{module=\"web\",kind=\"farm\",state=\"UP\"} 1\n"));
        assert!(text.contains("halo_module_state{module=\"web\",kind=\"farm\",state=\"STOP\"} 0\n"));
        assert_eq!(text.matches("halo_module_state{").count(), STATES.len());
        assert!(text
            .contains("halo_module_transitions_total{module=\"web\",from=\"WAIT\",to=\"UP\"} 1\n"));
        assert!(text.contains("halo_checker_results_total{module=\"web\",checker=\"tcp:127.0.0.1:80\",result=\"failed\"} 1\n"));
        assert!(text.contains(
            "halo_script_duration_seconds_sum{module=\"web\",script=\"start_both\"} 0.25\n"
        ));
        assert!(text.contains("halo_heartbeat_frames_rejected_total{reason=\"forged\"} 3\n"));
        assert!(text.contains("halo_heartbeat_frames_lost_total{peer=\"b\",network=\"net0\"} 2\n"));
        assert!(text.contains(
            "halo_heartbeat_frames_accepted_secret_total{peer=\"b\",network=\"net0\"} 4\n"
        ));
        assert!(
            !text.contains("halo_replication_"),
            "no replication series before a mirror publishes its progress"
        );
    }

    #[test]
    fn a_mirror_without_its_write_capture_says_so() {
        let mut status = sample_status();
        let mirror = |name: &str, error: Option<&str>| ModuleStatus {
            name: name.into(),
            kind: "mirror".into(),
            capture_error: error.map(str::to_owned),
            ..ModuleStatus::default()
        };
        status.modules.push(mirror("db", Some("no BTF")));
        status.modules.push(mirror("files", None));
        let text = render(&status, &HashMap::new());
        assert!(text.contains("halo_mirror_capture_up{module=\"db\"} 0\n"));
        assert!(text.contains("halo_mirror_capture_up{module=\"files\"} 1\n"));
        assert!(
            !text.contains("halo_mirror_capture_up{module=\"web\"}"),
            "a farm has no capture"
        );
    }

    #[test]
    fn every_family_has_help_and_type_once_before_its_samples() {
        let mut status = sample_status();
        status.modules[0].progress = Some(ReplicationProgress {
            bytes_total: 10,
            eta_seconds: Some(1.5),
            ..ReplicationProgress::default()
        });
        let text = render(&status, &HashMap::new());
        assert!(text.contains("halo_replication_eta_seconds{module=\"web\"} 1.5\n"));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    !declared.contains(&name.to_owned()),
                    "{name} declared twice"
                );
                declared.push(name.to_owned());
            } else if !line.starts_with('#') {
                let family = declared.last().expect("a sample before any # TYPE");
                assert!(
                    line.starts_with(family.as_str()),
                    "{line} is not in family {family}"
                );
                assert!(line.starts_with("halo_"), "{line}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
