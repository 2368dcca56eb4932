//! Running a module's scripts (SPEC §8).
//!
//! [`run_script`] runs the scripts the machine asks for ([`ScriptSpec`], built
//! from `Action::RunScript`), [`run_transition`] the `transition` hook
//! ([`TransitionSpec`]). A script that is not configured is not run and
//! counts as success.
//!
//! # Calling convention
//! A script is any executable named in `[module.scripts]`. halo runs it as
//!
//! ```text
//! <path> <script> <from> <to> [force]
//! ```
//!
//! - `<script>` is the script's name: `prestart`, `start_both`, `stop_both`,
//!   `start_prim`, `stop_prim`, `poststop` or `transition`;
//! - `<from>` and `<to>` are the states being left and entered, in upper case
//!   (`STOP`, `WAIT`, `ALONE`, `PRIM`, `SECOND`, `UP`);
//! - `force` is added to the second call of a stop script, made when the
//!   graceful call failed or ran past `nicestoptimeout`: the script should then
//!   stop the application by any means, within `forcestoptimeout`.
//!
//! Examples: `/etc/halo/web/stop_both stop_both UP STOP`, then
//! `/etc/halo/web/stop_both stop_both UP STOP force`.
//!
//! The same facts are in the environment, which is otherwise halo's own:
//! `HALO_MODULE`, `HALO_NODE`, `HALO_SCRIPT`, `HALO_FROM`, `HALO_TO` and
//! `HALO_FORCE` (`0` or `1`). Standard input is `/dev/null`, the working
//! directory is `/`, and the script leads a process group of its own.
//!
//! Exit status 0 is success; any other status, death by a signal, or running
//! past the timeout is failure. On timeout the whole process group gets
//! SIGTERM, and SIGKILL [`KILL_GRACE`] later if anything of it is left.
//!
//! Every line the script writes on stdout or stderr goes to the module log as
//! it comes, tagged `script:<script>:stdout` or `script:<script>:stderr`;
//! halo's own lines about the run (the call, then how it ended and after how
//! long) are tagged `script:<script>`. A line is cut at [`MAX_LINE`] bytes and
//! bytes that are not UTF-8 are replaced. A process the script leaves running
//! (a start script's application) is not killed when the script exits, and
//! whatever it writes to the inherited stdout or stderr keeps going to the log:
//! halo stops waiting for those pipes shortly after the script exits, but keeps
//! reading them, so that the application never meets a closed pipe.

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::warn;

use super::group::ProcessGroup;
use crate::fsm::{ScriptKind, ScriptRun, State};

/// How long a timed-out script's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The longest line of script output kept in the log, in bytes.
pub const MAX_LINE: usize = 4096;

/// How long output still in the pipes is waited for once the script exited,
/// so that its last lines come before the line saying how it ended.
const DRAIN: Duration = Duration::from_millis(200);

/// One line for a module's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When the line was written (or read from the script).
    pub at: SystemTime,
    /// Who wrote it: `script:stop_both:stdout`, `script:stop_both:stderr`, or
    /// `script:stop_both` for halo's own lines.
    pub source: String,
    /// The line, without its end of line.
    pub text: String,
}

/// Where a module's scripts write their log lines; the daemon persists them.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<LogLine>,
}

impl LogSink {
    /// A sink and the receiver its lines arrive on.
    pub fn new() -> (LogSink, mpsc::UnboundedReceiver<LogLine>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink { tx }, rx)
    }

    /// Writes one line, stamped now. A line for a log nobody reads any more is dropped.
    pub fn line(&self, source: impl Into<String>, text: impl Into<String>) {
        let _ = self.tx.send(LogLine {
            at: SystemTime::now(),
            source: source.into(),
            text: text.into(),
        });
    }
}

