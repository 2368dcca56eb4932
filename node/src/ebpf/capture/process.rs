//! Signals to the processes the capture paused, only while they are the
//! same processes.
//!
//! A paused task's entry outlives it when it dies stopped (`SIGKILL` ends a
//! stopped process), and a dead daemon's entries wait for the next one: by
//! the time a signal is due, the pid may belong to another process. Each
//! entry therefore carries when its process started
//! (`PausedTask::start`, the leader's `start_boottime`), and a signal goes
//! through a pidfd opened before the check: the pidfd holds the process
//! that had the pid then; `/proc/<pid>/stat`, read after, shows that same
//! process if it still lives, or a later one whose start differs.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use nix::{
    errno::Errno,
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Sends `signal` to process `pid` if it is still the process that started
/// at `start` (ns since boot, as `PausedTask::start`; 0: unknown, then
/// whatever process has the pid, as a capture pinned by an older daemon
/// lists it). `Ok(false)`: that process is gone.
pub fn signal_process(pid: u32, start: u64, signal: Signal) -> nix::Result<bool> {
    signal_process_with(pid, start, signal, pidfd_open)
}

/// `pidfd_open(2)` of `pid`.
fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: a plain syscall; a descriptor it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// [`signal_process`] with `open` for `pidfd_open(2)`, so that the tests
/// can take the path of a kernel or a seccomp profile without pidfds.
fn signal_process_with(
    pid: u32,
    start: u64,
    signal: Signal,
    open: impl FnOnce(u32) -> Result<OwnedFd, Errno>,
) -> nix::Result<bool> {
    let sent = |result: nix::Result<()>| match result {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(error) => Err(error),
    };
    if start == 0 {
        return sent(kill(Pid::from_raw(pid as i32), signal));
    }
    let same = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat_start_ticks(&stat) == Some(start_ticks(start, clock_ticks(), boottime_offset_ns()))
    };
    let pidfd = match open(pid) {
        Ok(pidfd) => pidfd,
        // No pidfds here (a kernel before 5.3, a seccomp profile that
        // refuses them): checked, then by pid, as close as can be.
        Err(Errno::ENOSYS | Errno::EPERM) if same() => {
            return sent(kill(Pid::from_raw(pid as i32), signal))
        }
        Err(Errno::ENOSYS | Errno::EPERM) => return Ok(false),
        Err(error) => return sent(Err(error)),
    };
    if !same() {
        return Ok(false);
    }
    // SAFETY: a plain syscall on our descriptor, without a siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent(if rc < 0 { Err(Errno::last()) } else { Ok(()) })
}

/// Field `n` (numbered from 1 as in proc(5), 3 or more) of a
/// `/proc/<pid>/stat` line. The command name, the 2nd, may hold spaces
/// and parentheses: the fields are counted after its last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// The start time field of a `/proc/<pid>/stat` line (the 22nd, in clock
/// ticks since boot).
fn stat_start_ticks(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// Whether process `pid` exists and is stopped (state `T`, the 3rd field
/// of `/proc/<pid>/stat`).
pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat_field(&stat, 3) == Some("T"))
}

/// `start_ns` (`start_boottime`) as `/proc/<pid>/stat` shows it to this
/// process: moved by this process's time namespace's boot time offset,
/// in ticks of `ticks_per_second` (the kernel's `nsec_to_clock_t`).
fn start_ticks(start_ns: u64, ticks_per_second: u64, offset_ns: i64) -> u64 {
    let seen = start_ns.saturating_add_signed(offset_ns);
    seen / (1_000_000_000 / ticks_per_second.max(1))
}

/// `USER_HZ`, the unit of `/proc`'s clock ticks.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// This process's time namespace's boot time offset (ns): 0 outside one,
/// or on a kernel without time namespaces. (`/proc/self/timens_offsets`
/// shows the namespace of the children; it is the daemon's own unless the
/// daemon called `unshare(CLONE_NEWTIME)` itself, which it does not.)
fn boottime_offset_ns() -> i64 {
    std::fs::read_to_string("/proc/self/timens_offsets")
        .ok()
        .and_then(|text| boottime_offset(&text))
        .unwrap_or(0)
}

