//! The heartbeat frame: a versioned binary format, authenticated with a key
//! derived from the cluster secret.
//!
//! ```text
//! offset size
//!      0    4  magic "HALO"
//!      4    1  version (2; version 1 frames, without powers, are read too)
//!      5    1  kind (1 = heartbeat)
//!      6    1  network index the frame was sent on
//!      7    1  reserved, 0
//!      8    8  cluster id (from the cluster name: a node of another
//!              cluster on the same LAN is told apart before any MAC work)
//!     16    8  sender's boot epoch (grows at every daemon start)
//!     24    8  sequence number within the epoch
//!     32    1  sender name length n (1..=63), then n bytes of UTF-8
//!      …    1  module count m (0..=32), then m module reports:
//!              name length k (1..=63), k bytes, state, phase, flags (1 each),
//!              data generation (8), generation followed (8, 0 = none),
//!              power: 0 (none), or 1 then the power (4) (version 2 only)
//!      …   32  BLAKE3 keyed hash of every byte before it
//! ```
//! A farm module's report carries the power the sender gives itself in
//! it (`power` of its configuration, or of its last reload), from which
//! every node computes the bucket table. A report whose flags have bit
//! 0x80 carries in `generation followed` an instant of the sender's clock,
//! as its age when the frame was encoded (`instant::FLAG_INSTANT`). Integers are big-endian. Decoding checks the size, magic, version and
//! cluster, then the MAC, and only then parses the authenticated body, so a
//! forged frame costs one hash and reaches no parser.

use std::collections::BTreeMap;

use super::{
    keys::{KeyUsed, MacKey},
    wire::{put_name, BadName, Cursor, Malformed},
};

pub const MAGIC: [u8; 4] = *b"HALO";
pub const VERSION: u8 = 2;
/// The version before powers: received frames of it are read, with none.
const VERSION_WITHOUT_POWERS: u8 = 1;
const KIND_HEARTBEAT: u8 = 1;
const HEADER_LEN: usize = 32;
const TAG_LEN: usize = 32;
/// Frames never exceed one unfragmented UDP datagram on a 1500-byte MTU.
pub const MAX_FRAME_LEN: usize = 1400;
pub use super::wire::MAX_NAME_LEN;
pub const MAX_MODULES: usize = 32;

/// What one node says about one of its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleReport {
    pub name: String,
    /// The module state's wire code (the fsm module owns the mapping).
    pub state: u8,
    /// 0 = Ready, 1 = Transient.
    pub phase: u8,
    /// Bit flags (the fsm module owns their meaning).
    pub flags: u8,
    /// The generation of the node's data for this module (mirror), 0 if none.
    pub generation: u64,
    /// As a mirror secondary: the generation of the primary it copies (0 = none).
    pub following: u64,
}

/// One heartbeat, as sent by `sender`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatFrame {
    pub network: u8,
    pub cluster: u64,
    pub sender: String,
    pub epoch: u64,
    pub seq: u64,
    pub modules: Vec<ModuleReport>,
    /// The power the sender announces for each of its farm modules, by
    /// module name (every name is one of `modules`). On the wire each
    /// module's report carries its own; kept apart here so that the
    /// reports of modules without one stay as they are.
    pub powers: BTreeMap<String, u32>,
}

/// Why a received datagram was dropped; the reason names the counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than the smallest heartbeat")]
    TooShort(usize),
    #[error("frame of {0} bytes is longer than {MAX_FRAME_LEN}")]
    TooLong(usize),
    #[error("not a halo frame (bad magic)")]
    BadMagic,
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of another cluster (id {0:#018x})")]
    OtherCluster(u64),
    #[error("authentication failed (wrong secret or altered frame)")]
    Forged,
    #[error("malformed body: {0}")]
    Malformed(&'static str),
    #[error("cannot encode: {0}")]
    Encode(&'static str),
}

impl FrameError {
    /// A stable label for the per-reason drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooShort(_) | FrameError::TooLong(_) | FrameError::Malformed(_) => {
                "malformed"
            }
            FrameError::BadMagic | FrameError::UnknownKind(_) => "not_heartbeat",
            FrameError::UnsupportedVersion(_) => "version",
            FrameError::OtherCluster(_) => "other_cluster",
            FrameError::Forged => "forged",
            FrameError::Encode(_) => "encode",
        }
    }
}

