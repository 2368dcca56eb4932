//! What a mirror node persists about its data, in its state directory:
//! the data stamp (generation and state, `fsm::mirror::DataStamp`) and, on
//! a primary, the *sync point*: the secondary's generation and the last
//! moment it was known to hold everything written before. A later
//! resynchronisation sends only what changed since then.
//!
//! Both are small JSON files replaced atomically (write, fsync, rename,
//! fsync the directory), so a crash leaves the old or the new content.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::fsm::mirror::DataStamp;

/// The files of one module in the state directory.
pub struct StampFiles {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct SyncPoint {
    generation: u64,
    /// Nanoseconds since the epoch.
    at_ns: u64,
}

/// How far before a sync point the incremental walk looks, for clock
/// granularity and writes in flight when the point was taken.
pub const SYNC_MARGIN: Duration = Duration::from_secs(2);

impl StampFiles {
    pub fn new(state_dir: &Path, module: &str) -> anyhow::Result<Self> {
        let dir = state_dir.join("mirror").join(module);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(StampFiles { dir })
    }

    /// The module's directory in the state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The persisted stamp; `DataStamp::EMPTY` on a fresh node.
    pub fn load_stamp(&self) -> anyhow::Result<DataStamp> {
        let path = self.dir.join("stamp.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged: remove it to start this node's data as empty (it will be resynchronised)", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DataStamp::EMPTY),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn store_stamp(&self, stamp: &DataStamp) -> anyhow::Result<()> {
        self.replace("stamp.json", &serde_json::to_vec(stamp)?)
    }

    /// The secondary's generation and when it was last in sync, if known.
    pub fn load_sync_point(&self) -> Option<(u64, SystemTime)> {
        let bytes = fs::read(self.dir.join("sync-point.json")).ok()?;
        let point: SyncPoint = serde_json::from_slice(&bytes).ok()?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(point.at_ns);
        Some((point.generation, at.checked_sub(SYNC_MARGIN)?))
    }

    /// The sync point exactly as stored: generation, ns since the epoch.
    pub fn load_sync_point_ns(&self) -> Option<(u64, u64)> {
        let bytes = fs::read(self.dir.join("sync-point.json")).ok()?;
        let point: SyncPoint = serde_json::from_slice(&bytes).ok()?;
        Some((point.generation, point.at_ns))
    }

    pub fn store_sync_point(&self, generation: u64, at: SystemTime) -> anyhow::Result<()> {
        let at_ns = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        self.replace(
            "sync-point.json",
            &serde_json::to_vec(&SyncPoint { generation, at_ns })?,
        )
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::mirror::{DataState, Generation};

    #[test]
    fn stamps_and_sync_points_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("halo-stamp-{}", std::process::id()));
        let files = StampFiles::new(&dir, "db").unwrap();
        assert_eq!(files.load_stamp().unwrap(), DataStamp::EMPTY);
        let stamp = DataStamp {
            generation: Generation(7),
            state: DataState::Newest,
        };
        files.store_stamp(&stamp).unwrap();
        assert_eq!(
            StampFiles::new(&dir, "db").unwrap().load_stamp().unwrap(),
            stamp
        );
        assert!(files.load_sync_point().is_none());
        let now = SystemTime::now();
        files.store_sync_point(7, now).unwrap();
        let (generation, since) = files.load_sync_point().unwrap();
        assert_eq!(generation, 7);
        assert!(since < now && since >= now - SYNC_MARGIN - Duration::from_millis(1));
        fs::write(dir.join("mirror/db/stamp.json"), b"{").unwrap();
        let error = format!("{:#}", files.load_stamp().unwrap_err());
        assert!(error.contains("damaged"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
