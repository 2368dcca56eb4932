//! The route table and its handlers. `endpoints()` is the one list the
//! router, the access rules and the OpenAPI document are built from;
//! `pages()` lists the web console's pages and assets beside it.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Json,
};
use serde::{Deserialize, Serialize};

use super::{error, Access, ApiState, ModuleAction, ModuleStatus, NodeStatus};
use crate::{
    app::checker::{checker_id, CheckerContext},
    daemon::module_log::{self, LogEntry},
};

/// How a route answers with one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// JSON of the named component schema.
    Json(&'static str),
    /// Plain text.
    Text,
    /// The Prometheus text exposition format.
    Metrics,
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
}

/// One route of the API.
pub struct Endpoint {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path, with `{parameters}`.
    pub path: String,
    pub summary: String,
    pub access: Access,
    pub query: &'static [QueryParam],
    /// The request body's component schema.
    pub request: Option<&'static str>,
    /// Answers besides the ones every route of its kind has (401 for
    /// guarded routes, 404 for a path naming a module or node, 400 for
    /// routes with a body or a query): the API document adds those.
    pub responses: Vec<(u16, Body)>,
    pub(super) handler: Box<dyn Fn() -> MethodRouter<ApiState>>,
}

/// The status codes a route answers with, its own and the common ones.
impl Endpoint {
    pub fn all_responses(&self) -> Vec<(u16, Body)> {
        let mut all = self.responses.clone();
        let error = Body::Json("Error");
        if self.access != Access::Open {
            all.push((401, error));
        }
        if (self.path.contains("{module}") || self.path.contains("{node}"))
            && !all.iter().any(|(code, _)| *code == 404)
        {
            all.push((404, error));
        }
        if self.request.is_some() || !self.query.is_empty() {
            all.push((400, error));
        }
        all.sort_by_key(|(code, _)| *code);
        all
    }
}

const EVENT_QUERY: &[QueryParam] = &[
    QueryParam {
        name: "since_ms",
        description: "only events at or after this time (milliseconds since the Unix epoch)",
    },
    QueryParam {
        name: "limit",
        description: "at most this many events, the latest (default 1000)",
    },
];

