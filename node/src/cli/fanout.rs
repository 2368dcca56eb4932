//! `-H all | NODE,…`: which daemons a command asks, asking them all at
//! once, and one merged answer with a line for every node that gave none.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::json;

use super::client::{ApiFailure, Daemon};
use crate::config::{ClusterNode, Config};

/// One node's answer to a command sent to several.
#[derive(Debug)]
pub struct Answer<T> {
    pub daemon: Daemon,
    pub result: Result<T, ApiFailure>,
}

/// The nodes `spec` names: `all` (every `[[cluster.node]]`, in the
/// configuration's order) or a comma-separated list of node names.
pub fn select<'c>(config: &'c Config, spec: &str) -> anyhow::Result<Vec<&'c ClusterNode>> {
    let nodes = &config.cluster.nodes;
    if spec.trim() == "all" || spec.trim() == "*" {
        return Ok(nodes.iter().collect());
    }
    let mut chosen = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(node) = nodes.iter().find(|n| n.name == name) else {
            let known: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "-H {spec}: no node {name:?} in the cluster (nodes: {}, or all)",
                known.join(", ")
            );
        };
        if !chosen.iter().any(|c: &&ClusterNode| c.name == name) {
            chosen.push(node);
        }
    }
    if chosen.is_empty() {
        bail!("-H {spec:?}: expected all or a comma-separated list of node names");
    }
    Ok(chosen)
}

/// The API address of `node`: the port of `api.listen`, at the node's
/// address on the first heartbeat network. The local node is
/// reached where it listens, at loopback when it listens on every address.
pub fn node_addr(config: &Config, node: &ClusterNode) -> anyhow::Result<String> {
    let listen = config.api.listen;
    if node.name == config.node.name {
        return Ok(local_addr(listen));
    }
    let ip = config
        .cluster
        .networks
        .iter()
        .find_map(|network| node.addresses.get(&network.name))
        .with_context(|| format!("node {} has no address in the configuration", node.name))?;
    Ok(std::net::SocketAddr::new(*ip, listen.port()).to_string())
}

/// Where a CLI on this node reaches the daemon listening on `listen`.
pub fn local_addr(mut listen: std::net::SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    listen.to_string()
}

/// Runs `ask` against every daemon at once; answers come back in the
/// daemons' order.
pub fn ask<T: Send>(
    daemons: &[Daemon],
    ask: impl Fn(&Daemon) -> Result<T, ApiFailure> + Sync,
) -> Vec<Answer<T>> {
    std::thread::scope(|scope| {
        let ask = &ask;
        let handles: Vec<_> = daemons
            .iter()
            .map(|daemon| scope.spawn(move || ask(daemon)))
            .collect();
        daemons
            .iter()
            .zip(handles)
            .map(|(daemon, handle)| Answer {
                daemon: daemon.clone(),
                result: handle.join().expect("a node's request panicked"),
            })
            .collect()
    })
}

/// The text of a node's failure for a table row: what happened, then why.
pub fn failure_note(failure: &ApiFailure) -> String {
    format!("{}: {failure}", failure.kind().to_uppercase())
}

/// The exit code of a merged answer: success when every node answered,
/// else the code of the worst failure (unreachable before refused before
/// other errors); prints one line on stderr saying which nodes did not.
pub fn outcome<T>(answers: &[Answer<T>]) -> ExitCode {
    let failed: Vec<(&str, &ApiFailure)> = answers
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| (a.daemon.node.as_str(), e)))
        .collect();
    let Some(worst) = failed
        .iter()
        .map(|(_, e)| e.exit_code())
        .max_by_key(|code| {
            // Unreachable (69) weighs most, then refused (77), then the rest.
            match *code {
                super::client::EXIT_UNREACHABLE => 3,
                super::client::EXIT_REFUSED => 2,
                _ => 1,
            }
        })
    else {
        return ExitCode::SUCCESS;
    };
    let named: Vec<String> = failed
        .iter()
        .map(|(node, e)| format!("{node} {}", e.kind()))
        .collect();
    eprintln!(
        "halo: {} of {} nodes failed: {}",
        failed.len(),
        answers.len(),
        named.join(", ")
    );
    ExitCode::from(worst)
}

