//! The module's checkers (SPEC §8): one tokio task each, reporting when the
//! result of its check changes.
//!
//! A checker checks every `interval`, the first time as soon as it starts, and
//! sends a [`CheckerReport`] for its first result and then only when the
//! result flips between healthy and failing. The daemon's driver turns a
//! failing report into `CheckerFailed { action }` (restart, stopstart, stop)
//! or `ResourceDown` (wait), and a healthy one after a failure into
//! `ResourceUp`; the maxloop policy is the machine's.
//!
//! Maintenance: while the `enabled` switch is off, a checker checks nothing
//! and reports nothing; a check in flight is abandoned (a command's process
//! group is killed). When the switch comes back on, the checker starts afresh:
//! its first result is reported again, whatever it was before.
//!
//! The task ends when the receiver of reports is dropped or the switch's
//! sender is dropped.
//!
//! | kind | healthy when |
//! |---|---|
//! | process | at least `atleast` live processes have `name` as their `comm`, or a command line matching `regex` (unanchored, like `pgrep -f`) |
//! | tcp | a TCP connection to `address` is established within `timeout` |
//! | http | a GET of `url` answers `status` within `timeout` (plain `http://`; redirects are not followed) |
//! | command | `path args…` exits with status 0 within `timeout`; its process group is killed after each check |
//! | interface | the interface is up: `operstate` `up`, or `unknown` with `IFF_UP` set (loopback, some virtual links) |
//! | vip | every VIP of the module is bound where the module binds it (`lo` for a farm, the interface for a mirror) |

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use regex_lite::Regex;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, MissedTickBehavior};
use tracing::debug;

use super::group::ProcessGroup;
use super::script::ExitReason;
use crate::config::{Checker, CheckerAction, Module};

/// A change in the result of one checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckerReport {
    /// The checker, as in logs and `ResourceDown`: `process:nginx`, `tcp:127.0.0.1:5432`, ….
    pub id: String,
    /// Whether the check passed.
    pub ok: bool,
    /// What was seen, for the module log.
    pub detail: String,
    /// What the module does when this checker fails.
    pub action: CheckerAction,
}

/// What a checker needs to know of its module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckerContext {
    /// The module's interface.
    pub interface: String,
    /// Where the module's VIPs are bound (a farm binds them on `lo`).
    pub vip_interface: String,
    /// The module's virtual addresses.
    pub vips: Vec<IpAddr>,
}

impl CheckerContext {
    /// The context of `module`'s checkers.
    pub fn of(module: &Module) -> CheckerContext {
        match module {
            Module::Farm(farm) => CheckerContext {
                interface: farm.interface.clone(),
                vip_interface: crate::farm::datapath::VIP_DEVICE.to_owned(),
                vips: farm.vips.clone(),
            },
            Module::Mirror(mirror) => CheckerContext {
                interface: mirror.interface.clone(),
                vip_interface: mirror.interface.clone(),
                vips: mirror.vip.into_iter().collect(),
            },
        }
    }
}

/// The name a checker goes by in reports and logs.
pub fn checker_id(checker: &Checker, ctx: &CheckerContext) -> String {
    match checker {
        Checker::Process(c) => match (&c.name, &c.regex) {
            (Some(name), _) => format!("process:{name}"),
            (None, Some(regex)) => format!("process:/{regex}/"),
            (None, None) => "process:".to_owned(),
        },
        Checker::Tcp(c) => format!("tcp:{}", c.address),
        Checker::Http(c) => format!("http:{}", c.url),
        Checker::Command(c) => {
            let mut id = format!("command:{}", c.path.display());
            for arg in &c.args {
                id.push(' ');
                id.push_str(arg);
            }
            id
        }
        Checker::Interface(c) => format!("interface:{}", c.name),
        Checker::Vip(_) => {
            let vips: Vec<String> = ctx.vips.iter().map(IpAddr::to_string).collect();
            format!("vip:{}", vips.join(","))
        }
    }
}

