//! `halo status [--json] [-H …]`: every module's state, load share and sync
//! progress, on this node (with its peers and heartbeats) or on several.

use std::{collections::BTreeMap, io::Write as _, process::ExitCode};

use serde::{Deserialize, Serialize};

use super::{
    buckets::BucketTable,
    client::{ApiFailure, Daemon},
    fanout,
    state::yes_no,
    table::Table,
    Targets,
};
use crate::api::{ModuleStatus, NodeStatus, ReplicationProgress};

/// What `status` shows of one node: `/api/v1/state` and the load share of
/// each farm module it serves (percent of the buckets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub status: NodeStatus,
    /// Farm module → this node's share of its buckets, in percent.
    pub load_share: BTreeMap<String, f64>,
}

/// Reads a node's state and the load share of its serving farm modules.
fn fetch(daemon: &Daemon) -> Result<StatusView, ApiFailure> {
    let status: NodeStatus = daemon.get_json("/api/v1/state")?;
    let mut load_share = BTreeMap::new();
    for module in status
        .modules
        .iter()
        .filter(|m| m.kind == "farm" && m.serving)
    {
        // A table that vanished in between (the module stopped) is no error.
        if let Ok(table) =
            daemon.get_json::<BucketTable>(&format!("/api/v1/modules/{}/buckets", module.name))
        {
            let share = table.share_of(&status.node).map_or(0.0, |s| s.percent);
            load_share.insert(module.name.clone(), share);
        }
    }
    Ok(StatusView { status, load_share })
}

