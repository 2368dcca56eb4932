//! The cluster secret and the keys derived from it.
//!
//! One secret file, identical on every node, is the root of all cluster
//! authentication. Each use gets its own key, derived with BLAKE3's
//! key-derivation mode and a context string, so a key leaked or misused in
//! one protocol cannot forge messages of another.
//!
//! During a rotation a node also holds a second, *accepted* secret
//! (`cluster.accept_secret_file`): everything is signed with the signing
//! secret and accepted under either, so nodes can move from one secret to
//! the next one at a time without ever refusing each other (SECURITY.md).

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

/// The shared cluster secret, and the second secret accepted beside it
/// during a rotation. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ClusterSecret {
    signing: Vec<u8>,
    accepted: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Wraps secret bytes (tests, and the file loader).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        ClusterSecret {
            signing: bytes.to_vec(),
            accepted: None,
        }
    }

    /// This secret, with `accepted` accepted beside it (never signing).
    pub fn accepting(self, accepted: &ClusterSecret) -> Self {
        ClusterSecret {
            accepted: Some(accepted.signing.clone()),
            ..self
        }
    }

    /// Whether a second secret is accepted beside the signing one.
    pub fn has_accepted(&self) -> bool {
        self.accepted.is_some()
    }

    /// Reads the signing secret file and, if named, the accepted one
    /// (`cluster.secret_file`, `cluster.accept_secret_file`), each checked as
    /// [`ClusterSecret::load`] checks it.
    pub fn load_pair(signing: &Path, accepted: Option<&Path>) -> Result<Self, SecretError> {
        let secret = Self::load(signing)?;
        match accepted {
            Some(path) => Ok(secret.accepting(&Self::load(path)?)),
            None => Ok(secret),
        }
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
        Ok(ClusterSecret::from_bytes(&bytes))
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
        self.derive(HEARTBEAT_CONTEXT)
    }

    /// The key that authenticates lease requests and replies between the
    /// nodes and the arbiter witness (`halo witness`).
    pub fn witness_key(&self) -> MacKey {
        self.derive(WITNESS_CONTEXT)
    }

    /// The root key of mirror replication sessions (`mirror::channel`).
    pub fn replication_key(&self) -> MacKey {
        self.derive(REPLICATION_CONTEXT)
    }

    fn derive(&self, context: &str) -> MacKey {
        MacKey {
            signing: blake3::derive_key(context, &self.signing),
            accepted: self
                .accepted
                .as_ref()
                .map(|secret| blake3::derive_key(context, secret)),
        }
    }
}

/// Which of a [`MacKey`]'s two keys verified a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    /// The signing key (`cluster.secret_file`).
    Signing,
    /// The accepted key (`cluster.accept_secret_file`): the sender signs
    /// with a secret this node only accepts, it has not switched (yet, or
    /// back).
    Accepted,
}

