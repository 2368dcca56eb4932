//! Running the lab's own tools (`ip`, `nft`) with errors that say what failed.

use std::{
    io::Write,
    process::{Command, Stdio},
    thread,
};

use anyhow::{ensure, Context, Result};

/// `program arg arg…` of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with `input` on its stdin; fails with its stderr
/// unless it exits 0, and returns its stdout.
pub(crate) fn run_checked(cmd: &mut Command, input: &str) -> Result<String> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start `{what}`"))?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    let output = thread::scope(|scope| {
        // Fed from a thread so that a long input cannot deadlock against a
        // full stdout pipe. A write error means the tool exited early, which
        // its status and stderr explain better.
        scope.spawn(move || stdin.write_all(input.as_bytes()));
        child.wait_with_output()
    })
    .with_context(|| format!("wait for `{what}`"))?;
    ensure!(
        output.status.success(),
        "`{what}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip args…` in the caller's network namespace.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run_checked(Command::new("ip").args(args), "")
}

/// Runs the `ip` commands of `script`, one a line, in network namespace
/// `netns`.
pub(crate) fn ip_batch(netns: &str, script: &str) -> Result<()> {
    run_checked(
        Command::new("ip").args(["-netns", netns, "-batch", "-"]),
        script,
    )
    .with_context(|| format!("in network namespace {netns}, run the ip batch:\n{script}"))?;
    Ok(())
}
