//! The dirty-range journal: what a serving node changed since the last
//! moment its peer was known to hold everything (the sync point), kept on
//! disk so that a resynchronisation after the peer's absence, a clean stop
//! or a crash sends only the journaled ranges.
//!
//! # What it holds
//! Per file (path relative to its replicated directory), the coalesced byte
//! ranges written, or *compare*: the file must be compared by block
//! checksums (created, resized, changed by a path the capture cannot see,
//! or more than [`MAX_RANGES`] ranges). Namespace changes mark the paths
//! they touch as compare (a rename both its source and its destination,
//! with everything below them: the ranges of a renamed file describe a
//! file the peer holds under the old name, so they do not travel with it).
//! The directories' listings are not journaled: the resynchronisation
//! still lists every directory whose ctime is after the sync point.
//! Ranges are journaled under the name the write came through; a file
//! with several names may lose that one and live on under another, so the
//! inode of a file written while it had several names (or whose name was
//! gone by the time its ranges were journaled) is journaled too
//! (`Linked`), and every name it has at the resynchronisation is compared
//! by checksums.
//!
//! # On disk
//! `journal.log` in the module's state directory: an append-only log of
//! records `[len: u32][body][first 8 bytes of BLAKE3(body)]`, the first a
//! `Base { generation, at }` naming the sync point it starts at. Records
//! are appended in batches (every [`FLUSH_EVERY`] or [`FLUSH_RECORDS`]
//! records), each batch closed by a `Flush { at }` record and `fdatasync`.
//! Loading stops at the first record that does not verify; the log is
//! rewritten compacted at load, at every new base and when it grew large.
//!
//! # When it is trusted
//! A resynchronisation uses the journal's ranges only if all hold:
//! - its base is exactly the sync point the primary recorded for the
//!   generation the peer holds (same generation, same instant);
//! - no capture or inotify loss happened since the base (`Untrusted`);
//! - and, for the writes it could not see, **the last-flush rule**: when a
//!   journal is opened (daemon start, a crash's restart, serving again
//!   after a stop), every entry of the replicated directories whose ctime
//!   is at or after `last Flush − MARGIN` is marked compare. Writes that
//!   reached the kernel after the last batch made durable (a crash), or
//!   while no daemon journaled (a stop), or after a record that does not
//!   verify (a torn tail), all left a ctime after that instant; `MARGIN`
//!   covers the capture's delivery delay between a write and its record.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::path::RelPath;

/// More ranges than this in one file: compare it by checksums instead.
pub const MAX_RANGES: usize = 256;
/// More files than this: the journal gives up (untrusted) to bound memory.
pub const MAX_FILES: usize = 100_000;
/// The most files [`DirtySet::linked`] holds before the set gives up. A
/// file written and removed within one tracker batch counts too (its name
/// is gone when the batch is journaled), so it is larger than
/// [`MAX_FILES`]: 16 bytes each in memory, 29 in the log.
pub const MAX_LINKED: usize = 1_000_000;
/// How long appended records may wait before they are made durable.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How many records may wait before they are made durable.
pub const FLUSH_RECORDS: usize = 4096;
/// How far before the last flush the last-flush rule looks.
pub const MARGIN: Duration = Duration::from_secs(2);
/// The file name in the module's state directory.
const FILE_NAME: &str = "journal.log";
/// Longest record body accepted when loading.
const MAX_RECORD: usize = 8192;

/// What a journal knows about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dirt {
    /// Byte ranges `[start, end)`, sorted, disjoint, not touching.
    Ranges(Vec<(u64, u64)>),
    /// Compare by block checksums.
    Compare,
}

/// The changed files since some instant, coalesced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtySet {
    pub files: BTreeMap<RelPath, Dirt>,
    /// Paths whose whole subtree compares by checksums.
    pub trees: BTreeSet<RelPath>,
    /// Inode numbers of files written while they had several names (or
    /// whose name was gone by the time the write was journaled): a write
    /// is journaled under the name it came through, and that name may go
    /// while another keeps the file, so every name such an inode has at
    /// the resynchronisation compares by checksums.
    pub linked: BTreeSet<(u64, u64)>,
    /// Something was lost: the set does not describe every change.
    pub untrusted: bool,
}

