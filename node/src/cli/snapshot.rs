//! `halo snapshot FILE`: a support archive (tar.gz) of what a person
//! helping with a node needs: the configuration, the module event logs,
//! the API's answers, versions and eBPF map dumps. The secret files are
//! listed by path, never read into it; every collected text is scrubbed of
//! their content in case a log or a script quoted it.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::{client::Daemon, Target};
use crate::{api::NodeStatus, config::Config};

/// The secrets a node holds, by path: what the archive must not contain.
struct Secrets {
    files: Vec<PathBuf>,
    contents: Vec<(PathBuf, String)>,
}

impl Secrets {
    fn of(config: Option<&Config>, target: &Target) -> Self {
        let mut files: Vec<PathBuf> = config
            .map(|c| {
                let mut files = vec![c.cluster.secret_file.clone(), c.api.token_file.clone()];
                files.extend(c.cluster.accept_secret_file.clone());
                files
            })
            .unwrap_or_default();
        files.extend(target.token_file.clone());
        files.dedup();
        let contents = files
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(f).ok()?;
                let text = text.trim();
                // Too short to search for without mangling ordinary text.
                (text.len() >= 4).then(|| (f.clone(), text.to_owned()))
            })
            .collect();
        Secrets { files, contents }
    }

    /// `text` with every secret replaced by a note naming its file.
    fn scrub(&self, text: &[u8]) -> Vec<u8> {
        let mut text = text.to_vec();
        for (file, secret) in &self.contents {
            let note = format!("<redacted: content of {}>", file.display());
            text = replace(&text, secret.as_bytes(), note.as_bytes());
        }
        text
    }

    /// Each secret file's path, owner, mode and size: enough to see a
    /// wrong permission, nothing of the content.
    fn listing(&self) -> String {
        let mut text = String::new();
        for file in &self.files {
            match std::fs::metadata(file) {
                Ok(m) => text.push_str(&format!(
                    "{}: uid {} gid {} mode {:04o} size {} bytes (content not included)\n",
                    file.display(),
                    m.uid(),
                    m.gid(),
                    m.mode() & 0o7777,
                    m.len()
                )),
                Err(e) => text.push_str(&format!("{}: {e}\n", file.display())),
            }
        }
        text
    }
}

/// `haystack` with every `needle` replaced by `with`.
fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The archive being collected, in memory until written.
struct Collected {
    entries: Vec<(String, Vec<u8>)>,
    problems: Vec<String>,
}

impl Collected {
    fn add(&mut self, name: impl Into<String>, data: impl Into<Vec<u8>>) {
        self.entries.push((name.into(), data.into()));
    }

    /// Adds the answer to `path`, or notes why there is none.
    fn api(&mut self, daemon: &Daemon, path: &str, name: &str) -> Option<String> {
        match daemon.get_text(path) {
            Ok(body) => {
                self.add(name, body.clone());
                Some(body)
            }
            Err(e) => {
                self.problems.push(format!("GET {path}: {e}"));
                None
            }
        }
    }

    /// Adds what `program args` prints, or notes why nothing.
    fn command(&mut self, name: &str, program: &str, args: &[&str]) -> Option<Vec<u8>> {
        let line = format!("{program} {}", args.join(" "));
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {
                self.add(name, out.stdout.clone());
                Some(out.stdout)
            }
            Ok(out) => {
                self.problems.push(format!(
                    "{line}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                self.problems.push(format!("{line}: {e}"));
                None
            }
        }
    }
}

/// Where `program` is on `PATH`, if anywhere.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn run(file: &Path, target: &Target) -> anyhow::Result<()> {
    let config = crate::config::load(&target.config);
    let mut collected = Collected {
        entries: Vec::new(),
        problems: Vec::new(),
    };
    if let Err(e) = &config {
        collected
            .problems
            .push(format!("configuration {}: {e}", target.config.display()));
    }
    let config = config.ok();
    let secrets = Secrets::of(config.as_ref(), target);

    // The configuration holds the secrets' paths, never their content.
    match std::fs::read(&target.config) {
        Ok(text) => collected.add("config/halo.toml", text),
        Err(e) => collected
            .problems
            .push(format!("reading {}: {e}", target.config.display())),
    }
    collected.add("config/secret-files.txt", secrets.listing());

    let mut versions = format!("halo (this CLI) {}\n", env!("CARGO_PKG_VERSION"));
    for (what, path) in [
        ("kernel", "/proc/version"),
        ("os", "/etc/os-release"),
        ("boot", "/proc/cmdline"),
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            versions.push_str(&format!("\n{what} ({path}):\n{text}"));
        }
    }

    let node = match target.daemon() {
        Ok(daemon) => api_answers(&mut collected, &daemon, &mut versions),
        Err(e) => {
            collected.problems.push(format!("the daemon: {e:#}"));
            None
        }
    };
    collected.add("versions.txt", versions);
    if let Some(config) = &config {
        disk_logs(&mut collected, config);
    }
    ebpf_dumps(&mut collected);
    if on_path("journalctl").is_some() {
        collected.command(
            "journal.txt",
            "journalctl",
            &[
                "-u",
                "halo",
                "--no-pager",
                "-n",
                "5000",
                "-o",
                "short-iso-precise",
            ],
        );
    }
    let problems = collected.problems.join("\n");
    collected.add("problems.txt", problems + "\n");

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let node = node
        .or_else(|| config.as_ref().map(|c| c.node.name.clone()))
        .unwrap_or_else(|| "unknown".to_owned());
    let top = format!("halo-snapshot-{node}-{now_ms}");
    write(file, &top, &collected, &secrets)?;
    println!(
        "wrote {} ({} files{})",
        file.display(),
        collected.entries.len(),
        match collected.problems.len() {
            0 => String::new(),
            n => format!(", {n} things could not be collected: see problems.txt"),
        }
    );
    Ok(())
}

