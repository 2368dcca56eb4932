//! Client-observed failover of a mirror: a probe on a client host (the
//! farm bench's: a TCP connect + HTTP GET every 10 ms) to the mirror's VIP,
//! a web server on both nodes; the primary host is cut off and killed, the
//! secondary takes the VIP; the dead host returns as the secondary (after
//! its resync) before the next death, so deaths alternate between nodes.
//! The outage is from the first failed request to the first success after.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{Lab, LabBuilder, LabProcess},
};

use super::{mirror_toml, vip, wait_module};
use crate::farm::outage::PROBE_COMMAND;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const STEADY: usize = 30;
const PATIENCE: Duration = Duration::from_secs(60);

const SERVER: &str = r#"
import http.server, sys
body = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256
Server(("0.0.0.0", 80), Handler).serve_forever()
"#;

fn server(lab: &Lab, node: &str) -> Result<LabProcess> {
    lab.host(node).spawn(
        "web",
        Command::new("/usr/bin/python3").args(["-c", SERVER, node]),
    )
}

pub struct FailoverResult {
    pub timeout: Duration,
    pub outages: Vec<Duration>,
}

/// `(start, answering node)` of every finished request of the probe.
fn requests(probe: &LabProcess) -> Result<Vec<(SystemTime, Option<String>)>> {
    let mut out: Vec<(SystemTime, Option<String>)> = probe
        .log()?
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let micros: u64 = words.next()?.parse().ok()?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
            match words.next()? {
                "ok" => Some((at, Some(words.next()?.to_owned()))),
                "fail" => Some((at, None)),
                _ => None,
            }
        })
        .collect();
    out.sort_by_key(|r| r.0);
    Ok(out)
}

/// The node that answered the last [`STEADY`] finished requests.
fn wait_steady(probe: &LabProcess) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let horizon = SystemTime::now() - PROBE_TIMEOUT;
        let done: Vec<_> = requests(probe)?
            .into_iter()
            .filter(|r| r.0 < horizon)
            .collect();
        if done.len() >= STEADY {
            let last = &done[done.len() - STEADY..];
            if let Some(node) = &last[0].1 {
                if last.iter().all(|r| r.1.as_ref() == Some(node)) {
                    return Ok(node.clone());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the probe did not answer steadily within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The outage after a death at `killed`.
fn wait_outage(probe: &LabProcess, killed: SystemTime) -> Result<Duration> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let horizon = SystemTime::now() - PROBE_TIMEOUT - Duration::from_millis(200);
        let after: Vec<_> = requests(probe)?
            .into_iter()
            .filter(|r| r.0 >= killed - PROBE_TIMEOUT && r.0 < horizon)
            .collect();
        if let Some(first) = after.iter().position(|r| r.1.is_none()) {
            if let Some(back) = after[first..].iter().find(|r| r.1.is_some()) {
                return Ok(back.0.duration_since(after[first].0).unwrap_or_default());
            }
        } else if after
            .iter()
            .filter(|r| r.0 > killed + PROBE_TIMEOUT)
            .count()
            >= STEADY
        {
            return Ok(Duration::ZERO);
        }
        if Instant::now() > deadline {
            bail!("the service did not come back within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(kills: u32) -> Result<FailoverResult> {
    let lab = LabBuilder::new("bench_mirror_failover")
        .hosts(&["n1", "n2", "client"])
        .build()
        .context("build the failover lab")?;
    lab.host("n1").sh(&format!(
        "head -c 4000000 /dev/urandom > {}/data.bin",
        super::DIR
    ))?;
    let timing = Timing::default();
    let mut servers = vec![server(&lab, "n1")?, server(&lab, "n2")?];
    let mut cluster = Cluster::configure(&lab, &["n1", "n2"], 1, timing, &mirror_toml())?;
    cluster.start_all()?;
    wait_module(&cluster, "n1", "PRIM")?;
    wait_module(&cluster, "n2", "SECOND")?;
    let exe = std::env::current_exe()?;
    let probe = lab.host("client").spawn(
        "probe",
        Command::new(exe).args([PROBE_COMMAND, &format!("{}:80", vip())]),
    )?;
    let mut outages = Vec::new();
    for index in 1..=kills {
        let victim = wait_steady(&probe)?;
        let survivor = if victim == "n1" { "n2" } else { "n1" };
        let killed = SystemTime::now();
        lab.cut(&victim)?;
        lab.kill_host(&victim)?;
        let outage = wait_outage(&probe, killed)?;
        println!(
            "  {index:>3}: {victim} died, outage {} ms",
            crate::stats::ms(outage)
        );
        outages.push(outage);
        lab.heal(&victim)?;
        // A reboot forgets the VIP the dead kernel held.
        let _ = lab.host(&victim).sh(&format!(
            "ip addr del {}/16 dev eth0 2>/dev/null || true",
            vip()
        ));
        servers.push(server(&lab, &victim)?);
        cluster.start(&victim)?;
        wait_module(&cluster, &victim, "SECOND")?;
        wait_module(&cluster, survivor, "PRIM")?;
    }
    drop(servers);
    Ok(FailoverResult {
        timeout: timing.timeout,
        outages,
    })
}