impl DirtySet {
    /// Adds the written range `[start, end)` of `path`.
    pub fn add_range(&mut self, path: &RelPath, start: u64, end: u64) {
        if end <= start || self.untrusted {
            return;
        }
        if !self.files.contains_key(path) && self.full() {
            return;
        }
        let dirt = self
            .files
            .entry(path.clone())
            .or_insert_with(|| Dirt::Ranges(Vec::new()));
        let Dirt::Ranges(ranges) = dirt else { return };
        merge(ranges, start, end);
        if ranges.len() > MAX_RANGES {
            *dirt = Dirt::Compare;
        }
    }

    /// Marks `path` to be compared by checksums.
    pub fn compare(&mut self, path: &RelPath) {
        if self.untrusted || (!self.files.contains_key(path) && self.full()) {
            return;
        }
        self.files.insert(path.clone(), Dirt::Compare);
    }

    /// Marks `path` and everything below it to be compared by checksums.
    pub fn compare_tree(&mut self, path: &RelPath) {
        if self.untrusted {
            return;
        }
        self.files.retain(|p, _| !p.starts_with(path));
        self.trees.retain(|p| !p.starts_with(path));
        if self.trees.len() >= MAX_FILES {
            self.untrust();
            return;
        }
        self.trees.insert(path.clone());
    }

    /// Marks file `(dev, ino)`: see [`DirtySet::linked`].
    pub fn linked(&mut self, file: (u64, u64)) {
        if self.untrusted || self.linked.contains(&file) {
            return;
        }
        if self.linked.len() >= MAX_LINKED {
            self.untrust();
            return;
        }
        self.linked.insert(file);
    }

    /// Gives up: the set no longer describes every change (its entries go).
    pub fn untrust(&mut self) {
        self.files.clear();
        self.trees.clear();
        self.linked.clear();
        self.untrusted = true;
    }

    fn full(&mut self) -> bool {
        if self.files.len() >= MAX_FILES {
            self.untrust();
            return true;
        }
        false
    }

    /// Applies `other`'s changes after this set's.
    pub fn absorb(&mut self, other: &DirtySet) {
        if other.untrusted {
            self.untrust();
        }
        for tree in &other.trees {
            self.compare_tree(tree);
        }
        for file in &other.linked {
            self.linked(*file);
        }
        for (path, dirt) in &other.files {
            match dirt {
                Dirt::Compare => self.compare(path),
                Dirt::Ranges(ranges) => {
                    for (start, end) in ranges {
                        self.add_range(path, *start, *end);
                    }
                }
            }
        }
    }

    /// Whether `path` (or a directory above it) is marked compare.
    pub fn must_compare(&self, path: &RelPath) -> bool {
        self.files.get(path) == Some(&Dirt::Compare)
            || self.trees.iter().any(|t| path.starts_with(t))
    }

    /// The records that rebuild this set.
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if self.untrusted {
            out.push(Record::Untrusted);
        }
        out.extend(self.trees.iter().cloned().map(Record::Tree));
        out.extend(
            self.linked
                .iter()
                .map(|&(dev, ino)| Record::Linked { dev, ino }),
        );
        for (path, dirt) in &self.files {
            match dirt {
                Dirt::Compare => out.push(Record::Compare(path.clone())),
                Dirt::Ranges(ranges) => out.extend(
                    ranges
                        .iter()
                        .map(|(s, e)| Record::Range(path.clone(), *s, *e)),
                ),
            }
        }
        out
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::Range(path, start, end) => self.add_range(path, *start, *end),
            Record::Compare(path) => self.compare(path),
            Record::Tree(path) => self.compare_tree(path),
            Record::Untrusted => self.untrust(),
            Record::Linked { dev, ino } => self.linked((*dev, *ino)),
            Record::Base { .. } | Record::Flush { .. } => {}
        }
    }
}

