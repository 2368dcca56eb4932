//! The replication messages between a primary and its secondary, and their
//! binary encoding (big-endian integers, length-prefixed byte strings).
//!
//! Each message is one sealed frame of [`super::channel`]: this layer sees
//! only authenticated bytes, and still checks every length and every path
//! (a peer holding the secret may be buggy, or hostile).
//!
//! ```text
//! message  = tag (1) body
//! path     = dir index (1) length (2) bytes          (checked by RelPath)
//! meta     = mode (4) uid (4) gid (4) mtime ns (8, signed)
//! ```

use crate::cluster::wire::{Cursor, Malformed};

use super::path::{BadPath, RelPath};

/// Size of the blocks whose checksums a resynchronisation compares.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Bytes of one block checksum (BLAKE3, truncated).
pub const SUM_LEN: usize = 16;
/// The most checksums one `Sums` message carries (16 MiB of file, 1 MiB of message).
pub const MAX_SUMS: usize = 65_536;
/// The most bytes one `Write` carries.
pub const MAX_WRITE: usize = 1024 * 1024;
/// The most names one `Listing` carries.
pub const MAX_NAMES: usize = 100_000;
/// Most paths a `Diverged` message lists.
pub const MAX_DIVERGED: usize = 10_000;

/// A file's metadata as the secondary must reproduce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits and file type bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// One block range `[first, first + count)` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub first: u64,
    pub count: u32,
}

/// A replication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // Primary to secondary.
    /// Ensure a directory exists with this metadata.
    Mkdir { path: RelPath, meta: Meta },
    /// Ensure a regular file exists (created empty if missing).
    File { path: RelPath, meta: Meta },
    /// Bytes at `offset` of a regular file (created if missing).
    Write {
        path: RelPath,
        offset: u64,
        data: Vec<u8>,
    },
    /// Truncate or extend a regular file to `size`.
    SetSize { path: RelPath, size: u64 },
    /// Apply metadata (mode, owner, mtime) to whatever is at `path`.
    SetMeta { path: RelPath, meta: Meta },
    /// Ensure a symlink with this target.
    Symlink { path: RelPath, target: Vec<u8> },
    /// Make `path` a hard link of `existing`.
    Link { path: RelPath, existing: RelPath },
    /// Remove whatever is at `path` (a directory with its content).
    Remove { path: RelPath },
    /// Rename `from` to `to` (replacing `to`).
    Rename { from: RelPath, to: RelPath },
    /// The complete list of names in directory `dir`: the secondary removes the others.
    Listing { dir: RelPath, names: Vec<Vec<u8>> },
    /// A regular file of `size` bytes and `meta`, with the checksums of blocks
    /// `first..first + sums.len()`: the secondary answers every one with a
    /// `Need` of the blocks that differ from its copy (maybe none), and
    /// fixes size and metadata.
    Sums {
        path: RelPath,
        meta: Meta,
        size: u64,
        first: u64,
        sums: Vec<[u8; SUM_LEN]>,
    },
    /// Answer `Ack { seq }` once every message before this one is applied.
    Barrier { seq: u64 },
    /// A resynchronisation starts.
    ResyncBegin { full: bool },
    /// The resynchronisation is complete once everything before is applied;
    /// answer `ResyncDone { generation }`.
    ResyncEnd { generation: u64 },
    /// The primary hands its role over: the session ends on purpose.
    Bye,

    // Secondary to primary.
    /// The secondary's first message: the data it holds, so that the primary
    /// chooses between an incremental and a full resynchronisation.
    Join { generation: u64, state: u8 },
    /// Send these blocks of `path`.
    Need { path: RelPath, blocks: Vec<Blocks> },
    /// Everything up to `Barrier { seq }` is applied.
    Ack { seq: u64 },
    /// Everything of the resynchronisation is applied.
    ResyncDone { generation: u64 },
    /// The secondary lacks `path` (a rename's source it never received):
    /// send it whole.
    Missing { path: RelPath },
    /// The secondary's second message: the paths it may have changed since
    /// the generation it holds was shared (an old primary's journal), or
    /// `None` if it cannot tell.
    Diverged { paths: Option<Vec<RelPath>> },
    /// The secondary refused a message (logged on both sides).
    Refused { reason: String },
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed message: {}", .0 .0)]
    Malformed(Malformed),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("refused path: {0}")]
    Path(#[from] BadPath),
    #[error("{0} bytes follow the message")]
    Trailing(usize),
    #[error("{what} of {len} exceeds {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl From<Malformed> for WireError {
    fn from(m: Malformed) -> Self {
        WireError::Malformed(m)
    }
}

