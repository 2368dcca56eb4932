//! The network-namespace lab: a switch namespace holding a Linux bridge, and
//! host namespaces wired to it by veth pairs. Each host has its own IPv4 and
//! IPv6 address, its own mount namespace (every private path such as
//! `/var/lib/app` is a different directory on every host, as on real
//! machines, and `/sys` shows the host's own interfaces) and its own state
//! directory.
//!
//! Every object a lab creates is owned by a guard on its cleanup stack, so
//! dropping the [`Lab`] — also while unwinding from a panic — removes all of
//! it, newest first. Every name it gives starts with
//! `halolab-<pid>-<seq>-<label>`, and each build first sweeps the leftovers
//! of runs whose process died.
//!
//! ```no_run
//! use std::{process::Command, time::Duration};
//! use halo_tests::lab::{wait_until, LabBuilder};
//!
//! let lab = LabBuilder::new("failover").hosts(&["n1", "n2", "client"]).build()?;
//! let n1 = lab.host("n1");
//! let _daemon = n1.spawn("halo", Command::new("halo").arg("run"))?;
//! lab.cut("n2")?;
//! wait_until(Duration::from_secs(5), "n1 to answer the client", || {
//!     lab.host("client").ping(n1.ipv4(), Duration::from_millis(200))
//! })?;
//! # anyhow::Ok(())
//! ```

mod cleanup;
mod command;
mod host;
mod ns;
mod process;
mod runs;

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Component, Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use nix::{
    mount::{mount, MsFlags},
    unistd::geteuid,
};

use self::{
    cleanup::{Cleanup, Guard},
    ns::{MountPlan, NsId},
    runs::{LabLock, RunKey, NETNS_DIR},
};
/// The signals [`LabProcess::signal`] sends.
pub use nix::sys::signal::Signal;

pub use self::{
    host::{Host, RUN_TIMEOUT},
    process::LabProcess,
};

/// Where labs keep their directories on the real filesystem.
pub const LAB_ROOT: &str = "/run/halo-lab";
/// Every host's interface to the lab network.
pub const HOST_IFACE: &str = "eth0";
/// The paths every host has its own directory on, unless told more.
pub const DEFAULT_PRIVATE_PATHS: [&str; 4] =
    ["/var/lib/app", "/var/lib/halo", "/etc/halo", "/run/halo"];
/// Prefix length of the lab's IPv4 network, 10.77.0.0/16.
pub const IPV4_PREFIX_LEN: u8 = 16;
/// Prefix length of the lab's IPv6 network, fd77::/64.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";
/// The switch's nftables table: a bridge-family filter whose sets hold the
/// cut ports and the cut pairs of ports.
const FIREWALL_TABLE: &str = "halo_lab";
/// How long the lab's links may take to come up after a build.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long processes may take to die of SIGKILL.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `n`th IPv4 address of the lab network, 10.77.0.0/16: hosts hold 1 to
/// N in build order, and higher numbers are free for VIPs and clients.
/// Every lab has its own switch, so all labs use the same addresses.
pub fn lab_ipv4(n: u16) -> Ipv4Addr {
    let [high, low] = n.to_be_bytes();
    Ipv4Addr::new(10, 77, high, low)
}

/// The `n`th IPv6 address of the lab network, fd77::/64, numbered as
/// [`lab_ipv4`].
pub fn lab_ipv6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, n)
}

/// Polls `condition` until it holds; fails if it does not within `timeout`
/// (naming `what` was awaited), or as soon as `condition` itself fails.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Describes a lab; [`LabBuilder::build`] makes it.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    label: String,
    hosts: Vec<String>,
    private_paths: Vec<PathBuf>,
}

impl LabBuilder {
    /// A lab without hosts yet, with the [`DEFAULT_PRIVATE_PATHS`]; `label`
    /// (the test's name) goes into the names of its objects.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            hosts: Vec::new(),
            private_paths: DEFAULT_PRIVATE_PATHS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Adds a host; hosts get addresses 1, 2… in the order they are added.
    pub fn host(mut self, name: &str) -> Self {
        self.hosts.push(name.to_owned());
        self
    }

