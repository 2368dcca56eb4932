//! Real `halo run` daemons in a lab: writes each host's configuration and
//! cluster secret, starts and kills daemons, and reads their state through
//! the CLI, as an administrator would.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, ensure, Context as _, Result};
use halo::api::NodeStatus;

use crate::lab::{Lab, LabProcess};

/// Where every lab host keeps its configuration.
pub const CONFIG_PATH: &str = "/etc/halo/halo.toml";
/// Every lab host's `node.state_dir`, as [`Cluster::configure`] writes it.
pub const STATE_DIR: &str = "/var/lib/halo";
/// The API port of every daemon (each host has its own network namespace).
pub const API_PORT: u16 = 9010;

/// `text` without its ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // The sequence ends with its first letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The `halo` binary under test: `$HALO_BIN`, which `cargo xtask test` sets
/// after building it. Running the lab tests without it would silently test
/// whatever stale binary lies around, so it is required.
pub fn halo_bin() -> PathBuf {
    let bin = std::env::var_os("HALO_BIN").unwrap_or_else(|| {
        panic!("HALO_BIN is not set: run the lab tests through `cargo xtask test`")
    });
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "HALO_BIN={} is not a file", bin.display());
    bin
}

/// Heartbeat timing of every network of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub pulse: Duration,
    pub timeout: Duration,
}

impl Default for Timing {
    /// halo's defaults: 100 ms / 500 ms.
    fn default() -> Self {
        Timing {
            pulse: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
        }
    }
}

/// The daemons of a lab, one per named host.
pub struct Cluster<'lab> {
    lab: &'lab Lab,
    nodes: Vec<String>,
    daemons: BTreeMap<String, LabProcess>,
}

/// The API token every test node accepts (written to `/etc/halo/api.token`).
pub const TEST_TOKEN: &str = "lab-token";

/// A fixed test secret: 32 bytes of hex, as `halo keygen` writes.
pub const TEST_SECRET: &str = "6c61622d7365637265742d6e6f742d666f722d70726f64756374696f6e212121";

impl<'lab> Cluster<'lab> {
    /// Writes the configuration of a cluster of `nodes` (hosts of `lab`),
    /// with one heartbeat network per lab network, and `modules` (TOML
    /// `[[module]]` tables, the same on every node) to every host.
    pub fn configure(
        lab: &'lab Lab,
        nodes: &[&str],
        networks: u8,
        timing: Timing,
        modules: &str,
    ) -> Result<Self> {
        let mut shared = String::from("[cluster]\nname = \"lab\"\n");
        for k in 0..networks {
            shared.push_str(&format!(
                "\n[[cluster.network]]\nname = \"net{k}\"\npulse = \"{}ms\"\ntimeout = \"{}ms\"\n",
                timing.pulse.as_millis(),
                timing.timeout.as_millis()
            ));
        }
        for name in nodes {
            let host = lab.host(name);
            let addresses: Vec<String> = (0..networks)
                .map(|k| format!("net{k} = \"{}\"", host.ipv4_on(k)))
                .collect();
            shared.push_str(&format!(
                "\n[[cluster.node]]\nname = \"{name}\"\naddresses = {{ {} }}\n",
                addresses.join(", ")
            ));
        }
        shared.push_str(&format!(
            "\n[api]\nlisten = \"0.0.0.0:{API_PORT}\"\n\n{modules}"
        ));
        for name in nodes {
            let host = lab.host(name);
            let config =
                format!("[node]\nname = \"{name}\"\nstate_dir = \"{STATE_DIR}\"\n\n{shared}");
            write_private(&host.outside_path(CONFIG_PATH), &config, 0o644)?;
            write_private(
                &host.outside_path("/etc/halo/cluster.key"),
                TEST_SECRET,
                0o600,
            )?;
            write_private(&host.outside_path("/etc/halo/api.token"), TEST_TOKEN, 0o600)?;
        }
        Ok(Cluster {
            lab,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            daemons: BTreeMap::new(),
        })
    }

    /// Starts `halo run` on `node` and waits until its API answers.
    pub fn start(&mut self, node: &str) -> Result<()> {
        self.start_with(node, |_| {})
    }

