//! The configuration's types, one per TOML table, with their defaults.
//!
//! Every struct is `#[serde(default, deny_unknown_fields)]`: a key left out takes the value of the
//! struct's `Default`, a key the struct does not know is an error. The three tagged choices
//! (`module.kind`, `module.checker.kind`, `module.witness.kind`) are decoded by `decode.rs`, not by
//! serde, so that an error inside them still points at its line; their fields are `serde(skip)`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;

/// The whole configuration of one node: identical on every node except, perhaps, `node.name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: this node.
    pub node: NodeConfig,
    /// `[cluster]`: the nodes, their addresses and the heartbeat networks.
    pub cluster: ClusterConfig,
    /// `[api]`: the HTTP API and web console.
    pub api: ApiConfig,
    /// `[[module]]`: the farm and mirror modules, in file order.
    #[serde(skip)]
    pub modules: Vec<Module>,
}

impl Config {
    /// This node's entry in `cluster.node`.
    pub fn this_node(&self) -> Option<&ClusterNode> {
        self.cluster.nodes.iter().find(|n| n.name == self.node.name)
    }

    /// The module called `name`.
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name() == name)
    }

    /// Gives the keys whose default depends on other sections their value.
    pub(super) fn fill_defaults(&mut self) {
        let cluster_nodes: Vec<String> =
            self.cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let first_network = self.cluster.networks.first().map(|n| n.name.clone());
        for module in &mut self.modules {
            let (nodes, interface, checkers) = match module {
                Module::Farm(farm) => (&mut farm.nodes, &farm.interface, &mut farm.checkers),
                Module::Mirror(mirror) => {
                    if mirror.replication.network.is_empty() {
                        mirror.replication.network = first_network.clone().unwrap_or_default();
                    }
                    (&mut mirror.nodes, &mirror.interface, &mut mirror.checkers)
                }
            };
            if nodes.is_empty() {
                nodes.clone_from(&cluster_nodes);
            }
            for checker in checkers {
                if let Checker::Interface(checker) = checker {
                    if checker.name.is_empty() {
                        checker.name.clone_from(interface);
                    }
                }
            }
            if let Module::Farm(farm) = module {
                for node in &farm.nodes {
                    farm.power.entry(node.clone()).or_insert(1);
                }
            }
        }
    }
}

/// `[node]`: what is particular to the node that reads the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name among `cluster.node`; after loading, never empty.
    pub name: String,
    /// Where the node keeps its state: data generations, journals, module logs.
    pub state_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            // Empty means "the hostname, up to its first dot"; the loader fills it in.
            name: String::new(),
            state_dir: PathBuf::from("/var/lib/halo"),
        }
    }
}

/// `[cluster]`: who is in the cluster and how the nodes hear each other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name, shown in the console and metrics.
    pub name: String,
    /// The file holding the shared secret that authenticates cluster traffic (`halo keygen`).
    pub secret_file: PathBuf,
    /// During a secret rotation, a second secret file whose signatures are accepted too; this
    /// node never signs with it (SECURITY.md, "Rotating the cluster secret").
    pub accept_secret_file: Option<PathBuf>,
    /// `[[cluster.network]]`: the heartbeat networks; a peer is down only when all lose it.
    #[serde(rename = "network")]
    pub networks: Vec<Network>,
    /// `[[cluster.node]]`: every node, with its address on every network.
    #[serde(rename = "node")]
    pub nodes: Vec<ClusterNode>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "halo".to_owned(),
            secret_file: PathBuf::from("/etc/halo/cluster.key"),
            // No rotation under way: only the signing secret is accepted.
            accept_secret_file: None,
            // No default network or node: at least one network and two nodes must be written.
            networks: Vec::new(),
            nodes: Vec::new(),
        }
    }
}

/// `[[cluster.network]]`: one heartbeat network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// The network's name, the key of `cluster.node.addresses`.
    pub name: String,
    /// The UDP port heartbeats use on this network.
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    /// How often a node sends a heartbeat.
    #[serde(deserialize_with = "de::duration")]
    pub pulse: Duration,
    /// How long without a heartbeat before the network counts a peer as lost.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            // Required: a network is referred to by its name.
            name: String::new(),
            // SafeKit's administration port; heartbeats of different networks may share it.
            port: 4800,
            // 100 ms / 500 ms: failover in well under a second (SafeKit's default is 30 s).
            pulse: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
        }
    }
}

