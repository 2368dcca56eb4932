//! `halo-bench detect`: how long a node takes to declare a crashed peer down,
//! and whether a node starved of CPU declares a live peer down.
//!
//! Detection time is measured from the bench's wall clock read right before
//! kill(2) of the peer's daemon to the timestamp of the survivor's
//! `peer down` log line: both read the same machine's CLOCK_REALTIME, so no
//! clock offset enters the figure, and no polling latency either.

use std::{
    collections::hash_map::RandomState,
    fs,
    hash::BuildHasher as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context as _, Result};
use halo_tests::{
    cluster::{self, peer_up, Cluster, Timing},
    lab::{Lab, LabBuilder},
};

use crate::{
    daemon_log::{self, LogLine, NO_REALTIME, PEER_DOWN, TICK_LATE},
    load::{self, CpuHogs, CpuTimes},
    stats::{human, ms, ratio, Summary},
};

/// The node that watches.
const SURVIVOR: &str = "a";
/// The node whose daemon is killed.
const VICTIM: &str = "b";
/// The lab host that runs the CPU hogs, outside the cluster.
const LOAD_HOST: &str = "load";
/// How long a daemon may take to start, or a restarted peer to be seen up.
const CONVERGE: Duration = Duration::from_secs(10);
/// How often the survivor's log is read while waiting for `peer down`.
const LOG_POLL: Duration = Duration::from_millis(5);
/// How far past the timeout a detection may come and still meet the
/// bound: the heartbeat thread's wake-up and the log line's write.
const WAKE_SLACK: Duration = Duration::from_millis(10);
/// How often the stress window reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// What `halo-bench detect` was asked to do.
pub struct Options {
    pub runs: u32,
    pub stress_duration: Duration,
    pub hogs_per_core: usize,
    pub save_logs: Option<PathBuf>,
}

/// A heartbeat setting the detection time is measured at.
struct Setting {
    label: &'static str,
    timing: Timing,
}

/// The settings of issue 3: halo's defaults, and twice as fast.
fn settings() -> [Setting; 2] {
    [
        Setting {
            label: "default",
            timing: Timing::default(),
        },
        Setting {
            label: "fast",
            timing: Timing {
                pulse: Duration::from_millis(50),
                timeout: Duration::from_millis(250),
            },
        },
    ]
}

/// One kill of the victim's daemon.
struct Run {
    /// Kill to `peer down`; `None` if it was not logged in time.
    detection: Option<Duration>,
    /// `peer down` lines for the victim before it was killed.
    false_downs: usize,
    /// The survivor's late-tick warnings between the settle and the
    /// detection: what makes an outlier.
    late_ticks: Vec<u64>,
}

/// Every run at one setting.
struct SettingResult {
    setting: Setting,
    runs: Vec<Run>,
    /// How long the survivor waited for each `peer down` before giving up.
    patience: Duration,
}

/// The stress window's findings.
struct StressResult {
    duration: Duration,
    hogs: usize,
    cores: usize,
    /// Per core, the share of the window it was busy, in percent.
    busy: Vec<f64>,
    nodes: Vec<NodeStress>,
    /// Whether each node still saw its peer up at the end.
    up_at_end: Vec<(String, bool)>,
}

/// What one node logged during the stress window.
struct NodeStress {
    node: &'static str,
    peer: &'static str,
    /// `peer down` lines for `peer`: false detections.
    peer_downs: usize,
    /// The lateness of each late tick it reported.
    late_ms: Vec<u64>,
    /// Whether its heartbeat thread ran without SCHED_FIFO.
    not_realtime: bool,
}

