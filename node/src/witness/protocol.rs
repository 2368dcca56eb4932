//! The arbiter's UDP wire format: a lease request from a node and the
//! witness's reply, both authenticated with the cluster's witness key
//! ([`ClusterSecret::witness_key`](crate::cluster::keys::ClusterSecret::witness_key)).
//!
//! ```text
//! request                                  reply
//! offset size                              offset size
//!      0    4  magic "HLWT"                     0    4  magic "HLWT"
//!      4    1  version (2)                      4    1  version (2)
//!      5    1  kind (1 = lease request)         5    1  kind (2 = lease reply)
//!      6    1  flags: bit 0 forced (halo prim)  6    1  verdict: 1 granted, 2 held by
//!      7    1  reserved, 0                              another node, 3 witness starting,
//!      8    8  cluster id                               4 stale (newer data granted before)
//!     16   16  nonce (random, per request)      7    1  reserved, 0
//!     32    8  sender's boot epoch              8    8  cluster id (the request's)
//!     40    8  sequence number in the epoch    16   16  nonce (the request's)
//!     48    8  sender's data generation        32    4  granted: the lease's duration, ms;
//!     56    4  requested duration, ms (≥ 1)              held, starting: time until it can
//!     60    1  module name length m (1..=63),            be had; stale: 0
//!              then m bytes of UTF-8           36    4  granted: the grace, ms; else 0
//!      …    1  node name length n (1..=63),    40    8  granted, stale: the highest data
//!              then n bytes of UTF-8                    generation granted to before; else 0
//!      …   32  BLAKE3 keyed hash of every      48    1  module name length m, m bytes
//!              byte before it                   …    1  holder name length h, h bytes
//!                                                       (1..=63 when held, else 0)
//!                                               …   32  BLAKE3 keyed hash
//! ```
//! Integers are big-endian. A reply echoes the request's nonce inside its
//! MAC, so a recorded reply cannot answer a later request; the witness
//! refuses requests whose `(epoch, seq)` is not newer than the last it
//! accepted from that node (a replayed request would extend a lease its
//! sender may have given up). Decoding checks size, magic, version and kind,
//! then the MAC, and only then parses the body.
//!
//! Version 2 added the data generation, the forced flag and the stale
//! verdict ([`lease`](super::lease) says why); version 1 nodes and version 2
//! witnesses (and the reverse) do not talk: upgrade the witness and the
//! nodes together.
//!
//! Durations travel in whole milliseconds. A granted duration and grace are
//! rounded *down* (the node then counts on a little less than the witness
//! reserves); a refusal's waiting time is rounded *up*.

use std::time::Duration;

use crate::cluster::{
    keys::{KeyUsed, MacKey},
    wire::{put_name, BadName, Cursor, Malformed},
};

pub const MAGIC: [u8; 4] = *b"HLWT";
pub const VERSION: u8 = 2;
const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const VERDICT_GRANTED: u8 = 1;
const VERDICT_HELD: u8 = 2;
const VERDICT_STARTING: u8 = 3;
const VERDICT_STALE: u8 = 4;
const FLAG_FORCED: u8 = 1;
const REQUEST_HEADER_LEN: usize = 60;
const REPLY_HEADER_LEN: usize = 48;
const TAG_LEN: usize = 32;
pub const NONCE_LEN: usize = 16;
pub use crate::cluster::wire::MAX_NAME_LEN;
/// No datagram of this protocol is longer (the longest request is 220 bytes).
pub const MAX_DATAGRAM_LEN: usize = 256;

/// A request's random nonce, echoed by its reply.
pub type Nonce = [u8; NONCE_LEN];

/// A node asks for (or renews) a module's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub cluster: u64,
    pub nonce: Nonce,
    /// The node daemon's boot epoch and the request's number within it.
    pub epoch: u64,
    pub seq: u64,
    pub module: String,
    pub node: String,
    pub duration: Duration,
    /// The generation of the sender's data.
    pub generation: u64,
    /// `halo prim`: the sender may have older data than the witness granted
    /// to before, and serves anyway.
    pub forced: bool,
}

