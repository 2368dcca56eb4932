//! The node's local HTTP API: the SafeKit-compatible health check
//! (`/var/modules/<module>/ready.txt`), the JSON API under `/api/v1` that
//! the CLI and the console read and drive, its OpenAPI document
//! (`/api/v1/openapi.json`), the Prometheus metrics (`/metrics`) and the
//! web console (`/`, `/mosaic`).
//!
//! Every API route comes from one table (`routes::endpoints`): the router,
//! the access rule of each route and the OpenAPI document are all built
//! from it, so that a route cannot exist undocumented or with another
//! access than the document says. The console's pages come from the table
//! beside it (`routes::pages`).

pub mod auth;
mod console;
pub mod metrics;
pub mod openapi;
pub mod progress;
mod routes;
pub mod status;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

pub use auth::ApiToken;
pub use progress::ReplicationProgress;
#[doc(hidden)] // the request parsers, public for the fuzz target `api_body` only
pub use routes::{event_query, parse_switch, Switch};

use crate::{config::Config, farm::SharedTables};
pub use status::{ModuleCounters, ModuleStatus, NodeStatus, PeerStatus, ReloadReport};

/// The daemon's current view, published by its main loop and the module
/// drivers, read by the API.
pub type SharedStatus = Arc<RwLock<NodeStatus>>;

/// Changes the published status of `module` (ignored when it is not
/// configured): how drivers record state, counters and progress.
pub fn update_module(status: &SharedStatus, module: &str, change: impl FnOnce(&mut ModuleStatus)) {
    let mut status = status.write().expect("status lock");
    if let Some(m) = status.modules.iter_mut().find(|m| m.name == module) {
        change(m);
    }
}

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
    /// Every action, in the order the API documents them.
    pub const ALL: [ModuleAction; 10] = [
        ModuleAction::Start,
        ModuleAction::Stop,
        ModuleAction::Restart,
        ModuleAction::Prim,
        ModuleAction::Second,
        ModuleAction::Swap,
        ModuleAction::CheckersOn,
        ModuleAction::CheckersOff,
        ModuleAction::FailoverOn,
        ModuleAction::FailoverOff,
    ];

    /// The action named in a URL (`checkers-on`, `swap`, …).
    pub fn from_path(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.path() == segment)
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

    /// What the action does, for the API document.
    pub fn summary(self) -> &'static str {
        match self {
            ModuleAction::Start => "Start the module on this node",
            ModuleAction::Stop => "Stop the module on this node (stop scripts run)",
            ModuleAction::Restart => "Stop, then start the module on this node",
            ModuleAction::Prim => "Force this node primary (mirror: first start, recovery)",
            ModuleAction::Second => "Force this node secondary (mirror)",
            ModuleAction::Swap => "Planned switch-over of primary and secondary (mirror)",
            ModuleAction::CheckersOn => "Turn the module's checkers on",
            ModuleAction::CheckersOff => "Turn the module's checkers off (maintenance)",
            ModuleAction::FailoverOn => "Turn automatic failover on (mirror)",
            ModuleAction::FailoverOff => "Turn automatic failover off (mirror, maintenance)",
        }
    }
}

/// An administrator's action for a module, and where the module answers
/// whether its machine took it: `Err` with why it refused (a swap on a
/// node that is not the primary, a `prim` while the peer serves…).
#[derive(Debug)]
pub struct ActionRequest {
    pub action: ModuleAction,
    pub verdict: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl ActionRequest {
    /// A request, and where its verdict arrives.
    pub fn new(action: ModuleAction) -> (Self, tokio::sync::oneshot::Receiver<Result<(), String>>) {
        let (verdict, answer) = tokio::sync::oneshot::channel();
        (ActionRequest { action, verdict }, answer)
    }
}

/// Where module actions go: each running module's input, by name.
pub type ModuleActions = Arc<HashMap<String, UnboundedSender<ActionRequest>>>;

/// How the API asks the daemon to reload its configuration file: the
/// answer comes back on the enclosed channel, `Err` with why nothing
/// changed (an invalid file, an unreadable secret).
pub type ReloadRequests =
    UnboundedSender<tokio::sync::oneshot::Sender<Result<ReloadReport, String>>>;

/// What the API serves from: the daemon's shared state and configuration.
pub struct ApiContext {
    pub status: SharedStatus,
    pub actions: ModuleActions,
    pub token: ApiToken,
    pub tables: SharedTables,
    pub config: Arc<Config>,
    /// The daemon's reloads (`None`: this server cannot reload, 503).
    pub reload: Option<ReloadRequests>,
    /// The heartbeat thread's record of this process's pauses.
    pub pauses: Option<Arc<crate::daemon::heartbeat::PauseWatch>>,
}

#[derive(Clone)]
struct ApiState {
    status: SharedStatus,
    actions: ModuleActions,
    token: Arc<ApiToken>,
    tables: SharedTables,
    config: Arc<Config>,
    reload: Option<ReloadRequests>,
    pauses: Option<Arc<crate::daemon::heartbeat::PauseWatch>>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the health check and the API document.
    Open,
    /// Anyone while `api.open_read` is true, else the token's holders.
    Read,
    /// Only the token's holders.
    Write,
}

/// The API's routes, each behind its access rule, with JSON answers for
/// unknown paths and methods.
pub fn router(context: ApiContext) -> Router {
    let state = ApiState {
        status: context.status,
        actions: context.actions,
        token: Arc::new(context.token),
        tables: context.tables,
        config: context.config,
        reload: context.reload,
        pauses: context.pauses,
    };
    let mut router = Router::new();
    for endpoint in routes::endpoints() {
        let access = endpoint.access;
        let guarded = (endpoint.handler)().route_layer(middleware::from_fn_with_state(
            state.clone(),
            move |State(api): State<ApiState>, request: Request, next: Next| async move {
                match api.allow(access, &request) {
                    Ok(()) => next.run(request).await,
                    Err(why) => unauthorized(why),
                }
            },
        ));
        router = router.route(&endpoint.path, guarded);
    }
    for page in routes::pages() {
        router = router.route(page.path, (page.handler)());
    }
    router
        .fallback(|method: Method, uri: Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!(
                    "no endpoint {method} {}: see /api/v1/openapi.json",
                    uri.path()
                ),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} does not take {method}: see /api/v1/openapi.json",
                    uri.path()
                ),
            )
        })
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Cross-origin access for the console of a peer node, which reads and
/// drives this node's API from the browser. Any origin may call, without
/// credentials: the API's only credential is the bearer token, which a
/// browser never attaches by itself, so another origin can do nothing it
/// could not do with curl (reads open by `api.open_read` are open to every
/// client that reaches the port anyway). Preflights are answered here,
/// before routing and the access guard.
async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let private_network = request
        .headers()
        .contains_key("access-control-request-private-network");
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        // Chromium asks before a page on a public address calls a private
        // one: the nodes' addresses usually are.
        if private_network {
            headers.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
    }
    response
}

impl ApiState {
    /// Whether `request` may reach a route of `access`, or why not. The
    /// token is compared, never logged or echoed.
    fn allow(&self, access: Access, request: &Request) -> Result<(), &'static str> {
        let needs_token = match access {
            Access::Open => false,
            Access::Read => !self.config.api.open_read,
            Access::Write => true,
        };
        if needs_token {
            self.token.check(request.headers())
        } else {
            Ok(())
        }
    }
}

/// A 401 with the reason and the scheme the client should use.
fn unauthorized(why: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, why);
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
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
