//! The campaign's world: one lab holding a 3-node farm serving HTTP on a
//! VIP, a 2-node mirror whose application (started by `start_prim`) is an
//! fsync-acknowledging writer and a mixed file workload, an arbiter
//! witness, and a client host probing both from outside.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::{
    cluster::{self, halo_bin, install_script, Cluster, Timing, TEST_SECRET},
    lab::{self, Lab, LabBuilder, LabProcess},
    program::check_interrupt,
};

pub const FARM_NODES: [&str; 3] = ["f1", "f2", "f3"];
pub const MIRROR_NODES: [&str; 2] = ["m1", "m2"];
pub const WITNESS: &str = "w";
pub const CLIENT: &str = "c";
pub const FARM_MODULE: &str = "web";
pub const MIRROR_MODULE: &str = "db";
/// The replicated directory: on each mirror host a bind of
/// [`DATA_FS`]`/data`, so that a ballast file beside it can fill the disk.
pub const DIR: &str = "/var/lib/app";
/// The mirror hosts' small file system (tmpfs with a size limit, inside the
/// host's mount namespace).
pub const DATA_FS: &str = "/var/lib/appfs";
/// Its size.
const DATA_FS_SIZE: &str = "256m";
/// Where the writers record what they acknowledged (not replicated; read
/// from outside the host).
pub const ACKS: &str = "/var/lib/chaos";
/// While this file exists on a host, its applications idle (to compare
/// trees at rest).
pub const PAUSE: &str = "/var/lib/chaos/pause";
const WITNESS_PORT: u16 = 4810;

pub fn farm_vip() -> Ipv4Addr {
    lab::lab_ipv4(200)
}

pub fn mirror_vip() -> Ipv4Addr {
    lab::lab_ipv4(210)
}

/// An HTTP server answering every GET with the node's name.
const WEB: &str = r#"
import http.server, sys
name = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 80), Handler).serve_forever()
"#;

/// Appends numbered records, fsync after each, and reports every number
/// whose fsync returned (one line each, in `ACKS/<name>.ack`).
const WRITER: &str = r#"
import os, sys, time
host = sys.argv[1]
name = "%s-%d-%d" % (host, os.getpid(), time.time_ns())
os.makedirs("/var/lib/app/records", exist_ok=True)
fd = os.open("/var/lib/app/records/%s.log" % name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
ack = open("/var/lib/chaos/%s.ack" % name, "a", buffering=1)
n = 0
while True:
    while os.path.exists("/var/lib/chaos/pause"):
        time.sleep(0.01)
    n += 1
    os.write(fd, b"%d\n" % n)
    os.fsync(fd)
    ack.write("%d\n" % n)
    time.sleep(0.02)
"#;

/// Creates, overwrites, appends to, truncates, renames and removes files
/// and directories under `DIR/mixed`, with symlinks and hard links, never
/// more than a few megabytes in all.
const MIXED: &str = r#"
import os, random, time
root = "/var/lib/app/mixed"
os.makedirs(root, exist_ok=True)
rng = random.Random(os.getpid())
def files():
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs]
    return out
while True:
    while os.path.exists("/var/lib/chaos/pause"):
        time.sleep(0.01)
    time.sleep(0.05)
    try:
        fs = files()
        op = rng.randrange(10)
        if op < 3 or not fs:
            d = os.path.join(root, "d%d" % rng.randrange(8))
            os.makedirs(d, exist_ok=True)
            if len(fs) < 150:
                with open(os.path.join(d, "f%d" % rng.randrange(10**6)), "wb") as f:
                    f.write(os.urandom(rng.randrange(1, 65536)))
        elif op == 3:
            p = rng.choice(fs)
            if not os.path.islink(p):
                with open(p, "r+b") as f:
                    f.seek(rng.randrange(65536))
                    f.write(os.urandom(rng.randrange(1, 8192)))
        elif op == 4:
            p = rng.choice(fs)
            if not os.path.islink(p) and os.path.getsize(p) < 200000:
                with open(p, "ab") as f:
                    f.write(os.urandom(rng.randrange(1, 4096)))
        elif op == 5:
            p = rng.choice(fs)
            if not os.path.islink(p):
                os.truncate(p, rng.randrange(4096))
        elif op == 6:
            p = rng.choice(fs)
            d = os.path.join(root, "d%d" % rng.randrange(8))
            os.makedirs(d, exist_ok=True)
            os.rename(p, os.path.join(d, "r%d" % rng.randrange(10**6)))
        elif op == 7:
            os.unlink(rng.choice(fs))
        elif op == 8:
            p = rng.choice(fs)
            os.symlink(os.path.basename(p), p + ".lnk%d" % rng.randrange(1000))
        else:
            p = rng.choice(fs)
            if not os.path.islink(p):
                os.link(p, p + ".hl%d" % rng.randrange(1000))
    except OSError:
        pass
