//! What goes wrong when loading a configuration, and where in the file it is.

use std::fmt;
use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read, and has problems: every one of them, in file order, one per line.
    #[error("{}", display_lines(problems))]
    Invalid {
        /// The problems, sorted by position; never empty.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The exit code of a command that stops on a bad configuration (`EX_USAGE`).
    pub const EXIT_CODE: u8 = 64;

    /// The problems found in the file (none when it could not be read).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems } => problems,
        }
    }
}

fn display_lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One problem of a configuration file.
///
/// Displayed as `FILE:LINE:COLUMN: KEY: MESSAGE`, e.g.
/// `/etc/halo/halo.toml:12:10: module "web".rule[0].filter: expected "source_addr" or
/// "source_port", found "src"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration file.
    pub file: PathBuf,
    /// Line and column (from 1, columns in characters) of the offending text; `None` when the
    /// problem is something missing from the file as a whole.
    pub position: Option<(usize, usize)>,
    /// The dotted key, with modules and nodes named: `module "web".rule[0].port`; empty for a
    /// syntax error.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One step of a key path: a key of a table or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// Where a value is in the TOML tree: `module`, `0`, `rule`, `1`, `port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(pub(super) Vec<Step>);

impl KeyPath {
    /// This path followed by `key`.
    pub(super) fn key(&self, key: &str) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key.to_owned()));
        KeyPath(steps)
    }

    /// This path followed by `index`.
    pub(super) fn index(&self, index: usize) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        KeyPath(steps)
    }

    /// This path followed by `tail`.
    pub(super) fn join(&self, tail: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&tail.0).cloned().collect())
    }

    /// Whether a problem at `issue` may only be the echo of this path being dropped: it is this
    /// path, inside it, or the table or array that holds it.
    pub(super) fn hides(&self, issue: &KeyPath) -> bool {
        issue.0.starts_with(&self.0)
            || self
                .0
                .split_last()
                .is_some_and(|(_, parent)| parent == issue.0.as_slice())
    }

    /// Whether the path starts with the key `key`.
    pub(super) fn starts_with_key(&self, key: &str) -> bool {
        matches!(self.0.first(), Some(Step::Key(k)) if k == key)
    }
}

/// A problem found while decoding or validating, before it is given its line and its display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Issue {
    /// Byte range of the offending text, when the decoder knows it; otherwise the loader looks
    /// `path` up in the document.
    pub(super) span: Option<std::ops::Range<usize>>,
    pub(super) path: KeyPath,
    pub(super) message: String,
}

impl Issue {
    /// A problem with the value at `path`, located by the loader.
    pub(super) fn at(path: KeyPath, message: impl Into<String>) -> Issue {
        Issue {
            span: None,
            path,
            message: message.into(),
        }
    }
}
