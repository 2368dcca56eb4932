//! A module's event log, persisted in the state directory as JSON lines
//! (`<state_dir>/modules/<module>/events.jsonl`): state changes, checker
//! results, script output. Rotated once it passes a size bound so that a
//! chatty script cannot fill the disk.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Above this size the log is renamed to `events.jsonl.1` and restarted.
const ROTATE_BYTES: u64 = 8 << 20;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What wrote it: `fsm`, `script:start_both:stdout`, `checker:tcp:…`.
    pub source: String,
    pub text: String,
}

/// The append-only log of one module.
pub struct ModuleLog {
    path: PathBuf,
    file: File,
    written: u64,
}

impl ModuleLog {
    /// Opens (creating) the log of `module` under `state_dir`.
    pub fn open(state_dir: &Path, module: &str) -> anyhow::Result<Self> {
        let dir = state_dir.join("modules").join(module);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("events.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ModuleLog {
            path,
            file,
            written,
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. A failing disk is reported to the caller, which
    /// logs it and goes on: the module keeps running without its log.
    pub fn append(&mut self, source: &str, text: &str) -> anyhow::Result<LogEntry> {
        let entry = LogEntry {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            source: source.to_owned(),
            text: text.to_owned(),
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        if self.written + line.len() as u64 > ROTATE_BYTES {
            self.rotate()?;
        }
        self.file
            .write_all(&line)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.written += line.len() as u64;
        Ok(entry)
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let old = self.path.with_extension("jsonl.1");
        std::fs::rename(&self.path, &old)
            .with_context(|| format!("rotating {}", self.path.display()))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        self.written = 0;
        Ok(())
    }
}

/// Reads every entry of a module's log, oldest first (rotated part too).
pub fn read(state_dir: &Path, module: &str) -> anyhow::Result<Vec<LogEntry>> {
    let dir = state_dir.join("modules").join(module);
    let mut entries = Vec::new();
    for name in ["events.jsonl.1", "events.jsonl"] {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // A line cut by a crash is skipped, not fatal.
        entries.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_and_read_back_in_order_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("halo-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = ModuleLog::open(&dir, "web").unwrap();
        log.append("fsm", "STOP -> WAIT (transient)").unwrap();
        // Force a rotation by pretending the file is full.
        log.written = ROTATE_BYTES;
        log.append("fsm", "WAIT -> UP (ready)").unwrap();
        let texts: Vec<String> = read(&dir, "web")
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["STOP -> WAIT (transient)", "WAIT -> UP (ready)"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
