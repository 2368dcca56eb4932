//! A child process that leads a process group of its own, so that the child
//! and everything it started can be signalled at once.
//!
//! A script that hangs, or that left a child behind, must not outlive its
//! timeout: signalling only the script would leave the grandchildren (and the
//! pipes they hold) running. A group that is neither waited for to the end nor
//! released is killed when dropped, so that a cancelled run leaves nothing.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

/// How often `terminate` looks whether the group has emptied.
const POLL: Duration = Duration::from_millis(20);

/// How many times a spawn that met ETXTBSY is tried again.
const TEXT_BUSY_RETRIES: u32 = 5;

/// How long `terminate` waits for the leader to be reaped after SIGKILL.
const REAP_GRACE: Duration = Duration::from_secs(1);

/// A spawned process leading its own process group.
#[derive(Debug)]
pub(super) struct ProcessGroup {
    child: Child,
    pgid: Pid,
    /// Kill the group on drop: cleared once the group is released or terminated.
    armed: bool,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    ///
    /// An executable that was just written can fail with ETXTBSY while another
    /// thread's fork still holds a copy of the writer's descriptor; that lasts
    /// until the fork's exec, so a few short retries get past it.
    pub(super) async fn spawn(command: &mut Command) -> io::Result<ProcessGroup> {
        command.process_group(0);
        let mut attempt = 0;
        let child = loop {
            match command.spawn() {
                Ok(child) => break child,
                Err(error)
                    if error.raw_os_error() == Some(libc::ETXTBSY)
                        && attempt < TEXT_BUSY_RETRIES =>
                {
                    attempt += 1;
                    sleep(Duration::from_millis(10) * attempt).await;
                }
                Err(error) => return Err(error),
            }
        };
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
        let pgid = Pid::from_raw(
            i32::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))?,
        );
        Ok(ProcessGroup {
            child,
            pgid,
            armed: true,
        })
    }

    /// Takes the leader's stdout pipe, if it was piped.
    pub(super) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Takes the leader's stderr pipe, if it was piped.
    pub(super) fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the leader to exit. Cancel-safe.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Leaves whatever the leader started running: a start script's
    /// application lives on in the group after the script exits.
    pub(super) fn release(mut self) {
        self.armed = false;
    }

    /// Kills every process left in the group at once (SIGKILL).
    pub(super) fn kill(&mut self) {
        self.armed = false;
        signal_group(self.pgid, Signal::SIGKILL);
    }

    /// SIGTERM to the whole group; SIGKILL to what is left of it after
    /// `grace`. Returns the leader's exit status if it could be reaped.
    pub(super) async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.armed = false;
        signal_group(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut status = None;
        loop {
            if status.is_none() {
                status = self.child.try_wait().ok().flatten();
            }
            // Only once the leader is reaped does an empty group mean
            // "everyone is gone": a zombie leader still counts as a member.
            if status.is_some() && !group_alive(self.pgid) {
                return status;
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(POLL).await;
        }
        signal_group(self.pgid, Signal::SIGKILL);
        match status {
            Some(status) => Some(status),
            // A leader stuck in an uninterruptible sleep is left to tokio's
            // reaper rather than holding halo up.
            None => timeout(REAP_GRACE, self.child.wait()).await.ok()?.ok(),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to the group; a group that is already gone is not an error.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(pgid = pgid.as_raw(), ?signal, %error, "cannot signal a process group");
        }
    }
}

/// Whether any process (zombies included) is still in the group.
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}
