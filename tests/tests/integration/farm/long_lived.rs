//! Established connections survive planned rebalancing: a node joining the
//! farm, a node's weight changing live (`halo reload` of its `power`, up,
//! then to 0) and a node leaving it gracefully (`halo stop`) reset no
//! connection and stall none; after a weight change every node shows the
//! same table, with the changed node's new share; and the leaving node
//! finishes its stop once its last connection ends.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use halo_tests::{
    cluster::{module_in, Cluster, Timing, CONFIG_PATH},
    lab::{self, Lab, LabBuilder, LabProcess},
};

use super::common::{farm_toml, MODULE};

const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

/// Long-lived connections the client holds.
const CONNECTIONS: usize = 30;

/// The farm's drain timeout in this test.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest a connection may go without an echo.
const STALL: Duration = Duration::from_secs(2);

/// A line echo server on port 80 (IPv4 and IPv6): answers every line with
/// the node's name, a space and the line.
const ECHO: &str = r#"
import socketserver, socket, sys
name = sys.argv[1].encode()
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name + b" " + line)
            self.wfile.flush()
class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 80), Handler).serve_forever()
"#;

/// Holds `n` connections to `target:port`, one thread each, sending a line
/// every 50 ms and reading its echo. Per connection: the nodes that
/// answered, echoes, resets, other errors, the longest gap between two
/// echoes. Writes `<dir>/ready` once every connection has an echo,
/// `<dir>/snapshot.json` twice a second; when `<dir>/stop` appears, closes
/// every connection and prints the result as JSON.
const CLIENT: &str = r#"
import socket, threading, time, json, sys, os
target, port, n, ctl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stats = [dict(nodes=[], echoes=0, resets=0, errors=[], max_gap=0.0, closed=False) for _ in range(n)]
stop = threading.Event()
def run(i):
    st = stats[i]
    s = None
    for attempt in range(20):
        try:
            s = socket.create_connection((target, port), timeout=3)
            break
        except OSError as e:
            time.sleep(0.5)
    if s is None:
        st["errors"].append("connect")
        return
    s.settimeout(5)
    f = s.makefile("rb")
    last = None
    k = 0
    try:
        while not stop.is_set():
            s.sendall(b"%d %d\n" % (i, k))
            line = f.readline()
            if not line:
                st["errors"].append("eof")
                return
            now = time.monotonic()
            if last is not None:
                st["max_gap"] = max(st["max_gap"], now - last)
            last = now
            node = line.split()[0].decode()
            if node not in st["nodes"]:
                st["nodes"].append(node)
            st["echoes"] += 1
            k += 1
            time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        while f.read(4096):
            pass
        st["closed"] = True
    except ConnectionResetError:
        st["resets"] += 1
    except OSError as e:
        st["errors"].append(type(e).__name__)
    finally:
        s.close()
threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
    time.sleep(0.02)
def write(name, text):
    tmp = os.path.join(ctl, name + ".tmp")
    with open(tmp, "w") as out:
        out.write(text)
    os.rename(tmp, os.path.join(ctl, name))
ready = False
while not os.path.exists(os.path.join(ctl, "stop")):
    if not ready and all(st["echoes"] > 0 for st in stats):
        write("ready", "")
        ready = True
    write("snapshot.json", json.dumps(stats))
    time.sleep(0.5)
stop.set()
for t in threads:
    t.join()
print(json.dumps(stats))
"#;

/// Opens `n` short connections to `target:port`, one line each; prints the
/// answering node per connection (or the error's name).
const FRESH: &str = r#"
import socket, sys, json, collections
target, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for _ in range(n):
    try:
        s = socket.create_connection((target, port), timeout=5)
        s.settimeout(5)
        s.sendall(b"hello\n")
        seen[s.makefile("rb").readline().split()[0].decode()] += 1
        s.close()
    except (OSError, IndexError) as e:
        seen["error:" + type(e).__name__] += 1
print(json.dumps(seen))
"#;

/// One connection's record, from the client's JSON.
#[derive(Debug, Clone)]
struct Conn {
    nodes: Vec<String>,
    echoes: u64,
    resets: u64,
    errors: Vec<String>,
    max_gap: Duration,
    closed: bool,
}

