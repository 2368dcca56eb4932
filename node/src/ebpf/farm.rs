//! User-space control of the farm's XDP ingress program.

use anyhow::Context as _;
use std::net::IpAddr;

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{xdp::XdpMode, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};
use halo_common::farm::{
    slot, vip_slot_of, BucketState, FarmRule, FarmSettings, FarmStats, UdpFlow, UdpFlowKey,
    Verdict, VipKey, VipSlot, VipValue, BUCKETS, CUT_UNKNOWN, MAX_RULES, VIP_SLOTS,
};

use super::FARM_OBJECT;

/// The farm ingress program, loaded into the kernel and attached to at most
/// one interface; dropping it detaches and unloads the program.
pub struct FarmIngress {
    ebpf: Ebpf,
    interface: Option<String>,
}

/// Frames per verdict, in [`Verdict::ALL`] order.
pub type VerdictCounts = Vec<(Verdict, u64)>;

impl FarmIngress {
    /// Loads the program into the kernel (the verifier runs here) without
    /// attaching it anywhere.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(FARM_OBJECT).context("loading the farm XDP object")?;
        program(&mut ebpf)?
            .load()
            .context("the kernel refused farm_ingress")?;
        Ok(FarmIngress {
            ebpf,
            interface: None,
        })
    }

    /// Loads the program and attaches it to `interface` (in the calling
    /// thread's network namespace).
    pub fn attach(interface: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let mut ingress = Self::load()?;
        program(&mut ingress.ebpf)?
            .attach(interface, mode)
            .with_context(|| {
                format!("attaching farm_ingress to {interface} in {mode:?} mode (try XdpMode::Skb)")
            })?;
        ingress.interface = Some(interface.to_owned());
        Ok(ingress)
    }

    /// The interface the program is attached to, if any.
    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN`, as if
    /// it had arrived on an interface, and returns its verdict (`XDP_*`).
    /// The counters count it like any other frame.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<u32> {
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        let result = program(&mut self.ebpf)?
            .test_run(options)
            .with_context(|| {
                format!("BPF_PROG_TEST_RUN of farm_ingress on {} bytes", frame.len())
            })?;
        Ok(result.return_value)
    }

    /// Writes the VIPs (with their virtual MACs), the rules and the
    /// interface's own MAC. Until this is called nothing is a VIP and every
    /// frame passes. The bucket table is kept.
    pub fn configure(
        &mut self,
        own_mac: [u8; 6],
        vips: &[(IpAddr, [u8; 6])],
        rules: &[FarmRule],
        udp_idle: std::time::Duration,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            rules.len() <= MAX_RULES as usize,
            "{} rules, the farm program takes at most {MAX_RULES}",
            rules.len()
        );
        let mut rule_map: Array<_, FarmRule> = Array::try_from(
            self.ebpf
                .map_mut("FARM_RULES")
                .context("no FARM_RULES map")?,
        )?;
        for (i, rule) in rules.iter().enumerate() {
            rule_map
                .set(i as u32, *rule, 0)
                .context("writing FARM_RULES")?;
        }
        let mut vip_map: HashMap<_, VipKey, VipValue> =
            HashMap::try_from(self.ebpf.map_mut("FARM_VIPS").context("no FARM_VIPS map")?)?;
        let stale: Vec<VipKey> = vip_map.keys().filter_map(Result::ok).collect();
        for key in stale {
            vip_map.remove(&key).context("clearing FARM_VIPS")?;
        }
        for (vip, vmac) in vips {
            let value = VipValue {
                vmac: *vmac,
                _pad: [0; 2],
            };
            vip_map
                .insert(vip_key(*vip), value, 0)
                .with_context(|| format!("adding VIP {vip} to FARM_VIPS"))?;
        }
        // The index after the map: a shared slot sends the program there.
        let mut slots: Array<_, VipSlot> = Array::try_from(
            self.ebpf
                .map_mut("FARM_VIP_SLOTS")
                .context("no FARM_VIP_SLOTS map")?,
        )?;
        let index = vip_index(vips);
        for i in 0..2 * VIP_SLOTS {
            let want = index.get(&i).copied().unwrap_or_default();
            if slots.get(&i, 0).context("reading FARM_VIP_SLOTS")? != want {
                slots.set(i, want, 0).context("writing FARM_VIP_SLOTS")?;
            }
        }
        let mut settings = self.settings()?;
        settings.own_mac = own_mac;
        settings.rule_count = rules.len() as u32;
        settings.udp_idle_ns = udp_idle.as_nanos() as u64;
        self.write_settings(settings)
    }

    /// Replaces the bucket table atomically: the idle half of
    /// `FARM_BUCKETS` is written, then `active_table` flips, so the program
    /// never sees a mix of the old and the new table. Every `Incoming`
    /// bucket takes no new flow, UDP or TCP, until its cut is known
    /// ([`CUT_UNKNOWN`]): only its own UDP flows and the connections it
    /// has sockets for.
    pub fn set_buckets(&mut self, states: &[BucketState]) -> anyhow::Result<()> {
        self.set_buckets_with_cuts(states, &vec![CUT_UNKNOWN; states.len()])
    }

    /// [`FarmIngress::set_buckets`] with each bucket's cut: for an
    /// `Incoming` bucket, when its old owner stopped taking new flows
    /// (CLOCK_MONOTONIC nanoseconds; common::farm::UdpFlow and
    /// common::farm::incoming_takes_syn), written to the same half as the
    /// states.
    pub fn set_buckets_with_cuts(
        &mut self,
        states: &[BucketState],
        cuts: &[u64],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            states.len() == BUCKETS as usize && cuts.len() == BUCKETS as usize,
            "a bucket table has {BUCKETS} entries, got {} states and {} cuts",
            states.len(),
            cuts.len()
        );
        let mut settings = self.settings()?;
        let idle = (settings.active_table & 1) ^ 1;
        let mut cut_map: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("FARM_CUTS").context("no FARM_CUTS map")?)?;
        for (bucket, cut) in cuts.iter().enumerate() {
            cut_map
                .set(idle * BUCKETS + bucket as u32, *cut, 0)
                .context("writing FARM_CUTS")?;
        }
        let mut table: Array<_, u8> = Array::try_from(
            self.ebpf
                .map_mut("FARM_BUCKETS")
                .context("no FARM_BUCKETS map")?,
        )?;
        for (bucket, state) in states.iter().enumerate() {
            table
                .set(idle * BUCKETS + bucket as u32, *state as u8, 0)
                .context("writing FARM_BUCKETS")?;
        }
        settings.active_table = idle;
        self.write_settings(settings)
    }

    /// The UDP flows of the flow table this node accepted last and saw
    /// within `within` of `now` (CLOCK_MONOTONIC nanoseconds).
    pub fn udp_flows_served(&self, now: u64, within: u64) -> anyhow::Result<Vec<UdpFlowKey>> {
        let map: HashMap<_, UdpFlowKey, UdpFlow> = HashMap::try_from(
            self.ebpf
                .map("FARM_UDP_FLOWS")
                .context("no FARM_UDP_FLOWS map")?,
        )?;
        let mut served = Vec::new();
        for entry in map.iter() {
            // An entry evicted between two reads of the walk is skipped.
            let Ok((key, flow)) = entry else { continue };
            if flow.mine != 0 && now.saturating_sub(flow.last_seen) < within {
                served.push(key);
            }
        }
        Ok(served)
    }

    fn settings(&self) -> anyhow::Result<FarmSettings> {
        let map: Array<_, FarmSettings> = Array::try_from(
            self.ebpf
                .map("FARM_SETTINGS")
                .context("no FARM_SETTINGS map")?,
        )?;
        Ok(map.get(&0, 0)?)
    }

    fn write_settings(&mut self, settings: FarmSettings) -> anyhow::Result<()> {
        let mut map: Array<_, FarmSettings> = Array::try_from(
            self.ebpf
                .map_mut("FARM_SETTINGS")
                .context("no FARM_SETTINGS map")?,
        )?;
        map.set(0, settings, 0).context("writing FARM_SETTINGS")
    }

    /// Frames per [`Verdict`], summed over CPUs.
    pub fn verdict_counts(&self) -> anyhow::Result<VerdictCounts> {
        Ok(self.counters()?.0)
    }

    /// Frames per [`Verdict`] and packets accepted per bucket, summed over
    /// CPUs. The program counts an accepted frame only in its bucket:
    /// `Accepted` is the buckets' sum.
    pub fn counters(&self) -> anyhow::Result<(VerdictCounts, Vec<u64>)> {
        let stats = self.stats()?;
        let buckets = self.bucket_packets()?;
        let accepted = buckets.iter().sum();
        let verdicts = Verdict::ALL
            .into_iter()
            .map(|v| match v {
                Verdict::Accepted => (v, accepted),
                _ => (v, stats.verdicts[v as usize]),
            })
            .collect();
        Ok((verdicts, buckets))
    }

    /// Packets accepted per bucket, summed over CPUs.
    pub fn bucket_packets(&self) -> anyhow::Result<Vec<u64>> {
        let counters = PerCpuArray::<_, u64>::try_from(
            self.ebpf
                .map("FARM_BUCKET_PACKETS")
                .context("no FARM_BUCKET_PACKETS map")?,
        )?;
        (0..BUCKETS)
            .map(|b| Ok(counters.get(&b, 0)?.iter().sum()))
            .collect()
    }

    /// Runs the program once on `frame` and returns its verdict and the
    /// frame as the program left it (rewritten answers, new MACs).
    pub fn test_run_output(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        let result = program(&mut self.ebpf)?
            .test_run(options)
            .with_context(|| {
                format!("BPF_PROG_TEST_RUN of farm_ingress on {} bytes", frame.len())
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the program `repeat` times on `frame` in one
    /// `BPF_PROG_TEST_RUN` and returns the verdict and the kernel's mean
    /// time per run. The kernel runs every repeat on the same buffer, so a
    /// frame the program rewrites (an answered ARP request) is seen
    /// rewritten from the second run on: time those with `repeat = 1`.
    pub fn test_run_timed(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        timed_run(program(&mut self.ebpf)?, "farm_ingress", frame, repeat)
    }

    /// [`FarmIngress::test_run_timed`] of `farm_noop`, the program that
    /// passes every frame and does nothing else: the baseline benches
    /// subtract. It is loaded on first use, never attached.
    pub fn noop_test_run_timed(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        timed_run(noop_program(&mut self.ebpf)?, "farm_noop", frame, repeat)
    }

    /// Attaches `farm_noop` (loaded on first use) to `interface` of the
    /// calling thread's network namespace instead of the farm program: a
    /// baseline for benches that need some XDP program on the interface.
    pub fn attach_noop(&mut self, interface: &str, mode: XdpMode) -> anyhow::Result<()> {
        let noop = noop_program(&mut self.ebpf)?;
        noop.attach(interface, mode)
            .with_context(|| format!("attaching farm_noop to {interface} in {mode:?} mode"))?;
        Ok(())
    }

    /// Sends `repeat` copies of `frame` (an IPv4 TCP frame without IP
    /// options) out of interface `ifindex` of the calling thread's network
    /// namespace, each from a client address drawn among 4096, through
    /// `farm_blast` in `BPF_PROG_RUN`'s live-frame mode, `batch` frames at
    /// a time: the load generator of `cargo xtask bench farm`. Frames leave
    /// as XDP frames, which a veth hands to its peer's XDP program without
    /// building a socket buffer first. Returns when all are sent, or with
    /// an error when a signal interrupts it.
    pub fn blast(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> anyhow::Result<()> {
        let blast = bench_program(&mut self.ebpf, "farm_blast")?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex; live frames want data_end = the
        // frame's length and leave on the ingress interface.
        let mut context = [0u8; 24];
        context[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        context[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.ctx_in = Some(&context);
        options.repeat = repeat;
        options.attrs = TestRunAttrs::new().xdp_live_frames(batch);
        blast.test_run(options).with_context(|| {
            format!("BPF_PROG_RUN of farm_blast in live-frame mode on ifindex {ifindex}")
        })?;
        Ok(())
    }

    /// `FARM_STATS` summed over CPUs.
    fn stats(&self) -> anyhow::Result<FarmStats> {
        let map = self
            .ebpf
            .map("FARM_STATS")
            .context("the farm object has no FARM_STATS map")?;
        let per_cpu = PerCpuArray::<_, FarmStats>::try_from(map)?
            .get(&0, 0)
            .context("reading FARM_STATS")?;
        let mut sum = FarmStats::default();
        for cpu in per_cpu.iter() {
            for (total, n) in sum.verdicts.iter_mut().zip(cpu.verdicts) {
                *total += n;
            }
        }
        Ok(sum)
    }
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut("farm_ingress")
        .context("the farm object has no farm_ingress program")?
        .try_into()
        .context("farm_ingress is not an XDP program")
}

/// `farm_noop`, loaded into the kernel on first use.
fn noop_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    bench_program(ebpf, "farm_noop")
}

/// One of the object's bench-only programs (`farm_noop`, `farm_blast`),
/// loaded into the kernel on first use.
fn bench_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the farm object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("the kernel refused {name}"))?;
    }
    Ok(program)
}

fn timed_run(
    program: &mut Xdp,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(u32, std::time::Duration)> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    let result = program.test_run(options).with_context(|| {
        format!(
            "BPF_PROG_TEST_RUN of {name} on {} bytes, {repeat} repeats",
            frame.len()
        )
    })?;
    Ok((result.return_value, result.duration))
}

/// The wall clock (CLOCK_REALTIME) in nanoseconds since the epoch; 0
/// before it.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The kernel's CLOCK_MONOTONIC in nanoseconds: the clock of
/// `bpf_ktime_get_ns`, which stamps the UDP flow table.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is; it cannot
    // fail for CLOCK_MONOTONIC and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The program's key for a VIP: IPv4 mapped into IPv6.
/// The non-empty slots of the program's VIP index (`FARM_VIP_SLOTS`) for
/// `vips`: a slot that one VIP falls in holds it, one that several fall in
/// sends the program to `FARM_VIPS`.
pub fn vip_index(vips: &[(IpAddr, [u8; 6])]) -> std::collections::BTreeMap<u32, VipSlot> {
    let mut index = std::collections::BTreeMap::new();
    for (vip, vmac) in vips {
        let key = vip_key(*vip);
        let at = vip_slot_of(&key.addr, vip.is_ipv4());
        index
            .entry(at)
            .and_modify(|s: &mut VipSlot| {
                if s.addr != key.addr {
                    *s = VipSlot {
                        state: slot::SHARED,
                        ..VipSlot::default()
                    };
                }
            })
            .or_insert(VipSlot {
                addr: key.addr,
                vmac: *vmac,
                state: slot::ONE,
                _pad: 0,
            });
    }
    index
}

pub fn vip_key(vip: IpAddr) -> VipKey {
    match vip {
        IpAddr::V4(v4) => VipKey::v4(v4.octets()),
        IpAddr::V6(v6) => VipKey { addr: v6.octets() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn each_vip_has_its_slot_and_families_never_share_one() {
        let v4: IpAddr = "10.77.0.200".parse().unwrap();
        let v6: IpAddr = "fd77::c8".parse().unwrap();
        let index = vip_index(&[(v4, MAC), (v6, MAC)]);
        assert_eq!(index.len(), 2);
        let four = index[&0x0c8];
        assert_eq!(
            (four.state, four.addr, four.vmac),
            (slot::ONE, vip_key(v4).addr, MAC)
        );
        let six = index[&(VIP_SLOTS + 0x0c8)];
        assert_eq!((six.state, six.addr), (slot::ONE, vip_key(v6).addr));
    }

    #[test]
    fn vips_ending_alike_send_the_program_to_the_hash_map() {
        let a: IpAddr = "10.0.1.5".parse().unwrap();
        let b: IpAddr = "10.9.1.5".parse().unwrap();
        let c: IpAddr = "10.0.2.5".parse().unwrap();
        let index = vip_index(&[(a, MAC), (b, MAC), (c, MAC), (a, MAC)]);
        assert_eq!(index[&0x105].state, slot::SHARED);
        assert_eq!(index[&0x205].state, slot::ONE, "10.0.2.5 ends otherwise");
        assert_eq!(index.len(), 2);
    }
}

#[cfg(test)]
mod hash_tests {
    use halo_common::farm::{bucket_of, bucket_of_v4, VipKey};

    #[test]
    fn the_ipv4_hash_is_the_mapped_address_hash() {
        let mut x: u32 = 0x0a4d_0001;
        for i in 0..20_000u32 {
            // A cheap walk over scattered addresses and ports.
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let octets = x.to_be_bytes();
            let port = (i % 3 != 0).then_some((x >> 7) as u16);
            assert_eq!(
                bucket_of_v4(octets, port),
                bucket_of(&VipKey::v4(octets).addr, port),
                "{octets:?} port {port:?}"
            );
        }
    }
}
