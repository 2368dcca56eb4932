//! `halo-bench farm`: the farm's SPEC §10 figures in one run, each against
//! a baseline measured in the same run: the XDP program's ns per packet
//! class against a no-op XDP program, the packets per second a node
//! filters against the same policy in nftables, and the client-observed
//! outage when a node dies against keepalived.
//!
//! The tables are printed and saved as one markdown file with the date,
//! the configuration and every raw figure.

pub mod filter_rate;
pub mod outage;
pub mod per_packet;

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{ensure, Context as _, Result};
use halo_tests::cluster::{self, Timing};

use crate::stats::{human, ms};

/// What `halo-bench farm` was asked to do.
pub struct Options {
    pub per_packet: per_packet::Options,
    pub filter_rate: filter_rate::Options,
    pub outage: outage::Options,
    /// Parts to skip: `per-packet`, `filter-rate`, `outage`.
    pub skip: Vec<String>,
    /// Where the markdown report goes (a new file per run).
    pub report_dir: PathBuf,
}

/// Runs the parts, prints their tables and saves the report.
pub fn run(options: &Options) -> Result<()> {
    ensure!(
        std::env::var_os("HALO_BIN").is_some(),
        "HALO_BIN is not set: run the bench with `cargo xtask bench farm`, which builds halo"
    );
    let halo = cluster::halo_bin();
    let started = SystemTime::now();
    let (date, stamp) = crate::report::utc(started);
    let skip = |part: &str| options.skip.iter().any(|s| s == part);
    let mut config = String::new();
    let _ = writeln!(config, "- date: {date}");
    let _ = writeln!(config, "- halo: `{}`", halo.display());
    let _ = writeln!(config, "- machine: {}", machine());
    let _ = writeln!(
        config,
        "- per packet: {} rounds, {} repeats per run, {} single runs",
        options.per_packet.rounds, options.per_packet.repeat, options.per_packet.single_runs
    );
    let _ = writeln!(
        config,
        "- filter rate: {} rounds of {} per filter",
        options.filter_rate.rounds,
        human(options.filter_rate.window)
    );
    let _ = writeln!(
        config,
        "- outage: {} deaths per setting; halo (pulse/timeout) {}; keepalived advert_int {}",
        options.outage.kills,
        options
            .outage
            .halo_timings
            .iter()
            .map(|t| format!("{}/{}", human(t.pulse), human(t.timeout)))
            .collect::<Vec<_>>()
            .join(", "),
        options
            .outage
            .advert_ints
            .iter()
            .map(|a| format!("{}", a.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !options.skip.is_empty() {
        let _ = writeln!(config, "- skipped: {}", options.skip.join(", "));
    }
    println!("halo-bench farm\n{config}");

    let mut tables = Vec::new();
    let mut raw = String::new();
    // A part that fails is reported, and the others still run and are
    // saved.
    let mut failures = Vec::new();
    if !skip("per-packet") {
        println!("ns per packet class (BPF_PROG_TEST_RUN) …");
        let results = per_packet::run(&options.per_packet);
        let results = part_result(results, "per-packet", &mut failures);
        let table = per_packet::table(&results, &options.per_packet);
        println!("{}", table.text());
        let _ = writeln!(raw, "#### ns per packet, per round (no-op / farm)\n");
        for r in &results {
            let rounds: Vec<String> = r
                .rounds
                .iter()
                .map(|(noop, farm)| format!("{noop:.1}/{farm:.1}"))
                .collect();
            let _ = writeln!(raw, "- {}: {}", r.name, rounds.join(" "));
        }
        raw.push('\n');
        tables.push(table);
    }
    if !skip("filter-rate") {
        println!("packets per second, farm XDP vs nftables …");
        let results = filter_rate::run(&options.filter_rate);
        let results = part_result(results, "filter-rate", &mut failures);
        let table = filter_rate::table(&results, &options.filter_rate);
        println!("{}", table.text());
        let _ = writeln!(
            raw,
            "#### filter rate, per window (offered/s, filtered/s, NAPI busy, per core-second)\n"
        );
        for r in &results {
            let windows: Vec<String> = r
                .windows
                .iter()
                .map(|w| {
                    format!(
                        "{:.0}/{:.0}/{:.1}%/{:.0}",
                        w.offered,
                        w.filtered,
                        w.busy * 100.0,
                        w.per_core
                    )
                })
                .collect();
            let _ = writeln!(raw, "- {}: {}", r.filter_name(), windows.join(" "));
        }
        raw.push('\n');
        tables.push(table);
    }
    if !skip("outage") {
        println!("outage when a node dies, halo vs keepalived …");
        let results = outage::run(&options.outage);
        let results = part_result(results, "outage", &mut failures);
        let table = outage::table(&results);
        println!("{}", table.text());
        let _ = writeln!(raw, "#### outage per death (ms)\n");
        for r in &results {
            let outages: Vec<String> = r.outages.iter().map(|o| ms(*o)).collect();
            let _ = writeln!(raw, "- {}: {}", r.label, outages.join(" "));
        }
        raw.push('\n');
        tables.push(table);
    }

    let mut markdown = format!(
        "# `cargo xtask bench farm`, {date}\n\n## Configuration\n\n{config}\n## Results\n\n"
    );
    for table in &tables {
        markdown += &table.markdown();
    }
    for failure in &failures {
        let _ = writeln!(markdown, "**Failed:** {failure}\n");
    }
    let _ = write!(
        markdown,
        "## Raw figures\n\n{raw}Run took {} s.\n",
        started.elapsed().unwrap_or_default().as_secs()
    );
    fs::create_dir_all(&options.report_dir)
        .with_context(|| format!("create {}", options.report_dir.display()))?;
    let path = options.report_dir.join(format!("farm-{stamp}.md"));
    fs::write(&path, markdown).with_context(|| format!("write {}", path.display()))?;
    println!("report saved to {}", path.display());
    ensure!(
        failures.is_empty(),
        "{} part(s) failed: {}",
        failures.len(),
        failures.join("; ")
    );
    Ok(())
}

/// The results of a part, or an empty list after noting its failure.
fn part_result<T>(result: Result<Vec<T>>, part: &str, failures: &mut Vec<String>) -> Vec<T> {
    result.unwrap_or_else(|error| {
        eprintln!("halo-bench farm: {part} failed: {error:#}");
        failures.push(format!("{part}: {error:#}"));
        Vec::new()
    })
}

/// Cores and kernel of this machine, for the report.
fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!(
        "{} cores ({model}), kernel {}",
        crate::load::cores(),
        kernel.trim()
    )
}

/// Parses `pulse/timeout` pairs such as `100ms/500ms`.
pub fn parse_timing(text: &str) -> Result<Timing, String> {
    let (pulse, timeout) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected pulse/timeout, e.g. 100ms/500ms"))?;
    Ok(Timing {
        pulse: crate::stats::parse_duration(pulse)?,
        timeout: crate::stats::parse_duration(timeout)?,
    })
}

/// Parses a VRRP advertisement interval in seconds, `1` or `0.1`.
pub fn parse_advert(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?}: expected seconds, e.g. 1 or 0.1"))?;
    if !(0.01..=255.0).contains(&secs) {
        return Err(format!("{text:?}: keepalived takes 0.01 to 255 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}
