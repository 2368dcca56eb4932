//! CPU starvation of a lab host: its processes moved into a CPU cgroup with
//! a small quota, and moved back when the guard drops. Works with the
//! unified hierarchy (`cpu.max`) and with the v1 `cpu` controller
//! (`cpu.cfs_quota_us`), whichever the machine mounts.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// The quota period both hierarchies use, in microseconds.
const PERIOD_US: u32 = 100_000;

/// Processes held in a CPU-limited cgroup; dropping it moves them back to
/// where they were and removes the cgroup.
pub struct CpuLimit {
    dir: PathBuf,
    /// Each process and the cgroup directory it came from.
    moved: Vec<(i32, PathBuf)>,
}

/// Where the CPU controller lives: the unified hierarchy's root if it
/// offers `cpu`, else the v1 `cpu` hierarchy.
fn hierarchy() -> Result<(PathBuf, bool)> {
    let unified = Path::new("/sys/fs/cgroup");
    if fs::read_to_string(unified.join("cgroup.controllers"))
        .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"))
    {
        return Ok((unified.to_path_buf(), true));
    }
    let v1 = unified.join("cpu");
    if v1.join("cpu.cfs_quota_us").is_file() {
        return Ok((v1, false));
    }
    bail!("no CPU cgroup controller: neither /sys/fs/cgroup (cgroup2 with cpu) nor /sys/fs/cgroup/cpu")
}

/// The cgroup directory of `pid` in `root`'s hierarchy.
fn cgroup_of(pid: i32, root: &Path, unified: bool) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let ours = if unified {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "cpu")
        };
        ours.then(|| root.join(path.trim_start_matches('/')))
    })
}

/// Removes the cgroups of lab runs whose process is gone (`halolab-<pid>-…`).
fn sweep(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("halolab-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Fails while processes are inside: they die with their lab.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

impl CpuLimit {
    /// Creates cgroup `name` limited to `percent` of one CPU and moves
    /// `pids` into it.
    pub(crate) fn new(name: &str, percent: u32, pids: impl Iterator<Item = i32>) -> Result<Self> {
        let (root, unified) = hierarchy()?;
        sweep(&root);
        let dir = root.join(name);
        fs::create_dir(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
        let mut limit = CpuLimit {
            dir,
            moved: Vec::new(),
        };
        let quota = (PERIOD_US / 100 * percent.clamp(1, 100)).max(1000);
        let (file, value) = if unified {
            ("cpu.max", format!("{quota} {PERIOD_US}"))
        } else {
            fs::write(limit.dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
                .context("set cpu.cfs_period_us")?;
            ("cpu.cfs_quota_us", quota.to_string())
        };
        fs::write(limit.dir.join(file), &value)
            .with_context(|| format!("write {value} to {}", limit.dir.join(file).display()))?;
        for pid in pids {
            let Some(from) = cgroup_of(pid, &root, unified) else {
                continue; // gone meanwhile
            };
            if fs::write(limit.dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                limit.moved.push((pid, from));
            }
        }
        Ok(limit)
    }

    /// How many processes the limit holds.
    pub fn processes(&self) -> usize {
        self.moved.len()
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for (pid, from) in &self.moved {
            // A process that died meanwhile has nothing to move.
            let _ = fs::write(from.join("cgroup.procs"), pid.to_string());
        }
        if let Err(error) = fs::remove_dir(&self.dir) {
            eprintln!(
                "lab: cannot remove cgroup {}: {error} (the next lab run sweeps it)",
                self.dir.display()
            );
        }
    }
}