"#;

/// The client's probes, one JSON line each: the farm VIP every 50 ms
/// (which node answered, or the error), and both mirror nodes'
/// `ready.txt` (HTTP status, or null when unreachable) in the same sample.
const PROBE: &str = r#"
import http.client, json, sys, threading, time
farm_vip, mirror = sys.argv[1], sys.argv[2].split(",")
port, module = int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
def emit(record):
    with lock:
        print(json.dumps(record), flush=True)
def get(host, port, path, timeout):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()
def farm():
    while True:
        t = time.time()
        try:
            status, body = get(farm_vip, 80, "/", 1.0)
            emit({"t": t, "farm": body if status == 200 else "status %d" % status})
        except Exception as e:
            emit({"t": t, "farm": None, "error": type(e).__name__})
        time.sleep(0.05)
def ready():
    while True:
        t = time.time()
        sample = {"t": t, "ready": {}}
        for host in mirror:
            try:
                sample["ready"][host] = get(host, port, "/var/modules/%s/ready.txt" % module, 0.3)[0]
            except Exception:
                sample["ready"][host] = None
        sample["t_end"] = time.time()
        emit(sample)
        time.sleep(0.05)
threading.Thread(target=farm, daemon=True).start()
ready()
"#;

/// The lab and everything running in it.
pub struct World<'lab> {
    pub lab: &'lab Lab,
    pub farm: Cluster<'lab>,
    pub mirror: Cluster<'lab>,
    pub witness: Option<LabProcess>,
    pub web: BTreeMap<String, LabProcess>,
    pub probe: LabProcess,
}

/// Builds the lab: every host of the campaign.
pub fn build_lab() -> Result<Lab> {
    let mut hosts: Vec<&str> = FARM_NODES.to_vec();
    hosts.extend(MIRROR_NODES);
    hosts.extend([WITNESS, CLIENT]);
    LabBuilder::new("chaos")
        .hosts(&hosts)
        .private_path(DATA_FS)
        .private_path(ACKS)
        .build()
}

fn farm_toml() -> String {
    format!(
        "[[module]]\nname = \"{FARM_MODULE}\"\nkind = \"farm\"\ninterface = \"eth0\"\n\
         vips = [\"{}\"]\nxdp_mode = \"generic\"\n\n[[module.rule]]\nproto = \"tcp\"\n\
         port = 80\nfilter = \"source_port\"\n",
        farm_vip()
    )
}

fn witness_address(lab: &Lab) -> String {
    format!("{}:{WITNESS_PORT}", lab.host(WITNESS).ipv4())
}

fn mirror_toml(lab: &Lab) -> String {
    format!(
        "[[module]]\nname = \"{MIRROR_MODULE}\"\nkind = \"mirror\"\nnodes = [\"m1\", \"m2\"]\n\
         interface = \"eth0\"\nvip = \"{}\"\ndefaultprim = \"m1\"\n\n\
         [module.scripts]\nstart_prim = \"/etc/halo/start_prim\"\nstop_prim = \"/etc/halo/stop_prim\"\n\n\
         [module.witness]\nkind = \"arbiter\"\naddress = \"{}\"\nlease = \"1s\"\n\n\
         [[module.dir]]\npath = \"{DIR}\"\n",
        mirror_vip(),
        witness_address(lab)
    )
}

/// `start_prim` of mirror host `node`: the writer and the mixed workload,
/// each in a session of its own, their pids kept for `stop_prim`.
fn start_prim(node: &str) -> String {
    format!(
        "#!/bin/sh\n\
         setsid /usr/bin/python3 /etc/halo/writer.py {node} </dev/null >>{ACKS}/writer.log 2>&1 &\n\
         echo $! > /run/halo/chaos-writer.pid\n\
         setsid /usr/bin/python3 /etc/halo/mixed.py </dev/null >>{ACKS}/mixed.log 2>&1 &\n\
         echo $! > /run/halo/chaos-mixed.pid\n"
    )
}

/// `stop_prim`: SIGKILL both (a held writer dies too), and wait until
/// they are gone, so that nothing writes once the node stops serving.
const STOP_PRIM: &str = "#!/bin/sh\n\
    for f in /run/halo/chaos-writer.pid /run/halo/chaos-mixed.pid; do\n\
    \t[ -f $f ] || continue\n\
    \tpid=$(cat $f)\n\
    \tkill -KILL $pid 2>/dev/null\n\
    \tfor i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done\n\
    \trm -f $f\n\
    done\n";

