//! The CLI's client of a daemon's API: one [`Daemon`] per node it talks to,
//! with the token it sends, and failures sorted by what the operator must
//! do about them.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{ApiError, ModuleAction};

/// How long one request may take before the node counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Exit code of a command a node did not answer: `EX_UNAVAILABLE`.
pub const EXIT_UNREACHABLE: u8 = 69;
/// Exit code of a command a node refused for its token: `EX_NOPERM`.
pub const EXIT_REFUSED: u8 = 77;

/// Why a daemon gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiFailure {
    /// Nothing answered: no daemon, a dead node, a network in the way.
    #[error("cannot reach the halo daemon at {addr}: {reason} (is `halo run` running?)")]
    Unreachable { addr: String, reason: String },
    /// 401: no token, or not the token the daemon holds.
    #[error("the daemon at {addr} refused the request: {reason}")]
    Refused { addr: String, reason: String },
    /// Any other error answer (404 for an unknown module, 409, …).
    #[error("the daemon at {addr} answered {status}: {message}")]
    Failed {
        addr: String,
        status: u16,
        message: String,
    },
    /// An answer this CLI cannot read (another version?).
    #[error("the daemon at {addr} sent an unreadable answer to {path}: {reason}")]
    Unreadable {
        addr: String,
        path: String,
        reason: String,
    },
}

impl ApiFailure {
    /// One word for tables and JSON: `unreachable`, `refused`, `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiFailure::Unreachable { .. } => "unreachable",
            ApiFailure::Refused { .. } => "refused",
            ApiFailure::Failed { .. } | ApiFailure::Unreadable { .. } => "error",
        }
    }

    /// The process exit code this failure calls for.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiFailure::Unreachable { .. } => EXIT_UNREACHABLE,
            ApiFailure::Refused { .. } => EXIT_REFUSED,
            ApiFailure::Failed { .. } | ApiFailure::Unreadable { .. } => 1,
        }
    }
}

/// Where the CLI's token comes from, and whether it could be read.
#[derive(Debug, Clone)]
pub enum Token {
    /// Read from this file.
    Read { file: String, token: String },
    /// Not read, and why (a closed-read daemon will refuse the request).
    Missing { why: String },
}

/// One node's daemon as the CLI reaches it.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// The node's name, when known from the configuration.
    pub node: String,
    /// `host:port` of its API.
    pub addr: String,
    pub token: Token,
}

impl Daemon {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn bearer(&self) -> Option<String> {
        match &self.token {
            Token::Read { token, .. } => Some(format!("Bearer {token}")),
            Token::Missing { .. } => None,
        }
    }

    /// Turns a transport result into the body of a 2xx answer, or the
    /// failure it stands for.
    fn answer(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ApiFailure> {
        let mut response = result.map_err(|e| ApiFailure::Unreachable {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ApiFailure::Unreachable {
                addr: self.addr.clone(),
                reason: format!("the answer broke off: {e}"),
            })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = serde_json::from_str::<ApiError>(&body).map_or(body, |e| e.error);
        if status == 401 {
            return Err(ApiFailure::Refused {
                addr: self.addr.clone(),
                reason: self.refusal(&message),
            });
        }
        Err(ApiFailure::Failed {
            addr: self.addr.clone(),
            status,
            message,
        })
    }

    /// What a 401 means for this CLI's token.
    fn refusal(&self, message: &str) -> String {
        match &self.token {
            Token::Read { file, .. } => {
                format!("401 {message}: the token in {file} is not this node's")
            }
            Token::Missing { why } => {
                format!("401 {message}: this node needs the API token and the CLI has none ({why})")
            }
        }
    }

    /// GETs `path` and returns the body of a 2xx answer.
    pub fn get_text(&self, path: &str) -> Result<String, ApiFailure> {
        let mut request = Self::agent().get(format!("http://{}{path}", self.addr));
        if let Some(bearer) = self.bearer() {
            request = request.header("Authorization", &bearer);
        }
        self.answer(request.call())
    }

    /// GETs `path` and reads its JSON answer.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        let body = self.get_text(path)?;
        serde_json::from_str(&body).map_err(|e| ApiFailure::Unreadable {
            addr: self.addr.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// POSTs to `path` without a body and reads its JSON answer.
    pub fn post_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        let mut request = Self::agent().post(format!("http://{}{path}", self.addr));
        if let Some(bearer) = self.bearer() {
            request = request.header("Authorization", &bearer);
        }
        let body = self.answer(request.send_empty())?;
        serde_json::from_str(&body).map_err(|e| ApiFailure::Unreadable {
            addr: self.addr.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Asks the daemon to perform `action` on `module`.
    pub fn post_action(&self, module: &str, action: ModuleAction) -> Result<(), ApiFailure> {
        let url = format!(
            "http://{}/api/v1/modules/{module}/{}",
            self.addr,
            action.path()
        );
        let mut request = Self::agent().post(url);
        if let Some(bearer) = self.bearer() {
            request = request.header("Authorization", &bearer);
        }
        self.answer(request.send_empty()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_distinct_exit_codes() {
        let unreachable = ApiFailure::Unreachable {
            addr: "10.0.0.3:9010".into(),
            reason: "connection refused".into(),
        };
        let refused = ApiFailure::Refused {
            addr: "10.0.0.3:9010".into(),
            reason: "401".into(),
        };
        assert_eq!(
            (unreachable.kind(), unreachable.exit_code()),
            ("unreachable", 69)
        );
        assert_eq!((refused.kind(), refused.exit_code()), ("refused", 77));
    }

    #[test]
    fn a_refusal_names_the_token_file_or_why_there_is_none() {
        let mut daemon = Daemon {
            node: "a".into(),
            addr: "127.0.0.1:9010".into(),
            token: Token::Read {
                file: "/etc/halo/api.token".into(),
                token: "secret".into(),
            },
        };
        let with = daemon.refusal("wrong token");
        assert!(with.contains("/etc/halo/api.token"), "{with}");
        assert!(!with.contains("secret"), "a token is never shown: {with}");
        daemon.token = Token::Missing {
            why: "cannot read /etc/halo/api.token: permission denied".into(),
        };
        let without = daemon.refusal("missing token");
        assert!(without.contains("permission denied"), "{without}");
    }
}
