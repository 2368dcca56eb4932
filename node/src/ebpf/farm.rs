//! User-space control of the farm's XDP ingress program.

use anyhow::Context as _;
use aya::{
    maps::PerCpuArray,
    programs::{xdp::XdpMode, TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use halo_common::farm::PacketClass;

use super::FARM_OBJECT;

/// The farm ingress program, loaded into the kernel and attached to at most
/// one interface; dropping it detaches and unloads the program.
pub struct FarmIngress {
    ebpf: Ebpf,
    interface: Option<String>,
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

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut("farm_ingress")
        .context("the farm object has no farm_ingress program")?
        .try_into()
        .context("farm_ingress is not an XDP program")
}
