//! `halo reload`: the daemon re-reads its configuration file (as on
//! SIGHUP) and says what it applied live and what needs a restart.

use std::process::ExitCode;

use super::{fanout, Targets};
use crate::api::ReloadReport;

/// Exit code when the daemon reloaded but refused some changed keys.
const EXIT_REFUSED_KEYS: u8 = 2;

pub fn run(json: bool, targets: &Targets) -> anyhow::Result<ExitCode> {
    let daemons = targets.daemons()?;
    let answers = fanout::ask(&daemons, |daemon| {
        daemon.post_json::<ReloadReport>("/api/v1/reload")
    });
    if json {
        let reports: Vec<serde_json::Value> = answers
            .iter()
            .map(|answer| match &answer.result {
                Ok(report) => serde_json::json!({ "node": answer.daemon.node, "reload": report }),
                Err(e) => serde_json::json!({ "node": answer.daemon.node, "error": e.to_string() }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(reports));
    } else {
        for answer in &answers {
            let prefix = if targets.is_fanout() {
                format!("{}: ", answer.daemon.node)
            } else {
                String::new()
            };
            match &answer.result {
                Ok(report) => {
                    println!("{prefix}reloaded {}", report.file);
                    for line in &report.applied {
                        println!("{prefix}  applied: {line}");
                    }
                    for line in &report.refused {
                        println!("{prefix}  refused: {line}");
                    }
                }
                Err(e) if !targets.is_fanout() => return Err(e.clone().into()),
                Err(e) => println!("{prefix}{}", fanout::failure_note(e)),
            }
        }
    }
    let outcome = fanout::outcome(&answers);
    if outcome != ExitCode::SUCCESS {
        return Ok(outcome);
    }
    let refused = answers
        .iter()
        .any(|a| a.result.as_ref().is_ok_and(|r| !r.refused.is_empty()));
    Ok(if refused {
        ExitCode::from(EXIT_REFUSED_KEYS)
    } else {
        ExitCode::SUCCESS
    })
}
