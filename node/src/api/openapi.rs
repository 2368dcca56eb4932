//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`.
//!
//! Its paths come from the route table (`routes::endpoints`), the same one
//! the router is built from, so no route goes undocumented and none is
//! documented that does not exist. Its schemas are written here, strict
//! (`additionalProperties: false`, every field required): the unit tests
//! below check that each one names exactly the fields its Rust type
//! serializes, and the lab test `daemon::api` validates every answer of a
//! running daemon against them.

use serde_json::{json, Map, Value};

use super::{
    routes::{self, Body},
    Access,
};

/// The API document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for endpoint in routes::endpoints() {
        let mut operation = Map::new();
        operation.insert("summary".into(), json!(endpoint.summary));
        operation.insert(
            "operationId".into(),
            json!(operation_id(endpoint.method, &endpoint.path)),
        );
        operation.insert(
            "security".into(),
            match endpoint.access {
                Access::Open => json!([]),
                Access::Read => json!([{}, { "bearer": [] }]),
                Access::Write => json!([{ "bearer": [] }]),
            },
        );
        let mut parameters: Vec<Value> = path_parameters(&endpoint.path)
            .into_iter()
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": { "type": "string" },
                })
            })
            .collect();
        parameters.extend(endpoint.query.iter().map(|q| {
            json!({
                "name": q.name,
                "in": "query",
                "required": false,
                "description": q.description,
                "schema": { "type": "integer", "minimum": 0 },
            })
        }));
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(schema) = endpoint.request {
            operation.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": reference(schema) } },
                }),
            );
        }
        let mut responses = Map::new();
        for (code, body) in endpoint.all_responses() {
            responses.insert(code.to_string(), response(code, body));
        }
        operation.insert("responses".into(), Value::Object(responses));
        paths
            .entry(endpoint.path.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object")
            .insert(endpoint.method.into(), Value::Object(operation));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "halo node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of one halo node. Reads are open unless \
                `api.open_read = false`, then they need the bearer token as writes do. \
                Errors are JSON: {\"error\": \"…\"}.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of the node's `api.token_file`.",
                },
            },
            "schemas": schemas(),
        },
    })
}

/// `get /api/v1/modules/{module}/buckets.txt` → `get_api_v1_modules_module_buckets_txt`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for word in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !word.is_empty() {
            id.push('_');
            id.push_str(word);
        }
    }
    id
}

/// The `{parameters}` of a path, in order.
fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

fn reference(schema: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{schema}") })
}

fn response(code: u16, body: Body) -> Value {
    let description = match code {
        200 => "OK",
        202 => "Accepted: the module's driver has the action",
        400 => "Bad request: the error names the field or parameter",
        401 => "Missing or wrong bearer token",
        404 => "No such module, node or resource",
        405 => "Method not allowed",
        409 => "The module is not running on this node, or its state machine refused the action (the error says why)",
        503 => "The module is shutting down",
        _ => "",
    };
    let content = match body {
        Body::Json(schema) => json!({ "application/json": { "schema": reference(schema) } }),
        Body::Text => json!({ "text/plain": { "schema": { "type": "string" } } }),
        Body::Metrics => json!({ "text/plain; version=0.0.4": { "schema": { "type": "string" } } }),
    };
    json!({ "description": description, "content": content })
}

/// A strict object: every property required, no other allowed.
fn object(properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(name, schema)| (name.to_string(), schema.clone()))
        .collect();
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn count() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn number() -> Value {
    json!({ "type": "number" })
}

fn boolean() -> Value {
    json!({ "type": "boolean" })
}

fn array_of(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn map_of(values: Value) -> Value {
    json!({ "type": "object", "additionalProperties": values })
}

fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [{ "type": "null" }, schema] })
}

fn state() -> Value {
    json!({ "enum": ["STOP", "WAIT", "UP", "ALONE", "PRIM", "SECOND"] })
}

