//! `cargo xtask`: halo's set-up and test automation.

mod bench;
mod chaos;
mod cmd;
mod demo;
mod fuzz;
mod lab_program;
mod package;
mod setup;
mod step;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Set-up and test automation for halo.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and mount what building and testing need (idempotent; needs root).
    Setup,
    /// Set up, then run fmt, clippy, the unit tests and the lab tests (needs root).
    Test(test::TestArgs),
    /// Set up, build halo in release mode, then run a bench in the lab and
    /// print its figures (needs root).
    Bench(bench::BenchArgs),
    /// Set up, build halo, then run the lab demo: a 3-node farm serving HTTP
    /// on a VIP, a live view of which node answers, a node killed and
    /// brought back; Ctrl-C removes the lab (needs root).
    Demo(demo::DemoArgs),
    /// Set up, build halo in release mode, then run a randomized fault
    /// campaign against a lab cluster (farm and mirror under load) and
    /// check its invariants; `--seed` replays a campaign (needs root).
    Chaos(chaos::ChaosArgs),
    /// Run the libFuzzer targets of `fuzz/` for a while each and print
    /// their executions; fails on a crash, naming the input (nightly,
    /// cargo-fuzz: see `cargo xtask setup`).
    Fuzz(fuzz::FuzzArgs),
    /// Build halo in release mode and a Debian package of it (binary, systemd
    /// unit, default configuration, man pages, completions) with dpkg-deb.
    Package(package::PackageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Setup => setup::run(),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Package(args) => package::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            step::report(&error);
            ExitCode::FAILURE
        }
    }
}
