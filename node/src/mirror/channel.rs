//! The replication channel: a TCP stream between primary and secondary
//! carrying sealed frames.
//!
//! A session opens with one plaintext `Hello` each way (module, node,
//! role, whether to encrypt, a fresh 32-byte nonce). Both ends then derive
//! the session's keys from the cluster secret's replication key, the module
//! name and *both* nonces, one key per direction: a frame recorded in an
//! earlier session, or reflected back to its sender, does not verify.
//!
//! ```text
//! frame  = length (4, big-endian, of what follows) sealed
//! sealed = AES-256-GCM(key, nonce = frame counter, aad = length)      (encrypt = true)
//!        | payload BLAKE3-keyed(key, counter ‖ length ‖ payload)[..16]   (encrypt = false)
//! ```
//! The frame counter starts at 0 in each direction and is never sent: a
//! dropped, replayed or reordered frame fails verification, and the
//! session ends.
//!
//! During a secret rotation the root key also carries the accepted secret's
//! key (`cluster::keys`): each end seals with its signing secret's session
//! keys, and opens the peer's first frame under either secret's, then keeps
//! to the one that opened it; the session's [`SessionKey`] records which,
//! for the driver to end the session once a reload drops that secret.

use std::{
    io::{Read, Write},
    sync::{Arc, OnceLock},
};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::cluster::{
    keys::{KeyUsed, MacKey},
    wire::{put_name, Cursor, Malformed},
};

use super::{
    path::RelPath,
    wire::{Message, WireError},
};

const MAGIC: &[u8; 8] = b"HALOREPL";
/// 2: AES-256-GCM (ring) replaced ChaCha20-Poly1305, four times faster
/// on CPUs with AES instructions; a version-1 peer is refused with both
/// versions named ([`ChannelError::Version`]).
const VERSION: u8 = 2;
const TAG_LEN: usize = 16;
/// The largest sealed frame: a full `Write` or `Sums` and its header, with room.
pub const MAX_FRAME: usize = 2 * 1024 * 1024;

/// Which end of the stream a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connects, sends writes.
    Primary = 1,
    /// Listens, applies writes.
    Secondary = 2,
}

/// What each end announces before the keys exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: Role,
    pub encrypt: bool,
    pub module: String,
    pub node: String,
    pub nonce: [u8; 32],
}

/// Why a session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer's hello is malformed: {}", .0 .0)]
    Hello(Malformed),
    #[error("peer speaks replication version {0}, this node {VERSION}")]
    Version(u8),
    #[error("peer replicates module {peer}, this node expected {expected}")]
    Module { peer: String, expected: String },
    #[error("both ends claim the same role")]
    Role,
    #[error("encryption is {local} here and {peer} on the peer: set [module.replication] encrypt identically on both nodes")]
    Encryption {
        local: &'static str,
        peer: &'static str,
    },
    #[error("frame of {0} bytes exceeds {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("frame failed authentication (wrong cluster secret, corruption, or forgery)")]
    Forged,
    #[error("{0}")]
    Wire(#[from] WireError),
}

impl Hello {
    /// A hello with a fresh random nonce.
    pub fn new(role: Role, encrypt: bool, module: &str, node: &str) -> Self {
        let mut nonce = [0; 32];
        getrandom::fill(&mut nonce).expect("the kernel's random source");
        Hello {
            role,
            encrypt,
            module: module.to_owned(),
            node: node.to_owned(),
            nonce,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, self.role as u8, u8::from(self.encrypt)]);
        out.extend_from_slice(&self.nonce);
        // Names were checked by the configuration loader (1..=63 bytes).
        put_name(&mut out, &self.module).expect("module name fits the wire");
        put_name(&mut out, &self.node).expect("node name fits the wire");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Hello, ChannelError> {
        let mut c = Cursor::new(bytes, 0);
        if c.take(MAGIC.len()).map_err(ChannelError::Hello)? != MAGIC {
            return Err(ChannelError::Hello(Malformed(
                "not a halo replication peer",
            )));
        }
        let version = c.u8().map_err(ChannelError::Hello)?;
        if version != VERSION {
            return Err(ChannelError::Version(version));
        }
        let role = match c.u8().map_err(ChannelError::Hello)? {
            1 => Role::Primary,
            2 => Role::Secondary,
            _ => return Err(ChannelError::Hello(Malformed("unknown role"))),
        };
        let encrypt = c.u8().map_err(ChannelError::Hello)? != 0;
        let nonce = c.array().map_err(ChannelError::Hello)?;
        let module = c.name().map_err(ChannelError::Hello)?;
        let node = c.name().map_err(ChannelError::Hello)?;
        if c.position() != bytes.len() {
            return Err(ChannelError::Hello(Malformed("trailing bytes")));
        }
        Ok(Hello {
            role,
            encrypt,
            module,
            node,
            nonce,
        })
    }
}

