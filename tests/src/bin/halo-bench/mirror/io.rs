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
    small_descriptor_table()?;
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

/// Goes on in a child with the descriptor table an application started by a
/// shell or a service manager has, and exits with it.
///
/// A process inherits a table as large as its parent's highest open
/// descriptor at the fork and keeps it through `exec`: a shell or a `cargo`
/// that holds one near 256 (a jobserver pipe) would hand the writer a grown
/// table, which the capture reads through helper calls, a slower path than
/// applications take (`fd_file_direct` in `ebpf/src/capture.rs`). A child
/// forked once the inherited descriptors are closed starts with the small
/// one. The writer runs single-threaded here, before any thread starts.
fn small_descriptor_table() -> Result<()> {
    // SAFETY: closes descriptors this process never uses (the standard
    // streams stay); a no-op if there are none.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    // SAFETY: single-threaded at this point: the child may run anything.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => Ok(()),
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            if unsafe { libc::waitpid(child, &mut status, 0) } != child {
                bail!("waitpid: {}", std::io::Error::last_os_error());
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            };
            std::process::exit(code)
        }
    }
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

/// The capture programs' own kernel time per write outside replicated
/// directories, from the kernel's BPF run-time statistics.
pub struct ProgramTime {
    /// ns per write of the `capture_enter_*` programs, all daemons summed.
    pub enter_ns: f64,
    /// ns per write of `capture_exit`, all daemons summed.
    pub exit_ns: f64,
    /// How many sets of capture programs are loaded (one per daemon).
    pub sets: usize,
}

/// Runs [`write_cost`]'s writes again with BPF run-time statistics on (the
/// statistics slow every program down a little, so the wall-clock figure
/// comes from a run without them) and returns the capture programs' share.
pub fn capture_program_time(lab: &Lab, host: &str, path: &str, ops: u32) -> Result<ProgramTime> {
    // Statistics stay on while this descriptor is open, and go off when it
    // closes, also if the bench dies.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enable the kernel's BPF run-time statistics")?;
    let before = capture_run_times()?;
    write_cost(lab, host, path, ops)?;
    let after = capture_run_times()?;
    let mut time = ProgramTime {
        enter_ns: 0.0,
        exit_ns: 0.0,
        sets: 0,
    };
    for (id, (name, ns)) in &after {
        let spent = ns - before.get(id).map_or(0, |(_, ns)| *ns);
        let per_write = spent as f64 / f64::from(ops);
        if name == "capture_exit" {
            time.exit_ns += per_write;
            time.sets += 1;
        } else if name.starts_with("capture_enter") {
            time.enter_ns += per_write;
        }
    }
    if time.sets == 0 {
        bail!("no capture program is loaded");
    }
    Ok(time)
}

/// The run time (ns) of every loaded capture program, by id, with its name
/// (the kernel keeps 15 bytes of it).
fn capture_run_times() -> Result<std::collections::HashMap<u32, (String, u64)>> {
    let mut programs = std::collections::HashMap::new();
    for program in aya::programs::loaded_programs() {
        let program = program.context("read a loaded program's information")?;
        let name = program.name_as_str().unwrap_or_default().to_owned();
        if name.starts_with("capture_") {
            let ns = u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
            programs.insert(program.id(), (name, ns));
        }
    }
    Ok(programs)
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
