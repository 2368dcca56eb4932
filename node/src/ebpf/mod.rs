//! Loading and attaching the kernel programs embedded in the binary.
//!
//! `node/build.rs` builds `ebpf/` for the BPF target; each program family is
//! its own object, embedded here, so that loading the farm's data path never
//! creates the capture's ring buffer and the other way round.

pub mod btf;
pub mod capture;
pub mod farm;

use std::path::Path;

use anyhow::Context as _;

/// The farm's XDP ingress object.
pub(crate) static FARM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/halo-farm"));

/// The mirror's write-capture object.
pub(crate) static CAPTURE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/halo-capture"));

/// Mounts `fstype` on `target` unless something is mounted there already:
/// bpffs and tracefs are not mounted on a fresh boot of the target machines.
pub fn ensure_mounted(fstype: &str, target: &str) -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(target));
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    nix::mount::mount(
        Some(fstype),
        Path::new(target),
        Some(fstype),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting {fstype} on {target} (needs root)"))
}
