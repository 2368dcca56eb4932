//! `halo state MODULE [-q] [--json] [-H …]`.

use std::process::ExitCode;

use super::{client::ApiFailure, fanout, table::Table, Targets};
use crate::api::ModuleStatus;

pub fn run(module: &str, quiet: bool, json: bool, targets: &Targets) -> anyhow::Result<ExitCode> {
    let daemons = targets.daemons()?;
    let path = format!("/api/v1/modules/{module}");
    let answers = fanout::ask(&daemons, |daemon| daemon.get_json::<ModuleStatus>(&path));
    if !targets.is_fanout() {
        let answer = answers.into_iter().next().expect("one daemon");
        let found = match answer.result {
            Ok(found) => found,
            Err(ApiFailure::Failed { status: 404, .. }) => {
                return Err(unknown(&answer.daemon, module))
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            fanout::print_json(&found)?;
        } else if !quiet {
            println!("{} ({})", found.state, found.phase);
        }
        return Ok(ExitCode::from(found.exit_code));
    }
    if json {
        fanout::print_json(&fanout::to_json(&answers))?;
        return Ok(fanout::outcome(&answers));
    }
    let mut table = Table::new(&["NODE", "MODULE", "STATE", "PHASE", "READY"]);
    for answer in &answers {
        match &answer.result {
            Ok(m) => table.row([
                answer.daemon.node.clone(),
                m.name.clone(),
                m.state.clone(),
                m.phase.clone(),
                yes_no(m.serving).to_owned(),
            ]),
            Err(e) => table.note(answer.daemon.node.clone(), fanout::failure_note(e)),
        }
    }
    print!("{table}");
    Ok(fanout::outcome(&answers))
}

/// The error for a module the daemon does not have, naming those it has.
fn unknown(daemon: &super::client::Daemon, module: &str) -> anyhow::Error {
    match daemon.get_json::<crate::api::NodeStatus>("/api/v1/state") {
        Ok(status) => {
            let known: Vec<&str> = status.modules.iter().map(|m| m.name.as_str()).collect();
            anyhow::anyhow!(
                "no module {module:?} on node {} (modules: {})",
                status.node,
                known.join(", ")
            )
        }
        Err(e) => e.into(),
    }
}

/// `yes` or `no`.
pub fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}
