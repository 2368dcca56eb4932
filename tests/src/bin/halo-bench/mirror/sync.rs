//! Initial copy of a data set of many files, and resync after 1 % of it
//! changed, against `rsync -a` (rsync daemon on the secondary) over the
//! same lab link.

use std::{
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::{
    cluster::{module_in, Cluster, Timing},
    lab::{self, Lab, LabBuilder},
};

use super::{mirror_toml, wait_module, DIR, MODULE};

/// Where the rsync daemon on n2 keeps its copy (private to each host).
pub const RSYNC_ROOT: &str = "/var/lib/rsync-copy";
/// The directory rsync copies the data set into.
const COPY: &str = "/var/lib/rsync-copy/copy";

/// How long the pair stays in sync before a node goes away: several of the
/// primary's sync points (one every 2 s), which incremental resyncs need.
pub const SETTLE: Duration = Duration::from_secs(6);

/// What `sync::run` was asked to do.
pub struct Options {
    pub data_mib: u32,
    pub files: u32,
}

/// The figures of one transfer.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub time: Duration,
    pub bytes_sent: u64,
    /// rsync only: its time plus a `sync -f` of the copy's file system on
    /// the receiving node. halo's "in sync" comes after the secondary made
    /// everything durable (`syncfs`); this is the same for rsync's copy.
    pub durable: Option<Duration>,
}

pub struct SyncResult {
    pub data_bytes: u64,
    pub files: u32,
    pub changed_bytes: u64,
    pub halo_initial: Transfer,
    pub rsync_initial: Transfer,
    pub halo_resync: Transfer,
    pub rsync_resync: Transfer,
    pub failover_changed_bytes: u64,
    pub halo_failover_resync: Transfer,
    pub rsync_failover_resync: Transfer,
    /// The primary's module events from the secondary's return on, and its
    /// daemon's `secondary joined` lines (incremental or full).
    pub events: Vec<String>,
}

