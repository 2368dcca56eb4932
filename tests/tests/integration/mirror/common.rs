//! What the mirror tests share: the module's configuration, a digest of a
//! host's replicated tree, and waiting for states.

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Duration};

use halo_tests::{
    cluster::{module_in, Cluster, Timing},
    lab::{self, Lab},
};

pub const MODULE: &str = "db";
/// The replicated directory (private to each lab host).
pub const DIR: &str = "/var/lib/app";

pub fn vip() -> IpAddr {
    lab::lab_ipv4(210).into()
}

/// A mirror of [`DIR`] between n1 and n2, n1 primary on a first start.
pub fn mirror_toml(extra: &str) -> String {
    format!(
        "[[module]]\nname = \"{MODULE}\"\nkind = \"mirror\"\nnodes = [\"n1\", \"n2\"]\n\
         interface = \"eth0\"\nvip = \"{}\"\ndefaultprim = \"n1\"\n{extra}\n\n\
         [[module.dir]]\npath = \"{DIR}\"\nexclude = [\"**/*.skip\"]\n",
        vip()
    )
}

/// Every entry below [`DIR`] with what must be equal on both nodes:
/// type, mode, owner, size, content hash or link target, and for hard
/// links the sorted set of names of the inode.
const DIGEST: &str = r#"
import os, sys, json, hashlib, stat, collections
root = sys.argv[1]
out, inodes = {}, collections.defaultdict(list)
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        entry = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        if stat.S_ISREG(kind):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entry += [st.st_size, h.hexdigest()]
            if st.st_nlink > 1:
                inodes[st.st_ino].append(rel)
        elif stat.S_ISLNK(kind):
            entry += [os.readlink(path)]
        out[rel] = entry
for names in inodes.values():
    for rel in names:
        out[rel].append(sorted(names))
print(json.dumps(out, sort_keys=True))
"#;

/// The digest of `host`'s replicated tree.
pub fn digest(lab: &Lab, host: &str) -> BTreeMap<String, serde_json::Value> {
    let output = lab
        .host(host)
        .run_timeout(
            Command::new("/usr/bin/python3").args(["-c", DIGEST, DIR]),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(output.status.success(), "digest on {host}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The entries whose digests differ between n1 and n2 (at most 10, for
/// messages); excluded entries (`*.skip`) are not compared.
pub fn differences(lab: &Lab) -> Vec<String> {
    let (a, b) = (digest(lab, "n1"), digest(lab, "n2"));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| !n.ends_with(".skip") && a.get(*n) != b.get(*n))
        .take(10)
        .map(|n| format!("{n}: n1 {:?} n2 {:?}", a.get(n), b.get(n)))
        .collect()
}

/// Waits until both trees are identical.
pub fn wait_identical(lab: &Lab, timeout: Duration) {
    let mut last = Vec::new();
    let waited = lab::wait_until(timeout, "identical trees on n1 and n2", || {
        last = differences(lab);
        Ok(last.is_empty())
    });
    if let Err(error) = waited {
        panic!("{error:#}\nstill different: {last:#?}");
    }
}

/// Starts a 2-node mirror with `extra` module settings; waits for
/// `primary` PRIM and the other SECOND.
pub fn start<'lab>(lab: &'lab Lab, extra: &str, primary: &str) -> Cluster<'lab> {
    let mut cluster = Cluster::configure(
        lab,
        &["n1", "n2"],
        1,
        Timing::default(),
        &mirror_toml(extra),
    )
    .unwrap();
    cluster.start_all().unwrap();
    let secondary = if primary == "n1" { "n2" } else { "n1" };
    wait_module(&cluster, primary, "PRIM", Duration::from_secs(30));
    wait_module(&cluster, secondary, "SECOND", Duration::from_secs(30));
    cluster
}

/// Waits until `node`'s module is `state`, ready; on timeout shows both logs.
pub fn wait_module(cluster: &Cluster<'_>, node: &str, state: &str, timeout: Duration) {
    let what = format!("{node}'s {MODULE} {state} ready");
    if let Err(error) = cluster.wait_status(node, timeout, &what, |s| {
        module_in(s, MODULE, state, "ready")
    }) {
        let logs: Vec<String> = ["n1", "n2"]
            .iter()
            .map(|n| {
                let events = cluster
                    .module_log(n, MODULE)
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| format!("{e:?}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                format!(
                    "--- {n} daemon\n{}\n--- {n} events\n{events}",
                    cluster.log(n).unwrap_or_default()
                )
            })
            .collect();
        panic!("{error:#}\n{}", logs.join("\n"));
    }
}
