//! CPU load: busy-loop processes that saturate the machine's cores, and the
//! kernel's CPU time counters that show they did.

use std::{fs, hint::black_box, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use halo_tests::lab::{Host, LabProcess};

/// The hidden subcommand that makes `halo-bench` spin.
pub const HOG_COMMAND: &str = "hog";

/// Spins on one core until killed: the body of a hog process.
pub fn spin() -> ! {
    let mut state = 1u64;
    loop {
        // An LCG step the optimiser cannot drop: the core stays busy with
        // plain integer work, no memory traffic, no syscalls.
        state = black_box(
            state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1),
        );
    }
}

/// Busy-loop processes running in a lab host; dropping it SIGKILLs each by
/// its pid.
pub struct CpuHogs {
    processes: Vec<LabProcess>,
}

impl CpuHogs {
    /// Starts `count` copies of this program's hog mode in `host`, at normal
    /// priority (like any other busy process on a node).
    pub fn start(host: &Host, count: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("find the bench's own executable")?;
        let mut hogs = CpuHogs {
            processes: Vec::with_capacity(count),
        };
        for index in 0..count {
            let process =
                host.spawn(&format!("hog-{index}"), Command::new(&exe).arg(HOG_COMMAND))?;
            hogs.processes.push(process);
        }
        Ok(hogs)
    }

    /// The hogs' pids, for the report.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(LabProcess::pid).collect()
    }

    /// Fails if a hog died: the load would then be less than announced.
    pub fn check_alive(&mut self) -> Result<()> {
        for process in &mut self.processes {
            let pid = process.pid();
            ensure!(
                process.try_wait()?.is_none(),
                "CPU hog {pid} exited early: see {}",
                process.log_path().display()
            );
        }
        Ok(())
    }
}

/// Cumulative CPU time counters of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone)]
pub struct CpuTimes {
    /// Per core: (busy, total).
    cores: Vec<(u64, u64)>,
}

impl CpuTimes {
    /// Reads the counters now.
    pub fn read() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        Self::parse(&stat)
    }

    fn parse(stat: &str) -> Result<Self> {
        let mut cores = Vec::new();
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            // `cpu0`, `cpu1`…; the summary line `cpu` has no number.
            let is_core = fields
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !is_core {
                continue;
            }
            // user nice system idle iowait irq softirq steal (guest time is
            // already inside user and nice).
            let ticks: Vec<u64> = fields
                .take(8)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("parse /proc/stat line {line:?}"))?;
            ensure!(ticks.len() >= 5, "short /proc/stat line {line:?}");
            let total: u64 = ticks.iter().sum();
            let idle = ticks[3] + ticks[4];
            cores.push((total - idle, total));
        }
        ensure!(!cores.is_empty(), "/proc/stat lists no cpuN line");
        Ok(CpuTimes { cores })
    }

    /// The share of time each core was busy between `earlier` and `self`,
    /// in percent.
    pub fn busy_since(&self, earlier: &CpuTimes) -> Vec<f64> {
        self.cores
            .iter()
            .zip(&earlier.cores)
            .map(|(&(busy, total), &(busy0, total0))| {
                let total = total.saturating_sub(total0);
                if total == 0 {
                    0.0
                } else {
                    100.0 * busy.saturating_sub(busy0) as f64 / total as f64
                }
            })
            .collect()
    }
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long the load runs before the window opens, so that the scheduler
/// has spread the hogs over the cores.
pub const RAMP_UP: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_shares_come_per_core_from_proc_stat() {
        let before = CpuTimes::parse(
            "cpu  10 0 10 80 0 0 0 0 0 0\n\
             cpu0 5 0 5 40 0 0 0 0 0 0\n\
             cpu1 5 0 5 40 0 0 0 0 0 0\n\
             intr 1 2 3\n",
        )
        .unwrap();
        let after = CpuTimes::parse(
            "cpu  110 0 10 100 0 0 0 0 0 0\n\
             cpu0 95 0 5 50 0 0 0 0 0 0\n\
             cpu1 15 0 5 90 0 0 0 0 0 0\n",
        )
        .unwrap();
        assert_eq!(after.busy_since(&before), vec![90.0, 10.0 * 100.0 / 60.0]);
    }
}