/// Starts `checker` as a task of its own; see the module doc for what it reports, and when.
pub fn spawn(
    checker: Checker,
    ctx: CheckerContext,
    tx: mpsc::Sender<CheckerReport>,
    enabled: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(checker, ctx, tx, enabled))
}

async fn run(
    checker: Checker,
    ctx: CheckerContext,
    tx: mpsc::Sender<CheckerReport>,
    mut enabled: watch::Receiver<bool>,
) {
    let id = checker_id(&checker, &ctx);
    let action = checker.action();
    // Validation refuses a zero interval; tokio's `interval` would panic on one.
    let interval = checker.interval().max(Duration::from_millis(1));
    let probe = Probe::new(checker, &ctx);
    loop {
        if enabled.wait_for(|on| *on).await.is_err() {
            return;
        }
        let mut last = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let verdict = tokio::select! {
                verdict = async {
                    ticker.tick().await;
                    probe.check().await
                } => verdict,
                off = enabled.wait_for(|on| !*on) => match off {
                    Ok(_) => break,
                    Err(_) => return,
                },
            };
            if last == Some(verdict.ok) {
                continue;
            }
            last = Some(verdict.ok);
            debug!(checker = %id, ok = verdict.ok, detail = %verdict.detail, "checker result changed");
            let report = CheckerReport {
                id: id.clone(),
                ok: verdict.ok,
                detail: verdict.detail,
                action,
            };
            if tx.send(report).await.is_err() {
                return;
            }
        }
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    ok: bool,
    detail: String,
}

impl Verdict {
    fn new(ok: bool, detail: impl Into<String>) -> Verdict {
        Verdict {
            ok,
            detail: detail.into(),
        }
    }
}

/// One check, ready to run again and again.
enum Probe {
    Process {
        matcher: Arc<ProcessMatch>,
        atleast: u32,
    },
    /// A process checker whose regex does not compile: fails with the error.
    BadRegex(String),
    Tcp {
        address: SocketAddr,
        timeout: Duration,
    },
    Http {
        agent: ureq::Agent,
        url: String,
        status: u16,
        timeout: Duration,
    },
    Command {
        path: PathBuf,
        args: Vec<String>,
        timeout: Duration,
    },
    Interface(String),
    Vip {
        interface: String,
        vips: Vec<IpAddr>,
    },
}

impl Probe {
    fn new(checker: Checker, ctx: &CheckerContext) -> Probe {
        match checker {
            Checker::Process(c) => {
                let matcher = match (c.name, c.regex) {
                    (Some(name), _) => ProcessMatch::Name(name),
                    (None, Some(regex)) => match Regex::new(&regex) {
                        Ok(compiled) => ProcessMatch::Regex(compiled),
                        Err(error) => {
                            return Probe::BadRegex(format!("bad regex /{regex}/: {error}"))
                        }
                    },
                    (None, None) => return Probe::BadRegex("neither name nor regex".to_owned()),
                };
                Probe::Process {
                    matcher: Arc::new(matcher),
                    atleast: c.atleast,
                }
            }
            Checker::Tcp(c) => Probe::Tcp {
                address: c.address,
                timeout: c.timeout,
            },
            Checker::Http(c) => Probe::Http {
                agent: ureq::Agent::config_builder()
                    .timeout_global(Some(c.timeout))
                    .http_status_as_error(false)
                    // The status asked for is the application's own answer.
                    .max_redirects(0)
                    // The check is of the application, not of a proxy in front of it.
                    .proxy(None)
                    // A fresh connection each time: a pooled one could outlive a restart.
                    .max_idle_connections(0)
                    .build()
                    .into(),
                url: c.url,
                status: c.status,
                timeout: c.timeout,
            },
            Checker::Command(c) => Probe::Command {
                path: c.path,
                args: c.args,
                timeout: c.timeout,
            },
            Checker::Interface(c) => Probe::Interface(c.name),
            Checker::Vip(_) => Probe::Vip {
                interface: ctx.vip_interface.clone(),
                vips: ctx.vips.clone(),
            },
        }
    }