/// `[[cluster.node]]`: one node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterNode {
    /// The node's name (by default a node takes its hostname as its name).
    pub name: String,
    /// The node's address on each heartbeat network, by network name.
    #[serde(deserialize_with = "de::ip_map")]
    pub addresses: BTreeMap<String, IpAddr>,
}

/// `[api]`: the HTTP API, the web console and the health checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port the API listens on.
    #[serde(deserialize_with = "de::socket_addr")]
    pub listen: SocketAddr,
    /// The file holding the bearer token that write actions need.
    pub token_file: PathBuf,
    /// Whether reads (`GET`) are allowed without the token.
    pub open_read: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            // SafeKit's web port, on every address: load balancers probe `ready.txt` here.
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9010),
            token_file: PathBuf::from("/etc/halo/api.token"),
            // The console and `halo status` on other nodes read without a token.
            open_read: true,
        }
    }
}

/// `[[module]]`: a farm or a mirror, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Module {
    /// `kind = "farm"`: every node serves, the VIP's traffic is split by bucket.
    Farm(FarmModule),
    /// `kind = "mirror"`: two nodes, one primary, directories replicated.
    Mirror(MirrorModule),
}

impl Module {
    /// The module's name, used in URLs, paths and commands.
    pub fn name(&self) -> &str {
        match self {
            Module::Farm(m) => &m.name,
            Module::Mirror(m) => &m.name,
        }
    }

    /// The nodes the module runs on.
    pub fn nodes(&self) -> &[String] {
        match self {
            Module::Farm(m) => &m.nodes,
            Module::Mirror(m) => &m.nodes,
        }
    }

    /// The module's checkers.
    pub fn checkers(&self) -> &[Checker] {
        match self {
            Module::Farm(m) => &m.checkers,
            Module::Mirror(m) => &m.checkers,
        }
    }
}

/// A `kind = "farm"` module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FarmModule {
    /// The module's name.
    pub name: String,
    /// The network interface that carries the VIPs and runs the XDP filter.
    pub interface: String,
    /// The virtual addresses every node of the farm shares.
    #[serde(deserialize_with = "de::ips")]
    pub vips: Vec<IpAddr>,
    /// `[[module.rule]]`: how traffic to the VIPs is spread; traffic to the VIPs that no rule
    /// names is dropped (ICMP follows the client's address).
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
    /// Each node's weight; after loading, every node of the module is present.
    pub power: BTreeMap<String, u32>,
    /// The nodes the module runs on; after loading, never empty.
    pub nodes: Vec<String>,
    /// `[module.scripts]`: the application's scripts.
    pub scripts: FarmScripts,
    /// `[[module.checker]]`: the application's checkers.
    #[serde(skip)]
    pub checkers: Vec<Checker>,
    /// How many restarts a checker may cause within `loop_interval` before the module stops.
    pub maxloop: u32,
    /// The window `maxloop` counts restarts in.
    #[serde(deserialize_with = "de::duration")]
    pub loop_interval: Duration,
    /// How the XDP filter attaches to `interface`.
    pub xdp_mode: XdpMode,
    /// Idle time after which a UDP flow no longer keeps its node in a handover.
    #[serde(deserialize_with = "de::duration")]
    pub udp_idle: Duration,
    /// How long a node that leaves the farm gracefully (`halo stop`, `halo
    /// restart`) keeps serving its established connections before it stops
    /// the application anyway.
    #[serde(deserialize_with = "de::duration")]
    pub drain_timeout: Duration,
}

/// How the farm's XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver: the fastest; the NIC driver must support XDP (and,
    /// for veth, the peer must accept XDP_TX frames).
    #[default]
    Native,
    /// In the kernel's generic path: works on any interface, slower.
    Generic,
}