/// One run of a script the machine asked for (`Action::RunScript`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptSpec {
    /// The module's name (`HALO_MODULE`).
    pub module: String,
    /// This node's name (`HALO_NODE`).
    pub node: String,
    /// Which script: answer with `ScriptDone` of this kind.
    pub kind: ScriptKind,
    /// The executable; `None` when the module has no such script.
    pub path: Option<PathBuf>,
    /// The state being left.
    pub from: State,
    /// The state being entered.
    pub to: State,
    /// The forced call of a stop script.
    pub force: bool,
    /// How long the script may run before its process group is killed.
    pub timeout: Duration,
}

impl ScriptSpec {
    /// The run `fsm` asked for, with the path the module configures for its kind.
    pub fn new(module: &str, node: &str, run: &ScriptRun, path: Option<PathBuf>) -> ScriptSpec {
        ScriptSpec {
            module: module.to_owned(),
            node: node.to_owned(),
            kind: run.kind,
            path,
            from: run.from,
            to: run.to,
            force: run.force,
            timeout: run.timeout,
        }
    }

    fn call(&self) -> Option<Call<'_>> {
        Some(Call {
            module: &self.module,
            node: &self.node,
            name: self.kind.file_name(),
            path: self.path.as_deref()?,
            from: self.from,
            to: self.to,
            force: self.force,
            timeout: self.timeout,
        })
    }
}

/// One run of the `transition` script, which the driver runs on every
/// `Event::StateChanged`; no machine waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionSpec {
    /// The module's name (`HALO_MODULE`).
    pub module: String,
    /// This node's name (`HALO_NODE`).
    pub node: String,
    /// The executable; `None` when the module has no transition script.
    pub path: Option<PathBuf>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// How long the script may run before its process group is killed (`start_timeout`).
    pub timeout: Duration,
}

impl TransitionSpec {
    fn call(&self) -> Option<Call<'_>> {
        Some(Call {
            module: &self.module,
            node: &self.node,
            name: "transition",
            path: self.path.as_deref()?,
            from: self.from,
            to: self.to,
            force: false,
            timeout: self.timeout,
        })
    }
}

/// A configured script, ready to run.
#[derive(Clone, Copy, Debug)]
struct Call<'a> {
    module: &'a str,
    node: &'a str,
    /// The script's name: its first argument and `HALO_SCRIPT`.
    name: &'static str,
    path: &'a Path,
    from: State,
    to: State,
    force: bool,
    timeout: Duration,
}

impl Call<'_> {
    /// The arguments after the path.
    fn args(&self) -> Vec<&'static str> {
        let mut args = vec![self.name, self.from.as_str(), self.to.as_str()];
        if self.force {
            args.push("force");
        }
        args
    }

    /// The log source of halo's own lines about this call.
    fn source(&self) -> String {
        format!("script:{}", self.name)
    }
}

/// How a script ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptOutcome {
    /// It exited with status 0.
    Ok,
    /// It exited with another status or was killed by a signal.
    Failed(ExitReason),
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// No script is configured: counts as success.
    NotConfigured,
    /// It could not be started; the reason names the path.
    SpawnFailed(String),
}

impl ScriptOutcome {
    /// Whether the machine should take the script as successful (`ScriptDone { ok }`).
    pub fn ok(&self) -> bool {
        matches!(self, ScriptOutcome::Ok | ScriptOutcome::NotConfigured)
    }
}

impl fmt::Display for ScriptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptOutcome::Ok => f.write_str("ok"),
            ScriptOutcome::Failed(reason) => write!(f, "failed: {reason}"),
            ScriptOutcome::TimedOut => f.write_str("timed out: its process group was killed"),
            ScriptOutcome::NotConfigured => f.write_str("not configured"),
            ScriptOutcome::SpawnFailed(reason) => f.write_str(reason),
        }
    }
}

