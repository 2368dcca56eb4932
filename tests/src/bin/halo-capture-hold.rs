//! `halo-capture-hold`: a test helper that holds a pinned write capture as
//! a mirror daemon does, until it is killed, so that a lab test can find
//! the capture of a daemon that died (`PreviousCapture`) in a real kernel.
//!
//! ```text
//! halo-capture-hold PIN_DIR ROOT[:pause]...
//! ```
//!
//! Attaches the capture with its links and maps pinned in `PIN_DIR` (a
//! directory of a bpffs), registers each `ROOT` (`:pause`: with
//! `sync_pause`), prints `ready` and waits for ever.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use halo::ebpf::{
    self,
    capture::{CaptureConfig, WriteCapture},
};

fn main() -> Result<()> {
    // Its capture pauses durability calls machine-wide and nothing resumes
    // them once it is killed: only inside a lab host, whose own bpffs goes
    // with it, started by a test outside it (a shell on the machine shares
    // the machine's mount namespace).
    let parent = format!("/proc/{}/ns/mnt", std::os::unix::process::parent_id());
    let own = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    let outside = std::fs::read_link(&parent).with_context(|| format!("reading {parent}"))?;
    anyhow::ensure!(
        own != outside,
        "halo-capture-hold runs only in a lab host's mount namespace, started from outside it"
    );
    let mut args = std::env::args().skip(1);
    let pin_dir = PathBuf::from(
        args.next()
            .context("usage: halo-capture-hold PIN_DIR ROOT[:pause]...")?,
    );
    ebpf::ensure_mounted("tracefs", "/sys/kernel/tracing")?;
    let mut capture = WriteCapture::attach_with(CaptureConfig {
        pin_dir: Some(pin_dir),
        ..CaptureConfig::default()
    })?;
    for root in args {
        let (dir, pause) = match root.strip_suffix(":pause") {
            Some(dir) => (dir, true),
            None => (root.as_str(), false),
        };
        capture.add_root(dir.as_ref(), pause)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}
