//! Configuration: the TOML schema, its defaults and its validation.
//!
//! One file per node (`/etc/halo/halo.toml`), the same on every node except `node.name` where the
//! hostname is not the node's name. [`load`] reads it, [`parse`] decodes and validates text; both
//! report every problem at once, each with its file, line, column, key and what is expected
//! (`docs/config-reference.md` lists every key and its default, `docs/config-example.toml` is a
//! complete example). Secret and token files are named here and read elsewhere.
//!
//! Loading goes in three steps: TOML syntax (`toml_edit`, which keeps the position of every key),
//! structure (serde over each table, see `decode.rs`), and the rules that tie values together
//! (`validate.rs`). After loading, the defaults that depend on other sections are filled in:
//! a module's `nodes`, a farm's `power` of every node, a mirror's `replication.network`, an
//! interface checker's `name`.

mod de;
mod decode;
mod error;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

use toml_edit::ImDocument;

pub use error::{ConfigError, Problem};
pub use schema::{
    ApiConfig, ArbiterWitness, Checker, CheckerAction, ClusterConfig, ClusterNode, CommandChecker,
    Config, FarmModule, FarmScripts, Filter, HttpChecker, InterfaceChecker, MirrorDir,
    MirrorModule, MirrorScripts, Module, Network, NodeConfig, PingWitness, PortRange,
    ProcessChecker, Proto, Replication, Rule, SyncMode, TcpChecker, VipChecker, Witness, XdpMode,
};

use error::Issue;

/// The configuration file `halo run` reads when given none.
pub const DEFAULT_PATH: &str = "/etc/halo/halo.toml";

/// Reads, decodes and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Decodes and validates configuration `text`; `origin` is the file it came from, for messages.
/// Without `node.name`, the node's name is its hostname up to the first dot.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with_hostname(text, origin, hostname)
}

/// [`parse`], with the hostname coming from `hostname`.
fn parse_with_hostname(
    text: &str,
    origin: &Path,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<Config, ConfigError> {
    let problem = |span: Option<std::ops::Range<usize>>, key: String, message: String| Problem {
        file: origin.to_owned(),
        position: span.map(|span| position(text, span.start)),
        key,
        message,
    };
    let document = match ImDocument::parse(text) {
        Ok(document) => document,
        Err(error) => {
            // The parser's message may run over several lines; a problem is one line.
            let lines: Vec<&str> = error.message().lines().map(str::trim).collect();
            let message = lines.join(": ").replace('`', "\"");
            return Err(ConfigError::Invalid {
                problems: vec![problem(error.span(), String::new(), message)],
            });
        }
    };
    let root = document.as_item();
    let decoded = decode::decode(root);
    let mut config = decoded.config;
    let name_from_hostname = config.node.name.is_empty();
    if name_from_hostname {
        config.node.name = hostname().unwrap_or_default();
    }
    config.fill_defaults();
    let context = validate::Context {
        document: root,
        module_index: &decoded.module_index,
        name_from_hostname,
        cluster_sound: !decoded
            .damaged
            .iter()
            .any(|path| path.starts_with_key("cluster")),
    };
    // Rules about a key that could not be decoded would only repeat its problem.
    let rules = validate::validate(&config, &context)
        .into_iter()
        .filter(|issue| {
            !decoded
                .damaged
                .iter()
                .any(|damaged| damaged.hides(&issue.path))
        });
    let mut problems: Vec<Problem> = decoded
        .issues
        .into_iter()
        .chain(rules)
        .map(
            |Issue {
                 span,
                 path,
                 message,
             }| {
                let span = span.or_else(|| decode::span_of(root, &path));
                problem(span, decode::display_path(root, &path), message)
            },
        )
        .collect();
    if problems.is_empty() {
        return Ok(config);
    }
    problems.sort_by_key(|problem| (problem.position.is_none(), problem.position));
    Err(ConfigError::Invalid { problems })
}

/// Line and column, from 1, of byte `offset` of `text`; the column counts characters.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// The kernel's hostname up to its first dot: a node's default name.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().split('.').next()?.to_owned();
    (!name.is_empty()).then_some(name)
}

/// Parses a duration as the configuration writes it (`"500ms"`, `"2s"`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    de::parse_duration(text)
}
