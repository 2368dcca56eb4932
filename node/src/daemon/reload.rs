//! Live reload (`halo reload`, SIGHUP): what of a re-read configuration file
//! the running daemon can take, and what needs a restart.
//!
//! Two things change live: the cluster secrets (`cluster.secret_file`,
//! `cluster.accept_secret_file`), and this node's `power` in each farm
//! module, which the node then announces to its peers; every node computes
//! the bucket table from the powers the members announce (`farm::members`),
//! and the buckets that move are handed over as at a join. The powers the
//! file gives other nodes are not applied: each node announces its own, and
//! the file's values for the others only count for a peer whose frames
//! carry no power, as they did at the start. Any other change is refused,
//! key by key, and the daemon keeps running on the value it started with.
//! A file that does not load (syntax, schema, rules) changes nothing.
//! Planning is pure: the daemon reads the file and the secrets, and
//! performs the plan.

use std::{collections::BTreeMap, path::Path};

use crate::config::{self, Config, ConfigError, Module};

/// What a reload will change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The configuration to run on from now: the running one, with every
    /// live change of the file.
    pub config: Config,
    /// What changes, one line each.
    pub applied: Vec<String>,
    /// What is refused, one line each, naming the file and the key.
    pub refused: Vec<String>,
}

/// Plans the reload of `text`, read from `file`, into a daemon running
/// `running`, which it started from the file text `started`.
pub fn plan(running: &Config, started: &str, text: &str, file: &Path) -> Result<Plan, ConfigError> {
    let new = config::parse(text, file)?;
    let mut next = running.clone();
    next.cluster
        .secret_file
        .clone_from(&new.cluster.secret_file);
    next.cluster
        .accept_secret_file
        .clone_from(&new.cluster.accept_secret_file);
    let mut applied = vec![format!(
        "cluster secrets re-read: signing {}, accepted {}",
        new.cluster.secret_file.display(),
        new.cluster
            .accept_secret_file
            .as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string())
    )];
    // This node's power in each farm module that both configurations have.
    let me = &running.node.name;
    for module in &mut next.modules {
        let Module::Farm(farm) = module else { continue };
        let Some(Module::Farm(new_farm)) = new.modules.iter().find(|m| m.name() == farm.name)
        else {
            continue;
        };
        let (Some(old), Some(&power)) = (farm.power.get(me).copied(), new_farm.power.get(me))
        else {
            continue;
        };
        if old != power {
            farm.power.insert(me.clone(), power);
            applied.push(format!(
                "module \"{}\": power of {me} {old} -> {power}, announced to the peers",
                farm.name
            ));
        }
    }
    // Whatever else differs between the file and what runs is refused.
    let mut masked = new.clone();
    for module in &mut masked.modules {
        let Module::Farm(farm) = module else { continue };
        if let Some(Module::Farm(running_farm)) =
            next.modules.iter().find(|m| m.name() == farm.name)
        {
            if farm.nodes == running_farm.nodes {
                farm.power.clone_from(&running_farm.power);
            }
        }
    }
    masked
        .cluster
        .secret_file
        .clone_from(&next.cluster.secret_file);
    masked
        .cluster
        .accept_secret_file
        .clone_from(&next.cluster.accept_secret_file);
    let mut refused = Vec::new();
    if masked != next {
        let mut keys = changed_keys(started, text);
        keys.retain(|key| !is_live(key));
        if keys.is_empty() {
            // Same text, other effect: the hostname behind node.name.
            keys.push("node.name (from the hostname)".to_owned());
        }
        refused = keys
            .into_iter()
            .map(|key| {
                format!(
                    "{}: {key} changed: needs a restart (the daemon keeps running on its old value)",
                    file.display()
                )
            })
            .collect();
    }
    Ok(Plan {
        config: next,
        applied,
        refused,
    })
}

/// Whether a changed key (as [`changed_keys`] names it) changes live, or
/// is not applied without being refused (the powers of other nodes).
fn is_live(key: &str) -> bool {
    key == "cluster.secret_file"
        || key == "cluster.accept_secret_file"
        || (key.starts_with("module \"") && key.contains("\".power."))
}

/// The farm modules whose power of this node differs between `running`
/// and `next`, with the new power.
pub fn power_changes(running: &Config, next: &Config) -> Vec<(String, u32)> {
    let me = &running.node.name;
    let power = |config: &Config, name: &str| {
        config.modules.iter().find_map(|m| match m {
            Module::Farm(farm) if farm.name == name => farm.power.get(me).copied(),
            _ => None,
        })
    };
    next.modules
        .iter()
        .filter_map(|m| {
            let new = power(next, m.name())?;
            (power(running, m.name()) != Some(new)).then(|| (m.name().to_owned(), new))
        })
        .collect()
}

