//! `halo state MODULE [-q]`.

use std::process::ExitCode;

use anyhow::bail;

use super::{client, Target};

pub fn run(module: &str, quiet: bool, target: &Target) -> anyhow::Result<ExitCode> {
    let status = client::fetch_status(&target.api_addr()?)?;
    let Some(found) = status.modules.iter().find(|m| m.name == module) else {
        let known: Vec<&str> = status.modules.iter().map(|m| m.name.as_str()).collect();
        bail!(
            "no module {module:?} on node {} (modules: {})",
            status.node,
            known.join(", ")
        );
    };
    if !quiet {
        println!("{} ({})", found.state, found.phase);
    }
    Ok(ExitCode::from(found.exit_code))
}
