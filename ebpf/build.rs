//! Rebuild the programs when the linker changes: cargo cannot see that the
//! object depends on the `bpf-linker` binary.
//!
//! And let LLVM load and store multi-byte fields at any alignment
//! (`allows-misaligned-mem-access`, bpf-linker built against LLVM 22):
//! packet headers sit at offsets an Ethernet header makes odd, and their
//! fields are byte arrays, which LLVM otherwise reads a byte at a time.
//! The verifier allows such accesses where the architecture handles them
//! (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`: x86-64, arm64); elsewhere it
//! refuses the programs at load. The farm's IPv4 TCP to the VIP went from
//! 50–58 to 44–45 ns over the no-op program with it (README). Only the
//! farm: the verifier never allows a misaligned access to the stack, which
//! LLVM then makes in the capture's programs (`misaligned stack access`);
//! a farm change that makes one fails every farm test at load.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg-bin=halo-farm=--cpu-features=+allows-misaligned-mem-access");
}
