//! A lab host: a network namespace wired to the switch once per lab network,
//! a mount namespace of its own, and a state directory on the real
//! filesystem.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io::{Seek, SeekFrom},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::{
    command::{self, describe},
    ns::{self, NsId},
    process::{read_lossy, wait_deadline, LabProcess},
};

/// How long [`Host::run`] lets a command take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// One machine of the lab. Its processes see its own interfaces `eth0`,
/// `eth1`… (one per lab network), its own `/sys`, and its own directory on
/// every private path; the rest of the filesystem, including its state
/// directory, is the real machine's.
#[derive(Debug)]
pub struct Host {
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) netns_path: PathBuf,
    pub(crate) mntns_path: PathBuf,
    /// The host's attachments, indexed by network.
    pub(crate) links: Vec<Link>,
    pub(crate) state_dir: PathBuf,
    /// The real directory under which the private paths live:
    /// `/var/lib/app` is `<root_dir>/var/lib/app`.
    pub(crate) root_dir: PathBuf,
    pub(crate) private_paths: Vec<PathBuf>,
    pub(crate) namespaces: Vec<NsId>,
}

/// A host's attachment to one lab network: a veth pair between the host and
/// the network's bridge.
#[derive(Debug)]
pub(crate) struct Link {
    /// The host's end, `eth<k>` on network k.
    pub(crate) iface: String,
    /// The switch's end, a port of the network's bridge.
    pub(crate) port: String,
    pub(crate) ipv4: Ipv4Addr,
    pub(crate) ipv6: Ipv6Addr,
}

impl Host {
    /// The host's name, as given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's network namespace, as `ip netns` names it.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The host's interface to network 0.
    pub fn iface(&self) -> &str {
        self.iface_on(0)
    }

