//! The `halo` command line: one module per subcommand.

pub mod action;
pub mod buckets;
pub mod check_config;
pub mod client;
pub mod docs;
pub mod fanout;
pub mod keygen;
pub mod log;
pub mod reload;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod table;
pub mod wait;

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
    /// This node's state of MODULE (or every named node's, with -H).
    State {
        module: String,
        /// Print nothing; the exit code says the state: STOP 0, WAIT 1,
        /// ALONE or UP 2, PRIM 3, SECOND 4.
        #[arg(short, long, conflicts_with_all = ["json", "hosts"])]
        quiet: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Wait until MODULE is in STATE and settled on this node (or on every
    /// node named with -H); exit 1 after --timeout (SafeKit's waitstate).
    Wait {
        module: String,
        /// STOP, WAIT, ALONE, PRIM, SECOND or UP.
        state: String,
        /// How long to wait (`"60s"`, `"500ms"`).
        #[arg(long, default_value = "60s", value_parser = wait::parse_timeout)]
        timeout: std::time::Duration,
        #[command(flatten)]
        targets: Targets,
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
        /// During a secret rotation, a second secret whose requests are
        /// accepted too (and answered under it); while the file does not
        /// exist, nothing more is accepted. SIGHUP re-reads both files.
        #[arg(long)]
        accept_secret: Option<PathBuf>,
        /// The longest lease granted (`"30s"`). A restarted witness refuses
        /// every request for 1.5 × this (a lease granted before the restart
        /// must have run out): keep it just above the modules' `lease`.
        #[arg(long, default_value = "30s", value_parser = parse_max_lease)]
        max_lease: std::time::Duration,
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
    /// and the load share per node (with -H: each node's own share, and
    /// whether all compute the same table).
    Buckets {
        module: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Every module's state, load share and sync progress on this node and
    /// its peers (with -H: on every named node, one row per node and module).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// MODULE's event log: state changes, checker results, script output
    /// (with -H: every named node's, merged by time).
    Log {
        module: String,
        /// Keep printing new events as they come (Ctrl-C ends).
        #[arg(short, long)]
        follow: bool,
        /// Print only the last N events (before following).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Machine-readable output: one JSON object per event and line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Make the daemon re-read its configuration file (as SIGHUP does):
    /// the cluster secrets change live, any other changed key is refused
    /// and named (exit 2) and keeps its old value until a restart; an
    /// invalid file changes nothing (exit 1).
    Reload {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Write a support archive (tar.gz): the configuration (paths of
    /// secrets, never their content), module event logs, the API's answers,
    /// versions and eBPF map dumps.
    Snapshot {
        /// The archive to write.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Print a shell completion script (e.g. `halo completions bash >
    /// /usr/share/bash-completion/completions/halo`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page halo(1), or write it and one page per subcommand
    /// into a directory.
    Man {
        /// Write halo.1 and halo-SUBCOMMAND.1 here instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
    pub targets: Targets,
}

/// Which daemon a client command talks to, and with which token.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The configuration file naming the local API address, the token file
    /// and the cluster's nodes.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The daemon's API address (host:port), overriding the configuration.
    #[arg(long)]
    pub api: Option<String>,
    /// The file holding the API token (default: the configuration's
    /// `api.token_file`); sent with every request when readable.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// A client command's daemons: the local one, or several with `-H`.
#[derive(Debug, clap::Args)]
pub struct Targets {
    #[command(flatten)]
    pub target: Target,
    /// Run on these nodes through their APIs: `all` or NODE,NODE… (names
    /// of `[[cluster.node]]`; the port is `api.listen`'s).
    #[arg(
        short = 'H',
        long = "hosts",
        value_name = "all|NODE,…",
        conflicts_with = "api"
    )]
    pub hosts: Option<String>,
}

impl Target {
    /// The configuration, when it is needed or can be read.
    fn config(&self) -> anyhow::Result<crate::config::Config> {
        Ok(crate::config::load(&self.config)?)
    }

    /// The `host:port` of the daemon's API: `--api`, or the configuration's
    /// `api.listen` with a wildcard address replaced by loopback.
    pub fn api_addr(&self) -> anyhow::Result<String> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        Ok(fanout::local_addr(self.config()?.api.listen))
    }

    /// The token to send: `--token-file`, else the configuration's
    /// `api.token_file`; when it cannot be read, why (the daemon may not
    /// need it: reads are open by default).
    fn token(&self, config: Option<&crate::config::Config>) -> client::Token {
        let file = match (&self.token_file, config) {
            (Some(file), _) => file.clone(),
            (None, Some(config)) => config.api.token_file.clone(),
            (None, None) => {
                return client::Token::Missing {
                    why: format!("no --token-file, and {} names none", self.config.display()),
                }
            }
        };
        match std::fs::read_to_string(&file) {
            Ok(token) if !token.trim().is_empty() => client::Token::Read {
                file: file.display().to_string(),
                token: token.trim().to_owned(),
            },
            Ok(_) => client::Token::Missing {
                why: format!("{} is empty", file.display()),
            },
            Err(e) => client::Token::Missing {
                why: format!("cannot read {}: {e}", file.display()),
            },
        }
    }

    /// The local daemon (or the one `--api` names).
    pub fn daemon(&self) -> anyhow::Result<client::Daemon> {
        // With --api the configuration is optional: a CLI may drive a
        // daemon from a machine that has none.
        let config = match &self.api {
            Some(_) => self.config().ok(),
            None => Some(self.config()?),
        };
        let addr = self.api_addr()?;
        Ok(client::Daemon {
            node: config
                .as_ref()
                .map_or_else(|| addr.clone(), |c| c.node.name.clone()),
            token: self.token(config.as_ref()),
            addr,
        })
    }
}

impl Targets {
    /// Whether the command runs on several nodes (`-H`), with one merged
    /// answer.
    pub fn is_fanout(&self) -> bool {
        self.hosts.is_some()
    }

    /// The daemons the command asks: the local one, or those `-H` names.
    pub fn daemons(&self) -> anyhow::Result<Vec<client::Daemon>> {
        let Some(spec) = &self.hosts else {
            return Ok(vec![self.target.daemon()?]);
        };
        let config = self.target.config()?;
        let token = self.target.token(Some(&config));
        fanout::select(&config, spec)?
            .into_iter()
            .map(|node| {
                Ok(client::Daemon {
                    node: node.name.clone(),
                    addr: fanout::node_addr(&config, node)?,
                    token: token.clone(),
                })
            })
            .collect()
    }
}

fn parse_max_lease(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration such as \"30s\" or \"1500ms\""))
}
