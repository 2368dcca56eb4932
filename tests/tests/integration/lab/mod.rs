//! Tests of the lab itself: the bench every other integration test stands on.

mod cleanup;
mod mounts;
mod network;
mod networks;
mod processes;

use std::{fs, os::unix::fs::MetadataExt, path::Path, process::Command, time::Duration};

use halo_tests::lab::{Lab, LAB_ROOT};

/// Long enough for a reply on a lab network, with room for ARP and ND.
pub const REPLY_WAIT: Duration = Duration::from_secs(1);
/// Long enough to be sure a reply is not coming on a lab network.
pub const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// A process, told apart from a later one that reuses its pid.
#[derive(Clone, Copy, Debug)]
pub struct ProcessId {
    pub pid: u32,
    start: u64,
}

impl ProcessId {
    /// The process that runs as `pid` now.
    pub fn of(pid: u32) -> Self {
        let (_, start) =
            stat(pid).unwrap_or_else(|| panic!("expected process {pid} to exist, found none"));
        Self { pid, start }
    }

    /// Whether the process still runs (exists, and is not a zombie).
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|(state, start)| start == self.start && state != 'Z')
    }
}

/// State and start time of process `pid`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Network and mount namespace inodes of every host of `lab` and of its
/// switch, as the machine's processes would show them.
pub fn namespace_inodes(lab: &Lab) -> Vec<u64> {
    let mut files: Vec<_> = lab
        .hosts()
        .iter()
        .flat_map(|host| {
            [
                Path::new("/run/netns").join(host.netns_name()),
                lab.dir().join(".mntns").join(host.name()),
            ]
        })
        .collect();
    files.push(Path::new("/run/netns").join(lab.switch_netns()));
    files
        .iter()
        .map(|file| {
            fs::metadata(file)
                .unwrap_or_else(|error| panic!("expected {} to exist: {error}", file.display()))
                .ino()
        })
        .collect()
}

/// Processes whose network or mount namespace has one of `inodes`.
pub fn processes_in(inodes: &[u64]) -> Vec<u32> {
    let entries = fs::read_dir("/proc").expect("list /proc");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            ["net", "mnt"].iter().any(|kind| {
                fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                    .is_ok_and(|meta| inodes.contains(&meta.ino()))
            })
        })
        .collect()
}

/// Every network namespace, root-namespace link, mount and lab directory
/// whose name holds `prefix`.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in output("ip", &["netns", "list"]).lines() {
        if line.contains(prefix) {
            found.push(format!("network namespace {line}"));
        }
    }
    for line in output("ip", &["-oneline", "link", "show"]).lines() {
        if line.contains(prefix) {
            found.push(format!("link {line}"));
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for line in mounts.lines() {
        if line.contains(prefix) {
            found.push(format!("mount {line}"));
        }
    }
    if let Ok(entries) = fs::read_dir(LAB_ROOT) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(prefix) {
                found.push(format!("directory {}", entry.path().display()));
            }
        }
    }
    found
}

/// Stdout of `program args…` run on the real machine; panics unless it
/// succeeds.
pub fn output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("expected to run {program}: {error}"));
    assert!(
        output.status.success(),
        "expected `{program} {}` to succeed, it failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