    /// The host's IPv4 address on network 0.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4_on(0)
    }

    /// The host's IPv6 address on network 0.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6_on(0)
    }

    /// The host's interface to network `network`, `eth<network>`.
    ///
    /// # Panics
    /// If the lab has no such network: a test asking for it is wrong.
    pub fn iface_on(&self, network: u8) -> &str {
        &self.expect_link(network).iface
    }

    /// The host's IPv4 address on network `network`.
    ///
    /// # Panics
    /// If the lab has no such network.
    pub fn ipv4_on(&self, network: u8) -> Ipv4Addr {
        self.expect_link(network).ipv4
    }

    /// The host's IPv6 address on network `network`.
    ///
    /// # Panics
    /// If the lab has no such network.
    pub fn ipv6_on(&self, network: u8) -> Ipv6Addr {
        self.expect_link(network).ipv6
    }

    /// The host's directory on the real filesystem (logs of spawned
    /// processes, and the private paths' contents below `root/`); the same
    /// path works from inside the host.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where the file that the host sees at `inside`, below one of its
    /// private paths, lives on the real filesystem.
    ///
    /// # Panics
    /// If `inside` is not below a private path: the real machine and the
    /// host see the same file there.
    pub fn outside_path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let inside = inside.as_ref();
        assert!(
            self.private_paths
                .iter()
                .any(|private| inside.starts_with(private)),
            "{} is not below a private path of host {} ({:?})",
            inside.display(),
            self.name,
            self.private_paths
        );
        self.root_dir
            .join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// Starts `cmd` inside the host (its network and mount namespaces), its
    /// stdout and stderr appended to `<state dir>/<log_name>.log`.
    ///
    /// The program, and the working directory if `cmd` sets one, are looked
    /// up inside the host.
    pub fn spawn(&self, log_name: &str, cmd: &mut Command) -> Result<LabProcess> {
        ensure!(
            !log_name.is_empty() && !log_name.contains('/'),
            "log name {log_name:?} must be a plain file name"
        );
        let log_path = self.state_dir.join(format!("{log_name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open log {}", log_path.display()))?;
        // Appending keeps the output of an earlier process of the same name
        // (a restarted daemon); this one's output starts here.
        let log_start = log
            .metadata()
            .with_context(|| format!("stat log {}", log_path.display()))?
            .len();
        let what = format!("`{}` in host {}", describe(cmd), self.name);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log descriptor")?)
            .stderr(log);
        let child = self.start(cmd).with_context(|| format!("spawn {what}"))?;
        Ok(LabProcess::new(child, what, log_path, log_start))
    }

    /// Runs `cmd` inside the host to completion, within [`RUN_TIMEOUT`].
    pub fn run(&self, cmd: &mut Command) -> Result<Output> {
        self.run_timeout(cmd, RUN_TIMEOUT)
    }

    /// Runs `cmd` inside the host to completion; fails, killing it, if it
    /// takes longer than `timeout`. The exit status is the caller's to judge.
    pub fn run_timeout(&self, cmd: &mut Command, timeout: Duration) -> Result<Output> {
        let what = format!("`{}` in host {}", describe(cmd), self.name);
        // Memory files rather than pipes: a background process that inherits
        // them cannot keep the caller waiting for end-of-file.
        let mut stdout = capture_file(c"lab-stdout")?;
        let mut stderr = capture_file(c"lab-stderr")?;
        cmd.stdin(Stdio::null())
            .stdout(stdout.try_clone().context("duplicate a memfd")?)
            .stderr(stderr.try_clone().context("duplicate a memfd")?);
        let mut child = self.start(cmd).with_context(|| format!("start {what}"))?;
        let status =
            wait_deadline(&mut child, timeout).with_context(|| format!("wait for {what}"))?;
        let captured = |file: &mut File| {
            file.seek(SeekFrom::Start(0))
                .and_then(|_| read_lossy(file))
                .with_context(|| format!("read the output of {what}"))
        };
        let Some(status) = status else {
            // Best effort: the timeout is the error worth reporting.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {timeout:?}; stdout so far: {:?}, stderr: {:?}",
                captured(&mut stdout)?,
                captured(&mut stderr)?
            );
        };
        Ok(Output {
            status,
            stdout: captured(&mut stdout)?.into_bytes(),
            stderr: captured(&mut stderr)?.into_bytes(),
        })
    }

    /// Runs `sh -c script` inside the host and returns its stdout; fails with
    /// its stderr unless it exits 0.
    pub fn sh(&self, script: &str) -> Result<String> {
        let output = self.run(Command::new("sh").arg("-c").arg(script))?;
        ensure!(
            output.status.success(),
            "`sh -c {script:?}` in host {} failed ({}): {}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether one ping from the host to `to` gets its reply within `wait`.
    pub fn ping(&self, to: impl Into<IpAddr>, wait: Duration) -> Result<bool> {
        let to = to.into();
        let output = self.run(
            Command::new("ping")
                .args(["-n", "-q", "-c", "1", "-W"])
                .arg(format!("{:.3}", wait.as_secs_f64()))
                .arg(to.to_string()),
        )?;
        // ping exits 1 when no reply came, 2 on any other failure.
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "ping {to} from host {} failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    /// Adds `addr` to the host's interface to network 0, as a lone /32 or
    /// /128: an extra client address that others reach on network 0 and that
    /// the host uses as a source only when told to bind it.
    pub fn add_address(&self, addr: impl Into<IpAddr>) -> Result<()> {
        self.add_addresses(&[addr.into()])
    }

    /// Adds every address of `addrs` as [`Host::add_address`] does, with a
    /// single `ip` run.
    pub fn add_addresses(&self, addrs: &[IpAddr]) -> Result<()> {
        let script: String = addrs
            .iter()
            .map(|addr| {
                let len = if addr.is_ipv4() { 32 } else { 128 };
                format!("address add {addr}/{len} dev {}\n", self.iface())
            })
            .collect();
        command::ip_batch(&self.netns, &script)
            .with_context(|| format!("add {} addresses to host {}", addrs.len(), self.name))
    }

    /// The processes inside the host now.
    pub fn processes(&self) -> Result<Vec<u32>> {
        let pids = ns::processes_in(&self.namespaces)?;
        Ok(pids.into_iter().map(|pid| pid.as_raw() as u32).collect())
    }

    /// Runs `f` on a thread inside the host's network and mount namespaces,
    /// for work the test does itself there: attaching an eBPF program to the
    /// host's interface, or sending crafted frames from it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        ns::in_namespaces(&self.netns_path, Some(&self.mntns_path), f)
    }

    /// The host's link to network `network`.
    pub(crate) fn link(&self, network: u8) -> Result<&Link> {
        self.links.get(usize::from(network)).with_context(|| {
            format!(
                "host {} has no network {network}: its lab has networks 0 to {}",
                self.name,
                self.links.len() - 1
            )
        })
    }

    fn expect_link(&self, network: u8) -> &Link {
        self.link(network)
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Spawns `cmd` from a thread inside the host's namespaces.
    fn start(&self, cmd: &mut Command) -> Result<Child> {
        self.enter(|| Ok(cmd.spawn()?))
    }
}

/// An anonymous memory file to collect a command's output in.
fn capture_file(name: &CStr) -> Result<File> {
    let fd = memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).context("memfd_create")?;
    Ok(File::from(fd))
}
