//! User-space control of the farm's XDP ingress program.

use anyhow::Context as _;
use aya::{
    maps::PerCpuArray,
    programs::{xdp::XdpMode, Xdp},
    Ebpf,
};
use halo_common::farm::PacketClass;

use super::FARM_OBJECT;

/// The farm ingress program, loaded and attached to one interface; dropping
/// it detaches the program.
pub struct FarmIngress {
    ebpf: Ebpf,
    interface: String,
}

/// Frames seen by the ingress program, per [`PacketClass`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts([u64; PacketClass::COUNT as usize]);

impl ClassCounts {
    /// The number of frames of `class`.
    pub fn get(&self, class: PacketClass) -> u64 {
        self.0[class as usize]
    }

    /// The frames counted since `earlier`, class by class.
    pub fn since(&self, earlier: &ClassCounts) -> ClassCounts {
        let mut delta = ClassCounts::default();
        for class in PacketClass::ALL {
            let i = class as usize;
            delta.0[i] = self.0[i].saturating_sub(earlier.0[i]);
        }
        delta
    }
}

impl std::fmt::Display for ClassCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, class) in PacketClass::ALL.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={}", class.name(), self.get(class))?;
        }
        Ok(())
    }
}

impl FarmIngress {
    /// Loads the program and attaches it to `interface` (in the calling
    /// thread's network namespace).
    pub fn attach(interface: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(FARM_OBJECT).context("loading the farm XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut("farm_ingress")
            .context("the farm object has no farm_ingress program")?
            .try_into()
            .context("farm_ingress is not an XDP program")?;
        program.load().context("the kernel refused farm_ingress")?;
        program.attach(interface, mode).with_context(|| {
            format!("attaching farm_ingress to {interface} in {mode:?} mode (try XdpMode::Skb)")
        })?;
        Ok(FarmIngress {
            ebpf,
            interface: interface.to_owned(),
        })
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The per-class frame counters, summed over CPUs.
    pub fn class_counts(&self) -> anyhow::Result<ClassCounts> {
        let map = self
            .ebpf
            .map("FARM_CLASS_COUNTERS")
            .context("the farm object has no FARM_CLASS_COUNTERS map")?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        let mut counts = ClassCounts::default();
        for class in PacketClass::ALL {
            let per_cpu = counters
                .get(&(class as u32), 0)
                .with_context(|| format!("reading the {} counter", class.name()))?;
            counts.0[class as usize] = per_cpu.iter().sum();
        }
        Ok(counts)
    }
}