impl Default for FarmModule {
    fn default() -> Self {
        Self {
            // Required.
            name: String::new(),
            interface: String::new(),
            vips: Vec::new(),
            // No rule: nothing but ICMP reaches the application (the daemon
            // warns at start).
            rules: Vec::new(),
            // A node left out has power 1.
            power: BTreeMap::new(),
            // Empty means every node of the cluster.
            nodes: Vec::new(),
            scripts: FarmScripts::default(),
            checkers: Vec::new(),
            // SafeKit's restart policy: the 4th failure within 24 h stops the module.
            maxloop: 3,
            loop_interval: Duration::from_secs(24 * 3600),
            xdp_mode: XdpMode::Native,
            // Longer than most request/response exchanges, short enough that
            // a handover completes within a minute.
            udp_idle: Duration::from_secs(30),
            // Long enough for most requests in flight to end; a stop never
            // hangs on a connection that does not.
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// `[[module.rule]]`: how a farm spreads one protocol (and port range) over its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// The transport protocol.
    pub proto: Proto,
    /// The destination port or port range; `None` (the default) is every port.
    #[serde(deserialize_with = "de::opt_port_range")]
    pub port: Option<PortRange>,
    /// What the bucket hash covers.
    pub filter: Filter,
}

/// A transport protocol of a farm rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// What a farm hashes a client's packets on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// The client's address: a client always lands on the same node (the default).
    #[default]
    SourceAddr,
    /// The client's address and source port: one client's connections spread over the nodes.
    SourcePort,
}

/// An inclusive range of ports, written `80` or `"8000-8100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (equal to `first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// Whether the two ranges have a port in common.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `[module.scripts]` of a farm: paths of executables, all optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FarmScripts {
    /// Run before the module starts.
    pub prestart: Option<PathBuf>,
    /// Start the application (on every node).
    pub start_both: Option<PathBuf>,
    /// Stop the application (graceful, then with `force`).
    pub stop_both: Option<PathBuf>,
    /// Run on every state transition.
    pub transition: Option<PathBuf>,
    /// Run after the module stops.
    pub poststop: Option<PathBuf>,
    /// How long a start script may run before it counts as failed.
    #[serde(deserialize_with = "de::duration")]
    pub start_timeout: Duration,
    /// How long the graceful stop may run before the `force` stop.
    #[serde(deserialize_with = "de::duration")]
    pub nicestoptimeout: Duration,
    /// How long the `force` stop may run before its process group is killed.
    #[serde(deserialize_with = "de::duration")]
    pub forcestoptimeout: Duration,
}

impl Default for FarmScripts {
    fn default() -> Self {
        let timeouts = ScriptTimeouts::default();
        Self {
            prestart: None,
            start_both: None,
            stop_both: None,
            transition: None,
            poststop: None,
            start_timeout: timeouts.start,
            nicestoptimeout: timeouts.nice_stop,
            forcestoptimeout: timeouts.force_stop,
        }
    }
}

/// `[module.scripts]` of a mirror: paths of executables, all optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorScripts {
    /// Run before the module starts.
    pub prestart: Option<PathBuf>,
    /// Start the application on the primary.
    pub start_prim: Option<PathBuf>,
    /// Stop the application on the primary (graceful, then with `force`).
    pub stop_prim: Option<PathBuf>,
    /// Run when the node becomes secondary.
    pub start_second: Option<PathBuf>,
    /// Run when the node stops being secondary.
    pub stop_second: Option<PathBuf>,
    /// Run on every state transition.
    pub transition: Option<PathBuf>,
    /// Run after the module stops.
    pub poststop: Option<PathBuf>,
    /// How long a start script may run before it counts as failed.
    #[serde(deserialize_with = "de::duration")]
    pub start_timeout: Duration,
    /// How long the graceful stop may run before the `force` stop.
    #[serde(deserialize_with = "de::duration")]
    pub nicestoptimeout: Duration,
    /// How long the `force` stop may run before its process group is killed.
    #[serde(deserialize_with = "de::duration")]
    pub forcestoptimeout: Duration,
}

impl Default for MirrorScripts {
    fn default() -> Self {
        let timeouts = ScriptTimeouts::default();
        Self {
            prestart: None,
            start_prim: None,
            stop_prim: None,
            start_second: None,
            stop_second: None,
            transition: None,
            poststop: None,
            start_timeout: timeouts.start,
            nicestoptimeout: timeouts.nice_stop,
            forcestoptimeout: timeouts.force_stop,
        }
    }
}

/// The script timeouts both kinds of module share by default.
struct ScriptTimeouts {
    start: Duration,
    nice_stop: Duration,
    force_stop: Duration,
}

impl Default for ScriptTimeouts {
    fn default() -> Self {
        Self {
            // Generous: a database may replay its log on start, and a start that is cut short
            // is a failed start.
            start: Duration::from_secs(300),
            // SafeKit waits 300 s for each stop. A stop blocks a switch-over, so halo gives the
            // graceful stop 30 s and the forced one 30 s more.
            nice_stop: Duration::from_secs(30),
            force_stop: Duration::from_secs(30),
        }
    }
}

