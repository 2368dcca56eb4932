//! The network-namespace lab: a switch namespace holding one Linux bridge per
//! lab network, and host namespaces wired to every bridge by veth pairs
//! created inside the namespaces (port `p<N>` of bridge `br0` and `eth0` in
//! host N for network 0; port `p<N>n<k>` of bridge `br<k>` and `eth<k>` for
//! network k). Each host has an IPv4 and an IPv6 address on every network
//! (10.77.0.0/16 and fd77::/64 for network 0, see [`lab_ipv4_on`]), its own
//! mount namespace (every private path such as `/var/lib/app` is a different
//! directory on every host, as on real machines, and `/sys` shows the host's
//! own interfaces) and its own state directory.
//!
//! A lab has one network unless [`LabBuilder::networks`] asks for more, as
//! tests of heartbeats over redundant networks do. The switch cuts hosts
//! with a bridge-family nftables table, so a cut drops everything, ARP and
//! broadcasts included: [`Lab::cut`] and [`Lab::cut_pair`] cut every
//! network (a partition), [`Lab::cut_network`] and [`Lab::cut_pair_on`] one.
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
//! let lab = LabBuilder::new("failover")
//!     .hosts(&["n1", "n2", "client"])
//!     .networks(2)
//!     .build()?;
//! let n1 = lab.host("n1");
//! let _daemon = n1.spawn("halo", Command::new("halo").arg("run"))?;
//! // n2 still hears n1 on network 0.
//! lab.cut_network("n2", 1)?;
//! // Now it hears nothing.
//! lab.cut("n2")?;
//! wait_until(Duration::from_secs(5), "n1 to answer the client", || {
//!     lab.host("client").ping(n1.ipv4(), Duration::from_millis(200))
//! })?;
//! # anyhow::Ok(())
//! ```

mod cleanup;
mod command;
mod cpu;
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

use self::host::Link;
pub use self::{
    cpu::CpuLimit,
    host::{Host, RUN_TIMEOUT},
    process::LabProcess,
};

/// Where labs keep their directories on the real filesystem.
pub const LAB_ROOT: &str = "/run/halo-lab";
/// Every host's interface to network 0, the only one of a single-network
/// lab; network k's is `eth<k>`.
pub const HOST_IFACE: &str = "eth0";
/// The paths every host has its own directory on, unless told more.
pub const DEFAULT_PRIVATE_PATHS: [&str; 4] =
    ["/var/lib/app", "/var/lib/halo", "/etc/halo", "/run/halo"];
/// Prefix length of every lab network's IPv4 subnet, 10.77.0.0/16 for
/// network 0.
pub const IPV4_PREFIX_LEN: u8 = 16;
/// Prefix length of every lab network's IPv6 subnet, fd77::/64 for network 0.
pub const IPV6_PREFIX_LEN: u8 = 64;
/// The most networks a lab can have: the last one uses 10.255.0.0/16.
pub const MAX_NETWORKS: u8 = u8::MAX - IPV4_NETWORK_0_OCTET + 1;

/// The second octet of network 0's IPv4 subnet; network k's is 77 + k.
const IPV4_NETWORK_0_OCTET: u8 = 77;
/// The switch's nftables table: a bridge-family filter whose sets hold the
/// cut ports and the cut pairs of ports.
const FIREWALL_TABLE: &str = "halo_lab";
/// How long the lab's links may take to come up after a build.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long processes may take to die of SIGKILL.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `n`th IPv4 address of network 0, 10.77.0.0/16: hosts hold 1 to N in
/// build order, and higher numbers are free for VIPs and clients. Every lab
/// has its own switch, so all labs use the same addresses.
pub fn lab_ipv4(n: u16) -> Ipv4Addr {
    lab_ipv4_on(0, n)
}

/// The `n`th IPv6 address of network 0, fd77::/64, numbered as [`lab_ipv4`].
pub fn lab_ipv6(n: u16) -> Ipv6Addr {
    lab_ipv6_on(0, n)
}

/// The `n`th IPv4 address of network `network`, 10.(77+network).0.0/16,
/// numbered as [`lab_ipv4`].
///
/// # Panics
/// If `network` is not below [`MAX_NETWORKS`]: no lab has it.
pub fn lab_ipv4_on(network: u8, n: u16) -> Ipv4Addr {
    let octet = IPV4_NETWORK_0_OCTET
        .checked_add(network)
        .unwrap_or_else(|| panic!("network {network}: a lab has at most {MAX_NETWORKS} networks"));
    let [high, low] = n.to_be_bytes();
    Ipv4Addr::new(10, octet, high, low)
}