/// Inserts `[start, end)` into sorted disjoint ranges, merging neighbours.
fn merge(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let first = ranges.partition_point(|r| r.1 < start);
    let last = ranges.partition_point(|r| r.0 <= end);
    if first == last {
        ranges.insert(first, (start, end));
        return;
    }
    let merged = (start.min(ranges[first].0), end.max(ranges[last - 1].1));
    ranges.splice(first..last, [merged]);
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The sync point the journal starts at: the peer's generation, and
    /// the instant (ns since the epoch).
    Base {
        generation: u64,
        at_ns: u64,
    },
    Range(RelPath, u64, u64),
    Compare(RelPath),
    Tree(RelPath),
    Untrusted,
    /// A file written while it had several names.
    Linked {
        dev: u64,
        ino: u64,
    },
    /// Every record before is durable; written at `at_ns`.
    Flush {
        at_ns: u64,
    },
}

mod tag {
    pub const BASE: u8 = 1;
    pub const RANGE: u8 = 2;
    pub const COMPARE: u8 = 3;
    pub const TREE: u8 = 4;
    pub const UNTRUSTED: u8 = 5;
    pub const FLUSH: u8 = 6;
    pub const LINKED: u8 = 7;
}

/// Appends `record`, framed and checksummed, to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(32);
    let path = |body: &mut Vec<u8>, p: &RelPath| {
        body.push(p.dir);
        body.extend_from_slice(&(p.as_bytes().len() as u16).to_le_bytes());
        body.extend_from_slice(p.as_bytes());
    };
    match record {
        Record::Base { generation, at_ns } => {
            body.push(tag::BASE);
            body.extend_from_slice(&generation.to_le_bytes());
            body.extend_from_slice(&at_ns.to_le_bytes());
        }
        Record::Range(p, start, end) => {
            body.push(tag::RANGE);
            path(&mut body, p);
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&end.to_le_bytes());
        }
        Record::Compare(p) => {
            body.push(tag::COMPARE);
            path(&mut body, p);
        }
        Record::Tree(p) => {
            body.push(tag::TREE);
            path(&mut body, p);
        }
        Record::Untrusted => body.push(tag::UNTRUSTED),
        Record::Linked { dev, ino } => {
            body.push(tag::LINKED);
            body.extend_from_slice(&dev.to_le_bytes());
            body.extend_from_slice(&ino.to_le_bytes());
        }
        Record::Flush { at_ns } => {
            body.push(tag::FLUSH);
            body.extend_from_slice(&at_ns.to_le_bytes());
        }
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..8]);
}

/// The records of `bytes` up to the first that does not verify, and
/// whether one did not (a torn or damaged tail).
pub fn decode(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode_one(&bytes[at..]) {
            Some((record, used)) => {
                out.push(record);
                at += used;
            }
            None => return (out, true),
        }
    }
    (out, false)
}

fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let body = bytes.get(4..4 + len)?;
    let sum = bytes.get(4 + len..4 + len + 8)?;
    if blake3::hash(body).as_bytes()[..8] != *sum {
        return None;
    }
    let mut c = body[1..].iter().copied();
    let mut u64_ = || -> Option<u64> {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = c.next()?;
        }
        Some(u64::from_le_bytes(b))
    };
    let path = |rest: &[u8]| -> Option<(RelPath, usize)> {
        let dir = *rest.first()?;
        let n = u16::from_le_bytes(rest.get(1..3)?.try_into().ok()?) as usize;
        let p = RelPath::new(dir, rest.get(3..3 + n)?.to_vec()).ok()?;
        Some((p, 3 + n))
    };
    let record = match body[0] {
        tag::BASE => Record::Base {
            generation: u64_()?,
            at_ns: u64_()?,
        },
        tag::FLUSH => Record::Flush { at_ns: u64_()? },
        tag::UNTRUSTED => Record::Untrusted,
        tag::LINKED => Record::Linked {
            dev: u64_()?,
            ino: u64_()?,
        },
        t @ (tag::RANGE | tag::COMPARE | tag::TREE) => {
            let (p, used) = path(&body[1..])?;
            let rest = &body[1 + used..];
            match t {
                tag::RANGE => {
                    let start = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                    let end = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
                    Record::Range(p, start, end)
                }
                tag::COMPARE => Record::Compare(p),
                _ => Record::Tree(p),
            }
        }
        _ => return None,
    };
    Some((record, 4 + len + 8))
}

