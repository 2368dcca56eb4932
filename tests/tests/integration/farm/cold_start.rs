//! Nodes that went UP each alone (they started together, or apart behind a
//! partition) and then see each other: until both apply the table of the
//! two, each may still own a bucket the other keeps. A connection begun
//! then must still be served by one node: no TCP connection reset (two
//! nodes answering one SYN), no UDP datagram answered twice. Here one node
//! sees the other 300 ms before the other sees it.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{self, LabBuilder, LabProcess},
};

use super::{
    common::{farm_toml, in_margin, start_server, table_changes, tables_applied},
    long_lived::{diagnostics, tables, wait_module},
    udp::ECHO,
};

const NODES: [&str; 2] = ["n1", "n2"];

/// The UDP port of the farm's second rule, and of the echo servers (the
/// web servers answer on port 80).
const UDP_PORT: u16 = 5353;

/// Until `<ctl>/stop` appears: every 10 ms a new UDP flow (20 numbered
/// datagrams, 50 ms apart) and every 20 ms a new TCP connection (one GET),
/// each on its own source port. Writes `<ctl>/result.json`: per flow, its start
/// (CLOCK_MONOTONIC ns), the nodes that answered, the datagrams answered
/// more than once; per connection, its start and the node that answered
/// or the error.
const CLIENT: &str = r#"
import socket, select, time, json, sys, os, threading
target, udp_port, ctl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
flows, conns, lock = [], [], threading.Lock()
def connect(start):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(8)
    try:
        s.connect((target, 80))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        result = data.split(b"\r\n\r\n", 1)[1].decode()
    except OSError as e:
        result = "error:" + type(e).__name__
    finally:
        s.close()
    with lock:
        conns.append(dict(start=start, result=result))
class Flow:
    def __init__(self, now):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setblocking(False)
        self.s.connect((target, udp_port))
        self.start, self.sent, self.nodes, self.seen, self.dupes = now, 0, [], set(), 0
        self.first = None
live, by_fd, threads = [], {}, []
next_flow = next_conn = next_send = time.monotonic()
while not os.path.exists(os.path.join(ctl, "stop")):
    now = time.monotonic()
    if now >= next_flow:
        f = Flow(time.monotonic_ns())
        flows.append(f)
        live.append(f)
        by_fd[f.s.fileno()] = f
        next_flow += 0.01
    if now >= next_conn:
        t = threading.Thread(target=connect, args=(time.monotonic_ns(),))
        t.start()
        threads.append(t)
        next_conn += 0.02
    if now >= next_send:
        for f in list(live):
            if f.sent < 20:
                if f.first is None:
                    f.first = time.monotonic_ns()
                try:
                    f.s.send(b"%d" % f.sent)
                except OSError:
                    pass
                f.sent += 1
        next_send += 0.05
    timeout = max(0.0, min(next_flow, next_conn, next_send) - time.monotonic())
    readable, _, _ = select.select(list(by_fd), [], [], timeout)
    for fd in readable:
        f = by_fd[fd]
        while True:
            try:
                data = f.s.recv(2048)
            except OSError:
                break
            node, _, seq = data.partition(b" ")
            node = node.decode()
            if node not in f.nodes:
                f.nodes.append(node)
            if seq in f.seen:
                f.dupes += 1
            f.seen.add(seq)
for t in threads:
    t.join()
with open(os.path.join(ctl, "result.json"), "w") as out:
    json.dump(dict(
        flows=[dict(start=f.start, first=f.first, nodes=f.nodes, dupes=f.dupes, sent=f.sent,
                    answered=len(f.seen)) for f in flows],
        conns=conns), out)
"#;

/// The CLOCK_MONOTONIC time (ns) at which `node` first applied a table of
/// both nodes, from its log.
fn both_applied_at(cluster: &Cluster, node: &str) -> Option<u64> {
    tables_applied(cluster, node)
        .into_iter()
        .find(|(line, _)| line.contains("n1=") && line.contains("n2="))
        .map(|(_, at)| at)
}