/// The root key of one session, and what the session learns of it: which
/// of the root's secrets the peer seals with, once its first frame opened.
/// Clones share what is learnt.
#[derive(Clone, Debug)]
pub struct SessionKey {
    root: MacKey,
    peer: Arc<OnceLock<KeyUsed>>,
}

impl SessionKey {
    /// A session's key from the cluster's replication key; nothing learnt yet.
    pub fn new(root: MacKey) -> Self {
        SessionKey {
            root,
            peer: Arc::default(),
        }
    }

    /// The root's keys the session uses: this end seals under the signing
    /// one, the peer under the one that opened its first frame (until then,
    /// either).
    pub fn in_use(&self) -> MacKey {
        self.root.in_use(self.peer.get().copied())
    }
}

impl From<&MacKey> for SessionKey {
    fn from(root: &MacKey) -> Self {
        SessionKey::new(root.clone())
    }
}

impl From<&SessionKey> for SessionKey {
    fn from(key: &SessionKey) -> Self {
        key.clone()
    }
}

/// Seals outgoing frames of one direction.
pub struct Sealer {
    cipher: Option<LessSafeKey>,
    key: MacKey,
    counter: u64,
}

/// Opens incoming frames of one direction.
pub struct Opener {
    /// The keys the peer may seal with (which, cipher, key), the signing
    /// secret's first; down to the one that opened the first frame after it.
    keys: Vec<(KeyUsed, Option<LessSafeKey>, MacKey)>,
    /// Where the session learns which one that is.
    peer: Arc<OnceLock<KeyUsed>>,
    counter: u64,
}

/// The frame counter as the AEAD's nonce: unique per direction key, which
/// is fresh in every session.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn mac(key: &MacKey, counter: u64, len: u32, payload: &[u8]) -> [u8; TAG_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key.bytes());
    hasher.update(&counter.to_be_bytes());
    hasher.update(&len.to_be_bytes());
    hasher.update(payload);
    let tag = hasher.finalize();
    tag.as_bytes()[..TAG_LEN]
        .try_into()
        .expect("16 of 32 bytes")
}

fn cipher(key: &MacKey, encrypt: bool) -> Option<LessSafeKey> {
    encrypt.then(|| {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key.bytes()).expect("AES-256-GCM takes a 32-byte key"),
        )
    })
}

impl Sealer {
    fn new(key: MacKey, encrypt: bool) -> Self {
        Sealer {
            cipher: cipher(&key, encrypt),
            key,
            counter: 0,
        }
    }

    /// The frame (length prefix included) carrying `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(4 + payload.len() + TAG_LEN);
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        self.seal_in_place(&mut frame);
        frame
    }

    /// Turns `frame`, four bytes of room for the length prefix followed by
    /// the payload, into the sealed frame, without copying the payload: a
    /// replicated write's bytes are encrypted where they were encoded.
    pub fn seal_in_place(&mut self, frame: &mut Vec<u8>) {
        let len = (frame.len() - 4 + TAG_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let tag: [u8; TAG_LEN] = match &self.cipher {
            Some(cipher) => cipher
                .seal_in_place_separate_tag(
                    nonce(self.counter),
                    Aad::from(len.to_be_bytes()),
                    &mut frame[4..],
                )
                .expect("AES-256-GCM seals any frame below 64 GiB")
                .as_ref()
                .try_into()
                .expect("a 16-byte tag"),
            None => mac(&self.key, self.counter, len, &frame[4..]),
        };
        frame.extend_from_slice(&tag);
        self.counter += 1;
    }
}

impl Opener {
    fn new(key: MacKey, encrypt: bool) -> Self {
        Opener {
            keys: key
                .candidates()
                .into_iter()
                .map(|(used, key)| (used, cipher(&key, encrypt), key))
                .collect(),
            peer: Arc::default(),
            counter: 0,
        }
    }

