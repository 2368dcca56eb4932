//! Namespaces: entering a host's from a thread, building a host's mount
//! namespace, and finding or killing the processes inside namespaces.

use std::{
    ffi::OsString,
    fs::{self, File},
    os::unix::ffi::OsStringExt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::{getpid, gettid, Pid},
};

/// A namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The namespace that `path` (a `/run/netns` entry, a bind-mounted
    /// namespace file or `/proc/PID/ns/*`) refers to.
    pub(crate) fn of(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path)
            .with_context(|| format!("stat namespace file {}", path.display()))?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `netns` and, if given, the mount namespace at `mntns`.
///
/// Namespaces are per thread on Linux, so the test process itself never
/// leaves the real machine's; a child that `f` spawns inherits the thread's
/// namespaces, and its program and working directory are looked up inside.
pub(crate) fn in_namespaces<T: Send>(
    netns: &Path,
    mntns: Option<&Path>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let net =
        File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    let mnt = mntns
        .map(|path| {
            File::open(path).with_context(|| format!("open mount namespace {}", path.display()))
        })
        .transpose()?;
    thread::scope(|scope| {
        let entered = scope.spawn(move || {
            // setns() into a mount namespace refuses a thread that shares its
            // root and working directory with the other threads.
            unshare(CloneFlags::CLONE_FS).context("unshare the thread's filesystem attributes")?;
            setns(&net, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter network namespace {}", netns.display()))?;
            if let (Some(mnt), Some(path)) = (&mnt, mntns) {
                setns(mnt, CloneFlags::CLONE_NEWNS)
                    .with_context(|| format!("enter mount namespace {}", path.display()))?;
            }
            f()
        });
        entered
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How a host's mount namespace differs from the real machine's.
pub(crate) struct MountPlan {
    /// Lab mounts copied from the real machine that the host must not keep: a
    /// copied namespace file would hold that namespace alive after its lab
    /// deleted it.
    pub(crate) detach: Vec<PathBuf>,
    /// `(directory on the real filesystem, path inside the host)` pairs.
    pub(crate) binds: Vec<(PathBuf, PathBuf)>,
}

/// Creates a mount namespace for the host whose network namespace is at
/// `netns`, laid out by `plan`, and keeps it alive by bind-mounting it on
/// `file`.
pub(crate) fn create_mount_ns(netns: &Path, file: &Path, plan: &MountPlan) -> Result<()> {
    let net =
        File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    thread::scope(|scope| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        scope.spawn(move || {
            let ready = enter_new_mount_ns(&net, plan).map(|()| gettid());
            // The send fails only if the caller is gone, and then so is the
            // reason to wait.
            if ready_tx.send(ready).is_ok() {
                // The namespace lives as long as this thread, until the
                // caller has bound it on `file` (or given up).
                let _ = done_rx.recv();
            }
        });
        let bound = ready_rx
            .recv()
            .context("the mount namespace thread died")
            .and_then(|ready| {
                let tid = ready?;
                let ns = format!("/proc/{}/task/{tid}/ns/mnt", getpid());
                mount(
                    Some(ns.as_str()),
                    file,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("bind mount namespace {ns} on {}", file.display()))
            });
        drop(done_tx);
        bound
    })
}

/// Moves the calling thread into `net` and into a new mount namespace laid
/// out by `plan`.
fn enter_new_mount_ns(net: &File, plan: &MountPlan) -> Result<()> {
    setns(net, CloneFlags::CLONE_NEWNET).context("enter the host's network namespace")?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare a mount namespace")?;
    // Private propagation both ways: nothing the host mounts reaches the real
    // machine, and later mounts on the real machine do not appear in hosts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private in the host's mount namespace")?;
    for path in &plan.detach {
        detach(path)?;
    }
    // A sysfs mounted from inside the host's network namespace shows that
    // namespace's interfaces, as `ip netns exec` arranges; bpffs and tracefs
    // went away with the old /sys and each host gets its own bpffs.
    detach(Path::new("/sys"))?;
    for (fstype, target) in [
        ("sysfs", "/sys"),
        ("bpf", "/sys/fs/bpf"),
        ("tracefs", "/sys/kernel/tracing"),
    ] {
        mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| format!("mount {fstype} on {target} in the host's mount namespace"))?;
    }
    for (source, target) in &plan.binds {
        mount(
            Some(source.as_path()),
            target.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "bind {} on {} in the host's mount namespace",
                source.display(),
                target.display()
            )
        })?;
    }
    Ok(())
}

/// Lazily unmounts `path` and everything below it, if it is a mount point.
fn detach(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // Not (or no longer, after a parent's detach) a mount point.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno).with_context(|| format!("detach {}", path.display())),
    }
}

/// Mount points this process sees, in mount order (parents before children).
pub(crate) fn mount_points() -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_point(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut path = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                path.push(byte);
                i += 4;
            }
            (byte, _) => {
                path.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(path))
}

/// Processes, other than this one, whose network or mount namespace is one
/// of `namespaces`.
pub(crate) fn processes_in(namespaces: &[NsId]) -> Result<Vec<Pid>> {
    let me = getpid();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("list /proc")? {
        let entry = entry.context("list /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let pid = Pid::from_raw(pid);
        if pid == me {
            continue;
        }
        // A process that exits meanwhile, or a zombie, has no namespace left
        // to match, and needs no killing.
        let inside = ["net", "mnt"].iter().any(|kind| {
            NsId::of(&entry.path().join("ns").join(kind)).is_ok_and(|id| namespaces.contains(&id))
        });
        if inside {
            found.push(pid);
        }
    }
    Ok(found)
}

/// SIGKILLs the processes inside `namespaces` until none is left (a dying
/// shell may still fork), failing if some outlive `timeout`.
pub(crate) fn kill_processes_in(namespaces: &[NsId], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // Processes seen inside: a dying process's leader loses its namespaces
    // before its other threads have closed their files (sockets, BPF
    // links), so it counts as alive until it is a zombie with one thread.
    let mut seen: Vec<Pid> = Vec::new();
    loop {
        let pids = processes_in(namespaces)?;
        for pid in &pids {
            if !seen.contains(pid) {
                seen.push(*pid);
            }
        }
        seen.retain(|pid| !fully_exited(*pid));
        if pids.is_empty() && seen.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {seen:?} are still alive {timeout:?} after SIGKILL");
        }
        for pid in pids {
            match kill(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(errno) => return Err(errno).with_context(|| format!("SIGKILL {pid}")),
            }
        }
        // SIGKILL is delivered asynchronously: look again shortly.
        thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` is gone, or a zombie whose every thread has exited.
fn fully_exited(pid: Pid) -> bool {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
        return true;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    let threads = fs::read_dir(dir.join("task")).map_or(0, |d| d.count());
    matches!(state, Some("Z" | "X")) && threads <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        assert_eq!(
            unescape_mount_point(r"/run/a\040b\134c"),
            PathBuf::from(r"/run/a b\c")
        );
        assert_eq!(unescape_mount_point(r"/x\0"), PathBuf::from(r"/x\0"));
    }
}