impl<'lab> World<'lab> {
    /// Configures and starts everything, and waits until the farm is UP on
    /// every node and the mirror has its primary and secondary.
    pub fn start(lab: &'lab Lab) -> Result<Self> {
        for node in MIRROR_NODES {
            let host = lab.host(node);
            host.sh(&format!(
                "mount -t tmpfs -o size={DATA_FS_SIZE} chaos {DATA_FS} && mkdir -p {DATA_FS}/data \
                 && mount --bind {DATA_FS}/data {DIR}"
            ))
            .with_context(|| format!("mount {node}'s data file system"))?;
            install_script(host, "/etc/halo/start_prim", &start_prim(node))?;
            install_script(host, "/etc/halo/stop_prim", STOP_PRIM)?;
            install_script(host, "/etc/halo/writer.py", WRITER)?;
            install_script(host, "/etc/halo/mixed.py", MIXED)?;
        }
        let mut web = BTreeMap::new();
        for node in FARM_NODES {
            web.insert(node.to_owned(), web_server(lab, node)?);
        }
        let witness = Some(start_witness(lab)?);
        let mut farm = Cluster::configure(lab, &FARM_NODES, 1, Timing::default(), &farm_toml())?;
        let mut mirror =
            Cluster::configure(lab, &MIRROR_NODES, 1, Timing::default(), &mirror_toml(lab))?;
        farm.start_all()?;
        mirror.start_all()?;
        let mirror_hosts: Vec<String> = MIRROR_NODES
            .iter()
            .map(|n| lab.host(n).ipv4().to_string())
            .collect();
        let probe = lab.host(CLIENT).spawn(
            "probe",
            Command::new("/usr/bin/python3").args([
                "-u",
                "-c",
                PROBE,
                &farm_vip().to_string(),
                &mirror_hosts.join(","),
                &cluster::API_PORT.to_string(),
                MIRROR_MODULE,
            ]),
        )?;
        let world = World {
            lab,
            farm,
            mirror,
            witness,
            web,
            probe,
        };
        Ok(world)
    }

    /// Restarts the witness (after a fault stopped it).
    pub fn restart_witness(&mut self) -> Result<()> {
        self.witness = None;
        self.witness = Some(start_witness(self.lab)?);
        Ok(())
    }

    /// Restarts the web server of farm node `node` (after its host died).
    pub fn restart_web(&mut self, node: &str) -> Result<()> {
        self.web.remove(node);
        self.web
            .insert(node.to_owned(), web_server(self.lab, node)?);
        Ok(())
    }

    /// The cluster `node` belongs to.
    pub fn cluster_of(&mut self, node: &str) -> &mut Cluster<'lab> {
        if FARM_NODES.contains(&node) {
            &mut self.farm
        } else {
            &mut self.mirror
        }
    }

    /// The mirror node serving as primary (PRIM or ALONE, ready), if one is.
    pub fn mirror_primary(&self) -> Option<&'static str> {
        MIRROR_NODES.into_iter().find(|node| {
            self.mirror.status(node).is_ok_and(|s| {
                s.modules
                    .iter()
                    .any(|m| m.name == MIRROR_MODULE && m.serving && m.phase == "ready")
            })
        })
    }

    /// Creates or removes the pause file on both mirror hosts.
    pub fn pause_applications(&self, pause: bool) -> Result<()> {
        for node in MIRROR_NODES {
            let path = self.lab.host(node).outside_path(PAUSE);
            if pause {
                std::fs::write(&path, b"").with_context(|| format!("write {}", path.display()))?;
            } else if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err(error).with_context(|| format!("remove {}", path.display()));
                }
            }
        }
        Ok(())
    }
}

fn web_server(lab: &Lab, node: &str) -> Result<LabProcess> {
    lab.host(node).spawn(
        "web",
        Command::new("/usr/bin/python3").args(["-c", WEB, node]),
    )
}

fn start_witness(lab: &Lab) -> Result<LabProcess> {
    let host = lab.host(WITNESS);
    let key = host.outside_path("/etc/halo/cluster.key");
    std::fs::create_dir_all(host.outside_path("/etc/halo"))?;
    std::fs::write(&key, TEST_SECRET)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    host.spawn(
        "witness",
        Command::new(halo_bin()).args([
            "witness",
            "--listen",
            &witness_address(lab),
            "--max-lease",
            "2s",
        ]),
    )
}

/// Waits up to `timeout` for `what`, checking for Ctrl-C between tries.
pub fn wait(timeout: Duration, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
