//! The cluster secret and the keys derived from it.
//!
//! One secret file, identical on every node, is the root of all cluster
//! authentication. Each use gets its own key, derived with BLAKE3's
//! key-derivation mode and a context string, so a key leaked or misused in
//! one protocol cannot forge messages of another.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Bytes of secret material `halo keygen` writes (256 bits).
pub const SECRET_LEN: usize = 32;

/// The heartbeat MAC key's derivation context. Changing it is a wire break.
const HEARTBEAT_CONTEXT: &str = "halo 2026 heartbeat frame v1";

/// The replication stream's root key derivation context; each session
/// derives its own keys from it and both peers' nonces. Changing it is a
/// wire break between mirror nodes.
const REPLICATION_CONTEXT: &str = "halo 2026 mirror replication v1";

/// The witness (arbiter lease) MAC key's derivation context. Changing it is a
/// wire break between nodes and `halo witness`.
const WITNESS_CONTEXT: &str = "halo 2026 witness lease v1";

/// Problems with the secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("the cluster secret {path} holds {found} bytes of key material, expected at least {SECRET_LEN}; write a new one with `halo keygen {path}`")]
    TooShort { path: String, found: usize },
    #[error("cannot write the cluster secret {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot gather randomness for a new secret: {0}")]
    Random(String),
}

/// The shared cluster secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Wraps secret bytes (tests, and the file loader).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        ClusterSecret(bytes.to_vec())
    }

    /// Reads the secret file: hex text as `halo keygen` writes it (whitespace
    /// ignored). Refuses a file that group or others may read.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions { path: shown, mode });
        }
        let text = fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
        let hex: String = text.split_whitespace().collect();
        let bytes = decode_hex(&hex).ok_or_else(|| SecretError::TooShort {
            path: shown.clone(),
            found: 0,
        })?;
        if bytes.len() < SECRET_LEN {
            return Err(SecretError::TooShort {
                path: shown,
                found: bytes.len(),
            });
        }
        Ok(ClusterSecret(bytes))
    }

    /// Writes a fresh random secret to `path` with mode 0600, refusing to
    /// overwrite an existing file (a cluster whose nodes hold different
    /// secrets cannot talk).
    pub fn generate(path: &Path) -> Result<(), SecretError> {
        let shown = path.display().to_string();
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| SecretError::Write {
                path: shown.clone(),
                source,
            })?;
        writeln!(file, "{text}")
            .and_then(|()| file.sync_all())
            .map_err(|source| SecretError::Write {
                path: shown,
                source,
            })
    }

    /// The key that authenticates heartbeat frames.
    pub fn heartbeat_key(&self) -> MacKey {
        MacKey(blake3::derive_key(HEARTBEAT_CONTEXT, &self.0))
    }

    /// The key that authenticates lease requests and replies between the
    /// nodes and the arbiter witness (`halo witness`).
    pub fn witness_key(&self) -> MacKey {
        MacKey(blake3::derive_key(WITNESS_CONTEXT, &self.0))
    }

    /// The root key of mirror replication sessions (`mirror::channel`).
    pub fn replication_key(&self) -> MacKey {
        MacKey(blake3::derive_key(REPLICATION_CONTEXT, &self.0))
    }
}

/// A 256-bit key for BLAKE3's keyed (MAC) mode. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    /// The MAC of `data`.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }

    /// A key for one use, derived from this one and `context` (a keyed
    /// hash, so knowing a derived key reveals nothing of this one).
    pub fn derive(&self, context: &[u8]) -> MacKey {
        MacKey(*blake3::keyed_hash(&self.0, context).as_bytes())
    }

    /// The key bytes, for ciphers keyed with it.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `tag` is the MAC of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8; 32]) -> bool {
        blake3::keyed_hash(&self.0, data) == blake3::Hash::from_bytes(*tag)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_the_secret() {
        let a = ClusterSecret::from_bytes(&[1; 32]).heartbeat_key();
        let b = ClusterSecret::from_bytes(&[2; 32]).heartbeat_key();
        assert_ne!(a, b);
        let tag = a.tag(b"frame");
        assert!(a.verify(b"frame", &tag));
        assert!(
            !b.verify(b"frame", &tag),
            "another cluster's key must not verify"
        );
        assert!(
            !a.verify(b"frame!", &tag),
            "a changed frame must not verify"
        );
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let secret = ClusterSecret::from_bytes(&[0xab; 32]);
        assert_eq!(format!("{secret:?}"), "ClusterSecret(<redacted>)");
        assert_eq!(
            format!("{:?}", secret.heartbeat_key()),
            "MacKey(<redacted>)"
        );
    }

    #[test]
    fn hex_decoding_rejects_odd_and_non_hex_text() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
