//! Replication lag under a steady write load: how long after a write on
//! the primary its bytes can be read on the secondary, for halo with `sync
//! = "async"` and for lsyncd (Debian package, rsync to an rsync daemon)
//! with its default settings and with `delay = 1`, in the same lab.
//!
//! A writer on n1 writes numbered 4 KiB records at a steady rate,
//! round-robin over a few files, each write opening and closing its file
//! (lsyncd's default `inotifyMode = "CloseWrite"` sees nothing of a file
//! kept open). Every record carries the `CLOCK_MONOTONIC` time it was
//! written at; an observer on n2 (the same kernel, so the same clock)
//! watches the copy with inotify and, for each record it can read whole,
//! notes how long ago it was written.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    os::{fd::AsFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use halo::ebpf::farm::monotonic_ns;
use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{self, Lab, LabBuilder, LabProcess},
};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use super::{mirror_toml_with, stop_daemons, sync, wait_module, DIR};

/// The hidden subcommands that make `halo-bench` the writer and the
/// observer.
pub const WRITER_COMMAND: &str = "lag-writer";
pub const OBSERVER_COMMAND: &str = "lag-observer";

/// Where the observer writes its results and its ready mark (private to
/// each lab host).
const WORK: &str = "/var/lib/bench";
/// The size of one record.
const RECORD: usize = 4096;
/// The first bytes of every record.
const MAGIC: &[u8; 8] = b"HALOLAG1";

/// What `lag::run` was asked to do.
pub struct Options {
    /// Records written per second.
    pub rate: u32,
    /// How long the writer writes.
    pub seconds: u32,
    /// Files the records go round-robin into.
    pub files: u32,
}

/// The lags of one replicator: one entry per record, `None` for a record
/// that never arrived.
pub struct Run {
    pub name: String,
    pub lags: Vec<Option<Duration>>,
}

pub struct LagResult {
    pub runs: Vec<Run>,
    pub notes: Vec<String>,
}

fn file_name(file: u32) -> String {
    format!("lag-{file}.dat")
}

/// Record `seq`, written at `stamp_ns`: magic, seq, stamp, filler, seq.
fn record(seq: u64, stamp_ns: u64) -> [u8; RECORD] {
    let mut bytes = [0x6cu8; RECORD];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    bytes[16..24].copy_from_slice(&stamp_ns.to_le_bytes());
    bytes[RECORD - 8..].copy_from_slice(&seq.to_le_bytes());
    bytes
}

/// The write time of `bytes` if it is record `seq` whole.
fn stamp_of(bytes: &[u8; RECORD], seq: u64) -> Option<u64> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    (&bytes[..8] == MAGIC && word(8) == seq && word(RECORD - 8) == seq).then(|| word(16))
}

/// The body of the hidden writer: `rate` records per second for `seconds`
/// into `files` files under `dir`, record `seq` in file `seq % files` at
/// record slot `seq / files`; each write opens and closes its file.
pub fn writer(dir: &Path, files: u32, rate: u32, seconds: u32) -> Result<()> {
    ensure!(files > 0 && rate > 0, "files and rate must be positive");
    let total = u64::from(rate) * u64::from(seconds);
    let period = Duration::from_secs(1) / rate;
    let started = Instant::now();
    for seq in 0..total {
        let due = started + period * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let path = dir.join(file_name((seq % u64::from(files)) as u32));
        let slot = seq / u64::from(files);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        file.write_all_at(&record(seq, monotonic_ns()), slot * RECORD as u64)
            .with_context(|| format!("write {}", path.display()))?;
    }
    println!("{total}");
    Ok(())
}

/// What the observer knows of the copy.
struct Copy {
    dir: PathBuf,
    files: u32,
    /// Per file, the next record slot not yet seen.
    next: Vec<u64>,
    /// Per record, its lag once seen.
    lags: Vec<Option<u64>>,
    seen: u64,
}