    /// The payload of the sealed part of a frame whose prefix was `len`.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let mut payload = sealed.to_vec();
        self.open_in_place(&mut payload)?;
        Ok(payload)
    }

    /// Opens the sealed part of a frame where it lies: `sealed` becomes
    /// its payload. When it does not open its bytes are unspecified (ring
    /// may have decrypted them in place); the session ends then anyway.
    pub fn open_in_place(&mut self, sealed: &mut Vec<u8>) -> Result<(), ChannelError> {
        if sealed.len() < TAG_LEN {
            return Err(ChannelError::Forged);
        }
        let counter = self.counter;
        let which = if self.keys.len() == 1 {
            open_in_place(&self.keys[0].1, &self.keys[0].2, counter, sealed).then_some(0)
        } else {
            // During a rotation, until the peer's first frame tells which
            // secret it seals with: a failed attempt may leave the buffer
            // overwritten, so each candidate opens a copy.
            self.keys.iter().position(|(_, cipher, key)| {
                let mut attempt = sealed.clone();
                let opened = open_in_place(cipher, key, counter, &mut attempt);
                if opened {
                    *sealed = attempt;
                }
                opened
            })
        };
        let which = which.ok_or(ChannelError::Forged)?;
        let _ = self.peer.set(self.keys[which].0);
        if self.keys.len() > 1 {
            // The peer's secret is known now: nothing else may open the
            // rest of the session.
            let kept = self.keys.swap_remove(which);
            self.keys = vec![kept];
        }
        self.counter += 1;
        Ok(())
    }
}

/// Whether `sealed` opens under `key` as frame `counter`; if so it is cut
/// to its payload, decrypted in place. If not, its bytes may have changed.
fn open_in_place(
    cipher: &Option<LessSafeKey>,
    key: &MacKey,
    counter: u64,
    sealed: &mut Vec<u8>,
) -> bool {
    let len = sealed.len() as u32;
    let body = sealed.len() - TAG_LEN;
    let opened = match cipher {
        Some(cipher) => cipher
            .open_in_place(nonce(counter), Aad::from(len.to_be_bytes()), sealed)
            .is_ok(),
        // Constant-time enough: a mismatch ends the session.
        None => constant_eq(&mac(key, counter, len, &sealed[..body]), &sealed[body..]),
    };
    if opened {
        sealed.truncate(body);
    }
    opened
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keys of one session, from the root key and both hellos.
fn session_keys(root: &MacKey, primary: &Hello, secondary: &Hello) -> (MacKey, MacKey) {
    let mut context = Vec::with_capacity(200);
    context.extend_from_slice(b"session\0");
    context.extend_from_slice(primary.module.as_bytes());
    context.push(0);
    context.extend_from_slice(&primary.nonce);
    context.extend_from_slice(&secondary.nonce);
    let session = root.derive(&context);
    (
        session.derive(b"primary to secondary"),
        session.derive(b"secondary to primary"),
    )
}

/// Exchanges hellos on `stream` and returns the sealing ends and the peer's
/// hello. `root` is the cluster's replication key, or a [`SessionKey`] that
/// learns which secret the peer seals with.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    local: &Hello,
    root: impl Into<SessionKey>,
) -> Result<(Sealer, Opener, Hello), ChannelError> {
    let root = root.into();
    let bytes = local.encode();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    stream.write_all(&out)?;
    stream.flush()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > 512 {
        return Err(ChannelError::Hello(Malformed("hello too long")));
    }
    let mut bytes = vec![0; len];
    stream.read_exact(&mut bytes)?;
    let peer = Hello::decode(&bytes)?;
    if peer.module != local.module {
        return Err(ChannelError::Module {
            peer: peer.module,
            expected: local.module.clone(),
        });
    }
    if peer.role == local.role {
        return Err(ChannelError::Role);
    }
    if peer.encrypt != local.encrypt {
        let word = |on: bool| if on { "on" } else { "off" };
        return Err(ChannelError::Encryption {
            local: word(local.encrypt),
            peer: word(peer.encrypt),
        });
    }
    let (primary, secondary) = match local.role {
        Role::Primary => (local, &peer),
        Role::Secondary => (&peer, local),
    };
    let (p2s, s2p) = session_keys(&root.root, primary, secondary);
    let (send, receive) = match local.role {
        Role::Primary => (p2s, s2p),
        Role::Secondary => (s2p, p2s),
    };
    let mut opener = Opener::new(receive, local.encrypt);
    opener.peer = root.peer;
    Ok((Sealer::new(send, local.encrypt), opener, peer))
}

