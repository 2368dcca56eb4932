//! The `halo` command line: one module per subcommand.

pub mod action;
pub mod buckets;
pub mod check_config;
pub mod client;
pub mod keygen;
pub mod state;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH as DEFAULT_CONFIG;

/// halo: high availability for on-premise Linux farms.
#[derive(Debug, Parser)]
#[command(name = "halo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon in the foreground (systemd Type=notify).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration; exit 64 and name every problem if invalid.
    CheckConfig {
        /// The configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Write a new cluster secret (mode 0600; refuses to overwrite).
    Keygen {
        /// Where to write it.
        #[arg(default_value = "/etc/halo/cluster.key")]
        file: PathBuf,
    },
    /// This node's state of MODULE.
    State {
        module: String,
        /// Print nothing; the exit code says the state: STOP 0, WAIT 1,
        /// ALONE or UP 2, PRIM 3, SECOND 4.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Run a witness (arbiter) for mirror modules: one time-limited lease per
    /// module, granted to one node at a time.
    Witness {
        /// The UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4810")]
        listen: std::net::SocketAddr,
        /// The secret shared with the clusters it serves (`halo keygen`).
        #[arg(long, default_value = "/etc/halo/cluster.key")]
        secret: PathBuf,
    },
    /// Start MODULE on this node.
    Start(ActionArgs),
    /// Stop MODULE on this node (stop scripts run).
    Stop(ActionArgs),
    /// Stop then start MODULE on this node.
    Restart(ActionArgs),
    /// Force this node primary of a mirror MODULE (first start, recovery).
    Prim(ActionArgs),
    /// Force this node secondary of a mirror MODULE.
    Second(ActionArgs),
    /// Planned switch-over of a mirror MODULE's primary and secondary.
    Swap(ActionArgs),
    /// Switch MODULE's checkers on or off (maintenance).
    Checkers {
        #[command(flatten)]
        action: ActionArgs,
        #[arg(value_enum)]
        switch: Switch,
    },
    /// Switch a mirror MODULE's automatic failover on or off (maintenance).
    Failover {
        #[command(flatten)]
        action: ActionArgs,
        #[arg(value_enum)]
        switch: Switch,
    },
    /// A farm module's bucket table on this node: the owner of every bucket
    /// and the load share per node.
    Buckets {
        module: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Every module's state on this node, and its peers.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// A module action's arguments.
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// The module.
    pub module: String,
    #[command(flatten)]
    pub target: Target,
    /// The file holding the API token (default: the configuration's
    /// `api.token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Which daemon a client command talks to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The configuration file naming the local API address.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The daemon's API address (host:port), overriding the configuration.
    #[arg(long)]
    pub api: Option<String>,
}

impl Target {
    /// The `host:port` of the daemon's API: `--api`, or the configuration's
    /// `api.listen` with a wildcard address replaced by loopback.
    pub fn api_addr(&self) -> anyhow::Result<String> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        let config = crate::config::load(&self.config)?;
        let mut addr = config.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(addr.to_string())
    }
}
