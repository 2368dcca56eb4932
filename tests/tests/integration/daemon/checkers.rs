//! A process checker brings a killed application back through the module's
//! scripts, and after `maxloop` restarts the next failure stops the module.

use std::{fs, time::Duration};

use halo::{
    daemon::module_log::LogEntry,
    fsm::{CheckerAction, Event},
};
use halo_tests::{
    cluster::{install_script, module_in, Cluster, Timing},
    lab::{self, wait_until, Host, LabBuilder},
};
use nix::sys::signal::{kill, Signal};

use super::processes::{alive, as_pid, comm, running};

/// How long a module may take to reach a state: a hang-catcher only.
const SETTLE: Duration = Duration::from_secs(20);
/// Where the application's pid lives inside the host.
const PID_FILE: &str = "/var/lib/app/app.pid";

/// The farm module of these tests: its application is `app`, a copy of
/// sleep at `/var/lib/app/<app>`, watched by a process checker.
fn module(app: &str) -> String {
    format!(
        r#"[[module]]
name = "web"
kind = "farm"
interface = "eth0"
vips = ["{vip}"]
maxloop = 2
loop_interval = "1h"

[[module.rule]]
proto = "tcp"
port = 80

[module.scripts]
start_both = "/var/lib/app/start_both"
stop_both = "/var/lib/app/stop_both"
start_timeout = "10s"

[[module.checker]]
kind = "process"
name = "{app}"
interval = "200ms"
action = "restart"
"#,
        vip = lab::lab_ipv4(200)
    )
}

