//! The writers of `halo-bench mirror`: 4 KiB write + fsync latency on the
//! primary's replicated directory, streaming write throughput (`dd`), and
//! the cost of writes outside replicated directories; each run with halo
//! off and on in the same lab.

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::lab::Lab;

/// The hidden subcommand that makes `halo-bench` the writer.
pub const WRITER_COMMAND: &str = "mirror-writer";

/// Writes discarded before timing starts.
const WARM_UP: u32 = 50;
/// The size of one write.
const BLOCK: usize = 4096;

/// The body of the hidden writer: `ops` writes of 4 KiB into `path`,
/// cycling over `span` bytes; with `fsync`, each followed by fsync and
/// its latency printed in ns, one per line; without, one line with the
/// mean ns per write.
pub fn writer(path: &Path, ops: u32, span: u64, fsync: bool) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let block = [0x5au8; BLOCK];
    let slots = (span / BLOCK as u64).max(1);
    let mut latencies = Vec::with_capacity(ops as usize);
    let mut started = Instant::now();
    for i in 0..ops + WARM_UP {
        if i == WARM_UP {
            started = Instant::now();
        }
        let offset = (u64::from(i) % slots) * BLOCK as u64;
        let op = Instant::now();
        file.write_all_at(&block, offset)?;
        if fsync {
            file.sync_all()?;
        }
        if i >= WARM_UP && fsync {
            latencies.push(op.elapsed().as_nanos());
        }
    }
    if fsync {
        let lines: Vec<String> = latencies.iter().map(|l| l.to_string()).collect();
        println!("{}", lines.join("\n"));
    } else {
        println!("{}", started.elapsed().as_nanos() / u128::from(ops));
    }
    Ok(())
}

/// Runs the writer in `host`; returns its stdout.
fn run_writer(
    lab: &Lab,
    host: &str,
    path: &str,
    ops: u32,
    span: u64,
    fsync: bool,
) -> Result<String> {
    let exe = std::env::current_exe().context("find the bench's own executable")?;
    let mut command = Command::new(exe);
    command.args([WRITER_COMMAND, path, &ops.to_string(), &span.to_string()]);
    if fsync {
        command.arg("--fsync");
    }
    let output = lab
        .host(host)
        .run_timeout(&mut command, Duration::from_secs(600))?;
    if !output.status.success() {
        bail!(
            "the writer failed in {host}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ops` 4 KiB write + fsync latencies on `path` in `host`.
pub fn fsync_latencies(lab: &Lab, host: &str, path: &str, ops: u32) -> Result<Vec<Duration>> {
    let out = run_writer(lab, host, path, ops, 1 << 20, true)?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(Duration::from_nanos)
        .collect())
}

/// Mean ns of one 4 KiB write (no fsync) over a 64 MiB file at `path`.
pub fn write_cost(lab: &Lab, host: &str, path: &str, ops: u32) -> Result<f64> {
    let out = run_writer(lab, host, path, ops, 64 << 20, false)?;
    out.trim()
        .parse()
        .with_context(|| format!("the writer printed {out:?}"))
}

/// Copies `mib` MiB from `source` to `target` in `host` with dd in 1 MiB
/// blocks, ending with fdatasync (with `sync = "fsync"` that waits for the
/// secondary); returns MiB/s. Removes `target` afterwards.
pub fn stream(lab: &Lab, host: &str, source: &str, target: &str, mib: u32) -> Result<f64> {
    let started = Instant::now();
    lab.host(host)
        .run_timeout(
            Command::new("dd").args([
                &format!("if={source}"),
                &format!("of={target}"),
                "bs=1M",
                &format!("count={mib}"),
                "conv=fdatasync",
                "status=none",
            ]),
            Duration::from_secs(600),
        )
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                bail!("dd: {}", String::from_utf8_lossy(&o.stderr))
            }
        })?;
    let elapsed = started.elapsed();
    lab.host(host).sh(&format!("rm -f {target} && sync"))?;
    Ok(f64::from(mib) / elapsed.as_secs_f64())
}

/// The mean round-trip time from `from` to `to`'s address (20 pings).
pub fn rtt(lab: &Lab, from: &str, to: &str) -> Result<Duration> {
    let address = lab.host(to).ipv4();
    let out = lab
        .host(from)
        .sh(&format!("ping -c 20 -i 0.05 -q {address}"))?;
    // rtt min/avg/max/mdev = 0.041/0.058/0.090/0.011 ms
    let avg: f64 = out
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("min/avg")))
        .and_then(|(_, v)| v.split('/').nth(1)?.parse().ok())
        .with_context(|| format!("no rtt line in ping's output: {out}"))?;
    Ok(Duration::from_secs_f64(avg / 1000.0))
}