    async fn check(&self) -> Verdict {
        match self {
            Probe::Process { matcher, atleast } => {
                let matcher = Arc::clone(matcher);
                let atleast = *atleast;
                tokio::task::spawn_blocking(move || check_processes(&matcher, atleast))
                    .await
                    .unwrap_or_else(|error| Verdict::new(false, format!("check failed: {error}")))
            }
            Probe::BadRegex(error) => Verdict::new(false, error.as_str()),
            Probe::Tcp { address, timeout } => check_tcp(*address, *timeout).await,
            Probe::Http {
                agent,
                url,
                status,
                timeout,
            } => check_http(agent, url, *status, *timeout).await,
            Probe::Command {
                path,
                args,
                timeout,
            } => check_command(path, args, *timeout).await,
            Probe::Interface(name) => check_interface(name),
            Probe::Vip { interface, vips } => check_vips(interface, vips),
        }
    }
}

/// What a process checker counts.
enum ProcessMatch {
    /// Processes whose `comm` is this name.
    Name(String),
    /// Processes whose command line (arguments joined by spaces) matches.
    Regex(Regex),
}

impl fmt::Display for ProcessMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessMatch::Name(name) => write!(f, "named {name}"),
            ProcessMatch::Regex(regex) => write!(f, "matching /{regex}/"),
        }
    }
}

fn check_processes(matcher: &ProcessMatch, atleast: u32) -> Verdict {
    match count_processes(matcher) {
        Ok(count) => Verdict::new(
            count >= u64::from(atleast),
            format!("{count} processes {matcher} (at least {atleast} wanted)"),
        ),
        Err(error) => Verdict::new(false, format!("cannot read /proc: {error}")),
    }
}

/// Counts the live processes (zombies excluded) that `matcher` matches, halo itself excluded.
fn count_processes(matcher: &ProcessMatch) -> io::Result<u64> {
    let own = std::process::id();
    let mut count = 0;
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // A process may end at any moment: what cannot be read is not counted.
        let Ok(stat) = fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((comm, state)) = parse_stat(&stat) else {
            continue;
        };
        if matches!(state, b'Z' | b'X') {
            continue;
        }
        let matched = match matcher {
            ProcessMatch::Name(name) => comm == name.as_bytes(),
            ProcessMatch::Regex(regex) => {
                let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                    continue;
                };
                // Kernel threads have no command line.
                !cmdline.is_empty() && regex.is_match(&command_line(&cmdline))
            }
        };
        count += u64::from(matched);
    }
    Ok(count)
}

/// The `comm` and state letter of a `/proc/<pid>/stat` line. `comm` is in
/// parentheses and may itself hold any byte, parentheses included, so it ends
/// at the last `)`.
fn parse_stat(stat: &[u8]) -> Option<(&[u8], u8)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?;
    let state = *stat.get(close + 2)?;
    Some((comm, state))
}

/// A `/proc/<pid>/cmdline` (arguments ended by NULs) as one line, arguments joined by spaces.
fn command_line(cmdline: &[u8]) -> String {
    let trimmed = cmdline.strip_suffix(b"\0").unwrap_or(cmdline);
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&joined).into_owned()
}

async fn check_tcp(address: SocketAddr, limit: Duration) -> Verdict {
    match timeout(limit, TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => Verdict::new(true, format!("connected to {address}")),
        Ok(Err(error)) => Verdict::new(false, format!("cannot connect to {address}: {error}")),
        Err(_) => Verdict::new(
            false,
            format!("no connection to {address} within {limit:?}"),
        ),
    }
}

