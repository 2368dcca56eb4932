//! What the farm tests share: a dual-stack web server per
//! node that answers its node's name, a client that records which node
//! answered each connection (per source address), and a three-node farm
//! started and waited for.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use halo_tests::{
    cluster::{strip_ansi, Cluster, Timing},
    lab::{self, Lab, LabProcess},
};

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The farm's module name in every configuration below.
pub const MODULE: &str = "web";

/// An HTTP server on port 80, IPv4 and IPv6, answering every GET with the
/// node's name.
const SERVER: &str = r#"
import http.server, socket, sys
name = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    request_queue_size = 128
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 80), Handler).serve_forever()
"#;

/// Connects `repeat` times from each source address (or from the host's
/// own address when there is none) to `target:port`, sends one request per
/// connection and records the answering node per source; failures are
/// counted by error kind.
const CLIENT: &str = r#"
import socket, json, sys, collections, time
target, port, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sources = sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] else [None]
family = socket.AF_INET6 if ":" in target else socket.AF_INET
by_source = collections.defaultdict(collections.Counter)
errors = collections.Counter()
slowest = 0.0
for _ in range(repeat):
    for source in sources:
        key = source or "-"
        started = time.monotonic()
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            if source:
                s.bind((source, 0))
            s.connect((target, port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            by_source[key][data.split(b"\r\n\r\n", 1)[1].decode()] += 1
        except OSError as e:
            errors[type(e).__name__] += 1
        finally:
            s.close()
        slowest = max(slowest, time.monotonic() - started)
print(json.dumps({"by_source": by_source, "errors": errors, "slowest": slowest}))
"#;

/// What [`connect`] saw.
#[derive(Debug)]
pub struct Outcome {
    /// Source address ("-" for the host's own) → node → connections.
    pub by_source: BTreeMap<String, BTreeMap<String, u64>>,
    /// Error kind (Python exception name) → how many connections failed so.
    pub errors: BTreeMap<String, u64>,
    /// The longest a single connection attempt took.
    pub slowest: Duration,
}

impl Outcome {
    /// Connections answered per node, over every source.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for nodes in self.by_source.values() {
            for (node, n) in nodes {
                *counts.entry(node.clone()).or_insert(0) += n;
            }
        }
        counts
    }

    pub fn fails(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Connects `repeat` times from each of `sources` (the client's own address
/// when empty) to `target` on `port`, from host `from`.
pub fn connect(
    lab: &Lab,
    from: &str,
    target: IpAddr,
    port: u16,
    repeat: u32,
    sources: &[IpAddr],
) -> Outcome {
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let output = lab
        .host(from)
        .run_timeout(
            Command::new("/usr/bin/python3").args([
                "-c",
                CLIENT,
                &target.to_string(),
                &port.to_string(),
                &repeat.to_string(),
                &sources.join(","),
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(output.status.success(), "client failed: {output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let table = |value: &serde_json::Value| -> BTreeMap<String, u64> {
        value
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    };
    Outcome {
        by_source: json["by_source"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(source, nodes)| (source.clone(), table(nodes)))
            .collect(),
        errors: table(&json["errors"]),
        slowest: Duration::from_secs_f64(json["slowest"].as_f64().unwrap()),
    }
}

/// A farm module on eth0 with `vips`, the given rule (`proto`, `port`,
/// `filter`) and extra settings (`power = { … }`), in generic XDP mode.
pub fn farm_toml(vips: &[IpAddr], filter: &str, extra: &str) -> String {
    let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        "[[module]]\nname = \"{MODULE}\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [{}]\n\
         xdp_mode = \"generic\"\n{extra}\n\n[[module.rule]]\nproto = \"tcp\"\nport = 80\n\
         filter = \"{filter}\"\n",
        vips.join(", ")
    )
}

/// The running farm: its daemons and web servers.
pub struct Farm<'lab> {
    pub cluster: Cluster<'lab>,
    servers: BTreeMap<&'static str, LabProcess>,
}

/// Starts `node`'s web server.
pub fn start_server(lab: &Lab, node: &'static str) -> LabProcess {
    lab.host(node)
        .spawn(
            "web",
            Command::new("/usr/bin/python3").args(["-c", SERVER, node]),
        )
        .unwrap()
}

/// Starts a web server on every node and the daemons with `modules`, and
/// waits until every node serves the farm and sees the two others.
pub fn start<'lab>(lab: &'lab Lab, modules: &str) -> Farm<'lab> {
    let servers = NODES.iter().map(|n| (*n, start_server(lab, n))).collect();
    let mut cluster = Cluster::configure(lab, &NODES, 1, Timing::default(), modules).unwrap();
    cluster.start_all().unwrap();
    for node in NODES {
        cluster
            .wait_status(
                node,
                Duration::from_secs(15),
                "farm UP with both peers",
                |s| {
                    s.peers.iter().filter(|p| p.up).count() == 2
                        && s.modules
                            .iter()
                            .any(|m| m.name == MODULE && m.state == "UP" && m.phase == "ready")
                },
            )
            .unwrap();
    }
    Farm { cluster, servers }
}

impl Farm<'_> {
    /// Kills `node`'s web server by its pid (SIGKILL, reaped): its
    /// application dies, its daemon lives.
    pub fn kill_server(&mut self, node: &str) {
        let server = self.servers.get_mut(node).expect("a farm node");
        server.kill().unwrap();
    }

    /// Starts `node`'s web server again.
    pub fn restart_server(&mut self, lab: &Lab, node: &'static str) {
        self.servers.insert(node, start_server(lab, node));
    }

    /// Waits (10 s at most) until `node`'s live table holds exactly
    /// `members`, and returns their bucket counts.
    pub fn wait_members(&self, lab: &Lab, node: &str, members: &[&str]) -> BTreeMap<String, u64> {
        let mut last = BTreeMap::new();
        let what = format!("{node}'s table to hold {members:?}");
        let waited = lab::wait_until(Duration::from_secs(10), &what, || {
            last = self.bucket_shares(node);
            Ok(last.keys().map(String::as_str).eq(members.iter().copied()))
        });
        if let Err(error) = waited {
            panic!("{error:#}: saw {last:?}\n{}", self.diagnostics(lab));
        }
        last
    }

    /// Waits until `check` of a few connections holds, e.g. every one
    /// answered; panics with the daemons' logs and the client's neighbours
    /// when it does not within 10 s. Returns how long it took.
    pub fn wait_answers(
        &self,
        lab: &Lab,
        what: &str,
        mut probe: impl FnMut() -> Outcome,
        mut check: impl FnMut(&Outcome) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let mut last = None;
        let waited = lab::wait_until(Duration::from_secs(10), what, || {
            let outcome = probe();
            let done = check(&outcome);
            last = Some(outcome);
            Ok(done)
        });
        if let Err(error) = waited {
            panic!("{error:#}\nlast seen: {last:?}\n{}", self.diagnostics(lab));
        }
        started.elapsed()
    }

    /// The daemons' logs and the client's addresses and neighbours.
    pub fn diagnostics(&self, lab: &Lab) -> String {
        let logs: Vec<String> = NODES
            .iter()
            .map(|n| format!("--- {n}:\n{}", self.cluster.log(n).unwrap_or_default()))
            .collect();
        let client = lab
            .host("client")
            .sh("ip neigh; ip -6 neigh; ip addr | head -40")
            .unwrap_or_default();
        format!("{}\n--- client:\n{client}", logs.join("\n"))
    }

    /// The number of buckets each member owns in `node`'s live table.
    pub fn bucket_shares(&self, node: &str) -> BTreeMap<String, u64> {
        let out = self
            .cluster
            .cli(node, &["buckets", MODULE, "--json"])
            .unwrap();
        assert!(out.status.success(), "halo buckets on {node}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["node"].as_str().unwrap().to_owned(),
                    m["buckets"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// Panics unless every node's count lies within `tolerance` (0.2 = ±20%)
/// of `total / nodes.len()`.
pub fn assert_even(counts: &BTreeMap<String, u64>, nodes: &[&str], total: u64, tolerance: f64) {
    let fair = total as f64 / nodes.len() as f64;
    let (low, high) = (fair * (1.0 - tolerance), fair * (1.0 + tolerance));
    for node in nodes {
        let got = counts.get(*node).copied().unwrap_or(0) as f64;
        assert!(
            (low..=high).contains(&got),
            "expected each of {nodes:?} within ±{:.0}% of {fair:.0} (of {total}), \
             saw {node} with {got}: {counts:?}",
            tolerance * 100.0
        );
    }
}

/// How close to a node's table change (its `bucket table applied` log
/// line's `at_ns`) a UDP flow's first datagram may go, in ns before and
/// after, to be answered by two nodes: README "Farm nodes", a new owner
/// takes the old owner's change 0.5 ms earlier than it places it (the
/// daemons' `CUT_MARGIN_NS`); the rest covers the time between the
/// client's clock reading and the filters', and between the program's flip
/// and the daemon's.
pub const IN_MARGIN_NS: (u64, u64) = (800_000, 300_000);

/// The tables `node` made live, in order: each `bucket table applied` log
/// line and its `at_ns` (CLOCK_MONOTONIC ns, the lab clients' clock too:
/// the lab's hosts share one kernel).
pub fn tables_applied(cluster: &Cluster, node: &str) -> Vec<(String, u64)> {
    let log = strip_ansi(&cluster.log(node).unwrap_or_default());
    log.lines()
        .filter(|l| l.contains("bucket table applied"))
        .filter_map(|line| {
            let at = line.split("at_ns=").nth(1)?.split_whitespace().next()?;
            Some((line.to_owned(), at.parse().ok()?))
        })
        .collect()
}

/// When each of `nodes` made a bucket table live ([`tables_applied`]).
pub fn table_changes(cluster: &Cluster, nodes: &[&str]) -> Vec<u64> {
    nodes
        .iter()
        .flat_map(|node| tables_applied(cluster, node))
        .map(|(_, at)| at)
        .collect()
}

/// Whether a UDP flow whose first datagram went at `first` (CLOCK_MONOTONIC
/// ns) began within [`IN_MARGIN_NS`] of one of `changes`.
pub fn in_margin(first: u64, changes: &[u64]) -> bool {
    let (before, after) = IN_MARGIN_NS;
    changes
        .iter()
        .any(|&c| first + before >= c && first <= c + after)
}
