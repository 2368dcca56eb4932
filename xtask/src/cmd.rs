//! Running external commands: shown before they run, failing with their
//! command line.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context as _, Result};

/// A command for `program` whose `PATH` starts with cargo's `bin`
/// directories.
///
/// Children need them even when the caller's shell lacks them: node's build
/// script runs `rustup` and the nightly runs `bpf-linker`, which `setup`
/// installs there.
pub fn new(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", tool_path());
    cmd
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else
/// `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn install_bin_dir() -> PathBuf {
    match env::var_os("CARGO_INSTALL_ROOT") {
        Some(root) => PathBuf::from(root).join("bin"),
        None => cargo_home().join("bin"),
    }
}

/// `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cargo"))
}

/// `$HOME`; root's when unset, since xtask runs as root.
pub fn home_dir() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `PATH` with the install directory, then cargo's own, in front.
fn tool_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let inherited = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![install_bin_dir(), cargo_home().join("bin")];
        for dir in env::split_paths(&inherited) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        // Joining fails only on a directory holding ':'; keep PATH as it was then.
        env::join_paths(dirs).unwrap_or(inherited)
    })
}

/// Prints `$ <command line>`, runs it with the terminal as its stdio, and
/// fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("  $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe quietly and returns its stdout; on failure the error holds
/// its stderr.
pub fn read(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        match stderr.trim() {
            "" => bail!("`{line}` failed ({})", output.status),
            stderr => bail!("`{line}` failed ({}): {stderr}", output.status),
        }
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// The command as a shell line: the variables it sets (but `PATH`, which
/// every command sets), the program and its arguments, quoted where needed.
pub fn display(cmd: &Command) -> String {
    let vars = cmd.get_envs().filter_map(|(key, value)| {
        let value = value?;
        (key != "PATH").then(|| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let words = std::iter::once(quote(cmd.get_program()))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>();
    vars.chain(words).collect::<Vec<_>>().join(" ")
}

/// One word for a shell, in single quotes when it holds anything special.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