/// The cluster id carried by every frame: the first 8 bytes of the BLAKE3
/// hash of the cluster's name.
pub fn cluster_id(name: &str) -> u64 {
    let hash = blake3::hash(name.as_bytes());
    u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl HeartbeatFrame {
    /// The signed wire form.
    pub fn encode(&self, key: &MacKey) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, KIND_HEARTBEAT, self.network, 0]);
        out.extend_from_slice(&self.cluster.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_name(&mut out, &self.sender)?;
        if self.modules.len() > MAX_MODULES {
            return Err(FrameError::Encode("more than 32 modules"));
        }
        out.push(self.modules.len() as u8);
        if self
            .powers
            .keys()
            .any(|name| !self.modules.iter().any(|m| m.name == *name))
        {
            return Err(FrameError::Encode("a power for a module not reported"));
        }
        for module in &self.modules {
            put_name(&mut out, &module.name)?;
            out.extend_from_slice(&[module.state, module.phase, module.flags]);
            out.extend_from_slice(&module.generation.to_be_bytes());
            out.extend_from_slice(&module.following.to_be_bytes());
            match self.powers.get(&module.name) {
                None => out.push(0),
                Some(power) => {
                    out.push(1);
                    out.extend_from_slice(&power.to_be_bytes());
                }
            }
        }
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
        if out.len() > MAX_FRAME_LEN {
            return Err(FrameError::Encode("frame longer than 1400 bytes"));
        }
        Ok(out)
    }

    /// Checks and parses a received datagram.
    pub fn decode(bytes: &[u8], key: &MacKey, cluster: u64) -> Result<Self, FrameError> {
        Self::decode_keyed(bytes, key, cluster).map(|(frame, _)| frame)
    }

    /// [`HeartbeatFrame::decode`], also saying which of `key`'s keys signed
    /// the frame (a sender still, or already, on the accepted secret).
    pub fn decode_keyed(
        bytes: &[u8],
        key: &MacKey,
        cluster: u64,
    ) -> Result<(Self, KeyUsed), FrameError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(bytes.len()));
        }
        // Header, a one-byte name, the module count, and the tag.
        if bytes.len() < HEADER_LEN + 3 + TAG_LEN {
            return Err(FrameError::TooShort(bytes.len()));
        }
        if bytes[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = bytes[4];
        if version != VERSION && version != VERSION_WITHOUT_POWERS {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if bytes[5] != KIND_HEARTBEAT {
            return Err(FrameError::UnknownKind(bytes[5]));
        }
        let frame_cluster = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if frame_cluster != cluster {
            return Err(FrameError::OtherCluster(frame_cluster));
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let Some(used) = key.check(body, tag.try_into().expect("32 bytes")) else {
            return Err(FrameError::Forged);
        };
        if body[7] != 0 {
            return Err(FrameError::Malformed("reserved byte set"));
        }
        let mut cursor = Cursor::new(body, 16);
        let epoch = cursor.u64()?;
        let seq = cursor.u64()?;
        let sender = cursor.name()?;
        let count = usize::from(cursor.u8()?);
        if count > MAX_MODULES {
            return Err(FrameError::Malformed("more than 32 modules"));
        }
        let mut modules: Vec<ModuleReport> = Vec::with_capacity(count);
        let mut powers = BTreeMap::new();
        for _ in 0..count {
            let report = ModuleReport {
                name: cursor.name()?,
                state: cursor.u8()?,
                phase: cursor.u8()?,
                flags: cursor.u8()?,
                generation: cursor.u64()?,
                following: cursor.u64()?,
            };
            if modules.iter().any(|m| m.name == report.name) {
                return Err(FrameError::Malformed("a module reported twice"));
            }
            if version != VERSION_WITHOUT_POWERS {
                match cursor.u8()? {
                    0 => {}
                    1 => {
                        powers.insert(report.name.clone(), cursor.u32()?);
                    }
                    _ => return Err(FrameError::Malformed("power marker other than 0 or 1")),
                }
            }
            modules.push(report);
        }
        cursor.end()?;
        let frame = HeartbeatFrame {
            network: body[6],
            cluster: frame_cluster,
            sender,
            epoch,
            seq,
            modules,
            powers,
        };
        Ok((frame, used))
    }
}

impl From<Malformed> for FrameError {
    fn from(Malformed(what): Malformed) -> Self {
        FrameError::Malformed(what)
    }
}

impl From<BadName> for FrameError {
    fn from(_: BadName) -> Self {
        FrameError::Encode("name must be 1 to 63 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::keys::ClusterSecret;

    fn key() -> MacKey {
        ClusterSecret::from_bytes(&[7; 32]).heartbeat_key()
    }

    fn sample() -> HeartbeatFrame {
        HeartbeatFrame {
            network: 1,
            cluster: cluster_id("prod"),
            sender: "node-a".into(),
            epoch: 1_790_000_000,
            seq: 42,
            modules: vec![
                ModuleReport {
                    name: "web".into(),
                    state: 2,
                    phase: 0,
                    flags: 0,
                    generation: 0,
                    following: 0,
                },
                ModuleReport {
                    name: "db".into(),
                    state: 3,
                    phase: 1,
                    flags: 1,
                    generation: 17,
                    following: 16,
                },
            ],
            powers: BTreeMap::from([("web".to_owned(), 3)]),
        }
    }

    /// `frame` in the version 1 layout (no power field), signed.
    fn encode_v1(frame: &HeartbeatFrame) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[VERSION_WITHOUT_POWERS, KIND_HEARTBEAT, frame.network, 0]);
        for n in [frame.cluster, frame.epoch, frame.seq] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        put_name(&mut out, &frame.sender).unwrap();
        out.push(frame.modules.len() as u8);
        for m in &frame.modules {
            put_name(&mut out, &m.name).unwrap();
            out.extend_from_slice(&[m.state, m.phase, m.flags]);
            out.extend_from_slice(&m.generation.to_be_bytes());
            out.extend_from_slice(&m.following.to_be_bytes());
        }
        let tag = key().tag(&out);
        out.extend_from_slice(&tag);
        out
    }

    #[test]
    fn a_farm_modules_power_round_trips_in_its_report() {
        let mut frame = sample();
        frame.powers = BTreeMap::from([("web".to_owned(), 0), ("db".to_owned(), u32::MAX)]);
        let bytes = frame.encode(&key()).unwrap();
        assert_eq!(bytes[4], 2, "frames with powers are version 2");
        assert_eq!(
            HeartbeatFrame::decode(&bytes, &key(), cluster_id("prod")),
            Ok(frame.clone())
        );
        frame.powers.clear();
        let bytes = frame.encode(&key()).unwrap();
        assert_eq!(
            HeartbeatFrame::decode(&bytes, &key(), cluster_id("prod")),
            Ok(frame),
            "a report without a power has none, not 0"
        );
    }

    #[test]
    fn a_version_1_frame_is_read_without_powers() {
        let mut frame = sample();
        frame.powers.clear();
        let bytes = encode_v1(&frame);
        assert_eq!(
            HeartbeatFrame::decode(&bytes, &key(), cluster_id("prod")),
            Ok(frame)
        );
    }

    #[test]
    fn a_power_for_a_module_not_reported_cannot_be_encoded() {
        let mut frame = sample();
        frame.powers.insert("api".into(), 1);
        assert_eq!(
            frame.encode(&key()),
            Err(FrameError::Encode("a power for a module not reported"))
        );
    }

    #[test]
    fn a_signed_power_marker_other_than_0_or_1_is_malformed() {
        let mut frame = sample();
        frame.modules.truncate(1);
        let bytes = frame.encode(&key()).unwrap();
        // The marker follows the last module's two generations.
        let marker_at = bytes.len() - TAG_LEN - 5;
        assert_eq!(bytes[marker_at], 1);
        let mut body = bytes[..bytes.len() - TAG_LEN].to_vec();
        body[marker_at] = 2;
        let tag = key().tag(&body);
        body.extend_from_slice(&tag);
        assert_eq!(
            HeartbeatFrame::decode(&body, &key(), cluster_id("prod")),
            Err(FrameError::Malformed("power marker other than 0 or 1"))
        );
    }

    #[test]
    fn a_frame_round_trips() {
        let frame = sample();
        let bytes = frame.encode(&key()).unwrap();
        assert_eq!(
            HeartbeatFrame::decode(&bytes, &key(), cluster_id("prod")),
            Ok(frame)
        );
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = sample().encode(&key()).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut altered = bytes.clone();
            altered[i / 8] ^= 1 << (i % 8);
            let result = HeartbeatFrame::decode(&altered, &key(), cluster_id("prod"));
            assert!(result.is_err(), "bit {i} flipped was accepted: {result:?}");
        }
    }

    #[test]
    fn a_frame_signed_with_another_secret_is_forged() {
        let other = ClusterSecret::from_bytes(&[8; 32]).heartbeat_key();
        let bytes = sample().encode(&other).unwrap();
        let err = HeartbeatFrame::decode(&bytes, &key(), cluster_id("prod")).unwrap_err();
        assert_eq!(err, FrameError::Forged);
        assert_eq!(err.reason(), "forged");
    }

    #[test]
    fn during_a_rotation_frames_of_either_secret_are_accepted_and_told_apart() {
        let old = ClusterSecret::from_bytes(&[7; 32]);
        let new = ClusterSecret::from_bytes(&[9; 32]);
        let rotating = new.clone().accepting(&old).heartbeat_key();
        let id = cluster_id("prod");
        let from_old = sample().encode(&old.heartbeat_key()).unwrap();
        let from_new = sample().encode(&new.heartbeat_key()).unwrap();
        assert_eq!(
            HeartbeatFrame::decode_keyed(&from_old, &rotating, id),
            Ok((sample(), KeyUsed::Accepted))
        );
        assert_eq!(
            HeartbeatFrame::decode_keyed(&from_new, &rotating, id),
            Ok((sample(), KeyUsed::Signing))
        );
        let stranger = ClusterSecret::from_bytes(&[1; 32]).heartbeat_key();
        let from_stranger = sample().encode(&stranger).unwrap();
        assert_eq!(
            HeartbeatFrame::decode(&from_stranger, &rotating, id),
            Err(FrameError::Forged)
        );
        assert_eq!(
            sample().encode(&rotating).unwrap(),
            from_new,
            "a rotating node signs with its signing secret only"
        );
    }

    #[test]
    fn another_clusters_frame_is_told_apart_before_the_mac() {
        let bytes = sample().encode(&key()).unwrap();
        let err = HeartbeatFrame::decode(&bytes, &key(), cluster_id("test")).unwrap_err();
        assert_eq!(err.reason(), "other_cluster");
    }

    #[test]
    fn every_truncation_is_rejected_without_panicking() {
        let bytes = sample().encode(&key()).unwrap();
        for len in 0..bytes.len() {
            assert!(HeartbeatFrame::decode(&bytes[..len], &key(), cluster_id("prod")).is_err());
        }
    }

    #[test]
    fn a_correctly_signed_but_malformed_body_is_malformed_not_forged() {
        // A peer with the right key but a bug: a module count that runs past
        // the end. Re-sign the altered body so only the parser can object.
        let bytes = sample().encode(&key()).unwrap();
        let mut body = bytes[..bytes.len() - TAG_LEN].to_vec();
        let count_at = HEADER_LEN + 1 + "node-a".len();
        body[count_at] = 3;
        let tag = key().tag(&body);
        body.extend_from_slice(&tag);
        let err = HeartbeatFrame::decode(&body, &key(), cluster_id("prod")).unwrap_err();
        assert_eq!(err, FrameError::Malformed("truncated"));
    }

    #[test]
    fn names_too_long_or_empty_cannot_be_encoded() {
        let mut frame = sample();
        frame.sender = "x".repeat(64);
        assert!(frame.encode(&key()).is_err());
        frame.sender = String::new();
        assert!(frame.encode(&key()).is_err());
    }
}
