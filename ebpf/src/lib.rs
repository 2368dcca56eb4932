//! Helpers shared by halo's kernel programs; the programs themselves are the
//! crate's binaries (`halo-farm`, `halo-capture`), one object each, so that
//! loading one never creates the other's maps. `node/build.rs` builds them
//! for `bpfel-unknown-none` and the `halo` binary embeds them.
#![no_std]

pub mod packet;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never part of a loaded program; it only satisfies `no_std`.
    loop {}
}
