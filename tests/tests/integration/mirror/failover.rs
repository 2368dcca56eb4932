//! Failover of a mirror: the primary host dies, the secondary serves the
//! VIP with the data; the old primary returns, resynchronises only what
//! changed and becomes the secondary. And durability: no record that an
//! fsync acknowledged is lost when the primary dies.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use halo_tests::lab::{self, Lab, LabBuilder, LabProcess};

use super::common::{self, vip, wait_module, DIR, MODULE};

/// An HTTP server on port 80 answering its node's name.
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
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
"#;

fn server(lab: &Lab, node: &str) -> LabProcess {
    lab.host(node)
        .spawn(
            "web",
            Command::new("/usr/bin/python3").args(["-c", SERVER, node]),
        )
        .unwrap()
}

/// Which node answers on the VIP, if one does within a second.
fn answer(lab: &Lab) -> Option<String> {
    let out = lab
        .host("client")
        .sh(&format!("curl -s --max-time 1 http://{}/ || true", vip()))
        .ok()?;
    (!out.is_empty()).then_some(out)
}

/// The bytes the primary reported sending for the last resynchronisation.
fn resync_bytes(cluster: &halo_tests::cluster::Cluster<'_>, node: &str) -> Option<u64> {
    cluster
        .module_log(node, MODULE)
        .ok()?
        .iter()
        .rev()
        .find_map(|e| {
            let rest = e
                .text
                .strip_prefix("the secondary is in sync with generation ")?;
            rest.split(": ")
                .nth(1)?
                .strip_suffix(" bytes sent")?
                .parse()
                .ok()
        })
}

#[test]
fn the_secondary_takes_over_the_vip_and_the_old_primary_resyncs_only_what_changed() {
    let lab = LabBuilder::new("mirrorfail")
        .hosts(&["n1", "n2", "client"])
        .build()
        .unwrap();
    lab.host("n1")
        .sh(&format!("head -c 20000000 /dev/urandom > {DIR}/big.bin"))
        .unwrap();
    let _web2 = server(&lab, "n2");
    let _web1 = server(&lab, "n1");
    let mut cluster = common::start(&lab, "", "n1");
    common::wait_identical(&lab, Duration::from_secs(60));
    lab::wait_until(Duration::from_secs(10), "n1 to answer on the VIP", || {
        Ok(answer(&lab).as_deref() == Some("n1"))
    })
    .unwrap();

    // The primary host dies.
    let killed = Instant::now();
    lab.kill_host("n1").unwrap();
    lab::wait_until(Duration::from_secs(10), "n2 to answer on the VIP", || {
        Ok(answer(&lab).as_deref() == Some("n2"))
    })
    .unwrap();
    eprintln!(
        "the VIP answered from n2 {} ms after n1 died",
        killed.elapsed().as_millis()
    );
    // The VIP is claimed before start_prim runs: ALONE is ready once it has.
    wait_module(&cluster, "n2", "ALONE", Duration::from_secs(10));

    // n2 serves and writes: 2 MB into the big file, a new 1 MB file.
    lab.host("n2")
        .sh(&format!(
            "dd if=/dev/urandom of={DIR}/big.bin bs=1M count=2 seek=5 conv=notrunc status=none && \
             head -c 1000000 /dev/urandom > {DIR}/new.bin"
        ))
        .unwrap();
    let changed: u64 = 3_000_000;

    // n1 comes back: it follows n2 and receives only what changed.
    if let Err(error) = cluster.start("n1") {
        let sockets = lab
            .host("n1")
            .sh("ss -uapn; ps -eo pid,stat,comm,wchan:30 | grep -v ' Z ' | tail -20")
            .unwrap_or_default();
        panic!(
            "{error:#}\n{}\n{sockets}",
            cluster.log("n1").unwrap_or_default()
        );
    }
    wait_module(&cluster, "n1", "SECOND", Duration::from_secs(60));
    wait_module(&cluster, "n2", "PRIM", Duration::from_secs(30));
    common::wait_identical(&lab, Duration::from_secs(60));
    let sent = resync_bytes(&cluster, "n2").expect("n2 logs the resync's bytes");
    eprintln!("resync after {changed} changed bytes sent {sent} bytes");
    assert!(
        sent as f64 <= 1.2 * changed as f64 + 1_000_000.0,
        "the resync sent {sent} bytes for {changed} changed"
    );
}

/// Appends numbered records, each made durable with fsync before it is
/// acknowledged on stdout.
const WRITER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
while True:
    os.write(fd, b"%d\n" % i)
    os.fsync(fd)
    print(i, flush=True)
    i += 1
"#;

#[test]
fn no_acknowledged_fsync_is_lost_when_the_primary_host_dies() {
    let runs: u32 = std::env::var("HALO_MIRROR_DURABILITY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lab = LabBuilder::new("mirrordur")
        .hosts(&["n1", "n2"])
        .build()
        .unwrap();
    let mut cluster = common::start(&lab, "", "n1");
    let (mut primary, mut secondary) = ("n1", "n2");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for run in 0..runs {
        let file = format!("{DIR}/records-{run}");
        let writer = lab
            .host(primary)
            .spawn(
                "writer",
                Command::new("/usr/bin/python3").args(["-c", WRITER, &file]),
            )
            .unwrap();
        // A pseudo-random moment, 200 to 1200 ms into the writes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 1000));
        lab.kill_host(primary).unwrap();
        let acked: Vec<u64> = writer
            .log()
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let last = *acked.last().expect("the writer acknowledged records");
        wait_module(&cluster, secondary, "ALONE", Duration::from_secs(10));
        let held = lab.host(secondary).sh(&format!("cat {file}")).unwrap();
        let held: Vec<u64> = held.lines().filter_map(|l| l.parse().ok()).collect();
        let missing: Vec<u64> = (0..=last).filter(|i| !held.contains(i)).collect();
        eprintln!(
            "run {run}: {} records acknowledged, {} on the new primary",
            last + 1,
            held.len()
        );
        assert!(
            missing.is_empty(),
            "run {run}: acknowledged records missing on {secondary}: {missing:?}"
        );
        // The dead node returns as the secondary; roles swap for the next run.
        cluster.start(primary).unwrap();
        wait_module(&cluster, primary, "SECOND", Duration::from_secs(60));
        wait_module(&cluster, secondary, "PRIM", Duration::from_secs(30));
        std::mem::swap(&mut primary, &mut secondary);
    }
}
