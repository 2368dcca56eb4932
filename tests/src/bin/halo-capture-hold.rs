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