/// The API's answers: state, cluster, nodes, modules and everything of
/// each module. Returns the node's name.
fn api_answers(
    collected: &mut Collected,
    daemon: &Daemon,
    versions: &mut String,
) -> Option<String> {
    if let Some(doc) = collected.api(daemon, "/api/v1/openapi.json", "api/openapi.json") {
        let version = serde_json::from_str::<serde_json::Value>(&doc)
            .ok()
            .and_then(|d| d["info"]["version"].as_str().map(str::to_owned));
        if let Some(version) = version {
            versions.insert_str(0, &format!("halo daemon at {} {version}\n", daemon.addr));
        }
    }
    for (path, name) in [
        ("/api/v1/cluster", "api/cluster.json"),
        ("/api/v1/nodes", "api/nodes.json"),
        ("/api/v1/modules", "api/modules.json"),
        ("/metrics", "api/metrics.txt"),
    ] {
        collected.api(daemon, path, name);
    }
    let state = collected.api(daemon, "/api/v1/state", "api/state.json")?;
    let state: NodeStatus = serde_json::from_str(&state).ok()?;
    for module in &state.modules {
        let m = &module.name;
        let base = format!("/api/v1/modules/{m}");
        collected.api(daemon, &base, &format!("api/modules/{m}.json"));
        for part in ["checkers", "progress", "buckets", "counters"] {
            if module.kind != "farm" && matches!(part, "buckets" | "counters") {
                continue;
            }
            collected.api(
                daemon,
                &format!("{base}/{part}"),
                &format!("api/modules/{m}/{part}.json"),
            );
        }
        if let Some(events) = collected.api(
            daemon,
            &format!("{base}/events?limit=1000000"),
            &format!("api/modules/{m}/events.json"),
        ) {
            // The same log, one event a line, as people grep it.
            if let Ok(list) = serde_json::from_str::<serde_json::Value>(&events) {
                let lines: Vec<String> = list["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect();
                collected.add(format!("logs/{m}.jsonl"), lines.join("\n") + "\n");
            }
        }
    }
    Some(state.node)
}

/// The module logs as the daemon keeps them (rotated ones included), for
/// when its API does not answer.
fn disk_logs(collected: &mut Collected, config: &Config) {
    let dir = config.node.state_dir.join("modules");
    let Ok(modules) = std::fs::read_dir(&dir) else {
        collected
            .problems
            .push(format!("no module logs readable in {}", dir.display()));
        return;
    };
    for module in modules.flatten() {
        for log in ["events.jsonl", "events.jsonl.1"] {
            let path = module.path().join(log);
            if let Ok(data) = std::fs::read(&path) {
                let name = module.file_name().to_string_lossy().into_owned();
                collected.add(format!("state_dir/modules/{name}/{log}"), data);
            }
        }
    }
}

/// bpftool's view of halo's programs and maps, when bpftool is installed.
fn ebpf_dumps(collected: &mut Collected) {
    if on_path("bpftool").is_none() {
        collected
            .problems
            .push("bpftool is not installed: no eBPF map dumps".to_owned());
        return;
    }
    collected.command("ebpf/progs.json", "bpftool", &["-j", "prog", "show"]);
    collected.command("ebpf/net.txt", "bpftool", &["net", "show"]);
    let Some(maps) = collected.command("ebpf/maps.json", "bpftool", &["-j", "map", "show"]) else {
        return;
    };
    let maps: Vec<serde_json::Value> = serde_json::from_slice(&maps).unwrap_or_default();
    for map in maps {
        let (Some(id), Some(name)) = (map["id"].as_u64(), map["name"].as_str()) else {
            continue;
        };
        // halo's maps (names cut to 15 characters by the kernel); a ring
        // buffer has nothing to dump.
        let ours = name.starts_with("FARM_") || name.starts_with("CAPTURE_");
        if !ours || map["type"].as_str() == Some("ringbuf") {
            continue;
        }
        collected.command(
            &format!("ebpf/map-{id}-{name}.json"),
            "bpftool",
            &["-j", "map", "dump", "id", &id.to_string()],
        );
    }
}

/// Writes the archive: every entry below `top/`, scrubbed of secrets.
fn write(file: &Path, top: &str, collected: &Collected, secrets: &Secrets) -> anyhow::Result<()> {
    let out = File::create(file).with_context(|| format!("creating {}", file.display()))?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (name, data) in &collected.entries {
        let data = secrets.scrub(data);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{top}/{name}"), data.as_slice())
            .with_context(|| format!("adding {name} to {}", file.display()))?;
    }
    let mut gz = tar
        .into_inner()
        .with_context(|| format!("writing {}", file.display()))?;
    gz.flush()?;
    gz.finish()
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_replaces_every_copy_of_a_secret() {
        let secrets = Secrets {
            files: vec![PathBuf::from("/etc/halo/api.token")],
            contents: vec![(PathBuf::from("/etc/halo/api.token"), "s3cret-token".into())],
        };
        let text = b"token=s3cret-token; again s3cret-token.";
        let scrubbed = String::from_utf8(secrets.scrub(text)).unwrap();
        assert!(!scrubbed.contains("s3cret-token"), "{scrubbed}");
        assert_eq!(
            scrubbed,
            "token=<redacted: content of /etc/halo/api.token>; again \
             <redacted: content of /etc/halo/api.token>."
        );
    }
}