/// Sends messages as sealed frames.
pub struct MessageWriter<W: Write> {
    inner: W,
    sealer: Sealer,
    buf: Vec<u8>,
    /// Bytes put on the wire so far (frames included).
    pub sent: u64,
}

impl<W: Write> MessageWriter<W> {
    pub fn new(inner: W, sealer: Sealer) -> Self {
        MessageWriter {
            inner,
            sealer,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Seals and writes `message` (buffered by the writer given).
    pub fn send(&mut self, message: &Message) -> std::io::Result<()> {
        self.send_encoded(|out| message.encode(out))
    }

    /// Sends a [`Message::Write`] of `data` without copying it into a
    /// message first.
    pub fn send_write(&mut self, path: &RelPath, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.send_encoded(|out| super::wire::encode_write(out, path, offset, data))
    }

    /// Encodes a message with `encode` right behind the frame's length
    /// prefix, seals it there and writes the frame.
    fn send_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        encode(&mut self.buf);
        self.sealer.seal_in_place(&mut self.buf);
        self.sent += self.buf.len() as u64;
        self.inner.write_all(&self.buf)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Receives sealed frames as messages.
pub struct MessageReader<R: Read> {
    inner: R,
    opener: Opener,
    /// The frame being read, kept from one frame to the next.
    frame: Vec<u8>,
}

impl<R: Read> MessageReader<R> {
    pub fn new(inner: R, opener: Opener) -> Self {
        MessageReader {
            inner,
            opener,
            frame: Vec::new(),
        }
    }

    /// The next message; `Ok(None)` when the peer closed the stream cleanly
    /// between frames.
    pub fn recv(&mut self) -> Result<Option<Message>, ChannelError> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(ChannelError::FrameTooLarge(len));
        }
        self.frame.clear();
        // Read into the buffer's spare room: no zeroing of a large frame.
        let read = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.frame)?;
        if read < len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        self.opener.open_in_place(&mut self.frame)?;
        Ok(Some(Message::decode(&self.frame)?))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::cluster::keys::ClusterSecret;

    fn root(byte: u8) -> MacKey {
        ClusterSecret::from_bytes(&[byte; 32]).replication_key()
    }

    fn pair(encrypt: bool) -> (MessageWriter<UnixStream>, MessageReader<UnixStream>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let key = root(7);
        let key2 = key.clone();
        let peer = std::thread::spawn(move || {
            let hello = Hello::new(Role::Secondary, encrypt, "db", "b");
            let (_, opener, _) = handshake(&mut b, &hello, &key2).unwrap();
            MessageReader::new(b, opener)
        });
        let hello = Hello::new(Role::Primary, encrypt, "db", "a");
        let (sealer, _, peer_hello) = handshake(&mut a, &hello, &key).unwrap();
        assert_eq!(peer_hello.node, "b");
        (MessageWriter::new(a, sealer), peer.join().unwrap())
    }

    #[test]
    fn messages_cross_both_modes() {
        for encrypt in [true, false] {
            let (mut tx, mut rx) = pair(encrypt);
            let message = Message::Barrier { seq: 42 };
            tx.send(&message).unwrap();
            tx.send(&Message::Ack { seq: 1 }).unwrap();
            assert_eq!(rx.recv().unwrap(), Some(message));
            assert_eq!(rx.recv().unwrap(), Some(Message::Ack { seq: 1 }));
            drop(tx);
            assert!(rx.recv().unwrap().is_none(), "clean close");
        }
    }

    #[test]
    fn writes_sent_from_a_borrowed_buffer_arrive_as_messages_of_any_size() {
        for encrypt in [true, false] {
            let (mut tx, mut rx) = pair(encrypt);
            let path = RelPath::new(0, b"d/f".to_vec()).unwrap();
            let big: Vec<u8> = (0..super::super::wire::MAX_WRITE)
                .map(|i| i as u8)
                .collect();
            // A large frame, a small one, then large again: the reader's
            // buffer is reused and must never keep stale bytes.
            let sender = std::thread::spawn(move || {
                tx.send_write(&path, 7, &big).unwrap();
                tx.send(&Message::Ack { seq: 1 }).unwrap();
                tx.send_write(&path, 1 << 40, &big[..5]).unwrap();
                tx.send(&Message::Write {
                    path: path.clone(),
                    offset: 3,
                    data: big.clone(),
                })
                .unwrap();
                (path, big)
            });
            let received: Vec<Message> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
            let (path, big) = sender.join().unwrap();
            assert_eq!(
                received,
                vec![
                    Message::Write {
                        path: path.clone(),
                        offset: 7,
                        data: big.clone()
                    },
                    Message::Ack { seq: 1 },
                    Message::Write {
                        path: path.clone(),
                        offset: 1 << 40,
                        data: big[..5].to_vec()
                    },
                    Message::Write {
                        path,
                        offset: 3,
                        data: big
                    },
                ]
            );
        }
    }

    #[test]
    fn encrypted_frames_do_not_show_the_data() {
        let key = root(1);
        let hello_p = Hello::new(Role::Primary, true, "db", "a");
        let hello_s = Hello::new(Role::Secondary, true, "db", "b");
        let (p2s, _) = session_keys(&key, &hello_p, &hello_s);
        let mut sealer = Sealer::new(p2s, true);
        let frame = sealer.seal(b"secret payroll data");
        assert!(!frame.windows(b"payroll".len()).any(|w| w == b"payroll"));
    }

    #[test]
    fn forged_replayed_and_reordered_frames_are_refused() {
        for encrypt in [true, false] {
            let key = root(1);
            let hello_p = Hello::new(Role::Primary, encrypt, "db", "a");
            let hello_s = Hello::new(Role::Secondary, encrypt, "db", "b");
            let (p2s, _) = session_keys(&key, &hello_p, &hello_s);
            let mut sealer = Sealer::new(p2s.clone(), encrypt);
            let first = sealer.seal(b"one");
            let second = sealer.seal(b"two");

            let mut opener = Opener::new(p2s.clone(), encrypt);
            assert!(
                matches!(opener.open(&second[4..]), Err(ChannelError::Forged)),
                "reordered"
            );
            let mut opener = Opener::new(p2s.clone(), encrypt);
            assert_eq!(opener.open(&first[4..]).unwrap(), b"one");
            assert!(
                matches!(opener.open(&first[4..]), Err(ChannelError::Forged)),
                "replayed"
            );

            let mut flipped = first.clone();
            flipped[5] ^= 1;
            let mut opener = Opener::new(p2s.clone(), encrypt);
            assert!(
                matches!(opener.open(&flipped[4..]), Err(ChannelError::Forged)),
                "flipped"
            );

            // Another session (fresh nonces) or another cluster's secret.
            let other = Hello::new(Role::Secondary, encrypt, "db", "b");
            let (other_key, _) = session_keys(&key, &hello_p, &other);
            let mut opener = Opener::new(other_key, encrypt);
            assert!(
                matches!(opener.open(&first[4..]), Err(ChannelError::Forged)),
                "old session"
            );
            let (foreign, _) = session_keys(&root(2), &hello_p, &hello_s);
            let mut opener = Opener::new(foreign, encrypt);
            assert!(
                matches!(opener.open(&first[4..]), Err(ChannelError::Forged)),
                "foreign"
            );

            // The reverse direction's key does not open it (reflection).
            let (_, s2p) = session_keys(&key, &hello_p, &hello_s);
            let mut opener = Opener::new(s2p, encrypt);
            assert!(
                matches!(opener.open(&first[4..]), Err(ChannelError::Forged)),
                "reflected"
            );
        }
    }

    #[test]
    fn during_a_rotation_sessions_open_under_either_secret_and_never_a_third() {
        let old = ClusterSecret::from_bytes(&[1; 32]);
        let new = ClusterSecret::from_bytes(&[2; 32]);
        let rotating = new.clone().accepting(&old).replication_key();
        for encrypt in [true, false] {
            for (peer, opens) in [
                (old.replication_key(), true),
                (new.replication_key(), true),
                (root(3), false),
            ] {
                let (mut a, mut b) = UnixStream::pair().unwrap();
                let theirs = peer.clone();
                let other = std::thread::spawn(move || {
                    let hello = Hello::new(Role::Secondary, encrypt, "db", "b");
                    let (sealer, opener, _) = handshake(&mut b, &hello, &theirs).unwrap();
                    let mut writer = MessageWriter::new(b.try_clone().unwrap(), sealer);
                    writer.send(&Message::Ack { seq: 1 }).unwrap();
                    writer.send(&Message::Ack { seq: 2 }).unwrap();
                    MessageReader::new(b, opener).recv().map(|m| m.is_some())
                });
                let hello = Hello::new(Role::Primary, encrypt, "db", "a");
                let (sealer, opener, _) = handshake(&mut a, &hello, &rotating).unwrap();
                let mut reader = MessageReader::new(a.try_clone().unwrap(), opener);
                let first = reader.recv();
                assert_eq!(
                    first.is_ok(),
                    opens,
                    "encrypt {encrypt}: a peer on {} secret, got {first:?}",
                    if opens { "either" } else { "a third" }
                );
                if opens {
                    assert_eq!(reader.recv().unwrap(), Some(Message::Ack { seq: 2 }));
                    let mut writer = MessageWriter::new(a, sealer);
                    writer.send(&Message::Ack { seq: 3 }).unwrap();
                    // The rotating end seals with its signing (new) secret:
                    // only a peer that knows it opens the frame.
                    let peer_opened = other.join().unwrap();
                    let knows_new = peer != old.replication_key();
                    assert_eq!(peer_opened.is_ok(), knows_new, "{peer_opened:?}");
                } else {
                    drop((reader, sealer, a));
                    let _ = other.join();
                }
            }
        }
    }

    #[test]
    fn a_session_key_learns_which_secret_the_peer_seals_with() {
        let old = ClusterSecret::from_bytes(&[1; 32]);
        let new = ClusterSecret::from_bytes(&[2; 32]);
        let rotating = new.clone().accepting(&old).replication_key();
        for (peer, used) in [
            (new.replication_key(), KeyUsed::Signing),
            (old.replication_key(), KeyUsed::Accepted),
        ] {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let other = std::thread::spawn(move || {
                let hello = Hello::new(Role::Secondary, true, "db", "b");
                let (sealer, _, _) = handshake(&mut b, &hello, &peer).unwrap();
                MessageWriter::new(b, sealer)
                    .send(&Message::Ack { seq: 1 })
                    .unwrap();
            });
            let key = SessionKey::new(rotating.clone());
            let hello = Hello::new(Role::Primary, true, "db", "a");
            let (_, opener, _) = handshake(&mut a, &hello, &key).unwrap();
            assert_eq!(
                key.in_use(),
                rotating,
                "before the peer's first frame, either secret may be its"
            );
            let mut reader = MessageReader::new(a, opener);
            assert_eq!(reader.recv().unwrap(), Some(Message::Ack { seq: 1 }));
            other.join().unwrap();
            assert_eq!(
                key.in_use(),
                rotating.in_use(Some(used)),
                "the peer sealed under the {used:?} secret"
            );
        }
    }

    #[test]
    fn mismatched_hellos_are_refused_with_the_reason() {
        let run = |local: Hello, peer: Hello| {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let other = std::thread::spawn(move || {
                let _ = handshake(&mut b, &peer, &root(1));
            });
            let result = handshake(&mut a, &local, &root(1));
            other.join().unwrap();
            result.err().unwrap()
        };
        let e = run(
            Hello::new(Role::Primary, true, "db", "a"),
            Hello::new(Role::Secondary, false, "db", "b"),
        );
        assert!(e.to_string().contains("encrypt identically"), "{e}");
        let e = run(
            Hello::new(Role::Primary, true, "db", "a"),
            Hello::new(Role::Secondary, true, "web", "b"),
        );
        assert!(matches!(e, ChannelError::Module { .. }));
        let e = run(
            Hello::new(Role::Primary, true, "db", "a"),
            Hello::new(Role::Primary, true, "db", "b"),
        );
        assert!(matches!(e, ChannelError::Role));
    }

    #[test]
    fn oversized_and_garbage_frames_end_the_session_with_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let key = root(1);
        let hello_p = Hello::new(Role::Primary, true, "db", "a");
        let hello_s = Hello::new(Role::Secondary, true, "db", "b");
        let (p2s, _) = session_keys(&key, &hello_p, &hello_s);
        let mut reader = MessageReader::new(b, Opener::new(p2s, true));
        a.write_all(&(u32::MAX).to_be_bytes()).unwrap();
        assert!(matches!(reader.recv(), Err(ChannelError::FrameTooLarge(_))));
        assert!(matches!(
            Hello::decode(b"HALOREPL\x09"),
            Err(ChannelError::Version(9))
        ));
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1.1"),
            Err(ChannelError::Hello(_))
        ));
    }
}
