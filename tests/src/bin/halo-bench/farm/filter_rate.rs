//! Packets per second one node filters: the farm XDP program against the
//! same policy written in nftables (`jhash ip saddr mod 4096` → a set of
//! the buckets this node owns → accept, else drop), under one load
//! generator, in one lab.
//!
//! The lab has two hosts: `gen` blasts TCP SYNs to the VIP from 4096
//! client addresses through an `AF_PACKET` socket (qdisc bypassed,
//! `sendmmsg` batches), pinned to CPU 0; `node` filters. The node's `eth0`
//! always holds an XDP program in driver mode (the farm's, or `farm_noop`
//! under the nftables policy) and runs threaded NAPI, so everything the
//! node does with a frame (the veth's poll, the filter, the stack for what
//! the filter keeps) happens in one kernel thread, pinned to CPU 1, apart
//! from the generator and the bridge. The figure that does not depend on whether the
//! generator keeps that thread busy is packets per second of that thread's
//! CPU time: frames the filter saw / CPU time of the thread. Frames the
//! filter keeps go to a blackhole route for the VIP (the same cost under
//! every filter).

use std::{
    fs,
    net::Ipv4Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::xdp::XdpMode;
use halo::ebpf::farm::FarmIngress;
use halo_common::farm::{filter, BucketState, FarmRule, PacketClass, BUCKETS};
use halo_tests::{
    frames::{self, Mac},
    lab::{Host, LabBuilder, LabProcess},
};

use crate::report::{median, Table};

/// The hidden subcommand that makes `halo-bench` the load generator.
pub const BLAST_COMMAND: &str = "blast";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// Client addresses the generator cycles through: 10.77.128.0 and up.
const SOURCES: u16 = 4096;
/// The node owns one bucket in three, as one node of a three-node farm.
const SHARE: u32 = 3;
const NFT_TABLE: &str = "halo_bench";
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// How long the generator runs before the window opens.
const WARM_UP: Duration = Duration::from_millis(700);

/// What `filter_rate::run` was asked to do.
pub struct Options {
    pub rounds: u32,
    pub window: Duration,
}

/// One way of filtering.
#[derive(Clone, Copy, PartialEq)]
pub enum Filter {
    XdpDriver,
    Nftables,
}

impl Filter {
    const ALL: [Filter; 2] = [Filter::XdpDriver, Filter::Nftables];

    fn name(self) -> &'static str {
        match self {
            Filter::XdpDriver => "farm XDP, driver mode (veth native)",
            Filter::Nftables => "farm_noop XDP (driver) + nftables ingress, jhash mod 4096 → owned",
        }
    }
}

/// One window of one filter.
#[derive(Clone, Copy)]
pub struct Window {
    /// Frames the generator sent, per second.
    pub offered: f64,
    /// Frames the filter saw, per second.
    pub filtered: f64,
    /// Share of the window the node's NAPI threads ran, 0 to 1.
    pub busy: f64,
    /// Frames the filter saw per second of the NAPI thread's CPU time.
    pub per_core: f64,
}

/// Every window of one filter.
pub struct FilterResult {
    pub filter: Filter,
    pub windows: Vec<Window>,
}

impl FilterResult {
    pub fn filter_name(&self) -> &'static str {
        self.filter.name()
    }

    pub fn per_core(&self) -> f64 {
        median(self.windows.iter().map(|w| w.per_core))
    }

    fn filtered(&self) -> f64 {
        median(self.windows.iter().map(|w| w.filtered))
    }

    fn offered(&self) -> f64 {
        median(self.windows.iter().map(|w| w.offered))
    }

    fn busy(&self) -> f64 {
        median(self.windows.iter().map(|w| w.busy))
    }
}