    /// Adds several hosts, as [`LabBuilder::host`] does.
    pub fn hosts(self, names: &[&str]) -> Self {
        names.iter().fold(self, |builder, name| builder.host(name))
    }

    /// Gives every host its own directory at absolute path `path`, besides
    /// the [`DEFAULT_PRIVATE_PATHS`].
    pub fn private_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.private_paths.push(path.into());
        self
    }

    /// Creates the lab, after sweeping the leftovers of dead runs. Needs root.
    pub fn build(mut self) -> Result<Lab> {
        self.validate()?;
        ensure!(
            geteuid().is_root(),
            "the lab needs root for its network and mount namespaces: run the lab tests as root"
        );
        // Parents before children, or a parent's bind would hide the child's.
        self.private_paths
            .sort_by_key(|path| path.components().count());
        let key = RunKey::next();
        let prefix = format!("{}{}", key.prefix(), sanitize_label(&self.label));
        let dir = Path::new(LAB_ROOT).join(&prefix);
        let switch = format!("{prefix}-switch");
        let switch_path = Path::new(NETNS_DIR).join(&switch);
        let netns: Vec<String> = self
            .hosts
            .iter()
            .map(|name| format!("{prefix}-{name}"))
            .collect();

        // Declared before the lock, so that a failed build drops the lock
        // before its cleanup, which takes the lock again.
        let mut cleanup = Cleanup::default();
        let lock = LabLock::acquire()?;
        runs::sweep(&lock)?;
        fs::create_dir(&dir).with_context(|| format!("create lab directory {}", dir.display()))?;
        cleanup.push(Guard::Dir(dir.clone()));
        runs::write_owner(&dir)?;
        cleanup.push(Guard::Mountpoints(key));
        runs::create_mountpoints(&lock, &dir, &self.private_paths)?;
        let mntns_dir = dir.join(".mntns");
        fs::create_dir(&mntns_dir)
            .with_context(|| format!("create directory {}", mntns_dir.display()))?;
        bind_private(&mntns_dir, &mut cleanup)?;

        ip(&["netns", "add", &switch])?;
        cleanup.push(Guard::Netns(switch.clone()));
        for name in &netns {
            ip(&["netns", "add", name])?;
            cleanup.push(Guard::Netns(name.clone()));
            disable_dad(&Path::new(NETNS_DIR).join(name))?;
        }
        command::ip_batch(&switch, &switch_script(&netns))?;
        nft(&switch_path, &firewall_script())
            .with_context(|| format!("create the switch's firewall in {switch}"))?;

        let mut hosts = Vec::with_capacity(self.hosts.len());
        for (index, (name, netns)) in (1..).zip(self.hosts.iter().zip(netns)) {
            hosts.push(self.create_host(&mut cleanup, &dir, index, name, netns)?);
        }
        drop(lock);

        wait_until(LINK_TIMEOUT, "the lab's links to come up", || {
            links_up(&switch, &hosts)
        })?;
        Ok(Lab {
            prefix,
            dir,
            switch,
            switch_path,
            hosts,
            _cleanup: cleanup,
        })
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            !self.hosts.is_empty(),
            "lab {}: add at least one host",
            self.label
        );
        for (i, name) in self.hosts.iter().enumerate() {
            let valid = name.len() <= 32
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            ensure!(
                valid,
                "host name {name:?}: use up to 32 ASCII letters, digits, '-' and '_', \
                 starting with a letter or digit"
            );
            ensure!(
                name != "switch",
                "host name \"switch\" is taken by the switch"
            );
            ensure!(
                !self.hosts[..i].contains(name),
                "host {name:?} is added twice"
            );
        }
        for (i, path) in self.private_paths.iter().enumerate() {
            let mut components = path.components();
            let valid = components.next() == Some(Component::RootDir)
                && components.clone().next().is_some()
                && components.all(|c| matches!(c, Component::Normal(_)));
            ensure!(
                valid,
                "private path {}: must be absolute, below /, without `.` or `..`",
                path.display()
            );
            let reserved = ["/proc", "/sys", "/dev", LAB_ROOT, NETNS_DIR]
                .into_iter()
                .find(|reserved| {
                    path.starts_with(reserved) || Path::new(reserved).starts_with(path)
                });
            if let Some(reserved) = reserved {
                anyhow::bail!(
                    "private path {}: overlaps {reserved}, which the lab needs as it is",
                    path.display()
                );
            }
            ensure!(
                !self.private_paths[..i].contains(path),
                "private path {} is added twice",
                path.display()
            );
        }
        Ok(())
    }

    /// Configures the addresses, directories and mount namespace of host
    /// `name`, number `index`, whose network namespace `netns` exists.
    fn create_host(
        &self,
        cleanup: &mut Cleanup,
        dir: &Path,
        index: u16,
        name: &str,
        netns: String,
    ) -> Result<Host> {
        let (ipv4, ipv6) = (lab_ipv4(index), lab_ipv6(index));
        command::ip_batch(
            &netns,
            &format!(
                "link set lo up\n\
                 link set {HOST_IFACE} up\n\
                 address add {ipv4}/{IPV4_PREFIX_LEN} dev {HOST_IFACE}\n\
                 address add {ipv6}/{IPV6_PREFIX_LEN} dev {HOST_IFACE}\n"
            ),
        )?;

        let state_dir = dir.join(name);
        let root_dir = state_dir.join("root");
        let mut binds = Vec::with_capacity(self.private_paths.len());
        for path in &self.private_paths {
            let source = root_dir.join(path.strip_prefix("/").unwrap_or(path));
            fs::create_dir_all(&source)
                .with_context(|| format!("create directory {}", source.display()))?;
            binds.push((source, path.clone()));
        }
        // Lab mounts the host would otherwise copy: other hosts' namespace
        // files, and the named network namespaces.
        let detach = ns::mount_points()?
            .into_iter()
            .filter(|mount| mount.starts_with(LAB_ROOT) || mount.starts_with(NETNS_DIR))
            .collect();

        let netns_path = Path::new(NETNS_DIR).join(&netns);
        let mntns_path = dir.join(".mntns").join(name);
        File::create(&mntns_path)
            .with_context(|| format!("create file {}", mntns_path.display()))?;
        ns::create_mount_ns(&netns_path, &mntns_path, &MountPlan { detach, binds })
            .with_context(|| format!("create the mount namespace of host {name}"))?;
        cleanup.push(Guard::Mount(mntns_path.clone()));
        let namespaces = vec![NsId::of(&netns_path)?, NsId::of(&mntns_path)?];
        cleanup.push(Guard::Processes {
            owner: format!("host {name}"),
            namespaces: namespaces.clone(),
        });

        Ok(Host {
            name: name.to_owned(),
            port: format!("p{index}"),
            netns,
            netns_path,
            mntns_path,
            ipv4,
            ipv6,
            state_dir,
            root_dir,
            private_paths: self.private_paths.clone(),
            namespaces,
        })
    }
}