/// Runs the bench and prints its report.
pub fn run(options: &Options) -> Result<()> {
    ensure!(
        std::env::var_os("HALO_BIN").is_some(),
        "HALO_BIN is not set: run the bench with `cargo xtask bench detect`, which builds halo"
    );
    let halo = cluster::halo_bin();
    let cores = load::cores();
    println!("halo-bench detect");
    println!("  halo:   {}", halo.display());
    println!(
        "  lab:    hosts {SURVIVOR} and {VICTIM} (a cluster, one heartbeat network through a \
         veth bridge) and {LOAD_HOST} (CPU hogs), all on this machine ({cores} cores)"
    );
    println!(
        "  runs:   {} per setting; settings (pulse/timeout): {}",
        options.runs,
        settings()
            .iter()
            .map(|s| format!("{} {}", s.label, timing(s.timing)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  a run:  {VICTIM}'s daemon (re)started after a random part of a pulse, {SURVIVOR} sees it up (`halo status`), \
         2 pulses + a random part of one, SIGKILL of {VICTIM}'s daemon, {SURVIVOR}'s log read \
         for `peer down`; {SURVIVOR} runs throughout, HALO_LOG=info"
    );
    if options.stress_duration.is_zero() {
        println!("  stress: skipped (--stress-duration 0s)");
    } else {
        println!(
            "  stress: {} at the default timing, {} busy-loop processes per core",
            human(options.stress_duration),
            options.hogs_per_core
        );
    }
    println!();

    let lab = LabBuilder::new("bench_detect")
        .hosts(&[SURVIVOR, VICTIM, LOAD_HOST])
        .build()
        .context("build the bench's lab")?;

    let mut results = Vec::new();
    for setting in settings() {
        results.push(measure_detection(&lab, setting, options.runs)?);
    }
    let stress = if options.stress_duration.is_zero() {
        None
    } else {
        Some(count_false_detections(
            &lab,
            options.stress_duration,
            options.hogs_per_core * cores,
            cores,
        )?)
    };
    if let Some(dir) = &options.save_logs {
        save_logs(&lab, dir)?;
    }

    print_detection(&results);
    if let Some(stress) = &stress {
        print_stress(stress);
    }
    Ok(())
}

/// Kills the victim's daemon `runs` times at `setting`, restarting it in
/// between, and reads each detection time from the survivor's log.
fn measure_detection(lab: &Lab, setting: Setting, runs: u32) -> Result<SettingResult> {
    let timing = setting.timing;
    println!(
        "detection at {} {}: {runs} runs",
        setting.label,
        self::timing(timing)
    );
    let mut cluster = Cluster::configure(lab, &[SURVIVOR, VICTIM], 1, timing, "")
        .context("configure the cluster")?;
    cluster.start_all()?;
    // Generous: a detection this late is a finding, reported as missed.
    let patience = (timing.timeout * 20).max(CONVERGE);
    let random = RandomState::new();
    // A random part of a pulse each time it is asked.
    let mut draws = 0u64;
    let mut within_pulse = || {
        draws += 1;
        Duration::from_micros(random.hash_one(draws) % (timing.pulse.as_micros() as u64).max(1))
    };
    let mut measured = Vec::new();
    for index in 1..=runs {
        cluster.wait_status(SURVIVOR, CONVERGE, "the survivor to see its peer up", |s| {
            peer_up(s, VICTIM)
        })?;
        let from = cluster.log(SURVIVOR)?.len();
        // A random phase, so that the kill falls anywhere in the pulse of
        // the victim's sends.
        thread::sleep(timing.pulse * 2 + within_pulse());
        let killed = cluster.kill_timed(VICTIM)?;
        let run = wait_for_peer_down(&mut cluster, from, killed, patience)?;
        match run.detection {
            Some(detection) => print!("  {index:>3}: {} ms", ms(detection)),
            None => print!("  {index:>3}: missed (no `peer down` within {patience:?})"),
        }
        if !run.late_ticks.is_empty() {
            print!(", late ticks (ms): {:?}", run.late_ticks);
        }
        if run.false_downs > 0 {
            print!(", {} false `peer down` before the kill", run.false_downs);
        }
        println!();
        measured.push(run);
        // Restarting right after the detection would keep the victim's
        // sends in about the same phase to the survivor's ticks run after
        // run (the detection happens on a tick, the start-up takes a steady
        // time), and that phase sets where in a pulse detections fall: draw
        // it anew.
        thread::sleep(within_pulse());
        cluster.start(VICTIM)?;
    }
    println!();
    Ok(SettingResult {
        setting,
        runs: measured,
        patience,
    })
}

/// Waits for the survivor's `peer down` of the victim in its log after byte
/// `from`, killed at `killed`.
fn wait_for_peer_down(
    cluster: &mut Cluster,
    from: usize,
    killed: SystemTime,
    patience: Duration,
) -> Result<Run> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = cluster.daemon(SURVIVOR)?.try_wait()? {
            bail!(
                "the survivor's daemon exited ({status}) during the run; its log:\n{}",
                cluster.log(SURVIVOR)?
            );
        }
        let log = cluster.log(SURVIVOR)?;
        let events: Vec<LogLine> = daemon_log::events(since(&log, from)).collect();
        let (before, after): (Vec<&LogLine>, Vec<&LogLine>) = events
            .iter()
            .filter(|e| e.is(PEER_DOWN) && e.field("peer") == Some(VICTIM))
            .partition(|e| e.at < killed);
        let detected = after.first().map(|e| e.at);
        if detected.is_some() || Instant::now() >= deadline {
            let until = detected.unwrap_or_else(SystemTime::now);
            let late_ticks = events
                .iter()
                .filter(|e| e.is(TICK_LATE) && e.at <= until)
                .filter_map(|e| e.field("late_ms")?.parse().ok())
                .collect();
            let detection = detected
                .map(|at| at.duration_since(killed))
                .transpose()
                .context("a `peer down` logged before the kill passed the filter")?;
            return Ok(Run {
                detection,
                false_downs: before.len(),
                late_ticks,
            });
        }
        thread::sleep(LOG_POLL);
    }
}