/// Every route of the API.
pub fn endpoints() -> Vec<Endpoint> {
    fn endpoint(
        method: &'static str,
        path: &str,
        summary: &str,
        access: Access,
        responses: Vec<(u16, Body)>,
        handler: impl Fn() -> MethodRouter<ApiState> + 'static,
    ) -> Endpoint {
        Endpoint {
            method,
            path: path.to_owned(),
            summary: summary.to_owned(),
            access,
            query: &[],
            request: None,
            responses,
            handler: Box::new(handler),
        }
    }
    use Access::{Open, Read, Write};
    use Body::{Json as J, Metrics, Text};
    let mut all = vec![
        endpoint(
            "get",
            "/var/modules/{module}/ready.txt",
            "Health check: 200 OK when this node serves the module (mirror PRIM or ALONE, farm UP), 404 otherwise",
            Open,
            vec![(200, Text), (404, Text)],
            || get(ready),
        ),
        endpoint(
            "get",
            "/api/v1/openapi.json",
            "This document",
            Open,
            vec![(200, J("OpenApiDocument"))],
            || get(openapi),
        ),
        endpoint(
            "get",
            "/metrics",
            "Prometheus metrics (text exposition format 0.0.4)",
            Read,
            vec![(200, Metrics)],
            || get(metrics),
        ),
        endpoint(
            "get",
            "/api/v1/state",
            "Everything this node knows: itself, its peers, its modules (what `halo status` shows)",
            Read,
            vec![(200, J("NodeStatus"))],
            || get(state),
        ),
        endpoint(
            "get",
            "/api/v1/cluster",
            "The cluster: its name, heartbeat networks, nodes and modules",
            Read,
            vec![(200, J("Cluster"))],
            || get(cluster),
        ),
        endpoint(
            "get",
            "/api/v1/nodes",
            "Every node with its liveness on each heartbeat network, as this node sees it",
            Read,
            vec![(200, J("NodeList"))],
            || get(nodes),
        ),
        endpoint(
            "get",
            "/api/v1/nodes/{node}",
            "One node with its liveness on each heartbeat network",
            Read,
            vec![(200, J("Node"))],
            || get(node),
        ),
        endpoint(
            "get",
            "/api/v1/modules",
            "Every module's state on this node",
            Read,
            vec![(200, J("ModuleList"))],
            || get(modules),
        ),
        endpoint(
            "get",
            "/api/v1/modules/{module}",
            "One module's state on this node, with its replication progress and counters",
            Read,
            vec![(200, J("ModuleStatus"))],
            || get(module),
        ),
        endpoint(
            "get",
            "/api/v1/modules/{module}/progress",
            "The module's replication progress (null until a mirror module publishes it)",
            Read,
            vec![(200, J("Progress"))],
            || get(progress),
        ),
        endpoint(
            "get",
            "/api/v1/modules/{module}/checkers",
            "The module's checkers with their latest results",
            Read,
            vec![(200, J("CheckerList"))],
            || get(checkers),
        ),
        Endpoint {
            query: EVENT_QUERY,
            ..endpoint(
                "get",
                "/api/v1/modules/{module}/events",
                "The module's event log (state changes, checker results, script output), oldest first",
                Read,
                vec![(200, J("EventList"))],
                || get(events),
            )
        },
        endpoint(
            "get",
            "/api/v1/modules/{module}/buckets",
            "The farm's bucket table: load share per node and the owner of every bucket",
            Read,
            vec![(200, J("BucketTable"))],
            || get(buckets),
        ),
        endpoint(
            "get",
            "/api/v1/modules/{module}/buckets.txt",
            "The farm's bucket table as `halo buckets` prints it",
            Read,
            vec![(200, Text)],
            || get(buckets_text),
        ),
        endpoint(
            "get",
            "/api/v1/modules/{module}/counters",
            "The farm filter's counters on this node: frames per verdict, packets per bucket",
            Read,
            vec![(200, J("FarmCounters"))],
            || get(counters),
        ),
    ];
    let accepted = || {
        vec![
            (202, Body::Json("ActionAccepted")),
            (409, Body::Json("Error")),
            (503, Body::Json("Error")),
        ]
    };
    for action in ModuleAction::ALL {
        all.push(endpoint(
            "post",
            &format!("/api/v1/modules/{{module}}/{}", action.path()),
            action.summary(),
            Write,
            accepted(),
            move || {
                post(
                    move |State(api): State<ApiState>, Path(module): Path<String>| async move {
                        act(&api, &module, action).await
                    },
                )
            },
        ));
    }
    all.push(endpoint(
        "post",
        "/api/v1/reload",
        "Re-read the configuration file (as SIGHUP does): apply what changes live (the cluster secrets), refuse the rest, key by key, and keep running on the old values; an invalid file changes nothing (422)",
        Write,
        vec![
            (200, J("ReloadReport")),
            (422, J("Error")),
            (503, J("Error")),
        ],
        || post(reload),
    ));
    all.push(Endpoint {
        request: Some("Switch"),
        ..endpoint(
            "post",
            "/api/v1/modules/{module}/checkers",
            "Turn the module's checkers on or off",
            Write,
            accepted(),
            || {
                post(|api: State<ApiState>, module: Path<String>, body: Bytes| {
                    switch(
                        api,
                        module,
                        body,
                        ModuleAction::CheckersOn,
                        ModuleAction::CheckersOff,
                    )
                })
            },
        )
    });
    all.push(Endpoint {
        request: Some("Switch"),
        ..endpoint(
            "post",
            "/api/v1/modules/{module}/failover",
            "Turn automatic failover on or off (mirror)",
            Write,
            accepted(),
            || {
                post(|api: State<ApiState>, module: Path<String>, body: Bytes| {
                    switch(
                        api,
                        module,
                        body,
                        ModuleAction::FailoverOn,
                        ModuleAction::FailoverOff,
                    )
                })
            },
        )
    });
    all
}

