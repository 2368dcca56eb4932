//! The HTTP API of real daemons: every route of the OpenAPI document the
//! daemon serves is called, and every answer is validated against the
//! document's schema for its status code; tokens, unknown modules and bad
//! bodies get the JSON errors the document promises.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use halo_tests::{
    cluster::{install_script, module_in, Cluster, Timing, API_PORT, TEST_TOKEN},
    lab::{self, Host, LabBuilder},
};
use serde_json::Value;

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON, or a panic that shows it.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON body ({e}), saw {self:?}"))
    }
}

/// Sends one request to the daemon of `host` (`127.0.0.1:API_PORT` inside
/// it), the plainest way: HTTP/1.1, one request per connection.
pub fn http(
    host: &Host,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let raw = host
        .enter(|| {
            let mut stream = TcpStream::connect(("127.0.0.1", API_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        })
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e:#}", host.name()));
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, mut body) = raw
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body);
    }
    Answer {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body,
    }
}

fn dechunk(mut chunked: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = chunked.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        chunked = &rest[size + 2..];
    }
    out
}

/// A farm module `web` with a checker and a start script, so that every
/// counter the API shows has something in it.
pub fn farm_with_scripts(lab: &lab::Lab) -> String {
    for host in lab.hosts() {
        install_script(host, "/var/lib/app/start_both", "#!/bin/sh\nexit 0\n").unwrap();
        install_script(host, "/var/lib/app/stop_both", "#!/bin/sh\nexit 0\n").unwrap();
    }
    format!(
        "[[module]]\nname = \"web\"\nkind = \"farm\"\ninterface = \"eth0\"\nvips = [\"{}\"]\n\n\
         [[module.rule]]\nproto = \"tcp\"\nport = 80\n\n\
         [module.scripts]\nstart_both = \"/var/lib/app/start_both\"\nstop_both = \"/var/lib/app/stop_both\"\n\n\
         [[module.checker]]\nkind = \"interface\"\n",
        lab::lab_ipv4(200)
    )
}

/// Validates answers against the schemas of one OpenAPI document.
struct Document {
    doc: Value,
}

impl Document {
    /// The documented schema of `method path`'s answer with `status`, or a
    /// panic when the document does not list that status.
    fn schema(&self, method: &str, path: &str, status: u16) -> Option<Value> {
        let operation = &self.doc["paths"][path][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list: {}",
            operation["responses"]
        );
        response["content"]["application/json"]
            .get("schema")
            .cloned()
    }

    /// Checks that `answer` is what the document says `method path` gives.
    fn check(&self, method: &str, path: &str, answer: &Answer) {
        let Some(schema) = self.schema(method, path, answer.status) else {
            assert!(
                answer.content_type.starts_with("text/plain"),
                "{method} {path}: a documented text answer, saw {answer:?}"
            );
            return;
        };
        assert!(
            answer.content_type.starts_with("application/json"),
            "{method} {path}: a JSON answer, saw {answer:?}"
        );
        // The schema's references point into the document: validate with
        // the document's components at the root.
        let root = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("the schema of {method} {path} does not compile: {e}"));
        let instance = answer.json();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} ({}) does not match its schema: {errors:#?}\nbody: {instance:#}",
            answer.status
        );
    }
}

