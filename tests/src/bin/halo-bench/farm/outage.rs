//! Client-observed outage when a node dies: a probe (TCP connect + HTTP
//! GET, a new connection every 10 ms) to a VIP served by a three-node halo
//! farm, and to a VIP that keepalived (VRRP) moves between two nodes, in
//! one lab.
//!
//! A death is a power loss: the switch cuts the host off, then every
//! process in it is SIGKILLed; the node that dies is always the one that
//! answers the probe. Between deaths the host comes back: addresses its
//! kernel held for a VIP are removed (a reboot forgets them), its links are
//! healed, its web server and daemon restarted, and the probe must answer
//! steadily again before the next death.
//!
//! The outage of one death is read from the probe's own log: from the
//! start of the first failed request after the death to the start of the
//! first request that succeeded after it.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use halo_tests::{
    cluster::{Cluster, Timing},
    lab::{self, Lab, LabBuilder, LabProcess},
};

use crate::report::{median, Table};
use crate::stats::{human, ms, Summary};

/// The hidden subcommand that makes `halo-bench` the probe.
pub const PROBE_COMMAND: &str = "probe";

const FARM: [&str; 3] = ["n1", "n2", "n3"];
const VRRP: [&str; 2] = ["k1", "k2"];
const CLIENT: &str = "client";
const MODULE: &str = "web";
const PORT: u16 = 80;
/// How often the probe starts a request.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long one request may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Successful requests in a row that make the service steady.
const STEADY: usize = 30;
/// How long a service may take to come back or to become steady.
const PATIENCE: Duration = Duration::from_secs(30);

fn halo_vip() -> Ipv4Addr {
    lab::lab_ipv4(200)
}

fn vrrp_vip() -> Ipv4Addr {
    lab::lab_ipv4(201)
}

/// What `outage::run` was asked to do.
pub struct Options {
    pub kills: u32,
    pub halo_timings: Vec<Timing>,
    pub advert_ints: Vec<Duration>,
}

/// One service setting measured.
pub struct SettingResult {
    pub label: String,
    /// The configured detection timeout: halo's `timeout`, keepalived's
    /// master down interval (3 × advert + skew).
    pub timeout: Duration,
    pub outages: Vec<Duration>,
    /// Requests that failed, per death.
    pub failed: Vec<usize>,
    pub halo: bool,
    pub heartbeat: Duration,
}

/// An HTTP server on port 80 (IPv4 and IPv6, every address) answering
/// every GET with the host's name.
const SERVER: &str = r#"
import http.server, socket, sys
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
    address_family = socket.AF_INET6
    request_queue_size = 256
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 80), Handler).serve_forever()
"#;

fn start_server(lab: &Lab, node: &str) -> Result<LabProcess> {
    lab.host(node).spawn(
        "web",
        Command::new("/usr/bin/python3").args(["-c", SERVER, node]),
    )
}

/// Builds the lab and measures every setting.
pub fn run(options: &Options) -> Result<Vec<SettingResult>> {
    let mut hosts: Vec<&str> = FARM.to_vec();
    hosts.extend(VRRP);
    hosts.push(CLIENT);
    let lab = LabBuilder::new("bench_farm_outage")
        .hosts(&hosts)
        .build()
        .context("build the outage lab")?;
    let mut results = Vec::new();
    for &timing in &options.halo_timings {
        results.push(measure_halo(&lab, timing, options.kills)?);
    }
    for &advert in &options.advert_ints {
        results.push(measure_keepalived(&lab, advert, options.kills)?);
    }
    Ok(results)
}

fn farm_toml() -> String {
    format!(
        "[[module]]\nname = \"{MODULE}\"\nkind = \"farm\"\ninterface = \"eth0\"\n\
         vips = [\"{}\"]\nxdp_mode = \"generic\"\n\n[[module.rule]]\nproto = \"tcp\"\n\
         port = {PORT}\nfilter = \"source_addr\"\n",
        halo_vip()
    )
}

fn farm_ready(cluster: &Cluster, node: &str) -> Result<()> {
    cluster.wait_status(node, PATIENCE, "farm UP with both peers", |s| {
        s.peers.iter().filter(|p| p.up).count() == FARM.len() - 1
            && s.modules
                .iter()
                .any(|m| m.name == MODULE && m.state == "UP" && m.phase == "ready")
    })?;
    Ok(())
}

