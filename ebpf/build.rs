//! Rebuild the programs when the linker changes: cargo cannot see that the
//! object depends on the `bpf-linker` binary.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
