//! The rules a decoded configuration must follow, each broken rule an issue at its key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::IpAddr;
use std::path::{Component, Path};
use std::time::Duration;

use toml_edit::Item;

use super::de::format_duration;
use super::decode;
use super::error::{Issue, KeyPath, Step};
use super::schema::{
    Checker, ClusterConfig, Config, FarmModule, MirrorModule, Module, Rule, Witness,
};

/// What validation is told besides the configuration.
pub(super) struct Context<'a> {
    /// The parsed file, to tell a key left out from a key written with a bad value.
    pub(super) document: &'a Item,
    /// For each of `config.modules`, its index among the file's `[[module]]`s.
    pub(super) module_index: &'a [usize],
    /// `node.name` was not written and came from the hostname.
    pub(super) name_from_hostname: bool,
    /// `[cluster]` decoded without a problem, so its names can be checked against.
    pub(super) cluster_sound: bool,
}

/// Every rule the configuration breaks.
pub(super) fn validate(config: &Config, context: &Context<'_>) -> Vec<Issue> {
    let mut v = Validator {
        config,
        context,
        issues: Vec::new(),
        vips: BTreeMap::new(),
        dirs: Vec::new(),
        replication_ports: BTreeMap::new(),
    };
    v.node();
    v.cluster(&config.cluster);
    v.api();
    v.modules();
    v.issues
}

struct Validator<'a> {
    config: &'a Config,
    context: &'a Context<'a>,
    issues: Vec<Issue>,
    /// The VIPs seen so far, with the module that has each.
    vips: BTreeMap<IpAddr, String>,
    /// The replicated directories seen so far, with the module that has each.
    dirs: Vec<(&'a Path, &'a str)>,
    /// The replication ports seen so far, with the module that uses each.
    replication_ports: BTreeMap<u16, String>,
}

fn root() -> KeyPath {
    KeyPath::default()
}

impl<'a> Validator<'a> {
    fn issue(&mut self, path: KeyPath, message: impl Into<String>) {
        self.issues.push(Issue::at(path, message));
    }

    /// A problem with the key that ends `at` rather than with its value.
    fn key_issue(&mut self, at: KeyPath, message: String) {
        self.issues.push(Issue {
            span: decode::key_span(self.context.document, &at),
            path: at,
            message,
        });
    }

    /// The value at `at` is not what is `expected`: it is `found`, or the key is missing.
    fn expected(&mut self, at: KeyPath, expected: &str, found: impl Display) {
        let message = match (decode::get(self.context.document, &at), at.0.last()) {
            (None, Some(Step::Key(key))) => format!("missing key \"{key}\": expected {expected}"),
            _ => format!("expected {expected}, found {found}"),
        };
        self.issue(at, message);
    }

    fn node(&mut self) {
        let node = &self.config.node;
        let at = root().key("node");
        if self.context.name_from_hostname && node.name.is_empty() {
            self.issue(
                at.key("name"),
                "missing key \"name\": expected this node's name (the hostname cannot be read)",
            );
        } else {
            self.name(at.key("name"), &node.name);
        }
        self.absolute(at.key("state_dir"), &node.state_dir);
        let known: Vec<&str> = self
            .config
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        if self.context.cluster_sound
            && !node.name.is_empty()
            && !known.is_empty()
            && !known.contains(&node.name.as_str())
        {
            let message = if self.context.name_from_hostname {
                format!(
                    "expected the name of a cluster node ({}), found the hostname \"{}\": set node.name",
                    quoted_list(&known),
                    node.name
                )
            } else {
                format!(
                    "expected the name of a cluster node ({}), found \"{}\"",
                    quoted_list(&known),
                    node.name
                )
            };
            self.issue(at.key("name"), message);
        }
    }

