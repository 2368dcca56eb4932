//! The invariants a campaign checks after every fault, and the probe's
//! samples read as they arrive.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use halo_tests::cluster::{module_in, peer_up, Cluster};

use crate::world::{wait, World, ACKS, DIR, FARM_MODULE, FARM_NODES, MIRROR_MODULE, MIRROR_NODES};

/// Waits until the cluster is whole again: every farm node UP with both
/// peers, and the mirror with one PRIM and one SECOND. On timeout, says
/// what each node showed last.
pub fn converge(world: &World<'_>, bound: Duration) -> Result<()> {
    let mut last = String::new();
    let result = wait(bound, "the cluster to converge", || {
        last.clear();
        let mut whole = true;
        for node in FARM_NODES {
            match world.farm.status(node) {
                Ok(s) => {
                    let peers = FARM_NODES.iter().filter(|p| **p != node && peer_up(&s, p));
                    let up = module_in(&s, FARM_MODULE, "UP", "ready");
                    if peers.count() != FARM_NODES.len() - 1 || !up {
                        whole = false;
                    }
                    last.push_str(&format!("{node}: {}\n", summary(&s, FARM_MODULE)));
                }
                Err(error) => {
                    whole = false;
                    last.push_str(&format!("{node}: {error:#}\n"));
                }
            }
        }
        let mut states = Vec::new();
        for node in MIRROR_NODES {
            match world.mirror.status(node) {
                Ok(s) => {
                    if module_in(&s, MIRROR_MODULE, "PRIM", "ready") {
                        states.push("PRIM");
                    } else if module_in(&s, MIRROR_MODULE, "SECOND", "ready") {
                        states.push("SECOND");
                    }
                    last.push_str(&format!("{node}: {}\n", summary(&s, MIRROR_MODULE)));
                }
                Err(error) => last.push_str(&format!("{node}: {error:#}\n")),
            }
        }
        states.sort();
        Ok(whole && states == ["PRIM", "SECOND"])
    });
    result.map_err(|error| error.context(format!("last seen:\n{last}")))
}

fn summary(status: &halo::api::NodeStatus, module: &str) -> String {
    let peers: Vec<String> = status
        .peers
        .iter()
        .map(|p| format!("{}{}", p.name, if p.up { "+" } else { "-" }))
        .collect();
    let module = status
        .modules
        .iter()
        .find(|m| m.name == module)
        .map(|m| format!("{} {} ({})", m.state, m.phase, m.last_event))
        .unwrap_or_else(|| "no module".to_owned());
    format!("peers {} module {module}", peers.join(" "))
}

