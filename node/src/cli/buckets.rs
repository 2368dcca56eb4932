//! `halo buckets MODULE [--json]`.

use std::io::Write as _;

use super::{client, Target};

pub fn run(module: &str, json: bool, target: &Target) -> anyhow::Result<()> {
    let addr = target.api_addr()?;
    let path = if json {
        format!("/api/v1/modules/{module}/buckets")
    } else {
        format!("/api/v1/modules/{module}/buckets.txt")
    };
    let body = client::get_text(&addr, &path)?;
    let mut out = std::io::stdout().lock();
    out.write_all(body.as_bytes())?;
    if !body.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}