/// The witness's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The requester holds the lease for `duration` from the witness's
    /// handling of the request; it is reserved for `grace` more after that.
    /// `generation` is the highest the witness granted to before: above the
    /// requester's only for a forced request, which then bumps above it.
    Granted {
        duration: Duration,
        grace: Duration,
        generation: u64,
    },
    /// `holder` holds it; it may be had in `remaining`.
    Held { holder: String, remaining: Duration },
    /// The witness started recently and grants nothing for `remaining`.
    Starting { remaining: Duration },
    /// The lease was granted before to data of a newer `generation` than
    /// the requester's: only a forced request may have it.
    Stale { generation: u64 },
}

/// The witness's answer to one [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub cluster: u64,
    pub nonce: Nonce,
    pub module: String,
    pub verdict: Verdict,
}

/// Why a datagram was dropped; the reason names the counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram of {0} bytes is shorter than the smallest witness message")]
    TooShort(usize),
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM_LEN}")]
    TooLong(usize),
    #[error("not a halo witness message (bad magic)")]
    BadMagic,
    #[error("unsupported witness protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unexpected message kind {0}")]
    WrongKind(u8),
    #[error("authentication failed (wrong secret or altered message)")]
    Forged,
    #[error("malformed body: {0}")]
    Malformed(&'static str),
    #[error("cannot encode: {0}")]
    Encode(&'static str),
}

impl WireError {
    /// A stable label for the per-reason drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooShort(_) | WireError::TooLong(_) | WireError::Malformed(_) => "malformed",
            WireError::BadMagic | WireError::WrongKind(_) => "not_witness",
            WireError::UnsupportedVersion(_) => "version",
            WireError::Forged => "forged",
            WireError::Encode(_) => "encode",
        }
    }
}

impl LeaseRequest {
    /// The signed wire form.
    pub fn encode(&self, key: &MacKey) -> Result<Vec<u8>, WireError> {
        let millis = u32::try_from(self.duration.as_millis())
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or(WireError::Encode("duration must be 1 ms to 49 days"))?;
        let mut out = Vec::with_capacity(MAX_DATAGRAM_LEN);
        out.extend_from_slice(&MAGIC);
        let flags = if self.forced { FLAG_FORCED } else { 0 };
        out.extend_from_slice(&[VERSION, KIND_REQUEST, flags, 0]);
        out.extend_from_slice(&self.cluster.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&millis.to_be_bytes());
        put_name(&mut out, &self.module)?;
        put_name(&mut out, &self.node)?;
        Ok(sign(out, key))
    }

    /// Checks and parses a received datagram.
    pub fn decode(bytes: &[u8], key: &MacKey) -> Result<Self, WireError> {
        Self::decode_keyed(bytes, key).map(|(request, _)| request)
    }

    /// [`LeaseRequest::decode`], also saying which of `key`'s keys signed
    /// the request: the witness answers under the same one.
    pub fn decode_keyed(bytes: &[u8], key: &MacKey) -> Result<(Self, KeyUsed), WireError> {
        let (body, used) = authenticate(bytes, key, KIND_REQUEST, REQUEST_HEADER_LEN + 4)?;
        if body[6] & !FLAG_FORCED != 0 || body[7] != 0 {
            return Err(WireError::Malformed("reserved bytes set"));
        }
        let forced = body[6] & FLAG_FORCED != 0;
        let mut cursor = Cursor::new(body, 8);
        let cluster = cursor.u64()?;
        let nonce = cursor.array::<NONCE_LEN>()?;
        let epoch = cursor.u64()?;
        let seq = cursor.u64()?;
        let generation = cursor.u64()?;
        let millis = cursor.u32()?;
        if millis == 0 {
            return Err(WireError::Malformed("zero duration"));
        }
        let module = cursor.name()?;
        let node = cursor.name()?;
        cursor.end()?;
        let request = LeaseRequest {
            cluster,
            nonce,
            epoch,
            seq,
            module,
            node,
            duration: Duration::from_millis(millis.into()),
            generation,
            forced,
        };
        Ok((request, used))
    }
}

