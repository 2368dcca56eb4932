//! Packets per second one node filters: the farm XDP program against the
//! same policy written in nftables (`jhash ip saddr mod 4096` → a set of
//! the buckets this node owns → accept, else drop), under one load
//! generator, in one lab.
//!
//! The lab has two hosts joined by their own veth pair (`blast0` in
//! `gen`, `filter0` in `node`). `gen` blasts TCP SYNs to the VIP from 4096
//! client addresses, pinned to CPU 0: `farm_blast` run by `BPF_PROG_RUN`
//! in live-frame mode, whose frames reach `filter0` as XDP frames, the way
//! a NIC driver hands frames to XDP (frames sent from a socket would reach
//! it as socket buffers, which the veth copies into an XDP buffer first:
//! a cost no NIC has). `node` filters. `filter0` always holds an XDP
//! program in driver mode (the farm's, or `farm_noop` under the nftables
//! policy, whose `XDP_PASS` makes the socket buffer nftables needs) and
//! runs threaded NAPI, so everything the node does with a frame (the
//! veth's poll, the filter, the stack for what the filter keeps) happens
//! in one kernel thread, pinned to CPU 1, apart from the generator. The
//! figure that does not depend on whether the generator keeps that thread
//! busy is packets per second of that thread's CPU time: frames the filter
//! saw / CPU time of the thread. Frames the filter keeps go to a blackhole
//! route for the VIP (the same cost under every filter).

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
use halo_common::farm::{filter, BucketState, FarmRule, Verdict, BUCKETS};
use halo_tests::{
    frames::{self, Mac},
    lab::{Host, LabBuilder, LabProcess},
};

use crate::report::{median, Table};

/// The hidden subcommand that makes `halo-bench` the load generator.
pub const BLAST_COMMAND: &str = "blast";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// The node owns one bucket in three, as one node of a three-node farm.
const SHARE: u32 = 3;
const NFT_TABLE: &str = "halo_bench";
/// The generator's end of the lab's direct link, in `gen`.
const GEN_IFACE: &str = "blast0";
/// The filtering end, in `node`.
const NODE_IFACE: &str = "filter0";
/// Frames per live-frame batch (the kernel's default) and per
/// `BPF_PROG_RUN` call.
const BATCH: u32 = 64;
const PER_CALL: u32 = 1 << 16;
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
    /// Frames the generator sent, per second, including those the node's
    /// full receive ring refused.
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
    // From here: the hosts' own mount namespaces may not show the named
    // network namespaces.
    let linked = Command::new("ip")
        .args([
            "-n",
            gen.netns_name(),
            "link",
            "add",
            GEN_IFACE,
            "type",
            "veth",
        ])
        .args(["peer", "name", NODE_IFACE, "netns", node.netns_name()])
        .status()
        .context("run ip")?;
    ensure!(linked.success(), "link gen and node directly: ip {linked}");
    gen.sh(&format!("ip link set {GEN_IFACE} up"))?;
    node.sh(&format!("ip link set {NODE_IFACE} up"))?;
    let node_mac = node.enter(|| frames::mac_of(NODE_IFACE))?;
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
            let mut ingress = node.enter(|| FarmIngress::attach(NODE_IFACE, XdpMode::Driver))?;
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
            // as the farm program; a veth without an XDP program takes no
            // XDP frames at all.
            let mut noop = FarmIngress::load()?;
            node.enter(|| noop.attach_noop(NODE_IFACE, XdpMode::Driver))?;
            node.sh(&format!("nft -f - <<'EOF'\n{}EOF\n", nft_policy()))?;
            Installed::Nft(Box::new(noop))
        }
    };
    let seen = |installed: &Installed| -> Result<u64> {
        match installed {
            // Every frame is a SYN to the VIP's rule: accepted or another
            // node's, counted once either way.
            Installed::Xdp(ingress) => Ok(ingress
                .verdict_counts()?
                .into_iter()
                .filter(|(v, _)| matches!(v, Verdict::Accepted | Verdict::OtherNode))
                .map(|(_, n)| n)
                .sum()),
            Installed::Nft(_) => nft_seen(node),
        }
    };
    // Attaching or detaching XDP gives the veth a new NAPI context, which
    // is not threaded until threaded NAPI is turned on again (writing the
    // value it already has does nothing); then take every NAPI thread the
    // lab made.
    node.sh(&format!(
        "echo 0 > /sys/class/net/{NODE_IFACE}/threaded && \
         echo 1 > /sys/class/net/{NODE_IFACE}/threaded"
    ))?;
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
         \t\ttype filter hook ingress device \"{NODE_IFACE}\" priority -500; policy accept;\n\
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

/// Frames the generator sent, counting those the node's full receive ring
/// refused (`tx_dropped`).
fn tx_packets(gen: &Host) -> Result<u64> {
    let out = gen.sh(&format!(
        "cat /sys/class/net/{GEN_IFACE}/statistics/tx_packets \
         /sys/class/net/{GEN_IFACE}/statistics/tx_dropped"
    ))?;
    out.split_whitespace()
        .map(|n| {
            n.parse::<u64>()
                .with_context(|| format!("tx counters {out:?}"))
        })
        .sum()
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
        if comm.starts_with(&format!("napi/{NODE_IFACE}-")) {
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
            "no NAPI thread appeared for the node's {NODE_IFACE} with an XDP program and \
             threaded NAPI (is /sys/class/net/{NODE_IFACE}/threaded writable on this kernel?)"
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

/// Sends TCP SYNs to the VIP from 4096 client addresses out of
/// [`GEN_IFACE`], as fast as one core can, until killed.
pub fn blast(options: &BlastOptions) -> Result<()> {
    pin(0, options.cpu)?;
    let src_mac = frames::mac_of(GEN_IFACE)?;
    // farm_blast draws the low 12 bits of the source: 10.77.128.0/20.
    let frame = frames::padded(frames::ipv4_tcp(
        options.dst_mac,
        src_mac,
        Ipv4Addr::new(10, 77, 128, 0),
        VIP,
        40_000,
        80,
        frames::TCP_SYN,
    ));
    let name = std::ffi::CString::new(GEN_IFACE)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {GEN_IFACE}");
    let mut generator = FarmIngress::load()?;
    loop {
        generator.blast(ifindex, &frame, PER_CALL, BATCH)?;
    }
}

/// The filter-rate table: one row per filter, then the ratio.
pub fn table(results: &[FilterResult], options: &Options) -> Table {
    let mut table = Table::new(
        format!(
            "packets per second one node filters (lab: gen → node, one veth pair; median of \
             {} windows of {:.1} s)",
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
         generator (farm_blast, BPF_PROG_RUN live frames: frames reach the node as XDP \
         frames, as from a NIC driver) pinned to CPU 0, the node's threaded-NAPI thread \
         (veth poll + filter + stack) pinned to CPU 1; offered counts the frames the node's \
         full receive ring refused",
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
