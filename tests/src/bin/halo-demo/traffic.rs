//! The client's traffic: a Python loop in the client host that opens a new
//! connection to the VIP every period and writes one line per request to its
//! log, which the demo tails to draw the live view.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

/// Fires `GET /` at `argv[1]`:80 every `argv[2]` seconds, each on a new
/// connection (so a new source port) in a thread of its own, so that a
/// request hanging on a dead node does not delay the next one. Prints
/// `<seq> <sent, epoch s> <elapsed ms> ok <body>` or `… fail <reason>`.
pub const CLIENT: &str = r#"
import socket, sys, threading, time
vip, period, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
def one(seq, sent):
    start = time.monotonic()
    try:
        s = socket.create_connection((vip, 80), timeout=timeout)
        s.settimeout(max(0.01, timeout - (time.monotonic() - start)))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        result = "ok " + (body or "?")
    except socket.timeout:
        result = "fail timeout"
    except ConnectionRefusedError:
        result = "fail refused"
    except ConnectionResetError:
        result = "fail reset"
    except OSError as error:
        result = "fail " + type(error).__name__
    elapsed = int((time.monotonic() - start) * 1000)
    with lock:
        sys.stdout.write("%d %.3f %d %s\n" % (seq, sent, elapsed, result))
        sys.stdout.flush()
seq, next_at = 0, time.monotonic()
while True:
    threading.Thread(target=one, args=(seq, time.time()), daemon=True).start()
    seq += 1
    next_at += period
    time.sleep(max(0.0, next_at - time.monotonic()))
"#;

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    /// When it was sent, in seconds since the epoch (the demo's wall clock).
    pub sent: f64,
    /// The node that answered, or `None` if it failed.
    pub node: Option<String>,
    /// Why it failed (`timeout`, `refused`…), empty on success.
    pub reason: String,
}

impl Record {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let seq = fields.next()?.parse().ok()?;
        let sent = fields.next()?.parse().ok()?;
        let _elapsed: u64 = fields.next()?.parse().ok()?;
        let outcome = fields.next()?;
        let rest: Vec<&str> = fields.collect();
        let rest = rest.join(" ");
        Some(match outcome {
            "ok" => Record {
                seq,
                sent,
                node: Some(rest),
                reason: String::new(),
            },
            _ => Record {
                seq,
                sent,
                node: None,
                reason: rest,
            },
        })
    }
}

/// Reads the complete lines that a growing log gained since the last call.
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    /// Follows `path` from byte `offset`.
    pub fn new(path: PathBuf, offset: u64) -> Self {
        Self {
            path,
            offset,
            partial: String::new(),
        }
    }

    /// The requests whose lines were completed since the last call.
    pub fn read(&mut self) -> Result<Vec<Record>> {
        let mut file =
            File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))
            .with_context(|| format!("seek in {}", self.path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("read {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut records = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            // Anything else (a Python traceback) stays in the log for a look.
            if let Some(record) = Record::parse(line.trim_end()) {
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// Answers per node and failures of a set of requests.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub answers: BTreeMap<String, u64>,
    pub failures: u64,
}

impl Tally {
    pub fn add(&mut self, record: &Record) {
        match &record.node {
            Some(node) => *self.answers.entry(node.clone()).or_default() += 1,
            None => self.failures += 1,
        }
    }

    pub fn answered(&self) -> u64 {
        self.answers.values().sum()
    }

    /// `n1 ████      40%  n2 ███       30%  …` for `nodes`, each with one
    /// block per answer (at most `width`), then the failures.
    pub fn bars(&self, nodes: &[&str], width: usize) -> String {
        let total = self.answered().max(1);
        let mut line = String::new();
        for node in nodes {
            let count = self.answers.get(*node).copied().unwrap_or(0);
            let blocks = usize::try_from(count).unwrap_or(usize::MAX).min(width);
            let bar = "█".repeat(blocks) + &" ".repeat(width - blocks);
            line.push_str(&format!("{node} {bar} {:>3}%  ", count * 100 / total));
        }
        line.push_str(&format!("failed {:>2}", self.failures));
        line
    }

    /// `n1 34%, n2 31%, n3 35%; 0 failed`.
    pub fn shares(&self, nodes: &[&str]) -> String {
        let total = self.answered().max(1);
        let shares: Vec<String> = nodes
            .iter()
            .map(|node| {
                let count = self.answers.get(*node).copied().unwrap_or(0);
                format!("{node} {}%", count * 100 / total)
            })
            .collect();
        format!(
            "{} requests: {}; {} failed",
            self.answered() + self.failures,
            shares.join(", "),
            self.failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_records() {
        let ok = Record::parse("12 1700000000.125 3 ok n2").unwrap();
        assert_eq!((ok.seq, ok.node.as_deref()), (12, Some("n2")));
        let fail = Record::parse("13 1700000000.225 1000 fail timeout").unwrap();
        assert_eq!((fail.node, fail.reason.as_str()), (None, "timeout"));
        assert!(Record::parse("Traceback (most recent call last):").is_none());
    }

    #[test]
    fn bars_have_one_block_per_answer() {
        let mut tally = Tally::default();
        for node in ["n1", "n1", "n2"] {
            tally.add(&Record {
                seq: 0,
                sent: 0.0,
                node: Some(node.into()),
                reason: String::new(),
            });
        }
        assert_eq!(
            tally.bars(&["n1", "n2"], 4),
            "n1 ██    66%  n2 █     33%  failed  0"
        );
    }
}
