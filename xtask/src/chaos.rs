//! `cargo xtask chaos`: set-up, release builds, then the fault campaign
//! (`halo-chaos`, in the `tests` crate) against that `halo`
//! (`lab_program.rs` says why it is built this way). `cargo xtask test`
//! builds `halo-chaos` but does not run a campaign yet: campaigns still
//! find replication bugs (see the report of issue 7), and a red CI lands
//! nothing.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::lab_program::{logs_dir, LabProgram};
use crate::step::Steps;

/// Options of `cargo xtask chaos`.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Seed of the fault generator: the same seed draws the same faults
    /// (default: drawn from the clock and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults.
    #[arg(long, default_value_t = 600)]
    duration: u64,
}

/// Runs set-up, builds, and runs the campaign.
pub fn run(args: &ChaosArgs) -> Result<()> {
    crate::setup::require_root()?;
    let mut steps = Steps::new();
    let built = LabProgram::build(&mut steps, "halo-chaos");
    steps.print_summary();
    let mut campaign = built?.command();
    if let Some(seed) = args.seed {
        campaign.args(["--seed", &seed.to_string()]);
    }
    campaign.args(["--duration", &args.duration.to_string()]);
    run_campaign(campaign)
}

/// Runs a campaign with its report and the daemons' logs under
/// `target/chaos/`.
fn run_campaign(mut campaign: Command) -> Result<()> {
    let dir = logs_dir("chaos".as_ref());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let report = dir.join(format!("chaos-{stamp}.md"));
    let logs = dir.join(format!("logs-{stamp}"));
    campaign
        .arg("--report")
        .arg(&report)
        .arg("--save-logs")
        .arg(&logs);
    println!("  $ {}", cmd::display(&campaign));
    let status = campaign.status().context("start halo-chaos")?;
    if !status.success() {
        bail!(
            "the chaos campaign failed ({status}): report {}, the daemons' logs in {}",
            report.display(),
            logs.display()
        );
    }
    Ok(())
}
