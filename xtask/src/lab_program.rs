//! What `cargo xtask bench` and `cargo xtask demo` share: set-up, then a
//! release build of `halo` and of one program of the `tests` crate
//! (`halo-bench`, `halo-demo`), which then runs against that `halo`.
//!
//! xtask cannot depend on `halo` or on the tests crate: `setup` must build
//! before bpf-linker exists, and `halo` needs bpf-linker. So those programs
//! live in the tests crate, and xtask only drives cargo.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cmd;
use crate::setup;
use crate::step::{HintExt as _, Steps};
use crate::test::{target_dir, workspace_root};

/// The release builds of `halo` and of one lab program.
pub struct LabProgram {
    release: PathBuf,
    program: &'static str,
}

impl LabProgram {
    /// Runs set-up and builds `halo` and `program` in release mode, each a
    /// step of `steps`.
    pub fn build(steps: &mut Steps, program: &'static str) -> Result<Self> {
        let root = workspace_root();
        let cargo = || {
            let mut cargo = cmd::new("cargo");
            cargo.current_dir(&root);
            cargo
        };
        steps.run("setup", || setup::run().map(|()| "done"))?;
        steps.run("build halo (release)", || {
            cmd::run(cargo().args(["build", "--release", "--package", "halo"]))
                .map(|()| "built")
                .hint(
                    "node/build.rs builds the eBPF object with bpf-linker: see `cargo xtask setup`",
                )
        })?;
        steps.run(format!("build {program} (release)"), || {
            cmd::run(cargo().args([
                "build",
                "--release",
                "--package",
                "halo-tests",
                "--bin",
                program,
            ]))
            .map(|()| "built")
        })?;
        Ok(LabProgram {
            release: target_dir(&root).join("release"),
            program,
        })
    }

    /// The program, to run with its arguments: from the workspace root,
    /// with `HALO_BIN` naming the `halo` just built.
    pub fn command(&self) -> std::process::Command {
        let mut command = cmd::new(self.path());
        command
            .current_dir(workspace_root())
            .env("HALO_BIN", self.release.join("halo"));
        command
    }

    /// Where the program was built.
    pub fn path(&self) -> PathBuf {
        self.release.join(self.program)
    }
}

/// Where a lab program keeps its daemons' logs: `target/<what>`.
pub fn logs_dir(what: &Path) -> PathBuf {
    target_dir(&workspace_root()).join(what)
}