/// Nanoseconds since the epoch.
pub fn ns_of(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// A module's journal: the in-memory sets and their log on disk.
///
/// The changes live in *segments*: [`Journal::mark`] starts a new one when
/// a sync point's barrier is sent, and [`Journal::rebase`] drops the
/// segments before it once that barrier is acknowledged.
pub struct Journal {
    dir: PathBuf,
    file: Option<File>,
    /// The sync point the journal starts at, if it has one.
    base: Option<(u64, u64)>,
    segments: Vec<(u64, DirtySet)>,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    pending_records: usize,
    pending_since: Option<SystemTime>,
    /// When the last batch was made durable (ns since the epoch).
    last_flush_ns: u64,
    /// Bytes in the log, and after its last compaction.
    written: u64,
    compacted: u64,
}

impl Journal {
    /// Opens (and compacts) the journal in `dir`, or starts an empty one
    /// without a base.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        let mut journal = Journal {
            dir: dir.to_owned(),
            file: None,
            base: None,
            segments: vec![(0, DirtySet::default())],
            pending: Vec::new(),
            pending_records: 0,
            pending_since: None,
            last_flush_ns: 0,
            written: 0,
            compacted: 0,
        };
        let bytes = match fs::read(dir.join(FILE_NAME)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, _damaged) = decode(&bytes);
        let mut records = records.into_iter();
        if let Some(Record::Base { generation, at_ns }) = records.next() {
            journal.base = Some((generation, at_ns));
            journal.last_flush_ns = at_ns;
            let set = &mut journal.segments[0].1;
            for record in records {
                if let Record::Flush { at_ns } = record {
                    journal.last_flush_ns = at_ns;
                }
                set.apply(&record);
            }
        }
        journal.rewrite()?;
        Ok(journal)
    }

    /// The sync point the journal starts at.
    pub fn base(&self) -> Option<(u64, u64)> {
        self.base
    }

    /// The instant before which every captured change is durable in the
    /// log, minus [`MARGIN`]: entries changed since must be compared.
    pub fn cutoff(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.last_flush_ns)
            - MARGIN.min(Duration::from_nanos(self.last_flush_ns))
    }

    fn push(&mut self, record: Record) {
        self.segments
            .last_mut()
            .expect("a segment")
            .1
            .apply(&record);
        if self.base.is_none() {
            return;
        }
        encode(&record, &mut self.pending);
        self.pending_records += 1;
        self.pending_since.get_or_insert_with(SystemTime::now);
    }

    pub fn add_range(&mut self, path: &RelPath, start: u64, end: u64) {
        self.push(Record::Range(path.clone(), start, end));
    }

    pub fn compare(&mut self, path: &RelPath) {
        self.push(Record::Compare(path.clone()));
    }

    pub fn compare_tree(&mut self, path: &RelPath) {
        self.push(Record::Tree(path.clone()));
    }

    pub fn untrust(&mut self) {
        self.push(Record::Untrusted);
    }

    /// File `(dev, ino)` was written while it had several names (or
    /// under a name already gone): once per segment.
    pub fn linked(&mut self, file: (u64, u64)) {
        let segment = &self.segments.last().expect("a segment").1;
        if segment.linked.contains(&file) || segment.untrusted {
            return;
        }
        self.push(Record::Linked {
            dev: file.0,
            ino: file.1,
        });
    }

    /// Starts a new segment at `at` (a sync point's barrier is being sent).
    pub fn mark(&mut self, at: SystemTime) {
        self.segments.push((ns_of(at), DirtySet::default()));
    }

    /// The sync point `(generation, at)` is acknowledged: the journal now
    /// starts there, with the segments marked at or after `at`.
    pub fn rebase(&mut self, generation: u64, at: SystemTime) -> io::Result<()> {
        let at_ns = ns_of(at);
        let keep = self
            .segments
            .iter()
            .position(|(mark, _)| *mark >= at_ns)
            .unwrap_or(self.segments.len());
        self.segments.drain(..keep);
        if self.segments.is_empty() {
            self.segments.push((at_ns, DirtySet::default()));
        }
        self.base = Some((generation, at_ns));
        self.last_flush_ns = self.last_flush_ns.max(at_ns);
        self.rewrite()
    }

    /// Forgets everything (the node's data is now a copy of its peer's).
    pub fn reset(&mut self) -> io::Result<()> {
        self.base = None;
        self.segments = vec![(0, DirtySet::default())];
        self.rewrite()
    }

    /// Everything since the base, if the journal has one.
    pub fn snapshot(&self) -> Option<(u64, u64, DirtySet)> {
        let (generation, at_ns) = self.base?;
        let mut all = DirtySet::default();
        for (_, set) in &self.segments {
            all.absorb(set);
        }
        Some((generation, at_ns, all))
    }

    /// Writes the waiting records if they are due (or with `force`).
    pub fn flush(&mut self, force: bool) -> io::Result<()> {
        let due = match self.pending_since {
            None => false,
            Some(since) => {
                force
                    || self.pending_records >= FLUSH_RECORDS
                    || since.elapsed().unwrap_or_default() >= FLUSH_EVERY
            }
        };
        if !due {
            return Ok(());
        }
        let now = SystemTime::now();
        encode(&Record::Flush { at_ns: ns_of(now) }, &mut self.pending);
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(&self.pending)?;
        file.sync_data()?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        self.pending_since = None;
        self.last_flush_ns = ns_of(now);
        if self.written > 4 * 1024 * 1024 && self.written > 4 * self.compacted {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Replaces the log by the compacted content (write, fsync, rename,
    /// fsync the directory), then appends to it.
    fn rewrite(&mut self) -> io::Result<()> {
        self.pending.clear();
        self.pending_records = 0;
        self.pending_since = None;
        let mut bytes = Vec::new();
        if let Some((generation, at_ns)) = self.base {
            encode(&Record::Base { generation, at_ns }, &mut bytes);
            let mut all = DirtySet::default();
            for (_, set) in &self.segments {
                all.absorb(set);
            }
            for record in all.records() {
                encode(&record, &mut bytes);
            }
            encode(
                &Record::Flush {
                    at_ns: self.last_flush_ns,
                },
                &mut bytes,
            );
        }
        let path = self.dir.join(FILE_NAME);
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Some(OpenOptions::new().append(true).open(&path)?);
        self.written = bytes.len() as u64;
        self.compacted = self.written;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.flush(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(0, s.as_bytes().to_vec()).unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halo-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn ranges_coalesce_and_too_many_turn_into_a_compare() {
        let mut set = DirtySet::default();
        set.add_range(&p("f"), 10, 20);
        set.add_range(&p("f"), 30, 40);
        set.add_range(&p("f"), 20, 25);
        set.add_range(&p("f"), 0, 5);
        set.add_range(&p("f"), 35, 50);
        set.add_range(&p("f"), 7, 7);
        assert_eq!(
            set.files[&p("f")],
            Dirt::Ranges(vec![(0, 5), (10, 25), (30, 50)])
        );
        set.add_range(&p("f"), 4, 31);
        assert_eq!(set.files[&p("f")], Dirt::Ranges(vec![(0, 50)]));
        for i in 0..=MAX_RANGES as u64 {
            set.add_range(&p("g"), i * 10, i * 10 + 1);
        }
        assert_eq!(set.files[&p("g")], Dirt::Compare);
        // A compare stays a compare.
        set.add_range(&p("g"), 0, 1);
        assert!(set.must_compare(&p("g")));
        assert!(!set.must_compare(&p("f")));
    }

    #[test]
    fn a_renamed_tree_compares_everything_below_both_names() {
        let mut set = DirtySet::default();
        set.add_range(&p("d/a"), 0, 10);
        set.add_range(&p("other"), 0, 10);
        set.compare_tree(&p("d"));
        set.compare_tree(&p("e"));
        assert!(!set.files.contains_key(&p("d/a")));
        assert!(set.must_compare(&p("d/a")));
        assert!(set.must_compare(&p("e/a")));
        assert!(!set.must_compare(&p("dd")));
        assert!(!set.must_compare(&p("other")));
        set.untrust();
        assert!(set.untrusted && set.files.is_empty());
        set.add_range(&p("x"), 0, 1);
        assert!(set.files.is_empty());
    }

    #[test]
    fn records_encode_and_decode() {
        let records = vec![
            Record::Base {
                generation: 7,
                at_ns: 123,
            },
            Record::Range(p("a/b"), 5, 9),
            Record::Compare(p("c")),
            Record::Tree(RelPath::new(1, b"d".to_vec()).unwrap()),
            Record::Untrusted,
            Record::Linked { dev: 3, ino: 99 },
            Record::Flush { at_ns: 456 },
        ];
        let mut bytes = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
        }
        assert_eq!(decode(&bytes), (records.clone(), false));
        // A torn tail: the records before it survive.
        let (kept, damaged) = decode(&bytes[..bytes.len() - 3]);
        assert!(damaged);
        assert_eq!(kept, records[..6]);
        // A flipped byte in the middle: nothing from there on is read.
        let mut bad = bytes.clone();
        let second = 4 + 17 + 8;
        bad[second + 6] ^= 1;
        let (kept, damaged) = decode(&bad);
        assert!(damaged);
        assert_eq!(kept, records[..1]);
    }

    #[test]
    fn the_journal_survives_a_reload_and_rebases() {
        let dir = tmp("reload");
        let mut journal = Journal::open(&dir).unwrap();
        assert!(journal.snapshot().is_none());
        let t0 = SystemTime::now();
        journal.rebase(3, t0).unwrap();
        journal.add_range(&p("f"), 0, 100);
        journal.compare(&p("n"));
        journal.linked((1, 77));
        journal.linked((1, 77));
        journal.flush(true).unwrap();
        // Unflushed records are lost in a crash: simulate it by forgetting them.
        journal.add_range(&p("late"), 0, 1);
        journal.pending.clear();
        journal.pending_since = None;
        let flushed = journal.last_flush_ns;
        drop(journal);
        let mut journal = Journal::open(&dir).unwrap();
        let (generation, at_ns, set) = journal.snapshot().unwrap();
        assert_eq!((generation, at_ns), (3, ns_of(t0)));
        assert_eq!(set.files[&p("f")], Dirt::Ranges(vec![(0, 100)]));
        assert!(set.must_compare(&p("n")));
        assert_eq!(set.linked, BTreeSet::from([(1, 77)]));
        assert!(!set.files.contains_key(&p("late")));
        assert_eq!(ns_of(journal.cutoff()), flushed - MARGIN.as_nanos() as u64);

        // A sync point: the marked segment survives the rebase, older ones go.
        let t1 = SystemTime::now();
        journal.mark(t1);
        journal.add_range(&p("g"), 5, 6);
        journal.linked((1, 78));
        journal.rebase(3, t1).unwrap();
        let (_, at_ns, set) = journal.snapshot().unwrap();
        assert_eq!(at_ns, ns_of(t1));
        assert!(!set.files.contains_key(&p("f")));
        assert_eq!(set.files[&p("g")], Dirt::Ranges(vec![(5, 6)]));
        assert_eq!(
            set.linked,
            BTreeSet::from([(1, 78)]),
            "marked with its segment"
        );
        drop(journal);
        let (_, _, set) = Journal::open(&dir).unwrap().snapshot().unwrap();
        assert_eq!(set.files[&p("g")], Dirt::Ranges(vec![(5, 6)]));
        assert_eq!(
            set.linked,
            BTreeSet::from([(1, 78)]),
            "kept by the compacted log"
        );

        // A damaged tail keeps what verified before it.
        let log = dir.join(FILE_NAME);
        let mut bytes = fs::read(&log).unwrap();
        let mut tail = Vec::new();
        encode(&Record::Range(p("h"), 0, 1), &mut tail);
        let n = tail.len();
        tail[n - 1] ^= 0xff;
        bytes.extend_from_slice(&tail);
        fs::write(&log, &bytes).unwrap();
        let mut journal = Journal::open(&dir).unwrap();
        let (_, _, set) = journal.snapshot().unwrap();
        assert!(!set.files.contains_key(&p("h")));
        assert_eq!(set.files[&p("g")], Dirt::Ranges(vec![(5, 6)]));
        journal.reset().unwrap();
        drop(journal);
        assert!(Journal::open(&dir).unwrap().snapshot().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
