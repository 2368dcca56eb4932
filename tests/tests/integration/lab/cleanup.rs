//! Nothing of a lab outlives it: not after a normal drop, not after a panic,
//! and not after its process was killed (the next lab sweeps it).

use std::{
    convert::Infallible,
    fs::File,
    io::{BufRead, BufReader, Write},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use halo_tests::lab::{Lab, LabBuilder, LabProcess};
use nix::{
    fcntl::OFlag,
    sys::{
        signal::{kill, Signal},
        wait::waitpid,
    },
    unistd::{fork, pause, pipe2, ForkResult},
};

use super::{leftovers, namespace_inodes, output, processes_in, ProcessId};

/// A private path no real machine has, for the lab to create as a
/// mountpoint (one for each test, as labs only remove unused ones).
fn probe_path(label: &str) -> PathBuf {
    Path::new("/var/lib")
        .join(format!("halo-lab-probe-{label}"))
        .join("app")
}

/// What a lab left behind for the tests below to check once it is gone.
struct Trace {
    prefix: String,
    namespaces: Vec<u64>,
    processes: Vec<ProcessId>,
    /// The outermost directory the lab had to create for its probe path.
    mountpoint: PathBuf,
}

/// Builds a lab with two networks, a probe private path and, in each host, a
/// process owned by a [`LabProcess`] and an orphaned one that only the lab
/// can kill.
fn busy_lab(label: &str) -> (Lab, Vec<LabProcess>, Trace) {
    let lab = LabBuilder::new(label)
        .hosts(&["n1", "n2"])
        .networks(2)
        .private_path(probe_path(label))
        .build()
        .expect("build lab");
    let switch = lab.switch_netns();
    let bridges = output(
        "ip",
        &["-n", switch, "-o", "link", "show", "type", "bridge"],
    );
    assert!(
        bridges.contains(" br0:") && bridges.contains(" br1:"),
        "expected the switch to hold bridges br0 and br1, found:\n{bridges}"
    );
    let mut owned = Vec::new();
    let mut processes = Vec::new();
    for host in lab.hosts() {
        let sleeper = host
            .spawn("sleeper", Command::new("sleep").arg("1000"))
            .expect("spawn sleep");
        processes.push(ProcessId::of(sleeper.pid()));
        owned.push(sleeper);
        let orphan = host
            .sh("sleep 1000 >/dev/null 2>&1 & echo $!")
            .expect("start an orphaned sleep");
        processes.push(ProcessId::of(orphan.trim().parse().expect("a pid")));
    }
    let trace = Trace {
        prefix: lab.prefix().to_owned(),
        namespaces: namespace_inodes(&lab),
        processes,
        mountpoint: probe_path(label)
            .parent()
            .expect("probe path has a parent")
            .to_owned(),
    };
    let seen = leftovers(&trace.prefix);
    assert!(
        seen.iter()
            .any(|item| item.starts_with("network namespace"))
            && seen.iter().any(|item| item.starts_with("mount"))
            && seen.iter().any(|item| item.starts_with("directory")),
        "expected the live lab's namespaces, mounts and directory to be found, found {seen:#?}"
    );
    (lab, owned, trace)
}

/// Asserts that nothing of the lab traced by `trace` remains.
fn assert_all_gone(trace: &Trace) {
    let left = leftovers(&trace.prefix);
    assert!(
        left.is_empty(),
        "expected nothing of {} left, found {left:#?}",
        trace.prefix
    );
    let inside = processes_in(&trace.namespaces);
    assert!(
        inside.is_empty(),
        "expected no process in the lab's namespaces, found {inside:?}"
    );
    let running: Vec<_> = trace.processes.iter().filter(|p| p.is_running()).collect();
    assert!(
        running.is_empty(),
        "expected the lab's processes dead, found {running:?} running"
    );
    assert!(
        !trace.mountpoint.exists(),
        "expected the lab's mountpoint {} removed from the real machine, it is still there",
        trace.mountpoint.display()
    );
}

#[test]
fn dropping_a_lab_removes_everything_it_made() {
    let (lab, sleepers, trace) = busy_lab("drop");
    drop(lab);
    // The lab killed even the processes its caller still owns.
    assert_all_gone(&trace);
    drop(sleepers);
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    let traced = Mutex::new(None);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let (_lab, _sleepers, trace) = busy_lab("panic");
        *traced.lock().unwrap() = Some(trace);
        panic!("a test failing with its lab up");
    }));
    assert!(
        outcome.is_err(),
        "expected the closure to panic, it returned"
    );
    let trace = traced
        .into_inner()
        .unwrap()
        .expect("the lab was built before the panic");
    assert_all_gone(&trace);
}

#[test]
fn a_new_lab_sweeps_the_leftovers_of_a_crashed_run() {
    let (report_rx, report_tx) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    // SAFETY: the child never returns into the test harness: it builds a lab
    // (files, mounts, child processes) and pauses until killed, or _exits.
    // The lab tests run one at a time, so no other test thread holds a lock
    // the child could need.
    let child = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(report_rx);
            let mut report = File::from(report_tx);
            let failure = match panic::catch_unwind(AssertUnwindSafe(|| crashed_run(&mut report))) {
                Ok(Ok(never)) => match never {},
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => "it panicked".to_owned(),
            };
            let _ = writeln!(report, "error: {failure}");
            // SAFETY: _exit ends the forked child without running the
            // parent's atexit handlers or destructors.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(report_tx);
    let mut report = String::new();
    let read = BufReader::new(File::from(report_rx)).read_line(&mut report);
    kill(child, Signal::SIGKILL).expect("SIGKILL the crashed run");
    waitpid(child, None).expect("reap the crashed run");
    read.expect("read the crashed run's report");
    let (prefix, sleeper) = report
        .trim()
        .split_once(' ')
        .filter(|_| !report.starts_with("error:"))
        .unwrap_or_else(|| panic!("expected `PREFIX PID` from the crashed run, got {report:?}"));
    let sleeper = ProcessId::of(sleeper.parse().expect("a pid"));
    let before = leftovers(prefix);
    assert!(
        !before.is_empty() && sleeper.is_running(),
        "expected the killed run to leave its lab behind, found {before:#?} and process {} running: {}",
        sleeper.pid,
        sleeper.is_running()
    );

    let _next = LabBuilder::new("after_crash")
        .host("n1")
        .build()
        .expect("build the next lab");

    let after = leftovers(prefix);
    assert!(
        after.is_empty(),
        "expected the next lab to sweep {prefix}, found {after:#?}"
    );
    assert!(
        !sleeper.is_running(),
        "expected the crashed run's process {} killed by the sweep, it still runs",
        sleeper.pid
    );
}

/// In the forked child: builds a lab with two networks and a running
/// process, reports `PREFIX PID`, and waits to be killed.
fn crashed_run(report: &mut File) -> anyhow::Result<Infallible> {
    let lab = LabBuilder::new("crashed_run")
        .host("n1")
        .networks(2)
        .build()?;
    let sleeper = lab
        .host("n1")
        .spawn("sleeper", Command::new("sleep").arg("1000"))?;
    writeln!(report, "{} {}", lab.prefix(), sleeper.pid())?;
    loop {
        pause();
    }
}