/// The `boottime` line of `/proc/<pid>/timens_offsets` (`boottime <s> <ns>`,
/// or the clock's number, 7), in ns.
fn boottime_offset(text: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        if clock != "boottime" && clock != "7" {
            return None;
        }
        let secs: i64 = fields.next()?.parse().ok()?;
        let nanos: i64 = fields.next()?.parse().ok()?;
        Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_the_22nd_field_whatever_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 \
                    987654 10000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(stat_start_ticks(stat), Some(987_654));
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_start_ticks("4242 (cut short) S 1"), None);
        assert_eq!(stat_start_ticks(""), None);
    }

    #[test]
    fn nanoseconds_since_boot_become_the_ticks_proc_shows() {
        // 9876.54321 s after boot at 100 ticks per second.
        assert_eq!(start_ticks(9_876_543_210_000, 100, 0), 987_654);
        // A time namespace whose boot was 100 s earlier.
        assert_eq!(
            start_ticks(9_876_543_210_000, 100, 100_000_000_000),
            997_654
        );
        assert_eq!(start_ticks(5_000_000_000, 100, -10_000_000_000), 0);
        assert_eq!(start_ticks(5_000_000_000, 1000, 0), 5_000);
    }

    #[test]
    fn the_boottime_offset_is_read_from_either_spelling() {
        assert_eq!(
            boottime_offset("monotonic 0 0\nboottime 100 5\n"),
            Some(100_000_000_005)
        );
        assert_eq!(boottime_offset("1 5 0\n7 -3 0\n"), Some(-3_000_000_000));
        assert_eq!(boottime_offset("monotonic 4 0\n"), None);
    }

    /// A `sleep` child, ended also when an assertion fails.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `sleep 30`; returns it, its pid, its start as the kernel
    /// program records it (ns since boot, the tick's first nanosecond:
    /// the same tick) and the ns of one tick.
    fn sleeper() -> (Reaped, u32, u64, u64) {
        let child = Reaped(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = stat_start_ticks(&stat).unwrap();
        let per_tick = 1_000_000_000 / clock_ticks();
        let start = (ticks * per_tick).saturating_add_signed(-boottime_offset_ns());
        (child, pid, start, per_tick)
    }

    /// Signals `child` through `signal`: not with another process's start
    /// (one tick later), then killed with its own, then gone.
    fn kills_only_the_same_process(signal: impl Fn(u32, u64, Signal) -> nix::Result<bool>) {
        let (mut child, pid, start, per_tick) = sleeper();
        assert_eq!(signal(pid, start + per_tick, Signal::SIGKILL), Ok(false));
        assert_eq!(child.0.try_wait().unwrap(), None, "still running");
        assert_eq!(signal(pid, start, Signal::SIGKILL), Ok(true));
        let status = child.0.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // Gone (reaped): nothing to signal.
        assert_eq!(signal(pid, start, Signal::SIGCONT), Ok(false));
    }

    #[test]
    fn a_process_is_signalled_only_while_it_is_the_one_that_started_then() {
        kills_only_the_same_process(signal_process);
    }

    #[test]
    fn without_pidfds_the_start_is_still_checked_before_a_kill_by_pid() {
        for refused in [Errno::ENOSYS, Errno::EPERM] {
            kills_only_the_same_process(|pid, start, signal| {
                signal_process_with(pid, start, signal, |_| Err(refused))
            });
        }
        // Any other failure of pidfd_open is the caller's to see.
        let (_child, pid, start, _) = sleeper();
        assert_eq!(
            signal_process_with(pid, start, Signal::SIGCONT, |_| Err(Errno::EMFILE)),
            Err(Errno::EMFILE)
        );
    }
}