/// Every farm node has the same bucket table, its members are exactly the
/// three (live) nodes and every bucket has one of them as owner.
pub fn farm_buckets(farm: &Cluster<'_>) -> Result<()> {
    let mut tables: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for node in FARM_NODES {
        let output = farm.cli(node, &["buckets", FARM_MODULE, "--json"])?;
        if !output.status.success() {
            bail!(
                "halo buckets on {node}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parse halo buckets --json")?;
        let members: Vec<String> = json["members"]
            .as_array()
            .context("no members")?
            .iter()
            .filter_map(|m| m["node"].as_str().map(str::to_owned))
            .collect();
        let expected: Vec<String> = FARM_NODES.iter().map(|n| n.to_string()).collect();
        let mut sorted = members.clone();
        sorted.sort();
        if sorted != expected {
            bail!("{node}'s table has members {members:?}, expected {expected:?}");
        }
        let owners: Vec<Option<String>> = json["owners"]
            .as_array()
            .context("no owners")?
            .iter()
            .map(|o| o.as_u64().and_then(|i| members.get(i as usize).cloned()))
            .collect();
        if let Some(bucket) = owners.iter().position(Option::is_none) {
            bail!("bucket {bucket} has no owner on {node}");
        }
        tables.insert(node, owners);
    }
    let mut tables = tables.into_iter();
    if let Some((first, reference)) = tables.next() {
        for (node, owners) in tables {
            if let Some(bucket) = (0..owners.len()).find(|&b| owners[b] != reference[b]) {
                bail!(
                    "bucket {bucket} is owned by {:?} on {first} but by {:?} on {node}",
                    reference[bucket],
                    owners[bucket]
                );
            }
        }
    }
    Ok(())
}

/// The digest of every entry below [`DIR`] on a host (type, mode, owner,
/// size and content hash or link target).
const DIGEST: &str = r#"
import os, sys, json, hashlib, stat
root = sys.argv[1]
out = {}
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(dirpath, name)
        st = os.lstat(path)
        entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                entry += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
        elif stat.S_ISLNK(st.st_mode):
            entry += [os.readlink(path)]
        out[os.path.relpath(path, root)] = entry
print(json.dumps(out, sort_keys=True))
"#;

fn digest(world: &World<'_>, node: &str) -> Result<BTreeMap<String, serde_json::Value>> {
    let output = world.lab.host(node).run_timeout(
        Command::new("/usr/bin/python3").args(["-c", DIGEST, DIR]),
        Duration::from_secs(60),
    )?;
    if !output.status.success() {
        bail!(
            "digest of {node}'s tree: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("parse the digest")
}

/// With the applications paused, both mirror trees become identical
/// within `bound`; on timeout, names the first differences.
pub fn mirror_trees(world: &World<'_>, bound: Duration) -> Result<()> {
    let mut last = Vec::new();
    let result = wait(bound, "identical mirror trees", || {
        let (a, b) = (digest(world, "m1")?, digest(world, "m2")?);
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        last = names
            .into_iter()
            .filter(|n| a.get(*n) != b.get(*n))
            .take(5)
            .map(|n| format!("{n}: m1 {:?} m2 {:?}", a.get(n), b.get(n)))
            .collect();
        Ok(last.is_empty())
    });
    result.map_err(|error| {
        let details = explain(world, &last).unwrap_or_else(|e| vec![format!("{e:#}")]);
        error.context(format!(
            "still different: {last:#?}\n{}",
            details.join("\n")
        ))
    })
}

/// Per regular file: times, inode, links and the SHA-256 of each 4 KiB
/// block, for the paths given as arguments.
const BLOCKS: &str = r#"
import os, sys, json, hashlib, stat
root, out = sys.argv[1], {}
for rel in sys.argv[2:]:
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            continue
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        continue
    out[rel] = {
        "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns, "ino": st.st_ino, "nlink": st.st_nlink,
        "blocks": [hashlib.sha256(data[i:i + 4096]).hexdigest()[:12] for i in range(0, len(data), 4096)],
    }
print(json.dumps(out))
"#;

/// What differs inside the files of `differences` (lines of
/// [`mirror_trees`]): the 4 KiB blocks that differ and each node's times,
/// for the report, which must say where to look.
fn explain(world: &World<'_>, differences: &[String]) -> Result<Vec<String>> {
    let paths: Vec<&str> = differences
        .iter()
        .filter_map(|d| d.split_once(": ").map(|(path, _)| path))
        .collect();
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_node = Vec::new();
    for node in MIRROR_NODES {
        let output = world.lab.host(node).run_timeout(
            Command::new("/usr/bin/python3")
                .args(["-c", BLOCKS, DIR])
                .args(&paths),
            Duration::from_secs(60),
        )?;
        let files: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&output.stdout).context("parse the block digest")?;
        by_node.push((node, files));
    }
    let mut lines = Vec::new();
    for path in paths {
        let entries: Vec<_> = by_node
            .iter()
            .filter_map(|(node, files)| files.get(path).map(|f| (*node, f)))
            .collect();
        let [(n1, a), (n2, b)] = entries[..] else {
            continue;
        };
        let blocks = |f: &serde_json::Value| -> Vec<String> {
            f["blocks"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|b| b.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let (ba, bb) = (blocks(a), blocks(b));
        let differ: Vec<usize> = (0..ba.len().max(bb.len()))
            .filter(|i| ba.get(*i) != bb.get(*i))
            .collect();
        let times = |f: &serde_json::Value| {
            format!(
                "mtime {} ctime {} ino {} nlink {}",
                f["mtime"], f["ctime"], f["ino"], f["nlink"]
            )
        };
        lines.push(format!(
            "{path}: 4 KiB blocks differing {differ:?} of {}; {n1}: {}; {n2}: {}",
            ba.len().max(bb.len()),
            times(a),
            times(b)
        ));
    }
    Ok(lines)
}

/// Every record a writer acknowledged (fsync returned) is in its records
/// file on the primary. Returns how many acknowledged records were checked.
pub fn acked_records(world: &World<'_>, primary: &str) -> Result<u64> {
    let mut checked = 0;
    for node in MIRROR_NODES {
        let dir = world.lab.host(node).outside_path(ACKS);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ack"))
            else {
                continue;
            };
            let acked = fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            if acked == 0 {
                continue;
            }
            let output = world
                .lab
                .host(primary)
                .run(Command::new("/bin/cat").arg(format!("{DIR}/records/{name}.log")))?;
            let present: BTreeSet<u64> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let missing: Vec<u64> = (1..=acked).filter(|n| !present.contains(n)).collect();
            if !missing.is_empty() {
                bail!(
                    "writer {name} had {acked} records acknowledged; {} are not on the primary \
                     {primary} (first: {:?})",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            checked += acked;
        }
    }
    Ok(checked)
}

/// The probe's output, read as it grows.
pub struct Probe {
    path: PathBuf,
    offset: u64,
    partial: String,
    /// Samples of both mirror nodes' `ready.txt`.
    pub ready_samples: u64,
    /// Farm requests answered and failed.
    pub farm_ok: u64,
    pub farm_failed: u64,
}

/// What the probe saw since the last read.
#[derive(Default)]
pub struct Seen {
    /// Samples in which both mirror nodes said they serve: (time, sample).
    pub both_serving: Vec<(f64, String)>,
    /// Farm requests in order: (time, answered).
    pub farm: Vec<(f64, bool)>,
}

impl Probe {
    pub fn new(path: PathBuf) -> Self {
        Probe {
            path,
            offset: 0,
            partial: String::new(),
            ready_samples: 0,
            farm_ok: 0,
            farm_failed: 0,
        }
    }

    /// Reads what the probe wrote since the last call.
    pub fn read(&mut self) -> Result<Seen> {
        let mut file =
            fs::File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        self.offset += file.read_to_string(&mut text)? as u64;
        self.partial.push_str(&text);
        let mut seen = Seen::default();
        let complete = match self.partial.rfind('\n') {
            Some(end) => {
                let lines = self.partial[..end].to_owned();
                self.partial.drain(..=end);
                lines
            }
            None => return Ok(seen),
        };
        for line in complete.lines() {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let t = record["t"].as_f64().unwrap_or(0.0);
            if let Some(ready) = record["ready"].as_object() {
                self.ready_samples += 1;
                let serving = ready.values().filter(|v| v.as_u64() == Some(200)).count();
                if serving > 1 {
                    seen.both_serving.push((t, line.to_owned()));
                }
            } else if record.get("farm").is_some() {
                let ok = record["farm"]
                    .as_str()
                    .is_some_and(|body| !body.starts_with("status "));
                if ok {
                    self.farm_ok += 1;
                } else {
                    self.farm_failed += 1;
                }
                seen.farm.push((t, ok));
            }
        }
        Ok(seen)
    }
}
