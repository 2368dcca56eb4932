//! Processes inside hosts: spawning, output collection, killing, timeouts.

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    process::Command,
    time::{Duration, Instant},
};

use halo_tests::lab::{wait_until, LabBuilder};

use super::ProcessId;

#[test]
fn kill_host_kills_every_process_of_the_host_and_keeps_their_output() {
    let lab = LabBuilder::new("kill_host")
        .hosts(&["n1", "n2"])
        .build()
        .expect("build lab");
    let mut shell = lab
        .host("n1")
        .spawn(
            "shell",
            Command::new("sh").args(["-c", "echo started; sleep 1000 & echo \"child $!\"; wait"]),
        )
        .expect("spawn a shell in n1");
    let mut bystander = lab
        .host("n2")
        .spawn("bystander", Command::new("sleep").arg("1000"))
        .expect("spawn a sleep in n2");
    wait_until(
        Duration::from_secs(5),
        "the shell to report its child",
        || Ok(shell.log()?.contains("child ")),
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    let log = shell.log().expect("read the shell's log");
    let child: u32 = log
        .lines()
        .find_map(|line| line.strip_prefix("child ")?.parse().ok())
        .unwrap_or_else(|| panic!("expected a `child PID` line in the log, found {log:?}"));
    let child = ProcessId::of(child);

    lab.kill_host("n1").expect("kill host n1");

    let status = shell
        .wait_timeout(Duration::from_secs(5))
        .expect("the shell to be dead");
    assert_eq!(
        status.signal(),
        Some(9),
        "expected the shell killed by SIGKILL, got {status}"
    );
    assert!(
        !child.is_running(),
        "expected the shell's child {} killed too, it still runs",
        child.pid
    );
    let on_disk = fs::read_to_string(shell.log_path()).expect("read the log file");
    assert_eq!(
        on_disk,
        format!("started\nchild {}\n", child.pid),
        "log file {}",
        shell.log_path().display()
    );
    assert!(
        bystander.try_wait().expect("check the bystander").is_none(),
        "expected the process in n2 to survive killing n1, it exited"
    );
}

#[test]
fn a_restarted_process_logs_after_its_predecessor() {
    let lab = LabBuilder::new("relog")
        .host("n1")
        .build()
        .expect("build lab");
    let n1 = lab.host("n1");
    for word in ["first", "second"] {
        let mut process = n1
            .spawn("daemon", Command::new("echo").arg(word))
            .expect("spawn echo");
        process
            .wait_timeout(Duration::from_secs(5))
            .expect("echo to exit");
        assert_eq!(
            process.log().expect("read log"),
            format!("{word}\n"),
            "this run's own output"
        );
    }
    let all = fs::read_to_string(n1.state_dir().join("daemon.log")).expect("read daemon.log");
    assert_eq!(all, "first\nsecond\n", "the log file keeps both runs");
}

#[test]
fn run_fails_loudly_past_its_timeout() {
    let lab = LabBuilder::new("run_timeout")
        .host("n1")
        .build()
        .expect("build lab");
    let started = Instant::now();
    let error = lab
        .host("n1")
        .run_timeout(
            Command::new("sh").args(["-c", "echo waiting; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .expect_err("expected `sleep 30` to overrun a 300 ms timeout");
    let message = format!("{error:#}");
    assert!(
        message.contains("did not finish within") && message.contains("waiting"),
        "expected a timeout error with the output so far, got: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "expected the timeout to end the run early, it took {:?}",
        started.elapsed()
    );
}