fn parse(text: &str) -> Vec<Conn> {
    let json: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client JSON ({e}): {text}"));
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| Conn {
            nodes: c["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect(),
            echoes: c["echoes"].as_u64().unwrap(),
            resets: c["resets"].as_u64().unwrap(),
            errors: c["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_owned())
                .collect(),
            max_gap: Duration::from_secs_f64(c["max_gap"].as_f64().unwrap()),
            closed: c["closed"].as_bool().unwrap(),
        })
        .collect()
}

fn snapshot(dir: &Path) -> Vec<Conn> {
    parse(&std::fs::read_to_string(dir.join("snapshot.json")).unwrap())
}

/// Every connection alive, never reset, answered by one node, without a
/// stall; panics with `what` and the records otherwise.
fn assert_healthy(conns: &[Conn], what: &str) {
    for (i, c) in conns.iter().enumerate() {
        assert!(
            c.resets == 0 && c.errors.is_empty() && c.nodes.len() == 1 && c.max_gap < STALL,
            "{what}: connection {i} is not healthy: {c:?}\nall: {conns:#?}"
        );
    }
}

fn served_by(conns: &[Conn]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for c in conns {
        for n in &c.nodes {
            *by.entry(n.clone()).or_insert(0) += 1;
        }
    }
    by
}

fn worst_gap(conns: &[Conn]) -> Duration {
    conns.iter().map(|c| c.max_gap).max().unwrap_or_default()
}

fn fresh(lab: &Lab, vip: IpAddr, n: u32) -> BTreeMap<String, u64> {
    let out = lab
        .host("client")
        .run_timeout(
            Command::new("/usr/bin/python3").args([
                "-c",
                FRESH,
                &vip.to_string(),
                "80",
                &n.to_string(),
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(out.status.success(), "fresh client: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(super) fn diagnostics(cluster: &Cluster, nodes: &[&str]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {n}:\n{}", cluster.log(n).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each node's `halo buckets web --json`.
pub(super) fn tables(cluster: &Cluster, nodes: &[&str]) -> BTreeMap<String, serde_json::Value> {
    nodes
        .iter()
        .map(|n| {
            let out = cluster.cli(n, &["buckets", MODULE, "--json"]).unwrap();
            assert!(out.status.success(), "halo buckets on {n}: {out:?}");
            let table = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("halo buckets --json on {n} ({e}): {out:?}"));
            (n.to_string(), table)
        })
        .collect()
}

/// `node`'s power and share (percent of the buckets) in `table`.
pub(super) fn share(table: &serde_json::Value, node: &str) -> (u64, f64) {
    let member = table["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == node)
        .unwrap_or_else(|| panic!("{node} is not a member of {table}"));
    (
        member["power"].as_u64().unwrap(),
        member["percent"].as_f64().unwrap(),
    )
}

/// Gives `node` the farm power `power` in its configuration file and has
/// its daemon reload it; then waits until every node of `nodes` shows one
/// and the same table in which `node` has that power, and returns it.
pub(super) fn reload_power(
    cluster: &Cluster,
    lab: &Lab,
    nodes: &[&str],
    node: &str,
    power: u32,
) -> serde_json::Value {
    let path = lab.host(node).outside_path(CONFIG_PATH);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("power = "))
        .collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("drain_timeout = "))
        .expect("the farm module's drain_timeout line");
    let line = format!("power = {{ {node} = {power} }}");
    lines.insert(at + 1, &line);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = cluster.cli(node, &["reload"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("power of {node}")),
        "halo reload on {node} applies power {power}: {out:?}"
    );
    let mut last = BTreeMap::new();
    let agreed = lab::wait_until(
        Duration::from_secs(10),
        "the same table with the new power on every node",
        || {
            last = tables(cluster, nodes);
            let first = last.values().next().unwrap();
            Ok(last.values().all(|t| t == first) && share(first, node).0 == u64::from(power))
        },
    );
    if let Err(error) = agreed {
        let digests: Vec<String> = last
            .iter()
            .map(|(n, t)| format!("{n}: {:?}", t["members"]))
            .collect();
        panic!("{error:#}\n{}", digests.join("\n"));
    }
    last.into_values().next().unwrap()
}

pub(super) fn wait_module(
    cluster: &Cluster,
    node: &str,
    timeout: Duration,
    what: &str,
    state: &str,
) {
    let phase = "ready";
    if let Err(error) =
        cluster.wait_status(node, timeout, what, |s| module_in(s, MODULE, state, phase))
    {
        panic!("{error:#}\n{}", diagnostics(cluster, &NODES));
    }
}

#[test]
fn established_connections_survive_a_join_and_a_graceful_leave() {
    let hosts: Vec<&str> = NODES.iter().copied().chain(["client"]).collect();
    let lab = LabBuilder::new("farmlong").hosts(&hosts).build().unwrap();
    let vip: IpAddr = lab::lab_ipv4(200).into();
    let _servers: Vec<LabProcess> = NODES
        .iter()
        .map(|n| {
            lab.host(n)
                .spawn(
                    "echo",
                    Command::new("/usr/bin/python3").args(["-c", ECHO, n]),
                )
                .unwrap()
        })
        .collect();
    let extra = format!("drain_timeout = \"{}s\"", DRAIN_TIMEOUT.as_secs());
    let mut cluster = Cluster::configure(
        &lab,
        &NODES,
        1,
        Timing::default(),
        &farm_toml(&[vip], "source_port", &extra),
    )
    .unwrap();
    for node in &NODES[..3] {
        cluster.start(node).unwrap();
    }
    for node in &NODES[..3] {
        wait_module(&cluster, node, Duration::from_secs(20), "farm UP", "UP");
    }
    lab::wait_until(Duration::from_secs(20), "both peers up everywhere", || {
        Ok(NODES[..3].iter().all(|n| {
            cluster
                .status(n)
                .is_ok_and(|s| s.peers.iter().filter(|p| p.up).count() == 2)
        }))
    })
    .unwrap();

    // The long-lived connections.
    let client = lab.host("client");
    let ctl: PathBuf = client.state_dir().join("long");
    std::fs::create_dir_all(&ctl).unwrap();
    let mut holder = client
        .spawn(
            "long",
            Command::new("/usr/bin/python3").args([
                "-c",
                CLIENT,
                &vip.to_string(),
                "80",
                &CONNECTIONS.to_string(),
                ctl.to_str().unwrap(),
            ]),
        )
        .unwrap();
    if let Err(error) = lab::wait_until(Duration::from_secs(30), "every connection up", || {
        Ok(ctl.join("ready").exists())
    }) {
        panic!(
            "{error:#}\nclient: {}\n{}",
            holder.log().unwrap_or_default(),
            diagnostics(&cluster, &NODES[..3])
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = snapshot(&ctl);
    assert_healthy(&before, "before the join");
    eprintln!("before the join: served by {:?}", served_by(&before));

    // (a) n4 joins.
    cluster.start("n4").unwrap();
    wait_module(&cluster, "n4", Duration::from_secs(20), "n4 UP", "UP");
    std::thread::sleep(Duration::from_secs(3));
    let fresh_after_join = fresh(&lab, vip, 60);
    eprintln!("new connections after the join: {fresh_after_join:?}");
    assert!(
        fresh_after_join.keys().all(|k| !k.starts_with("error"))
            && fresh_after_join.contains_key("n4"),
        "new connections succeed and n4 takes some: {fresh_after_join:?}"
    );
    let after_join = snapshot(&ctl);
    assert_healthy(&after_join, "after the join");
    assert!(
        after_join
            .iter()
            .zip(&before)
            .all(|(a, b)| a.echoes > b.echoes + 20),
        "every connection keeps echoing: {after_join:?}"
    );
    eprintln!(
        "after the join: served by {:?}, worst gap {} ms",
        served_by(&after_join),
        worst_gap(&after_join).as_millis()
    );

    // (c) n1's weight changes live: 1 -> 3, then 3 -> 0.
    let shares_before = tables(&cluster, &NODES);
    let (_, n1_before) = share(&shares_before["n1"], "n1");
    let table = reload_power(&cluster, &lab, &NODES, "n1", 3);
    let (_, n1_heavy) = share(&table, "n1");
    eprintln!(
        "n1 power 1 -> 3: its share {n1_before:.1}% -> {n1_heavy:.1}% (target 50%), the same table on every node"
    );
    assert!(
        (40.0..60.0).contains(&n1_heavy) && n1_heavy > n1_before + 15.0,
        "n1 of power 3 among three of power 1 owns about half the buckets, not {n1_heavy:.1}% (was {n1_before:.1}%)"
    );
    std::thread::sleep(Duration::from_secs(2));
    let fresh_heavy = fresh(&lab, vip, 60);
    eprintln!("new connections with n1 at power 3: {fresh_heavy:?}");
    assert!(
        fresh_heavy.keys().all(|k| !k.starts_with("error"))
            && fresh_heavy.get("n1").is_some_and(|n| *n >= 15),
        "new connections succeed and n1 takes about half: {fresh_heavy:?}"
    );
    let after_heavy = snapshot(&ctl);
    assert_healthy(&after_heavy, "after n1's power went to 3");
    assert!(
        after_heavy
            .iter()
            .zip(&after_join)
            .all(|(a, b)| a.echoes > b.echoes + 20),
        "every connection keeps echoing: {after_heavy:?}"
    );

    let table = reload_power(&cluster, &lab, &NODES, "n1", 0);
    let (_, n1_zero) = share(&table, "n1");
    eprintln!("n1 power 3 -> 0: its share {n1_heavy:.1}% -> {n1_zero:.1}%");
    assert_eq!(n1_zero, 0.0, "n1 of power 0 owns no bucket");
    std::thread::sleep(Duration::from_secs(2));
    let fresh_zero = fresh(&lab, vip, 60);
    eprintln!("new connections with n1 at power 0: {fresh_zero:?}");
    assert!(
        fresh_zero.keys().all(|k| !k.starts_with("error")) && !fresh_zero.contains_key("n1"),
        "new connections succeed elsewhere than n1: {fresh_zero:?}"
    );
    let after_zero = snapshot(&ctl);
    assert_healthy(&after_zero, "after n1's power went to 0");
    assert!(
        after_zero
            .iter()
            .zip(&after_heavy)
            .all(|(a, b)| a.echoes > b.echoes + 20),
        "every connection keeps echoing, n1's own included: {after_zero:?}"
    );
    let status = cluster.status("n1").unwrap();
    assert!(
        module_in(&status, MODULE, "UP", "ready"),
        "n1 of power 0 stays UP ready: {:?}",
        status.modules
    );
    eprintln!(
        "after the weight changes: served by {:?}, worst gap {} ms",
        served_by(&after_zero),
        worst_gap(&after_zero).as_millis()
    );

    // (b) The node serving the most connections leaves gracefully.
    let by = served_by(&after_zero);
    let (leaver, held) = by
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, c)| (n.clone(), *c))
        .unwrap();
    let stopped_at = Instant::now();
    let out = cluster.cli(&leaver, &["stop", MODULE]).unwrap();
    assert!(out.status.success(), "halo stop on {leaver}: {out:?}");
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster.status(&leaver).unwrap();
    assert!(
        module_in(&status, MODULE, "UP", "transient"),
        "{leaver} drains its {held} connections UP transient: {:?}",
        status.modules
    );
    let fresh_after_leave = fresh(&lab, vip, 60);
    eprintln!("new connections while {leaver} drains: {fresh_after_leave:?}");
    assert!(
        fresh_after_leave.keys().all(|k| !k.starts_with("error"))
            && !fresh_after_leave.contains_key(&leaver),
        "new connections succeed elsewhere than {leaver}: {fresh_after_leave:?}"
    );
    let during = snapshot(&ctl);
    assert_healthy(&during, "while draining");
    assert!(
        during
            .iter()
            .zip(&after_zero)
            .all(|(d, a)| d.echoes > a.echoes + 20),
        "every connection keeps echoing while {leaver} drains: {during:?}"
    );

    // The client closes every connection; the leaver then stops.
    std::fs::write(ctl.join("stop"), "").unwrap();
    let closed_at = Instant::now();
    holder.wait_timeout(Duration::from_secs(30)).unwrap();
    let log = holder.log().unwrap();
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no result from the client: {log}"));
    let end = parse(last);
    wait_module(
        &cluster,
        &leaver,
        DRAIN_TIMEOUT.saturating_sub(stopped_at.elapsed()),
        "the leaver STOP within the drain timeout",
        "STOP",
    );
    let stop_took = closed_at.elapsed();
    let resets: u64 = end.iter().map(|c| c.resets).sum();
    eprintln!(
        "{} connections: served by {:?}, resets {resets}, worst gap between echoes {} ms, \
         {leaver} held {held} and reached STOP {} ms after they closed ({} ms after halo stop)",
        end.len(),
        served_by(&end),
        worst_gap(&end).as_millis(),
        stop_took.as_millis(),
        stopped_at.elapsed().as_millis()
    );
    assert_healthy(&end, "at the end");
    assert!(
        end.iter().all(|c| c.closed),
        "every connection closed cleanly: {end:?}"
    );
    let module_log = cluster.module_log(&leaver, MODULE).unwrap_or_default();
    let drained = module_log
        .iter()
        .find(|e| e.source == "datapath" && e.text.starts_with("drained"));
    assert!(
        drained.is_some(),
        "{leaver} logs the end of its drain (not the timeout): {:?}",
        module_log
            .iter()
            .map(|e| format!("{} {}", e.source, e.text))
            .collect::<Vec<_>>()
    );
}
