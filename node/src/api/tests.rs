//! The API served in-process on a loopback port: the access rule of every
//! route under both read policies, and the JSON errors.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use super::{routes, Access, ApiContext, ApiToken, ModuleStatus, NodeStatus};
use crate::config::Config;

const TOKEN: &str = "unit-token";

/// Serves the API on a free loopback port from its own thread; returns
/// the address.
fn serve(open_read: bool) -> String {
    let mut config = Config::default();
    config.api.open_read = open_read;
    let status = NodeStatus {
        node: "a".into(),
        modules: vec![ModuleStatus {
            name: "web".into(),
            kind: "farm".into(),
            state: "STOP".into(),
            phase: "ready".into(),
            ..ModuleStatus::default()
        }],
        ..NodeStatus::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<super::ActionRequest>();
    let mut actions = HashMap::new();
    actions.insert("web".to_owned(), tx);
    let app = super::router(ApiContext {
        status: Arc::new(RwLock::new(status)),
        actions: Arc::new(actions),
        token: ApiToken::new(Some(TOKEN.into())),
        tables: Arc::default(),
        config: Arc::new(config),
        reload: None,
        pauses: None,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            // `web` is a farm: its machine refuses a swap, takes the rest.
            tokio::spawn(async move {
                while let Some(request) = rx.recv().await {
                    let verdict = match request.action {
                        super::ModuleAction::Swap => Err("a farm module has no primary".to_owned()),
                        _ => Ok(()),
                    };
                    let _ = request.verdict.send(verdict);
                }
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// The status and JSON error (if any) of one request.
fn call(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "get" => {
            let mut request = agent.get(&url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        }
        _ => {
            let mut request = agent.post(&url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.send(r#"{"enabled": true}"#)
        }
    }
    .unwrap();
    let status = response.status().as_u16();
    let error = response
        .body_mut()
        .read_json::<super::ApiError>()
        .ok()
        .map(|e| e.error);
    (status, error)
}

#[test]
fn each_route_asks_for_the_token_its_access_rule_says_under_both_read_policies() {
    for open_read in [true, false] {
        let addr = serve(open_read);
        for endpoint in routes::endpoints() {
            let path = endpoint
                .path
                .replace("{module}", "web")
                .replace("{node}", "a");
            let needs_token = match endpoint.access {
                Access::Open => false,
                Access::Read => !open_read,
                Access::Write => true,
            };
            for token in [None, Some("wrong")] {
                let (status, error) = call(&addr, endpoint.method, &path, token);
                if needs_token {
                    assert_eq!(
                        (status, error.is_some()),
                        (401, true),
                        "{} {path} with {token:?} (open_read = {open_read})",
                        endpoint.method
                    );
                } else {
                    assert_ne!(
                        status, 401,
                        "{} {path} (open_read = {open_read})",
                        endpoint.method
                    );
                }
            }
            let (status, _) = call(&addr, endpoint.method, &path, Some(TOKEN));
            assert_ne!(status, 401, "{} {path} with the token", endpoint.method);
        }
    }
}

#[test]
fn unknown_modules_routes_and_methods_get_json_errors() {
    let addr = serve(true);
    let (status, error) = call(&addr, "get", "/api/v1/modules/nope", None);
    assert_eq!(
        (status, error.as_deref()),
        (404, Some("no module \"nope\""))
    );
    let (status, error) = call(&addr, "post", "/api/v1/modules/nope/stop", Some(TOKEN));
    assert_eq!(
        (status, error.as_deref()),
        (404, Some("no module \"nope\""))
    );
    let (status, error) = call(&addr, "get", "/api/v1/nothing", None);
    assert_eq!(status, 404);
    assert!(error.is_some_and(|e| e.contains("openapi.json")));
    let (status, error) = call(&addr, "get", "/api/v1/modules/web/stop", None);
    assert_eq!(status, 405);
    assert!(error.is_some());
    let (status, _) = call(&addr, "post", "/api/v1/modules/web/stop", Some(TOKEN));
    assert_eq!(status, 202);
}

#[test]
fn an_action_the_module_refuses_is_answered_409_with_its_reason() {
    let addr = serve(true);
    let (status, error) = call(&addr, "post", "/api/v1/modules/web/swap", Some(TOKEN));
    assert_eq!(
        (status, error.as_deref()),
        (409, Some("web: swap refused: a farm module has no primary"))
    );
}
