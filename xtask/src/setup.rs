//! `cargo xtask setup`: installs and mounts what building and testing halo
//! need. Idempotent: a step finding its work done says so and does nothing.

use std::fmt::{self, Display};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use nix::mount::{mount, MsFlags};
use nix::unistd::Uid;

use crate::cmd;
use crate::step::{seconds, HintExt as _, Steps};

/// Debian packages the lab tests need, in one place so that features add
/// theirs here.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // `ip`: namespaces, veths, bridges, addresses.
    "iproute2",
    // `nft`: cutting and dropping traffic between lab nodes.
    "nftables",
    // `ping`: reachability checks inside the lab.
    "iputils-ping",
    // `bpftool`: showing loaded programs and maps when a test fails.
    "bpftool",
    // `keepalived`: the VRRP baseline of `cargo xtask bench farm`'s outage.
    "keepalived",
    // `rsync`: the baseline of `cargo xtask bench mirror`'s resync and
    // initial copy.
    "rsync",
    // `lsyncd`: the baseline of `cargo xtask bench mirror`'s replication lag.
    "lsyncd",
    // `promtool`: checking the daemon's `/metrics` exposition in the lab tests.
    "prometheus",
    // Headless Chromium and its WebDriver: the lab test `daemon::console`
    // drives the web console in a real browser.
    "chromium",
    "chromium-driver",
];

/// The bpf-linker release known to build against the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release `cargo xtask fuzz` runs the fuzz targets with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Kernel type information, from which halo reads struct offsets.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Runs every set-up step, stopping at the first that fails.
pub fn run() -> Result<()> {
    let mut steps = Steps::new();
    steps.run("root", || require_root().map(|()| "running as root"))?;
    steps.run("kernel BTF", kernel_btf)?;
    steps.run("bpffs", || mount_once("bpf", "/sys/fs/bpf"))?;
    steps.run("tracefs", || mount_once("tracefs", "/sys/kernel/tracing"))?;
    steps.run("Debian packages", debian_packages)?;
    let nightly = steps.run("nightly toolchain", Nightly::detect)?;
    steps.run("nightly rust-src", rust_src)?;
    steps.run("bpf-linker", || bpf_linker(&nightly))?;
    steps.run("cargo-fuzz", cargo_fuzz)?;
    println!("setup: done in {}", seconds(steps.elapsed()));
    Ok(())
}

/// Fails unless the effective user is root.
pub fn require_root() -> Result<()> {
    if !Uid::effective().is_root() {
        return Err(anyhow!(
            "run as root: the lab needs network namespaces, mounts and eBPF"
        ))
        .hint("e.g. `sudo -E env PATH=\"$PATH\" cargo xtask …`");
    }
    Ok(())
}

fn kernel_btf() -> Result<String> {
    match fs::metadata(KERNEL_BTF) {
        Ok(meta) => Ok(format!("{KERNEL_BTF} present ({} KiB)", meta.len() / 1024)),
        Err(error) => Err(error)
            .with_context(|| format!("kernel BTF is required and {KERNEL_BTF} is unreadable"))
            .hint(
                "halo reads kernel struct offsets from BTF at start-up: \
                 boot a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            ),
    }
}

/// Mounts a pseudo file system of type `fstype` on `target` unless one is
/// there already: a fresh boot of this machine kind mounts neither bpffs nor
/// tracefs.
fn mount_once(fstype: &str, target: &str) -> Result<String> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(target) && fields.next() == Some(fstype)
    });
    if mounted {
        return Ok(format!("{fstype} already mounted on {target}"));
    }
    mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount -t {fstype} {fstype} {target}"))
    .hint("a container without CAP_SYS_ADMIN cannot mount it: use a VM or a privileged machine")?;
    Ok(format!("mounted {fstype} on {target}"))
}

/// Installs the missing ones of [`DEBIAN_PACKAGES`]; touches apt only when
/// one is missing.
fn debian_packages() -> Result<String> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        // dpkg-query fails for a package it never heard of: that is missing too.
        let status = cmd::read(cmd::new("dpkg-query").args(["-W", "-f=${Status}", package]));
        if !matches!(status.as_deref(), Ok("install ok installed")) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(format!("all installed ({})", DEBIAN_PACKAGES.join(", ")));
    }
    println!("  missing: {}", missing.join(", "));
    // Other jobs on the machine may hold apt's lock for a while: wait for it.
    let apt_get = || {
        let mut apt = cmd::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=300"]);
        apt
    };
    cmd::run(apt_get().args(["update", "-q"]))
        .hint("check the network and /etc/apt/sources.list")?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .hint("see apt's message above; `apt-get -f install` repairs a half-done install")?;
    Ok(format!("installed {}", missing.join(", ")))
}

