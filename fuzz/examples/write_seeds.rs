//! Writes the seed corpus of every target into `fuzz/corpus/<target>/`:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example write_seeds`.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, inputs) in halo_fuzz::seeds() {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        for (index, input) in inputs.iter().enumerate() {
            fs::write(dir.join(format!("seed-{index}")), input)?;
        }
        println!("{}: {} seeds", dir.display(), inputs.len());
    }
    Ok(())
}