/// Makes `files` files of random bytes totalling `bytes`, 100 per directory.
const MAKE: &str = r#"
import os, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = total // files
for i in range(files):
    d = os.path.join(root, "d%04d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(os.urandom(size))
os.sync()
"#;

/// Overwrites 10 % of every tenth file in place (1 % of the data) with new
/// random bytes, each file made durable with fsync; prints the bytes
/// changed. Not sync(2): it concerns every root on the machine, and in the
/// lab the nodes share one kernel, so the capture a killed node leaves
/// attached (docs/mirror-durability.md) would hold the survivor's sync
/// until that node's daemon returns.
const CHANGE: &str = r#"
import os, sys
root = sys.argv[1]
changed = 0
names = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
for i, path in enumerate(names):
    if i % 10 != 3:
        continue
    size = os.path.getsize(path)
    n = size // 10
    with open(path, "r+b") as f:
        f.seek((size - n) // 2)
        f.write(os.urandom(n))
        f.flush()
        os.fsync(f.fileno())
    changed += n
print(changed)
"#;

/// The `(at_ms, bytes sent)` of every "in sync" event of `node`'s module.
fn in_sync_events(cluster: &Cluster<'_>, node: &str) -> Result<Vec<(u64, u64)>> {
    Ok(cluster
        .module_log(node, MODULE)?
        .iter()
        .filter_map(|e| {
            let rest = e
                .text
                .strip_prefix("the secondary is in sync with generation ")?;
            let bytes = rest.split(": ").nth(1)?.strip_suffix(" bytes sent")?;
            Some((e.at_ms, bytes.parse().ok()?))
        })
        .collect())
}

/// Waits for an "in sync" event beyond the first `seen` ones; returns it.
fn wait_in_sync(cluster: &Cluster<'_>, node: &str, seen: usize) -> Result<(u64, u64)> {
    let mut found = None;
    lab::wait_until(Duration::from_secs(600), "the secondary in sync", || {
        found = in_sync_events(cluster, node)?.get(seen).copied();
        Ok(found.is_some())
    })?;
    found.context("no in-sync event")
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `rsync -a --stats` of the replicated tree from `from` to `to`'s daemon.
fn rsync(lab: &Lab, from: &str, to: &str) -> Result<Transfer> {
    let target = format!("rsync://{}/copy/", lab.host(to).ipv4());
    let started = Instant::now();
    let output = lab.host(from).run_timeout(
        Command::new("rsync").args(["-a", "--stats", &format!("{DIR}/"), &target]),
        Duration::from_secs(600),
    )?;
    let time = started.elapsed();
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("rsync: {out}{}", String::from_utf8_lossy(&output.stderr));
    }
    let bytes_sent = out
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .and_then(|n| n.trim().replace(',', "").parse().ok())
        .with_context(|| format!("no `Total bytes sent` in rsync's output: {out}"))?;
    lab.host(to).sh(&format!("sync -f {COPY}"))?;
    Ok(Transfer {
        time,
        bytes_sent,
        durable: Some(started.elapsed()),
    })
}

/// Starts an rsync daemon on `host` serving `path` as `copy`, its
/// configuration in the host's private [`RSYNC_ROOT`], and waits until it
/// answers.
pub fn rsync_daemon(lab: &Lab, host: &str, path: &str) -> Result<halo_tests::lab::LabProcess> {
    let h = lab.host(host);
    std::fs::create_dir_all(h.outside_path(path))?;
    std::fs::write(
        h.outside_path(format!("{RSYNC_ROOT}/rsyncd.conf")),
        format!(
            "use chroot = no\nuid = root\ngid = root\n[copy]\npath = {path}\n\
             read only = no\n"
        ),
    )?;
    let daemon = h.spawn(
        "rsyncd",
        Command::new("rsync").args([
            "--daemon",
            "--no-detach",
            &format!("--config={RSYNC_ROOT}/rsyncd.conf"),
        ]),
    )?;
    lab::wait_until(Duration::from_secs(10), "the rsync daemon", || {
        Ok(h.sh(&format!("rsync rsync://{}/ 2>&1 || true", h.ipv4()))?
            .contains("copy"))
    })?;
    Ok(daemon)
}

pub fn run(options: &Options) -> Result<SyncResult> {
    let lab = LabBuilder::new("bench_mirror_sync")
        .hosts(&["n1", "n2"])
        .private_path(RSYNC_ROOT)
        .build()
        .context("build the sync lab")?;
    let data_bytes = u64::from(options.data_mib) << 20;
    println!(
        "  making {} MiB in {} files on n1 …",
        options.data_mib, options.files
    );
    lab.host("n1").run_timeout(
        Command::new("/usr/bin/python3").args([
            "-c",
            MAKE,
            DIR,
            &options.files.to_string(),
            &data_bytes.to_string(),
        ]),
        Duration::from_secs(600),
    )?;
    // The data set on disk first: a copier's `sync -f` must not pay for
    // writing the source too (both nodes share the machine's file system).
    lab.host("n1").sh(&format!("sync -f {DIR}"))?;
    let _rsyncd = rsync_daemon(&lab, "n2", COPY)?;

    println!("  initial copy: rsync -a …");
    let rsync_initial = rsync(&lab, "n1", "n2")?;
    println!("  initial copy: halo …");
    let mut cluster =
        Cluster::configure(&lab, &["n1", "n2"], 1, Timing::default(), &mirror_toml())?;
    cluster.start("n1")?;
    let started = SystemTime::now();
    cluster.start("n2")?;
    let (at, bytes_sent) = wait_in_sync(&cluster, "n1", 0)?;
    let halo_initial = Transfer {
        time: Duration::from_millis(at.saturating_sub(epoch_ms(started))),
        bytes_sent,
        durable: None,
    };
    wait_module(&cluster, "n2", "SECOND")?;

    // The secondary goes away, 1 % changes on the primary, it returns.
    // First the pair stays in sync long enough for sync points (every 2 s).
    std::thread::sleep(SETTLE);
    println!("  resync after 1 % changed: halo …");
    cluster.kill("n2")?;
    cluster.wait_status("n1", Duration::from_secs(30), "n1 ALONE", |s| {
        module_in(s, MODULE, "ALONE", "ready")
    })?;
    let changed = lab.host("n1").run_timeout(
        Command::new("/usr/bin/python3").args(["-c", CHANGE, DIR]),
        Duration::from_secs(300),
    )?;
    let changed_bytes: u64 = String::from_utf8_lossy(&changed.stdout)
        .trim()
        .parse()
        .context("the change script's output")?;
    let seen = in_sync_events(&cluster, "n1")?.len();
    let started = SystemTime::now();
    cluster.start("n2")?;
    let (at, bytes_sent) = wait_in_sync(&cluster, "n1", seen)?;
    let halo_resync = Transfer {
        time: Duration::from_millis(at.saturating_sub(epoch_ms(started))),
        bytes_sent,
        durable: None,
    };
    let mut events: Vec<String> = cluster
        .module_log("n1", MODULE)?
        .iter()
        .filter(|e| e.at_ms >= epoch_ms(started))
        .map(|e| format!("{} {}: {}", e.at_ms, e.source, e.text))
        .collect();
    events.extend(
        cluster
            .log("n1")?
            .lines()
            .filter(|l| l.contains("secondary joined"))
            .map(str::to_owned),
    );
    println!("  resync after 1 % changed: rsync -a …");
    let rsync_resync = rsync(&lab, "n1", "n2")?;
    wait_module(&cluster, "n2", "SECOND")?;
    wait_module(&cluster, "n1", "PRIM")?;

    // The primary host dies, 1 % changes on the survivor, the old primary
    // returns as the secondary. rsync's copy on n1: the same old data.
    println!("  resync after a failover and 1 % changed: halo …");
    lab.host("n1")
        .sh(&format!("mkdir -p {COPY} && cp -a {DIR}/. {COPY}/ && sync"))?;
    std::thread::sleep(SETTLE);
    lab.kill_host("n1")?;
    wait_module(&cluster, "n2", "ALONE")?;
    let changed = lab.host("n2").run_timeout(
        Command::new("/usr/bin/python3").args(["-c", CHANGE, DIR]),
        Duration::from_secs(300),
    )?;
    let failover_changed_bytes: u64 = String::from_utf8_lossy(&changed.stdout)
        .trim()
        .parse()
        .context("the change script's output")?;
    let seen = in_sync_events(&cluster, "n2")?.len();
    let started = SystemTime::now();
    cluster.start("n1")?;
    let (at, bytes_sent) = wait_in_sync(&cluster, "n2", seen)?;
    let halo_failover_resync = Transfer {
        time: Duration::from_millis(at.saturating_sub(epoch_ms(started))),
        bytes_sent,
        durable: None,
    };
    events.extend(
        cluster
            .log("n2")?
            .lines()
            .filter(|l| l.contains("secondary joined"))
            .map(|l| format!("n2: {l}")),
    );
    println!("  resync after a failover and 1 % changed: rsync -a …");
    let _rsyncd1 = rsync_daemon(&lab, "n1", COPY)?;
    let rsync_failover_resync = rsync(&lab, "n2", "n1")?;
    Ok(SyncResult {
        data_bytes,
        files: options.files,
        changed_bytes,
        halo_initial,
        rsync_initial,
        halo_resync,
        rsync_resync,
        failover_changed_bytes,
        halo_failover_resync,
        rsync_failover_resync,
        events,
    })
}