async fn check_http(agent: &ureq::Agent, url: &str, expected: u16, limit: Duration) -> Verdict {
    if url.starts_with("https://") {
        return Verdict::new(
            false,
            format!("cannot GET {url}: this build of halo has no TLS, use http://"),
        );
    }
    let agent = agent.clone();
    let target = url.to_owned();
    let request = tokio::task::spawn_blocking(move || {
        agent
            .get(&target)
            .call()
            .map(|response| response.status().as_u16())
    });
    // ureq enforces the timeout itself; the margin only guards against a
    // blocking call that would not return.
    match timeout(limit + Duration::from_secs(1), request).await {
        Ok(Ok(Ok(status))) if status == expected => {
            Verdict::new(true, format!("GET {url}: status {status}"))
        }
        Ok(Ok(Ok(status))) => Verdict::new(
            false,
            format!("GET {url}: status {status}, expected {expected}"),
        ),
        Ok(Ok(Err(error))) => Verdict::new(false, format!("GET {url} failed: {error}")),
        Ok(Err(error)) => Verdict::new(false, format!("GET {url} failed: {error}")),
        Err(_) => Verdict::new(false, format!("GET {url}: no answer within {limit:?}")),
    }
}

async fn check_command(path: &PathBuf, args: &[String], limit: Duration) -> Verdict {
    let mut command = Command::new(path);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut group = match ProcessGroup::spawn(&mut command).await {
        Ok(group) => group,
        Err(error) => {
            return Verdict::new(false, format!("cannot run {}: {error}", path.display()))
        }
    };
    let waited = timeout(limit, group.wait()).await;
    // Nothing a check started may outlive it, whatever the result.
    group.kill();
    match waited {
        Ok(Ok(status)) => match ExitReason::of(status) {
            None => Verdict::new(true, format!("{} exited with status 0", path.display())),
            Some(reason) => Verdict::new(false, format!("{}: {reason}", path.display())),
        },
        Ok(Err(error)) => Verdict::new(
            false,
            format!("cannot wait for {}: {error}", path.display()),
        ),
        Err(_) => Verdict::new(
            false,
            format!("{} did not exit within {limit:?}: killed", path.display()),
        ),
    }
}

fn check_interface(name: &str) -> Verdict {
    let dir = PathBuf::from("/sys/class/net").join(name);
    let operstate = match fs::read_to_string(dir.join("operstate")) {
        Ok(text) => text.trim().to_owned(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Verdict::new(false, format!("no interface {name}"));
        }
        Err(error) => return Verdict::new(false, format!("cannot read {name}'s state: {error}")),
    };
    match operstate.as_str() {
        "up" => Verdict::new(true, format!("{name} is up")),
        // Loopback and some virtual links never report a carrier state:
        // their administrative flag is all there is.
        "unknown" => {
            let flags = fs::read_to_string(dir.join("flags")).ok().and_then(|text| {
                u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
            });
            match flags {
                Some(flags) if flags & libc::IFF_UP as u32 != 0 => {
                    Verdict::new(true, format!("{name} is up (state unknown, IFF_UP set)"))
                }
                Some(_) => Verdict::new(false, format!("{name} is down (IFF_UP not set)")),
                None => Verdict::new(false, format!("cannot read {name}'s flags")),
            }
        }
        state => Verdict::new(false, format!("{name} is {state}")),
    }
}

fn check_vips(interface: &str, vips: &[IpAddr]) -> Verdict {
    let configured = match interface_addresses(interface) {
        Ok(addresses) => addresses,
        Err(error) => return Verdict::new(false, format!("cannot list addresses: {error}")),
    };
    let missing: Vec<String> = vips
        .iter()
        .filter(|vip| !configured.contains(vip))
        .map(IpAddr::to_string)
        .collect();
    if missing.is_empty() {
        let vips: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
        Verdict::new(true, format!("{} on {interface}", vips.join(", ")))
    } else {
        Verdict::new(
            false,
            format!("{} missing from {interface}", missing.join(", ")),
        )
    }
}

