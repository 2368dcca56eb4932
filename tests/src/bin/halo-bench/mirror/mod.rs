//! `halo-bench mirror`: the mirror's SPEC §10 figures in one run, each
//! against a baseline measured in the same run: the latency `sync =
//! "fsync"` adds to a 4 KiB write + fsync (against the same loop with halo
//! off, and the lab's RTT), streaming write throughput with replication on
//! and off, replication lag with `sync = "async"` against lsyncd,
//! client-observed failover, the initial copy and the resync after
//! 1 % changed against `rsync -a`, and the cost of the capture on writes
//! outside replicated directories.
//!
//! The tables are printed and saved as one markdown file.

pub mod failover;
pub mod io;
pub mod lag;
pub mod sync;

use std::{
    fmt::Write as _,
    fs,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{ensure, Context as _, Result};
use halo_tests::{
    cluster::{self, module_in, Cluster, Timing},
    lab::{self, LabBuilder},
};
use nix::sys::signal::Signal;

use crate::report::{self, Table};
use crate::stats::{ms, Summary};

pub const MODULE: &str = "db";
/// The replicated directory (private to each lab host).
pub const DIR: &str = "/var/lib/app";
/// A directory outside replication (private to each lab host).
const OUTSIDE: &str = "/var/lib/bench";

pub fn vip() -> IpAddr {
    lab::lab_ipv4(210).into()
}

/// A mirror of [`DIR`] between n1 and n2, n1 primary on a first start,
/// `sync = "fsync"` (the default).
pub fn mirror_toml() -> String {
    mirror_toml_with("fsync")
}

/// [`mirror_toml`] with another `sync` setting.
pub fn mirror_toml_with(sync: &str) -> String {
    format!(
        "[[module]]\nname = \"{MODULE}\"\nkind = \"mirror\"\nnodes = [\"n1\", \"n2\"]\n\
         interface = \"eth0\"\nvip = \"{}\"\ndefaultprim = \"n1\"\nsync = \"{sync}\"\n\n\
         [[module.dir]]\npath = \"{DIR}\"\n",
        vip()
    )
}

/// Stops both daemons with SIGTERM, the primary first so the secondary has
/// nothing to wait for; a daemon that does not stop within 30 s is
/// SIGKILLed, and that is noted.
pub fn stop_daemons(cluster: &mut Cluster<'_>, notes: &mut Vec<String>) -> Result<()> {
    for node in ["n1", "n2"] {
        stop_daemon(cluster, node, notes)?;
    }
    Ok(())
}

/// Stops `node`'s daemon with SIGTERM, or SIGKILL after 30 s (noted).
fn stop_daemon(cluster: &mut Cluster<'_>, node: &str, notes: &mut Vec<String>) -> Result<()> {
    let daemon = cluster.daemon(node)?;
    daemon.signal(Signal::SIGTERM)?;
    if daemon.wait_timeout(Duration::from_secs(30)).is_err() {
        daemon.kill()?;
        notes.push(format!(
            "{node}'s daemon did not stop within 30 s of SIGTERM: SIGKILLed"
        ));
    }
    Ok(())
}

/// Waits until `node`'s module is `state`, ready.
pub fn wait_module(cluster: &Cluster<'_>, node: &str, state: &str) -> Result<()> {
    cluster
        .wait_status(
            node,
            Duration::from_secs(120),
            &format!("{node}'s {MODULE} {state} ready"),
            |s| module_in(s, MODULE, state, "ready"),
        )
        .map(|_| ())
        .with_context(|| format!("{node}'s log:\n{}", cluster.log(node).unwrap_or_default()))
}

/// What `halo-bench mirror` was asked to do.
pub struct Options {
    pub fsync_ops: u32,
    pub stream_mib: u32,
    pub write_ops: u32,
    pub kills: u32,
    pub lag: lag::Options,
    pub sync: sync::Options,
    pub skip: Vec<String>,
    pub report_dir: PathBuf,
}

/// The figures of the writes lab: halo off before, on, off after.
struct Writes {
    rtt: Duration,
    fsync: [Vec<Duration>; 3],
    stream: [f64; 3],
    write_ns: [f64; 3],
    /// The capture programs' own time, measured with halo on.
    program_time: Option<io::ProgramTime>,
    /// ns per outside write with the primary's daemon alone running, as on
    /// a host of its own (the lab's nodes share one kernel, so with both
    /// daemons up every write runs both daemons' programs), and its
    /// programs' own time.
    one_daemon_ns: f64,
    one_daemon_time: Option<io::ProgramTime>,
    /// ns per outside write with halo off and `capture_noop` (a program that
    /// does nothing) on every tracepoint the capture hooks: what the kernel
    /// spends to run any program there, the floor of the capture's cost.
    floor_ns: Option<f64>,
    /// Streaming MiB/s and fsync latencies with `encrypt = false` (the
    /// stream authenticated, not encrypted), in a later start of halo.
    plaintext: Option<(f64, Vec<Duration>)>,
    notes: Vec<String>,
}

fn measure_phase(lab: &lab::Lab, options: &Options, out: &mut Writes, phase: usize) -> Result<()> {
    out.fsync[phase] =
        io::fsync_latencies(lab, "n1", &format!("{DIR}/fsync.dat"), options.fsync_ops)?;
    out.write_ns[phase] =
        io::write_cost(lab, "n1", &format!("{OUTSIDE}/out.dat"), options.write_ops)?;
    out.stream[phase] = io::stream(
        lab,
        "n1",
        &format!("{OUTSIDE}/source.bin"),
        &format!("{DIR}/stream.bin"),
        options.stream_mib,
    )?;
    Ok(())
}

fn measure_writes(options: &Options) -> Result<Writes> {
    let lab = LabBuilder::new("bench_mirror_writes")
        .hosts(&["n1", "n2"])
        .private_path(OUTSIDE)
        .build()
        .context("build the writes lab")?;
    lab.host("n1").sh(&format!(
        "head -c {}M /dev/urandom > {OUTSIDE}/source.bin",
        options.stream_mib
    ))?;
    let mut out = Writes {
        rtt: io::rtt(&lab, "n1", "n2")?,
        fsync: Default::default(),
        stream: [0.0; 3],
        write_ns: [0.0; 3],
        program_time: None,
        one_daemon_ns: 0.0,
        one_daemon_time: None,
        floor_ns: None,
        plaintext: None,
        notes: Vec::new(),
    };
    println!("  halo off …");
    measure_phase(&lab, options, &mut out, 0)?;
    lab.host("n1").sh(&format!("rm -f {DIR}/* && sync"))?;
    println!("  halo on (sync = fsync) …");
    let mut cluster =
        Cluster::configure(&lab, &["n1", "n2"], 1, Timing::default(), &mirror_toml())?;
    cluster.start_all()?;
    wait_module(&cluster, "n1", "PRIM")?;
    wait_module(&cluster, "n2", "SECOND")?;
    measure_phase(&lab, options, &mut out, 1)?;
    let outside = format!("{OUTSIDE}/out.dat");
    match io::capture_program_time(&lab, "n1", &outside, options.write_ops) {
        Ok(time) => out.program_time = Some(time),
        Err(error) => out.notes.push(format!(
            "the capture programs' own time was not measured: {error:#}"
        )),
    }
    println!("  halo on, the primary's daemon alone …");
    stop_daemon(&mut cluster, "n2", &mut out.notes)?;
    wait_module(&cluster, "n1", "ALONE")?;
    out.one_daemon_ns = io::write_cost(&lab, "n1", &outside, options.write_ops)?;
    match io::capture_program_time(&lab, "n1", &outside, options.write_ops) {
        Ok(time) => out.one_daemon_time = Some(time),
        Err(error) => out.notes.push(format!(
            "the primary's capture programs' own time was not measured: {error:#}"
        )),
    }
    stop_daemon(&mut cluster, "n1", &mut out.notes)?;
    println!("  halo off, empty programs on the capture's tracepoints …");
    match halo::ebpf::capture::NoopCapture::attach() {
        Ok(noop) => {
            out.floor_ns = Some(io::write_cost(&lab, "n1", &outside, options.write_ops)?);
            drop(noop);
        }
        Err(error) => out.notes.push(format!(
            "the empty programs' floor was not measured: {error:#}"
        )),
    }
    println!("  halo on, encrypt = false …");
    let mut plain = Cluster::configure(
        &lab,
        &["n1", "n2"],
        1,
        Timing::default(),
        &format!("{}\n[module.replication]\nencrypt = false\n", mirror_toml()),
    )?;
    plain.start_all()?;
    wait_module(&plain, "n1", "PRIM")?;
    wait_module(&plain, "n2", "SECOND")?;
    let fsync = io::fsync_latencies(&lab, "n1", &format!("{DIR}/fsync.dat"), options.fsync_ops)?;
    let stream = io::stream(
        &lab,
        "n1",
        &format!("{OUTSIDE}/source.bin"),
        &format!("{DIR}/stream.bin"),
        options.stream_mib,
    )?;
    out.plaintext = Some((stream, fsync));
    stop_daemons(&mut plain, &mut out.notes)?;
    println!("  halo off again …");
    measure_phase(&lab, options, &mut out, 2)?;
    Ok(out)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

fn percentile(sample: &[Duration], percent: usize) -> Duration {
    let mut sorted = sample.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn writes_tables(w: &Writes, options: &Options) -> Vec<Table> {
    let off: Vec<Duration> = w.fsync[0].iter().chain(&w.fsync[2]).copied().collect();
    let on = &w.fsync[1];
    let target = w.rtt + Duration::from_micros(500);
    let mut fsync = Table::new(
        "fsync latency added by sync = \"fsync\" (4 KiB write + fsync)",
        &["", "p50 ms", "p99 ms", "ops"],
    );
    let plain_fsync = w.plaintext.as_ref().map(|(_, sample)| sample);
    let rows = [
        Some(("halo off (before and after)", &off)),
        Some(("halo on", on)),
        plain_fsync.map(|sample| ("halo on, encrypt = false", sample)),
    ];
    for (name, sample) in rows.into_iter().flatten() {
        fsync.row(vec![
            name.to_owned(),
            format!("{:.3}", percentile(sample, 50).as_secs_f64() * 1e3),
            format!("{:.3}", percentile(sample, 99).as_secs_f64() * 1e3),
            sample.len().to_string(),
        ]);
    }
    let added = |p| percentile(on, p).saturating_sub(percentile(&off, p));
    fsync.row(vec![
        "added".into(),
        format!("{:.3}", added(50).as_secs_f64() * 1e3),
        format!("{:.3}", added(99).as_secs_f64() * 1e3),
        String::new(),
    ]);
    fsync.note(format!(
        "lab RTT n1→n2 {:.3} ms (ping mean); target: added ≤ RTT + 0.5 ms = {:.3} ms; p50 {}, p99 {}",
        w.rtt.as_secs_f64() * 1e3,
        target.as_secs_f64() * 1e3,
        verdict(added(50) <= target),
        verdict(added(99) <= target),
    ));
    let mut stream = Table::new(
        format!(
            "streaming writes, dd {} MiB in 1 MiB blocks + fdatasync into the replicated dir",
            options.stream_mib
        ),
        &["halo off before", "halo on", "halo off after", "on/off"],
    );
    let off_mean = (w.stream[0] + w.stream[2]) / 2.0;
    stream.row(vec![
        format!("{:.0} MiB/s", w.stream[0]),
        format!("{:.0} MiB/s", w.stream[1]),
        format!("{:.0} MiB/s", w.stream[2]),
        format!("{:.2}", w.stream[1] / off_mean),
    ]);
    stream.note("target: on/off ≥ 0.9 (off = mean of before and after)");
    if let Some((plain, _)) = &w.plaintext {
        stream.note(format!(
            "with encrypt = false (frames authenticated, not encrypted): {plain:.0} MiB/s, on/off {:.2}",
            plain / off_mean
        ));
    }
    let mut capture = Table::new(
        format!(
            "capture cost on writes outside replicated dirs ({} × 4 KiB pwrite, no fsync)",
            options.write_ops
        ),
        &[
            "daemons running",
            "halo off before",
            "halo on",
            "halo off after",
            "added",
            "programs' own ns",
        ],
    );
    let off_ns = (w.write_ns[0] + w.write_ns[2]) / 2.0;
    let own = |time: &Option<io::ProgramTime>| match time {
        Some(t) => format!("{:.0} + {:.0} ({} sets)", t.enter_ns, t.exit_ns, t.sets),
        None => "-".to_owned(),
    };
    for (setting, on, time) in [
        ("primary + secondary", w.write_ns[1], &w.program_time),
        ("primary's alone", w.one_daemon_ns, &w.one_daemon_time),
    ] {
        capture.row(vec![
            setting.to_owned(),
            format!("{:.0} ns", w.write_ns[0]),
            format!("{on:.0} ns"),
            format!("{:.0} ns", w.write_ns[2]),
            format!("{:+.1} %", (on / off_ns - 1.0) * 100.0),
            own(time),
        ]);
    }
    if let Some(floor) = w.floor_ns {
        capture.row(vec![
            "none; capture_noop on the same tracepoints".to_owned(),
            format!("{:.0} ns", w.write_ns[0]),
            format!("{floor:.0} ns"),
            format!("{:.0} ns", w.write_ns[2]),
            format!("{:+.1} %", (floor / off_ns - 1.0) * 100.0),
            "0 (empty)".to_owned(),
        ]);
        capture.note(format!(
            "halo over the empty programs' floor (primary's alone): {:+.1} % of a write",
            (w.one_daemon_ns - floor) / off_ns * 100.0
        ));
    }
    capture.note("target: ≤ 3 % (per host: the primary's daemon alone)");
    capture.note(
        "the lab's nodes share one kernel, so every write runs the programs of every \
         daemon whose capture is attached: a secondary's is detached (\"sets\" counts \
         the loaded ones, attached or not). Programs' own ns: the enter + exit programs \
         per write, from the kernel's BPF run-time statistics in a second run of the \
         same writes. The empty programs' row is the kernel's own cost of running any \
         program on these syscall tracepoints, which no program removes",
    );
    for note in &w.notes {
        capture.note(note.clone());
    }
    vec![fsync, stream, capture]
}

fn lag_table(r: &lag::LagResult, options: &lag::Options) -> Table {
    let mut table = Table::new(
        format!(
            "replication lag under a steady write load ({} × 4 KiB records/s round-robin into {} \
             files for {} s, each write opening and closing its file)",
            options.rate, options.files, options.seconds
        ),
        &["", "p50 ms", "p99 ms", "max ms", "records arrived"],
    );
    for run in &r.runs {
        let arrived: Vec<Duration> = run.lags.iter().flatten().copied().collect();
        let cells = match Summary::of(&arrived) {
            Some(s) => [ms(s.p50), ms(s.p99), ms(s.max)],
            None => ["-".to_owned(), "-".to_owned(), "-".to_owned()],
        };
        let mut row = vec![run.name.clone()];
        row.extend(cells);
        row.push(format!("{} of {}", arrived.len(), run.lags.len()));
        table.row(row);
    }
    table.note(
        "lag: from the write on n1 to the record read whole on n2 (an inotify watch on the copy; \
         both stamps from CLOCK_MONOTONIC of the one kernel); target for halo: p99 ≤ 10 ms",
    );
    table.note(
        "lsyncd: the Debian package, `default.rsync` to an rsync daemon on n2; a record still \
         missing at the end had not arrived 15 s (delay = 1) or 45 s (default) after the writer \
         stopped",
    );
    for note in &r.notes {
        table.note(note.clone());
    }
    table
}

fn failover_table(r: &failover::FailoverResult) -> Table {
    let mut table = Table::new(
        "failover, client-observed (primary host killed, probe every 10 ms)",
        &[
            "deaths",
            "min ms",
            "p50 ms",
            "p90 ms",
            "max ms",
            "target ms",
        ],
    );
    if let Some(s) = Summary::of(&r.outages) {
        table.row(vec![
            s.count.to_string(),
            ms(s.min),
            ms(s.p50),
            ms(s.p90),
            ms(s.max),
            ms(r.timeout + Duration::from_millis(200)),
        ]);
    }
    table.note(format!(
        "heartbeat timeout {} ms; the web servers run before the death (no application start)",
        r.timeout.as_millis()
    ));
    table
}

fn sync_table(r: &sync::SyncResult) -> Table {
    let mut table = Table::new(
        format!(
            "initial copy and resync vs rsync -a ({} MiB in {} files; 1 % = {} bytes changed)",
            r.data_bytes >> 20,
            r.files,
            r.changed_bytes
        ),
        &[
            "",
            "halo s",
            "halo bytes",
            "rsync s",
            "rsync + sync -f s",
            "rsync bytes",
            "halo/rsync time",
            "halo/(rsync + sync)",
        ],
    );
    for (name, h, rs) in [
        ("initial copy", r.halo_initial, r.rsync_initial),
        (
            "resync, secondary's daemon restarted",
            r.halo_resync,
            r.rsync_resync,
        ),
        (
            "resync, old primary back after failover",
            r.halo_failover_resync,
            r.rsync_failover_resync,
        ),
    ] {
        let durable = rs.durable.unwrap_or(rs.time);
        table.row(vec![
            name.to_owned(),
            format!("{:.2}", h.time.as_secs_f64()),
            h.bytes_sent.to_string(),
            format!("{:.2}", rs.time.as_secs_f64()),
            format!("{:.2}", durable.as_secs_f64()),
            rs.bytes_sent.to_string(),
            format!("{:.2}", h.time.as_secs_f64() / rs.time.as_secs_f64()),
            format!("{:.2}", h.time.as_secs_f64() / durable.as_secs_f64()),
        ]);
    }
    table.note(format!(
        "halo sent {:.2} × the changed bytes after the secondary's restart, {:.2} × ({} changed) \
         after the failover (target ≤ 1.2); target for times: ≤ rsync's",
        r.halo_resync.bytes_sent as f64 / r.changed_bytes as f64,
        r.halo_failover_resync.bytes_sent as f64 / r.failover_changed_bytes as f64,
        r.failover_changed_bytes
    ));
    table.note(
        "halo time: from the secondary's daemon start to the primary's `in sync` event; \
         rsync: `rsync -a` to an rsync daemon on the other node, and with `sync -f` of the \
         copy's file system after it (halo's `in sync` waits for the secondary's syncfs); \
         before each departure the pair stays in sync 6 s (the primary takes a sync point \
         every 2 s)",
    );
    table
}

/// Runs the parts, prints their tables and saves the report.
pub fn run(options: &Options) -> Result<()> {
    ensure!(
        std::env::var_os("HALO_BIN").is_some(),
        "HALO_BIN is not set: run the bench with `cargo xtask bench mirror`"
    );
    let halo = cluster::halo_bin();
    let started = SystemTime::now();
    let (date, stamp) = report::utc(started);
    let skip = |part: &str| options.skip.iter().any(|s| s == part);
    let mut config = String::new();
    let _ = writeln!(config, "- date: {date}");
    let _ = writeln!(config, "- halo: `{}`", halo.display());
    let _ = writeln!(config, "- cores: {}", crate::load::cores());
    let _ = writeln!(
        config,
        "- writes: {} fsync ops per phase, dd {} MiB, {} writes outside; failover: {} deaths; \
         data set {} MiB in {} files",
        options.fsync_ops,
        options.stream_mib,
        options.write_ops,
        options.kills,
        options.sync.data_mib,
        options.sync.files
    );
    if !options.skip.is_empty() {
        let _ = writeln!(config, "- skipped: {}", options.skip.join(", "));
    }
    println!("halo-bench mirror\n{config}");
    let mut tables = Vec::new();
    let mut raw = String::new();
    let mut failures = Vec::new();
    if !skip("writes") {
        println!("fsync latency, streaming writes, capture cost …");
        match measure_writes(options) {
            Ok(w) => {
                for t in writes_tables(&w, options) {
                    println!("{}", t.text());
                    tables.push(t);
                }
                let _ = writeln!(
                    raw,
                    "- dd MiB/s off/on/off: {:.1} {:.1} {:.1}\n- ns per outside write off/on/off: {:.0} {:.0} {:.0}; the primary's daemon alone: {:.0}\n",
                    w.stream[0], w.stream[1], w.stream[2], w.write_ns[0], w.write_ns[1], w.write_ns[2], w.one_daemon_ns
                );
            }
            Err(e) => failures.push(format!("writes: {e:#}")),
        }
    }
    if !skip("lag") {
        println!("replication lag, halo async vs lsyncd …");
        match lag::run(&options.lag) {
            Ok(r) => {
                let t = lag_table(&r, &options.lag);
                println!("{}", t.text());
                tables.push(t);
            }
            Err(e) => failures.push(format!("lag: {e:#}")),
        }
    }
    if !skip("failover") {
        println!("failover, client-observed …");
        match failover::run(options.kills) {
            Ok(r) => {
                let t = failover_table(&r);
                println!("{}", t.text());
                tables.push(t);
                let o: Vec<String> = r.outages.iter().map(|d| ms(*d)).collect();
                let _ = writeln!(raw, "- outage per death (ms): {}\n", o.join(" "));
            }
            Err(e) => failures.push(format!("failover: {e:#}")),
        }
    }
    if !skip("sync") {
        println!("initial copy and resync vs rsync …");
        match sync::run(&options.sync) {
            Ok(r) => {
                let t = sync_table(&r);
                println!("{}", t.text());
                tables.push(t);
                let _ = writeln!(raw, "#### the primary's events around the resync\n");
                for line in &r.events {
                    let _ = writeln!(raw, "- {line}");
                }
                raw.push('\n');
            }
            Err(e) => failures.push(format!("sync: {e:#}")),
        }
    }
    for f in &failures {
        eprintln!("halo-bench mirror: {f}");
    }
    let mut markdown = format!(
        "# `cargo xtask bench mirror`, {date}\n\n## Configuration\n\n{config}\n## Results\n\n"
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
    let path = options.report_dir.join(format!("mirror-{stamp}.md"));
    fs::write(&path, markdown).with_context(|| format!("write {}", path.display()))?;
    println!("report saved to {}", path.display());
    ensure!(failures.is_empty(), "{} part(s) failed", failures.len());
    Ok(())
}