/// Runs both daemons at the default timing while `hogs` busy loops saturate
/// the machine for `duration`, and counts what the daemons logged meanwhile.
fn count_false_detections(
    lab: &Lab,
    duration: Duration,
    hogs: usize,
    cores: usize,
) -> Result<StressResult> {
    let timing = Timing::default();
    println!(
        "false detections at {}: {} with {hogs} CPU hogs on {cores} cores",
        self::timing(timing),
        human(duration)
    );
    let pairs = [(SURVIVOR, VICTIM), (VICTIM, SURVIVOR)];
    let mut cluster = Cluster::configure(lab, &[SURVIVOR, VICTIM], 1, timing, "")
        .context("configure the cluster")?;
    cluster.start_all()?;
    for (node, peer) in pairs {
        cluster.wait_status(node, CONVERGE, "both nodes to see each other up", |s| {
            peer_up(s, peer)
        })?;
    }
    let from: Vec<usize> = pairs
        .iter()
        .map(|(node, _)| Ok(cluster.log(node)?.len()))
        .collect::<Result<_>>()?;

    let mut load = CpuHogs::start(lab.host(LOAD_HOST), hogs)?;
    println!("  hogs started, pids {:?}", load.pids());
    thread::sleep(load::RAMP_UP);
    let started = Instant::now();
    let cpu_before = CpuTimes::read()?;
    let mut next_report = started + PROGRESS_EVERY;
    loop {
        let left = duration.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_secs(1)));
        load.check_alive()?;
        for (node, _) in pairs {
            if let Some(status) = cluster.daemon(node)?.try_wait()? {
                bail!(
                    "{node}'s daemon exited ({status}) under load; its log:\n{}",
                    cluster.log(node)?
                );
            }
        }
        if Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            let busy = CpuTimes::read()?.busy_since(&cpu_before);
            let downs: usize = pairs
                .iter()
                .zip(&from)
                .map(|(&(node, peer), &from)| {
                    Ok(peer_downs(since(&cluster.log(node)?, from), peer))
                })
                .sum::<Result<_>>()?;
            println!(
                "  {} of {}: cores busy {}, `peer down` so far {downs}",
                human(Duration::from_secs(started.elapsed().as_secs())),
                human(duration),
                percents(&busy)
            );
        }
    }
    let busy = CpuTimes::read()?.busy_since(&cpu_before);
    drop(load);

    let mut nodes = Vec::new();
    for ((node, peer), from) in pairs.into_iter().zip(from) {
        let log = cluster.log(node)?;
        let window = since(&log, from);
        let late_ms = daemon_log::events(window)
            .filter(|e| e.is(TICK_LATE))
            .filter_map(|e| e.field("late_ms")?.parse().ok())
            .collect();
        nodes.push(NodeStress {
            node,
            peer,
            peer_downs: peer_downs(window, peer),
            late_ms,
            not_realtime: daemon_log::events(&log).any(|e| e.is(NO_REALTIME)),
        });
    }
    let mut up_at_end = Vec::new();
    for (node, peer) in pairs {
        up_at_end.push((node.to_owned(), peer_up(&cluster.status(node)?, peer)));
    }
    println!();
    Ok(StressResult {
        duration,
        hogs,
        cores,
        busy,
        nodes,
        up_at_end,
    })
}

/// The part of `log` after byte `from`.
fn since(log: &str, from: usize) -> &str {
    log.get(from..).unwrap_or_default()
}

/// The `peer down` lines for `peer` in `log`.
fn peer_downs(log: &str, peer: &str) -> usize {
    daemon_log::events(log)
        .filter(|e| e.is(PEER_DOWN) && e.field("peer") == Some(peer))
        .count()
}