/// A page or asset of the web console (`super::console`).
pub struct Page {
    pub path: &'static str,
    pub(super) handler: fn() -> MethodRouter<ApiState>,
}

/// Every page and asset of the web console. They are open: they carry no
/// data, and their scripts call the API under its own access rules. They
/// stay out of the OpenAPI document, which describes the API's JSON and
/// text operations for programs (the lab test `daemon::api` calls each of
/// those and checks its media type); the console's are for browsers.
pub fn pages() -> Vec<Page> {
    use super::console::{CONSOLE_JS, ICON, INDEX, MOSAIC_JS, STYLE};
    vec![
        // The web console: nodes, modules, load share, replication, events, actions.
        Page {
            path: "/",
            handler: || get(|| async { INDEX.response() }),
        },
        // The mosaic test page: requests to a VIP, each tile painted by the node that answered.
        Page {
            path: "/mosaic",
            handler: || {
                get(
                    |State(api): State<ApiState>| async move { super::console::mosaic(&api.config) },
                )
            },
        },
        // The console's style sheet.
        Page {
            path: "/console/console.css",
            handler: || get(|| async { STYLE.response() }),
        },
        // The console's script.
        Page {
            path: "/console/console.js",
            handler: || get(|| async { CONSOLE_JS.response() }),
        },
        // The mosaic page's script.
        Page {
            path: "/console/mosaic.js",
            handler: || get(|| async { MOSAIC_JS.response() }),
        },
        // The console's icon.
        Page {
            path: "/favicon.svg",
            handler: || get(|| async { ICON.response() }),
        },
    ]
}

async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

async fn metrics(State(api): State<ApiState>) -> Response {
    let text = {
        let status = api.status.read().expect("status lock");
        let tables = api.tables.read().expect("tables lock");
        super::metrics::render(&status, &tables)
    };
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

async fn state(State(api): State<ApiState>) -> Json<NodeStatus> {
    Json(api.status.read().expect("status lock").clone())
}

/// `/api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    /// The node answering.
    pub node: String,
    /// Its boot epoch.
    pub epoch: u64,
    pub networks: Vec<ClusterNetwork>,
    /// Every node's name.
    pub nodes: Vec<String>,
    pub modules: Vec<ClusterModule>,
}

/// A heartbeat network of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub name: String,
    pub port: u16,
    pub pulse_ms: u64,
    pub timeout_ms: u64,
}

/// A module of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterModule {
    pub name: String,
    pub kind: String,
    /// The nodes it runs on.
    pub nodes: Vec<String>,
}