/// A lab: hosts wired to a switch. Dropping it removes everything it made.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    switch: String,
    switch_path: PathBuf,
    hosts: Vec<Host>,
    _cleanup: Cleanup,
}

impl Lab {
    /// The start of every name this lab gave: network namespaces, its
    /// directory, mounts.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's directory on the real filesystem, holding the hosts' state
    /// directories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace of the switch.
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// The hosts, in build order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`.
    ///
    /// # Panics
    /// If the lab has no such host: a test asking for it is wrong.
    pub fn host(&self, name: &str) -> &Host {
        self.find(name).unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Kills every process inside host `name`, as a crash of the machine
    /// would; the host itself stays, ready for new processes.
    pub fn kill_host(&self, name: &str) -> Result<()> {
        let host = self.find(name)?;
        ns::kill_processes_in(&host.namespaces, KILL_TIMEOUT)
            .with_context(|| format!("kill the processes of host {name}"))
    }

    /// Cuts host `name` off the network: the switch drops every frame from
    /// and to it. Its link stays up, as when a switch or the network beyond
    /// fails.
    pub fn cut(&self, host: &str) -> Result<()> {
        let port = &self.find(host)?.port;
        self.firewall(&format!(
            "add element bridge {FIREWALL_TABLE} cut_ports {{ \"{port}\" }}\n"
        ))
        .with_context(|| format!("cut host {host}"))
    }

    /// Undoes [`Lab::cut`] of host `name`; does nothing if it is not cut.
    pub fn heal(&self, host: &str) -> Result<()> {
        let port = &self.find(host)?.port;
        let element = format!("bridge {FIREWALL_TABLE} cut_ports {{ \"{port}\" }}");
        // Adding first makes the deletion succeed whether or not it was cut;
        // one nft run is one transaction.
        self.firewall(&format!(
            "add element {element}\ndelete element {element}\n"
        ))
        .with_context(|| format!("heal host {host}"))
    }

    /// Cuts hosts `a` and `b` off each other, both ways; both still reach
    /// every other host.
    pub fn cut_pair(&self, a: &str, b: &str) -> Result<()> {
        let element = self.pair_element(a, b)?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut hosts {a} and {b} off each other"))
    }

    /// Undoes [`Lab::cut_pair`] of `a` and `b`; does nothing if they are not
    /// cut.
    pub fn heal_pair(&self, a: &str, b: &str) -> Result<()> {
        let element = self.pair_element(a, b)?;
        self.firewall(&format!(
            "add element {element}\ndelete element {element}\n"
        ))
        .with_context(|| format!("heal the link between hosts {a} and {b}"))
    }

    /// The firewall element that stands for the pair `a`, `b`: both
    /// directions through the bridge.
    fn pair_element(&self, a: &str, b: &str) -> Result<String> {
        ensure!(a != b, "cannot cut host {a} off itself");
        let (a, b) = (&self.find(a)?.port, &self.find(b)?.port);
        Ok(format!(
            "bridge {FIREWALL_TABLE} cut_pairs {{ \"{a}\" . \"{b}\", \"{b}\" . \"{a}\" }}"
        ))
    }

    fn find(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .with_context(|| {
                let names: Vec<_> = self.hosts.iter().map(Host::name).collect();
                format!(
                    "lab {} has no host {name:?} (it has {names:?})",
                    self.prefix
                )
            })
    }

    fn firewall(&self, script: &str) -> Result<()> {
        nft(&self.switch_path, script)
    }
}

/// `label` made fit for names: letters, digits and '_', the last 32 of them.
fn sanitize_label(label: &str) -> String {
    let chars: Vec<char> = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let label: String = chars[chars.len().saturating_sub(32)..].iter().collect();
    if label.is_empty() {
        "lab".to_owned()
    } else {
        label
    }
}

fn ip(args: &[&str]) -> Result<()> {
    command::ip(args).map(drop)
}

/// Bind-mounts `dir` on itself with private propagation and guards the mount.
///
/// A mount namespace can only be bound on a file in a mount that does not
/// propagate, since it could otherwise propagate into itself.
fn bind_private(dir: &Path, cleanup: &mut Cleanup) -> Result<()> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind {} on itself", dir.display()))?;
    cleanup.push(Guard::Mount(dir.to_owned()));
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .with_context(|| format!("make {} private", dir.display()))
}