impl Copy {
    /// Reads every whole record of `file` beyond those already seen.
    fn scan(&mut self, file: u32) -> Result<()> {
        let path = self.dir.join(file_name(file));
        let handle = match File::open(&path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let mut bytes = [0u8; RECORD];
        loop {
            let slot = self.next[file as usize];
            let seq = slot * u64::from(self.files) + u64::from(file);
            let Some(lag) = self.lags.get_mut(seq as usize) else {
                return Ok(());
            };
            match handle.read_exact_at(&mut bytes, slot * RECORD as u64) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
            }
            let Some(stamp) = stamp_of(&bytes, seq) else {
                return Ok(());
            };
            *lag = Some(monotonic_ns().saturating_sub(stamp));
            self.next[file as usize] += 1;
            self.seen += 1;
        }
    }
}

/// The body of the hidden observer: watches `dir` for the `total` records
/// of the writer, creates `ready` once the watch is in place, and writes
/// one line per record to `out` (its lag in ns, or `-` if it had not
/// arrived `seconds` after the start).
pub fn observer(
    dir: &Path,
    files: u32,
    total: u64,
    seconds: u32,
    ready: &Path,
    out: &Path,
) -> Result<()> {
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify_init")?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE,
        )
        .with_context(|| format!("watch {}", dir.display()))?;
    let names: HashMap<String, u32> = (0..files).map(|f| (file_name(f), f)).collect();
    let mut copy = Copy {
        dir: dir.to_owned(),
        files,
        next: vec![0; files as usize],
        lags: vec![None; total as usize],
        seen: 0,
    };
    fs::write(ready, b"").with_context(|| format!("create {}", ready.display()))?;
    let deadline = Instant::now() + Duration::from_secs(seconds.into());
    while copy.seen < total {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait =
            PollTimeout::try_from(left.min(Duration::from_millis(200))).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll inotify"),
        }
        let mut changed = vec![false; files as usize];
        loop {
            match inotify.read_events() {
                Ok(events) => {
                    for event in events {
                        let name = event.name.as_ref().and_then(|n| n.to_str());
                        if let Some(&file) = name.and_then(|n| names.get(n)) {
                            changed[file as usize] = true;
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e).context("read inotify events"),
            }
        }
        for file in (0..files).filter(|&f| changed[f as usize]) {
            copy.scan(file)?;
        }
    }
    // A last look, for records whose event came after the deadline.
    for file in 0..files {
        copy.scan(file)?;
    }
    let lines: Vec<String> = copy
        .lags
        .iter()
        .map(|lag| lag.map_or_else(|| "-".to_owned(), |ns| ns.to_string()))
        .collect();
    fs::write(out, lines.join("\n")).with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

/// Runs the writer on n1 and the observer on n2 once; `grace` is how long
/// after the writer's end the observer waits for the last records.
fn measure(lab: &Lab, options: &Options, grace: Duration) -> Result<Vec<Option<Duration>>> {
    let exe = std::env::current_exe().context("find the bench's own executable")?;
    let n2 = lab.host("n2");
    let ready = format!("{WORK}/lag.ready");
    let out = format!("{WORK}/lag.out");
    for path in [&ready, &out] {
        let _ = fs::remove_file(n2.outside_path(path));
    }
    let total = u64::from(options.rate) * u64::from(options.seconds);
    let mut observer = n2.spawn(
        "lag-observer",
        Command::new(&exe).args([
            OBSERVER_COMMAND,
            DIR,
            &options.files.to_string(),
            &total.to_string(),
            &(u64::from(options.seconds) + grace.as_secs()).to_string(),
            &ready,
            &out,
        ]),
    )?;
    lab::wait_until(Duration::from_secs(10), "the observer's watch", || {
        if let Some(status) = observer.try_wait()? {
            bail!("the observer ended ({status}): {}", observer.log()?);
        }
        Ok(n2.outside_path(&ready).exists())
    })?;
    let written = lab.host("n1").run_timeout(
        Command::new(&exe).args([
            WRITER_COMMAND,
            DIR,
            &options.files.to_string(),
            &options.rate.to_string(),
            &options.seconds.to_string(),
        ]),
        Duration::from_secs(u64::from(options.seconds) + 120),
    )?;
    ensure!(
        written.status.success(),
        "the writer failed: {}",
        String::from_utf8_lossy(&written.stderr)
    );
    let status = observer.wait_timeout(grace + Duration::from_secs(60))?;
    ensure!(
        status.success(),
        "the observer failed ({status}): {}",
        observer.log()?
    );
    let text = fs::read_to_string(n2.outside_path(&out))?;
    Ok(text
        .lines()
        .map(|l| l.parse().ok().map(Duration::from_nanos))
        .collect())
}

/// Empties the replicated directory on both nodes.
fn clear(lab: &Lab) -> Result<()> {
    for node in ["n1", "n2"] {
        lab.host(node)
            .sh(&format!("find {DIR} -mindepth 1 -delete && sync"))?;
    }
    Ok(())
}

/// lsyncd on n1 replicating [`DIR`] to the rsync daemon on n2 with
/// `delay` (its default without); returns once its startup sync is done.
fn lsyncd(lab: &Lab, delay: Option<u32>) -> Result<LabProcess> {
    let n1 = lab.host("n1");
    let config = format!("{WORK}/lsyncd.conf.lua");
    let delay = delay.map_or_else(String::new, |d| format!(",\n  delay = {d}"));
    fs::write(
        n1.outside_path(&config),
        format!(
            "settings {{ nodaemon = true }}\nsync {{\n  default.rsync,\n  source = \"{DIR}/\",\n  \
             target = \"rsync://{}/copy/\"{delay}\n}}\n",
            lab.host("n2").ipv4()
        ),
    )?;
    let mut process = n1.spawn("lsyncd", Command::new("lsyncd").arg(&config))?;
    lab::wait_until(Duration::from_secs(30), "lsyncd's startup sync", || {
        if let Some(status) = process.try_wait()? {
            bail!("lsyncd ended ({status}): {}", process.log()?);
        }
        Ok(process.log()?.contains("finished."))
    })?;
    Ok(process)
}

pub fn run(options: &Options) -> Result<LagResult> {
    let lab = LabBuilder::new("bench_mirror_lag")
        .hosts(&["n1", "n2"])
        .private_path(WORK)
        .private_path(sync::RSYNC_ROOT)
        .build()
        .context("build the lag lab")?;
    let mut runs = Vec::new();
    let mut notes = Vec::new();

    println!("  halo, sync = \"async\" …");
    let mut cluster = Cluster::configure(
        &lab,
        &["n1", "n2"],
        1,
        Timing::default(),
        &mirror_toml_with("async"),
    )?;
    cluster.start_all()?;
    wait_module(&cluster, "n1", "PRIM")?;
    wait_module(&cluster, "n2", "SECOND")?;
    runs.push(Run {
        name: "halo, sync = \"async\"".into(),
        lags: measure(&lab, options, Duration::from_secs(10))?,
    });
    stop_daemons(&mut cluster, &mut notes)?;

    let _rsyncd = sync::rsync_daemon(&lab, "n2", DIR)?;
    for (name, delay, grace) in [
        ("lsyncd, delay = 1", Some(1), 15),
        ("lsyncd, default settings", None, 45),
    ] {
        println!("  {name} …");
        clear(&lab)?;
        let mut process = lsyncd(&lab, delay)?;
        let lags = measure(&lab, options, Duration::from_secs(grace))?;
        process.kill()?;
        runs.push(Run {
            name: name.into(),
            lags,
        });
    }
    Ok(LagResult { runs, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_back_only_whole_and_with_its_number() {
        let bytes = record(42, 7_000_000);
        assert_eq!(stamp_of(&bytes, 42), Some(7_000_000));
        assert_eq!(stamp_of(&bytes, 43), None, "another record's slot");
        let mut torn = bytes;
        torn[RECORD - 8..].fill(0);
        assert_eq!(stamp_of(&torn, 42), None, "the tail not written yet");
        assert_eq!(stamp_of(&[0; RECORD], 0), None, "a hole");
    }
}