/// Why a script that ran did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this nonzero status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitReason {
    /// The reason for a status other than success; `None` for success.
    pub(super) fn of(status: ExitStatus) -> Option<ExitReason> {
        if status.success() {
            None
        } else if let Some(code) = status.code() {
            Some(ExitReason::Code(code))
        } else {
            // Neither a code nor a signal cannot happen for a child that was
            // waited for; -1 keeps it a failure rather than a success.
            Some(ExitReason::Signal(status.signal().unwrap_or(-1)))
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Code(code) => write!(f, "exit status {code}"),
            ExitReason::Signal(signal) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => write!(f, "killed by {name}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// What one run of a script gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptReport {
    /// How it ended.
    pub outcome: ScriptOutcome,
    /// From the spawn to the end (zero when not configured).
    pub elapsed: Duration,
}

impl ScriptReport {
    const NOT_CONFIGURED: ScriptReport = ScriptReport {
        outcome: ScriptOutcome::NotConfigured,
        elapsed: Duration::ZERO,
    };

    /// Whether the machine should take the script as successful.
    pub fn ok(&self) -> bool {
        self.outcome.ok()
    }
}

/// Runs the script of `spec`, its output going to `log`, and says how it ended.
/// Never takes much longer than `spec.timeout` plus [`KILL_GRACE`].
pub async fn run_script(spec: &ScriptSpec, log: &LogSink) -> ScriptReport {
    match spec.call() {
        Some(call) => run_call(call, log).await,
        None => ScriptReport::NOT_CONFIGURED,
    }
}

/// Runs the `transition` script of `spec`, like [`run_script`].
pub async fn run_transition(spec: &TransitionSpec, log: &LogSink) -> ScriptReport {
    match spec.call() {
        Some(call) => run_call(call, log).await,
        None => ScriptReport::NOT_CONFIGURED,
    }
}

async fn run_call(call: Call<'_>, log: &LogSink) -> ScriptReport {
    let source = call.source();
    log.line(
        source.as_str(),
        format!("running {} {}", call.path.display(), call.args().join(" ")),
    );
    let started = Instant::now();
    let outcome = run(call, log).await;
    let elapsed = started.elapsed();
    log.line(
        source,
        format!("{outcome} after {:.3}s", elapsed.as_secs_f64()),
    );
    if !outcome.ok() {
        warn!(
            module = %call.module,
            script = call.name,
            force = call.force,
            %outcome,
            elapsed_ms = elapsed.as_millis() as u64,
            "script did not succeed"
        );
    }
    ScriptReport { outcome, elapsed }
}

async fn run(call: Call<'_>, log: &LogSink) -> ScriptOutcome {
    let path = call.path;
    let mut command = Command::new(path);
    command
        .args(call.args())
        .env("HALO_MODULE", call.module)
        .env("HALO_NODE", call.node)
        .env("HALO_SCRIPT", call.name)
        .env("HALO_FROM", call.from.as_str())
        .env("HALO_TO", call.to.as_str())
        .env("HALO_FORCE", if call.force { "1" } else { "0" })
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = match ProcessGroup::spawn(&mut command).await {
        Ok(group) => group,
        Err(error) => return ScriptOutcome::SpawnFailed(spawn_error(path, &error)),
    };
    let source = call.source();
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = group.take_stdout() {
        readers.push(forward_lines(
            stdout,
            format!("{source}:stdout"),
            log.clone(),
        ));
    }
    if let Some(stderr) = group.take_stderr() {
        readers.push(forward_lines(
            stderr,
            format!("{source}:stderr"),
            log.clone(),
        ));
    }
    let waited = timeout(call.timeout, group.wait()).await;
    let outcome = match waited {
        Ok(Ok(status)) => {
            // What the script started is the application: it stays.
            group.release();
            match ExitReason::of(status) {
                None => ScriptOutcome::Ok,
                Some(reason) => ScriptOutcome::Failed(reason),
            }
        }
        Ok(Err(error)) => {
            group.kill();
            ScriptOutcome::SpawnFailed(format!("cannot wait for {}: {error}", path.display()))
        }
        Err(_elapsed) => {
            group.terminate(KILL_GRACE).await;
            ScriptOutcome::TimedOut
        }
    };
    // A child the script left behind may hold the pipes open for ever: wait
    // a little for the last lines, then let the readers go on by themselves.
    let _ = timeout(DRAIN, async {
        for reader in &mut readers {
            let _ = reader.await;
        }
    })
    .await;
    outcome
}

/// A message for a script that could not be started, naming its path and,
/// where one helps, what to do.
fn spawn_error(path: &Path, error: &io::Error) -> String {
    let hint = match error.raw_os_error() {
        Some(libc::ENOENT) => " (no such file)",
        Some(libc::EACCES) => " (is it executable? chmod +x)",
        Some(libc::ENOEXEC) => " (not a binary: does it start with #!?)",
        _ => "",
    };
    format!("cannot run {}: {error}{hint}", path.display())
}

/// Sends every line read from `pipe` to `log` under `source`, until end of file.
fn forward_lines<R>(mut pipe: R, source: String, log: LogSink) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut splitter = LineSplitter::default();
        let mut chunk = vec![0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => splitter.push(&chunk[..n], |line| log.line(source.as_str(), line)),
            }
        }
        splitter.finish(|line| log.line(source.as_str(), line));
    })
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// Bytes of the current line were dropped past `MAX_LINE`.
    cut: bool,
}