/// Copies every cluster node's daemon log (all settings, appended) to `dir`.
fn save_logs(lab: &Lab, dir: &std::path::Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for node in [SURVIVOR, VICTIM] {
        let from = lab.host(node).state_dir().join("halo.log");
        let to = dir.join(format!("{node}.log"));
        fs::copy(&from, &to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    }
    println!("daemon logs saved in {}", dir.display());
    Ok(())
}

fn print_detection(results: &[SettingResult]) {
    println!(
        "detection time: SIGKILL of {VICTIM}'s daemon -> `{PEER_DOWN} peer={VICTIM}` in \
         {SURVIVOR}'s log (ms)"
    );
    println!(
        "  kill time: the bench's clock right before kill(2); detection: the log line's \
         timestamp; one machine, one clock"
    );
    println!(
        "  {:<20} {:>4} {:>6} {:>7} {:>7} {:>7} {:>7} {:>11} {:>11} {:>13}",
        "setting",
        "runs",
        "missed",
        "min",
        "p50",
        "p90",
        "max",
        "p50/timeout",
        "max/timeout",
        "bound"
    );
    for result in results {
        let timing = result.setting.timing;
        let detections: Vec<Duration> = result.runs.iter().filter_map(|r| r.detection).collect();
        let missed = result.runs.len() - detections.len();
        let bound = timing.timeout + WAKE_SLACK;
        let name = format!("{} {}", result.setting.label, self::timing(timing));
        match Summary::of(&detections) {
            Some(s) => println!(
                "  {name:<20} {:>4} {missed:>6} {:>7} {:>7} {:>7} {:>7} {:>11} {:>11} {:>13}",
                s.count,
                ms(s.min),
                ms(s.p50),
                ms(s.p90),
                ms(s.max),
                format!("{}x", ratio(s.p50, timing.timeout)),
                format!("{}x", ratio(s.max, timing.timeout)),
                ms(bound),
            ),
            None => println!("  {name:<20} {:>4} {missed:>6}  (no detection measured)", 0),
        }
    }
    for result in results {
        let timing = result.setting.timing;
        let bound = timing.timeout + WAKE_SLACK;
        let detections: Vec<Duration> = result.runs.iter().filter_map(|r| r.detection).collect();
        let over = detections.iter().filter(|d| **d > bound).count();
        let early = detections
            .iter()
            .filter(|d| **d < timing.timeout - timing.pulse)
            .count();
        let false_downs: usize = result.runs.iter().map(|r| r.false_downs).sum();
        let late: usize = result.runs.iter().map(|r| r.late_ticks.len()).sum();
        let missed = result.runs.len() - detections.len();
        let name = format!("{} {}", result.setting.label, self::timing(timing));
        match Summary::of(&detections) {
            Some(s) => {
                println!(
                "  {name}: p50 = {} x timeout, max = {} x timeout; bound timeout + {} ms = {} ms: \
                 {over} of {} above ({})",
                ratio(s.p50, timing.timeout),
                ratio(s.max, timing.timeout),
                WAKE_SLACK.as_millis(),
                ms(bound),
                s.count,
                if over == 0 && missed == 0 { "met" } else { "MISSED" },
            )
            }
            None => println!("  {name}: nothing measured"),
        }
        println!(
            "    a kill lands anywhere in a pulse and the survivor wakes when the silence reaches \
             its timeout, so detection falls in (timeout - pulse, timeout] = ({}, {}] ms: {early} \
             below; {missed} missed (waited {:?}); \
             {false_downs} false `peer down` before a kill; {late} late ticks of {SURVIVOR}",
            ms(timing.timeout - timing.pulse),
            ms(timing.timeout),
            result.patience,
        );
    }
    println!();
}

fn print_stress(stress: &StressResult) {
    println!(
        "false detections with every core saturated ({} at the default {}, {} busy loops \
         on {} cores)",
        human(stress.duration),
        timing(Timing::default()),
        stress.hogs,
        stress.cores
    );
    println!("  cores busy during the window: {}", percents(&stress.busy));
    println!(
        "  {:<6} {:>10} {:>10} {:>14} {:>12}",
        "node", "peer down", "late ticks", "worst late ms", "SCHED_FIFO"
    );
    for node in &stress.nodes {
        let worst = node
            .late_ms
            .iter()
            .max()
            .map_or("-".to_owned(), u64::to_string);
        println!(
            "  {:<6} {:>10} {:>10} {:>14} {:>12}",
            node.node,
            format!("{} ({})", node.peer_downs, node.peer),
            node.late_ms.len(),
            worst,
            if node.not_realtime { "no" } else { "yes" }
        );
    }
    let total: usize = stress.nodes.iter().map(|n| n.peer_downs).sum();
    let verdict = if total == 0 { "met" } else { "MISSED" };
    println!("  false detections: {total} (target 0: {verdict})");
    for (node, up) in &stress.up_at_end {
        if !up {
            println!("  {node} did not see its peer up at the end of the window");
        }
    }
}

/// `100ms/500ms`.
fn timing(timing: Timing) -> String {
    format!("{}/{}", human(timing.pulse), human(timing.timeout))
}

/// `cpu0 99.8 %, cpu1 99.9 %`.
fn percents(busy: &[f64]) -> String {
    busy.iter()
        .enumerate()
        .map(|(core, busy)| format!("cpu{core} {busy:.1} %"))
        .collect::<Vec<_>>()
        .join(", ")
}
