//! What the lab programs (`halo-demo`, `halo-chaos`) share: Ctrl-C that
//! ends them through their normal return, so that the lab's guards remove
//! everything, and the hosts' logs copied out before the lab goes.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::lab::Lab;

/// Set by SIGINT or SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The error that ends a program early on Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Makes SIGINT and SIGTERM set a flag that [`check_interrupt`] reads. A
/// second Ctrl-C gets the default action (SA_RESETHAND): an impatient user
/// can stop the cleanup, and the next lab run sweeps what is left.
pub fn handle_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("cannot handle {signal}"))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`Interrupted`] once SIGINT or SIGTERM arrived.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Copies every host's `*.log` (daemons, servers, clients) to `dir/<host>/`.
pub fn save_logs(lab: &Lab, dir: &Path) -> Result<()> {
    for host in lab.hosts() {
        let to = dir.join(host.name());
        fs::create_dir_all(&to).with_context(|| format!("create {}", to.display()))?;
        for entry in fs::read_dir(host.state_dir())
            .with_context(|| format!("list {}", host.state_dir().display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") {
                if let Some(name) = path.file_name() {
                    fs::copy(&path, to.join(name))
                        .with_context(|| format!("copy {}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}