    fn cluster(&mut self, cluster: &'a ClusterConfig) {
        let at = root().key("cluster");
        self.name(at.key("name"), &cluster.name);
        self.absolute(at.key("secret_file"), &cluster.secret_file);
        if let Some(accepted) = &cluster.accept_secret_file {
            if self.absolute(at.key("accept_secret_file"), accepted)
                && *accepted == cluster.secret_file
            {
                self.expected(
                    at.key("accept_secret_file"),
                    "another file than secret_file",
                    format!("\"{}\"", accepted.display()),
                );
            }
        }

        if cluster.networks.is_empty() {
            let expected = "at least one heartbeat network ([[cluster.network]])";
            self.expected(at.key("network"), expected, "none");
        }
        let mut network_names = BTreeSet::new();
        for (i, network) in cluster.networks.iter().enumerate() {
            let at = at.key("network").index(i);
            self.name(at.key("name"), &network.name);
            if !network.name.is_empty() && !network_names.insert(network.name.as_str()) {
                self.issue(
                    at.key("name"),
                    format!(
                        "duplicate network name \"{}\": expected a name of its own",
                        network.name
                    ),
                );
            }
            self.nonzero(at.key("pulse"), network.pulse);
            if network.timeout <= network.pulse * 2 {
                self.issue(
                    at.key("timeout"),
                    format!(
                        "expected more than twice the pulse (more than {}), found {}",
                        format_duration(network.pulse * 2),
                        format_duration(network.timeout)
                    ),
                );
            }
        }

        if cluster.nodes.len() < 2 {
            let expected = "at least 2 nodes ([[cluster.node]])";
            self.expected(at.key("node"), expected, cluster.nodes.len());
        }
        let mut node_names = BTreeSet::new();
        let mut addresses: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let at = at.key("node").index(i);
            self.name(at.key("name"), &node.name);
            if !node.name.is_empty() && !node_names.insert(node.name.as_str()) {
                self.issue(
                    at.key("name"),
                    format!(
                        "duplicate node name \"{}\": expected a name of its own",
                        node.name
                    ),
                );
            }
            for network in &cluster.networks {
                if !network.name.is_empty() && !node.addresses.contains_key(&network.name) {
                    self.issue(
                        at.key("addresses"),
                        format!("expected an address on network \"{}\"", network.name),
                    );
                }
            }
            for (network, address) in &node.addresses {
                let at = at.key("addresses").key(network);
                if self.context.cluster_sound && !network_names.contains(network.as_str()) {
                    let names: Vec<&str> = network_names.iter().copied().collect();
                    self.key_issue(
                        at.clone(),
                        format!(
                            "expected the name of a cluster.network ({}), found \"{network}\"",
                            quoted_list(&names)
                        ),
                    );
                }
                if !is_unicast(address) {
                    self.issue(
                        at.clone(),
                        format!("expected a unicast address, found {address}"),
                    );
                } else if let Some(owner) = addresses.insert(*address, &node.name) {
                    self.issue(
                        at.clone(),
                        format!("duplicate address {address}: node \"{owner}\" has it already"),
                    );
                }
                let first = cluster
                    .nodes
                    .iter()
                    .find_map(|n| n.addresses.get(network))
                    .filter(|first| first.is_ipv4() != address.is_ipv4());
                if let Some(first) = first {
                    self.issue(
                        at,
                        format!(
                            "expected an {} address like the other nodes' on network \"{network}\", found {address}",
                            if first.is_ipv4() { "IPv4" } else { "IPv6" }
                        ),
                    );
                }
            }
        }
    }

    fn api(&mut self) {
        let api = &self.config.api;
        let at = root().key("api");
        if api.listen.port() == 0 {
            self.issue(at.key("listen"), "expected a port from 1 to 65535, found 0");
        }
        self.absolute(at.key("token_file"), &api.token_file);
    }

    fn modules(&mut self) {
        let mut names = BTreeSet::new();
        for (module, &i) in self.config.modules.iter().zip(self.context.module_index) {
            let at = root().key("module").index(i);
            self.name(at.key("name"), module.name());
            if !module.name().is_empty() && !names.insert(module.name()) {
                self.issue(
                    at.key("name"),
                    format!(
                        "duplicate module name \"{}\": expected a name of its own",
                        module.name()
                    ),
                );
            }
            self.module_nodes(&at, module);
            match module {
                Module::Farm(farm) => self.farm(&at, farm),
                Module::Mirror(mirror) => self.mirror(&at, mirror),
            }
            self.checkers(&at, module);
        }
    }

    /// The module's nodes are distinct cluster nodes. Left out, they are the cluster's, which
    /// the cluster's own rules check.
    fn module_nodes(&mut self, at: &KeyPath, module: &Module) {
        if decode::get(self.context.document, &at.key("nodes")).is_none() {
            return;
        }
        let cluster: Vec<&str> = self
            .config
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        let mut seen = BTreeSet::new();
        for (k, node) in module.nodes().iter().enumerate() {
            if self.context.cluster_sound && !cluster.contains(&node.as_str()) {
                self.issue(
                    at.key("nodes").index(k),
                    format!(
                        "expected the name of a cluster node ({}), found \"{node}\"",
                        quoted_list(&cluster)
                    ),
                );
            }
            if !seen.insert(node) {
                self.issue(
                    at.key("nodes").index(k),
                    format!("duplicate node \"{node}\": expected each node once"),
                );
            }
        }
    }

    fn farm(&mut self, at: &KeyPath, farm: &'a FarmModule) {
        self.interface(at.key("interface"), &farm.interface);
        if farm.vips.is_empty() {
            self.expected(at.key("vips"), "at least one VIP", "none");
        }
        for (k, vip) in farm.vips.iter().enumerate() {
            self.vip(at.key("vips").index(k), vip, &farm.name);
        }
        if farm.nodes.len() < 2 {
            self.expected(at.key("nodes"), "at least 2 nodes", farm.nodes.len());
        }
        for (node, _) in farm
            .power
            .iter()
            .filter(|(node, _)| !farm.nodes.contains(node))
        {
            self.key_issue(
                at.key("power").key(node),
                format!(
                    "expected a node of the module ({}), found \"{node}\"",
                    quoted_list(&farm.nodes)
                ),
            );
        }
        if !farm.power.is_empty() && farm.power.values().all(|&power| power == 0) {
            self.issue(
                at.key("power"),
                "expected at least one node with a power above 0",
            );
        }
        if farm.rules.len() > halo_common::farm::MAX_RULES as usize {
            self.expected(
                at.key("rule"),
                &format!("at most {} rules", halo_common::farm::MAX_RULES),
                farm.rules.len(),
            );
        }
        for (j, rule) in farm.rules.iter().enumerate() {
            let earlier = farm.rules[..j].iter().position(|other| {
                let every_port = |r: &Rule| r.port.is_none();
                other.proto == rule.proto
                    && (every_port(rule)
                        || every_port(other)
                        || rule
                            .port
                            .zip(other.port)
                            .is_some_and(|(a, b)| a.overlaps(&b)))
            });
            if let Some(earlier) = earlier {
                self.issue(
                    at.key("rule").index(j).key("port"),
                    format!("expected ports apart from rule[{earlier}] of the same protocol, found an overlap"),
                );
            }
        }
        let scripts = &farm.scripts;
        let at_scripts = at.key("scripts");
        for (key, path) in [
            ("prestart", &scripts.prestart),
            ("start_both", &scripts.start_both),
            ("stop_both", &scripts.stop_both),
            ("transition", &scripts.transition),
            ("poststop", &scripts.poststop),
        ] {
            if let Some(path) = path {
                self.absolute(at_scripts.key(key), path);
            }
        }
        self.nonzero(at_scripts.key("start_timeout"), scripts.start_timeout);
        self.nonzero(at_scripts.key("nicestoptimeout"), scripts.nicestoptimeout);
        self.nonzero(at_scripts.key("forcestoptimeout"), scripts.forcestoptimeout);
        self.nonzero(at.key("loop_interval"), farm.loop_interval);
    }

    fn mirror(&mut self, at: &KeyPath, mirror: &'a MirrorModule) {
        if mirror.nodes.len() != 2 {
            let expected = "exactly 2 nodes (a primary and a secondary)";
            self.expected(at.key("nodes"), expected, mirror.nodes.len());
        }
        if let Some(vip) = &mirror.vip {
            self.vip(at.key("vip"), vip, &mirror.name);
            if mirror.interface.is_empty() {
                self.expected(
                    at.key("interface"),
                    "the interface the VIP lives on",
                    "\"\"",
                );
            }
        }
        if !mirror.interface.is_empty() {
            self.interface(at.key("interface"), &mirror.interface);
        }
        if mirror.dirs.is_empty() {
            let expected = "at least one replicated directory ([[module.dir]])";
            self.expected(at.key("dir"), expected, "none");
        }
        for (k, dir) in mirror.dirs.iter().enumerate() {
            let at = at.key("dir").index(k);
            if self.absolute(at.key("path"), &dir.path) {
                if dir
                    .path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir))
                    || dir.path == Path::new("/")
                {
                    self.issue(
                        at.key("path"),
                        format!(
                            "expected a directory below \"/\" without \"..\", found \"{}\"",
                            dir.path.display()
                        ),
                    );
                } else if let Some((other, owner)) = self
                    .dirs
                    .iter()
                    .find(|(other, _)| other.starts_with(&dir.path) || dir.path.starts_with(other))
                {
                    let message = format!(
                        "expected a directory apart from every other replicated one, found \"{}\", which overlaps \"{}\" of module \"{owner}\"",
                        dir.path.display(),
                        other.display(),
                    );
                    self.issue(at.key("path"), message);
                } else {
                    self.dirs.push((&dir.path, &mirror.name));
                }
            }
            for (e, pattern) in dir.exclude.iter().enumerate() {
                if pattern.is_empty() {
                    self.issue(
                        at.key("exclude").index(e),
                        "expected a glob pattern, found \"\"",
                    );
                }
            }
        }
        let replication = &mirror.replication;
        let at_replication = at.key("replication");
        let networks: Vec<&str> = self
            .config
            .cluster
            .networks
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        if self.context.cluster_sound && !networks.contains(&replication.network.as_str()) {
            self.issue(
                at_replication.key("network"),
                format!(
                    "expected the name of a cluster.network ({}), found \"{}\"",
                    quoted_list(&networks),
                    replication.network
                ),
            );
        }
        if let Some(owner) = self
            .replication_ports
            .insert(replication.port, mirror.name.clone())
        {
            self.issue(
                at_replication.key("port"),
                format!(
                    "duplicate replication port {}: module \"{owner}\" uses it already",
                    replication.port
                ),
            );
        } else if replication.port == self.config.api.listen.port() {
            self.issue(
                at_replication.key("port"),
                format!(
                    "expected a port apart from api.listen's, found {}",
                    replication.port
                ),
            );
        }
        if let Some(prim) = &mirror.defaultprim {
            if !mirror.nodes.contains(prim) {
                self.issue(
                    at.key("defaultprim"),
                    format!(
                        "expected a node of the module ({}), found \"{prim}\"",
                        quoted_list(&mirror.nodes)
                    ),
                );
            }
        }
        let at_witness = at.key("witness");
        match &mirror.witness {
            Some(Witness::Ping(ping)) => {
                if ping.addresses.is_empty() {
                    self.expected(
                        at_witness.key("addresses"),
                        "at least one address to ping",
                        "none",
                    );
                }
                for (k, address) in ping.addresses.iter().enumerate() {
                    if !is_unicast(address) {
                        self.issue(
                            at_witness.key("addresses").index(k),
                            format!("expected a unicast address, found {address}"),
                        );
                    }
                }
                self.nonzero(at_witness.key("interval"), ping.interval);
                self.within(
                    at_witness.key("timeout"),
                    ping.timeout,
                    ping.interval,
                    false,
                );
            }
            Some(Witness::Arbiter(arbiter)) => {
                if arbiter.address.port() == 0 || !is_unicast(&arbiter.address.ip()) {
                    let found = format!("\"{}\"", arbiter.address);
                    self.expected(
                        at_witness.key("address"),
                        "the address and port of a `halo witness` like \"10.0.0.9:4810\"",
                        found,
                    );
                }
                self.nonzero(at_witness.key("lease"), arbiter.lease);
            }
            None => {}
        }
        let scripts = &mirror.scripts;
        let at_scripts = at.key("scripts");
        for (key, path) in [
            ("prestart", &scripts.prestart),
            ("start_prim", &scripts.start_prim),
            ("stop_prim", &scripts.stop_prim),
            ("start_second", &scripts.start_second),
            ("stop_second", &scripts.stop_second),
            ("transition", &scripts.transition),
            ("poststop", &scripts.poststop),
        ] {
            if let Some(path) = path {
                self.absolute(at_scripts.key(key), path);
            }
        }
        self.nonzero(at_scripts.key("start_timeout"), scripts.start_timeout);
        self.nonzero(at_scripts.key("nicestoptimeout"), scripts.nicestoptimeout);
        self.nonzero(at_scripts.key("forcestoptimeout"), scripts.forcestoptimeout);
        self.nonzero(at.key("loop_interval"), mirror.loop_interval);
    }

    fn checkers(&mut self, at: &KeyPath, module: &Module) {
        let has_vip = match module {
            Module::Farm(farm) => !farm.vips.is_empty(),
            Module::Mirror(mirror) => mirror.vip.is_some(),
        };
        for (k, checker) in module.checkers().iter().enumerate() {
            let at = at.key("checker").index(k);
            self.nonzero(at.key("interval"), checker.interval());
            match checker {
                Checker::Process(process) => {
                    match (&process.name, &process.regex) {
                        (Some(_), Some(_)) | (None, None) => {
                            self.issue(
                                at.clone(),
                                "expected exactly one of \"name\" and \"regex\"",
                            );
                        }
                        (Some(name), None) if name.is_empty() || name.chars().count() > 15 => {
                            self.issue(
                                at.key("name"),
                                format!(
                                    "expected a process name of 1 to 15 characters (the kernel's comm; use regex for longer), found \"{name}\""
                                ),
                            );
                        }
                        (None, Some(regex)) if regex.is_empty() => {
                            self.issue(
                                at.key("regex"),
                                "expected a regular expression, found \"\"",
                            );
                        }
                        _ => {}
                    }
                    if process.atleast == 0 {
                        self.issue(at.key("atleast"), "expected at least 1, found 0");
                    }
                }
                Checker::Tcp(tcp) => {
                    if tcp.address.port() == 0 {
                        let found = format!("\"{}\"", tcp.address);
                        self.expected(
                            at.key("address"),
                            "an address and port like \"127.0.0.1:80\"",
                            found,
                        );
                    }
                    self.within(at.key("timeout"), tcp.timeout, tcp.interval, true);
                }
                Checker::Http(http) => {
                    let host = http
                        .url
                        .strip_prefix("http://")
                        .or_else(|| http.url.strip_prefix("https://"))
                        .and_then(|rest| rest.split('/').next())
                        .filter(|host| !host.is_empty());
                    if host.is_none() {
                        let found = format!("\"{}\"", http.url);
                        self.expected(
                            at.key("url"),
                            "a URL like \"http://127.0.0.1/health\"",
                            found,
                        );
                    }
                    if !(100..=599).contains(&http.status) {
                        self.issue(
                            at.key("status"),
                            format!(
                                "expected an HTTP status from 100 to 599, found {}",
                                http.status
                            ),
                        );
                    }
                    self.within(at.key("timeout"), http.timeout, http.interval, true);
                }
                Checker::Command(command) => {
                    self.absolute(at.key("path"), &command.path);
                    self.within(at.key("timeout"), command.timeout, command.interval, true);
                }
                Checker::Interface(interface) => {
                    if interface.name.is_empty() {
                        self.issue(
                            at.key("name"),
                            "missing key \"name\": expected an interface (the module has none to default to)",
                        );
                    } else {
                        self.interface(at.key("name"), &interface.name);
                    }
                }
                Checker::Vip(_) => {
                    if !has_vip {
                        self.issue(
                            at.clone(),
                            "expected a module with a VIP: this module has none",
                        );
                    }
                }
            }
        }
    }

    /// A name used in paths, URLs and commands.
    fn name(&mut self, at: KeyPath, name: &str) {
        let valid = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            let expected = "a name of 1 to 63 letters, digits, \"-\" or \"_\", starting with a letter or digit";
            self.expected(at, expected, format!("\"{name}\""));
        }
    }

    /// An absolute path; true if it is one.
    fn absolute(&mut self, at: KeyPath, path: &Path) -> bool {
        if path.is_absolute() {
            return true;
        }
        self.expected(at, "an absolute path", format!("\"{}\"", path.display()));
        false
    }

    /// A Linux interface name.
    fn interface(&mut self, at: KeyPath, name: &str) {
        let valid = (1..=15).contains(&name.len())
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !valid {
            let expected = "a network interface name of 1 to 15 characters";
            self.expected(at, expected, format!("\"{name}\""));
        }
    }

    fn vip(&mut self, at: KeyPath, vip: &IpAddr, module: &str) {
        if !is_unicast(vip) || vip.is_loopback() {
            self.issue(
                at,
                format!("expected a unicast, non-loopback address, found {vip}"),
            );
            return;
        }
        let node = self
            .config
            .cluster
            .nodes
            .iter()
            .find(|node| node.addresses.values().any(|address| address == vip));
        if let Some(node) = node {
            let message = format!(
                "expected an address no node has, found {vip}, node \"{}\"'s",
                node.name
            );
            self.issue(at, message);
        } else if let Some(owner) = self.vips.insert(*vip, module.to_owned()) {
            self.issue(
                at,
                format!("duplicate VIP {vip}: module \"{owner}\" has it already"),
            );
        }
    }

    fn nonzero(&mut self, at: KeyPath, duration: Duration) {
        if duration.is_zero() {
            self.issue(at, "expected a duration above 0, found 0ms");
        }
    }

    /// A timeout above 0 and at most its interval (`at_most`), or at least its interval.
    fn within(&mut self, at: KeyPath, timeout: Duration, interval: Duration, at_most: bool) {
        if timeout.is_zero() {
            self.nonzero(at, timeout);
        } else if at_most && timeout > interval {
            self.issue(
                at,
                format!(
                    "expected at most the interval ({}), found {}",
                    format_duration(interval),
                    format_duration(timeout)
                ),
            );
        } else if !at_most && timeout < interval {
            self.issue(
                at,
                format!(
                    "expected at least the interval ({}), found {}",
                    format_duration(interval),
                    format_duration(timeout)
                ),
            );
        }
    }
}

fn is_unicast(address: &IpAddr) -> bool {
    !address.is_unspecified()
        && !address.is_multicast()
        && address != &IpAddr::from([255, 255, 255, 255])
}

fn quoted_list<S: AsRef<str>>(names: &[S]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", n.as_ref()))
        .collect();
    quoted.join(", ")
}