/// A `kind = "mirror"` module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorModule {
    /// The module's name.
    pub name: String,
    /// The two nodes; after loading, never empty.
    pub nodes: Vec<String>,
    /// The interface the VIP lives on; required with a VIP.
    pub interface: String,
    /// The virtual address that follows the primary, if any.
    #[serde(deserialize_with = "de::opt_ip")]
    pub vip: Option<IpAddr>,
    /// `[[module.dir]]`: the replicated directories.
    #[serde(rename = "dir")]
    pub dirs: Vec<MirrorDir>,
    /// When a durable write of the application returns.
    pub sync: SyncMode,
    /// `[module.replication]`: the replication stream.
    pub replication: Replication,
    /// The node that becomes primary when both start with equally fresh data.
    pub defaultprim: Option<String>,
    /// Whether the secondary takes over when the primary fails.
    pub failover: bool,
    /// `[module.witness]`: who decides when the two nodes lose each other.
    #[serde(skip)]
    pub witness: Option<Witness>,
    /// `[module.scripts]`: the application's scripts.
    pub scripts: MirrorScripts,
    /// `[[module.checker]]`: the application's checkers.
    #[serde(skip)]
    pub checkers: Vec<Checker>,
    /// How many restarts a checker may cause within `loop_interval` before the module stops.
    pub maxloop: u32,
    /// The window `maxloop` counts restarts in.
    #[serde(deserialize_with = "de::duration")]
    pub loop_interval: Duration,
}