async fn cluster(State(api): State<ApiState>) -> Json<Cluster> {
    let config = &api.config;
    let status = api.status.read().expect("status lock");
    Json(Cluster {
        name: config.cluster.name.clone(),
        node: status.node.clone(),
        epoch: status.epoch,
        networks: config
            .cluster
            .networks
            .iter()
            .map(|n| ClusterNetwork {
                name: n.name.clone(),
                port: n.port,
                pulse_ms: n.pulse.as_millis() as u64,
                timeout_ms: n.timeout.as_millis() as u64,
            })
            .collect(),
        nodes: config
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect(),
        modules: status
            .modules
            .iter()
            .map(|m| ClusterModule {
                name: m.name.clone(),
                kind: m.kind.clone(),
                nodes: config
                    .module(&m.name)
                    .map(|c| c.nodes().to_vec())
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

/// A node as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Whether it is the node answering.
    pub local: bool,
    /// Heard on at least one heartbeat network (always true for the local node).
    pub up: bool,
    pub networks: Vec<NodeNetwork>,
}

/// A node on one heartbeat network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeNetwork {
    pub name: String,
    /// Its address there (`null` when it has none on this network).
    pub address: Option<String>,
    /// Heard there within the network's timeout.
    pub up: bool,
}

/// `/api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

fn node_views(api: &ApiState) -> Vec<Node> {
    let status = api.status.read().expect("status lock");
    api.config
        .cluster
        .nodes
        .iter()
        .map(|n| {
            let peer = status.peers.iter().find(|p| p.name == n.name);
            let local = n.name == status.node;
            Node {
                name: n.name.clone(),
                local,
                up: local || peer.is_some_and(|p| p.up),
                networks: api
                    .config
                    .cluster
                    .networks
                    .iter()
                    .map(|net| NodeNetwork {
                        name: net.name.clone(),
                        address: n.addresses.get(&net.name).map(|a| a.to_string()),
                        up: local
                            || peer.is_some_and(|p| {
                                p.networks.iter().any(|pn| pn.name == net.name && pn.up)
                            }),
                    })
                    .collect(),
            }
        })
        .collect()
}

async fn nodes(State(api): State<ApiState>) -> Json<NodeList> {
    Json(NodeList {
        nodes: node_views(&api),
    })
}

async fn node(State(api): State<ApiState>, Path(name): Path<String>) -> Response {
    match node_views(&api).into_iter().find(|n| n.name == name) {
        Some(node) => Json(node).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no node {name:?}")),
    }
}

/// `/api/v1/modules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleList {
    pub modules: Vec<ModuleStatus>,
}

async fn modules(State(api): State<ApiState>) -> Json<ModuleList> {
    Json(ModuleList {
        modules: api.status.read().expect("status lock").modules.clone(),
    })
}

/// The published status of `module`, or a 404 naming it (boxed: a
/// response is large and this is the rare path).
fn find_module(api: &ApiState, module: &str) -> Result<ModuleStatus, Box<Response>> {
    api.status
        .read()
        .expect("status lock")
        .modules
        .iter()
        .find(|m| m.name == module)
        .cloned()
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                format!("no module {module:?}"),
            ))
        })
}

async fn module(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    match find_module(&api, &module) {
        Ok(m) => Json(m).into_response(),
        Err(response) => *response,
    }
}

/// `/api/v1/modules/<module>/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub module: String,
    pub progress: Option<super::ReplicationProgress>,
}

async fn progress(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    match find_module(&api, &module) {
        Ok(m) => Json(Progress {
            module: m.name,
            progress: m.progress,
        })
        .into_response(),
        Err(response) => *response,
    }
}

/// `/api/v1/modules/<module>/checkers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckerList {
    pub module: String,
    /// Whether the checkers run (`checkers off` stops them for maintenance).
    pub enabled: bool,
    pub checkers: Vec<CheckerView>,
}

/// One configured checker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckerView {
    /// As in the module log: `tcp:127.0.0.1:80`, `process:nginx`, ….
    pub id: String,
    /// `process`, `tcp`, `http`, `command`, `interface` or `vip`.
    pub kind: String,
    /// What the module does when it fails: `restart`, `stopstart`, `stop` or `wait`.
    pub action: String,
    pub interval_ms: u64,
    /// The results so far; `null` before the first.
    pub results: Option<super::status::CheckerCounters>,
}

async fn checkers(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    let status = match find_module(&api, &module) {
        Ok(m) => m,
        Err(response) => return *response,
    };
    let Some(config) = api.config.module(&module) else {
        return error(StatusCode::NOT_FOUND, format!("no module {module:?}"));
    };
    let context = CheckerContext::of(config);
    let checkers = config
        .checkers()
        .iter()
        .map(|checker| {
            let id = checker_id(checker, &context);
            CheckerView {
                kind: id.split(':').next().unwrap_or_default().to_owned(),
                action: format!("{:?}", checker.action()).to_lowercase(),
                interval_ms: checker.interval().as_millis() as u64,
                results: status.counters.checkers.get(&id).cloned(),
                id,
            }
        })
        .collect();
    Json(CheckerList {
        module,
        enabled: status.checkers,
        checkers,
    })
    .into_response()
}

/// `/api/v1/modules/<module>/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub module: String,
    pub events: Vec<LogEntry>,
}

/// How many events `/events` returns without a `limit`.
const DEFAULT_EVENT_LIMIT: usize = 1000;

