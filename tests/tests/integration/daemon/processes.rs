//! What `/proc` says about the processes that module scripts leave: every
//! lab host shares the machine's pid namespace, so the test sees them all.

use std::{fs, path::Path};

use nix::unistd::Pid;

/// Whether `pid` is a live process: it exists and is not a zombie. Orphans
/// can stay zombies for good where the machine's init does not reap them,
/// as in some containers; a zombie runs nothing.
pub(super) fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
        return false;
    };
    // The state follows the command name, which may hold spaces and
    // parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// The kernel's name of `pid` (`comm`), if it exists.
pub(super) fn comm(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end().to_owned())
}

/// Every live process of the machine whose `comm` is `name`.
pub(super) fn running(name: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| comm(pid).as_deref() == Some(name) && alive(pid))
        .collect()
}

/// `pid` as nix takes it.
pub(super) fn as_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"))
}
