//! Scripts that hang are ended by their timeouts: a start script with all
//! it started, and a graceful stop by the forced call that follows it.

use std::{
    fs,
    time::{Duration, Instant},
};

use halo::{
    daemon::module_log::LogEntry,
    fsm::{Event, ScriptKind},
};
use halo_tests::{
    cluster::{install_script, module_in, Cluster, Timing},
    lab::{self, wait_until, LabBuilder, Signal},
};

use super::processes::alive;

/// A hang-catcher for anything these tests wait for: the timeouts under
/// test are 1 s, and a process group gets 2 s between SIGTERM and SIGKILL.
const BOUND: Duration = Duration::from_secs(20);
/// Where the hanging start script writes its own pid and its child's.
const PIDS_FILE: &str = "/var/lib/app/hang.pids";

/// A farm module named web whose `[module.scripts]` table is `scripts`.
fn module(scripts: &str) -> String {
    format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n\n[module.scripts]\n{scripts}",
        lab::lab_ipv4(200)
    )
}

/// The entries of `log` from `source` whose text starts with `prefix`.
fn entries<'l>(log: &'l [LogEntry], source: &str, prefix: &str) -> Vec<&'l str> {
    log.iter()
        .filter(|e| e.source == source && e.text.starts_with(prefix))
        .map(|e| e.text.as_str())
        .collect()
}

#[test]
fn a_start_script_that_hangs_is_killed_with_its_child_and_the_module_stops() {
    let lab = LabBuilder::new("hangstart")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let host = lab.host("a");
    // The child ignores SIGTERM, as a stuck application may: only the
    // SIGKILL that ends the grace period can stop it.
    install_script(
        host,
        "/var/lib/app/start_both",
        &format!(
            "#!/bin/sh\n\
             sh -c 'trap \"\" TERM; exec sleep 3600' &\n\
             echo \"$$ $!\" > {PIDS_FILE}\n\
             exec sleep 3600\n"
        ),
    )
    .unwrap();
    let scripts = "start_both = \"/var/lib/app/start_both\"\nstart_timeout = \"1s\"\n";
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &module(scripts)).unwrap();
    cluster.start("a").unwrap();

    let mut pids = Vec::new();
    wait_until(BOUND, "the start script to record its pids", || {
        let text = fs::read_to_string(host.outside_path(PIDS_FILE)).unwrap_or_default();
        pids = text
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .collect();
        Ok(pids.len() == 2)
    })
    .unwrap();
    let started = Instant::now();
    assert!(
        pids.iter().all(|&pid| alive(pid)),
        "expected the script and its child {pids:?} running at first"
    );

    cluster
        .wait_status("a", BOUND, "web stopped after its start failed", |s| {
            module_in(s, "web", "STOP", "ready")
        })
        .unwrap();
    wait_until(BOUND, "the script and its child to be gone", || {
        Ok(!pids.iter().any(|&pid| alive(pid)))
    })
    .unwrap_or_else(|error| {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        panic!("{error:#}: {left:?} of {pids:?} still run")
    });
    let took = started.elapsed();
    eprintln!(
        "start_both and its child gone {} ms after they started (timeout 1 s, grace 2 s)",
        took.as_millis()
    );
    assert!(
        took < BOUND,
        "expected the hanging start ended well within {BOUND:?}, took {took:?}"
    );

    let log = cluster.module_log("a", "web").unwrap();
    let timed_out = entries(
        &log,
        "script:start_both",
        "timed out: its process group was killed",
    );
    assert_eq!(
        timed_out.len(),
        1,
        "expected one start_both timing out, saw the log:\n{log:#?}"
    );
    let start_failed = Event::StartFailed(ScriptKind::StartBoth).to_string();
    assert!(
        log.iter()
            .any(|e| e.source == "fsm" && e.text == start_failed),
        "expected {start_failed:?} in the log:\n{log:#?}"
    );
    assert_eq!(
        cluster.daemon("a").unwrap().try_wait().unwrap(),
        None,
        "expected the daemon to keep running with the module stopped"
    );
}

#[test]
fn a_graceful_stop_that_hangs_is_followed_by_the_forced_stop_and_the_daemon_exits() {
    let lab = LabBuilder::new("hangstop")
        .hosts(&["a", "b"])
        .build()
        .unwrap();
    let host = lab.host("a");
    install_script(host, "/var/lib/app/start_both", "#!/bin/sh\nexit 0\n").unwrap();
    // Both ways of telling the forced call are checked: the argument and the
    // environment.
    install_script(
        host,
        "/var/lib/app/stop_both",
        "#!/bin/sh\n\
         if [ \"$4\" = force ] && [ \"$HALO_FORCE\" = 1 ]; then\n\
             echo \"forced stop\"\n\
             exit 0\n\
         fi\n\
         echo \"graceful stop: hanging\"\n\
         exec sleep 3600\n",
    )
    .unwrap();
    let scripts = "start_both = \"/var/lib/app/start_both\"\n\
                   stop_both = \"/var/lib/app/stop_both\"\n\
                   nicestoptimeout = \"1s\"\n";
    let nice_stop = Duration::from_secs(1);
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &module(scripts)).unwrap();
    cluster.start("a").unwrap();
    cluster
        .wait_status("a", BOUND, "web UP and ready", |s| {
            module_in(s, "web", "UP", "ready")
        })
        .unwrap();

    let signalled = Instant::now();
    cluster
        .daemon("a")
        .unwrap()
        .signal(Signal::SIGTERM)
        .unwrap();
    let status = cluster.daemon("a").unwrap().wait_timeout(BOUND).unwrap();
    let took = signalled.elapsed();
    eprintln!(
        "daemon exited {} ms after SIGTERM (nicestoptimeout 1 s)",
        took.as_millis()
    );
    assert!(
        status.success(),
        "expected the daemon to exit 0 after SIGTERM, saw {status}"
    );
    assert!(
        took >= nice_stop,
        "expected the daemon to wait out the graceful stop's {nice_stop:?}, it exited after {took:?}"
    );

    let log = cluster.module_log("a", "web").unwrap();
    let calls = entries(&log, "script:stop_both", "");
    let at = |prefix: &str| {
        calls
            .iter()
            .position(|text| text.starts_with(prefix))
            .unwrap_or_else(|| panic!("expected a stop_both line {prefix:?}, saw {calls:#?}"))
    };
    let graceful = at("running /var/lib/app/stop_both stop_both UP STOP");
    let timed_out = at("timed out: its process group was killed");
    let forced = at("running /var/lib/app/stop_both stop_both UP STOP force");
    let forced_ok = at("ok after");
    assert!(
        graceful < timed_out && timed_out < forced && forced < forced_ok,
        "expected the graceful call, its timeout, the forced call and its success in this order, saw {calls:#?}"
    );
    assert_eq!(
        entries(&log, "script:stop_both:stdout", ""),
        ["graceful stop: hanging", "forced stop"],
        "expected the output of both calls in the log"
    );
    let failed = Event::ScriptFailed {
        kind: ScriptKind::StopBoth,
        forced: false,
    }
    .to_string();
    assert!(
        log.iter().any(|e| e.source == "fsm" && e.text == failed),
        "expected {failed:?} in the log:\n{log:#?}"
    );
    let daemon_log = cluster.log("a").unwrap();
    assert!(
        daemon_log.contains("script did not succeed") && daemon_log.contains("stopped"),
        "expected the daemon's log to report the graceful stop's failure and its own stop:\n{daemon_log}"
    );
}