#[test]
fn every_documented_endpoint_answers_as_its_schema_says() {
    let lab = LabBuilder::new("api").hosts(&["a", "b"]).build().unwrap();
    let modules = farm_with_scripts(&lab);
    let mut cluster =
        Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), &modules).unwrap();
    cluster.start_all().unwrap();
    let wait = Duration::from_secs(15);
    cluster
        .wait_status("a", wait, "web UP on a, b up", |s| {
            module_in(s, "web", "UP", "ready") && halo_tests::cluster::peer_up(s, "b")
        })
        .unwrap();
    let a = lab.host("a");

    let answer = http(a, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(answer.status, 200, "{answer:?}");
    let document = Document { doc: answer.json() };
    assert_eq!(document.doc["openapi"], "3.1.0");

    // The validation has teeth: an answer that lacks a field fails it.
    let forged = Answer {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"modules": [{"name": "web"}]}"#.into(),
    };
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        document.check("GET", "/api/v1/modules", &forged)
    }));
    assert!(
        checked.is_err(),
        "a module without its fields passed the schema"
    );

    // Every documented operation, with the module and node of this lab.
    let mut operations = BTreeSet::new();
    for (path, item) in document.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    let concrete =
        |path: &str, module: &str| path.replace("{module}", module).replace("{node}", "b");
    let body_of = |path: &str| {
        (path.ends_with("/checkers") || path.ends_with("/failover"))
            .then_some(r#"{"enabled": true}"#)
    };
    // Reads first, then the writes; `start` last so that web runs again.
    let mut ordered: Vec<&(String, String)> = operations.iter().collect();
    ordered.sort_by_key(|(method, path)| (method == "POST", path.ends_with("/start")));
    let mut succeeded = BTreeSet::new();
    for (method, path) in ordered {
        let token = (method == "POST").then_some(TEST_TOKEN);
        let answer = http(a, method, &concrete(path, "web"), token, body_of(path));
        document.check(method, path, &answer);
        if (200..300).contains(&answer.status) {
            succeeded.insert((method.clone(), path.clone()));
        }
        if path.ends_with("/stop") {
            cluster
                .wait_status("a", wait, "web STOP after stop", |s| {
                    module_in(s, "web", "STOP", "ready")
                })
                .unwrap();
        }
        if path.contains("{module}") {
            let unknown = http(a, method, &concrete(path, "nope"), token, body_of(path));
            assert_eq!(
                unknown.status, 404,
                "{method} {path} for an unknown module: {unknown:?}"
            );
            document.check(method, path, &unknown);
        }
    }
    cluster
        .wait_status("a", wait, "web UP again after start", |s| {
            module_in(s, "web", "UP", "ready")
        })
        .unwrap();
    // The farm's buckets only exist while it serves: read them again now.
    for path in [
        "/api/v1/modules/{module}/buckets",
        "/api/v1/modules/{module}/buckets.txt",
        "/api/v1/modules/{module}/counters",
        "/var/modules/{module}/ready.txt",
    ] {
        let answer = http(a, "GET", &concrete(path, "web"), None, None);
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        document.check("GET", path, &answer);
        succeeded.insert(("GET".to_owned(), path.to_owned()));
    }
    // The mirror commands are refused by this farm, with the reason: 409.
    let mirror_only = |path: &str| {
        [
            "/prim",
            "/second",
            "/swap",
            "/failover",
            "/failover-on",
            "/failover-off",
        ]
        .iter()
        .any(|action| path.ends_with(action))
    };
    for (method, path) in operations.iter().filter(|(_, path)| mirror_only(path)) {
        let answer = http(
            a,
            method,
            &concrete(path, "web"),
            Some(TEST_TOKEN),
            body_of(path),
        );
        assert_eq!(answer.status, 409, "{method} {path} on a farm: {answer:?}");
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("refused"), "{method} {path}: {error}");
        document.check(method, path, &answer);
        succeeded.insert((method.clone(), path.clone()));
    }
    let missing: Vec<_> = operations.difference(&succeeded).collect();
    assert!(
        missing.is_empty(),
        "operations that never succeeded: {missing:?}"
    );

    // Write actions without the token, or with a wrong one: 401, JSON.
    let stop = "/api/v1/modules/{module}/stop";
    for token in [None, Some("not-the-token")] {
        let answer = http(a, "POST", &concrete(stop, "web"), token, None);
        assert_eq!(answer.status, 401, "{token:?}: {answer:?}");
        document.check("POST", stop, &answer);
    }
    // Bad bodies and queries: 400 naming the field.
    let checkers = "/api/v1/modules/{module}/checkers";
    for (body, field) in [
        (r#"{"enabled": "yes"}"#, "enabled"),
        (r#"{"enabled": true, "force": true}"#, "force"),
        ("not json", "body"),
    ] {
        let answer = http(
            a,
            "POST",
            &concrete(checkers, "web"),
            Some(TEST_TOKEN),
            Some(body),
        );
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        document.check("POST", checkers, &answer);
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.starts_with(field),
            "{body}: the error names {field}, saw {error:?}"
        );
    }
    let events = "/api/v1/modules/{module}/events";
    let answer = http(
        a,
        "GET",
        &format!("{}?limit=lots", concrete(events, "web")),
        None,
        None,
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    document.check("GET", events, &answer);
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("limit"));
    // Unknown routes and methods are JSON too.
    let answer = http(
        a,
        "POST",
        "/api/v1/modules/web/explode",
        Some(TEST_TOKEN),
        Some(""),
    );
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(answer.json()["error"].is_string());
    let answer = http(a, "GET", "/api/v1/modules/web/stop", None, None);
    assert_eq!(answer.status, 405, "{answer:?}");
    assert!(answer.json()["error"].is_string());

    // What the reads show: peer liveness per network, the event log.
    let node = http(a, "GET", "/api/v1/nodes/b", None, None).json();
    assert_eq!(node["up"], true, "{node:#}");
    assert_eq!(node["networks"][0]["up"], true, "{node:#}");
    assert_eq!(
        node["networks"][0]["address"],
        lab.host("b").ipv4_on(0).to_string()
    );
    let log = http(
        a,
        "GET",
        &format!("{}?limit=5", concrete(events, "web")),
        None,
        None,
    )
    .json();
    let log = log["events"].as_array().unwrap();
    assert!(!log.is_empty() && log.len() <= 5, "{log:#?}");
    let module = http(a, "GET", "/api/v1/modules/web", None, None).json();
    assert_eq!(
        module["progress"],
        Value::Null,
        "a farm has no replication progress"
    );
    assert!(
        module["counters"]["scripts"]["start_both"]["runs"].as_u64() >= Some(1),
        "{module:#}"
    );

    // Neither the token nor a wrong one reaches the daemon's log.
    let log = cluster.log("a").unwrap();
    assert!(
        !log.contains(TEST_TOKEN),
        "the API token is in the daemon log"
    );
    assert!(
        !log.contains("not-the-token"),
        "a wrong token is in the daemon log"
    );
}