#[test]
fn nodes_that_went_up_alone_serve_each_new_connection_once_when_they_meet() {
    let lab = LabBuilder::new("farmcold")
        .hosts(&["n1", "n2", "client"])
        .build()
        .unwrap();
    let vip: IpAddr = lab::lab_ipv4(200).into();
    let mut servers: Vec<LabProcess> = Vec::new();
    for node in NODES {
        servers.push(start_server(&lab, node));
        let args = ["-c", ECHO, node, &vip.to_string(), &UDP_PORT.to_string()];
        let mut echo = Command::new("/usr/bin/python3");
        servers.push(lab.host(node).spawn("echo", echo.args(args)).unwrap());
    }
    let modules = format!(
        "{}\n[[module.rule]]\nproto = \"udp\"\nport = {UDP_PORT}\nfilter = \"source_port\"\n",
        farm_toml(
            &[vip],
            "source_port",
            "drain_timeout = \"5s\"\nudp_idle = \"2s\""
        )
    );
    let mut cluster = Cluster::configure(&lab, &NODES, 1, Timing::default(), &modules).unwrap();
    // n2 sends to n1 without asking for its MAC, which n1 could not
    // answer while its way to n2 is cut.
    let sh = |host: &str, script: &str| {
        let out = lab
            .host(host)
            .run(Command::new("/bin/sh").args(["-c", script]))
            .unwrap();
        assert!(out.status.success(), "{script} on {host}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let n1_mac = sh("n1", "cat /sys/class/net/eth0/address");
    let n1_ip = sh(
        "n1",
        "ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 | head -1",
    );
    sh(
        "n2",
        &format!("ip neigh replace {n1_ip} lladdr {n1_mac} dev eth0 nud permanent"),
    );
    // Each goes UP alone: they cannot hear each other.
    lab.cut_one_way("n1", "n2").unwrap();
    lab.cut_one_way("n2", "n1").unwrap();
    cluster.start_all().unwrap();
    for node in NODES {
        wait_module(
            &cluster,
            node,
            Duration::from_secs(20),
            "farm UP alone",
            "UP",
        );
    }

    let client = lab.host("client");
    let ctl = client.state_dir().join("cold");
    std::fs::create_dir_all(&ctl).unwrap();
    let mut traffic = client
        .spawn(
            "traffic",
            Command::new("/usr/bin/python3").args([
                "-c",
                CLIENT,
                &vip.to_string(),
                &UDP_PORT.to_string(),
                ctl.to_str().unwrap(),
            ]),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // n1 sees n2 first, and n2 sees n1 a while later (as when their
    // heartbeats come at other moments, widened): meanwhile n2 still owns
    // every bucket, those n1 keeps too.
    lab.heal_one_way("n2", "n1").unwrap();
    let healed = Instant::now();
    lab::wait_until(
        Duration::from_secs(10),
        "n1 applying the table of the two",
        || Ok(both_applied_at(&cluster, "n1").is_some()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.heal_one_way("n1", "n2").unwrap();
    lab::wait_until(
        Duration::from_secs(20),
        "both nodes applying the table of the two",
        || Ok(NODES.iter().all(|n| both_applied_at(&cluster, n).is_some())),
    )
    .unwrap();
    lab::wait_until(Duration::from_secs(20), "the same table on both", || {
        let owners: Vec<serde_json::Value> = tables(&cluster, &NODES)
            .into_values()
            .map(|t| t["owners"].clone())
            .collect();
        Ok(owners.windows(2).all(|w| w[0] == w[1]))
    })
    .unwrap();
    // Past the drains (drain_timeout) and the last flows begun in them.
    let settled = healed + Duration::from_secs(7);
    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
    std::fs::write(ctl.join("stop"), "").unwrap();
    let status = traffic.wait_timeout(Duration::from_secs(30)).unwrap();
    let log = traffic.log().unwrap_or_default();
    assert!(status.success(), "client: {log}");
    let text = std::fs::read_to_string(ctl.join("result.json")).unwrap();
    let result: serde_json::Value = serde_json::from_str(&text).unwrap();

    // From the moment the first of them saw the other: what begins before
    // is the partition's, where each owns every bucket.
    let met = NODES
        .iter()
        .filter_map(|n| both_applied_at(&cluster, n))
        .min()
        .unwrap();
    let after = |v: &serde_json::Value| v["start"].as_u64().unwrap() >= met;
    let flows: Vec<&serde_json::Value> = result["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| after(f) && f["sent"] == 20)
        .collect();
    let conns: Vec<&serde_json::Value> = result["conns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| after(c))
        .collect();
    assert!(
        flows.len() > 200 && conns.len() > 100,
        "the client ran through the meeting: {} flows, {} connections",
        flows.len(),
        conns.len()
    );
    let changes = table_changes(&cluster, &NODES);
    let (twice, in_the_margin): (Vec<&&serde_json::Value>, Vec<&&serde_json::Value>) = flows
        .iter()
        .filter(|f| f["dupes"].as_u64() != Some(0) || f["nodes"].as_array().unwrap().len() > 1)
        .partition(|f| {
            // Begun within the cut margin of a table change: README "Farm
            // nodes" allows both nodes to answer it.
            !f["first"]
                .as_u64()
                .is_some_and(|first| in_margin(first, &changes))
        });
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    for c in &conns {
        *results
            .entry(c["result"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let failed: Vec<&&serde_json::Value> = conns
        .iter()
        .filter(|c| c["result"].as_str().unwrap().starts_with("error:"))
        .collect();
    eprintln!(
        "after the meeting: {} UDP flows, {} answered by two nodes ({} more begun within the \
         cut margin of a table change); {} connections: {results:?}",
        flows.len(),
        twice.len(),
        in_the_margin.len(),
        conns.len()
    );
    if !twice.is_empty() || !failed.is_empty() {
        panic!(
            "nodes met at {met} ns: UDP flows answered by two nodes: {twice:?}\n\
             failed connections: {failed:?}\n{}",
            diagnostics(&cluster, &NODES)
        );
    }
}