/// Builds the lab and measures every filter `rounds` times, in turn.
pub fn run(options: &Options) -> Result<Vec<FilterResult>> {
    let lab = LabBuilder::new("bench_farm_pps")
        .hosts(&["gen", "node"])
        .build()
        .context("build the filter-rate lab")?;
    let (gen, node) = (lab.host("gen"), lab.host("node"));
    let node_mac = node.enter(|| frames::mac_of("eth0"))?;
    let before = napi_threads()?;
    node.sh(&format!("ip route add blackhole {VIP}/32"))?;

    let mut results: Vec<FilterResult> = Filter::ALL
        .iter()
        .map(|&filter| FilterResult {
            filter,
            windows: Vec::new(),
        })
        .collect();
    for round in 1..=options.rounds {
        for result in &mut results {
            let window = measure(gen, node, node_mac, &before, result.filter, options.window)
                .with_context(|| format!("measure {}", result.filter.name()))?;
            println!(
                "  round {round}: {:<52} offered {:>9.0}/s, filtered {:>9.0}/s, NAPI threads busy \
                 {:>5.1} %, {:>9.0} per core-second",
                result.filter.name(),
                window.offered,
                window.filtered,
                window.busy * 100.0,
                window.per_core
            );
            result.windows.push(window);
        }
    }
    Ok(results)
}