fn measure_halo(lab: &Lab, timing: Timing, kills: u32) -> Result<SettingResult> {
    let label = format!(
        "halo farm, pulse {} timeout {}",
        human(timing.pulse),
        human(timing.timeout)
    );
    println!("{label}: {kills} deaths");
    let mut servers = BTreeMap::new();
    for node in FARM {
        servers.insert(node, start_server(lab, node)?);
    }
    let mut cluster = Cluster::configure(lab, &FARM, 1, timing, &farm_toml())?;
    if let Err(error) = cluster.start_all() {
        let logs: Vec<String> = FARM
            .iter()
            .map(|n| format!("--- {n}:\n{}", cluster.log(n).unwrap_or_default()))
            .collect();
        return Err(error.context(format!("the daemons' logs:\n{}", logs.join("\n"))));
    }
    for node in FARM {
        farm_ready(&cluster, node)?;
    }
    let probe = Probe::start(lab, halo_vip())?;
    let mut result = SettingResult {
        label,
        timeout: timing.timeout,
        outages: Vec::new(),
        failed: Vec::new(),
        halo: true,
        heartbeat: timing.pulse,
    };
    for index in 1..=kills {
        let victim = probe.wait_steady()?;
        let victim = *FARM
            .iter()
            .find(|n| **n == victim)
            .with_context(|| format!("the probe was answered by {victim:?}, not a farm node"))?;
        let killed = power_off(lab, victim)?;
        let (outage, failed) = probe.wait_outage(killed)?;
        println!(
            "  {index:>3}: {victim} died, outage {} ms ({failed} requests failed)",
            ms(outage)
        );
        result.outages.push(outage);
        result.failed.push(failed);
        lab.heal(victim)?;
        servers.insert(victim, start_server(lab, victim)?);
        cluster.start(victim)?;
        for node in FARM {
            farm_ready(&cluster, node)?;
        }
    }
    probe.wait_steady()?;
    Ok(result)
}

/// keepalived's master down interval at `advert` with priority 100 (RFC
/// 5798: 3 × advert + (256 − priority) × advert / 256).
fn master_down(advert: Duration) -> Duration {
    advert * 3 + advert * 156 / 256
}

fn keepalived_conf(node: &str, advert: Duration) -> String {
    format!(
        "global_defs {{\n  router_id {node}\n  vrrp_version 3\n}}\n\
         vrrp_instance bench {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  \
         virtual_router_id {}\n  priority 100\n  advert_int {}\n  \
         virtual_ipaddress {{\n    {}/16 dev eth0\n  }}\n}}\n",
        // One router id per setting, so that nothing of a previous
        // setting can speak for this one.
        1 + advert.as_millis() % 250,
        advert.as_secs_f64(),
        vrrp_vip()
    )
}

const KEEPALIVED_CONF: &str = "/etc/halo/keepalived.conf";

fn start_keepalived(lab: &Lab, node: &str) -> Result<LabProcess> {
    // A reboot clears /run: a pid file left by a killed keepalived may name
    // a pid that is now someone else's, and keepalived would then refuse
    // to start ("daemon is already running").
    lab.host(node)
        .sh("rm -f /run/halo/keepalived.pid /run/halo/keepalived-vrrp.pid")?;
    lab.host(node).spawn(
        "keepalived",
        Command::new("keepalived").args([
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            "--use-file",
            KEEPALIVED_CONF,
            "--pid",
            "/run/halo/keepalived.pid",
            "--vrrp_pid",
            "/run/halo/keepalived-vrrp.pid",
        ]),
    )
}

fn measure_keepalived(lab: &Lab, advert: Duration, kills: u32) -> Result<SettingResult> {
    let label = format!("keepalived 2 nodes, advert_int {}", advert.as_secs_f64());
    println!("{label}: {kills} deaths");
    let mut processes: BTreeMap<&str, (LabProcess, LabProcess)> = BTreeMap::new();
    for node in VRRP {
        std::fs::write(
            lab.host(node).outside_path(KEEPALIVED_CONF),
            keepalived_conf(node, advert),
        )
        .context("write keepalived.conf")?;
        processes.insert(
            node,
            (start_server(lab, node)?, start_keepalived(lab, node)?),
        );
    }
    // The client starts each setting without a neighbour entry for the
    // VIP, as one that never spoke to it: an entry left by the previous
    // setting may point at a host the new master's announcements do not
    // replace in time.
    lab.host(CLIENT)
        .sh(&format!("ip neigh flush to {}", vrrp_vip()))?;
    let probe = Probe::start(lab, vrrp_vip())?;
    let mut result = SettingResult {
        label,
        timeout: master_down(advert),
        outages: Vec::new(),
        failed: Vec::new(),
        halo: false,
        heartbeat: advert,
    };
    for index in 1..=kills {
        let victim = probe.wait_steady().map_err(|error| {
            let logs: Vec<String> = processes
                .iter()
                .map(|(node, (_, keepalived))| {
                    format!("--- {node}:\n{}", keepalived.log().unwrap_or_default())
                })
                .collect();
            error.context(format!("keepalived's logs:\n{}", logs.join("\n")))
        })?;
        let victim = *VRRP
            .iter()
            .find(|n| **n == victim)
            .with_context(|| format!("the probe was answered by {victim:?}, not a VRRP node"))?;
        let killed = power_off(lab, victim)?;
        let (outage, failed) = probe.wait_outage(killed)?;
        println!(
            "  {index:>3}: {victim} died, outage {} ms ({failed} requests failed)",
            ms(outage)
        );
        result.outages.push(outage);
        result.failed.push(failed);
        // A reboot forgets the VIP that keepalived had no time to remove.
        lab.host(victim).sh(&format!(
            "ip address del {}/16 dev eth0 2>/dev/null || true",
            vrrp_vip()
        ))?;
        lab.heal(victim)?;
        processes.insert(
            victim,
            (start_server(lab, victim)?, start_keepalived(lab, victim)?),
        );
    }
    probe.wait_steady()?;
    // Stop both before the VIP can move again, and forget the VIP.
    // keepalived's VRRP child outlives a SIGKILL of its parent: every
    // process of the host goes.
    drop(processes);
    for node in VRRP {
        lab.kill_host(node)?;
        lab.host(node).sh(&format!(
            "ip address del {}/16 dev eth0 2>/dev/null || true",
            vrrp_vip()
        ))?;
    }
    Ok(result)
}

