//! `cargo xtask fuzz`: runs the libFuzzer targets of `fuzz/` (cargo-fuzz,
//! nightly) for a while each and says how many inputs each tried; fails on
//! the first crash, naming the input that caused it.
//!
//! New inputs a run finds go to a scratch corpus under the target directory:
//! the seed corpus in `fuzz/corpus/<target>/` is read, never grown.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::step::{HintExt as _, Steps};
use crate::test::{target_dir, workspace_root};

/// Every fuzz target, as `fuzz/Cargo.toml` lists them.
pub const TARGETS: &[&str] = &[
    "heartbeat_frame",
    "replication_message",
    "replication_channel",
    "witness_protocol",
    "config",
    "api_body",
];

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Fuzz only this target (default: every one).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Option<String>,
}

/// Builds and runs the chosen targets, then prints a summary.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let mut steps = Steps::new();
    let targets: Vec<&str> = match &args.target {
        Some(target) => vec![target.as_str()],
        None => TARGETS.to_vec(),
    };
    let result = run_targets(&mut steps, &targets, args.time);
    steps.print_summary();
    result
}

/// Builds the fuzz targets, then runs each of `targets` for `seconds`, one
/// step each.
pub fn run_targets(steps: &mut Steps, targets: &[&str], seconds: u64) -> Result<()> {
    let root = workspace_root();
    let scratch = target_dir(&root).join("fuzz");
    let cargo_fuzz = || {
        let mut cargo = cmd::new("cargo");
        cargo.current_dir(&root).args(["+nightly", "fuzz"]);
        cargo
    };
    steps.run("fuzz build", || {
        cmd::run(cargo_fuzz().arg("build"))
            .map(|()| "built")
            .hint("cargo-fuzz and the nightly come from `cargo xtask setup`")
    })?;
    for &target in targets {
        steps.run(format!("fuzz {target}"), || {
            let corpus = scratch.join("corpus").join(target);
            fs::create_dir_all(&corpus)
                .with_context(|| format!("cannot create {}", corpus.display()))?;
            let log = scratch.join(format!("{target}.log"));
            let mut run = cargo_fuzz();
            // libFuzzer adds what it finds to the first corpus only.
            run.args(["run", target])
                .arg(&corpus)
                .arg(root.join("fuzz").join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-print_final_stats=1");
            fuzz_one(&mut run, target, &log)
        })?;
    }
    Ok(())
}

/// Runs one target with its output in `log`; its executions, or where the
/// crash input is.
fn fuzz_one(run: &mut std::process::Command, target: &str, log: &Path) -> Result<String> {
    println!("  $ {} (output in {})", cmd::display(run), log.display());
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = run
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("cannot share the log file")?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start `{}`", cmd::display(run)))?;
    let output =
        fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let executions = final_stat(&output, "stat::number_of_executed_units");
    if status.success() {
        return match executions {
            Some(executions) => Ok(format!("{executions} executions, no crash")),
            None => bail!("libFuzzer printed no final stats; see {}", log.display()),
        };
    }
    // The panic and libFuzzer's report are the last lines.
    let tail: Vec<&str> = output.lines().rev().take(25).collect();
    for line in tail.iter().rev() {
        eprintln!("  | {line}");
    }
    match crash_input(&output) {
        Some(input) => Err(anyhow::anyhow!(
            "{target} crashed ({status}) on the input saved at {}",
            input.display()
        ))
        .hint(format!(
            "reproduce with `cargo +nightly fuzz run {target} {}`; fix the parser and add a \
             regression test named after what broke",
            input.display()
        )),
        None => Err(anyhow::anyhow!(
            "{target} failed ({status}) without saving a crash input"
        ))
        .hint(format!("see {}", log.display())),
    }
}

/// The value of libFuzzer's final `name: value` statistic.
fn final_stat(output: &str, name: &str) -> Option<u64> {
    output.lines().rev().find_map(|line| {
        let value = line.trim().strip_prefix(name)?.strip_prefix(':')?;
        value.trim().parse().ok()
    })
}

/// Where libFuzzer saved the input that crashed: `… Test unit written to PATH`.
fn crash_input(output: &str) -> Option<PathBuf> {
    output.lines().rev().find_map(|line| {
        let (_, path) = line.split_once("Test unit written to ")?;
        Some(PathBuf::from(path.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_executions_and_the_crash_input_from_libfuzzer_output() {
        let output = "#1024\tpulse  cov: 10\n\
            ==1== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/w/fuzz/artifacts/config/'; \
            Test unit written to /w/fuzz/artifacts/config/crash-0a1b\n\
            stat::number_of_executed_units: 123456\n\
            stat::average_exec_per_sec:     2057\n";
        assert_eq!(
            final_stat(output, "stat::number_of_executed_units"),
            Some(123_456)
        );
        assert_eq!(
            crash_input(output),
            Some(PathBuf::from("/w/fuzz/artifacts/config/crash-0a1b"))
        );
        assert_eq!(
            final_stat("no stats", "stat::number_of_executed_units"),
            None
        );
    }
}
