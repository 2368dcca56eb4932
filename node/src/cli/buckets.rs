//! `halo buckets MODULE [--json] [-H …]`.

use std::{io::Write as _, process::ExitCode};

use serde::{Deserialize, Serialize};

use super::{fanout, table::Table, Targets};

/// `/api/v1/modules/<module>/buckets` as the CLI reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketTable {
    pub buckets: usize,
    pub members: Vec<Share>,
    /// Index into `members` of every bucket's owner, or null.
    pub owners: Vec<Option<u8>>,
}

/// One node's part of a bucket table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub node: String,
    pub power: u32,
    pub buckets: usize,
    pub percent: f64,
    pub target_percent: f64,
}

impl BucketTable {
    /// `node`'s share, when it is a member.
    pub fn share_of(&self, node: &str) -> Option<&Share> {
        self.members.iter().find(|m| m.node == node)
    }

    /// A short digest of who owns what: equal on every node that computes
    /// the same table.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for owner in &self.owners {
            let name = owner
                .and_then(|i| self.members.get(usize::from(i)))
                .map_or("", |m| m.node.as_str());
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
        }
        hasher.finalize().to_hex()[..8].to_owned()
    }
}

pub fn run(module: &str, json: bool, targets: &Targets) -> anyhow::Result<ExitCode> {
    let daemons = targets.daemons()?;
    if !targets.is_fanout() {
        let daemon = &daemons[0];
        let body = if json {
            daemon.get_text(&format!("/api/v1/modules/{module}/buckets"))?
        } else {
            daemon.get_text(&format!("/api/v1/modules/{module}/buckets.txt"))?
        };
        let mut out = std::io::stdout().lock();
        out.write_all(body.as_bytes())?;
        if !body.ends_with('\n') {
            writeln!(out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = format!("/api/v1/modules/{module}/buckets");
    let answers = fanout::ask(&daemons, |daemon| daemon.get_json::<BucketTable>(&path));
    if json {
        fanout::print_json(&fanout::to_json(&answers))?;
    } else {
        print!("{}", merged(&answers));
    }
    Ok(fanout::outcome(&answers))
}

/// One row per node: the buckets it owns in its own table, and the digest
/// of that table, which differs on a node that sees another membership.
pub fn merged(answers: &[fanout::Answer<BucketTable>]) -> Table {
    let mut table = Table::new(&["NODE", "BUCKETS", "SHARE", "TARGET", "TABLE"]);
    for answer in answers {
        let node = answer.daemon.node.clone();
        match &answer.result {
            Ok(buckets) => {
                let (count, share, target) = buckets.share_of(&node).map_or(
                    ("0".to_owned(), "-".to_owned(), "-".to_owned()),
                    |s| {
                        (
                            s.buckets.to_string(),
                            format!("{:.1}%", s.percent),
                            format!("{:.1}%", s.target_percent),
                        )
                    },
                );
                table.row([node, count, share, target, buckets.digest()]);
            }
            Err(e) => table.note(node, fanout::failure_note(e)),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::{ApiFailure, Daemon, Token};

    fn answer(node: &str, result: Result<BucketTable, ApiFailure>) -> fanout::Answer<BucketTable> {
        fanout::Answer {
            daemon: Daemon {
                node: node.into(),
                addr: format!("{node}:9010"),
                token: Token::Missing { why: "test".into() },
            },
            result,
        }
    }

    /// A real table of a, b, c with equal power, through its JSON.
    fn table(members: &[&str]) -> BucketTable {
        let members = members.iter().map(|m| (m.to_string(), 1)).collect();
        let table = crate::farm::buckets::BucketTable::compute(&members).unwrap();
        serde_json::from_value(serde_json::to_value(&table).unwrap()).unwrap()
    }

    #[test]
    fn merged_rows_show_each_nodes_share_and_whether_tables_agree() {
        let full = table(&["a", "b", "c"]);
        let partial = table(&["a", "b"]);
        let answers = vec![
            answer("a", Ok(full.clone())),
            answer("b", Ok(partial.clone())),
            answer(
                "c",
                Err(ApiFailure::Failed {
                    addr: "c:9010".into(),
                    status: 404,
                    message: "no bucket table".into(),
                }),
            ),
        ];
        let text = merged(&answers).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("a ") && lines[1].contains(&full.digest()),
            "{text}"
        );
        assert!(lines[2].contains(&partial.digest()), "{text}");
        assert_ne!(full.digest(), partial.digest());
        assert!(
            lines[3].starts_with("c ") && lines[3].contains("ERROR"),
            "{text}"
        );
        let share = full.share_of("a").unwrap();
        assert!(
            lines[1].contains(&format!("{:.1}%", share.percent)),
            "{text}"
        );
    }
}