/// The filter's state while it is installed.
enum Installed {
    Xdp(Box<FarmIngress>),
    /// The policy in nftables, over the no-op XDP program.
    Nft(#[allow(dead_code, reason = "held to keep farm_noop attached")] Box<FarmIngress>),
}

fn measure(
    gen: &Host,
    node: &Host,
    node_mac: Mac,
    napi_before: &[u32],
    filter: Filter,
    window: Duration,
) -> Result<Window> {
    let installed = match filter {
        Filter::XdpDriver => {
            let mut ingress = node.enter(|| FarmIngress::attach("eth0", XdpMode::Driver))?;
            ingress.configure(
                node_mac,
                &[(VIP.into(), [0x02, 0x76, 0x69, 0x70, 0, 1])],
                &[FarmRule {
                    proto: 6,
                    filter: filter::SOURCE_ADDR,
                    first_port: 80,
                    last_port: 80,
                    _pad: 0,
                }],
                Duration::from_secs(30),
            )?;
            let table: Vec<BucketState> = (0..BUCKETS)
                .map(|b| {
                    if b % SHARE == 0 {
                        BucketState::Owned
                    } else {
                        BucketState::NotMine
                    }
                })
                .collect();
            ingress.set_buckets(&table)?;
            Installed::Xdp(Box::new(ingress))
        }
        Filter::Nftables => {
            // The no-op program gives the veth the same NAPI receive path
            // (and the same copy into an XDP buffer) as the farm program:
            // without an XDP program, this kernel's veth hands frames over
            // in the sender's softirq, where the node's share of the work
            // cannot be told apart from the generator's.
            let mut noop = FarmIngress::load()?;
            node.enter(|| noop.attach_noop("eth0", XdpMode::Driver))?;
            node.sh(&format!("nft -f - <<'EOF'\n{}EOF\n", nft_policy()))?;
            Installed::Nft(Box::new(noop))
        }
    };
    let seen = |installed: &Installed| -> Result<u64> {
        match installed {
            Installed::Xdp(ingress) => Ok(ingress.class_counts()?.get(PacketClass::Ipv4)),
            Installed::Nft(_) => nft_seen(node),
        }
    };
    // Attaching or detaching XDP gives the veth a new NAPI context, which
    // is not threaded until threaded NAPI is turned on again (writing the
    // value it already has does nothing); then take every NAPI thread the
    // lab made.
    node.sh("echo 0 > /sys/class/net/eth0/threaded && echo 1 > /sys/class/net/eth0/threaded")?;
    let napi = wait_napi_threads(napi_before)?;
    for &pid in &napi {
        pin(pid, 1)?;
    }
    let blaster = start_blaster(gen, node_mac)?;
    thread::sleep(WARM_UP);
    let (sent0, seen0, cpu0, t0) = (
        tx_packets(gen)?,
        seen(&installed)?,
        threads_cpu(&napi)?,
        Instant::now(),
    );
    thread::sleep(window);
    let (sent1, seen1, cpu1, elapsed) = (
        tx_packets(gen)?,
        seen(&installed)?,
        threads_cpu(&napi)?,
        t0.elapsed(),
    );
    check_running(blaster)?;
    if let Installed::Nft(_) = installed {
        node.sh(&format!("nft delete table netdev {NFT_TABLE}"))?;
    }
    drop(installed);
    let secs = elapsed.as_secs_f64();
    let cpu = cpu1.saturating_sub(cpu0) as f64 / 1e9;
    let filtered = seen1.saturating_sub(seen0) as f64;
    ensure!(
        filtered > 0.0,
        "the filter saw no frame during the window: is the generator reaching the node?"
    );
    Ok(Window {
        offered: sent1.saturating_sub(sent0) as f64 / secs,
        filtered: filtered / secs,
        busy: cpu / secs,
        per_core: if cpu > 0.0 { filtered / cpu } else { f64::NAN },
    })
}

fn check_running(mut blaster: LabProcess) -> Result<()> {
    if let Some(status) = blaster.try_wait()? {
        bail!(
            "the load generator exited early ({status}): {}",
            blaster.log().unwrap_or_default()
        );
    }
    Ok(())
}

/// The nftables version of the farm's policy on the node: a frame to the
/// VIP is kept when the hash of its source address falls in a bucket the
/// node owns, else dropped; everything is counted first, as the XDP
/// program counts every frame by class.
fn nft_policy() -> String {
    let owned: Vec<String> = (0..BUCKETS)
        .filter(|b| b % SHARE == 0)
        .map(|b| format!("{b} : accept"))
        .collect();
    // An anonymous verdict map: nft 1.0.6 types jhash's result as a bare
    // integer, which only anonymous sets and maps take.
    format!(
        "table netdev {NFT_TABLE} {{\n\
         \tcounter seen {{ }}\n\
         \tchain ingress {{\n\
         \t\ttype filter hook ingress device \"eth0\" priority -500; policy accept;\n\
         \t\tcounter name \"seen\"\n\
         \t\tip daddr {VIP} jhash ip saddr mod {BUCKETS} vmap {{ {} }}\n\
         \t\tip daddr {VIP} drop\n\
         \t}}\n\
         }}\n",
        owned.join(", ")
    )
}

/// The packets of the policy's counter.
fn nft_seen(node: &Host) -> Result<u64> {
    let out = node.sh(&format!("nft list counter netdev {NFT_TABLE} seen"))?;
    let packets = out
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .with_context(|| format!("no packet count in {out:?}"))?;
    packets
        .parse()
        .with_context(|| format!("packet count {packets:?}"))
}

fn tx_packets(gen: &Host) -> Result<u64> {
    let out = gen.sh("cat /sys/class/net/eth0/statistics/tx_packets")?;
    out.trim()
        .parse()
        .with_context(|| format!("tx_packets {out:?}"))
}

fn start_blaster(gen: &Host, node_mac: Mac) -> Result<LabProcess> {
    let exe = std::env::current_exe().context("find the bench's own executable")?;
    let mac = node_mac.map(|b| format!("{b:02x}")).join(":");
    gen.spawn(
        "blast",
        Command::new(exe).args([BLAST_COMMAND, "--dst-mac", &mac, "--cpu", "0"]),
    )
}

/// Pids of the kernel's threaded-NAPI threads (`napi/<iface>-<id>`).
fn napi_threads() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("list /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("napi/eth0-") {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The NAPI threads that appeared since `before` was listed: the node's.
fn wait_napi_threads(before: &[u32]) -> Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let new: Vec<u32> = napi_threads()?
            .into_iter()
            .filter(|pid| !before.contains(pid))
            .collect();
        if !new.is_empty() {
            return Ok(new);
        }
        ensure!(
            Instant::now() < deadline,
            "no NAPI thread appeared for the node's eth0 with an XDP program and threaded \
             NAPI (is /sys/class/net/eth0/threaded writable on this kernel?)"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time of the threads `pids` so far, in ns; a thread that ended
/// counts nothing.
fn threads_cpu(pids: &[u32]) -> Result<u64> {
    Ok(pids.iter().filter_map(|&pid| thread_cpu(pid).ok()).sum())
}

/// CPU time of thread `pid` so far, in ns (`/proc/<pid>/schedstat`).
fn thread_cpu(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("parse {path}: {text:?}"))
}

/// Binds process or thread `pid` to CPU `cpu`.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE on this 2-core machine kind.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads `size_of(set)` bytes of `set`.
    let rc =
        unsafe { libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of_val(&set), &set) };
    ensure!(
        rc == 0,
        "pin {pid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Options of the hidden `blast` subcommand.
pub struct BlastOptions {
    pub dst_mac: Mac,
    pub cpu: usize,
}

/// Sends TCP SYNs to the VIP from [`SOURCES`] client addresses out of
/// `eth0`, as fast as one core can, until killed.
pub fn blast(options: &BlastOptions) -> Result<()> {
    pin(0, options.cpu)?;
    let src_mac = frames::mac_of("eth0")?;
    let frames: Vec<Vec<u8>> = (0..SOURCES)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            frames::padded(frames::ipv4_tcp(
                options.dst_mac,
                src_mac,
                Ipv4Addr::new(10, 77, 128 + hi, lo),
                VIP,
                40_000 + i % 1000,
                80,
                frames::TCP_SYN,
            ))
        })
        .collect();
    let fd = raw_socket("eth0")?;
    let mut next = 0usize;
    loop {
        let mut iovecs: Vec<libc::iovec> = (0..BATCH)
            .map(|k| {
                let frame = &frames[(next + k) % frames.len()];
                libc::iovec {
                    iov_base: frame.as_ptr() as *mut libc::c_void,
                    iov_len: frame.len(),
                }
            })
            .collect();
        // SAFETY: a zeroed mmsghdr is valid; each points at one iovec.
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `messages` and the iovecs and frames they point at live
        // across the call.
        let sent = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), BATCH as u32, 0) };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOBUFS) {
                bail!("sendmmsg: {error}");
            }
        }
        next = (next + BATCH) % frames.len();
    }
}

