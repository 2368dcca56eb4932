//! `halo check-config [FILE]`.

use std::path::Path;

use crate::config;

/// Prints what the file defines, or every problem (the caller exits 64).
pub fn run(file: &Path) -> Result<(), config::ConfigError> {
    let config = config::load(file)?;
    let modules: Vec<String> = config
        .modules
        .iter()
        .map(|m| match m {
            config::Module::Farm(f) => format!("{} (farm)", f.name),
            config::Module::Mirror(m) => format!("{} (mirror)", m.name),
        })
        .collect();
    println!(
        "{}: valid: node {} of cluster {} ({} nodes, {} heartbeat networks); modules: {}",
        file.display(),
        config.node.name,
        config.cluster.name,
        config.cluster.nodes.len(),
        config.cluster.networks.len(),
        if modules.is_empty() {
            "none".to_owned()
        } else {
            modules.join(", ")
        }
    );
    Ok(())
}
