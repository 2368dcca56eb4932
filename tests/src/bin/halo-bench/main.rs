//! `halo-bench`: halo's performance measurements in the lab, run by
//! `cargo xtask bench …`, which builds `halo` and sets `HALO_BIN`.
//!
//! Each bench prints its figures against the targets and baselines it
//! measures in the same run; missing a target is a finding, not a failure:
//! the exit status is non-zero only when the bench itself could not run.

mod daemon_log;
mod detect;
mod load;
mod stats;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

/// halo's benches (needs root: they build network-namespace labs).
#[derive(Parser)]
#[command(name = "halo-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Failure detection: time from SIGKILL of a peer's daemon to its
    /// `peer down`, and false detections with every core saturated.
    Detect(DetectArgs),
    /// Spins on one core until killed (the CPU load of `detect`).
    #[command(name = load::HOG_COMMAND, hide = true)]
    Hog,
}

/// Options of `halo-bench detect`.
#[derive(clap::Args, Debug)]
struct DetectArgs {
    /// Kill-and-detect runs per heartbeat setting.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// How long every core stays saturated while false detections are
    /// counted, e.g. `60s`, `10m`; `0s` skips that part.
    #[arg(long, default_value = "10m", value_parser = stats::parse_duration)]
    stress_duration: Duration,
    /// Busy-loop processes per core during the stress window.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    hogs_per_core: u32,
    /// Directory to copy the daemons' logs into at the end, for a look at
    /// outliers.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Detect(args) => detect::run(&detect::Options {
            runs: args.runs,
            stress_duration: args.stress_duration,
            hogs_per_core: args.hogs_per_core as usize,
            save_logs: args.save_logs,
        }),
        Bench::Hog => load::spin(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("halo-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