/// An `AF_PACKET` socket bound to `iface` that bypasses the qdisc.
fn raw_socket(iface: &str) -> Result<libc::c_int> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        ensure!(ifindex != 0, "no interface {iface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let one: libc::c_int = 1;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
        ensure!(
            rc == 0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        );
        ensure!(
            rc == 0,
            "bind to {iface}: {}",
            std::io::Error::last_os_error()
        );
        Ok(fd)
    }
}

/// The filter-rate table: one row per filter, then the ratio.
pub fn table(results: &[FilterResult], options: &Options) -> Table {
    let mut table = Table::new(
        format!(
            "packets per second one node filters (lab: gen → bridge → node, veth; median of {} \
             windows of {:.1} s)",
            options.rounds,
            options.window.as_secs_f64()
        ),
        &[
            "filter",
            "offered/s",
            "filtered/s",
            "NAPI threads busy",
            "filtered per core-second",
            "vs nftables",
        ],
    );
    let nft = results
        .iter()
        .find(|r| r.filter == Filter::Nftables)
        .map(FilterResult::per_core);
    for r in results {
        let ratio = nft.map_or("-".to_owned(), |nft| format!("{:.2}×", r.per_core() / nft));
        table.row(vec![
            r.filter.name().to_owned(),
            format!("{:.0}", r.offered()),
            format!("{:.0}", r.filtered()),
            format!("{:.1} %", r.busy() * 100.0),
            format!("{:.0}", r.per_core()),
            ratio,
        ]);
    }
    table.note(
        "the node owns 1 bucket in 3; kept frames end in a blackhole route for the VIP; \
         generator (AF_PACKET, qdisc bypass, sendmmsg) pinned to CPU 0, the node's \
         threaded-NAPI thread (veth poll + filter + stack) pinned to CPU 1",
    );
    table.note(
        "filtered per core-second = frames the filter saw / CPU time of the node's NAPI \
         thread: the node's capacity per core, whether or not the generator saturates it; \
         SPEC target: farm XDP ≥ 3× nftables",
    );
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nft_policy_owns_one_bucket_in_three() {
        let policy = nft_policy();
        assert!(policy.contains("jhash ip saddr mod 4096 vmap { 0 : accept, 3 : accept, "));
        assert!(policy.contains(", 4095 : accept }"));
    }
}
