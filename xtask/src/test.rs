//! `cargo xtask test`: set-up, then every check and test halo has, in order
//! of cost, stopping at the first failure.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::chaos;
use crate::cmd;
use crate::fuzz;
use crate::setup;
use crate::step::{HintExt as _, Steps};

/// How long `cargo xtask test` fuzzes each target (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 10;

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Passed to the lab test binary, e.g. a filter: `cargo xtask test -- farm::`
    #[arg(last = true)]
    lab_args: Vec<String>,
}

/// Runs set-up and every step, then prints a summary of what ran.
pub fn run(args: &TestArgs) -> Result<()> {
    // Before anything slow: the lab cannot run without root.
    setup::require_root()?;
    let mut steps = Steps::new();
    let result = run_steps(&mut steps, args);
    steps.print_summary();
    result
}

/// The steps of `run`, recorded in `steps` for the summary.
fn run_steps(steps: &mut Steps, args: &TestArgs) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let cargo = || {
        let mut cargo = cmd::new("cargo");
        cargo.current_dir(&root);
        cargo
    };

    steps.run("setup", || setup::run().map(|()| "done"))?;

    steps.run("fmt", || {
        cmd::run(cargo().args(["fmt", "--all", "--check"]))
            .map(|()| "formatted")
            .hint("run `cargo fmt --all` and review the diff")
    })?;

    steps.run("clippy (userspace)", || {
        cmd::run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "halo-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .map(|()| "no warnings")
        .hint("fix the lints above")
    })?;

    steps.run("clippy (ebpf)", || {
        // Linted for the BPF target, as they ship: code under
        // `cfg(target_arch = "bpf")` is invisible on the host. Checking needs
        // no linker, only `core` built from rust-src. A target directory of
        // its own keeps the nightly from churning the stable one's cache.
        cmd::run(
            cargo()
                .args(["+nightly", "clippy", "--package", "halo-ebpf"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .arg("--target-dir")
                .arg(target.join("clippy-ebpf"))
                .args(["--", "-D", "warnings"]),
        )
        .map(|()| "no warnings")
        .hint("fix the lints above")
    })?;

    steps.run("unit tests", || {
        cmd::run(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "halo-ebpf",
            "--exclude",
            "halo-tests",
        ]))
        .map(|()| "passed")
        .hint("rerun one with `cargo test -p <crate> <name> -- --nocapture`")
    })?;

    // A short run of every fuzz target: catches a parser that panics on
    // what the seeds and a few seconds of mutation reach.
    fuzz::run_targets(steps, fuzz::TARGETS, FUZZ_SECONDS)?;

    steps.run("build halo", || {
        cmd::run(cargo().args([
            "build",
            "--package",
            "halo",
            "--package",
            "halo-tests",
            "--bin",
            "halo",
            "--bin",
            "halo-chaos",
        ]))
        .map(|()| "built")
        .hint("node/build.rs builds the eBPF object with bpf-linker: see `cargo xtask setup`")
    })?;

    steps.run("lab tests", || {
        // Lab tests start real daemons: give them the binary just built.
        cmd::run(
            cargo()
                .env("HALO_BIN", target.join("debug").join("halo"))
                .args(["test", "--package", "halo-tests", "--"])
                .arg("--test-threads=1")
                .args(&args.lab_args),
        )
        .map(|()| "passed")
        .hint(
            "rerun the failing ones with `cargo xtask test -- <filter> --nocapture` \
             to see the daemons' output",
        )
    })?;

    // A few minutes of the fault campaign (not when only some lab tests
    // were asked for).
    if args.lab_args.is_empty() {
        steps.run("chaos (short)", || {
            chaos::short_campaign(&target).hint(
                "replay it with `cargo xtask chaos --seed <seed>` (the report names the seed); \
                 HALO_CHAOS_SEED=<n> cargo xtask test draws other faults",
            )
        })?;
    }

    Ok(())
}

/// The workspace root: xtask's own manifest directory's parent.
pub(crate) fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace,
/// where cargo runs), else `target/`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}