/// The `nightly` toolchain, which builds the eBPF crate and whose LLVM
/// bpf-linker must use: rustc's bitcode is only readable by the same LLVM.
pub struct Nightly {
    /// `rustc --version` of the nightly.
    release: String,
    /// Major version of the nightly's LLVM, which picks bpf-linker's
    /// `llvm-<major>` feature.
    llvm_major: u32,
    /// `<sysroot>/lib`, which holds the nightly's libLLVM.
    lib_dir: PathBuf,
    /// File name of the libLLVM shared object in `lib_dir`, e.g.
    /// `libLLVM.so.22.1-rust-1.97.0-nightly`: it is also the soname a
    /// bpf-linker built against it asks for.
    libllvm: String,
}

impl Nightly {
    /// Finds the nightly toolchain and reads its LLVM version and sysroot.
    fn detect() -> Result<Self> {
        // Ask rustup first: `rustc +nightly` on a machine without one may try
        // to download the newest nightly, which the pinned aya does not build with.
        let toolchains = cmd::read(cmd::new("rustup").args(["toolchain", "list"]))
            .hint("install rustup: https://rustup.rs")?;
        if !toolchains.lines().any(|line| line.starts_with("nightly")) {
            return Err(anyhow!("no `nightly` toolchain installed")).hint(
                "this machine kind ships one (rustc 1.97.0-nightly of 2026-05-19), which the \
                 pinned aya versions build with; elsewhere try \
                 `rustup toolchain install nightly --component rust-src`, knowing that a \
                 newer nightly may not build aya 0.14",
            );
        }
        let version = cmd::read(cmd::new("rustc").args(["+nightly", "-vV"]))?;
        let field = |name: &str| {
            version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("`rustc +nightly -vV` has no `{name}` line"))
        };
        let release = version.lines().next().unwrap_or_default().to_owned();
        let llvm = field("LLVM version:")?;
        let llvm_major = llvm
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .with_context(|| format!("cannot read LLVM's major version from {llvm:?}"))?;
        let sysroot = cmd::read(cmd::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
        let libllvm = find_libllvm(&lib_dir)?;
        Ok(Self {
            release,
            llvm_major,
            lib_dir,
            libllvm,
        })
    }

    /// Full path of the libLLVM shared object.
    fn libllvm_path(&self) -> PathBuf {
        self.lib_dir.join(&self.libllvm)
    }
}

impl Display for Nightly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, LLVM {}", self.release, self.llvm_major)
    }
}

/// The one `libLLVM.so.*` file in `lib_dir`. (`libLLVM-<major>-….so` beside
/// it is a linker script, not the library.)
fn find_libllvm(lib_dir: &Path) -> Result<String> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            found.push(name);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(anyhow!(
            "expected one libLLVM.so.* in {}, found {found:?}",
            lib_dir.display()
        ))
        .hint(
            "the nightly looks damaged: `rustup toolchain uninstall nightly` and install it again",
        ),
    }
}

/// Adds `rust-src` to the nightly: `-Z build-std=core` compiles `core` for
/// the BPF target from it.
fn rust_src() -> Result<String> {
    let installed = cmd::read(cmd::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok("already installed".into());
    }
    cmd::run(cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .hint("rustup needs to reach static.rust-lang.org: check the network")?;
    Ok("installed".into())
}

/// Makes sure `bpf-linker` runs on its own and loads the nightly's libLLVM,
/// building it when it does not.
///
/// What a binary was built against is written in the binary itself: its
/// libLLVM soname carries rustc's version, and its run path says where to
/// find it. So the check asks the binary (`--version`, `ldd`) rather than a
/// stamp file, which a hand-made install would not update.
fn bpf_linker(nightly: &Nightly) -> Result<String> {
    let linker = cmd::install_bin_dir().join("bpf-linker");
    let Some(problem) = linker_problem(&linker, nightly) else {
        return Ok(format!(
            "{BPF_LINKER_VERSION} at {} loads {}",
            linker.display(),
            nightly.libllvm
        ));
    };
    println!("  {problem}");

    // llvm-sys links against `$LLVM_PREFIX/lib/libLLVM.so`: point it at the
    // nightly's own library, so no system LLVM is needed (Debian's is too
    // old to read rustc's bitcode anyway).
    let prefix = cache_dir().join(format!("llvm-{}", nightly.llvm_major));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    replace_symlink(&nightly.libllvm_path(), &prefix_lib.join("libLLVM.so"))?;

    println!(
        "  building bpf-linker {BPF_LINKER_VERSION} against {} (1 to 3 minutes)",
        nightly.libllvm
    );
    cmd::run(
        cmd::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            // The run path lets the binary find libLLVM without `rustup run`
            // setting LD_LIBRARY_PATH: it is also run by hand and by tools.
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", nightly.lib_dir.display()),
            )
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", nightly.llvm_major))
            // --force: cargo skips a crate it has recorded as installed, even
            // when the recorded binary no longer runs.
            .args(["--locked", "--force"]),
    )
    .hint("read cargo's error above; a network failure can simply be retried")?;

    if let Some(problem) = linker_problem(&linker, nightly) {
        return Err(anyhow!("the bpf-linker just built is unusable: {problem}"))
            .hint("check that `ldd` on it resolves libLLVM into the nightly's lib directory");
    }
    Ok(format!(
        "built {BPF_LINKER_VERSION} at {} against {}",
        linker.display(),
        nightly.libllvm
    ))
}

