//! `halo status [--json]`: this node's modules and peers.

use std::io::Write as _;

use super::{client, Target};

pub fn run(json: bool, target: &Target) -> anyhow::Result<()> {
    let status = client::fetch_status(&target.api_addr()?)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "node {} of cluster {}", status.node, status.cluster)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<7} {:<7} {:<10} {:<6} LAST EVENT",
        "MODULE", "KIND", "STATE", "PHASE", "READY"
    )?;
    for m in &status.modules {
        writeln!(
            out,
            "{:<16} {:<7} {:<7} {:<10} {:<6} {}",
            m.name,
            m.kind,
            m.state,
            m.phase,
            if m.serving { "yes" } else { "no" },
            m.last_event
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{:<16} {:<5} NETWORKS", "PEER", "UP")?;
    for p in &status.peers {
        let networks: Vec<String> = p
            .networks
            .iter()
            .map(|n| format!("{}:{}", n.name, if n.up { "up" } else { "down" }))
            .collect();
        writeln!(
            out,
            "{:<16} {:<5} {}",
            p.name,
            if p.up { "yes" } else { "no" },
            networks.join(" ")
        )?;
    }
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
