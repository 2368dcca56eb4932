//! `halo keygen FILE`: a new cluster secret.

use std::path::Path;

use anyhow::Context as _;

use crate::cluster::keys::ClusterSecret;

pub fn run(file: &Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ClusterSecret::generate(file)?;
    println!(
        "wrote a new cluster secret to {} (mode 0600); copy it to every node of the cluster",
        file.display()
    );
    Ok(())
}
