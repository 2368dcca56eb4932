//! The faults a campaign draws, from a seeded generator, and how each is
//! injected and healed.

use std::{
    fmt,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use halo_tests::{cluster::Cluster, lab::Signal};

use crate::world::{World, DATA_FS, DIR, FARM_NODES, MIRROR_NODES};

/// SplitMix64: small, seedable, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A duration between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// What a fault does to whom.
#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL of a node's daemon; healed by starting it again.
    KillDaemon(&'static str),
    /// Every process of a host killed, as a crash of the machine.
    KillHost(&'static str),
    /// SIGTERM of a daemon, then a new one at once.
    RestartDaemon(&'static str),
    /// A host cut off the network.
    CutHost(&'static str),
    /// Two nodes lose each other; both still reach everyone else (the
    /// witness included).
    PartialPartition(&'static str, &'static str),
    /// Frames from one node to the other are lost, not the way back.
    OneWayLoss(&'static str, &'static str),
    /// A host's link goes down and up every few hundred milliseconds.
    Flap(&'static str),
    /// The arbiter witness stops.
    WitnessDown,
    /// The mirror secondary's disk fills up.
    DiskFull(&'static str),
    /// The replication stream's link is cut while a large file (16 MB) is
    /// written.
    StreamCut,
    /// A host limited to a few percent of one CPU.
    Starve(&'static str),
    /// A daemon frozen (SIGSTOP) longer than the timeout, then SIGCONT: the
    /// paused virtual machine.
    Freeze(&'static str),
}

impl Fault {
    /// The kind, as the report counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillDaemon(_) => "kill -9 daemon",
            Fault::KillHost(_) => "kill host",
            Fault::RestartDaemon(_) => "restart daemon",
            Fault::CutHost(_) => "cut host",
            Fault::PartialPartition(..) => "partial partition",
            Fault::OneWayLoss(..) => "one-way loss",
            Fault::Flap(_) => "flapping link",
            Fault::WitnessDown => "witness down",
            Fault::DiskFull(_) => "secondary disk full",
            Fault::StreamCut => "replication cut mid-file",
            Fault::Starve(_) => "CPU starvation",
            Fault::Freeze(_) => "daemon frozen",
        }
    }

    /// Every kind, for the report's table.
    pub const KINDS: [&'static str; 12] = [
        "kill -9 daemon",
        "kill host",
        "restart daemon",
        "cut host",
        "partial partition",
        "one-way loss",
        "flapping link",
        "witness down",
        "secondary disk full",
        "replication cut mid-file",
        "CPU starvation",
        "daemon frozen",
    ];

    /// Draws a fault. `primary` is the mirror's primary now, if any: some
    /// faults aim at it or at its secondary.
    pub fn draw(rng: &mut Rng, primary: Option<&'static str>) -> Fault {
        let all: Vec<&'static str> = FARM_NODES.iter().chain(&MIRROR_NODES).copied().collect();
        // Mirror nodes are drawn as often as farm nodes: they are where
        // data can be lost.
        let node = if rng.below(2) == 0 {
            rng.pick(&MIRROR_NODES)
        } else {
            rng.pick(&all)
        };
        let secondary = primary.map(|p| if p == "m1" { "m2" } else { "m1" });
        let pair = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                ("m1", "m2")
            } else {
                let a = rng.pick(&FARM_NODES);
                let b = loop {
                    let b = rng.pick(&FARM_NODES);
                    if b != a {
                        break b;
                    }
                };
                (a, b)
            }
        };
        match rng.below(12) {
            0 => Fault::KillDaemon(node),
            1 => Fault::KillHost(node),
            2 => Fault::RestartDaemon(node),
            3 => Fault::CutHost(node),
            4 => {
                let (a, b) = pair(rng);
                Fault::PartialPartition(a, b)
            }
            5 => {
                let (a, b) = pair(rng);
                if rng.below(2) == 0 {
                    Fault::OneWayLoss(a, b)
                } else {
                    Fault::OneWayLoss(b, a)
                }
            }
            6 => Fault::Flap(node),
            7 => Fault::WitnessDown,
            8 => Fault::DiskFull(secondary.unwrap_or("m2")),
            9 => Fault::StreamCut,
            10 => Fault::Starve(node),
            _ => Fault::Freeze(node),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillDaemon(n)
            | Fault::KillHost(n)
            | Fault::RestartDaemon(n)
            | Fault::CutHost(n)
            | Fault::Flap(n)
            | Fault::DiskFull(n)
            | Fault::Starve(n)
            | Fault::Freeze(n) => write!(f, "{} {n}", self.kind()),
            Fault::PartialPartition(a, b) => write!(f, "{} {a} | {b}", self.kind()),
            Fault::OneWayLoss(a, b) => write!(f, "{} {a} -> {b}", self.kind()),
            Fault::WitnessDown | Fault::StreamCut => f.write_str(self.kind()),
        }
    }
}

/// Starts `node`'s daemon again, whichever cluster it belongs to.
fn restart(world: &mut World<'_>, node: &str) -> Result<()> {
    let cluster: &mut Cluster<'_> = world.cluster_of(node);
    cluster.start(node)
}

/// Injects `fault`, holds it for `hold`, and heals it.
pub fn apply(world: &mut World<'_>, fault: &Fault, hold: Duration, rng: &mut Rng) -> Result<()> {
    let lab = world.lab;
    match *fault {
        Fault::KillDaemon(node) => {
            world.cluster_of(node).kill(node)?;
            std::thread::sleep(hold);
            restart(world, node)
        }
        Fault::KillHost(node) => {
            lab.kill_host(node)?;
            std::thread::sleep(hold);
            if FARM_NODES.contains(&node) {
                world.restart_web(node)?;
            }
            restart(world, node)
        }
        Fault::RestartDaemon(node) => {
            let daemon = world.cluster_of(node).daemon(node)?;
            daemon.signal(Signal::SIGTERM)?;
            daemon
                .wait_timeout(Duration::from_secs(60))
                .with_context(|| format!("{node}'s daemon to stop on SIGTERM"))?;
            restart(world, node)
        }
        Fault::CutHost(node) => {
            lab.cut(node)?;
            std::thread::sleep(hold);
            lab.heal(node)
        }
        Fault::PartialPartition(a, b) => {
            lab.cut_pair(a, b)?;
            std::thread::sleep(hold);
            lab.heal_pair(a, b)
        }
        Fault::OneWayLoss(a, b) => {
            lab.cut_one_way(a, b)?;
            std::thread::sleep(hold);
            lab.heal_one_way(a, b)
        }
        Fault::Flap(node) => {
            let end = Instant::now() + hold;
            while Instant::now() < end {
                lab.cut(node)?;
                std::thread::sleep(rng.millis(100, 700));
                lab.heal(node)?;
                std::thread::sleep(rng.millis(100, 700));
            }
            lab.heal(node)
        }
        Fault::WitnessDown => {
            world.witness = None; // dropping it kills it
            std::thread::sleep(hold);
            world.restart_witness()
        }
        Fault::DiskFull(node) => {
            let host = lab.host(node);
            // dd stops at ENOSPC; that is its expected end.
            let _ = host.sh(&format!(
                "dd if=/dev/zero of={DATA_FS}/ballast bs=1M 2>/dev/null; true"
            ));
            std::thread::sleep(hold);
            host.sh(&format!("rm -f {DATA_FS}/ballast")).map(drop)
        }
        Fault::StreamCut => {
            // A large file streams from the primary; the link is cut while
            // it does.
            if let Some(primary) = world.mirror_primary() {
                let host = lab.host(primary);
                // One name, overwritten each time: the data set stays small.
                let big = format!("{DIR}/big.bin");
                let _writer = host.spawn(
                    "bigfile",
                    std::process::Command::new("/bin/sh").args([
                        "-c",
                        &format!("head -c 16000000 /dev/urandom > {big}.tmp && mv {big}.tmp {big}"),
                    ]),
                )?;
                std::thread::sleep(rng.millis(100, 600));
                lab.cut_pair("m1", "m2")?;
                std::thread::sleep(hold);
                lab.heal_pair("m1", "m2")?;
            }
            Ok(())
        }
        Fault::Starve(node) => {
            let limit = lab.limit_cpu(node, 3)?;
            std::thread::sleep(hold);
            drop(limit);
            Ok(())
        }
        Fault::Freeze(node) => {
            let daemon = world.cluster_of(node).daemon(node)?;
            daemon.signal(Signal::SIGSTOP)?;
            std::thread::sleep(hold.max(Duration::from_millis(1500)));
            daemon.signal(Signal::SIGCONT)
        }
    }
}
