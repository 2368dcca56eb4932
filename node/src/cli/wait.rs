//! `halo wait MODULE STATE [--timeout 60s] [-H …]`: waits until the module
//! is in STATE and settled (Ready) on every named node (SafeKit's
//! `waitstate`), for scripts that must not go on before a switch-over.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{fanout, Targets};
use crate::api::ModuleStatus;

/// How often the nodes are asked.
const POLL: Duration = Duration::from_millis(200);

/// The states a module can be waited for.
const STATES: [&str; 6] = ["STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP"];

pub fn run(
    module: &str,
    state: &str,
    timeout: Duration,
    targets: &Targets,
) -> anyhow::Result<ExitCode> {
    let wanted = state.to_ascii_uppercase();
    if !STATES.contains(&wanted.as_str()) {
        bail!("{state:?} is not a state: one of {}", STATES.join(", "));
    }
    let daemons = targets.daemons()?;
    let path = format!("/api/v1/modules/{module}");
    let deadline = Instant::now() + timeout;
    loop {
        let answers = fanout::ask(&daemons, |daemon| daemon.get_json::<ModuleStatus>(&path));
        let mut pending = Vec::new();
        for answer in &answers {
            match &answer.result {
                Ok(m) if m.state == wanted && m.phase == "ready" => {}
                Ok(m) => pending.push(format!(
                    "{} is {} ({})",
                    answer.daemon.node, m.state, m.phase
                )),
                Err(e) => pending.push(format!(
                    "{}: {}",
                    answer.daemon.node,
                    fanout::failure_note(e)
                )),
            }
        }
        if pending.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "halo: {module} not {wanted} after {} s: {}",
                timeout.as_secs_f64(),
                pending.join("; ")
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(POLL);
    }
}

/// Parses `--timeout` as the configuration writes durations.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as \"60s\" or \"500ms\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_like_the_configuration() {
        assert_eq!(parse_timeout("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_timeout("soon").is_err());
    }
}
