//! Runs: the key in every name a lab gives, the lock labs take while they
//! change what labs share, and the sweep of runs whose process died.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{ensure, Context, Result};
use nix::{
    fcntl::{Flock, FlockArg},
    unistd::getpid,
};

use super::{
    cleanup::{Cleanup, Guard},
    ns::{self, NsId},
    LAB_ROOT,
};

/// The tag that starts every name a lab gives.
const TAG: &str = "halolab";
/// Where `ip netns` keeps the named network namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// In a lab directory: `<pid> <start time>` of the process that made it.
const OWNER_FILE: &str = ".owner";
/// In a lab directory: the private paths its hosts use, one a line.
const PRIVATE_PATHS_FILE: &str = ".private-paths";
/// In [`LAB_ROOT`]: the flock labs take.
const LOCK_FILE: &str = ".lock";
/// In [`LAB_ROOT`]: the real-filesystem directories labs created to mount
/// private paths on, one a line.
const MOUNTPOINTS_FILE: &str = ".mountpoints";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// One lab of one process: every name the lab gives starts with
/// `halolab-<pid>-<seq>-`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RunKey {
    pid: i32,
    seq: u32,
}

impl RunKey {
    /// A key no other lab, in this process or another live one, holds.
    pub(crate) fn next() -> Self {
        Self {
            pid: getpid().as_raw(),
            seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The start of every name of this run.
    pub(crate) fn prefix(&self) -> String {
        format!("{TAG}-{}-{}-", self.pid, self.seq)
    }

    /// The key of `name`, if a lab gave that name.
    fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(TAG)?.strip_prefix('-')?;
        let (pid, rest) = rest.split_once('-')?;
        let (seq, _) = rest.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(pid) || !digits(seq) {
            return None;
        }
        Some(Self {
            pid: pid.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Whether the process that made the run still lives.
    fn is_alive(&self, objects: &RunObjects) -> bool {
        let Some(started) = start_time(self.pid) else {
            return false;
        };
        // The owner record tells a reused pid from the owner. Without one
        // (the directory is gone) a live pid counts as the owner: leaking a
        // dead run's leftovers beats tearing down a live lab.
        objects
            .dirs
            .iter()
            .filter_map(|dir| read_owner(dir))
            .all(|recorded| recorded == started)
    }
}

/// Start time (clock ticks after boot) of process `pid`; `None` if there is
/// no such process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces; the fields after it
    // do not. Start time is field 22, the 20th after the name.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Records that this process owns the lab directory `dir`.
pub(crate) fn write_owner(dir: &Path) -> Result<()> {
    let pid = getpid().as_raw();
    let started = start_time(pid).context("read this process's start time")?;
    let path = dir.join(OWNER_FILE);
    fs::write(&path, format!("{pid} {started}\n"))
        .with_context(|| format!("write {}", path.display()))
}

/// The owner's start time recorded in lab directory `dir`.
fn read_owner(dir: &Path) -> Option<u64> {
    let record = fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    record.split_whitespace().nth(1)?.parse().ok()
}

/// Held while a lab sweeps, or creates or releases the shared mountpoints:
/// labs in other threads and processes wait for it.
pub(crate) struct LabLock {
    _flock: Flock<File>,
}

impl LabLock {
    /// Blocks until this thread holds the lock.
    pub(crate) fn acquire() -> Result<Self> {
        fs::create_dir_all(LAB_ROOT).with_context(|| format!("create {LAB_ROOT}"))?;
        let path = Path::new(LAB_ROOT).join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // Each acquire opens its own file description, so the flock also
        // excludes the other threads of this process.
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("flock {}", path.display()))?;
        Ok(Self { _flock: lock })
    }
}

/// The objects of one run found on the machine.
#[derive(Default)]
struct RunObjects {
    dirs: Vec<PathBuf>,
    netns: Vec<String>,
}

/// Every run that left a directory or a network namespace.
fn find_runs() -> Result<BTreeMap<RunKey, RunObjects>> {
    let mut runs = BTreeMap::<RunKey, RunObjects>::new();
    for name in dir_names(Path::new(LAB_ROOT))? {
        if let Some(key) = RunKey::parse(&name) {
            let dir = Path::new(LAB_ROOT).join(name);
            runs.entry(key).or_default().dirs.push(dir);
        }
    }
    for name in dir_names(Path::new(NETNS_DIR))? {
        if let Some(key) = RunKey::parse(&name) {
            runs.entry(key).or_default().netns.push(name);
        }
    }
    Ok(runs)
}

/// Entry names of directory `dir` (none if it does not exist).
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.with_context(|| format!("list {}", dir.display()))?,
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        names.extend(entry.file_name().to_str().map(str::to_owned));
    }
    Ok(names)
}

/// Removes every object of the runs whose process died (a SIGKILLed or
/// aborted test binary), then the shared mountpoints if no lab is left.
pub(crate) fn sweep(lock: &LabLock) -> Result<()> {
    for (key, objects) in find_runs()? {
        if !key.is_alive(&objects) {
            eprintln!(
                "halo lab: sweeping the leftovers of dead run {}",
                key.prefix()
            );
            remove_dead_run(key, &objects)?;
        }
    }
    release_mountpoints(lock, None)
}

fn remove_dead_run(key: RunKey, objects: &RunObjects) -> Result<()> {
    // Pushed in the order a lab creates them, so that the stack releases them
    // as the lab's own cleanup would have; failures are reported by the stack.
    let mut cleanup = Cleanup::default();
    let mut namespaces = Vec::new();
    for dir in &objects.dirs {
        cleanup.push(Guard::Dir(dir.clone()));
    }
    for name in &objects.netns {
        namespaces.extend(NsId::of(&Path::new(NETNS_DIR).join(name)).ok());
        cleanup.push(Guard::Netns(name.clone()));
    }
    for mount in ns::mount_points()? {
        if objects.dirs.iter().any(|dir| mount.starts_with(dir)) {
            // Mount-namespace files among these name the hosts' namespaces.
            namespaces.extend(NsId::of(&mount).ok());
            cleanup.push(Guard::Mount(mount));
        }
    }
    cleanup.push(Guard::Processes {
        owner: format!("dead run {}", key.prefix()),
        namespaces,
    });
    Ok(())
}

/// Records that the lab in `dir` uses private paths `paths`, and creates
/// their missing directories on the real filesystem for the hosts to mount
/// their own on; the record of created directories lets the last lab that
/// uses them remove them.
pub(crate) fn create_mountpoints(_lock: &LabLock, dir: &Path, paths: &[PathBuf]) -> Result<()> {
    let uses_path = dir.join(PRIVATE_PATHS_FILE);
    let uses: String = paths
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    fs::write(&uses_path, uses).with_context(|| format!("write {}", uses_path.display()))?;
    let record_path = Path::new(LAB_ROOT).join(MOUNTPOINTS_FILE);
    let mut record = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&record_path)
        .with_context(|| format!("open {}", record_path.display()))?;
    for path in paths {
        let missing: Vec<&Path> = path.ancestors().take_while(|dir| !dir.exists()).collect();
        for dir in missing.into_iter().rev() {
            fs::create_dir(dir).with_context(|| format!("create mountpoint {}", dir.display()))?;
            writeln!(record, "{}", dir.display())
                .with_context(|| format!("write {}", record_path.display()))?;
        }
        ensure!(
            path.is_dir(),
            "private path {} exists on the real machine but is not a directory",
            path.display()
        );
    }
    Ok(())
}

