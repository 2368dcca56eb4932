//! `halo-chaos`: the randomized fault campaign that `cargo xtask chaos`
//! runs (it builds `halo` and sets `HALO_BIN`). One lab holds a 3-node farm
//! serving HTTP under a client's probes and a 2-node mirror whose
//! application appends fsync-acknowledged records and churns files, with an
//! arbiter witness. Faults drawn from a seeded generator hit it one at a
//! time; after each, the campaign checks the invariants: never two serving
//! mirror nodes (seen from outside, through `ready.txt`), no acknowledged
//! record lost, identical mirror trees, one owner per farm bucket agreed by
//! every node, and the cluster whole again by itself within a bound.
//!
//! The same `--seed` draws the same faults, targets and hold times; which
//! node is primary when a fault is drawn can still differ between runs.

mod checks;
mod faults;
mod world;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use halo_tests::program::{self, check_interrupt, Interrupted};

use crate::{
    checks::Probe,
    faults::{Fault, Rng},
    world::World,
};

/// Randomized fault campaign against a lab cluster (needs root).
#[derive(Parser)]
#[command(name = "halo-chaos")]
struct Cli {
    /// Seed of the fault generator (default: drawn from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long to inject faults, in seconds.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// How long the cluster may take to become whole again after a fault,
    /// in seconds.
    #[arg(long, default_value_t = 90)]
    converge: u64,
    /// Where to write the report (markdown); it is printed too.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Directory to copy every host's logs into at the end.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

/// How long mirror trees at rest may take to become identical once the
/// mirror is PRIM and SECOND again.
const TREES_SETTLE: Duration = Duration::from_secs(20);

/// One broken invariant.
struct Violation {
    fault: usize,
    at: Duration,
    what: String,
}

/// What the campaign did and saw.
#[derive(Default)]
struct Tally {
    faults: BTreeMap<&'static str, u64>,
    checks: BTreeMap<&'static str, u64>,
    acked_records: u64,
    violations: Vec<Violation>,
    log: Vec<String>,
}

impl Tally {
    fn check(&mut self, name: &'static str) {
        *self.checks.entry(name).or_insert(0) += 1;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = program::handle_interrupts() {
        eprintln!("halo-chaos: {error:#}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) if error.is::<Interrupted>() || program::interrupted() => {
            println!("interrupted; the lab is removed");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("halo-chaos: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    ensure!(
        std::env::var_os("HALO_BIN").is_some(),
        "HALO_BIN is not set: run the campaign through `cargo xtask chaos`"
    );
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!(
        "halo chaos: seed {seed}, {} s of faults (replay with --seed {seed})",
        cli.duration
    );
    let lab = world::build_lab()?;
    let result = campaign(&lab, cli, seed);
    if let Some(dir) = &cli.save_logs {
        match program::save_logs(&lab, dir) {
            Ok(()) => println!("logs copied to {}", dir.display()),
            Err(error) => eprintln!("halo-chaos: saving the logs: {error:#}"),
        }
    }
    println!("removing the lab…");
    result
}

fn campaign(lab: &halo_tests::lab::Lab, cli: &Cli, seed: u64) -> Result<bool> {
    let mut world = World::start(lab)?;
    let bound = Duration::from_secs(cli.converge);
    println!("lab up; waiting for the farm and the mirror to form…");
    checks::converge(&world, Duration::from_secs(120)).context("the cluster never formed")?;
    let mut probe = Probe::new(world.probe.log_path().to_owned());
    let mut tally = Tally::default();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut index = 0;
    while started.elapsed() < Duration::from_secs(cli.duration) {
        check_interrupt()?;
        index += 1;
        let fault = Fault::draw(&mut rng, world.mirror_primary());
        let hold = rng.millis(1000, 5000);
        let line = format!(
            "[{:>6.1} s] fault {index}: {fault} for {:.1} s",
            started.elapsed().as_secs_f64(),
            hold.as_secs_f64()
        );
        println!("{line}");
        tally.log.push(line);
        *tally.faults.entry(fault.kind()).or_insert(0) += 1;
        faults::apply(&mut world, &fault, hold, &mut rng)
            .with_context(|| format!("injecting or healing fault {index} ({fault})"))?;
        let whole = check_after(&mut world, &mut tally, &mut probe, index, started, bound)?;
        if !whole {
            println!("the cluster did not become whole again: the campaign stops here");
            break;
        }
    }
    let report = report(&tally, &probe, seed, started.elapsed(), cli);
    println!("\n{report}");
    if let Some(path) = &cli.report {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
        println!("report saved to {}", path.display());
    }
    Ok(tally.violations.is_empty())
}

/// Checks every invariant after fault `index`; false if the cluster did not
/// become whole again (nothing after that would mean much).
fn check_after(
    world: &mut World<'_>,
    tally: &mut Tally,
    probe: &mut Probe,
    index: usize,
    started: Instant,
    bound: Duration,
) -> Result<bool> {
    let violate = |tally: &mut Tally, what: String| {
        println!("  VIOLATION: {what}");
        tally.violations.push(Violation {
            fault: index,
            at: started.elapsed(),
            what,
        });
    };
    tally.check("converged within the bound");
    let converged = checks::converge(world, bound);
    // The outside view during the fault and the convergence.
    let seen = probe.read()?;
    tally.check("never two serving mirror nodes");
    if let Some((t, sample)) = seen.both_serving.first() {
        violate(
            tally,
            format!(
                "both mirror nodes served at once ({} samples, first at {t:.3}: {sample})",
                seen.both_serving.len()
            ),
        );
    }
    if let Err(error) = converged {
        violate(tally, format!("{error:#}"));
        return Ok(false);
    }

    tally.check("farm buckets owned once, same table everywhere");
    // A node that just became UP is in its peers' tables one heartbeat
    // later: the tables get a few seconds to agree.
    let mut last = None;
    let agreed = world::wait(Duration::from_secs(10), "the farm tables to agree", || {
        let result = checks::farm_buckets(&world.farm);
        let ok = result.is_ok();
        last = result.err();
        Ok(ok)
    });
    if agreed.is_err() {
        let error = last.map(|e| format!("{e:#}")).unwrap_or_default();
        violate(tally, format!("farm buckets: {error}"));
    }
    tally.check("farm VIP answers after convergence");
    let mut streak = 0;
    let answered = world::wait(Duration::from_secs(15), "10 farm answers in a row", || {
        for (_, ok) in probe.read()?.farm {
            streak = if ok { streak + 1 } else { 0 };
        }
        Ok(streak >= 10)
    });
    if let Err(error) = answered {
        violate(tally, format!("farm: {error:#}"));
    }

    // Trees and records are compared at rest.
    world.pause_applications(true)?;
    std::thread::sleep(Duration::from_millis(500));
    tally.check("mirror trees identical");
    // PRIM and SECOND ready means the resync is done: what is still
    // different after a short while stays different.
    if let Err(error) = checks::mirror_trees(world, TREES_SETTLE) {
        violate(tally, format!("mirror trees: {error:#}"));
    }
    tally.check("no acknowledged record lost");
    match world.mirror_primary() {
        Some(primary) => match checks::acked_records(world, primary) {
            Ok(checked) => tally.acked_records = tally.acked_records.max(checked),
            Err(error) => violate(tally, format!("records: {error:#}")),
        },
        None => violate(tally, "no mirror primary to read the records on".to_owned()),
    }
    world.pause_applications(false)?;
    Ok(true)
}

fn report(tally: &Tally, probe: &Probe, seed: u64, elapsed: Duration, cli: &Cli) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# halo chaos campaign\n");
    let _ = writeln!(
        out,
        "seed {seed}, {:.0} s (asked {} s), convergence bound {} s; replay with \
         `cargo xtask chaos --seed {seed} --duration {}`\n",
        elapsed.as_secs_f64(),
        cli.duration,
        cli.converge,
        cli.duration
    );
    let _ = writeln!(out, "| fault | injected |\n|---|---:|");
    let mut total = 0;
    for kind in Fault::KINDS {
        let n = tally.faults.get(kind).copied().unwrap_or(0);
        total += n;
        let _ = writeln!(out, "| {kind} | {n} |");
    }
    let _ = writeln!(out, "| **all** | **{total}** |\n");
    let _ = writeln!(out, "| invariant | checks |\n|---|---:|");
    for (name, n) in &tally.checks {
        let _ = writeln!(out, "| {name} | {n} |");
    }
    let _ = writeln!(
        out,
        "\nOutside view: {} samples of both mirror nodes' ready.txt; farm VIP {} answered, {} \
         failed (during faults and failovers); {} acknowledged records checked on the primary \
         at the end.\n",
        probe.ready_samples, probe.farm_ok, probe.farm_failed, tally.acked_records
    );
    if tally.violations.is_empty() {
        let _ = writeln!(out, "**Violations: 0**");
    } else {
        let _ = writeln!(
            out,
            "**Violations: {}** (seed {seed})\n",
            tally.violations.len()
        );
        for v in &tally.violations {
            let _ = writeln!(
                out,
                "- after fault {} ({:.1} s): {}",
                v.fault,
                v.at.as_secs_f64(),
                v.what.replace('\n', "\n  ")
            );
        }
    }
    let _ = writeln!(out, "\n## Faults\n");
    for line in &tally.log {
        let _ = writeln!(out, "    {line}");
    }
    out
}
