//! `cargo xtask chaos`: set-up, release builds, then the fault campaign
//! (`halo-chaos`, in the `tests` crate) against that `halo`
//! (`lab_program.rs` says why it is built this way). `cargo xtask test`
//! runs a short campaign (`short_campaign`) with its debug builds.

use std::path::Path;
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

/// Seconds of faults in `cargo xtask test`'s campaign.
const SHORT_SECONDS: u64 = 180;

/// The seed of `cargo xtask test`'s campaign, unless `HALO_CHAOS_SEED`
/// names another: the same faults on every run, so that a red CI replays.
const SHORT_SEED: u64 = 20261122;

/// `cargo xtask test`'s campaign: a few minutes of faults against the
/// debug `halo` in `target`.
pub fn short_campaign(target: &Path) -> Result<&'static str> {
    let seed = match std::env::var("HALO_CHAOS_SEED") {
        Ok(seed) => seed
            .parse::<u64>()
            .with_context(|| format!("HALO_CHAOS_SEED={seed:?} is not a number"))?,
        Err(_) => SHORT_SEED,
    };
    let debug = target.join("debug");
    let mut campaign = cmd::new(debug.join("halo-chaos"));
    campaign
        .current_dir(crate::test::workspace_root())
        .env("HALO_BIN", debug.join("halo"))
        .args(["--seed", &seed.to_string()])
        .args(["--duration", &SHORT_SECONDS.to_string()])
        .args(["--converge", "120"]);
    run_campaign(campaign).map(|()| "no violation")
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