/// A 256-bit key for BLAKE3's keyed (MAC) mode, and the key accepted beside
/// it during a rotation: messages are signed with the first and verified
/// under either. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey {
    signing: [u8; 32],
    accepted: Option<[u8; 32]>,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    /// The MAC of `data`, always under the signing key.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.signing, data).as_bytes()
    }

    /// A key for one use, derived from this one and `context` (a keyed
    /// hash, so knowing a derived key reveals nothing of this one); the
    /// accepted key derives its own beside it.
    pub fn derive(&self, context: &[u8]) -> MacKey {
        let derive = |key: &[u8; 32]| *blake3::keyed_hash(key, context).as_bytes();
        MacKey {
            signing: derive(&self.signing),
            accepted: self.accepted.as_ref().map(derive),
        }
    }

    /// The signing key bytes, for ciphers keyed with it.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.signing
    }

    /// Each key alone, the signing one first: for protocols that must find
    /// which key the peer uses before they can check anything (a cipher).
    pub fn candidates(&self) -> Vec<(KeyUsed, MacKey)> {
        let single = |key: [u8; 32]| MacKey {
            signing: key,
            accepted: None,
        };
        let mut all = vec![(KeyUsed::Signing, single(self.signing))];
        all.extend(self.accepted.map(|key| (KeyUsed::Accepted, single(key))));
        all
    }

    /// The one key `used`, alone: to answer a message under the key it came
    /// with (the signing key if there is no such key).
    pub fn only(&self, used: KeyUsed) -> MacKey {
        let mut candidates = self.candidates();
        let at = candidates
            .iter()
            .position(|(which, _)| *which == used)
            .unwrap_or(0);
        candidates.swap_remove(at).1
    }

    /// The keys a session keyed from this one uses, the peer sealing under
    /// `peer`: the signing key, and the accepted one unless the peer is
    /// known to seal with the signing one.
    pub fn in_use(&self, peer: Option<KeyUsed>) -> MacKey {
        MacKey {
            signing: self.signing,
            accepted: match peer {
                Some(KeyUsed::Signing) => None,
                Some(KeyUsed::Accepted) | None => self.accepted,
            },
        }
    }

    /// Whether every key of `keys`, signing and accepted, is one of this
    /// key's: a replication session using `keys` ([`MacKey::in_use`]) may
    /// go on under this one.
    pub fn accepts_all_of(&self, keys: &MacKey) -> bool {
        let known = |key: &[u8; 32]| *key == self.signing || self.accepted.as_ref() == Some(key);
        known(&keys.signing) && keys.accepted.as_ref().is_none_or(known)
    }

    /// Whether `tag` is the MAC of `data`, under either key, compared in
    /// constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8; 32]) -> bool {
        self.check(data, tag).is_some()
    }

    /// Which key `tag` is the MAC of `data` under, if any (constant-time
    /// comparisons; the signing key is tried first).
    pub fn check(&self, data: &[u8], tag: &[u8; 32]) -> Option<KeyUsed> {
        let expected = blake3::Hash::from_bytes(*tag);
        if blake3::keyed_hash(&self.signing, data) == expected {
            return Some(KeyUsed::Signing);
        }
        let accepted = self.accepted.as_ref()?;
        (blake3::keyed_hash(accepted, data) == expected).then_some(KeyUsed::Accepted)
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
    fn either_key_is_accepted_and_only_the_signing_key_signs() {
        let old = ClusterSecret::from_bytes(&[1; 32]);
        let new = ClusterSecret::from_bytes(&[2; 32]);
        let stranger = ClusterSecret::from_bytes(&[3; 32]);
        let both = new.clone().accepting(&old).heartbeat_key();
        let from_new = new.heartbeat_key().tag(b"frame");
        let from_old = old.heartbeat_key().tag(b"frame");
        assert_eq!(both.check(b"frame", &from_new), Some(KeyUsed::Signing));
        assert_eq!(both.check(b"frame", &from_old), Some(KeyUsed::Accepted));
        assert!(both.verify(b"frame", &from_old));
        let from_stranger = stranger.heartbeat_key().tag(b"frame");
        assert_eq!(
            both.check(b"frame", &from_stranger),
            None,
            "a key of neither secret must not verify"
        );
        assert_eq!(
            both.tag(b"frame"),
            from_new,
            "signing always uses the signing secret, never the accepted one"
        );
        assert_eq!(
            old.heartbeat_key().check(b"frame", &both.tag(b"frame")),
            None,
            "a node holding only the old secret cannot verify the new one"
        );
    }

    #[test]
    fn derived_keys_keep_both_secrets_apart() {
        let old = ClusterSecret::from_bytes(&[1; 32]);
        let new = ClusterSecret::from_bytes(&[2; 32]);
        let both = new
            .clone()
            .accepting(&old)
            .replication_key()
            .derive(b"session");
        let from_old = old.replication_key().derive(b"session");
        let from_new = new.replication_key().derive(b"session");
        let candidates = both.candidates();
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0], (KeyUsed::Signing, from_new));
        assert_eq!(candidates[1], (KeyUsed::Accepted, from_old));
        assert_eq!(old.replication_key().candidates().len(), 1);
    }

    #[test]
    fn a_session_key_outlives_a_reload_only_while_all_its_secrets_are_accepted() {
        let old = ClusterSecret::from_bytes(&[1; 32]);
        let new = ClusterSecret::from_bytes(&[2; 32]);
        let key = |secret: &ClusterSecret| secret.replication_key();
        let accepting = key(&old.clone().accepting(&new));
        let switched = key(&new.clone().accepting(&old));
        let only_new = key(&new);
        // Steps 2 and 3 keep every session established before them.
        assert!(accepting.accepts_all_of(&key(&old)));
        assert!(switched.accepts_all_of(&key(&old)));
        assert!(switched.accepts_all_of(&accepting));
        assert!(accepting.accepts_all_of(&switched));
        // Dropping the old secret ends those that may use it.
        assert!(!only_new.accepts_all_of(&key(&old)));
        assert!(!only_new.accepts_all_of(&switched));
        assert!(only_new.accepts_all_of(&only_new));
        assert!(switched.accepts_all_of(&only_new));
        assert!(
            !key(&old).accepts_all_of(&only_new),
            "a rollback to the old secret alone ends sessions under the new one"
        );
        // A session keyed while two secrets were held uses the peer's one
        // beside the signing one: once known, only those two count.
        assert_eq!(switched.in_use(Some(KeyUsed::Signing)), only_new);
        assert!(only_new.accepts_all_of(&switched.in_use(Some(KeyUsed::Signing))));
        assert!(!only_new.accepts_all_of(&switched.in_use(Some(KeyUsed::Accepted))));
        assert!(
            !only_new.accepts_all_of(&switched.in_use(None)),
            "before the peer's first frame, the session may use either secret"
        );
        assert_eq!(key(&old).in_use(Some(KeyUsed::Accepted)), key(&old));
    }

    #[test]
    fn an_accepted_secret_is_checked_like_the_signing_one() {
        let dir = std::env::temp_dir().join(format!("halo-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let signing = dir.join("new.key");
        let accepted = dir.join("old.key");
        let _ = fs::remove_file(&signing);
        let _ = fs::remove_file(&accepted);
        ClusterSecret::generate(&signing).unwrap();
        ClusterSecret::generate(&accepted).unwrap();
        let pair = ClusterSecret::load_pair(&signing, Some(&accepted)).unwrap();
        assert!(pair.has_accepted());
        assert!(!ClusterSecret::load_pair(&signing, None)
            .unwrap()
            .has_accepted());
        fs::set_permissions(&accepted, fs::Permissions::from_mode(0o644)).unwrap();
        let error = ClusterSecret::load_pair(&signing, Some(&accepted)).unwrap_err();
        assert!(
            matches!(error, SecretError::Permissions { .. }),
            "a world-readable accepted secret must be refused, got {error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_decoding_rejects_odd_and_non_hex_text() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
