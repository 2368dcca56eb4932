//! `halo-bench`: halo's performance measurements in the lab, run by
//! `cargo xtask bench …`, which builds `halo` and sets `HALO_BIN`.
//!
//! Each bench prints its figures against the targets and baselines it
//! measures in the same run; missing a target is a finding, not a failure:
//! the exit status is non-zero only when the bench itself could not run.

mod daemon_log;
mod detect;
mod farm;
mod load;
mod mirror;
mod report;
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
    /// The farm: ns per packet class against a no-op XDP program, packets
    /// per second against nftables, outage when a node dies against
    /// keepalived; tables printed and saved as markdown.
    Farm(FarmArgs),
    /// The mirror: fsync latency added by `sync = "fsync"`, streaming
    /// write throughput and capture cost with halo on vs off, replication
    /// lag with `sync = "async"` vs lsyncd, failover
    /// seen by a client, initial copy and resync vs `rsync -a`; tables
    /// printed and saved as markdown.
    Mirror(MirrorArgs),
    /// Writes 4 KiB blocks into a file, optionally each fsynced, and prints
    /// the timings (the writer of `mirror`).
    #[command(name = mirror::io::WRITER_COMMAND, hide = true)]
    MirrorWriter {
        path: PathBuf,
        ops: u32,
        span: u64,
        #[arg(long)]
        fsync: bool,
    },
    /// Writes numbered, time-stamped 4 KiB records at a steady rate (the
    /// writer of `mirror`'s replication lag).
    #[command(name = mirror::lag::WRITER_COMMAND, hide = true)]
    LagWriter {
        dir: PathBuf,
        files: u32,
        rate: u32,
        seconds: u32,
    },
    /// Watches the copy of the lag writer's records and writes each one's
    /// lag (the observer of `mirror`'s replication lag).
    #[command(name = mirror::lag::OBSERVER_COMMAND, hide = true)]
    LagObserver {
        dir: PathBuf,
        files: u32,
        total: u64,
        seconds: u32,
        ready: PathBuf,
        out: PathBuf,
    },
    /// Sends TCP SYNs to the filter-rate lab's VIP until killed (the load
    /// generator of `farm`).
    #[command(name = farm::filter_rate::BLAST_COMMAND, hide = true)]
    Blast {
        /// Destination MAC, `aa:bb:cc:dd:ee:ff`.
        #[arg(long, value_parser = parse_mac)]
        dst_mac: [u8; 6],
        /// The CPU to run on.
        #[arg(long, default_value_t = 0)]
        cpu: usize,
    },
    /// Requests the VIP every 10 ms until killed (the probe of `farm`).
    #[command(name = farm::outage::PROBE_COMMAND, hide = true)]
    Probe {
        /// `address:port`.
        target: std::net::SocketAddr,
    },
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

/// Options of `halo-bench farm`.
#[derive(clap::Args, Debug)]
struct FarmArgs {
    /// Rounds of the per-packet measurement (every class on both programs
    /// each round).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Repeats of one BPF_PROG_TEST_RUN.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Test runs of one repeat per round, for frames answered in place.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    single_runs: u32,
    /// Windows per filter of the packets-per-second measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rate_rounds: u32,
    /// Length of one packets-per-second window.
    #[arg(long, default_value = "3s", value_parser = stats::parse_duration)]
    rate_window: Duration,
    /// Node deaths per outage setting.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    kills: u32,
    /// halo heartbeat settings of the outage part, `pulse/timeout`.
    #[arg(long, value_delimiter = ',', default_value = "100ms/500ms,100ms/300ms", value_parser = farm::parse_timing)]
    halo_timing: Vec<halo_tests::cluster::Timing>,
    /// keepalived `advert_int`s of the outage part, in seconds.
    #[arg(long, value_delimiter = ',', default_value = "1,0.1", value_parser = farm::parse_advert)]
    advert_int: Vec<Duration>,
    /// Parts to skip: per-packet, filter-rate, outage.
    #[arg(long, value_delimiter = ',', value_parser = ["per-packet", "filter-rate", "outage"])]
    skip: Vec<String>,
    /// Directory the markdown report is written to.
    #[arg(long, default_value = "target/bench")]
    report_dir: PathBuf,
}

/// Options of `halo-bench mirror`.
#[derive(clap::Args, Debug)]
struct MirrorArgs {
    /// 4 KiB write + fsync operations per phase (halo off, on, off).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    fsync_ops: u32,
    /// MiB written by dd per phase.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    stream_mib: u32,
    /// 4 KiB writes outside replicated directories per phase.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    write_ops: u32,
    /// Primary host deaths of the failover part.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    kills: u32,
    /// MiB of the initial-copy / resync data set.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    data_mib: u32,
    /// Files of that data set.
    #[arg(long, default_value_t = 2500, value_parser = clap::value_parser!(u32).range(10..))]
    files: u32,
    /// Records of 4 KiB written per second in the replication-lag part.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    lag_rate: u32,
    /// How long the replication-lag part writes, per replicator, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=3600))]
    lag_seconds: u32,
    /// Files the replication-lag part's records go round-robin into.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    lag_files: u32,
    /// Parts to skip: writes, lag, failover, sync.
    #[arg(long, value_delimiter = ',', value_parser = ["writes", "lag", "failover", "sync"])]
    skip: Vec<String>,
    /// Directory the markdown report is written to.
    #[arg(long, default_value = "target/bench")]
    report_dir: PathBuf,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?}: expected a MAC such as 02:00:00:00:00:01"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?}: a MAC has 6 bytes"))
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
        Bench::Farm(args) => farm::run(&farm::Options {
            per_packet: farm::per_packet::Options {
                rounds: args.rounds,
                repeat: args.repeat,
                single_runs: args.single_runs,
            },
            filter_rate: farm::filter_rate::Options {
                rounds: args.rate_rounds,
                window: args.rate_window,
            },
            outage: farm::outage::Options {
                kills: args.kills,
                halo_timings: args.halo_timing,
                advert_ints: args.advert_int,
            },
            skip: args.skip,
            report_dir: args.report_dir,
        }),
        Bench::Mirror(args) => mirror::run(&mirror::Options {
            fsync_ops: args.fsync_ops,
            stream_mib: args.stream_mib,
            write_ops: args.write_ops,
            kills: args.kills,
            lag: mirror::lag::Options {
                rate: args.lag_rate,
                seconds: args.lag_seconds,
                files: args.lag_files,
            },
            sync: mirror::sync::Options {
                data_mib: args.data_mib,
                files: args.files,
            },
            skip: args.skip,
            report_dir: args.report_dir,
        }),
        Bench::MirrorWriter {
            path,
            ops,
            span,
            fsync,
        } => mirror::io::writer(&path, ops, span, fsync),
        Bench::LagWriter {
            dir,
            files,
            rate,
            seconds,
        } => mirror::lag::writer(&dir, files, rate, seconds),
        Bench::LagObserver {
            dir,
            files,
            total,
            seconds,
            ready,
            out,
        } => mirror::lag::observer(&dir, files, total, seconds, &ready, &out),
        Bench::Blast { dst_mac, cpu } => {
            farm::filter_rate::blast(&farm::filter_rate::BlastOptions { dst_mac, cpu })
        }
        Bench::Probe { target } => farm::outage::probe(target),
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
