//! The CLI's client of the local daemon's API.

use std::time::Duration;

use anyhow::Context as _;

use crate::api::{ApiError, ModuleAction, NodeStatus};

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

/// Asks the daemon at `addr` to perform `action` on `module`.
pub fn post_action(
    addr: &str,
    token: &str,
    module: &str,
    action: ModuleAction,
) -> anyhow::Result<()> {
    let url = format!("http://{addr}/api/v1/modules/{module}/{}", action.path());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
        .with_context(|| {
            format!("cannot reach the halo daemon at {addr}: is `halo run` running?")
        })?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let message = response
        .body_mut()
        .read_json::<ApiError>()
        .map(|e| e.error)
        .unwrap_or_else(|_| "no details".to_owned());
    anyhow::bail!(
        "the daemon at {addr} refused {} of {module}: {status}: {message}",
        action.path()
    )
}

/// GETs `path` from the daemon at `addr`; an error answer becomes an error
/// naming the daemon's reason.
pub fn get_text(addr: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(&url).call().with_context(|| {
        format!("cannot reach the halo daemon at {addr}: is `halo run` running?")
    })?;
    let status = response.status();
    let body = response.body_mut().read_to_string()?;
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_str::<ApiError>(&body).map_or(body, |e| e.error);
    anyhow::bail!("the daemon at {addr} answered {status}: {message}")
}
