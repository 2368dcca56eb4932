//! The node's local HTTP API: the SafeKit-compatible health check
//! (`/var/modules/<module>/ready.txt`), the JSON state (`/api/v1/state`)
//! that `halo state` and `halo status` read, and module actions
//! (`POST /api/v1/modules/<module>/<action>`) behind a bearer token.

pub mod auth;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

pub use auth::ApiToken;

use crate::farm::SharedTables;
pub use status::{ModuleStatus, NodeStatus, PeerStatus};

/// The daemon's current view, published by its main loop and read by the API.
pub type SharedStatus = Arc<RwLock<NodeStatus>>;

/// An administrator's action on one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleAction {
    Start,
    Stop,
    Restart,
    Prim,
    Second,
    Swap,
    CheckersOn,
    CheckersOff,
    FailoverOn,
    FailoverOff,
}

impl ModuleAction {
    /// The action named in a URL (`checkers-on`, `swap`, …).
    pub fn from_path(segment: &str) -> Option<Self> {
        Some(match segment {
            "start" => ModuleAction::Start,
            "stop" => ModuleAction::Stop,
            "restart" => ModuleAction::Restart,
            "prim" => ModuleAction::Prim,
            "second" => ModuleAction::Second,
            "swap" => ModuleAction::Swap,
            "checkers-on" => ModuleAction::CheckersOn,
            "checkers-off" => ModuleAction::CheckersOff,
            "failover-on" => ModuleAction::FailoverOn,
            "failover-off" => ModuleAction::FailoverOff,
            _ => return None,
        })
    }

    /// The URL segment of the action.
    pub fn path(self) -> &'static str {
        match self {
            ModuleAction::Start => "start",
            ModuleAction::Stop => "stop",
            ModuleAction::Restart => "restart",
            ModuleAction::Prim => "prim",
            ModuleAction::Second => "second",
            ModuleAction::Swap => "swap",
            ModuleAction::CheckersOn => "checkers-on",
            ModuleAction::CheckersOff => "checkers-off",
            ModuleAction::FailoverOn => "failover-on",
            ModuleAction::FailoverOff => "failover-off",
        }
    }
}

/// Where module actions go: each running module's input, by name.
pub type ModuleActions = Arc<HashMap<String, UnboundedSender<ModuleAction>>>;

#[derive(Clone)]
struct ApiState {
    status: SharedStatus,
    actions: ModuleActions,
    token: Arc<ApiToken>,
    tables: SharedTables,
}

/// The API's routes.
pub fn router(
    status: SharedStatus,
    actions: ModuleActions,
    token: ApiToken,
    tables: SharedTables,
) -> Router {
    Router::new()
        .route("/api/v1/state", get(state))
        .route("/api/v1/modules/{module}/buckets", get(buckets))
        .route("/api/v1/modules/{module}/buckets.txt", get(buckets_text))
        .route("/api/v1/modules/{module}/counters", get(counters))
        .route("/api/v1/modules/{module}/{action}", post(act))
        .route("/var/modules/{module}/ready.txt", get(ready))
        .with_state(ApiState {
            status,
            actions,
            token: Arc::new(token),
            tables,
        })
}

/// The farm module's live bucket table as JSON: shares per node and the
/// owner of every bucket.
async fn buckets(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    match api.tables.read().expect("tables lock").get(&module) {
        Some(view) => Json(&view.table).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no bucket table for {module:?}: not a farm module serving on this node"),
        ),
    }
}

/// The farm filter's counters on this node (refreshed every second):
/// frames per verdict, and accepted packets per bucket.
async fn counters(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    match api.tables.read().expect("tables lock").get(&module) {
        Some(view) => Json(&view.counters).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no counters for {module:?}: not a farm module serving on this node"),
        ),
    }
}

/// The same, as the table `halo buckets` prints.
async fn buckets_text(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    match api.tables.read().expect("tables lock").get(&module) {
        Some(view) => view.table.to_string().into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no bucket table for {module:?}: not a farm module serving on this node"),
        ),
    }
}

/// A JSON error body: `{"error": "…"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn state(State(api): State<ApiState>) -> Json<NodeStatus> {
    Json(api.status.read().expect("status lock").clone())
}

async fn act(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path((module, action)): Path<(String, String)>,
) -> Response {
    if let Err(why) = api.token.check(&headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let Some(action) = ModuleAction::from_path(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: expected start, stop, restart, prim, second, swap, checkers-on, checkers-off, failover-on or failover-off"),
        );
    };
    let Some(module_tx) = api.actions.get(&module) else {
        let known = api
            .status
            .read()
            .expect("status lock")
            .modules
            .iter()
            .any(|m| m.name == module);
        return if known {
            error(
                StatusCode::CONFLICT,
                format!("module {module:?} is not running on this node"),
            )
        } else {
            error(StatusCode::NOT_FOUND, format!("no module {module:?}"))
        };
    };
    if module_tx.send(action).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the module is shutting down",
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "module": module, "action": action })),
    )
        .into_response()
}

/// 200 "OK" when this node serves the module (mirror PRIM or ALONE, farm UP,
/// Ready), 404 otherwise: what HAProxy `httpchk` and cloud load balancers
/// expect of SafeKit.
async fn ready(State(api): State<ApiState>, Path(module): Path<String>) -> impl IntoResponse {
    let serving = api
        .status
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