/// Turns IPv6 duplicate address detection off in the network namespace at
/// `netns` before its interfaces exist, so that their addresses, link-local
/// ones included, work at once.
fn disable_dad(netns: &Path) -> Result<()> {
    ns::in_namespaces(netns, None, || {
        // The kernel skips DAD only when both `all` and the interface (which
        // copies `default`) say so.
        for conf in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
            fs::write(&path, "0").with_context(|| format!("write 0 to {path}"))?;
        }
        Ok(())
    })
    .with_context(|| format!("disable IPv6 DAD in {}", netns.display()))
}

/// The `ip` batch that builds the switch: the bridge, and a veth pair to
/// each host, port `p<N>` on the bridge and [`HOST_IFACE`] in the host.
fn switch_script(hosts: &[String]) -> String {
    // Without multicast snooping the bridge floods IPv6 neighbour discovery
    // instead of waiting to learn who listens.
    let mut script = format!(
        "link set lo up\n\
         link add {BRIDGE} type bridge mcast_snooping 0\n\
         link set {BRIDGE} up\n"
    );
    for (index, netns) in (1..).zip(hosts) {
        // Writing to a String cannot fail.
        let _ = write!(
            script,
            "link add p{index} type veth peer name {HOST_IFACE} netns {netns}\n\
             link set p{index} master {BRIDGE} up\n"
        );
    }
    script
}

