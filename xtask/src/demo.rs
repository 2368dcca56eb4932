//! `cargo xtask demo`: set-up, a release build of `halo` and of the demo
//! program (`halo-demo`, in the `tests` crate), then the demo against that
//! binary. As with the benches, xtask only drives cargo: it cannot depend on
//! `halo` or on the tests crate (see `bench.rs`).

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{signal, SigHandler, Signal};

use crate::cmd;
use crate::setup;
use crate::step::{HintExt as _, Steps};
use crate::test::{target_dir, workspace_root};

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds of live view (at least 30, to see the
    /// node come back) and exit 0 if the farm survived; without it the demo
    /// runs until Ctrl-C.
    #[arg(long, value_parser = clap::value_parser!(u64).range(30..))]
    duration: Option<u64>,
}

/// Runs set-up, builds, and runs the demo until Ctrl-C or `--duration`.
pub fn run(args: &DemoArgs) -> Result<()> {
    setup::require_root()?;
    let mut steps = Steps::new();
    let result = build(&mut steps);
    steps.print_summary();
    result?;
    demo(args)
}

fn build(steps: &mut Steps) -> Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut cargo = cmd::new("cargo");
        cargo.current_dir(&root);
        cargo
    };
    steps.run("setup", || setup::run().map(|()| "done"))?;
    steps.run("build halo (release)", || {
        cmd::run(cargo().args(["build", "--release", "--package", "halo"]))
            .map(|()| "built")
            .hint("node/build.rs builds the eBPF object with bpf-linker: see `cargo xtask setup`")
    })?;
    steps.run("build halo-demo (release)", || {
        cmd::run(cargo().args([
            "build",
            "--release",
            "--package",
            "halo-tests",
            "--bin",
            "halo-demo",
        ]))
        .map(|()| "built")
    })?;
    Ok(())
}

/// Runs the demo in the foreground. Ctrl-C goes to the whole foreground
/// process group: xtask ignores it and waits, so that the prompt comes back
/// only once the demo has removed its lab.
fn demo(args: &DemoArgs) -> Result<()> {
    let root = workspace_root();
    let release = target_dir(&root).join("release");
    let save_logs = target_dir(&root).join("demo");
    let mut demo = cmd::new(release.join("halo-demo"));
    demo.current_dir(&root)
        .env("HALO_BIN", release.join("halo"))
        .arg("--save-logs")
        .arg(&save_logs);
    if let Some(secs) = args.duration {
        demo.args(["--duration", &secs.to_string()]);
    }
    let mut child = demo
        .spawn()
        .with_context(|| format!("start {}", release.join("halo-demo").display()))?;
    // SAFETY: SIG_IGN installs no handler code. The child installs its own
    // handler, which replaces the ignored disposition it inherits.
    unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) }.context("ignore SIGINT")?;
    let status = child.wait().context("wait for halo-demo")?;
    if !status.success() {
        bail!(
            "halo-demo failed ({status}); the daemons' logs are in {}",
            save_logs.display()
        );
    }
    Ok(())
}