/// Cuts `node` off the network, then SIGKILLs every process in it; returns
/// the time of the cut.
fn power_off(lab: &Lab, node: &str) -> Result<SystemTime> {
    let at = SystemTime::now();
    lab.cut(node)?;
    lab.kill_host(node)?;
    Ok(at)
}

/// The probe process in the client host, and its log.
struct Probe {
    process: LabProcess,
}

/// One request of the probe.
#[derive(Debug, Clone)]
struct Request {
    start: SystemTime,
    /// The node that answered, or `None` if the request failed.
    answer: Option<String>,
}

impl Probe {
    fn start(lab: &Lab, vip: Ipv4Addr) -> Result<Probe> {
        let exe = std::env::current_exe().context("find the bench's own executable")?;
        let process = lab.host(CLIENT).spawn(
            "probe",
            Command::new(exe).args([PROBE_COMMAND, &format!("{vip}:{PORT}")]),
        )?;
        Ok(Probe { process })
    }

    fn requests(&self) -> Result<Vec<Request>> {
        let log = self.process.log()?;
        let mut requests: Vec<Request> = log.lines().filter_map(parse_request).collect();
        requests.sort_by_key(|r| r.start);
        Ok(requests)
    }

    /// Waits until the last [`STEADY`] finished requests were all answered
    /// by one node, and returns it.
    fn wait_steady(&self) -> Result<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let requests = self.requests()?;
            // Requests still in flight are not in the log yet: look at
            // those that started more than a probe timeout ago.
            let horizon = SystemTime::now() - PROBE_TIMEOUT;
            let done: Vec<&Request> = requests.iter().filter(|r| r.start < horizon).collect();
            if done.len() >= STEADY {
                let last = &done[done.len() - STEADY..];
                if let Some(node) = &last[0].answer {
                    if last.iter().all(|r| r.answer.as_ref() == Some(node)) {
                        return Ok(node.clone());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the probe did not answer steadily within {PATIENCE:?}; last requests: {:?}",
                    &requests[requests.len().saturating_sub(5)..]
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the service to come back after a death at `killed`;
    /// returns the outage and the number of failed requests.
    fn wait_outage(&self, killed: SystemTime) -> Result<(Duration, usize)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let requests = self.requests()?;
            // A request in flight at the death may fail too; and only
            // requests that have surely ended (started a probe timeout
            // ago, plus slack) count, or a late success could be taken
            // before an earlier request that is still failing.
            let from = killed - PROBE_TIMEOUT;
            let horizon = SystemTime::now() - PROBE_TIMEOUT - Duration::from_millis(200);
            let after: Vec<&Request> = requests
                .iter()
                .filter(|r| r.start >= from && r.start < horizon)
                .collect();
            if let Some(first_fail) = after.iter().position(|r| r.answer.is_none()) {
                let failed_at = after[first_fail].start;
                if let Some(back) = after[first_fail..].iter().position(|r| r.answer.is_some()) {
                    let back = first_fail + back;
                    let failed = after[first_fail..back]
                        .iter()
                        .filter(|r| r.answer.is_none())
                        .count();
                    let outage = after[back]
                        .start
                        .duration_since(failed_at)
                        .unwrap_or_default();
                    return Ok((outage, failed));
                }
            } else if after
                .iter()
                .filter(|r| r.start > killed + PROBE_TIMEOUT)
                .count()
                >= STEADY
            {
                // Nothing failed: no outage at all.
                return Ok((Duration::ZERO, 0));
            }
            if Instant::now() > deadline {
                bail!("the service did not come back within {PATIENCE:?} of the death");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `<start µs since the epoch> ok <node>` or `<start µs> fail <why>`.
fn parse_request(line: &str) -> Option<Request> {
    let mut words = line.split_whitespace();
    let micros: u64 = words.next()?.parse().ok()?;
    let start = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
    let answer = match words.next()? {
        "ok" => Some(words.next()?.to_owned()),
        "fail" => None,
        _ => return None,
    };
    Some(Request { start, answer })
}

/// The body of the hidden `probe` subcommand: starts a new TCP connection
/// with one HTTP GET to `target` every [`PROBE_EVERY`], each on its own
/// thread, and prints one line per request when it ends; runs until killed.
pub fn probe(target: SocketAddr) -> Result<()> {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut next = Instant::now();
    loop {
        let start = SystemTime::now();
        let out = Arc::clone(&out);
        thread::spawn(move || {
            let micros = start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let line = match request(target) {
                Ok(node) => format!("{micros} ok {node}\n"),
                Err(error) => format!("{micros} fail {}\n", error.kind()),
            };
            let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        });
        next += PROBE_EVERY;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn request(target: SocketAddr) -> std::io::Result<String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT)?;
    let left = PROBE_TIMEOUT
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
        .ok_or(std::io::ErrorKind::TimedOut)?;
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim())
        .filter(|body| !body.is_empty() && !body.contains(char::is_whitespace))
        .ok_or(std::io::ErrorKind::InvalidData)?;
    Ok(body.to_owned())
}

/// The outage table: one row per setting.
pub fn table(results: &[SettingResult]) -> Table {
    let mut table = Table::new(
        format!(
            "client-observed outage when a node dies (a new TCP connection + HTTP GET every {} \
             ms, {} s timeout each; death = cut off the switch + SIGKILL of every process of \
             the node answering the probe)",
            PROBE_EVERY.as_millis(),
            PROBE_TIMEOUT.as_secs()
        ),
        &[
            "service",
            "configured timeout",
            "deaths",
            "p50 ms",
            "max ms",
            "target",
            "",
        ],
    );
    for r in results {
        let Some(summary) = Summary::of(&r.outages) else {
            continue;
        };
        let (target, verdict) = if r.halo {
            let bound = r.timeout + Duration::from_millis(50);
            let keepalived = results
                .iter()
                .filter(|k| !k.halo && k.heartbeat == r.heartbeat)
                .filter_map(|k| Summary::of(&k.outages))
                .next();
            let met_bound = summary.max <= bound;
            let met_vrrp = keepalived.is_none_or(|k| summary.p50 < k.p50);
            (
                match keepalived {
                    Some(k) => format!(
                        "≤ {} ms; < keepalived's p50 {} ms at advert {}",
                        ms(bound),
                        ms(k.p50),
                        human(r.heartbeat)
                    ),
                    None => format!("≤ {} ms", ms(bound)),
                },
                if met_bound && met_vrrp {
                    "met"
                } else {
                    "MISSED"
                },
            )
        } else {
            ("baseline".to_owned(), "")
        };
        table.row(vec![
            r.label.clone(),
            if r.halo {
                format!("{} ms", ms(r.timeout))
            } else {
                format!("{} ms (master down)", ms(r.timeout))
            },
            summary.count.to_string(),
            ms(summary.p50),
            ms(summary.max),
            target,
            verdict.to_owned(),
        ]);
    }
    let mean_failed: Vec<f64> = results
        .iter()
        .map(|r| median(r.failed.iter().map(|&f| f as f64)))
        .collect();
    table.note(format!(
        "outage = start of the first failed request after the death → start of the first \
         answered one; median failed requests per death: {}",
        results
            .iter()
            .zip(mean_failed)
            .map(|(r, f)| format!("{} {f:.0}", r.label))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    table.note(
        "halo: 3 nodes, filter by client address, generic XDP on veth; keepalived: VRRPv3, \
         2 nodes, state BACKUP + nopreempt, priority 100",
    );
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_parse_into_requests() {
        let ok = parse_request("1700000000123456 ok n2").unwrap();
        assert_eq!(ok.answer.as_deref(), Some("n2"));
        assert_eq!(
            ok.start,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)
        );
        assert_eq!(parse_request("17 fail TimedOut").unwrap().answer, None);
        assert!(parse_request("garbage").is_none());
    }

    #[test]
    fn master_down_interval_follows_rfc_5798() {
        assert_eq!(master_down(Duration::from_secs(1)).as_millis(), 3609);
        assert_eq!(master_down(Duration::from_millis(100)).as_millis(), 360);
    }

    #[test]
    fn keepalived_config_takes_sub_second_adverts() {
        let conf = keepalived_conf("k1", Duration::from_millis(100));
        assert!(conf.contains("advert_int 0.1\n"));
        assert!(conf.contains("vrrp_version 3"));
    }
}