/// The switch's firewall: frames from or to a cut port, and frames between
/// a cut pair of ports, are dropped as the bridge forwards them (flooded
/// frames pass the forward hook once per port, so broadcasts are cut too).
fn firewall_script() -> String {
    format!(
        "table bridge {FIREWALL_TABLE} {{\n\
         \tset cut_ports {{ type ifname; }}\n\
         \tset cut_pairs {{ type ifname . ifname; }}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname @cut_ports drop\n\
         \t\toifname @cut_ports drop\n\
         \t\tiifname . oifname @cut_pairs drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs the nftables `script` in the network namespace at `netns`.
fn nft(netns: &Path, script: &str) -> Result<()> {
    ns::in_namespaces(netns, None, || {
        command::run_checked(Command::new("nft").args(["-f", "-"]), script)
    })
    .with_context(|| format!("run nft in {} with:\n{script}", netns.display()))
    .map(drop)
}

/// Whether every host's interface and its switch port are up.
fn links_up(switch: &str, hosts: &[Host]) -> Result<bool> {
    let up = |netns: &str, dev: &str| -> Result<bool> {
        let link = command::ip(&["-netns", netns, "-oneline", "link", "show", "dev", dev])?;
        Ok(link.contains("state UP"))
    };
    for host in hosts {
        if !up(switch, &host.port)? || !up(&host.netns, HOST_IFACE)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_last_32_name_characters() {
        assert_eq!(sanitize_label("lab::cut pair"), "lab__cut_pair");
        assert_eq!(sanitize_label(""), "lab");
        let long = format!("{}tail", "x".repeat(40));
        assert_eq!(sanitize_label(&long).len(), 32);
        assert!(sanitize_label(&long).ends_with("tail"));
    }

    #[test]
    fn lab_addresses_count_from_the_network() {
        assert_eq!(lab_ipv4(1), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(lab_ipv4(258), Ipv4Addr::new(10, 77, 1, 2));
        assert_eq!(lab_ipv6(0x1ff), "fd77::1ff".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn bad_hosts_and_private_paths_are_refused() {
        let refused = |builder: LabBuilder| builder.validate().unwrap_err().to_string();
        assert!(refused(LabBuilder::new("t")).contains("at least one host"));
        assert!(refused(LabBuilder::new("t").hosts(&["a", "a"])).contains("twice"));
        assert!(refused(LabBuilder::new("t").host("switch")).contains("switch"));
        assert!(refused(LabBuilder::new("t").host("a/b")).contains("host name"));
        assert!(refused(LabBuilder::new("t").host("a").private_path("var/x")).contains("absolute"));
        assert!(
            refused(LabBuilder::new("t").host("a").private_path("/var/../x")).contains("absolute")
        );
        assert!(refused(LabBuilder::new("t").host("a").private_path("/run")).contains("overlaps"));
        assert!(
            refused(LabBuilder::new("t").host("a").private_path("/etc/halo")).contains("twice")
        );
    }
}
