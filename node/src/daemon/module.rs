//! What every module driver (farm, mirror) does the same way: its event
//! log and the last event shown in the status, checker reports turned into
//! machine inputs, scripts run on their own task and counted for
//! `/metrics`, the `transition` script, and state changes counted.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc::UnboundedSender, time::Instant as TokioInstant};
use tracing::{info, warn};

use crate::{
    api::{ModuleStatus, SharedStatus},
    app::{self, checker::CheckerReport, script::ScriptSpec, LogSink},
    config,
    fsm::{self, ScriptKind, ScriptRun, State},
};

use super::module_log::ModuleLog;

/// How long a stopping daemon waits for a module's stop scripts.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(120);

/// What a checker report means for a module's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CheckerInput {
    /// A `wait` checker failed: a resource the node needs is down.
    ResourceDown(String),
    /// A `wait` checker that had failed passes again.
    ResourceUp(String),
    /// Another checker failed: restart, stop-start or stop.
    Failed(fsm::CheckerAction),
}

/// A module's name, node, status slot, event log and output sink.
pub(super) struct ModuleCore {
    pub name: String,
    pub node: String,
    pub status: SharedStatus,
    pub sink: LogSink,
    log: ModuleLog,
    /// The last result of each checker, to tell a recovery from a pass.
    checker_states: HashMap<String, bool>,
    /// Why the machine refused the last command, until taken.
    refused: Option<String>,
}

impl ModuleCore {
    pub fn new(
        name: &str,
        node: &str,
        status: SharedStatus,
        log: ModuleLog,
        sink: LogSink,
    ) -> Self {
        ModuleCore {
            name: name.to_owned(),
            node: node.to_owned(),
            status,
            sink,
            log,
            checker_states: HashMap::new(),
            refused: None,
        }
    }

    /// Changes this module's published status.
    pub fn update(&self, change: impl FnOnce(&mut ModuleStatus)) {
        crate::api::update_module(&self.status, &self.name, change);
    }

    /// Appends to the module's event log; what the machine logs (`fsm`) is
    /// also the status's last event.
    pub fn write_log(&mut self, source: &str, text: &str) {
        match self.log.append(source, text) {
            Ok(_) if source == "fsm" => self.update(|m| m.last_event = text.to_owned()),
            Ok(_) => {}
            Err(error) => {
                warn!(module = %self.name, error = %format!("{error:#}"), "cannot write the module log")
            }
        }
    }

    /// Logs and counts a checker report, and says what it means for the machine.
    pub fn checker(&mut self, report: CheckerReport) -> Option<CheckerInput> {
        let previous = self.checker_states.insert(report.id.clone(), report.ok);
        self.update(|m| {
            m.counters
                .record_checker(&report.id, report.ok, &report.detail)
        });
        let verdict = if report.ok { "ok" } else { "failed" };
        self.write_log(
            &format!("checker:{}", report.id),
            &format!("{verdict}: {}", report.detail),
        );
        match (report.ok, report.action) {
            (false, config::CheckerAction::Wait) => Some(CheckerInput::ResourceDown(report.id)),
            (true, config::CheckerAction::Wait) if previous == Some(false) => {
                Some(CheckerInput::ResourceUp(report.id))
            }
            (false, action) => Some(CheckerInput::Failed(match action {
                config::CheckerAction::Restart => fsm::CheckerAction::Restart,
                config::CheckerAction::Stopstart => fsm::CheckerAction::StopStart,
                config::CheckerAction::Stop | config::CheckerAction::Wait => {
                    fsm::CheckerAction::Stop
                }
            })),
            (true, _) => None,
        }
    }

    /// Logs a machine event and counts a change of state; returns the
    /// change, for the `transition` script.
    pub fn event(&mut self, event: &fsm::Event) -> Option<(State, State)> {
        info!(module = %self.name, %event, "module event");
        self.write_log("fsm", &event.to_string());
        if let fsm::Event::CommandRejected { reason, .. } = event {
            self.refused = Some((*reason).to_owned());
        }
        let fsm::Event::StateChanged { from, to, .. } = *event else {
            return None;
        };
        if from != to {
            self.update(|m| m.counters.record_transition(from.as_str(), to.as_str()));
        }
        Some((from, to))
    }

    /// Before an administrator's action reaches the machine.
    pub fn new_action(&mut self) {
        self.refused = None;
    }

    /// Answers an administrator's action: refused if the machine refused
    /// the command since [`ModuleCore::new_action`].
    pub fn answer(&mut self, verdict: tokio::sync::oneshot::Sender<Result<(), String>>) {
        let _ = verdict.send(self.refused.take().map_or(Ok(()), Err));
    }

