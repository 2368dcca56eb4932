//! `cargo xtask demo`: set-up, release builds, then the demo program
//! (`halo-demo`, in the `tests` crate) against that `halo`
//! (`lab_program.rs` says why it is built this way).

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{signal, SigHandler, Signal};

use crate::lab_program::{logs_dir, LabProgram};
use crate::step::Steps;

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
    crate::setup::require_root()?;
    let mut steps = Steps::new();
    let built = LabProgram::build(&mut steps, "halo-demo");
    steps.print_summary();
    demo(&built?, args)
}

/// Runs the demo in the foreground. Ctrl-C goes to the whole foreground
/// process group: xtask ignores it and waits, so that the prompt comes back
/// only once the demo has removed its lab.
fn demo(program: &LabProgram, args: &DemoArgs) -> Result<()> {
    let save_logs = logs_dir("demo".as_ref());
    let mut demo = program.command();
    demo.arg("--save-logs").arg(&save_logs);
    if let Some(secs) = args.duration {
        demo.args(["--duration", &secs.to_string()]);
    }
    let mut child = demo
        .spawn()
        .with_context(|| format!("start {}", program.path().display()))?;
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
