//! The CLI's client of the local daemon's API.

use std::time::Duration;

use anyhow::Context as _;

use crate::api::NodeStatus;

/// Reads `/api/v1/state` from the daemon at `addr` (host:port).
pub fn fetch_status(addr: &str) -> anyhow::Result<NodeStatus> {
    let url = format!("http://{addr}/api/v1/state");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(&url).call().with_context(|| {
        format!("cannot reach the halo daemon at {addr}: is `halo run` running?")
    })?;
    response
        .body_mut()
        .read_json()
        .with_context(|| format!("the daemon at {addr} sent an unreadable state"))
}
