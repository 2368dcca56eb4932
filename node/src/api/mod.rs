//! The node's local HTTP API: the SafeKit-compatible health check
//! (`/var/modules/<module>/ready.txt`) and the JSON state (`/api/v1/state`)
//! that `halo state` and `halo status` read.

pub mod status;

use std::sync::{Arc, RwLock};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
    Json, Router,
};

pub use status::{ModuleStatus, NodeStatus, PeerStatus};

/// The daemon's current view, published by its main loop and read by the API.
pub type SharedStatus = Arc<RwLock<NodeStatus>>;

/// The API's routes over the shared status.
pub fn router(status: SharedStatus) -> Router {
    Router::new()
        .route("/api/v1/state", get(state))
        .route("/var/modules/{module}/ready.txt", get(ready))
        .with_state(status)
}

async fn state(State(status): State<SharedStatus>) -> Json<NodeStatus> {
    Json(status.read().expect("status lock").clone())
}

/// 200 "OK" when this node serves the module (mirror PRIM or ALONE, farm UP,
/// Ready), 404 otherwise: what HAProxy `httpchk` and cloud load balancers
/// expect of SafeKit.
async fn ready(
    State(status): State<SharedStatus>,
    Path(module): Path<String>,
) -> impl IntoResponse {
    let serving = status
        .read()
        .expect("status lock")
        .modules
        .iter()
        .any(|m| m.name == module && m.serving);
    if serving {
        (StatusCode::OK, "OK\n")
    } else {
        (StatusCode::NOT_FOUND, "NOT READY\n")
    }
}