/// The keys whose value differs between two configuration texts, as an
/// operator would look for them: `cluster.network[0].pulse`,
/// `module "web".scripts.start_timeout`. Both texts load, so both parse.
fn changed_keys(old: &str, new: &str) -> Vec<String> {
    let flat = |text: &str| {
        let mut out = BTreeMap::new();
        if let Ok(table) = text.parse::<toml::Table>() {
            for (key, value) in &table {
                flatten(key.clone(), value, true, &mut out);
            }
        }
        out
    };
    let (old, new) = (flat(old), flat(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|key| old.get(*key) != new.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(path: String, value: &toml::Value, top: bool, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                flatten(format!("{path}.{key}"), value, false, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|v| v.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                // Modules are known by name: one added before another does
                // not change every key of the ones after it.
                let name = item.get("name").and_then(toml::Value::as_str);
                let at = match name {
                    Some(name) if top && path == "module" => format!("module \"{name}\""),
                    _ => format!("{path}[{i}]"),
                };
                flatten(at, item, false, out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
name = "a"
state_dir = "/var/lib/halo"

[cluster]
name = "lab"
secret_file = "/etc/halo/cluster.key"

[[cluster.network]]
name = "net0"
port = 4800

[[cluster.node]]
name = "a"
addresses = { net0 = "10.0.0.1" }

[[cluster.node]]
name = "b"
addresses = { net0 = "10.0.0.2" }

[[module]]
name = "web"
kind = "farm"
interface = "eth0"
vips = ["10.0.0.100"]
power = { a = 1, b = 1 }
"#;

    fn run(text: &str) -> Result<Plan, ConfigError> {
        let running = config::parse(BASE, Path::new("/etc/halo/halo.toml")).unwrap();
        plan(&running, BASE, text, Path::new("/etc/halo/halo.toml"))
    }

    #[test]
    fn secrets_change_live() {
        let text = BASE.replace(
            "secret_file = \"/etc/halo/cluster.key\"",
            "secret_file = \"/etc/halo/next.key\"\naccept_secret_file = \"/etc/halo/cluster.key\"",
        );
        let plan = run(&text).unwrap();
        assert_eq!(plan.refused, Vec::<String>::new());
        assert_eq!(
            plan.config.cluster.secret_file,
            Path::new("/etc/halo/next.key")
        );
        assert_eq!(
            plan.config.cluster.accept_secret_file.as_deref(),
            Some(Path::new("/etc/halo/cluster.key"))
        );
        assert!(
            plan.applied[0].contains("signing /etc/halo/next.key, accepted /etc/halo/cluster.key"),
            "{:?}",
            plan.applied
        );
    }

    #[test]
    fn other_changes_are_refused_by_file_and_key() {
        let text = BASE
            .replace("port = 4800", "port = 4801\npulse = \"200ms\"")
            .replace(
                "power = { a = 1, b = 1 }",
                "power = { a = 2, b = 1 }\nxdp_mode = \"generic\"",
            );
        let plan = run(&text).unwrap();
        assert_eq!(
            plan.refused,
            vec![
                "/etc/halo/halo.toml: cluster.network[0].port changed: needs a restart (the daemon keeps running on its old value)",
                "/etc/halo/halo.toml: cluster.network[0].pulse changed: needs a restart (the daemon keeps running on its old value)",
                "/etc/halo/halo.toml: module \"web\".xdp_mode changed: needs a restart (the daemon keeps running on its old value)",
            ]
        );
        let mut running = config::parse(BASE, Path::new("/etc/halo/halo.toml")).unwrap();
        assert_eq!(power_changes(&running, &plan.config), [("web".into(), 2)]);
        let Module::Farm(web) = &mut running.modules[0] else {
            panic!("web is a farm")
        };
        web.power.insert("a".into(), 2);
        assert_eq!(plan.config, running, "nothing refused runs");
    }

    #[test]
    fn this_nodes_power_changes_live_and_the_others_are_not_applied() {
        let text = BASE.replace("power = { a = 1, b = 1 }", "power = { a = 0, b = 3 }");
        let plan = run(&text).unwrap();
        assert_eq!(plan.refused, Vec::<String>::new());
        assert_eq!(
            plan.applied[1..],
            ["module \"web\": power of a 1 -> 0, announced to the peers"]
        );
        let running = config::parse(BASE, Path::new("/etc/halo/halo.toml")).unwrap();
        assert_eq!(power_changes(&running, &plan.config), [("web".into(), 0)]);
        let Module::Farm(web) = &plan.config.modules[0] else {
            panic!("web is a farm")
        };
        assert_eq!(
            web.power,
            [("a".to_owned(), 0), ("b".to_owned(), 1)].into(),
            "b announces its own power: the file's 3 is not applied here"
        );
        // Removing the key gives the default back, 1: no change for a.
        let text = BASE.replace("power = { a = 1, b = 1 }", "");
        let plan = run(&text).unwrap();
        assert_eq!(plan.refused, Vec::<String>::new());
        assert_eq!(power_changes(&running, &plan.config), []);
    }

    #[test]
    fn writing_a_default_out_changes_nothing() {
        let text = BASE.replace("port = 4800", "port = 4800\npulse = \"100ms\"");
        assert_eq!(run(&text).unwrap().refused, Vec::<String>::new());
    }

    #[test]
    fn an_invalid_file_is_refused_with_positions_and_plans_nothing() {
        let text = BASE.replace("port = 4800", "port = \"many\"");
        let error = run(&text).unwrap_err().to_string();
        assert!(error.contains("/etc/halo/halo.toml"), "{error}");
        assert!(error.contains("port"), "{error}");
    }
}