    /// Runs a script of the machine on its own task; its end reaches the
    /// machine as `done(kind, ok)` through `inputs`.
    pub fn run_script<I: Send + 'static>(
        &self,
        run: &ScriptRun,
        path: Option<PathBuf>,
        inputs: &UnboundedSender<I>,
        done: fn(ScriptKind, bool) -> I,
    ) {
        let spec = ScriptSpec::new(&self.name, &self.node, run, path);
        let sink = self.sink.clone();
        let inputs = inputs.clone();
        let status = Arc::clone(&self.status);
        tokio::spawn(async move {
            let outcome = app::script::run_script(&spec, &sink).await;
            record_script(&status, &spec.module, &spec.kind.to_string(), &outcome);
            let _ = inputs.send(done(spec.kind, outcome.ok()));
        });
    }

    /// The `transition` script runs on every state change; the machine does
    /// not wait for it (fsm's driver contract).
    pub fn run_transition(&self, path: Option<PathBuf>, from: State, to: State, timeout: Duration) {
        let Some(path) = path else {
            return;
        };
        let spec = app::script::TransitionSpec {
            module: self.name.clone(),
            node: self.node.clone(),
            path: Some(path),
            from,
            to,
            timeout,
        };
        let sink = self.sink.clone();
        let status = Arc::clone(&self.status);
        tokio::spawn(async move {
            let outcome = app::script::run_transition(&spec, &sink).await;
            record_script(&status, &spec.module, "transition", &outcome);
        });
    }
}

/// The file in a module's state directory that says its application is
/// started: made durable before the start script runs, removed once a stop
/// script completed. A daemon that finds it at start died with the
/// application running (a crash leaves the application up), and must stop
/// it before anything else.
pub(super) struct StartedMarker {
    path: PathBuf,
}

impl StartedMarker {
    /// The marker of the module whose state directory is `dir`.
    pub fn new(dir: &Path) -> Self {
        StartedMarker {
            path: dir.join("application-started"),
        }
    }

    /// The state the application was started for, if the marker is there
    /// (PRIM when its content cannot be read).
    pub fn read(&self) -> Option<State> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        Some(
            text.trim()
                .parse()
                .ok()
                .and_then(State::from_code)
                .unwrap_or(State::Prim),
        )
    }

    /// Records, durably, that the application is started for `to`.
    pub fn set(&self, to: State) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut file = std::fs::File::create(&self.path)
            .with_context(|| format!("creating {}", self.path.display()))?;
        writeln!(file, "{}", to.code())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.sync_dir()
    }

    /// Records, durably, that the application is stopped.
    pub fn clear(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        match std::fs::remove_file(&self.path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).with_context(|| format!("removing {}", self.path.display())),
        }
    }

    fn sync_dir(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing the directory {}", dir.display()))
    }
}

/// Runs a stop script outside the machine, as a normal stop does: graceful,
/// then `force` if that failed; whether the application is stopped (the
/// forced call succeeded or was not needed).
pub(super) async fn stop_outside_machine(
    core: &ModuleCore,
    kind: ScriptKind,
    path: Option<PathBuf>,
    from: State,
    timeouts: fsm::ScriptTimeouts,
) -> bool {
    for (force, timeout) in [(false, timeouts.nice_stop), (true, timeouts.force_stop)] {
        let run = ScriptRun {
            kind,
            from,
            to: State::Stop,
            force,
            timeout,
        };
        let spec = ScriptSpec::new(&core.name, &core.node, &run, path.clone());
        let outcome = app::script::run_script(&spec, &core.sink).await;
        record_script(&core.status, &core.name, &kind.to_string(), &outcome);
        if outcome.ok() {
            return true;
        }
    }
    false
}

/// Counts a script run in the module's status (`/metrics`); a script that
/// is not configured did not run.
fn record_script(
    status: &SharedStatus,
    module: &str,
    script: &str,
    outcome: &app::script::ScriptReport,
) {
    if outcome.outcome != app::script::ScriptOutcome::NotConfigured {
        crate::api::update_module(status, module, |m| {
            m.counters
                .record_script(script, outcome.ok(), outcome.elapsed)
        });
    }
}

/// Sleeps until `deadline`, or for ever without one (a `select!` arm).
pub(super) async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_started_marker_tells_the_state_the_application_was_started_for() {
        let dir = std::env::temp_dir().join(format!("halo-started-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = StartedMarker::new(&dir);
        assert_eq!(marker.read(), None, "no marker before a start");
        marker.set(State::Alone).unwrap();
        assert_eq!(marker.read(), Some(State::Alone));
        std::fs::write(dir.join("application-started"), "garbage").unwrap();
        assert_eq!(
            marker.read(),
            Some(State::Prim),
            "a damaged marker still says the application is started"
        );
        marker.clear().unwrap();
        marker.clear().unwrap();
        assert_eq!(marker.read(), None, "cleared, twice");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