/// Installs the application and its scripts on `host`. The application
/// leaves the script's session, so that it outlives the script as a daemon
/// does. start_both returns once the program runs under its own name: the
/// checker looks as soon as the start ends, and a fork not yet past its
/// exec would be a failure to restart. stop_both kills the application by
/// the pid it recorded, if that pid is still the application's.
fn install_app(host: &Host, app: &str) {
    fs::copy(
        "/bin/sleep",
        host.outside_path(format!("/var/lib/app/{app}")),
    )
    .unwrap();
    install_script(
        host,
        "/var/lib/app/start_both",
        &format!(
            "#!/bin/sh\n\
             setsid /var/lib/app/{app} 3600 </dev/null >/dev/null 2>&1 &\n\
             pid=$!\n\
             echo $pid > {PID_FILE}\n\
             while [ \"$(cat /proc/$pid/comm 2>/dev/null)\" != {app} ]; do sleep 0.01; done\n"
        ),
    )
    .unwrap();
    install_script(
        host,
        "/var/lib/app/stop_both",
        &format!(
            "#!/bin/sh\n\
             pid=$(cat {PID_FILE} 2>/dev/null) || exit 0\n\
             [ \"$(cat /proc/$pid/comm 2>/dev/null)\" = {app} ] && kill \"$pid\"\n\
             rm -f {PID_FILE}\n\
             exit 0\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_checker_restarts_a_killed_application_twice_then_maxloop_stops_the_module() {
    // Unique on the machine (every host sees every process in /proc), and
    // a kernel comm of at most 15 characters.
    let app = format!("happ{}", std::process::id());
    let lab = LabBuilder::new("checkers")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let host = lab.host("a");
    install_app(host, &app);
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &module(&app)).unwrap();
    cluster.start("a").unwrap();
    cluster
        .wait_status("a", SETTLE, "web UP and ready", |s| {
            module_in(s, "web", "UP", "ready")
        })
        .unwrap();

    let checker = format!("checker:process:{app}");
    let mut pid = app_pid(host, &app).expect("the application runs once web is UP");
    wait_for_log(&cluster, "the checker to see the application up", |log| {
        last_from(log, &checker).is_some_and(|e| e.text.starts_with("ok:"))
    });
    let early = cluster.module_log("a", "web").unwrap();
    assert!(
        !early
            .iter()
            .any(|e| e.text.starts_with("checker asked for")),
        "expected no restart before the application was killed, saw:\n{early:#?}"
    );
    for restart in 1..=2u32 {
        // The checker must have seen this instance running, or it would not
        // see it die: it reports changes only.
        wait_for_log(&cluster, "the checker to see the application up", |log| {
            last_from(log, &checker).is_some_and(|e| e.text.starts_with("ok:"))
        });
        kill(as_pid(pid), Signal::SIGKILL).unwrap();
        let restarted = Event::CheckerRestart {
            action: CheckerAction::Restart,
            count: restart,
        }
        .to_string();
        wait_for_log(&cluster, &format!("restart {restart} logged"), |log| {
            log.iter().any(|e| e.source == "fsm" && e.text == restarted)
        });
        let killed = pid;
        let respawned = wait_until(
            SETTLE,
            &format!("a new application after restart {restart}"),
            || Ok(app_pid(host, &app).is_some_and(|new| new != killed)),
        );
        if let Err(error) = respawned {
            panic!(
                "{error:#}; the module log:\n{:#?}",
                cluster.module_log("a", "web").unwrap()
            );
        }
        pid = app_pid(host, &app).unwrap();
        cluster
            .wait_status("a", SETTLE, "web UP and ready again", |s| {
                module_in(s, "web", "UP", "ready")
            })
            .unwrap();
        assert!(!alive(killed), "expected the killed instance {killed} gone");
    }

    wait_for_log(&cluster, "the checker to see the application up", |log| {
        last_from(log, &checker).is_some_and(|e| e.text.starts_with("ok:"))
    });
    kill(as_pid(pid), Signal::SIGKILL).unwrap();
    cluster
        .wait_status("a", SETTLE, "web stopped by maxloop", |s| {
            module_in(s, "web", "STOP", "ready")
        })
        .unwrap();

    let log = cluster.module_log("a", "web").unwrap();
    let fsm: Vec<&str> = log
        .iter()
        .filter(|e| e.source == "fsm")
        .map(|e| e.text.as_str())
        .collect();
    let restarts: Vec<String> = (1..=3)
        .map(|count| {
            Event::CheckerRestart {
                action: CheckerAction::Restart,
                count,
            }
            .to_string()
        })
        .collect();
    let maxloop = Event::MaxloopReached { maxloop: 2 }.to_string();
    let count = |text: &str| fsm.iter().filter(|t| **t == text).count();
    assert_eq!(
        (count(&restarts[0]), count(&restarts[1]), count(&restarts[2]), count(&maxloop)),
        (1, 1, 0, 1),
        "expected restarts 1 and 2 once, no restart 3, and maxloop reached once; the fsm log:\n{fsm:#?}"
    );
    let runs = |script: &str| {
        let source = format!("script:{script}");
        log.iter()
            .filter(|e| e.source == source && e.text.starts_with("running "))
            .count()
    };
    assert_eq!(
        (runs("start_both"), runs("stop_both")),
        (3, 3),
        "expected start_both run 3 times (start, 2 restarts) and stop_both 3 times \
         (2 restarts, the stop); the log:\n{log:#?}"
    );
    assert_eq!(
        running(&app),
        Vec::<u32>::new(),
        "expected no {app} process once maxloop stopped the module"
    );
    assert_eq!(
        cluster.daemon("a").unwrap().try_wait().unwrap(),
        None,
        "expected the daemon to keep running with the module stopped"
    );
}

/// Waits until `condition` holds on the module log of web on a.
fn wait_for_log(cluster: &Cluster<'_>, what: &str, mut condition: impl FnMut(&[LogEntry]) -> bool) {
    let mut last = Vec::new();
    let waited = wait_until(SETTLE, what, || {
        last = cluster.module_log("a", "web")?;
        Ok(condition(&last))
    });
    if let Err(error) = waited {
        panic!("{error:#}; the module log:\n{last:#?}");
    }
}

/// The latest entry of `log` from `source`.
fn last_from<'l>(log: &'l [LogEntry], source: &str) -> Option<&'l LogEntry> {
    log.iter().rev().find(|e| e.source == source)
}

/// The pid in the application's pid file, if that process runs and is the
/// application.
fn app_pid(host: &Host, app: &str) -> Option<u32> {
    let text = fs::read_to_string(host.outside_path(PID_FILE)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (alive(pid) && comm(pid).as_deref() == Some(app)).then_some(pid)
}