/// The merged answer for scripts: `{"nodes": [{"node", "address",
/// "answer"} or {"node", "address", "error": {"kind", "message"}}]}`.
pub fn to_json<T: Serialize>(answers: &[Answer<T>]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = answers
        .iter()
        .map(|a| match &a.result {
            Ok(answer) => json!({
                "node": a.daemon.node,
                "address": a.daemon.addr,
                "answer": answer,
            }),
            Err(e) => json!({
                "node": a.daemon.node,
                "address": a.daemon.addr,
                "error": { "kind": e.kind(), "message": e.to_string() },
            }),
        })
        .collect();
    json!({ "nodes": nodes })
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::Token;

    fn config() -> Config {
        let text = r#"
            [node]
            name = "a"
            [cluster]
            secret_file = "/etc/halo/cluster.key"
            [[cluster.network]]
            name = "lan"
            [[cluster.network]]
            name = "backup"
            [[cluster.node]]
            name = "a"
            addresses = { lan = "10.0.0.1", backup = "10.1.0.1" }
            [[cluster.node]]
            name = "b"
            addresses = { lan = "10.0.0.2", backup = "10.1.0.2" }
            [[cluster.node]]
            name = "c"
            addresses = { lan = "10.0.0.3", backup = "10.1.0.3" }
            [api]
            listen = "0.0.0.0:9100"
        "#;
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("halo-fanout-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halo.toml");
        std::fs::write(&path, text).unwrap();
        let config = crate::config::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        config.unwrap_or_else(|e| panic!("the test configuration is invalid: {e}"))
    }

    fn daemon(node: &str) -> Daemon {
        Daemon {
            node: node.into(),
            addr: format!("{node}:9010"),
            token: Token::Missing { why: "test".into() },
        }
    }

    #[test]
    fn all_selects_every_node_in_order_and_names_are_checked() {
        let config = config();
        let names = |spec| -> Vec<String> {
            select(&config, spec)
                .unwrap()
                .iter()
                .map(|n| n.name.clone())
                .collect()
        };
        assert_eq!(names("all"), ["a", "b", "c"]);
        assert_eq!(names("c, a,c"), ["c", "a"]);
        let error = select(&config, "a,z").unwrap_err().to_string();
        assert!(
            error.contains("no node \"z\"") && error.contains("a, b, c"),
            "{error}"
        );
        assert!(select(&config, ",").is_err());
    }

    #[test]
    fn addresses_are_on_the_first_network_and_loopback_for_the_local_node() {
        let config = config();
        let addr = |name| node_addr(&config, select(&config, name).unwrap()[0]).unwrap();
        assert_eq!(addr("a"), "127.0.0.1:9100");
        assert_eq!(addr("b"), "10.0.0.2:9100");
        assert_eq!(addr("c"), "10.0.0.3:9100");
    }

    #[test]
    fn the_merged_answer_keeps_every_node_and_its_failure() {
        let answers = vec![
            Answer {
                daemon: daemon("a"),
                result: Ok("UP"),
            },
            Answer {
                daemon: daemon("c"),
                result: Err(ApiFailure::Unreachable {
                    addr: "c:9010".into(),
                    reason: "connection refused".into(),
                }),
            },
        ];
        let json = to_json(&answers);
        assert_eq!(json["nodes"][0]["answer"], "UP");
        assert_eq!(json["nodes"][1]["node"], "c");
        assert_eq!(json["nodes"][1]["error"]["kind"], "unreachable");
        assert_eq!(outcome(&answers), ExitCode::from(69));
        assert_eq!(outcome(&answers[..1]), ExitCode::SUCCESS);
        let refused = vec![Answer::<&str> {
            daemon: daemon("b"),
            result: Err(ApiFailure::Refused {
                addr: "b:9010".into(),
                reason: "401".into(),
            }),
        }];
        assert_eq!(outcome(&refused), ExitCode::from(77));
    }

    #[test]
    fn asking_runs_on_every_daemon_and_keeps_their_order() {
        let daemons = [daemon("a"), daemon("b"), daemon("c")];
        let answers = ask(&daemons, |d| Ok(d.node.to_uppercase()));
        let got: Vec<_> = answers.iter().map(|a| a.result.clone().unwrap()).collect();
        assert_eq!(got, ["A", "B", "C"]);
    }
}