pub fn run(json: bool, targets: &Targets) -> anyhow::Result<ExitCode> {
    let daemons = targets.daemons()?;
    let answers = fanout::ask(&daemons, fetch);
    if !targets.is_fanout() {
        let view = answers.into_iter().next().expect("one daemon").result?;
        if json {
            fanout::print_json(&view)?;
        } else {
            print_one(&view)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        fanout::print_json(&fanout::to_json(&answers))?;
    } else {
        print!("{}", merged(&answers));
        for answer in &answers {
            if let Ok(view) = &answer.result {
                for line in capture_warnings(&view.status) {
                    println!("{}: {line}", view.status.node);
                }
            }
        }
    }
    Ok(fanout::outcome(&answers))
}

/// The load share column: a farm's share on this node, `-` otherwise.
fn share_cell(view: &StatusView, module: &ModuleStatus) -> String {
    view.load_share
        .get(&module.name)
        .map_or_else(|| "-".to_owned(), |share| format!("{share:.1}%"))
}

/// The sync column: a mirror's copy progress and what is not yet on the peer.
pub fn sync_cell(progress: Option<&ReplicationProgress>) -> String {
    let Some(p) = progress else {
        return "-".to_owned();
    };
    let mut cell = format!("{:.0}%", p.ratio() * 100.0);
    if p.ratio() < 1.0 {
        if let Some(eta) = p.eta_seconds {
            cell.push_str(&format!(" eta {eta:.0}s"));
        }
    }
    if p.backlog_bytes > 0 {
        cell.push_str(&format!(
            " backlog {}B lag {:.1}s",
            p.backlog_bytes, p.lag_seconds
        ));
    }
    cell
}

fn module_row(view: &StatusView, m: &ModuleStatus) -> Vec<String> {
    vec![
        m.name.clone(),
        m.kind.clone(),
        m.state.clone(),
        m.phase.clone(),
        yes_no(m.serving).to_owned(),
        share_cell(view, m),
        sync_cell(m.progress.as_ref()),
        m.last_event.clone(),
    ]
}

const MODULE_COLUMNS: [&str; 8] = [
    "MODULE",
    "KIND",
    "STATE",
    "PHASE",
    "READY",
    "SHARE",
    "SYNC",
    "LAST EVENT",
];

/// One row per node and module; a node that did not answer gets one line
/// saying why.
pub fn merged(answers: &[fanout::Answer<StatusView>]) -> Table {
    let mut header = vec!["NODE"];
    header.extend(MODULE_COLUMNS);
    header.insert(header.len() - 1, "PEERS UP");
    let mut table = Table::new(&header);
    for answer in answers {
        let node = answer.daemon.node.clone();
        match &answer.result {
            Ok(view) => {
                let up = view.status.peers.iter().filter(|p| p.up).count();
                let peers = format!("{up}/{}", view.status.peers.len());
                if view.status.modules.is_empty() {
                    table.row([node.clone(), "(no module)".to_owned()]);
                }
                for m in &view.status.modules {
                    let mut row = vec![node.clone()];
                    row.extend(module_row(view, m));
                    row.insert(row.len() - 1, peers.clone());
                    table.row(row);
                }
            }
            Err(e) => table.note(node, fanout::failure_note(e)),
        }
    }
    table
}

/// One warning per mirror module whose write capture is not running.
fn capture_warnings(status: &NodeStatus) -> Vec<String> {
    status
        .modules
        .iter()
        .filter_map(|m| {
            let error = m.capture_error.as_ref()?;
            Some(format!(
                "WARNING: {}: the write capture did not load ({error}): replication runs \
                 through inotify and checksums only, and durable writes are not held until \
                 the peer has them",
                m.name
            ))
        })
        .collect()
}

fn print_one(view: &StatusView) -> anyhow::Result<()> {
    let status = &view.status;
    let mut out = std::io::stdout().lock();
    writeln!(out, "node {} of cluster {}", status.node, status.cluster)?;
    writeln!(out)?;
    let mut modules = Table::new(&MODULE_COLUMNS);
    for m in &status.modules {
        modules.row(module_row(view, m));
    }
    write!(out, "{modules}")?;
    for line in capture_warnings(status) {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    let mut peers = Table::new(&["PEER", "UP", "NETWORKS"]);
    for p in &status.peers {
        let networks: Vec<String> = p
            .networks
            .iter()
            .map(|n| format!("{}:{}", n.name, if n.up { "up" } else { "down" }))
            .collect();
        peers.row([p.name.clone(), yes_no(p.up).to_owned(), networks.join(" ")]);
    }
    write!(out, "{peers}")?;
    let hb = &status.heartbeat;
    let rejected: Vec<String> = hb
        .rejected
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out)?;
    writeln!(
        out,
        "heartbeats: sent {} received {} late ticks {} rejected [{}]",
        hb.sent,
        hb.received,
        hb.late_ticks,
        rejected.join(" ")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::PeerStatus,
        cli::client::{Daemon, Token},
    };

    fn view(node: &str, state: &str) -> StatusView {
        StatusView {
            status: NodeStatus {
                node: node.into(),
                cluster: "lab".into(),
                peers: vec![
                    PeerStatus {
                        name: "x".into(),
                        up: true,
                        networks: vec![],
                    },
                    PeerStatus {
                        name: "y".into(),
                        up: false,
                        networks: vec![],
                    },
                ],
                modules: vec![ModuleStatus {
                    name: "web".into(),
                    kind: "farm".into(),
                    state: state.into(),
                    phase: "ready".into(),
                    serving: state == "UP",
                    last_event: "state UP".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            load_share: [("web".to_owned(), 33.3)].into(),
        }
    }

    fn daemon(node: &str) -> Daemon {
        Daemon {
            node: node.into(),
            addr: format!("{node}:9010"),
            token: Token::Missing { why: "test".into() },
        }
    }

    #[test]
    fn one_row_per_node_and_module_and_a_line_per_silent_node() {
        let answers = vec![
            fanout::Answer {
                daemon: daemon("a"),
                result: Ok(view("a", "UP")),
            },
            fanout::Answer {
                daemon: daemon("c"),
                result: Err(ApiFailure::Unreachable {
                    addr: "c:9010".into(),
                    reason: "connection refused".into(),
                }),
            },
        ];
        let text = merged(&answers).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NODE", "MODULE", "KIND", "STATE", "PHASE", "READY", "SHARE", "SYNC", "PEERS",
                "UP", "LAST", "EVENT"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["a", "web", "farm", "UP", "ready", "yes", "33.3%", "-", "1/2", "state", "UP"]
        );
        assert!(
            lines[2].starts_with("c ") && lines[2].contains("UNREACHABLE: cannot reach"),
            "{text}"
        );
    }

    #[test]
    fn a_mirror_whose_write_capture_did_not_load_gets_a_warning() {
        let mut status = view("a", "UP").status;
        assert!(capture_warnings(&status).is_empty());
        status.modules.push(ModuleStatus {
            name: "db".into(),
            kind: "mirror".into(),
            capture_error: Some("reading /sys/kernel/btf/vmlinux: not found".into()),
            ..Default::default()
        });
        let warnings = capture_warnings(&status);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("WARNING: db: the write capture did not load (reading /sys/kernel/btf/vmlinux: not found)")
                && warnings[0].contains("durable writes are not held"),
            "{warnings:?}"
        );
    }

    #[test]
    fn sync_shows_progress_eta_and_backlog() {
        assert_eq!(sync_cell(None), "-");
        let copying = ReplicationProgress {
            bytes_done: 25,
            bytes_total: 100,
            eta_seconds: Some(12.0),
            ..Default::default()
        };
        assert_eq!(sync_cell(Some(&copying)), "25% eta 12s");
        let in_sync = ReplicationProgress {
            bytes_done: 100,
            bytes_total: 100,
            backlog_bytes: 4096,
            lag_seconds: 0.3,
            ..Default::default()
        };
        assert_eq!(sync_cell(Some(&in_sync)), "100% backlog 4096B lag 0.3s");
    }

    #[test]
    fn the_json_view_still_reads_as_a_node_status() {
        let json = serde_json::to_value(view("a", "UP")).unwrap();
        assert_eq!(json["load_share"]["web"], 33.3);
        let back: NodeStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.node, "a");
    }
}
