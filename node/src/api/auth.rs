//! The bearer token that write actions need.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use axum::http::{header::AUTHORIZATION, HeaderMap};

/// The API token, read from `api.token_file` at start. Without one, every
/// write action is refused: an API that anyone on the LAN could drive is
/// not a safe default. `Debug` never shows it.
pub struct ApiToken(Option<String>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiToken(<set>)"
        } else {
            "ApiToken(<none>)"
        })
    }
}

impl ApiToken {
    /// A token given directly (tests).
    pub fn new(token: Option<String>) -> Self {
        ApiToken(token)
    }

    /// Reads the token file. A missing file means no token (writes refused,
    /// the caller warns); a file readable by group or others is refused.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ApiToken(None)),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())))
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "the API token {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
        let token = std::fs::read_to_string(path)
            .map_err(|e| anyhow::Error::new(e).context(format!("reading {}", path.display())))?;
        let token = token.trim().to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "the API token {} is empty",
            path.display()
        );
        Ok(ApiToken(Some(token)))
    }

    /// Whether a token is configured.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Checks the request's `Authorization: Bearer …` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(expected) = &self.0 else {
            return Err("write actions are disabled: no API token file on this node");
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("missing bearer token: send Authorization: Bearer <token>")?;
        if constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err("wrong token")
        }
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = ApiToken::new(Some("s3cret".into()));
        assert_eq!(token.check(&headers("Bearer s3cret")), Ok(()));
        assert_eq!(token.check(&headers("Bearer s3cre")), Err("wrong token"));
        assert!(token.check(&headers("s3cret")).is_err());
        assert!(token.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn without_a_token_every_write_is_refused() {
        let token = ApiToken::new(None);
        assert!(token.check(&headers("Bearer anything")).is_err());
        assert_eq!(format!("{token:?}"), "ApiToken(<none>)");
    }
}
