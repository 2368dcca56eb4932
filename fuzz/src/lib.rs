//! What halo's fuzz targets share: the fixed keys they sign with, an
//! in-memory replication session, and the seed inputs of each target.
//!
//! The authenticated formats (heartbeat, witness, replication frames) check
//! their MAC before parsing anything, so random bytes would never reach a
//! parser: those targets take the unsigned bytes as input and sign them
//! here, and also feed them unsigned to cover the checks before the MAC.

use std::io::{self, Cursor, Read, Write};
use std::path::Path;

use halo::cluster::frame::{cluster_id, HeartbeatFrame, ModuleReport, MAX_FRAME_LEN};
use halo::cluster::keys::{ClusterSecret, MacKey};
use halo::mirror::channel::{handshake, Hello, Opener, Role, Sealer};
use halo::mirror::path::RelPath;
use halo::mirror::wire::{Blocks, Message, Meta};
use halo::witness::protocol::{LeaseAnswer, LeaseRequest, Verdict};

/// The cluster name every signed input is made for.
pub const CLUSTER: &str = "fuzz";
/// Bytes of a BLAKE3 tag ending a heartbeat or witness datagram.
pub const TAG_LEN: usize = 32;

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(&[7; 32])
}

/// The heartbeat key of [`CLUSTER`].
pub fn heartbeat_key() -> MacKey {
    secret().heartbeat_key()
}

/// The witness key of [`CLUSTER`].
pub fn witness_key() -> MacKey {
    secret().witness_key()
}

/// `body` followed by its tag under `key`: what a peer holding the secret sends.
pub fn signed(body: &[u8], key: &MacKey) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&key.tag(body));
    out
}

/// A peer's end of a stream: reads what it was given, keeps what is written.
pub struct MemoryStream {
    input: Cursor<Vec<u8>>,
    /// Everything written so far.
    pub output: Vec<u8>,
}

impl MemoryStream {
    /// A stream whose reads return `input`, then end of file.
    pub fn new(input: Vec<u8>) -> Self {
        MemoryStream {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }
}

impl Read for MemoryStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemoryStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A hello with a fixed nonce, so that a session's keys are the same every run.
pub fn fixed_hello(role: Role, encrypt: bool) -> Hello {
    let (node, nonce) = match role {
        Role::Primary => ("a", [1; 32]),
        Role::Secondary => ("b", [2; 32]),
    };
    Hello {
        role,
        encrypt,
        module: "db".to_owned(),
        node: node.to_owned(),
        nonce,
    }
}

/// The bytes `handshake` sends for `hello`: it writes them before it reads.
pub fn hello_bytes(hello: &Hello) -> Vec<u8> {
    let mut stream = MemoryStream::new(Vec::new());
    // Fails reading the peer's hello from the empty input, after writing its own.
    let _ = handshake(&mut stream, hello, &secret().replication_key());
    stream.output
}

/// Both ends of a session through the public handshake: the primary's
/// sealer and the secondary's opener of the primary-to-secondary direction.
pub fn session(encrypt: bool) -> (Sealer, Opener) {
    let key = secret().replication_key();
    let primary = fixed_hello(Role::Primary, encrypt);
    let secondary = fixed_hello(Role::Secondary, encrypt);
    let mut to_primary = MemoryStream::new(hello_bytes(&secondary));
    let (sealer, _, _) =
        handshake(&mut to_primary, &primary, &key).expect("the primary's handshake");
    let mut to_secondary = MemoryStream::new(hello_bytes(&primary));
    let (_, opener, _) =
        handshake(&mut to_secondary, &secondary, &key).expect("the secondary's handshake");
    (sealer, opener)
}

/// Why a path a peer sent could name something outside its directory, if
/// it could: the rules of `RelPath`, checked again from the outside.
pub fn escape(bytes: &[u8]) -> Option<&'static str> {
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == b'/' {
        return Some("leading /");
    }
    if bytes.contains(&0) {
        return Some("NUL byte");
    }
    bytes.split(|&b| b == b'/').find_map(|name| match name {
        b"" => Some("empty component"),
        b"." => Some("`.` component"),
        b".." => Some("`..` component"),
        _ => None,
    })
}

/// Why `name`, a name of a `Listing`, is not exactly one component, if it is not.
pub fn not_one_component(name: &[u8]) -> Option<&'static str> {
    match name {
        b"" => Some("empty name"),
        b"." | b".." => Some("dot name"),
        _ if name.contains(&b'/') => Some("name with /"),
        _ if name.contains(&0) => Some("name with NUL"),
        _ => None,
    }
}

fn path(text: &str) -> RelPath {
    RelPath::new(0, text.as_bytes().to_vec()).expect("a valid seed path")
}