impl LeaseAnswer {
    /// The signed wire form.
    pub fn encode(&self, key: &MacKey) -> Result<Vec<u8>, WireError> {
        let (verdict, first, second, generation, holder) = match &self.verdict {
            Verdict::Granted {
                duration,
                grace,
                generation,
            } => (
                VERDICT_GRANTED,
                millis_down(*duration),
                millis_down(*grace),
                *generation,
                "",
            ),
            Verdict::Held { holder, remaining } => {
                if holder.is_empty() {
                    return Err(WireError::Encode("a held lease needs its holder's name"));
                }
                (VERDICT_HELD, millis_up(*remaining), 0, 0, holder.as_str())
            }
            Verdict::Starting { remaining } => (VERDICT_STARTING, millis_up(*remaining), 0, 0, ""),
            Verdict::Stale { generation } => (VERDICT_STALE, 0, 0, *generation, ""),
        };
        let mut out = Vec::with_capacity(MAX_DATAGRAM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, KIND_REPLY, verdict, 0]);
        out.extend_from_slice(&self.cluster.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&second.to_be_bytes());
        out.extend_from_slice(&generation.to_be_bytes());
        put_name(&mut out, &self.module)?;
        if holder.is_empty() {
            out.push(0);
        } else {
            put_name(&mut out, holder)?;
        }
        Ok(sign(out, key))
    }

    /// Checks and parses a received datagram.
    pub fn decode(bytes: &[u8], key: &MacKey) -> Result<Self, WireError> {
        let (body, _) = authenticate(bytes, key, KIND_REPLY, REPLY_HEADER_LEN + 3)?;
        if body[7] != 0 {
            return Err(WireError::Malformed("reserved byte set"));
        }
        let mut cursor = Cursor::new(body, 8);
        let cluster = cursor.u64()?;
        let nonce = cursor.array::<NONCE_LEN>()?;
        let first = Duration::from_millis(cursor.u32()?.into());
        let second = Duration::from_millis(cursor.u32()?.into());
        let generation = cursor.u64()?;
        let module = cursor.name()?;
        let holder = cursor.optional_name()?;
        let verdict = match (body[6], holder) {
            (VERDICT_GRANTED | VERDICT_STARTING | VERDICT_STALE, Some(_)) => {
                return Err(WireError::Malformed("holder named without a held lease"));
            }
            (VERDICT_HELD, None) => return Err(WireError::Malformed("held lease without holder")),
            (VERDICT_HELD | VERDICT_STARTING | VERDICT_STALE, _) if !second.is_zero() => {
                return Err(WireError::Malformed("grace in a refusal"));
            }
            (VERDICT_HELD | VERDICT_STARTING, _) if generation != 0 => {
                return Err(WireError::Malformed(
                    "generation in a refusal that is not stale",
                ));
            }
            (VERDICT_STALE, _) if !first.is_zero() => {
                return Err(WireError::Malformed("waiting time in a stale refusal"));
            }
            (VERDICT_GRANTED, None) => Verdict::Granted {
                duration: first,
                grace: second,
                generation,
            },
            (VERDICT_STALE, None) => Verdict::Stale { generation },
            (VERDICT_HELD, Some(holder)) => Verdict::Held {
                holder,
                remaining: first,
            },
            (VERDICT_STARTING, None) => Verdict::Starting { remaining: first },
            _ => return Err(WireError::Malformed("unknown verdict")),
        };
        cursor.end()?;
        Ok(LeaseAnswer {
            cluster,
            nonce,
            module,
            verdict,
        })
    }
}