/// Removes the recorded mountpoints that no live lab other than `except`
/// uses: removing a directory that is a mount point in another mount
/// namespace detaches that mount there, from under a running lab.
pub(crate) fn release_mountpoints(_lock: &LabLock, except: Option<RunKey>) -> Result<()> {
    let mut in_use = Vec::new();
    for (key, objects) in find_runs()? {
        if Some(key) != except && key.is_alive(&objects) {
            for dir in &objects.dirs {
                let uses = fs::read_to_string(dir.join(PRIVATE_PATHS_FILE)).unwrap_or_default();
                in_use.extend(uses.lines().map(PathBuf::from));
            }
        }
    }
    let record_path = Path::new(LAB_ROOT).join(MOUNTPOINTS_FILE);
    let record = match fs::read_to_string(&record_path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        record => record.with_context(|| format!("read {}", record_path.display()))?,
    };
    let mut kept = Vec::new();
    // Deepest first: the record lists parents before their children.
    for dir in record.lines().rev() {
        if in_use.iter().any(|path| path.starts_with(dir)) {
            kept.push(dir);
            continue;
        }
        match fs::remove_dir(dir) {
            Err(error) if error.kind() == io::ErrorKind::DirectoryNotEmpty => {
                eprintln!("halo lab: keeping mountpoint {dir}: something else put files in it");
            }
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                eprintln!("halo lab: cleanup: remove mountpoint {dir}: {error}");
            }
            _ => {}
        }
    }
    if kept.is_empty() {
        return fs::remove_file(&record_path)
            .with_context(|| format!("remove {}", record_path.display()));
    }
    let kept: String = kept.iter().rev().map(|dir| format!("{dir}\n")).collect();
    fs::write(&record_path, kept).with_context(|| format!("write {}", record_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_parse_back_from_the_names_they_start() {
        let key = RunKey { pid: 4711, seq: 3 };
        assert_eq!(RunKey::parse(&format!("{}cut-n1", key.prefix())), Some(key));
        assert_eq!(RunKey::parse("halolab-4711-3"), None);
        assert_eq!(RunKey::parse("halolab-+4711-3-x"), None);
        assert_eq!(RunKey::parse("halolabs-4711-3-x"), None);
        assert_eq!(RunKey::parse("other-4711-3-x"), None);
    }

    #[test]
    fn this_process_has_a_start_time() {
        assert!(start_time(getpid().as_raw()).is_some());
    }
}
