//! `halo log MODULE [-f] [-n N] [--json] [-H …]`: the module's event log
//! through `/api/v1/modules/<module>/events`; following polls with
//! `since_ms` and drops what it already printed.

use std::{collections::BTreeMap, io::Write as _, process::ExitCode, time::Duration};

use serde::{Deserialize, Serialize};

use super::{client::Daemon, fanout, Targets};
use crate::daemon::module_log::LogEntry;

/// How often `-f` asks for new events.
const POLL: Duration = Duration::from_millis(500);

/// `/api/v1/modules/<module>/events` as the CLI reads it.
#[derive(Debug, Deserialize)]
struct EventList {
    events: Vec<LogEntry>,
}

/// One printed event, with the node it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEvent {
    pub node: String,
    #[serde(flatten)]
    pub entry: LogEntry,
}

/// What a follower has printed of one node's log: the latest millisecond
/// and the entries of that millisecond, since the next poll (`since_ms` is
/// inclusive) returns them again.
#[derive(Debug, Default)]
pub struct Follower {
    last_ms: u64,
    at_last: Vec<LogEntry>,
}

impl Follower {
    /// The `since_ms` of the next poll.
    pub fn since_ms(&self) -> u64 {
        self.last_ms
    }

    /// The entries of `batch` (oldest first, all at or after `since_ms`)
    /// not printed yet. Two identical entries of the same millisecond are
    /// both kept: each one already seen cancels one.
    pub fn fresh(&mut self, batch: Vec<LogEntry>) -> Vec<LogEntry> {
        let mut seen = std::mem::take(&mut self.at_last);
        let mut fresh = Vec::new();
        for entry in batch {
            if entry.at_ms < self.last_ms {
                continue;
            }
            if entry.at_ms == self.last_ms {
                if let Some(i) = seen.iter().position(|s| *s == entry) {
                    seen.swap_remove(i);
                    self.at_last.push(entry);
                    continue;
                }
            } else {
                // A later millisecond: the earlier one is never asked again.
                self.last_ms = entry.at_ms;
                self.at_last.clear();
                seen.clear();
            }
            self.at_last.push(entry.clone());
            fresh.push(entry);
        }
        // Printed entries of the latest millisecond that this batch did not
        // repeat (a `limit` cut them off) stay remembered.
        self.at_last.extend(seen);
        fresh
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by eras
    // of 400 years.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

fn events_path(module: &str, since_ms: u64, limit: Option<usize>) -> String {
    let mut path = format!("/api/v1/modules/{module}/events?since_ms={since_ms}");
    if let Some(limit) = limit {
        path.push_str(&format!("&limit={limit}"));
    }
    path
}

/// Prints events: with the node's name when several nodes are asked.
fn print(events: &[NodeEvent], json: bool, with_node: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for event in events {
        if json {
            serde_json::to_writer(&mut out, event)?;
            writeln!(out)?;
            continue;
        }
        let node = if with_node {
            format!("{}  ", event.node)
        } else {
            String::new()
        };
        writeln!(
            out,
            "{}  {node}{:<24}  {}",
            utc(event.entry.at_ms),
            event.entry.source,
            event.entry.text
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn run(
    module: &str,
    follow: bool,
    lines: Option<usize>,
    json: bool,
    targets: &Targets,
) -> anyhow::Result<ExitCode> {
    let daemons = targets.daemons()?;
    let many = targets.is_fanout();
    let mut followers: BTreeMap<String, Follower> = BTreeMap::new();
    let poll = |limit: Option<usize>,
                followers: &mut BTreeMap<String, Follower>|
     -> anyhow::Result<ExitCode> {
        let since: BTreeMap<String, u64> = daemons
            .iter()
            .map(|d| {
                let since = followers.get(&d.node).map_or(0, Follower::since_ms);
                (d.node.clone(), since)
            })
            .collect();
        let answers = fanout::ask(&daemons, |d: &Daemon| {
            d.get_json::<EventList>(&events_path(module, since[&d.node], limit))
        });
        if !many {
            if let Some(Err(e)) = answers.first().map(|a| &a.result) {
                return Err(e.clone().into());
            }
        }
        let mut events = Vec::new();
        for answer in &answers {
            match &answer.result {
                Ok(list) => {
                    let follower = followers.entry(answer.daemon.node.clone()).or_default();
                    events.extend(
                        follower
                            .fresh(list.events.clone())
                            .into_iter()
                            .map(|entry| NodeEvent {
                                node: answer.daemon.node.clone(),
                                entry,
                            }),
                    );
                }
                Err(e) => eprintln!("halo: {}: {}", answer.daemon.node, fanout::failure_note(e)),
            }
        }
        // Merged by time; a stable sort keeps each node's own order.
        events.sort_by_key(|e| e.entry.at_ms);
        if let Some(limit) = limit {
            let skip = events.len().saturating_sub(limit);
            events.drain(..skip);
        }
        print(&events, json, many)?;
        Ok(fanout::outcome(&answers))
    };
    let first = poll(lines, &mut followers)?;
    if !follow {
        return Ok(first);
    }
    loop {
        std::thread::sleep(POLL);
        // A node that stops answering is reported and asked again.
        poll(None, &mut followers)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, text: &str) -> LogEntry {
        LogEntry {
            at_ms,
            source: "fsm".into(),
            text: text.into(),
        }
    }

    #[test]
    fn following_drops_what_the_inclusive_since_returns_again() {
        let mut follower = Follower::default();
        let first = follower.fresh(vec![entry(10, "a"), entry(20, "b"), entry(20, "c")]);
        assert_eq!(first.len(), 3);
        assert_eq!(follower.since_ms(), 20);
        // The next poll from 20 sees b and c again, plus a new one at 20
        // and one later.
        let next = follower.fresh(vec![
            entry(20, "b"),
            entry(20, "c"),
            entry(20, "d"),
            entry(30, "e"),
        ]);
        assert_eq!(next, vec![entry(20, "d"), entry(30, "e")]);
        assert_eq!(follower.fresh(vec![entry(30, "e")]), vec![]);
    }

    #[test]
    fn identical_entries_of_one_millisecond_are_each_printed_once() {
        let mut follower = Follower::default();
        assert_eq!(follower.fresh(vec![entry(5, "tick")]).len(), 1);
        // The same line written twice in that millisecond: one is new.
        let next = follower.fresh(vec![entry(5, "tick"), entry(5, "tick")]);
        assert_eq!(next, vec![entry(5, "tick")]);
        assert_eq!(
            follower.fresh(vec![entry(5, "tick"), entry(5, "tick")]),
            vec![]
        );
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(utc(1_735_689_599_999), "2024-12-31 23:59:59.999Z");
    }
}