mod tag {
    pub const MKDIR: u8 = 1;
    pub const FILE: u8 = 2;
    pub const WRITE: u8 = 3;
    pub const SET_SIZE: u8 = 4;
    pub const SET_META: u8 = 5;
    pub const SYMLINK: u8 = 6;
    pub const LINK: u8 = 7;
    pub const REMOVE: u8 = 8;
    pub const RENAME: u8 = 9;
    pub const LISTING: u8 = 10;
    pub const SUMS: u8 = 11;
    pub const BARRIER: u8 = 12;
    pub const RESYNC_BEGIN: u8 = 13;
    pub const RESYNC_END: u8 = 14;
    pub const BYE: u8 = 15;
    pub const NEED: u8 = 64;
    pub const ACK: u8 = 65;
    pub const RESYNC_DONE: u8 = 66;
    pub const REFUSED: u8 = 67;
    pub const JOIN: u8 = 68;
    pub const MISSING: u8 = 69;
    pub const DIVERGED: u8 = 70;
}

/// Encodes a [`Message::Write`] from borrowed bytes (the sender's read
/// buffer): the same bytes as `Message::Write { .. }.encode(out)`.
pub fn encode_write(out: &mut Vec<u8>, path: &RelPath, offset: u64, data: &[u8]) {
    out.push(tag::WRITE);
    put_path(out, path);
    out.extend_from_slice(&offset.to_be_bytes());
    put_bytes32(out, data);
}

