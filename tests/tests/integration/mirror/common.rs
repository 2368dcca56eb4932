//! What the mirror tests share: the module's configuration, a digest of a
//! host's replicated tree, waiting for states, a file churn and durable
//! acknowledged records.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime},
};

use halo_tests::{
    cluster::{module_in, Cluster, Timing, STATE_DIR},
    lab::{self, Lab, LabProcess, Signal},
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

/// `name` in the module's state directory on `host`, seen from outside.
pub fn state_file(lab: &Lab, host: &str, name: &str) -> PathBuf {
    lab.host(host)
        .outside_path(format!("{STATE_DIR}/mirror/{MODULE}/{name}"))
}

/// Waits until the primary `host`'s journal no longer names the files
/// written up to `written`: it starts at a sync point taken more than the
/// journal's last-flush window (2 s, docs/mirror-durability.md) after
/// them, plus half a second for the coarse clock of ctimes. Until then a
/// restart of that node would mark those files for a checksum compare.
/// (The journal, not `sync-point.json`: the daemon stores the sync point
/// first and rewrites the journal from it right after.)
pub fn wait_journal_settled(lab: &Lab, host: &str, written: SystemTime) {
    let path = state_file(lab, host, "journal.log");
    let after_ns = (written + Duration::from_millis(2500))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    lab::wait_until(
        Duration::from_secs(30),
        &format!("{host}'s journal to start at a later sync point"),
        || {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let (records, _) = halo::mirror::journal::decode(&bytes);
            Ok(matches!(
                records.first(),
                Some(halo::mirror::journal::Record::Base { at_ns, .. }) if *at_ns > after_ns
            ))
        },
    )
    .unwrap();
}

/// The newest ctime under `host`'s [`DIR`].
fn newest_ctime(lab: &Lab, host: &str) -> SystemTime {
    use std::os::unix::fs::MetadataExt as _;
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut dirs = vec![lab.host(host).outside_path(DIR)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = entry.metadata().unwrap();
            let ctime =
                SystemTime::UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
            newest = newest.max(ctime);
            if m.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    newest
}

/// Waits until every file under `host`'s [`DIR`] was last changed more
/// than the journal's last-flush window (2 s) ago, plus half a second: a
/// secondary that takes over later does not mark its copy's files for a
/// checksum compare (the last-flush rule counts them as possibly written
/// while nothing journaled). This is time passing, not an event: the
/// wait ends at a deadline computed from the files' ctimes.
pub fn wait_copy_settled(lab: &Lab, host: &str) {
    let until = newest_ctime(lab, host) + Duration::from_millis(2500);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// The length of `host`'s dirty-range journal file (0 if none).
pub fn journal_len(lab: &Lab, host: &str) -> u64 {
    std::fs::metadata(state_file(lab, host, "journal.log")).map_or(0, |m| m.len())
}

/// Runs `script` on `host`, then waits until its journal has recorded
/// something more: the next change falls in a later tracker batch.
pub fn change_journaled(lab: &Lab, host: &str, script: &str) {
    let before = journal_len(lab, host);
    lab.host(host).sh(script).unwrap();
    lab::wait_until(
        Duration::from_secs(10),
        &format!("{host}'s journal to record `{script}`"),
        || Ok(journal_len(lab, host) > before),
    )
    .unwrap();
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

/// `halo swap` on `node`, again while it answers that the secondary is not
/// in sync: right after the secondary's resynchronisation the primary may
/// not have its report yet (one heartbeat). Any other answer than success
/// fails the test.
pub fn swap(cluster: &Cluster<'_>, node: &str) {
    let mut last = None;
    let waited = halo_tests::lab::wait_until(
        Duration::from_secs(10),
        &format!("{node} to accept halo swap"),
        || {
            let out = cluster.cli(node, &["swap", MODULE])?;
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            let done = out.status.success();
            anyhow::ensure!(
                done || said.contains("the secondary is not in sync"),
                "halo swap on {node}: {out:?}"
            );
            last = Some(out);
            Ok(done)
        },
    );
    if let Err(error) = waited {
        panic!("{error:#}; last answer: {last:?}");
    }
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

/// A seeded file churn under `DIR/<dir>` until SIGTERM (exit 0) or 120 s
/// (exit 1). Arguments: seed, dir, the operations to draw from (one letter
/// each, repeated to weight them: c create, w overwrite, a append, t
/// truncate, r rename into another directory, u unlink, h hard link),
/// subdirectories, most files, largest new file and largest append-grown
/// file (bytes), probability of an fsync after a write.
pub const CHURN_PY: &str = r#"
import os, random, signal, time, sys
seed, sub, ops, dirs, most, size, grow, fsyncs = sys.argv[1:9]
root = os.path.join("/var/lib/app", sub)
rng = random.Random(int(seed))
dirs, most, size, grow, fsyncs = int(dirs), int(most), int(size), int(grow), float(fsyncs)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
end = time.time() + 120
def files():
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs]
    return out
def new_dir():
    d = os.path.join(root, "d%d" % rng.randrange(dirs))
    os.makedirs(d, exist_ok=True)
    return d
def sync(f):
    if rng.random() < fsyncs:
        f.flush()
        os.fsync(f.fileno())
os.makedirs(root, exist_ok=True)
while not stop and time.time() < end:
    time.sleep(0.005)
    try:
        fs = files()
        op = rng.choice(ops)
        if op == "c" or not fs:
            if len(fs) < most:
                with open(os.path.join(new_dir(), "f%d" % rng.randrange(10**6)), "wb") as f:
                    f.write(os.urandom(rng.randrange(1, size)))
                    sync(f)
        elif op == "w":
            with open(rng.choice(fs), "r+b") as f:
                f.seek(rng.randrange(size))
                f.write(os.urandom(rng.randrange(1, 8192)))
                sync(f)
        elif op == "a":
            p = rng.choice(fs)
            if os.path.getsize(p) < grow:
                with open(p, "ab") as f:
                    f.write(os.urandom(rng.randrange(1, 16384)))
                    sync(f)
        elif op == "t":
            os.truncate(rng.choice(fs), rng.randrange(8192))
        elif op == "r":
            os.rename(rng.choice(fs), os.path.join(new_dir(), "r%d" % rng.randrange(10**6)))
        elif op == "u":
            os.unlink(rng.choice(fs))
        elif op == "h":
            os.link(rng.choice(fs), os.path.join(new_dir(), "h%d" % rng.randrange(10**6)))
    except OSError:
        pass
sys.exit(0 if stop else 1)
"#;

/// What `spawn_churn` does.
pub struct Churn {
    pub seed: u64,
    /// The directory under `DIR` it works in.
    pub dir: &'static str,
    /// `CHURN_PY`'s operation letters.
    pub ops: &'static str,
    pub dirs: u32,
    pub most_files: u32,
    pub new_file_bytes: u32,
    pub grow_to_bytes: u32,
    pub fsync_probability: f64,
}

impl Churn {
    /// `CHURN_PY`'s arguments.
    pub fn args(&self) -> [String; 8] {
        [
            self.seed.to_string(),
            self.dir.to_owned(),
            self.ops.to_owned(),
            self.dirs.to_string(),
            self.most_files.to_string(),
            self.new_file_bytes.to_string(),
            self.grow_to_bytes.to_string(),
            self.fsync_probability.to_string(),
        ]
    }
}

/// Starts `churn` on `host`; `stop_churn` ends it.
pub fn spawn_churn(lab: &Lab, host: &str, churn: &Churn) -> LabProcess {
    let args = churn.args();
    lab.host(host)
        .spawn(
            "churn",
            Command::new("/usr/bin/python3")
                .args(["-c", CHURN_PY])
                .args(&args),
        )
        .unwrap()
}

/// Stops a churn with SIGTERM; it must exit 0 (it ran until then).
pub fn stop_churn(churn: &mut LabProcess) {
    churn.signal(Signal::SIGTERM).unwrap();
    let status = churn.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "the churn exited {status}, expected 0 (stopped by SIGTERM)"
    );
}

/// Waits until `host`'s replicated tree stops changing (names, sizes and
/// times the same 300 ms apart): the digest cannot read a tree whose
/// entries the replication still renames and removes.
pub fn wait_settled(lab: &Lab, host: &str) {
    let snapshot = || {
        lab.host(host)
            .sh(&format!(
                "find {DIR} -printf '%p %s %T@ %C@\\n' 2>/dev/null | sort | sha256sum"
            ))
            .unwrap()
    };
    let mut last = snapshot();
    lab::wait_until(
        Duration::from_secs(60),
        &format!("{host}'s tree to settle"),
        || {
            std::thread::sleep(Duration::from_millis(300));
            let now = snapshot();
            let settled = now == last;
            last = now;
            Ok(settled)
        },
    )
    .unwrap();
}

/// Appends records 0..`count` to `DIR/file` on `host`, each made durable
/// with fsync before it is printed (acknowledged); returns the process's
/// output.
pub fn acknowledged_records(lab: &Lab, host: &str, file: &str, count: u32) -> std::process::Output {
    lab.host(host)
        .run_timeout(
            Command::new("/usr/bin/python3").args([
                "-c",
                &format!(
                    "import os\nf = open('{DIR}/{file}', 'a')\nfor i in range({count}):\n    \
                     f.write(f'{{i}}\\n'); f.flush(); os.fsync(f.fileno()); print(i, flush=True)\n"
                ),
            ]),
            Duration::from_secs(30),
        )
        .unwrap()
}

/// A `start_prim` script: runs the shell line `first` (`:` for none), then starts
/// `command` in its own session (so that it outlives the script and its
/// daemon), its pid in `pid_file`.
pub fn start_prim_script(first: &str, command: &str, pid_file: &str) -> String {
    format!(
        "#!/bin/sh\n\
         {first}\n\
         setsid {command} </dev/null >/dev/null 2>&1 &\n\
         echo $! > {pid_file}\n"
    )
}

/// A shell condition, for [`stop_prim_script`]: process `$pid` is gone (or
/// a zombie: it has exited).
pub const PROCESS_GONE: &str = "state=$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null); \
                                [ -z \"$state\" ] || [ \"$state\" = Z ]";

/// A `stop_prim` script: sends `signal` (a name, or a shell expansion
/// giving one) to the process in `pid_file`, then waits up to 5 s for the
/// shell condition `done` (see [`PROCESS_GONE`]); exits 1 if it never
/// holds. Nothing to stop (no pid file) is success.
pub fn stop_prim_script(pid_file: &str, signal: &str, done: &str) -> String {
    format!(
        "#!/bin/sh\n\
         pid=$(cat {pid_file} 2>/dev/null)\n\
         [ -n \"$pid\" ] || exit 0\n\
         echo \"stop_prim force=$HALO_FORCE pid=$pid\" >> /run/halo/stop_prim.log\n\
         kill -{signal} $pid 2>/dev/null\n\
         for i in $(seq 50); do\n\
         \x20 if {done}; then rm -f {pid_file}; exit 0; fi\n\
         \x20 sleep 0.1\n\
         done\n\
         exit 1\n"
    )
}

/// Installs an application on n1 and n2: `program` at `dir/app.py` and the
/// scripts `start_prim(node)` and `stop_prim` beside it. Returns the
/// module's `[module.scripts]` section naming them.
pub fn install_app(
    lab: &Lab,
    dir: &str,
    program: &str,
    start_prim: impl Fn(&str) -> String,
    stop_prim: &str,
) -> String {
    for node in ["n1", "n2"] {
        let host = lab.host(node);
        halo_tests::cluster::install_script(host, &format!("{dir}/app.py"), program).unwrap();
        halo_tests::cluster::install_script(host, &format!("{dir}/start_prim"), &start_prim(node))
            .unwrap();
        halo_tests::cluster::install_script(host, &format!("{dir}/stop_prim"), stop_prim).unwrap();
    }
    format!(
        "[module.scripts]\nstart_prim = \"{dir}/start_prim\"\nstop_prim = \"{dir}/stop_prim\"\n"
    )
}

/// How many capture links `host`'s daemon has pinned (one per hooked
/// tracepoint while its capture is attached, none while it is detached).
pub fn capture_links(lab: &Lab, host: &str) -> usize {
    lab.host(host)
        .sh(&format!(
            "ls /sys/fs/bpf/halo-capture-{host}/*/ 2>/dev/null | grep -c '^link-' || true"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `host`'s capture is attached (some links pinned) or
/// detached (none).
pub fn wait_capture(lab: &Lab, host: &str, attached: bool, timeout: Duration) {
    let what = format!(
        "{host}'s capture {}",
        if attached { "attached" } else { "detached" }
    );
    lab::wait_until(timeout, &what, || {
        Ok((capture_links(lab, host) > 0) == attached)
    })
    .unwrap_or_else(|error| panic!("{error:#}"));
}