/// Parses `/events`' query: `since_ms` and `limit`, both unsigned.
#[doc(hidden)] // public for the fuzz target `api_body` only
pub fn event_query(query: Option<&str>) -> Result<(u64, usize), String> {
    let mut since_ms = 0;
    let mut limit = DEFAULT_EVENT_LIMIT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since_ms" => {
                since_ms = value.parse().map_err(|_| {
                    format!("since_ms: expected milliseconds since the Unix epoch, found {value:?}")
                })?
            }
            "limit" => {
                limit = value
                    .parse()
                    .map_err(|_| format!("limit: expected a count, found {value:?}"))?
            }
            other => {
                return Err(format!(
                    "{other}: unknown query parameter; expected since_ms or limit"
                ))
            }
        }
    }
    Ok((since_ms, limit))
}

async fn events(
    State(api): State<ApiState>,
    Path(module): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(response) = find_module(&api, &module) {
        return *response;
    }
    let (since_ms, limit) = match event_query(query.as_deref()) {
        Ok(query) => query,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let state_dir = api.config.node.state_dir.clone();
    let name = module.clone();
    let read = tokio::task::spawn_blocking(move || module_log::read(&state_dir, &name)).await;
    match read {
        Ok(Ok(entries)) => {
            let mut events: Vec<LogEntry> = entries
                .into_iter()
                .filter(|e| e.at_ms >= since_ms)
                .collect();
            let skip = events.len().saturating_sub(limit);
            events.drain(..skip);
            Json(EventList { module, events }).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The farm view of `module`, or a 404 saying why there is none.
fn with_farm_view(
    api: &ApiState,
    module: &str,
    what: &str,
    answer: impl FnOnce(&crate::farm::FarmView) -> Response,
) -> Response {
    if let Err(response) = find_module(api, module) {
        return *response;
    }
    match api.tables.read().expect("tables lock").get(module) {
        Some(view) => answer(view),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no {what} for {module:?}: not a farm module serving on this node"),
        ),
    }
}

async fn buckets(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    with_farm_view(&api, &module, "bucket table", |view| {
        Json(&view.table).into_response()
    })
}

async fn buckets_text(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    with_farm_view(&api, &module, "bucket table", |view| {
        view.table.to_string().into_response()
    })
}

async fn counters(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    with_farm_view(&api, &module, "counters", |view| {
        Json(&view.counters).into_response()
    })
}

/// 200 "OK" when this node serves the module (mirror PRIM or ALONE, farm UP,
/// Ready), 404 otherwise: what HAProxy `httpchk` and cloud load balancers
/// expect of SafeKit.
///
/// A mirror node back from a pause (a frozen VM) answers 404 until its
/// driver has looked again at what happened meanwhile: the peer may have
/// taken over.
async fn ready(State(api): State<ApiState>, Path(module): Path<String>) -> Response {
    let serving = api
        .status
        .read()
        .expect("status lock")
        .modules
        .iter()
        .any(|m| {
            m.name == module
                && m.serving
                && match (m.pauses_seen, &api.pauses) {
                    (Some(seen), Some(watch)) => watch.settled(seen),
                    _ => true,
                }
        });
    if serving {
        (StatusCode::OK, "OK\n").into_response()
    } else {
        (StatusCode::NOT_FOUND, "NOT READY\n").into_response()
    }
}

async fn reload(State(api): State<ApiState>) -> Response {
    let Some(requests) = &api.reload else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server does not reload its configuration",
        );
    };
    let (answer_tx, answer) = tokio::sync::oneshot::channel();
    if requests.send(answer_tx).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        );
    }
    match answer.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(why)) => error(StatusCode::UNPROCESSABLE_ENTITY, why),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        ),
    }
}

/// The answer to an accepted action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionAccepted {
    pub module: String,
    pub action: ModuleAction,
}