impl Message {
    /// The message's bytes, appended to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Mkdir { path, meta } => {
                out.push(tag::MKDIR);
                put_path(out, path);
                put_meta(out, meta);
            }
            Message::File { path, meta } => {
                out.push(tag::FILE);
                put_path(out, path);
                put_meta(out, meta);
            }
            Message::Write { path, offset, data } => encode_write(out, path, *offset, data),
            Message::SetSize { path, size } => {
                out.push(tag::SET_SIZE);
                put_path(out, path);
                out.extend_from_slice(&size.to_be_bytes());
            }
            Message::SetMeta { path, meta } => {
                out.push(tag::SET_META);
                put_path(out, path);
                put_meta(out, meta);
            }
            Message::Symlink { path, target } => {
                out.push(tag::SYMLINK);
                put_path(out, path);
                put_bytes16(out, target);
            }
            Message::Link { path, existing } => {
                out.push(tag::LINK);
                put_path(out, path);
                put_path(out, existing);
            }
            Message::Remove { path } => {
                out.push(tag::REMOVE);
                put_path(out, path);
            }
            Message::Rename { from, to } => {
                out.push(tag::RENAME);
                put_path(out, from);
                put_path(out, to);
            }
            Message::Listing { dir, names } => {
                out.push(tag::LISTING);
                put_path(out, dir);
                out.extend_from_slice(&(names.len() as u32).to_be_bytes());
                for name in names {
                    put_bytes16(out, name);
                }
            }
            Message::Sums {
                path,
                meta,
                size,
                first,
                sums,
            } => {
                out.push(tag::SUMS);
                put_path(out, path);
                put_meta(out, meta);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&(sums.len() as u32).to_be_bytes());
                for sum in sums {
                    out.extend_from_slice(sum);
                }
            }
            Message::Barrier { seq } => {
                out.push(tag::BARRIER);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Message::ResyncBegin { full } => {
                out.push(tag::RESYNC_BEGIN);
                out.push(u8::from(*full));
            }
            Message::ResyncEnd { generation } => {
                out.push(tag::RESYNC_END);
                out.extend_from_slice(&generation.to_be_bytes());
            }
            Message::Bye => out.push(tag::BYE),
            Message::Need { path, blocks } => {
                out.push(tag::NEED);
                put_path(out, path);
                out.extend_from_slice(&(blocks.len() as u32).to_be_bytes());
                for b in blocks {
                    out.extend_from_slice(&b.first.to_be_bytes());
                    out.extend_from_slice(&b.count.to_be_bytes());
                }
            }
            Message::Missing { path } => {
                out.push(tag::MISSING);
                put_path(out, path);
            }
            Message::Diverged { paths } => {
                out.push(tag::DIVERGED);
                match paths {
                    None => out.push(0),
                    Some(paths) => {
                        out.push(1);
                        out.extend_from_slice(&(paths.len() as u32).to_be_bytes());
                        for path in paths {
                            put_path(out, path);
                        }
                    }
                }
            }
            Message::Join { generation, state } => {
                out.push(tag::JOIN);
                out.extend_from_slice(&generation.to_be_bytes());
                out.push(*state);
            }
            Message::Ack { seq } => {
                out.push(tag::ACK);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Message::ResyncDone { generation } => {
                out.push(tag::RESYNC_DONE);
                out.extend_from_slice(&generation.to_be_bytes());
            }
            Message::Refused { reason } => {
                out.push(tag::REFUSED);
                let bytes = reason.as_bytes();
                put_bytes16(out, &bytes[..bytes.len().min(u16::MAX as usize)]);
            }
        }
    }

    /// Decodes one whole message; bytes left over are an error.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut c = Cursor::new(bytes, 0);
        let message = match c.u8()? {
            tag::MKDIR => Message::Mkdir {
                path: path(&mut c)?,
                meta: meta(&mut c)?,
            },
            tag::FILE => Message::File {
                path: path(&mut c)?,
                meta: meta(&mut c)?,
            },
            tag::WRITE => {
                let path = path(&mut c)?;
                let offset = c.u64()?;
                let len = c.u32()? as usize;
                limit("write", len, MAX_WRITE)?;
                Message::Write {
                    path,
                    offset,
                    data: c.take(len)?.to_vec(),
                }
            }
            tag::SET_SIZE => Message::SetSize {
                path: path(&mut c)?,
                size: c.u64()?,
            },
            tag::SET_META => Message::SetMeta {
                path: path(&mut c)?,
                meta: meta(&mut c)?,
            },
            tag::SYMLINK => Message::Symlink {
                path: path(&mut c)?,
                target: bytes16(&mut c)?,
            },
            tag::LINK => Message::Link {
                path: path(&mut c)?,
                existing: path(&mut c)?,
            },
            tag::REMOVE => Message::Remove {
                path: path(&mut c)?,
            },
            tag::RENAME => Message::Rename {
                from: path(&mut c)?,
                to: path(&mut c)?,
            },
            tag::LISTING => {
                let dir = path(&mut c)?;
                let count = c.u32()? as usize;
                limit("listing", count, MAX_NAMES)?;
                let mut names = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let name = bytes16(&mut c)?;
                    // A name is one component: the receiver compares it
                    // with directory entries, never resolves it. `join`
                    // takes an empty name to the root itself (inotify names
                    // a watched directory's own events so): not a name here.
                    if name.is_empty() {
                        return Err(BadPath::Empty.into());
                    }
                    dir.join(&name)?;
                    names.push(name);
                }
                Message::Listing { dir, names }
            }
            tag::SUMS => {
                let path = path(&mut c)?;
                let meta = meta(&mut c)?;
                let size = c.u64()?;
                let first = c.u64()?;
                let count = c.u32()? as usize;
                limit("sums", count, MAX_SUMS)?;
                let mut sums = Vec::with_capacity(count);
                for _ in 0..count {
                    sums.push(c.array()?);
                }
                Message::Sums {
                    path,
                    meta,
                    size,
                    first,
                    sums,
                }
            }
            tag::BARRIER => Message::Barrier { seq: c.u64()? },
            tag::RESYNC_BEGIN => Message::ResyncBegin {
                full: match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(Malformed("resync mode is not 0 or 1").into()),
                },
            },
            tag::RESYNC_END => Message::ResyncEnd {
                generation: c.u64()?,
            },
            tag::BYE => Message::Bye,
            tag::NEED => {
                let path = path(&mut c)?;
                let count = c.u32()? as usize;
                limit("need", count, MAX_SUMS)?;
                let mut blocks = Vec::with_capacity(count);
                for _ in 0..count {
                    blocks.push(Blocks {
                        first: c.u64()?,
                        count: c.u32()?,
                    });
                }
                Message::Need { path, blocks }
            }
            tag::MISSING => Message::Missing {
                path: path(&mut c)?,
            },
            tag::DIVERGED => Message::Diverged {
                paths: match c.u8()? {
                    0 => None,
                    _ => {
                        let count = c.u32()? as usize;
                        limit("diverged", count, MAX_DIVERGED)?;
                        let mut paths = Vec::with_capacity(count);
                        for _ in 0..count {
                            paths.push(path(&mut c)?);
                        }
                        Some(paths)
                    }
                },
            },
            tag::JOIN => Message::Join {
                generation: c.u64()?,
                state: c.u8()?,
            },
            tag::ACK => Message::Ack { seq: c.u64()? },
            tag::RESYNC_DONE => Message::ResyncDone {
                generation: c.u64()?,
            },
            tag::REFUSED => Message::Refused {
                reason: String::from_utf8_lossy(&bytes16(&mut c)?).into_owned(),
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        let rest = bytes.len() - c.position();
        if rest != 0 {
            return Err(WireError::Trailing(rest));
        }
        Ok(message)
    }
}

fn limit(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLarge { what, len, max });
    }
    Ok(())
}

fn put_path(out: &mut Vec<u8>, path: &RelPath) {
    out.push(path.dir);
    put_bytes16(out, path.as_bytes());
}