    /// Starts `halo run` on `node` as [`Cluster::start`] does, letting
    /// `adjust` change the command first (e.g. put the daemon in a process
    /// group of its own, away from the terminal's Ctrl-C).
    pub fn start_with(&mut self, node: &str, adjust: impl FnOnce(&mut Command)) -> Result<()> {
        ensure!(
            self.nodes.iter().any(|n| n == node),
            "{node} is not a cluster node"
        );
        let host = self.lab.host(node);
        let mut command = Command::new(halo_bin());
        command
            .args(["run", "--config", CONFIG_PATH])
            // HALO_TEST_LOG raises the daemons' log level to debug a test.
            .env(
                "HALO_LOG",
                std::env::var("HALO_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            );
        adjust(&mut command);
        let process = host.spawn("halo", &mut command)?;
        self.daemons.insert(node.to_owned(), process);
        crate::lab::wait_until(Duration::from_secs(10), &format!("{node}'s API"), || {
            Ok(self.status(node).is_ok())
        })
    }

    /// Starts every node's daemon.
    pub fn start_all(&mut self) -> Result<()> {
        for node in self.nodes.clone() {
            self.start(&node)?;
        }
        Ok(())
    }

    /// The daemon process of `node`.
    pub fn daemon(&mut self, node: &str) -> Result<&mut LabProcess> {
        self.daemons
            .get_mut(node)
            .with_context(|| format!("no daemon started on {node}"))
    }

    /// SIGKILLs `node`'s daemon, as a crash would.
    pub fn kill(&mut self, node: &str) -> Result<()> {
        self.daemon(node)?.kill()?;
        Ok(())
    }

    /// SIGKILLs `node`'s daemon as [`Cluster::kill`] does, and returns the
    /// wall-clock time read right before kill(2): benches compare it with
    /// the timestamps of the other daemons' logs, which use the same clock.
    pub fn kill_timed(&mut self, node: &str) -> Result<SystemTime> {
        let daemon = self.daemon(node)?;
        let at = SystemTime::now();
        daemon.kill()?;
        Ok(at)
    }

    /// The `halo status --json` of `node`, through the CLI inside the host.
    pub fn status(&self, node: &str) -> Result<NodeStatus> {
        let output = self.lab.host(node).run(Command::new(halo_bin()).args([
            "status",
            "--json",
            "--api",
            &format!("127.0.0.1:{API_PORT}"),
        ]))?;
        if !output.status.success() {
            bail!(
                "halo status on {node}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).context("parsing halo status --json")
    }

    /// Runs the `halo` CLI with `args` on `node`, pointed at its daemon.
    pub fn cli(&self, node: &str, args: &[&str]) -> Result<std::process::Output> {
        self.lab
            .host(node)
            .run(Command::new(halo_bin()).args(args).args([
                "--api",
                &format!("127.0.0.1:{API_PORT}"),
                "--config",
                CONFIG_PATH,
            ]))
    }

    /// Waits until `node`'s status satisfies `what`.
    pub fn wait_status(
        &self,
        node: &str,
        timeout: Duration,
        description: &str,
        mut what: impl FnMut(&NodeStatus) -> bool,
    ) -> Result<NodeStatus> {
        let mut last = None;
        let waited = crate::lab::wait_until(timeout, description, || {
            let status = self.status(node)?;
            let done = what(&status);
            last = Some(status);
            Ok(done)
        });
        match (waited, last) {
            (Ok(()), Some(status)) => Ok(status),
            (Err(error), last) => Err(error.context(format!("last status of {node}: {last:#?}"))),
            (Ok(()), None) => unreachable!("wait_until succeeded without a status"),
        }
    }

    /// The daemon log of `node` so far.
    pub fn log(&self, node: &str) -> Result<String> {
        self.daemons
            .get(node)
            .with_context(|| format!("no daemon started on {node}"))?
            .log()
    }

    /// The event log of `module` on `node` (its `events.jsonl` under
    /// [`STATE_DIR`], read from outside the host), oldest entry first.
    pub fn module_log(
        &self,
        node: &str,
        module: &str,
    ) -> Result<Vec<halo::daemon::module_log::LogEntry>> {
        let state_dir = self.lab.host(node).outside_path(STATE_DIR);
        halo::daemon::module_log::read(&state_dir, module)
            .with_context(|| format!("reading the log of module {module} on {node}"))
    }
}

/// How many lines of each daemon's log a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 120;

impl Drop for Cluster<'_> {
    /// A test that fails prints the end of every daemon's log: a lab
    /// failure in CI is then told by what the daemons did, not only by the
    /// assertion.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (node, daemon) in &self.daemons {
            let Ok(log) = daemon.log() else { continue };
            let log = strip_ansi(&log);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_ON_FAILURE);
            eprintln!(
                "---- halo log of {node} (last {} of {} lines) ----",
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Whether `status` shows `peer` up.
pub fn peer_up(status: &NodeStatus, peer: &str) -> bool {
    status.peers.iter().any(|p| p.name == peer && p.up)
}

/// Whether `status` shows `module` in `state` (`"UP"`, `"STOP"`…) and
/// `phase` (`"ready"` or `"transient"`).
pub fn module_in(status: &NodeStatus, module: &str, state: &str, phase: &str) -> bool {
    status
        .modules
        .iter()
        .any(|m| m.name == module && m.state == state && m.phase == phase)
}

/// Writes an executable script (mode 0755) that `host` sees at `inside`,
/// below one of its private paths: a module's script or an application.
pub fn install_script(host: &crate::lab::Host, inside: &str, text: &str) -> Result<()> {
    write_private(&host.outside_path(inside), text, 0o755)
}

fn write_private(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
