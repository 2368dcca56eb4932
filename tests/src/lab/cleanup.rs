//! The lab's cleanup stack: every object the lab creates is pushed as a
//! guard as soon as it exists, and dropping the stack releases the guards
//! newest first — at the end of a test, while unwinding from a panic, and
//! when a build fails half-way.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context, Result};
use nix::mount::{umount2, MntFlags};

use super::{
    command,
    ns::{self, NsId},
    runs::{self, LabLock, RunKey},
    KILL_TIMEOUT,
};

/// One object the lab created, and how to remove it.
pub(crate) enum Guard {
    /// The processes inside some namespaces (`owner` names them in messages).
    Processes {
        owner: String,
        namespaces: Vec<NsId>,
    },
    /// A mount on the real machine.
    Mount(PathBuf),
    /// A named network namespace; deleting it destroys its interfaces.
    Netns(String),
    /// A directory tree on the real filesystem.
    Dir(PathBuf),
    /// A run's use of the real-filesystem mountpoints that labs share.
    Mountpoints(RunKey),
}

impl Guard {
    fn release(self) -> Result<()> {
        match self {
            Self::Processes { owner, namespaces } => {
                ns::kill_processes_in(&namespaces, KILL_TIMEOUT)
                    .with_context(|| format!("kill the processes of {owner}"))
            }
            Self::Mount(target) => umount2(&target, MntFlags::MNT_DETACH)
                .with_context(|| format!("unmount {}", target.display())),
            Self::Netns(name) => command::ip(&["netns", "delete", &name]).map(drop),
            Self::Dir(path) => remove_tree(&path),
            Self::Mountpoints(key) => runs::release_mountpoints(&LabLock::acquire()?, Some(key)),
        }
    }
}

/// Removes the directory tree at `path`, unless something is mounted below it.
fn remove_tree(path: &Path) -> Result<()> {
    // remove_dir_all would walk into a mount left below the tree and empty
    // whatever is mounted there.
    let mounted: Vec<_> = ns::mount_points()?
        .into_iter()
        .filter(|mount| mount.starts_with(path))
        .collect();
    ensure!(
        mounted.is_empty(),
        "not removing {}: mounts remain below it: {mounted:?}",
        path.display()
    );
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Guards in creation order, released in reverse when dropped.
#[derive(Default)]
pub(crate) struct Cleanup(Vec<Guard>);

impl Cleanup {
    /// Takes ownership of an object that was just created.
    pub(crate) fn push(&mut self, guard: Guard) {
        self.0.push(guard);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(guard) = self.0.pop() {
            // A failure is reported, not raised: this may run while unwinding,
            // where a second panic aborts the test binary, and the objects
            // below on the stack still deserve their removal.
            if let Err(error) = guard.release() {
                eprintln!("halo lab: cleanup: {error:#}");
            }
        }
    }
}