/// Installs cargo-fuzz, which builds and runs the fuzz targets of `fuzz/`
/// with the nightly, unless the expected release is there.
fn cargo_fuzz() -> Result<String> {
    let installed = cmd::read(cmd::new("cargo").args(["fuzz", "--version"]));
    // Prints `cargo-fuzz 0.13.2`.
    if let Ok(version) = &installed {
        if version.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
            return Ok(format!("{CARGO_FUZZ_VERSION} already installed"));
        }
    }
    println!("  installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    cmd::run(
        cmd::new("cargo")
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
            .args(["--locked", "--force"]),
    )
    .hint("read cargo's error above; a network failure can simply be retried")?;
    Ok(format!("installed {CARGO_FUZZ_VERSION}"))
}

/// Why the bpf-linker at `linker` cannot be used with `nightly`, or `None`
/// when it can: it must run without help from `rustup`, be the expected
/// release and load the nightly's libLLVM.
fn linker_problem(linker: &Path, nightly: &Nightly) -> Option<String> {
    if !linker.exists() {
        return Some(format!(
            "bpf-linker is not installed at {}",
            linker.display()
        ));
    }
    // Without the LD_LIBRARY_PATH that rustup and `cargo run` set: it must
    // also run by hand and from tools outside rustup.
    let version = match cmd::read(
        cmd::new(linker)
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    ) {
        Ok(version) => version,
        Err(error) => return Some(format!("{} does not run: {error:#}", linker.display())),
    };
    let release = version.split_whitespace().nth(1).unwrap_or_default();
    if release != BPF_LINKER_VERSION {
        return Some(format!(
            "found bpf-linker {release:?}, halo needs {BPF_LINKER_VERSION}"
        ));
    }
    let loaded = match loaded_libllvm(linker) {
        Ok(loaded) => loaded,
        Err(error) => return Some(format!("{error:#}")),
    };
    let wanted = nightly.libllvm_path();
    let same = match (fs::canonicalize(&loaded), fs::canonicalize(&wanted)) {
        (Ok(loaded), Ok(wanted)) => loaded == wanted,
        _ => false,
    };
    if !same {
        return Some(format!(
            "bpf-linker loads {}, not the nightly's {}",
            loaded.display(),
            wanted.display()
        ));
    }
    None
}

/// The libLLVM file the dynamic loader picks for `linker`, from `ldd`.
fn loaded_libllvm(linker: &Path) -> Result<PathBuf> {
    let libraries = cmd::read(cmd::new("ldd").arg(linker).env_remove("LD_LIBRARY_PATH"))?;
    // A line reads `libLLVM.so.22.1-rust-… => /path/to/it (0x…)`, or
    // `… => not found`.
    let line = libraries
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("libLLVM"))
        .with_context(|| format!("{} does not link libLLVM dynamically", linker.display()))?;
    let resolved = line
        .split_once("=>")
        .map(|(_, rest)| rest.trim())
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|path| path.starts_with('/'))
        .with_context(|| format!("the loader cannot find bpf-linker's libLLVM: {line}"))?;
    Ok(PathBuf::from(resolved))
}

/// `$XDG_CACHE_HOME/halo`, else `~/.cache/halo`.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::home_dir().join(".cache"))
        .join("halo")
}

/// Makes `link` a symlink to `target`, replacing whatever was there.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    match fs::remove_file(link) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("cannot remove {}", link.display()))
        }
        _ => {}
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
}
