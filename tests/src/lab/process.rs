//! Processes that the lab runs inside its hosts.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::fd::{AsFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// A process running inside a host, its stdout and stderr going to a log
/// file in the host's state directory. Dropping it kills it.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    /// Set once the process is reaped: from then on its pid may belong to
    /// someone else.
    exit: Option<ExitStatus>,
    /// "`program args` in host NAME", for messages.
    what: String,
    log_path: PathBuf,
    /// Where this process's output starts in the (appended) log file.
    log_start: u64,
}

impl LabProcess {
    pub(crate) fn new(child: Child, what: String, log_path: PathBuf, log_start: u64) -> Self {
        Self {
            child,
            exit: None,
            what,
            log_path,
            log_start,
        }
    }

    /// The process id (hosts share the real machine's pid namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process; fails once it has been reaped, so that
    /// a recycled pid is never signalled.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(status) = self.exit {
            bail!(
                "cannot send {signal} to {}: it already exited ({status})",
                self.what
            );
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("send {signal} to {}", self.what))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("SIGKILL {}", self.what))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reap {}", self.what))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The exit status if the process has exited, reaping it.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("check on {}", self.what))?;
        }
        Ok(self.exit)
    }

    /// Waits for the process to exit; fails if it still runs after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_deadline(&mut self.child, timeout)
                .with_context(|| format!("wait for {}", self.what))?;
        }
        self.exit
            .with_context(|| format!("{} still runs after {timeout:?}", self.what))
    }

    /// The file that collects the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// What the process has written to stdout and stderr so far.
    pub fn log(&self) -> Result<String> {
        let mut file = File::open(&self.log_path)
            .with_context(|| format!("open log {}", self.log_path.display()))?;
        file.seek(SeekFrom::Start(self.log_start))
            .and_then(|_| read_lossy(&mut file))
            .with_context(|| format!("read log {}", self.log_path.display()))
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("halo lab: cleanup: {error:#}");
        }
    }
}

/// Reads the rest of `file` as text, replacing what is not UTF-8.
pub(crate) fn read_lossy(file: &mut File) -> io::Result<String> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Waits up to `timeout` for `child` to exit and reaps it; `None` if it
/// still runs.
pub(crate) fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    // A pidfd turns readable when the process exits: the wait ends on the
    // exit itself, not on the next turn of a polling loop.
    let pidfd = pidfd_open(child.id())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)], left) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(child.wait()?)),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno).context("poll a pidfd"),
        }
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: pidfd_open(2) takes a pid and flags, and returns a new file
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
    }
    let fd = RawFd::try_from(fd).context("pidfd out of range")?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