impl Default for MirrorModule {
    fn default() -> Self {
        Self {
            // Required.
            name: String::new(),
            // Empty means every node of the cluster, which must then be exactly two.
            nodes: Vec::new(),
            interface: String::new(),
            vip: None,
            // Required: at least one directory.
            dirs: Vec::new(),
            sync: SyncMode::Fsync,
            replication: Replication::default(),
            // None: the node with the newer data, or the first to start, is primary.
            defaultprim: None,
            failover: true,
            // No witness: a node that loses its peer goes ALONE (split brain is possible).
            witness: None,
            scripts: MirrorScripts::default(),
            checkers: Vec::new(),
            maxloop: 3,
            loop_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[[module.dir]]`: one replicated directory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorDir {
    /// The directory (absolute).
    pub path: PathBuf,
    /// Glob patterns, relative to `path`, of what is not replicated.
    pub exclude: Vec<String>,
}

/// When a mirror acknowledges the application's durable writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// An fsync returns once the secondary has every range written before it (the default).
    #[default]
    Fsync,
    /// Nothing waits for the secondary; the lag is measured.
    Async,
}

/// `[module.replication]`: the stream from primary to secondary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// The heartbeat network whose addresses carry the stream; after loading, never empty.
    pub network: String,
    /// The TCP port the secondary listens on.
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    /// Whether the stream is encrypted; turn off only on a dedicated link.
    pub encrypt: bool,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            // Empty means the first `cluster.network`.
            network: String::new(),
            // SafeKit's first replication port.
            port: 5600,
            encrypt: true,
        }
    }
}

/// `[module.witness]`: the tie-breaker of a mirror, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witness {
    /// `kind = "ping"`: the node that can ping a witness address may go ALONE.
    Ping(PingWitness),
    /// `kind = "arbiter"`: a `halo witness` process grants one lease at a time.
    Arbiter(ArbiterWitness),
}

/// A `kind = "ping"` witness.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PingWitness {
    /// The addresses to ping; reaching any one wins.
    #[serde(deserialize_with = "de::ips")]
    pub addresses: Vec<IpAddr>,
    /// Time between echo requests while deciding.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// How long the node tries before it gives up and waits.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
}

impl Default for PingWitness {
    fn default() -> Self {
        Self {
            // Required: at least one address.
            addresses: Vec::new(),
            // Five tries within the second the node waits before it gives up.
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
        }
    }
}

/// A `kind = "arbiter"` witness.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArbiterWitness {
    /// Where `halo witness` listens.
    #[serde(deserialize_with = "de::socket_addr")]
    pub address: SocketAddr,
    /// How long a lease lasts: a node may take over only once its peer's lease has run out.
    #[serde(deserialize_with = "de::duration")]
    pub lease: Duration,
}

impl Default for ArbiterWitness {
    fn default() -> Self {
        Self {
            // Required: the unspecified address is refused.
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            // Failover waits for max(heartbeat timeout, lease): 1 s keeps it near a second.
            lease: Duration::from_secs(1),
        }
    }
}

/// `[[module.checker]]`: a check of the application, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checker {
    /// `kind = "process"`: enough processes with this name (or matching this regex) run.
    Process(ProcessChecker),
    /// `kind = "tcp"`: a TCP connection to an address succeeds.
    Tcp(TcpChecker),
    /// `kind = "http"`: a GET answers with the expected status.
    Http(HttpChecker),
    /// `kind = "command"`: a command exits with status 0.
    Command(CommandChecker),
    /// `kind = "interface"`: a network interface is up.
    Interface(InterfaceChecker),
    /// `kind = "vip"`: the module's VIP is configured and not claimed by another host.
    Vip(VipChecker),
}

impl Checker {
    /// Time between two checks.
    pub fn interval(&self) -> Duration {
        match self {
            Checker::Process(c) => c.interval,
            Checker::Tcp(c) => c.interval,
            Checker::Http(c) => c.interval,
            Checker::Command(c) => c.interval,
            Checker::Interface(c) => c.interval,
            Checker::Vip(c) => c.interval,
        }
    }

    /// What the module does when the check fails.
    pub fn action(&self) -> CheckerAction {
        match self {
            Checker::Process(c) => c.action,
            Checker::Tcp(c) => c.action,
            Checker::Http(c) => c.action,
            Checker::Command(c) => c.action,
            Checker::Interface(c) => c.action,
            Checker::Vip(c) => c.action,
        }
    }
}

/// What a module does when one of its checkers fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckerAction {
    /// Restart the application on this node (stop scripts, then start scripts), counted by
    /// `maxloop`.
    Restart,
    /// Stop the module on this node and start it again (a mirror primary fails over).
    Stopstart,
    /// Stop the module on this node until an administrator starts it.
    Stop,
    /// Hold the module in WAIT until the check succeeds again.
    Wait,
}

/// A `kind = "process"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessChecker {
    /// The process name (`comm`); exactly one of `name` and `regex` is set.
    pub name: Option<String>,
    /// A regular expression matched against the whole command line.
    pub regex: Option<String>,
    /// The fewest matching processes that count as healthy.
    pub atleast: u32,
    /// Time between two checks.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for ProcessChecker {
    fn default() -> Self {
        Self {
            name: None,
            regex: None,
            atleast: 1,
            // Reading /proc is cheap: check often.
            interval: Duration::from_secs(2),
            action: CheckerAction::Restart,
        }
    }
}

/// A `kind = "tcp"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpChecker {
    /// Address and port to connect to; required.
    #[serde(deserialize_with = "de::socket_addr")]
    pub address: SocketAddr,
    /// Time between two checks.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// How long a connection attempt may take.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for TcpChecker {
    fn default() -> Self {
        Self {
            // Port 0 marks "not written" and is refused.
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            // SafeKit's tcp checker: every 10 s, 5 s to answer.
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            action: CheckerAction::Restart,
        }
    }
}

/// A `kind = "http"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpChecker {
    /// The `http://` (or `https://`) URL to GET; required.
    pub url: String,
    /// The status that counts as healthy.
    pub status: u16,
    /// Time between two checks.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// How long the whole request may take.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for HttpChecker {
    fn default() -> Self {
        Self {
            url: String::new(),
            status: 200,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            action: CheckerAction::Restart,
        }
    }
}

/// A `kind = "command"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandChecker {
    /// The executable (absolute); required.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Time between two checks.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// How long the command may run; beyond, it is killed and the check fails.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for CommandChecker {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            args: Vec::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            action: CheckerAction::Restart,
        }
    }
}

/// A `kind = "interface"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterfaceChecker {
    /// The interface; after loading, never empty.
    pub name: String,
    /// Time between two checks (link changes also arrive as netlink events).
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for InterfaceChecker {
    fn default() -> Self {
        Self {
            // Empty means the module's `interface`.
            name: String::new(),
            interval: Duration::from_secs(1),
            // A node without its link cannot serve; it resumes by itself when the link returns.
            action: CheckerAction::Wait,
        }
    }
}

/// A `kind = "vip"` checker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VipChecker {
    /// Time between two checks.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// What the module does when the check fails.
    pub action: CheckerAction,
}

impl Default for VipChecker {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            action: CheckerAction::Wait,
        }
    }
}