fn put_meta(out: &mut Vec<u8>, meta: &Meta) {
    out.extend_from_slice(&meta.mode.to_be_bytes());
    out.extend_from_slice(&meta.uid.to_be_bytes());
    out.extend_from_slice(&meta.gid.to_be_bytes());
    out.extend_from_slice(&meta.mtime_ns.to_be_bytes());
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn bytes16(c: &mut Cursor<'_>) -> Result<Vec<u8>, WireError> {
    let len = u16::from_be_bytes(c.array()?) as usize;
    Ok(c.take(len)?.to_vec())
}

fn path(c: &mut Cursor<'_>) -> Result<RelPath, WireError> {
    let dir = c.u8()?;
    Ok(RelPath::new(dir, bytes16(c)?)?)
}

fn meta(c: &mut Cursor<'_>) -> Result<Meta, WireError> {
    Ok(Meta {
        mode: c.u32()?,
        uid: c.u32()?,
        gid: c.u32()?,
        mtime_ns: i64::from_be_bytes(c.array()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> RelPath {
        RelPath::new(0, text.as_bytes().to_vec()).unwrap()
    }

    fn every_message() -> Vec<Message> {
        let meta = Meta {
            mode: 0o100644,
            uid: 1000,
            gid: 100,
            mtime_ns: -5,
        };
        vec![
            Message::Mkdir { path: p("d"), meta },
            Message::File {
                path: p("d/f"),
                meta,
            },
            Message::Write {
                path: p("d/f"),
                offset: 1 << 40,
                data: b"hello".to_vec(),
            },
            Message::SetSize {
                path: p("f"),
                size: 7,
            },
            Message::SetMeta {
                path: RelPath::root(3),
                meta,
            },
            Message::Symlink {
                path: p("l"),
                target: b"../../anywhere".to_vec(),
            },
            Message::Link {
                path: p("h"),
                existing: p("f"),
            },
            Message::Remove { path: p("x/y") },
            Message::Rename {
                from: p("a"),
                to: p("b/c"),
            },
            Message::Listing {
                dir: p("d"),
                names: vec![b"f".to_vec(), b"g h".to_vec()],
            },
            Message::Sums {
                path: p("big"),
                meta,
                size: 3 * BLOCK_SIZE,
                first: 2,
                sums: vec![[1; SUM_LEN], [2; SUM_LEN]],
            },
            Message::Barrier { seq: 9 },
            Message::ResyncBegin { full: true },
            Message::ResyncEnd { generation: 4 },
            Message::Bye,
            Message::Need {
                path: p("big"),
                blocks: vec![Blocks { first: 2, count: 1 }],
            },
            Message::Ack { seq: 9 },
            Message::Missing { path: p("a/b") },
            Message::Diverged { paths: None },
            Message::Diverged {
                paths: Some(vec![p("a/b"), p("c")]),
            },
            Message::Join {
                generation: 3,
                state: 1,
            },
            Message::ResyncDone { generation: 4 },
            Message::Refused {
                reason: "no".into(),
            },
        ]
    }

    #[test]
    fn an_empty_listing_name_in_a_root_is_refused() {
        // Found by the fuzz target `replication_message`: below a
        // subdirectory an empty name was refused, in a root it was kept.
        for dir in [RelPath::root(0), p("d")] {
            let mut bytes = Vec::new();
            Message::Listing {
                dir,
                names: vec![Vec::new()],
            }
            .encode(&mut bytes);
            assert_eq!(
                Message::decode(&bytes),
                Err(WireError::Path(BadPath::Empty))
            );
        }
    }

    #[test]
    fn every_message_round_trips() {
        for message in every_message() {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            assert_eq!(Message::decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for message in every_message() {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            for len in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..len]).is_err(),
                    "{message:?} cut at {len}"
                );
            }
            bytes.push(0);
            assert_eq!(Message::decode(&bytes), Err(WireError::Trailing(1)));
        }
    }

    #[test]
    fn escaping_paths_and_names_are_refused() {
        let mut bytes = vec![tag::REMOVE, 0];
        put_bytes16(&mut bytes, b"../../etc/shadow");
        assert_eq!(Message::decode(&bytes), Err(WireError::Path(BadPath::Dots)));
        let mut bytes = vec![tag::LISTING];
        put_path(&mut bytes, &p("d"));
        bytes.extend_from_slice(&1u32.to_be_bytes());
        put_bytes16(&mut bytes, b"a/b");
        assert!(matches!(Message::decode(&bytes), Err(WireError::Path(_))));
    }

    #[test]
    fn oversized_counts_are_refused_before_allocating() {
        let mut bytes = vec![tag::SUMS];
        put_path(&mut bytes, &p("f"));
        put_meta(&mut bytes, &Meta::default());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(WireError::TooLarge { what: "sums", .. })
        ));
        assert_eq!(Message::decode(&[200]), Err(WireError::UnknownTag(200)));
    }
}
