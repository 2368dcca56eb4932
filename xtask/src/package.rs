//! `cargo xtask package`: a Debian package of halo. Builds the release
//! binary, has it generate its man pages and shell completions (so they
//! match the binary shipped), lays out the package tree with the systemd
//! unit, the default configuration and the maintainer scripts of
//! `packaging/`, and builds the `.deb` with `dpkg-deb`.
//!
//! It runs the `halo` binary; it does not link the `halo` crate.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::step::{HintExt as _, Steps};
use crate::test::{target_dir, workspace_root};

/// Options of `cargo xtask package`.
#[derive(clap::Args)]
pub struct PackageArgs {
    /// Package this `halo` binary instead of building one in release mode
    /// (the lab test packages the binary it tests).
    #[arg(long, value_name = "FILE")]
    halo_bin: Option<PathBuf>,
    /// Where to write the package (default: `target/debian`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Where each file of the package goes, and its mode.
const UNIT: &str = "lib/systemd/system/halo.service";
const CONFIG: &str = "etc/halo/halo.toml";
const BINARY: &str = "usr/bin/halo";
const MAN_DIR: &str = "usr/share/man/man1";
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/halo"),
    ("zsh", "usr/share/zsh/vendor-completions/_halo"),
    ("fish", "usr/share/fish/vendor_completions.d/halo.fish"),
];
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

pub fn run(args: &PackageArgs) -> Result<()> {
    let mut steps = Steps::new();
    let result = build(&mut steps, args);
    steps.print_summary();
    result.map(|deb| println!("\n{}", deb.display()))
}

fn build(steps: &mut Steps, args: &PackageArgs) -> Result<PathBuf> {
    let root = workspace_root();
    let halo = match &args.halo_bin {
        Some(bin) => bin.clone(),
        None => steps.run("build halo (release)", || {
            cmd::run(
                cmd::new("cargo")
                    .current_dir(&root)
                    .args(["build", "--release", "--package", "halo"]),
            )
            .hint("node/build.rs builds the eBPF objects with bpf-linker: see `cargo xtask setup`")?;
            Ok(Shown(target_dir(&root).join("release").join("halo")))
        })?.0,
    };
    let version = halo_version(&halo)?;
    let arch = cmd::read(cmd::new("dpkg").arg("--print-architecture"))
        .hint("dpkg-deb and dpkg build the package: apt-get install dpkg-dev")?
        .trim()
        .to_owned();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir(&root).join("debian"));
    let name = format!("halo_{version}_{arch}");
    let tree = out.join(&name);
    steps.run("lay out the package", || {
        lay_out(&root, &halo, &tree, &version, &arch).map(|()| Shown(tree.clone()))
    })?;
    let deb = out.join(format!("{name}.deb"));
    steps.run("dpkg-deb", || {
        cmd::run(
            cmd::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "--build"])
                .arg(&tree)
                .arg(&deb),
        )?;
        Ok(Shown(deb.clone()))
    })?;
    Ok(deb)
}

/// A path as a step's result.
struct Shown(PathBuf);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// `0.1.0` from `halo --version` (`halo 0.1.0`).
fn halo_version(halo: &Path) -> Result<String> {
    let line = cmd::read(cmd::new(halo).arg("--version"))?;
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["halo", version] => Ok(version.to_owned()),
        _ => bail!(
            "{} --version printed {line:?}, expected `halo VERSION`",
            halo.display()
        ),
    }
}

/// Writes the package tree below `tree` (emptied first).
fn lay_out(root: &Path, halo: &Path, tree: &Path, version: &str, arch: &str) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let packaging = root.join("packaging");
    copy(halo, &tree.join(BINARY), 0o755)?;
    copy(&packaging.join("halo.service"), &tree.join(UNIT), 0o644)?;
    copy(&packaging.join("halo.toml"), &tree.join(CONFIG), 0o644)?;

    // Man pages and completions from the binary being shipped.
    let man = tree.join(MAN_DIR);
    cmd::run(cmd::new(halo).args(["man", "--dir"]).arg(&man))?;
    for page in fs::read_dir(&man).with_context(|| format!("listing {}", man.display()))? {
        let page = page?.path();
        fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
        // -n: no name or time in the header, so that builds are reproducible.
        cmd::run(cmd::new("gzip").args(["-9n"]).arg(&page))?;
    }
    for (shell, path) in COMPLETIONS {
        let script = cmd::read(cmd::new(halo).args(["completions", shell]))?;
        write(&tree.join(path), script.as_bytes(), 0o644)?;
    }
    write(
        &tree.join("usr/share/doc/halo/copyright"),
        copyright().as_bytes(),
        0o644,
    )?;

    let debian = tree.join("DEBIAN");
    for script in MAINTAINER_SCRIPTS {
        copy(
            &packaging.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    write(
        &debian.join("conffiles"),
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    let installed_kib = disk_usage(tree)?.div_ceil(1024);
    write(
        &debian.join("control"),
        control(version, arch, installed_kib).as_bytes(),
        0o644,
    )
}

/// The package's `DEBIAN/control`.
fn control(version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: halo\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: halo developers <halo@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6\n\
         Recommends: bpftool\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: https://github.com/halo-ha/halo\n\
         Description: high availability for on-premise Linux farms\n \
         halo runs on every node of a cluster: a farm module shares a virtual IP\n \
         between N nodes with an XDP filter that gives each client to one node;\n \
         a mirror module replicates directories in real time between a primary\n \
         and a secondary and moves the virtual IP with the primary. One binary:\n \
         the daemon (systemd unit halo.service), the CLI and the web console.\n"
    )
}

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: halo\n\
         Source: https://github.com/halo-ha/halo\n\n\
         Files: *\n\
         License: {}\n",
        env!("CARGO_PKG_LICENSE")
    )
}

/// Bytes of the regular files below `dir`.
fn disk_usage(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += disk_usage(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &data, mode)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_are_one_per_line_and_the_description_is_folded() {
        let control = control("0.1.0", "amd64", 12345);
        assert!(control.contains("\nVersion: 0.1.0\n"), "{control}");
        assert!(control.contains("\nInstalled-Size: 12345\n"), "{control}");
        for line in control
            .lines()
            .skip_while(|l| !l.starts_with("Description:"))
            .skip(1)
        {
            assert!(
                line.starts_with(' '),
                "a continuation line must be indented: {line:?}"
            );
        }
    }
}