/// One of each replication message.
pub fn sample_messages() -> Vec<Message> {
    let meta = Meta {
        mode: 0o100644,
        uid: 1000,
        gid: 100,
        mtime_ns: 1_700_000_000_000_000_000,
    };
    vec![
        Message::Mkdir {
            path: path("d"),
            meta,
        },
        Message::Write {
            path: path("d/f"),
            offset: 4096,
            data: b"hello".to_vec(),
        },
        Message::Symlink {
            path: path("l"),
            target: b"../elsewhere".to_vec(),
        },
        Message::Rename {
            from: path("a"),
            to: path("b/c"),
        },
        Message::Listing {
            dir: path("d"),
            names: vec![b"f".to_vec(), b"g".to_vec()],
        },
        Message::Sums {
            path: path("big"),
            meta,
            size: 3 * 65_536,
            first: 1,
            sums: vec![[1; 16], [2; 16]],
        },
        Message::Need {
            path: path("big"),
            blocks: vec![Blocks { first: 1, count: 2 }],
        },
        Message::Join {
            generation: 3,
            state: 1,
        },
        Message::Refused {
            reason: "no space".to_owned(),
        },
    ]
}

/// The seed inputs of every target, by target name.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let heartbeats = [0, 1, 3].map(|modules| {
        let frame = HeartbeatFrame {
            network: 1,
            cluster: cluster_id(CLUSTER),
            sender: "node-a".to_owned(),
            epoch: 5,
            seq: 42,
            modules: (0..modules)
                .map(|i| ModuleReport {
                    name: format!("module{i}"),
                    state: 2,
                    phase: 0,
                    flags: 1,
                    generation: 7,
                    following: 0,
                })
                .collect(),
            // Every other module announces a power.
            powers: (0..modules)
                .step_by(2)
                .map(|i| (format!("module{i}"), 2))
                .collect(),
        };
        let bytes = frame.encode(&heartbeat_key()).expect("a seed frame");
        assert!(bytes.len() <= MAX_FRAME_LEN);
        bytes[..bytes.len() - TAG_LEN].to_vec()
    });

    let key = witness_key();
    let request = LeaseRequest {
        cluster: cluster_id(CLUSTER),
        nonce: [3; 16],
        epoch: 2,
        seq: 9,
        module: "db".to_owned(),
        node: "node-a".to_owned(),
        duration: std::time::Duration::from_millis(3000),
        generation: 7,
        forced: false,
    };
    let answer = |verdict| LeaseAnswer {
        cluster: cluster_id(CLUSTER),
        nonce: [3; 16],
        module: "db".to_owned(),
        verdict,
    };
    let unsigned = |bytes: Vec<u8>| bytes[..bytes.len() - TAG_LEN].to_vec();
    let forced = LeaseRequest {
        forced: true,
        ..request.clone()
    };
    let witness = vec![
        unsigned(request.encode(&key).expect("a seed request")),
        unsigned(forced.encode(&key).expect("a seed request")),
        unsigned(
            answer(Verdict::Stale { generation: 8 })
                .encode(&key)
                .expect("a seed answer"),
        ),
        unsigned(
            answer(Verdict::Granted {
                duration: std::time::Duration::from_secs(3),
                grace: std::time::Duration::from_secs(1),
                generation: 7,
            })
            .encode(&key)
            .expect("a seed answer"),
        ),
        unsigned(
            answer(Verdict::Held {
                holder: "node-b".to_owned(),
                remaining: std::time::Duration::from_millis(1500),
            })
            .encode(&key)
            .expect("a seed answer"),
        ),
    ];

    let messages: Vec<Vec<u8>> = sample_messages()
        .iter()
        .map(|message| {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            bytes
        })
        .collect();

    // replication_channel: a mode byte, then its input (see the target).
    let mut channel = Vec::new();
    for encrypt in [0u8, 1] {
        let mut hello = vec![encrypt];
        hello.extend(hello_bytes(&fixed_hello(Role::Primary, encrypt == 1)));
        channel.push(hello);
        let mut frames = vec![encrypt | 2];
        let mut tampered = vec![encrypt | 6, 5];
        for message in &messages[..3] {
            frames.extend((message.len() as u16).to_be_bytes());
            frames.extend(message);
            tampered.extend((message.len() as u16).to_be_bytes());
            tampered.extend(message);
        }
        channel.push(frames);
        channel.push(tampered);
        let (mut sealer, _) = session(encrypt == 1);
        let mut raw = vec![encrypt | 4];
        for message in &messages[..2] {
            raw.extend(sealer.seal(message));
        }
        channel.push(raw);
    }

    let config =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-example.toml"))
            .expect("docs/config-example.toml");
    let configs = vec![
        config,
        b"[cluster]\nname = \"c\"\nsecret_file = \"/etc/halo/secret\"\n".to_vec(),
        b"[node]\nname = \"a\"\n[api]\nlisten = 7\n".to_vec(),
    ];

    let api = [
        &br#"{"enabled": true}"#[..],
        br#"{"enabled": false}"#,
        br#"{"enabled": "yes", "other": 1}"#,
        b"since_ms=1700000000000&limit=10",
        b"limit=5",
    ]
    .map(<[u8]>::to_vec)
    .to_vec();

    vec![
        ("heartbeat_frame", heartbeats.to_vec()),
        ("replication_message", messages),
        ("replication_channel", channel),
        ("witness_protocol", witness),
        ("config", configs),
        ("api_body", api),
    ]
}
