//! The `halo` command line: one module per subcommand.

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
    /// Every module's state on this node, and its peers.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
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