/// The addresses configured on `interface`, labelled ones (`eth0:vip`) included.
fn interface_addresses(interface: &str) -> nix::Result<Vec<IpAddr>> {
    let mut addresses = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        let name = ifaddr.interface_name.as_str();
        let ours = name == interface
            || name
                .strip_prefix(interface)
                .is_some_and(|label| label.starts_with(':'));
        if !ours {
            continue;
        }
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            addresses.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            addresses.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::app::testdir::{running, Spawned, TestDir};
    use crate::config::{
        CommandChecker, HttpChecker, InterfaceChecker, ProcessChecker, TcpChecker, VipChecker,
    };

    /// Long enough for any check here; a report later than this is a failure.
    const PATIENCE: Duration = Duration::from_secs(5);
    /// The interval of checkers whose repetition a test watches.
    const FAST: Duration = Duration::from_millis(20);

    /// A running checker, its reports and its maintenance switch.
    struct Running {
        reports: mpsc::Receiver<CheckerReport>,
        switch: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    impl Running {
        fn start(checker: Checker, ctx: CheckerContext, on: bool) -> Running {
            let (tx, reports) = mpsc::channel(16);
            let (switch, enabled) = watch::channel(on);
            let task = spawn(checker, ctx, tx, enabled);
            Running {
                reports,
                switch,
                task,
            }
        }

        async fn next(&mut self) -> CheckerReport {
            match timeout(PATIENCE, self.reports.recv()).await {
                Ok(Some(report)) => report,
                Ok(None) => panic!("expected a report, saw the checker end"),
                Err(_) => panic!("expected a report within {PATIENCE:?}, saw none"),
            }
        }

        /// Asserts that nothing is reported for `wait`: the absence of a report can only be waited for.
        async fn quiet_for(&mut self, what: &str, wait: Duration) {
            if let Ok(report) = timeout(wait, self.reports.recv()).await {
                panic!("expected no report {what}, saw {report:?}");
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The first report of `checker`.
    async fn first(checker: Checker, ctx: CheckerContext) -> CheckerReport {
        Running::start(checker, ctx, true).next().await
    }

    fn lo() -> CheckerContext {
        CheckerContext {
            interface: "lo".to_owned(),
            vip_interface: "lo".to_owned(),
            vips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    fn expect(report: &CheckerReport, ok: bool, detail: &str) {
        assert!(
            report.ok == ok && report.detail.contains(detail),
            "expected ok={ok} with a detail containing {detail:?}, saw {report:?}"
        );
    }

    /// A `sleep 600` whose `comm` is a name no other process has.
    fn unique_sleep(dir: &TestDir, name: &str) -> Spawned {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/bin/sleep", &link).expect("expected to link /bin/sleep");
        let child = std::process::Command::new(&link)
            .arg("600")
            .spawn()
            .unwrap_or_else(|e| panic!("expected to start {}, saw {e}", link.display()));
        Spawned(child)
    }

    fn process(name: Option<&str>, regex: Option<&str>, atleast: u32) -> Checker {
        Checker::Process(ProcessChecker {
            name: name.map(str::to_owned),
            regex: regex.map(str::to_owned),
            atleast,
            ..ProcessChecker::default()
        })
    }

    fn command(path: &str, args: &[&str], timeout: Duration) -> Checker {
        Checker::Command(CommandChecker {
            path: PathBuf::from(path),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            interval: FAST,
            timeout,
            action: CheckerAction::Stopstart,
        })
    }

    #[tokio::test]
    async fn process_checker_counts_processes_by_name() {
        let dir = TestDir::new("procname");
        let name = format!("hc{}n", std::process::id() % 1_000_000);
        let _sleep = unique_sleep(&dir, &name);
        let report = first(process(Some(&name), None, 1), lo()).await;
        expect(&report, true, &format!("1 processes named {name}"));
        assert_eq!(report.id, format!("process:{name}"));
        assert_eq!(report.action, CheckerAction::Restart);
        let report = first(process(Some(&name), None, 2), lo()).await;
        expect(&report, false, "(at least 2 wanted)");
        let report = first(process(Some("hc-nothing-xyz"), None, 1), lo()).await;
        expect(&report, false, "0 processes");
    }

    #[tokio::test]
    async fn process_checker_matches_command_lines_by_regex() {
        let dir = TestDir::new("procregex");
        let name = format!("hc{}r", std::process::id() % 1_000_000);
        let _sleep = unique_sleep(&dir, &name);
        let regex = format!("/{name} 6[0-9]+$");
        let report = first(process(None, Some(&regex), 1), lo()).await;
        expect(&report, true, "1 processes matching");
        let report = first(process(None, Some(&format!("{name} 7")), 1), lo()).await;
        expect(&report, false, "0 processes matching");
    }

    #[tokio::test]
    async fn process_checker_with_a_bad_regex_fails_with_the_error() {
        let report = first(process(None, Some("(unclosed"), 1), lo()).await;
        expect(&report, false, "bad regex /(unclosed/");
    }

    #[tokio::test]
    async fn tcp_checker_connects_to_a_listening_port_only() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("expected to listen on 127.0.0.1");
        let open = listener.local_addr().expect("expected a local address");
        let closed = {
            let spare = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("expected to listen on 127.0.0.1");
            spare.local_addr().expect("expected a local address")
        };
        let tcp = |address| {
            Checker::Tcp(TcpChecker {
                address,
                ..TcpChecker::default()
            })
        };
        let report = first(tcp(open), lo()).await;
        expect(&report, true, "connected");
        assert_eq!(report.id, format!("tcp:{open}"));
        let report = first(tcp(closed), lo()).await;
        expect(&report, false, "cannot connect");
    }

    /// Serves `status` to every request on 127.0.0.1, until dropped.
    struct Responder {
        address: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Responder {
        async fn start(status: u16) -> Responder {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("expected to listen on 127.0.0.1");
            let address = listener.local_addr().expect("expected a local address");
            let task = tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let response = format!(
                            "HTTP/1.1 {status} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Responder { address, task }
        }
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn http_checker_compares_the_status() {
        let healthy = Responder::start(200).await;
        let sick = Responder::start(503).await;
        let http = |address: SocketAddr| {
            Checker::Http(HttpChecker {
                url: format!("http://{address}/health"),
                ..HttpChecker::default()
            })
        };
        let report = first(http(healthy.address), lo()).await;
        expect(&report, true, "status 200");
        let report = first(http(sick.address), lo()).await;
        expect(&report, false, "status 503, expected 200");
    }

    #[tokio::test]
    async fn command_checker_takes_exit_status_zero_as_healthy() {
        let long = Duration::from_secs(5);
        expect(
            &first(command("/bin/true", &[], long), lo()).await,
            true,
            "status 0",
        );
        let report = first(command("/bin/false", &[], long), lo()).await;
        expect(&report, false, "exit status 1");
        assert_eq!(report.action, CheckerAction::Stopstart);
        expect(
            &first(command("/nonexistent/check", &[], long), lo()).await,
            false,
            "cannot run /nonexistent/check",
        );
    }

    #[tokio::test]
    async fn command_checker_kills_a_command_past_its_timeout() {
        let dir = TestDir::new("cmdtimeout");
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
        let started = std::time::Instant::now();
        let report = first(
            command("/bin/sh", &["-c", &script], Duration::from_millis(300)),
            lo(),
        )
        .await;
        expect(&report, false, "did not exit within 300ms: killed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "expected the check to end soon after its timeout, it took {:?}",
            started.elapsed()
        );
        let pid: i32 = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected the command's pid in {}", pidfile.display()));
        let deadline = std::time::Instant::now() + PATIENCE;
        while running(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !running(pid),
            "expected the timed-out command {pid} to be killed"
        );
    }

    #[tokio::test]
    async fn interface_checker_sees_lo_up_and_a_missing_interface_down() {
        let interface = |name: &str| {
            Checker::Interface(InterfaceChecker {
                name: name.to_owned(),
                ..InterfaceChecker::default()
            })
        };
        let report = first(interface("lo"), lo()).await;
        expect(&report, true, "lo is up");
        assert_eq!(report.action, CheckerAction::Wait);
        expect(
            &first(interface("halo-none0"), lo()).await,
            false,
            "no interface halo-none0",
        );
    }

    #[tokio::test]
    async fn vip_checker_finds_addresses_on_the_modules_interface() {
        let vip = Checker::Vip(VipChecker::default());
        let report = first(vip.clone(), lo()).await;
        expect(&report, true, "127.0.0.1 on lo");
        assert_eq!(report.id, "vip:127.0.0.1");
        let missing = CheckerContext {
            interface: "lo".to_owned(),
            vip_interface: "lo".to_owned(),
            vips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99)),
            ],
        };
        expect(
            &first(vip, missing).await,
            false,
            "127.0.0.99 missing from lo",
        );
    }

    /// A command checker whose result is the presence of `flag`, counting its runs in `count`.
    fn flag_checker(flag: &std::path::Path, count: &std::path::Path) -> Checker {
        let script = format!("echo x >> {}; test -e {}", count.display(), flag.display());
        command("/bin/sh", &["-c", &script], Duration::from_secs(5))
    }

    fn runs(count: &std::path::Path) -> usize {
        fs::read_to_string(count)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn checker_reports_only_when_the_result_changes() {
        let dir = TestDir::new("change");
        let flag = dir.path().join("flag");
        let count = dir.path().join("count");
        let mut checker = Running::start(flag_checker(&flag, &count), lo(), true);
        expect(&checker.next().await, false, "exit status 1");
        let before = runs(&count);
        checker
            .quiet_for("while the result stays the same", FAST * 15)
            .await;
        assert!(
            runs(&count) > before,
            "expected the checker to go on checking, it ran {} times in all",
            runs(&count)
        );
        fs::write(&flag, "").expect("expected to create the flag");
        expect(&checker.next().await, true, "status 0");
        fs::remove_file(&flag).expect("expected to remove the flag");
        expect(&checker.next().await, false, "exit status 1");
    }

    #[tokio::test]
    async fn switched_off_checker_checks_and_reports_nothing_then_starts_afresh() {
        let dir = TestDir::new("switch");
        let flag = dir.path().join("flag");
        let count = dir.path().join("count");
        fs::write(&flag, "").expect("expected to create the flag");
        let mut checker = Running::start(flag_checker(&flag, &count), lo(), false);
        checker.quiet_for("while switched off", FAST * 15).await;
        assert_eq!(runs(&count), 0, "expected no check while switched off");
        checker.switch.send_replace(true);
        expect(&checker.next().await, true, "status 0");
        checker.switch.send_replace(false);
        // A check already under way when the switch went off may still finish.
        let settled = runs(&count);
        checker.quiet_for("while switched off", FAST * 15).await;
        assert!(
            runs(&count) <= settled + 1,
            "expected checks to stop when switched off, saw {} after {settled}",
            runs(&count)
        );
        checker.switch.send_replace(true);
        expect(&checker.next().await, true, "status 0");
    }

    #[test]
    fn stat_lines_give_comm_and_state_even_with_parentheses_in_comm() {
        assert_eq!(
            parse_stat(b"42 (a) b)) S 1 42 42 0"),
            Some((&b"a) b)"[..], b'S'))
        );
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(command_line(b"sleep\x00600\x00"), "sleep 600");
    }
}