/// Checks everything that comes before the body's parsing; returns the
/// authenticated bytes without the tag, and the key that verified them.
fn authenticate<'a>(
    bytes: &'a [u8],
    key: &MacKey,
    kind: u8,
    min_body: usize,
) -> Result<(&'a [u8], KeyUsed), WireError> {
    if bytes.len() > MAX_DATAGRAM_LEN {
        return Err(WireError::TooLong(bytes.len()));
    }
    if bytes.len() < 6 {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(WireError::UnsupportedVersion(bytes[4]));
    }
    if bytes[5] != kind {
        return Err(WireError::WrongKind(bytes[5]));
    }
    if bytes.len() < min_body + TAG_LEN {
        return Err(WireError::TooShort(bytes.len()));
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    match key.check(body, tag.try_into().expect("32 bytes")) {
        Some(used) => Ok((body, used)),
        None => Err(WireError::Forged),
    }
}

fn sign(mut out: Vec<u8>, key: &MacKey) -> Vec<u8> {
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

fn millis_down(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn millis_up(d: Duration) -> u32 {
    u32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

impl From<Malformed> for WireError {
    fn from(Malformed(what): Malformed) -> Self {
        WireError::Malformed(what)
    }
}

impl From<BadName> for WireError {
    fn from(_: BadName) -> Self {
        WireError::Encode("name must be 1 to 63 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{frame::cluster_id, keys::ClusterSecret};

    fn key() -> MacKey {
        ClusterSecret::from_bytes(&[7; 32]).witness_key()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn request() -> LeaseRequest {
        LeaseRequest {
            cluster: cluster_id("prod"),
            nonce: [0x5a; NONCE_LEN],
            epoch: 1_790_000_000,
            seq: 12,
            module: "db".into(),
            node: "node-a".into(),
            duration: ms(1_000),
            generation: 41,
            forced: false,
        }
    }

    fn answers() -> Vec<LeaseAnswer> {
        let answer = |verdict| LeaseAnswer {
            cluster: cluster_id("prod"),
            nonce: [0xa5; NONCE_LEN],
            module: "db".into(),
            verdict,
        };
        vec![
            answer(Verdict::Granted {
                duration: ms(1_000),
                grace: ms(500),
                generation: 40,
            }),
            answer(Verdict::Held {
                holder: "node-b".into(),
                remaining: ms(1_234),
            }),
            answer(Verdict::Starting {
                remaining: ms(45_000),
            }),
            answer(Verdict::Stale { generation: 42 }),
        ]
    }

    fn forced_request() -> LeaseRequest {
        LeaseRequest {
            forced: true,
            generation: 3,
            ..request()
        }
    }

    /// Every encoded message of the tests: the requests and each kind of reply.
    fn all_encoded() -> Vec<Vec<u8>> {
        let mut all = vec![
            request().encode(&key()).unwrap(),
            forced_request().encode(&key()).unwrap(),
        ];
        all.extend(answers().iter().map(|a| a.encode(&key()).unwrap()));
        all
    }

    fn decode_any(bytes: &[u8]) -> Result<(), WireError> {
        match (
            LeaseRequest::decode(bytes, &key()),
            LeaseAnswer::decode(bytes, &key()),
        ) {
            (Err(a), Err(_)) => Err(a),
            _ => Ok(()),
        }
    }

    #[test]
    fn a_request_round_trips_with_its_generation_and_forced_flag() {
        for r in [request(), forced_request()] {
            let bytes = r.encode(&key()).unwrap();
            assert_eq!(LeaseRequest::decode(&bytes, &key()), Ok(r));
        }
        let bytes = forced_request().encode(&key()).unwrap();
        assert_eq!(bytes[6], FLAG_FORCED);
        assert_eq!(bytes[48..56], 3u64.to_be_bytes());
    }

    #[test]
    fn a_version_1_request_is_refused_as_such() {
        let mut bytes = request().encode(&key()).unwrap();
        bytes[4] = 1;
        assert_eq!(
            LeaseRequest::decode(&bytes, &key()),
            Err(WireError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn every_verdict_round_trips() {
        for answer in answers() {
            let bytes = answer.encode(&key()).unwrap();
            assert_eq!(LeaseAnswer::decode(&bytes, &key()), Ok(answer));
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        for bytes in all_encoded() {
            for i in 0..bytes.len() * 8 {
                let mut altered = bytes.clone();
                altered[i / 8] ^= 1 << (i % 8);
                let result = decode_any(&altered);
                assert!(
                    result.is_err(),
                    "bit {i} of a {}-byte message flipped was accepted",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected_without_panicking() {
        for bytes in all_encoded() {
            for len in 0..bytes.len() {
                assert!(decode_any(&bytes[..len]).is_err(), "{len} bytes accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_any(&longer).is_err(), "a trailing byte was accepted");
        }
    }

    #[test]
    fn a_message_signed_with_another_secret_is_forged() {
        let other = ClusterSecret::from_bytes(&[8; 32]).witness_key();
        let bytes = request().encode(&other).unwrap();
        let err = LeaseRequest::decode(&bytes, &key()).unwrap_err();
        assert_eq!(err, WireError::Forged);
        assert_eq!(err.reason(), "forged");
    }

    #[test]
    fn during_a_rotation_requests_of_either_secret_are_accepted_and_told_apart() {
        let old = ClusterSecret::from_bytes(&[7; 32]);
        let new = ClusterSecret::from_bytes(&[9; 32]);
        let rotating = new.clone().accepting(&old).witness_key();
        let from_old = request().encode(&old.witness_key()).unwrap();
        let from_new = request().encode(&new.witness_key()).unwrap();
        assert_eq!(
            LeaseRequest::decode_keyed(&from_old, &rotating),
            Ok((request(), KeyUsed::Accepted))
        );
        assert_eq!(
            LeaseRequest::decode_keyed(&from_new, &rotating),
            Ok((request(), KeyUsed::Signing))
        );
        let stranger = ClusterSecret::from_bytes(&[1; 32]).witness_key();
        let from_stranger = request().encode(&stranger).unwrap();
        assert_eq!(
            LeaseRequest::decode(&from_stranger, &rotating),
            Err(WireError::Forged)
        );
        assert_eq!(request().encode(&rotating).unwrap(), from_new);
    }

    #[test]
    fn a_heartbeat_key_does_not_sign_witness_messages() {
        let heartbeat = ClusterSecret::from_bytes(&[7; 32]).heartbeat_key();
        let bytes = request().encode(&heartbeat).unwrap();
        assert_eq!(LeaseRequest::decode(&bytes, &key()), Err(WireError::Forged));
    }

    #[test]
    fn a_reply_is_not_a_request_nor_the_reverse() {
        let request = request().encode(&key()).unwrap();
        let err = LeaseAnswer::decode(&request, &key()).unwrap_err();
        assert_eq!(err, WireError::WrongKind(KIND_REQUEST));
        assert_eq!(err.reason(), "not_witness");
        let reply = answers()[0].encode(&key()).unwrap();
        assert_eq!(
            LeaseRequest::decode(&reply, &key()),
            Err(WireError::WrongKind(KIND_REPLY))
        );
    }

    #[test]
    fn garbage_gets_a_reason_label() {
        assert_eq!(
            LeaseRequest::decode(&[], &key()).unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            LeaseRequest::decode(&[0; 300], &key())
                .unwrap_err()
                .reason(),
            "malformed"
        );
        assert_eq!(
            LeaseRequest::decode(&[0; 120], &key())
                .unwrap_err()
                .reason(),
            "not_witness"
        );
        let mut bytes = request().encode(&key()).unwrap();
        bytes[4] = 3;
        assert_eq!(
            LeaseRequest::decode(&bytes, &key()).unwrap_err().reason(),
            "version"
        );
    }

    #[test]
    fn correctly_signed_but_malformed_bodies_are_malformed_not_forged() {
        // A peer with the right key but a bug: re-sign the altered body so
        // only the parser can object.
        let resign = |mut bytes: Vec<u8>, at: usize, value: u8| {
            bytes.truncate(bytes.len() - TAG_LEN);
            bytes[at] = value;
            sign(bytes, &key())
        };
        let request = request().encode(&key()).unwrap();
        let zero_duration = resign(resign(request.clone(), 58, 0), 59, 0);
        let cases = [
            (resign(request.clone(), 6, 2), "reserved bytes set"),
            (resign(request.clone(), 7, 1), "reserved bytes set"),
            (zero_duration, "zero duration"),
            (
                resign(request.clone(), REQUEST_HEADER_LEN, 0),
                "name length out of range",
            ),
            (resign(request.clone(), REQUEST_HEADER_LEN, 9), "truncated"),
            (
                resign(request, REQUEST_HEADER_LEN + 1, 0xff),
                "name is not UTF-8",
            ),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                LeaseRequest::decode(&bytes, &key()),
                Err(WireError::Malformed(why))
            );
        }
        let granted = answers()[0].encode(&key()).unwrap();
        let held = answers()[1].encode(&key()).unwrap();
        let starting = answers()[2].encode(&key()).unwrap();
        let stale = answers()[3].encode(&key()).unwrap();
        let cases = [
            (
                resign(stale.clone(), 35, 1),
                "waiting time in a stale refusal",
            ),
            (resign(stale.clone(), 39, 1), "grace in a refusal"),
            (resign(stale, 6, VERDICT_HELD), "held lease without holder"),
            (
                resign(starting.clone(), 47, 1),
                "generation in a refusal that is not stale",
            ),
            (resign(granted.clone(), 6, 9), "unknown verdict"),
            (
                resign(granted, 6, VERDICT_HELD),
                "held lease without holder",
            ),
            (resign(starting, 39, 1), "grace in a refusal"),
            (
                resign(held.clone(), 6, VERDICT_GRANTED),
                "holder named without a held lease",
            ),
            (resign(held.clone(), 7, 1), "reserved byte set"),
            (
                resign(held, 6, VERDICT_STARTING),
                "holder named without a held lease",
            ),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                LeaseAnswer::decode(&bytes, &key()),
                Err(WireError::Malformed(why))
            );
        }
    }

    #[test]
    fn granted_durations_round_down_and_waiting_times_round_up() {
        let answer = LeaseAnswer {
            verdict: Verdict::Granted {
                duration: Duration::from_micros(1_999_999),
                grace: Duration::from_micros(500_999),
                generation: 7,
            },
            ..answers()[0].clone()
        };
        let decoded = LeaseAnswer::decode(&answer.encode(&key()).unwrap(), &key()).unwrap();
        assert_eq!(
            decoded.verdict,
            Verdict::Granted {
                duration: ms(1_999),
                grace: ms(500),
                generation: 7
            }
        );
        let answer = LeaseAnswer {
            verdict: Verdict::Starting {
                remaining: Duration::from_micros(1_001),
            },
            ..answers()[0].clone()
        };
        let decoded = LeaseAnswer::decode(&answer.encode(&key()).unwrap(), &key()).unwrap();
        assert_eq!(decoded.verdict, Verdict::Starting { remaining: ms(2) });
    }

    #[test]
    fn what_cannot_be_sent_is_refused_at_encoding() {
        let mut r = request();
        r.module = "m".repeat(64);
        assert_eq!(r.encode(&key()).unwrap_err().reason(), "encode");
        let mut r = request();
        r.node = String::new();
        assert!(r.encode(&key()).is_err());
        let mut r = request();
        r.duration = Duration::from_micros(999);
        assert!(r.encode(&key()).is_err(), "rounds to 0 ms");
        let mut held = answers()[1].clone();
        held.verdict = Verdict::Held {
            holder: String::new(),
            remaining: ms(1),
        };
        assert!(held.encode(&key()).is_err());
    }

    #[test]
    fn the_longest_messages_fit_the_datagram_limit() {
        let mut r = request();
        r.module = "m".repeat(MAX_NAME_LEN);
        r.node = "n".repeat(MAX_NAME_LEN);
        let bytes = r.encode(&key()).unwrap();
        assert_eq!(bytes.len(), 220);
        assert_eq!(LeaseRequest::decode(&bytes, &key()), Ok(r));
    }
}
