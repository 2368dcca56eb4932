//! Persistent counters in the state directory: this daemon's boot epoch and
//! the newest epoch seen from each peer (the replay guard's floors).

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

const EPOCH_FILE: &str = "epoch";
const PEER_EPOCHS_FILE: &str = "peer-epochs.json";

/// Picks this start's boot epoch, larger than every earlier one, and
/// persists it before any heartbeat carries it.
///
/// The epoch is the previous one plus one, or the wall clock in seconds if
/// larger: a node whose state directory was lost still starts above the
/// epochs its peers remember, unless its clock went back in time too.
pub fn next_boot_epoch(state_dir: &Path) -> anyhow::Result<u64> {
    let path = state_dir.join(EPOCH_FILE);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{} does not hold a number", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let epoch = (previous + 1).max(now);
    write_durably(&path, format!("{epoch}\n").as_bytes())?;
    Ok(epoch)
}

/// The newest epoch seen from each peer, as persisted.
pub fn load_peer_epochs(state_dir: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let path = state_dir.join(PEER_EPOCHS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON map of epochs", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Persists the newest epoch seen from each peer.
pub fn store_peer_epochs(state_dir: &Path, epochs: &HashMap<String, u64>) -> anyhow::Result<()> {
    let path = state_dir.join(PEER_EPOCHS_FILE);
    write_durably(&path, &serde_json::to_vec_pretty(epochs)?)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a
/// crash leaves either the old or the new content.
pub fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halo-epoch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_start_gets_a_larger_epoch_even_within_one_second() {
        let dir = scratch("grow");
        let first = next_boot_epoch(&dir).unwrap();
        let second = next_boot_epoch(&dir).unwrap();
        let third = next_boot_epoch(&dir).unwrap();
        assert!(first < second && second < third, "{first} {second} {third}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peer_epochs_round_trip() {
        let dir = scratch("peers");
        assert!(load_peer_epochs(&dir).unwrap().is_empty());
        let epochs = HashMap::from([("beta".to_owned(), 7)]);
        store_peer_epochs(&dir, &epochs).unwrap();
        assert_eq!(load_peer_epochs(&dir).unwrap(), epochs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
