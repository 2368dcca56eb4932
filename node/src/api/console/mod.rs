//! The web console: static HTML, CSS and JavaScript compiled into the
//! binary (no build step, nothing fetched at run time), served at `/` and
//! `/mosaic` (routes in `routes::pages`).
//!
//! The pages hold no data: their scripts read and drive the JSON API, of
//! this node and of its peers. The console on one node shows every node by
//! calling each peer's API from the browser, at the node's address in
//! `/api/v1/nodes` and this node's API port; the API allows that with CORS
//! (`super::cors`). Only the mosaic page is rendered: its default targets
//! (the farm VIPs and ports of the configuration) are written into it.

use std::net::IpAddr;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

use crate::config::{Config, Module};

/// One embedded file and its media type.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";

pub const INDEX: Asset = Asset {
    content_type: HTML,
    body: include_str!("index.html"),
};
pub const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("console.css"),
};
pub const CONSOLE_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("console.js"),
};
pub const MOSAIC_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("mosaic.js"),
};
pub const ICON: Asset = Asset {
    content_type: "image/svg+xml",
    body: include_str!("favicon.svg"),
};
const MOSAIC_HTML: &str = include_str!("mosaic.html");

/// Where the mosaic page's default targets go.
const TARGETS_SLOT: &str = "/*TARGETS*/[]";

impl Asset {
    /// The asset as an answer. `no-cache`: a browser revalidates, so a
    /// new daemon's console is never mixed with an old one's scripts.
    pub fn response(&self) -> Response {
        (
            [
                (header::CONTENT_TYPE, self.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            self.body,
        )
            .into_response()
    }
}

/// The mosaic page with `config`'s targets written in.
pub fn mosaic(config: &Config) -> Response {
    let targets = serde_json::to_string(&mosaic_targets(config))
        .expect("strings serialize")
        // Inside <script>: no `</script>` can close it early.
        .replace('<', "\\u003c");
    let page = MOSAIC_HTML.replacen(TARGETS_SLOT, &targets, 1);
    (
        [
            (header::CONTENT_TYPE, HTML),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}

/// The URLs the mosaic offers: `http://VIP[:port]/` for every VIP of every
/// farm module, on the first port of its first TCP rule (80 when the rule
/// takes every port), then every mirror VIP on port 80.
pub fn mosaic_targets(config: &Config) -> Vec<String> {
    let url = |ip: &IpAddr, port: u16| {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if port == 80 {
            format!("http://{host}/")
        } else {
            format!("http://{host}:{port}/")
        }
    };
    let mut farms = Vec::new();
    let mut mirrors = Vec::new();
    for module in &config.modules {
        match module {
            Module::Farm(farm) => {
                let Some(rule) = farm
                    .rules
                    .iter()
                    .find(|r| r.proto == crate::config::Proto::Tcp)
                else {
                    continue;
                };
                let port = rule.port.map_or(80, |p| {
                    if (p.first..=p.last).contains(&80) {
                        80
                    } else {
                        p.first
                    }
                });
                farms.extend(farm.vips.iter().map(|vip| url(vip, port)));
            }
            Module::Mirror(mirror) => mirrors.extend(mirror.vip.iter().map(|vip| url(vip, 80))),
        }
    }
    farms.extend(mirrors);
    farms.dedup();
    farms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mosaic_offers_each_farm_vip_on_its_rule_port_then_mirror_vips() {
        let config = crate::config::parse(
            r#"
[node]
name = "a"

[cluster]
[[cluster.node]]
name = "a"
addresses = { net0 = "10.0.0.1" }
[[cluster.node]]
name = "b"
addresses = { net0 = "10.0.0.2" }
[[cluster.network]]
name = "net0"

[[module]]
name = "web"
kind = "farm"
interface = "eth0"
vips = ["10.0.0.100", "fd00::100"]
[[module.rule]]
proto = "tcp"
port = 8080

[[module]]
name = "db"
kind = "mirror"
interface = "eth0"
vip = "10.0.0.50"
[[module.dir]]
path = "/srv"
"#,
            std::path::Path::new("console-test.toml"),
        );
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("the test configuration is valid: {e}"),
        };
        assert_eq!(
            mosaic_targets(&config),
            [
                "http://10.0.0.100:8080/",
                "http://[fd00::100]:8080/",
                "http://10.0.0.50/"
            ]
        );
    }

    #[test]
    fn the_mosaic_page_has_its_targets_slot_and_every_page_its_scripts() {
        assert!(MOSAIC_HTML.contains(TARGETS_SLOT));
        assert!(INDEX.body.contains("/console/console.js"));
        assert!(MOSAIC_HTML.contains("/console/mosaic.js"));
    }
}