/// The `n`th IPv6 address of network `network`, `fd77:0:0:<network>::/64`
/// (subnet `network` of the lab's ULA prefix fd77::/48), numbered as
/// [`lab_ipv4`].
pub fn lab_ipv6_on(network: u8, n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, network.into(), 0, 0, 0, n)
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
    networks: u8,
    private_paths: Vec<PathBuf>,
}

impl LabBuilder {
    /// A lab without hosts yet, with the [`DEFAULT_PRIVATE_PATHS`]; `label`
    /// (the test's name) goes into the names of its objects.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            hosts: Vec::new(),
            networks: 1,
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

    /// Gives the lab `n` independent networks, 1 unless told: every host gets
    /// interfaces `eth0` to `eth<n-1>`, one on each, with addresses
    /// [`lab_ipv4_on`] and [`lab_ipv6_on`] of its number.
    pub fn networks(mut self, n: u8) -> Self {
        self.networks = n;
        self
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
        command::ip_batch(&switch, &switch_script(&netns, self.networks))?;
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
            networks: self.networks,
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
        ensure!(
            (1..=MAX_NETWORKS).contains(&self.networks),
            "lab {}: asked for {} networks, a lab has 1 to {MAX_NETWORKS}",
            self.label,
            self.networks
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
            // An empty directory over the kernel's BTF is how a test gets a
            // kernel without it; the rest of /sys stays as the lab needs it
            // (the host's sysfs is mounted before the private paths).
            let hideable = path == Path::new("/sys/kernel/btf");
            let reserved = ["/proc", "/sys", "/dev", LAB_ROOT, NETNS_DIR]
                .into_iter()
                .filter(|_| !hideable)
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
    /// `name`, number `index`, whose network namespace `netns` exists and
    /// holds its end of a veth pair to every network.
    fn create_host(
        &self,
        cleanup: &mut Cleanup,
        dir: &Path,
        index: u16,
        name: &str,
        netns: String,
    ) -> Result<Host> {
        let links: Vec<Link> = (0..self.networks)
            .map(|network| Link {
                iface: host_iface(network),
                port: port_name(network, index),
                ipv4: lab_ipv4_on(network, index),
                ipv6: lab_ipv6_on(network, index),
            })
            .collect();
        let mut script = "link set lo up\n".to_owned();
        for link in &links {
            let (iface, ipv4, ipv6) = (&link.iface, link.ipv4, link.ipv6);
            // Writing to a String cannot fail.
            let _ = write!(
                script,
                "link set {iface} up\n\
                 address add {ipv4}/{IPV4_PREFIX_LEN} dev {iface}\n\
                 address add {ipv6}/{IPV6_PREFIX_LEN} dev {iface}\n"
            );
        }
        command::ip_batch(&netns, &script)?;

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
            netns,
            netns_path,
            mntns_path,
            links,
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
    networks: u8,
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

    /// The network namespace of the switch, which holds the bridges of all
    /// networks.
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// How many networks the lab has; they are numbered from 0.
    pub fn networks(&self) -> u8 {
        self.networks
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

    /// Cuts host `name` off every network: the switch drops every frame from
    /// and to it. Its links stay up, as when the switches or the networks
    /// beyond fail.
    pub fn cut(&self, host: &str) -> Result<()> {
        let element = self.ports_element(host, None)?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut host {host}"))
    }

    /// Undoes [`Lab::cut`] and [`Lab::cut_network`] of host `name` on every
    /// network; does nothing where it is not cut.
    pub fn heal(&self, host: &str) -> Result<()> {
        let element = self.ports_element(host, None)?;
        self.firewall(&add_then_delete(&element))
            .with_context(|| format!("heal host {host}"))
    }

    /// Cuts host `name` off network `network` only, as [`Lab::cut`] does; it
    /// still reaches every host on the other networks.
    pub fn cut_network(&self, host: &str, network: u8) -> Result<()> {
        let element = self.ports_element(host, Some(network))?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut host {host} off network {network}"))
    }

    /// Heals host `name` on network `network`, whether [`Lab::cut`] or
    /// [`Lab::cut_network`] cut it; the other networks stay as they are.
    pub fn heal_network(&self, host: &str, network: u8) -> Result<()> {
        let element = self.ports_element(host, Some(network))?;
        self.firewall(&add_then_delete(&element))
            .with_context(|| format!("heal host {host} on network {network}"))
    }

    /// Cuts hosts `a` and `b` off each other on every network, both ways;
    /// both still reach every other host.
    pub fn cut_pair(&self, a: &str, b: &str) -> Result<()> {
        let element = self.pairs_element(a, b, None)?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut hosts {a} and {b} off each other"))
    }

    /// Undoes [`Lab::cut_pair`] and [`Lab::cut_pair_on`] of `a` and `b` on
    /// every network; does nothing where they are not cut.
    pub fn heal_pair(&self, a: &str, b: &str) -> Result<()> {
        let element = self.pairs_element(a, b, None)?;
        self.firewall(&add_then_delete(&element))
            .with_context(|| format!("heal the link between hosts {a} and {b}"))
    }

    /// Cuts hosts `a` and `b` off each other on network `network` only, both
    /// ways.
    pub fn cut_pair_on(&self, network: u8, a: &str, b: &str) -> Result<()> {
        let element = self.pairs_element(a, b, Some(network))?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut hosts {a} and {b} off each other on network {network}"))
    }

    /// Heals the link between `a` and `b` on network `network`, whether
    /// [`Lab::cut_pair`] or [`Lab::cut_pair_on`] cut it; the other networks
    /// stay as they are.
    pub fn heal_pair_on(&self, network: u8, a: &str, b: &str) -> Result<()> {
        let element = self.pairs_element(a, b, Some(network))?;
        self.firewall(&add_then_delete(&element)).with_context(|| {
            format!("heal the link between hosts {a} and {b} on network {network}")
        })
    }

    /// Drops every frame from host `from` to host `to` on every network,
    /// and nothing the other way: one-way loss, as a broken transmit path
    /// or an asymmetric firewall makes it.
    pub fn cut_one_way(&self, from: &str, to: &str) -> Result<()> {
        let element = self.one_way_element(from, to)?;
        self.firewall(&format!("add element {element}\n"))
            .with_context(|| format!("cut the way from host {from} to host {to}"))
    }

    /// Undoes [`Lab::cut_one_way`]; does nothing where it is not cut.
    pub fn heal_one_way(&self, from: &str, to: &str) -> Result<()> {
        let element = self.one_way_element(from, to)?;
        self.firewall(&add_then_delete(&element))
            .with_context(|| format!("heal the way from host {from} to host {to}"))
    }

    /// The firewall element for frames from `from` to `to` through every
    /// bridge.
    fn one_way_element(&self, from: &str, to: &str) -> Result<String> {
        ensure!(from != to, "cannot cut host {from} off itself");
        let from = links_of(self.find(from)?, None)?;
        let to = links_of(self.find(to)?, None)?;
        let pairs: Vec<String> = from
            .iter()
            .zip(&to)
            .map(|(a, b)| format!("\"{}\" . \"{}\"", a.port, b.port))
            .collect();
        Ok(format!(
            "bridge {FIREWALL_TABLE} cut_pairs {{ {} }}",
            pairs.join(", ")
        ))
    }

    /// Limits every process now in host `name` to `percent` of one CPU
    /// (a CPU cgroup), until the returned guard is dropped; processes the
    /// host starts later are not limited.
    pub fn limit_cpu(&self, name: &str, percent: u32) -> Result<CpuLimit> {
        let host = self.find(name)?;
        let pids = ns::processes_in(&host.namespaces)?;
        CpuLimit::new(
            &format!("{}-{name}", self.prefix),
            percent,
            pids.iter().map(|pid| pid.as_raw()),
        )
    }

    /// The firewall element that stands for the switch ports of `host` on
    /// `network`, or on every network if `None`.
    fn ports_element(&self, host: &str, network: Option<u8>) -> Result<String> {
        let ports: Vec<String> = links_of(self.find(host)?, network)?
            .iter()
            .map(|link| format!("\"{}\"", link.port))
            .collect();
        Ok(format!(
            "bridge {FIREWALL_TABLE} cut_ports {{ {} }}",
            ports.join(", ")
        ))
    }

    /// The firewall element that stands for the pair `a`, `b` on `network`,
    /// or on every network if `None`: both directions through each bridge.
    fn pairs_element(&self, a: &str, b: &str, network: Option<u8>) -> Result<String> {
        ensure!(a != b, "cannot cut host {a} off itself");
        let a = links_of(self.find(a)?, network)?;
        let b = links_of(self.find(b)?, network)?;
        let pairs: Vec<String> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| {
                let (a, b) = (&a.port, &b.port);
                format!("\"{a}\" . \"{b}\", \"{b}\" . \"{a}\"")
            })
            .collect();
        Ok(format!(
            "bridge {FIREWALL_TABLE} cut_pairs {{ {} }}",
            pairs.join(", ")
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

/// The links of `host` to network `network`, or to every network if `None`.
fn links_of(host: &Host, network: Option<u8>) -> Result<Vec<&Link>> {
    match network {
        Some(network) => Ok(vec![host.link(network)?]),
        None => Ok(host.links.iter().collect()),
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

/// The nft script that removes `element` whether or not it is there: adding
/// first makes the deletion succeed, and one nft run is one transaction.
fn add_then_delete(element: &str) -> String {
    format!("add element {element}\ndelete element {element}\n")
}

/// The bridge of network `network` in the switch.
fn bridge_name(network: u8) -> String {
    format!("br{network}")
}

/// A host's interface to network `network`.
fn host_iface(network: u8) -> String {
    format!("eth{network}")
}

/// The switch port of host number `index` on network `network`: `p<N>` on
/// network 0, `p<N>n<k>` on network k. Short enough for any host number
/// and network (at most 10 of the 15 characters an interface name has).
fn port_name(network: u8, index: u16) -> String {
    match network {
        0 => format!("p{index}"),
        _ => format!("p{index}n{network}"),
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

/// The `ip` batch that builds the switch: a bridge per network, and a veth
/// pair from each to each host, created here with the host's end moved
/// straight into the host, so that the root namespace never sees them.
fn switch_script(hosts: &[String], networks: u8) -> String {
    let mut script = "link set lo up\n".to_owned();
    // Writing to a String cannot fail.
    for network in 0..networks {
        let bridge = bridge_name(network);
        // Without multicast snooping the bridge floods IPv6 neighbour
        // discovery instead of waiting to learn who listens.
        let _ = write!(
            script,
            "link add {bridge} type bridge mcast_snooping 0\n\
             link set {bridge} up\n"
        );
    }
    for (index, netns) in (1..).zip(hosts) {
        for network in 0..networks {
            let (port, iface) = (port_name(network, index), host_iface(network));
            let bridge = bridge_name(network);
            let _ = write!(
                script,
                "link add {port} type veth peer name {iface} netns {netns}\n\
                 link set {port} master {bridge} up\n"
            );
        }
    }
    script
}

/// The switch's firewall: frames from or to a cut port, and frames between
/// a cut pair of ports, are dropped as a bridge forwards them (flooded
/// frames pass the forward hook once per port, so broadcasts are cut too).
/// The hook sees every bridge of the switch, and a port belongs to one
/// network, so cutting a port cuts its host off that network only.
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

/// Whether every host's interfaces and their switch ports are up.
fn links_up(switch: &str, hosts: &[Host]) -> Result<bool> {
    let up = |netns: &str, dev: &str| -> Result<bool> {
        let link = command::ip(&["-netns", netns, "-oneline", "link", "show", "dev", dev])?;
        Ok(link.contains("state UP"))
    };
    for host in hosts {
        for link in &host.links {
            if !up(switch, &link.port)? || !up(&host.netns, &link.iface)? {
                return Ok(false);
            }
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
    fn every_network_has_its_own_subnets() {
        assert_eq!(lab_ipv4_on(0, 258), lab_ipv4(258));
        assert_eq!(lab_ipv6_on(0, 258), lab_ipv6(258));
        assert_eq!(lab_ipv4_on(1, 258), Ipv4Addr::new(10, 78, 1, 2));
        assert_eq!(
            lab_ipv6_on(1, 0x1ff),
            "fd77:0:0:1::1ff".parse::<Ipv6Addr>().unwrap()
        );
        let last = MAX_NETWORKS - 1;
        assert_eq!(lab_ipv4_on(last, 1), Ipv4Addr::new(10, 255, 0, 1));
        assert_eq!(
            lab_ipv6_on(last, 1),
            "fd77:0:0:b2::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn network_0_keeps_the_names_of_single_network_labs() {
        assert_eq!(host_iface(0), HOST_IFACE);
        assert_eq!(
            (bridge_name(0), port_name(0, 3)),
            ("br0".into(), "p3".into())
        );
        assert_eq!(
            (host_iface(2), port_name(2, 3)),
            ("eth2".into(), "p3n2".into())
        );
        let longest = port_name(MAX_NETWORKS - 1, u16::MAX);
        assert!(
            longest.len() <= 15,
            "port name {longest:?} is longer than an interface name may be"
        );
    }

    #[test]
    fn bad_hosts_and_private_paths_are_refused() {
        let refused = |builder: LabBuilder| builder.validate().unwrap_err().to_string();
        assert!(refused(LabBuilder::new("t")).contains("at least one host"));
        assert!(refused(LabBuilder::new("t").hosts(&["a", "a"])).contains("twice"));
        assert!(refused(LabBuilder::new("t").host("switch")).contains("switch"));
        assert!(refused(LabBuilder::new("t").host("a/b")).contains("host name"));
        assert!(refused(LabBuilder::new("t").host("a").networks(0)).contains("networks"));
        let too_many = LabBuilder::new("t").host("a").networks(MAX_NETWORKS + 1);
        assert!(refused(too_many).contains("networks"));
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