/// Every component schema, by name.
fn schemas() -> Value {
    let r = reference;
    let actions: Vec<String> = super::ModuleAction::ALL
        .iter()
        .map(|a| serde_json::to_value(a).expect("an action serializes"))
        .map(|v| v.as_str().expect("an action is a string").to_owned())
        .collect();
    json!({
        "Error": object(&[("error", string())]),
        "OpenApiDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths", "components"],
        },
        "NodeStatus": object(&[
            ("node", string()),
            ("cluster", string()),
            ("epoch", count()),
            ("peers", array_of(r("PeerStatus"))),
            ("modules", array_of(r("ModuleStatus"))),
            ("heartbeat", r("HeartbeatCounters")),
        ]),
        "PeerStatus": object(&[
            ("name", string()),
            ("up", boolean()),
            ("networks", array_of(r("NetworkStatus"))),
        ]),
        "NetworkStatus": object(&[("name", string()), ("up", boolean())]),
        "HeartbeatCounters": object(&[
            ("sent", count()),
            ("received", count()),
            ("late_ticks", count()),
            ("rejected", map_of(count())),
            ("send_errors", count()),
            ("links", array_of(r("LinkCounters"))),
        ]),
        "LinkCounters": object(&[
            ("peer", string()),
            ("network", string()),
            ("accepted", count()),
            ("lost", count()),
            ("accepted_secret", count()),
        ]),
        "ModuleStatus": object(&[
            ("name", string()),
            ("kind", json!({ "enum": ["farm", "mirror"] })),
            ("state", state()),
            ("phase", json!({ "enum": ["ready", "transient"] })),
            ("serving", boolean()),
            ("exit_code", count()),
            ("generation", count()),
            ("failover", boolean()),
            ("checkers", boolean()),
            ("last_event", string()),
            ("progress", nullable(r("ReplicationProgress"))),
            ("capture_error", nullable(string())),
            ("counters", r("ModuleCounters")),
        ]),
        "ModuleCounters": object(&[
            ("transitions", array_of(r("TransitionCount"))),
            ("checkers", map_of(r("CheckerCounters"))),
            ("scripts", map_of(r("ScriptCounters"))),
            ("witness", map_of(map_of(count()))),
        ]),
        "TransitionCount": object(&[("from", state()), ("to", state()), ("count", count())]),
        "CheckerCounters": object(&[
            ("passed", count()),
            ("failed", count()),
            ("last_ok", boolean()),
            ("last_detail", string()),
            ("last_at_ms", count()),
        ]),
        "ScriptCounters": object(&[
            ("runs", count()),
            ("failures", count()),
            ("seconds", number()),
            ("last_seconds", number()),
        ]),
        "ReplicationProgress": object(&[
            ("bytes_done", count()),
            ("bytes_total", count()),
            ("files_done", count()),
            ("files_total", count()),
            ("eta_seconds", json!({ "type": ["number", "null"] })),
            ("lag_seconds", number()),
            ("backlog_bytes", count()),
        ]),
        "Progress": object(&[
            ("module", string()),
            ("progress", nullable(r("ReplicationProgress"))),
        ]),
        "Cluster": object(&[
            ("name", string()),
            ("node", string()),
            ("epoch", count()),
            ("networks", array_of(r("ClusterNetwork"))),
            ("nodes", array_of(string())),
            ("modules", array_of(r("ClusterModule"))),
        ]),
        "ClusterNetwork": object(&[
            ("name", string()),
            ("port", count()),
            ("pulse_ms", count()),
            ("timeout_ms", count()),
        ]),
        "ClusterModule": object(&[
            ("name", string()),
            ("kind", json!({ "enum": ["farm", "mirror"] })),
            ("nodes", array_of(string())),
        ]),
        "NodeList": object(&[("nodes", array_of(r("Node")))]),
        "Node": object(&[
            ("name", string()),
            ("local", boolean()),
            ("up", boolean()),
            ("networks", array_of(r("NodeNetwork"))),
        ]),
        "NodeNetwork": object(&[
            ("name", string()),
            ("address", json!({ "type": ["string", "null"] })),
            ("up", boolean()),
        ]),
        "ModuleList": object(&[("modules", array_of(r("ModuleStatus")))]),
        "CheckerList": object(&[
            ("module", string()),
            ("enabled", boolean()),
            ("checkers", array_of(r("CheckerView"))),
        ]),
        "CheckerView": object(&[
            ("id", string()),
            ("kind", json!({ "enum": ["process", "tcp", "http", "command", "interface", "vip"] })),
            ("action", json!({ "enum": ["restart", "stopstart", "stop", "wait"] })),
            ("interval_ms", count()),
            ("results", nullable(r("CheckerCounters"))),
        ]),
        "EventList": object(&[("module", string()), ("events", array_of(r("LogEntry")))]),
        "LogEntry": object(&[("at_ms", count()), ("source", string()), ("text", string())]),
        "BucketTable": object(&[
            ("buckets", count()),
            ("members", array_of(r("Share"))),
            ("owners", array_of(json!({ "type": ["integer", "null"], "minimum": 0 }))),
        ]),
        "Share": object(&[
            ("node", string()),
            ("power", count()),
            ("buckets", count()),
            ("percent", number()),
            ("target_percent", number()),
        ]),
        "FarmCounters": object(&[
            ("verdicts", map_of(count())),
            ("buckets", {
                let mut m = map_of(count());
                m["propertyNames"] = json!({ "pattern": "^[0-9]+$" });
                m
            }),
        ]),
        "ActionAccepted": object(&[
            ("module", string()),
            ("action", json!({ "enum": actions })),
        ]),
        "Switch": object(&[("enabled", boolean())]),
        "ReloadReport": object(&[
            ("file", string()),
            ("applied", array_of(string())),
            ("refused", array_of(string())),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::{
        routes::{ActionAccepted, CheckerList, Cluster, EventList, ModuleList, NodeList, Progress},
        status::{CheckerCounters, LinkCounters, ScriptCounters, TransitionCount},
        ModuleAction, ModuleStatus, NodeStatus, ReplicationProgress,
    };

    /// The fields `value` serializes must be the properties of `schema`.
    fn assert_fields(name: &str, value: impl serde::Serialize) {
        let doc = document();
        let schema = &doc["components"]["schemas"][name];
        let documented: BTreeSet<&String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has no properties"))
            .keys()
            .collect();
        let value = serde_json::to_value(value).unwrap();
        let serialized: BTreeSet<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(
            documented, serialized,
            "schema {name} must document exactly the fields its type serializes"
        );
    }

    #[test]
    fn every_schema_names_the_fields_its_type_serializes() {
        let mut module = ModuleStatus::default();
        module.counters.record_transition("STOP", "WAIT");
        assert_fields("NodeStatus", NodeStatus::default());
        assert_fields("PeerStatus", crate::api::PeerStatus::default());
        assert_fields(
            "NetworkStatus",
            crate::api::status::NetworkStatus::default(),
        );
        assert_fields(
            "HeartbeatCounters",
            crate::api::status::HeartbeatCounters::default(),
        );
        assert_fields("LinkCounters", LinkCounters::default());
        assert_fields("ModuleStatus", &module);
        assert_fields("ModuleCounters", &module.counters);
        assert_fields("TransitionCount", TransitionCount::default());
        assert_fields("CheckerCounters", CheckerCounters::default());
        assert_fields("ScriptCounters", ScriptCounters::default());
        assert_fields("ReplicationProgress", ReplicationProgress::default());
        assert_fields(
            "Progress",
            Progress {
                module: "m".into(),
                progress: None,
            },
        );
        assert_fields("ReloadReport", crate::api::ReloadReport::default());
        assert_fields(
            "ActionAccepted",
            ActionAccepted {
                module: "m".into(),
                action: ModuleAction::Swap,
            },
        );
        assert_fields(
            "Cluster",
            Cluster {
                name: String::new(),
                node: String::new(),
                epoch: 0,
                networks: vec![],
                nodes: vec![],
                modules: vec![],
            },
        );
        assert_fields("NodeList", NodeList { nodes: vec![] });
        assert_fields("ModuleList", ModuleList { modules: vec![] });
        assert_fields(
            "CheckerList",
            CheckerList {
                module: String::new(),
                enabled: true,
                checkers: vec![],
            },
        );
        assert_fields(
            "EventList",
            EventList {
                module: String::new(),
                events: vec![],
            },
        );
        assert_fields(
            "LogEntry",
            crate::daemon::module_log::LogEntry {
                at_ms: 0,
                source: String::new(),
                text: String::new(),
            },
        );
        assert_fields("FarmCounters", crate::farm::FarmCounters::default());
        let mut members = std::collections::BTreeMap::new();
        members.insert("a".to_owned(), 1);
        let table = crate::farm::buckets::BucketTable::compute(&members).unwrap();
        assert_fields("BucketTable", &table);
        assert_fields("Share", &table.shares()[0]);
        assert_fields(
            "Error",
            crate::api::ApiError {
                error: String::new(),
            },
        );
    }

    #[test]
    fn every_route_is_documented_with_its_parameters_and_every_reference_resolves() {
        let doc = document();
        for endpoint in routes::endpoints() {
            let operation = &doc["paths"][&endpoint.path][endpoint.method];
            assert!(
                operation.is_object(),
                "{} {} is not documented",
                endpoint.method,
                endpoint.path
            );
            let documented: Vec<&str> = operation["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(documented, path_parameters(&endpoint.path));
        }
        let text = doc.to_string();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "reference to missing schema {name}"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let ids: Vec<String> = routes::endpoints()
            .iter()
            .map(|e| operation_id(e.method, &e.path))
            .collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }
}