/// How long an action waits for the module's verdict before it is
/// answered as accepted (the module's driver may be busy with a flush).
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands `action` to `module`'s driver: `202` once its machine took it,
/// `409` with the reason when it refused.
async fn act(api: &ApiState, module: &str, action: ModuleAction) -> Response {
    let Some(module_tx) = api.actions.get(module) else {
        return match find_module(api, module) {
            Ok(_) => error(
                StatusCode::CONFLICT,
                format!("module {module:?} is not running on this node"),
            ),
            Err(response) => *response,
        };
    };
    let (request, verdict) = super::ActionRequest::new(action);
    if module_tx.send(request).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the module is shutting down",
        );
    }
    if let Ok(Ok(Err(reason))) = tokio::time::timeout(VERDICT_WAIT, verdict).await {
        return error(
            StatusCode::CONFLICT,
            format!("{module}: {} refused: {reason}", action.path()),
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(ActionAccepted {
            module: module.to_owned(),
            action,
        }),
    )
        .into_response()
}

/// The body of `checkers` and `failover`: `{"enabled": true|false}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    pub enabled: bool,
}

/// Reads a `Switch` body, or says which field is wrong.
#[doc(hidden)] // public for the fuzz target `api_body` only
pub fn parse_switch(body: &[u8]) -> Result<Switch, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("body: expected a JSON object {{\"enabled\": true|false}}: {e}"))?;
    let object = value
        .as_object()
        .ok_or("body: expected a JSON object {\"enabled\": true|false}")?;
    if let Some(unknown) = object.keys().find(|k| *k != "enabled") {
        return Err(format!("{unknown}: unknown field; expected only enabled"));
    }
    match object.get("enabled") {
        Some(serde_json::Value::Bool(enabled)) => Ok(Switch { enabled: *enabled }),
        Some(other) => Err(format!("enabled: expected true or false, found {other}")),
        None => Err("enabled: missing; expected true or false".to_owned()),
    }
}

async fn switch(
    State(api): State<ApiState>,
    Path(module): Path<String>,
    body: Bytes,
    on: ModuleAction,
    off: ModuleAction,
) -> Response {
    if let Err(response) = find_module(&api, &module) {
        return *response;
    }
    match parse_switch(&body) {
        Ok(Switch { enabled }) => act(&api, &module, if enabled { on } else { off }).await,
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_bad_switch_body_names_the_field() {
        assert_eq!(
            parse_switch(br#"{"enabled": false}"#),
            Ok(Switch { enabled: false })
        );
        let cases: [(&[u8], &str); 5] = [
            (br#"{"enabled": "yes"}"#, "enabled: expected true or false"),
            (br#"{}"#, "enabled: missing"),
            (br#"{"enabled": true, "force": 1}"#, "force: unknown field"),
            (b"[true]", "body: expected a JSON object"),
            (b"", "body: expected a JSON object"),
        ];
        for (body, expected) in cases {
            let why = parse_switch(body).unwrap_err();
            assert!(
                why.starts_with(expected),
                "for {body:?}: expected {expected:?}, saw {why:?}"
            );
        }
    }

    #[test]
    fn a_bad_event_query_names_the_parameter() {
        assert_eq!(event_query(None), Ok((0, DEFAULT_EVENT_LIMIT)));
        assert_eq!(event_query(Some("since_ms=5&limit=2")), Ok((5, 2)));
        assert!(event_query(Some("limit=-1"))
            .unwrap_err()
            .starts_with("limit:"));
        assert!(event_query(Some("since_ms=soon"))
            .unwrap_err()
            .starts_with("since_ms:"));
        assert!(event_query(Some("page=2"))
            .unwrap_err()
            .starts_with("page:"));
    }

    #[test]
    fn no_two_routes_share_a_path_and_method() {
        let mut paths: HashMap<String, Vec<&'static str>> = HashMap::new();
        for e in endpoints() {
            paths.entry(e.path).or_default().push(e.method);
        }
        for page in pages() {
            paths.entry(page.path.to_owned()).or_default().push("get");
        }
        for (path, methods) in paths {
            let mut unique = methods.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                methods.len(),
                "{path} has a method twice: {methods:?}"
            );
        }
    }
}
