//! Load spread over the nodes of a farm, one ping reply, and failover when
//! a whole host dies.

use std::{collections::BTreeMap, net::Ipv4Addr, process::Command, time::Duration};

use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{self, Lab, LabBuilder, LabProcess},
};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// An HTTP server answering every GET with the node's name.
const SERVER: &str = r#"
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

/// Makes N connections to the VIP, one request each, and prints which node
/// answered how often, and how many failed.
const CLIENT: &str = r#"
import socket, json, sys, collections
vip, n = sys.argv[1], int(sys.argv[2])
counts, fails = collections.Counter(), 0
for _ in range(n):
    try:
        s = socket.create_connection((vip, 80), timeout=2)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        counts[data.split(b"\r\n\r\n", 1)[1].decode()] += 1
    except OSError:
        fails += 1
print(json.dumps({"counts": counts, "fails": fails}))
"#;

fn vip() -> Ipv4Addr {
    lab::lab_ipv4(200)
}

fn farm_toml() -> String {
    format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\
         xdp_mode = \"generic\"\n\n[[module.rule]]\nproto = \"tcp\"\nport = 80\nfilter = \"source_port\"\n",
        vip()
    )
}

struct Outcome {
    counts: BTreeMap<String, u64>,
    fails: u64,
}

fn connect_many(lab: &Lab, n: u32) -> Outcome {
    let output = lab
        .host("client")
        .run_timeout(
            Command::new("/usr/bin/python3").args([
                "-c",
                CLIENT,
                &vip().to_string(),
                &n.to_string(),
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(output.status.success(), "client failed: {output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let counts = json["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    Outcome {
        counts,
        fails: json["fails"].as_u64().unwrap(),
    }
}

/// Starts the web servers and the daemons, and waits until every node
/// serves the farm and sees the two others.
fn farm(lab: &Lab) -> (Cluster<'_>, Vec<LabProcess>) {
    let servers = NODES
        .iter()
        .map(|n| {
            lab.host(n)
                .spawn(
                    "web",
                    Command::new("/usr/bin/python3").args(["-c", SERVER, n]),
                )
                .unwrap()
        })
        .collect();
    let mut cluster = Cluster::configure(lab, &NODES, 1, Timing::default(), &farm_toml()).unwrap();
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
                            .any(|m| m.name == "web" && m.state == "UP" && m.phase == "ready")
                },
            )
            .unwrap();
    }
    (cluster, servers)
}

#[test]
fn three_nodes_share_3000_connections_evenly_and_a_ping_gets_one_reply() {
    let lab = LabBuilder::new("farmspread")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let (cluster, _servers) = farm(&lab);
    // The tables converge within a heartbeat or two of every node being UP.
    let answered = lab::wait_until(Duration::from_secs(10), "the VIP to answer", || {
        Ok(connect_many(&lab, 20).fails == 0)
    });
    if let Err(error) = answered {
        let logs: Vec<String> = NODES
            .iter()
            .map(|n| format!("--- {n}:\n{}", cluster.log(n).unwrap_or_default()))
            .collect();
        let client = lab
            .host("client")
            .sh("ip neigh; ip addr")
            .unwrap_or_default();
        panic!("{error:#}\n{}\nclient:\n{client}", logs.join("\n"));
    }

    let outcome = connect_many(&lab, 3000);
    eprintln!(
        "3000 connections: {:?}, {} failed",
        outcome.counts, outcome.fails
    );
    assert_eq!(
        outcome.fails, 0,
        "every connection succeeds: {:?}",
        outcome.counts
    );
    for node in NODES {
        let got = outcome.counts.get(node).copied().unwrap_or(0);
        assert!(
            (850..=1150).contains(&got),
            "expected each node within ±15% of 1000 connections, saw {:?}",
            outcome.counts
        );
    }

    let ping = lab
        .host("client")
        .run(Command::new("ping").args(["-c", "3", "-i", "0.2", "-W", "1", &vip().to_string()]))
        .unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "the VIP answers pings: {text}");
    assert!(
        text.contains("3 received") && !text.contains("DUP!"),
        "exactly one reply per ping: {text}"
    );

    let buckets = cluster.cli("n1", &["buckets", "web"]).unwrap();
    let table = String::from_utf8_lossy(&buckets.stdout);
    assert!(buckets.status.success(), "halo buckets: {buckets:?}");
    for node in NODES {
        assert!(table.contains(node), "the table shows {node}: {table}");
    }
}

#[test]
fn when_a_host_dies_its_buckets_move_to_the_survivors() {
    let lab = LabBuilder::new("farmkill")
        .hosts(&["n1", "n2", "n3", "client"])
        .build()
        .unwrap();
    let (cluster, _servers) = farm(&lab);
    lab::wait_until(Duration::from_secs(10), "the VIP to answer", || {
        Ok(connect_many(&lab, 20).fails == 0)
    })
    .unwrap();

    lab.kill_host("n3").unwrap();
    let killed = std::time::Instant::now();
    lab::wait_until(
        Duration::from_secs(10),
        "every connection to succeed again",
        || Ok(connect_many(&lab, 30).fails == 0),
    )
    .unwrap();
    eprintln!(
        "all connections succeed again {} ms after n3 died",
        killed.elapsed().as_millis()
    );

    let outcome = connect_many(&lab, 300);
    assert_eq!(outcome.fails, 0, "{:?}", outcome.counts);
    assert!(
        !outcome.counts.contains_key("n3"),
        "n3 is dead: {:?}",
        outcome.counts
    );
    for node in ["n1", "n2"] {
        assert!(
            outcome.counts.get(node).copied().unwrap_or(0) > 90,
            "{:?}",
            outcome.counts
        );
    }
    // Both survivors agree on the table, and every bucket has one owner.
    for node in ["n1", "n2"] {
        let out = cluster.cli(node, &["buckets", "web", "--json"]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let owners = json["owners"].as_array().unwrap();
        assert!(
            owners.iter().all(|o| !o.is_null()),
            "every bucket has an owner on {node}"
        );
        let members: Vec<&str> = json["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node"].as_str().unwrap())
            .collect();
        assert_eq!(
            members,
            ["n1", "n2"],
            "{node}'s table has the survivors only"
        );
    }
}