impl LineSplitter {
    /// Takes the next bytes of the stream, calling `emit` for every line they end.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(String)) {
        while !bytes.is_empty() {
            let (part, ends_line) = match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (&bytes[..end], true),
                None => (bytes, false),
            };
            let room = MAX_LINE - self.line.len();
            if part.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if ends_line {
                emit(self.take());
                bytes = &bytes[part.len() + 1..];
            } else {
                bytes = &[];
            }
        }
    }

    /// The stream ended: emits a last line that had no end of line.
    fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.line.is_empty() || self.cut {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        if self.line.last() == Some(&b'\r') && !self.cut {
            self.line.pop();
        }
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.cut {
            text.push_str(" [line cut]");
        }
        self.line.clear();
        self.cut = false;
        text
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::app::testdir::{kill, running, TestDir};

    fn spec(path: Option<PathBuf>, timeout: Duration) -> ScriptSpec {
        ScriptSpec {
            module: "web".to_owned(),
            node: "node1".to_owned(),
            kind: ScriptKind::StopBoth,
            path,
            from: State::Up,
            to: State::Stop,
            force: false,
            timeout,
        }
    }

    /// Every line the sink holds now.
    fn drain(rx: &mut mpsc::UnboundedReceiver<LogLine>) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push((line.source, line.text));
        }
        lines
    }

    /// Whether process `pid` stops running within `limit`.
    async fn gone_within(pid: i32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while running(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The pid a script printed as `pid=<n>` on stdout.
    fn printed_pid(lines: &[(String, String)]) -> i32 {
        lines
            .iter()
            .find_map(|(_, text)| text.strip_prefix("pid=")?.parse().ok())
            .unwrap_or_else(|| panic!("expected a line pid=<n> in the log, saw {lines:?}"))
    }

    #[tokio::test]
    async fn arguments_environment_and_output_reach_the_sink() {
        let dir = TestDir::new("args");
        let path = dir.script(
            "stop_both",
            r#"echo "args=$*"
echo "env=$HALO_MODULE $HALO_NODE $HALO_SCRIPT $HALO_FROM $HALO_TO $HALO_FORCE"
echo "cwd=$(pwd)"
read line && echo "stdin had data"
echo oops >&2"#,
        );
        let (sink, mut rx) = LogSink::new();
        let mut spec = spec(Some(path.clone()), Duration::from_secs(10));
        spec.force = true;
        let report = run_script(&spec, &sink).await;
        assert_eq!(
            report.outcome,
            ScriptOutcome::Ok,
            "expected the script to succeed, saw {report:?}"
        );
        let lines = drain(&mut rx);
        let expected = [
            ("script:stop_both:stdout", "args=stop_both UP STOP force"),
            (
                "script:stop_both:stdout",
                "env=web node1 stop_both UP STOP 1",
            ),
            ("script:stop_both:stdout", "cwd=/"),
            ("script:stop_both:stderr", "oops"),
        ];
        for (source, text) in expected {
            assert!(
                lines.iter().any(|(s, t)| s == source && t == text),
                "expected {source}: {text:?} in the log, saw {lines:?}"
            );
        }
        assert!(
            !lines.iter().any(|(_, t)| t == "stdin had data"),
            "expected stdin to be /dev/null, saw {lines:?}"
        );
        let first = &lines.first().expect("expected lines").1;
        let last = &lines.last().expect("expected lines").1;
        assert_eq!(
            first,
            &format!("running {} stop_both UP STOP force", path.display()),
            "expected halo's first line to show the call, saw {lines:?}"
        );
        assert!(
            last.starts_with("ok after "),
            "expected halo's last line to give the outcome, saw {lines:?}"
        );
    }

    #[tokio::test]
    async fn graceful_call_passes_no_force_argument() {
        let dir = TestDir::new("graceful");
        let path = dir.script("stop", r#"echo "args=$* force=$HALO_FORCE""#);
        let (sink, mut rx) = LogSink::new();
        let report = run_script(&spec(Some(path), Duration::from_secs(10)), &sink).await;
        assert!(report.ok(), "expected success, saw {report:?}");
        let lines = drain(&mut rx);
        assert!(
            lines
                .iter()
                .any(|(_, t)| t == "args=stop_both UP STOP force=0"),
            "expected three arguments and HALO_FORCE=0, saw {lines:?}"
        );
    }

    #[tokio::test]
    async fn exit_status_and_signals_map_to_outcomes() {
        let dir = TestDir::new("exit");
        let cases = [
            ("exit 0", ScriptOutcome::Ok),
            ("exit 3", ScriptOutcome::Failed(ExitReason::Code(3))),
            (
                "kill -KILL $$",
                ScriptOutcome::Failed(ExitReason::Signal(9)),
            ),
        ];
        let (sink, _rx) = LogSink::new();
        for (i, (body, expected)) in cases.into_iter().enumerate() {
            let path = dir.script(&format!("s{i}"), body);
            let report = run_script(&spec(Some(path), Duration::from_secs(10)), &sink).await;
            assert_eq!(
                report.outcome, expected,
                "expected {expected:?} for `{body}`, saw {report:?}"
            );
            assert_eq!(report.ok(), expected == ScriptOutcome::Ok);
        }
    }

    #[tokio::test]
    async fn timed_out_script_is_killed_with_its_whole_process_group() {
        let dir = TestDir::new("timeout");
        // The child ignores SIGTERM, so only the SIGKILL after the grace ends it.
        let path = dir.script(
            "hang",
            "(trap '' TERM; exec sleep 600) &\necho pid=$!\nsleep 600",
        );
        let (sink, mut rx) = LogSink::new();
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(300);
        let report = run_script(&spec(Some(path), timeout), &sink).await;
        let took = started.elapsed();
        let lines = drain(&mut rx);
        let child = printed_pid(&lines);
        // SIGKILL is sent when the call returns; its delivery is asynchronous.
        let child_ran_on = !gone_within(child, Duration::from_secs(2)).await;
        kill(child);
        assert_eq!(
            report.outcome,
            ScriptOutcome::TimedOut,
            "expected a timeout, saw {report:?}"
        );
        assert!(!report.ok(), "a timed-out script must not count as ok");
        assert!(
            took < timeout + KILL_GRACE + Duration::from_secs(2),
            "expected the call to return within timeout + grace, it took {took:?}"
        );
        assert!(
            !child_ran_on,
            "expected the script's child {child} to be killed with the group, it still runs"
        );
    }

    #[tokio::test]
    async fn child_holding_stdout_does_not_hold_the_script_up() {
        let dir = TestDir::new("background");
        let path = dir.script("start", "sleep 600 &\necho pid=$!\nexit 0");
        let (sink, mut rx) = LogSink::new();
        let started = std::time::Instant::now();
        let report = run_script(&spec(Some(path), Duration::from_secs(30)), &sink).await;
        let took = started.elapsed();
        let lines = drain(&mut rx);
        let child = printed_pid(&lines);
        let child_ran_on = running(child);
        kill(child);
        assert_eq!(report.outcome, ScriptOutcome::Ok, "saw {report:?}");
        assert!(
            took < Duration::from_secs(5),
            "expected the call to return once the script exited, it took {took:?}"
        );
        assert!(
            child_ran_on,
            "expected the application the script started ({child}) to be left running"
        );
    }

    #[tokio::test]
    async fn missing_or_not_executable_script_fails_to_spawn_naming_its_path() {
        let dir = TestDir::new("spawn");
        let missing = dir.path().join("missing");
        let plain = dir.path().join("plain");
        fs::write(&plain, "#!/bin/sh\nexit 0\n").expect("expected to write the script");
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644))
            .expect("expected to chmod the script");
        let (sink, _rx) = LogSink::new();
        for path in [missing, plain] {
            let report = run_script(&spec(Some(path.clone()), Duration::from_secs(5)), &sink).await;
            match &report.outcome {
                ScriptOutcome::SpawnFailed(reason)
                    if reason.contains(&path.display().to_string()) => {}
                other => panic!(
                    "expected SpawnFailed naming {}, saw {other:?}",
                    path.display()
                ),
            }
            assert!(!report.ok());
        }
    }

    #[tokio::test]
    async fn script_not_configured_is_ok_at_once() {
        let (sink, mut rx) = LogSink::new();
        let report = run_script(&spec(None, Duration::from_secs(5)), &sink).await;
        assert_eq!(report.outcome, ScriptOutcome::NotConfigured);
        assert!(report.ok(), "expected a missing script to count as ok");
        assert!(drain(&mut rx).is_empty(), "expected nothing in the log");
    }

    #[test]
    fn long_lines_are_cut_and_bad_utf8_replaced() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        let long = vec![b'a'; MAX_LINE * 3];
        splitter.push(&long[..MAX_LINE + 10], |l| lines.push(l));
        splitter.push(&long[MAX_LINE + 10..], |l| lines.push(l));
        splitter.push(b"\nok\r\nbad \xff\xfe end\npartial", |l| lines.push(l));
        splitter.finish(|l| lines.push(l));
        assert_eq!(lines.len(), 4, "expected four lines, saw {lines:?}");
        assert_eq!(lines[0], format!("{} [line cut]", "a".repeat(MAX_LINE)));
        assert_eq!(lines[1], "ok");
        assert_eq!(lines[2], "bad \u{fffd}\u{fffd} end");
        assert_eq!(lines[3], "partial");
    }

    #[test]
    fn spec_takes_the_machines_run() {
        let run = ScriptRun {
            kind: ScriptKind::StopBoth,
            from: State::Up,
            to: State::Stop,
            force: true,
            timeout: Duration::from_secs(7),
        };
        let path = PathBuf::from("/etc/halo/web/stop_both");
        let spec = ScriptSpec::new("web", "node1", &run, Some(path.clone()));
        let call = spec.call().expect("expected a configured script");
        assert_eq!(call.path, path);
        assert_eq!(call.args(), ["stop_both", "UP", "STOP", "force"]);
        assert_eq!(call.timeout, Duration::from_secs(7));
        assert!(ScriptSpec::new("web", "node1", &run, None).call().is_none());
    }

    #[tokio::test]
    async fn transition_script_gets_its_name_and_the_states() {
        let dir = TestDir::new("transition");
        let path = dir.script("transition", r#"echo "args=$* script=$HALO_SCRIPT""#);
        let (sink, mut rx) = LogSink::new();
        let spec = TransitionSpec {
            module: "web".to_owned(),
            node: "node1".to_owned(),
            path: Some(path),
            from: State::Wait,
            to: State::Up,
            timeout: Duration::from_secs(10),
        };
        let report = run_transition(&spec, &sink).await;
        assert!(report.ok(), "expected success, saw {report:?}");
        let lines = drain(&mut rx);
        assert!(
            lines.iter().any(|(s, t)| s == "script:transition:stdout"
                && t == "args=transition WAIT UP script=transition"),
            "expected the transition call in the log, saw {lines:?}"
        );
    }
}
