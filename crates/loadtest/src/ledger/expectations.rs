//! Reading a ledger file into what the stores must hold: per aggregate and field group, the
//! last acknowledged write and the unacknowledged intents after it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use mystira_domain::phase::Phase;
use uuid::Uuid;

use super::record::{ContainerName, LedgerError, LedgerRecord, file_err, next_line};
use super::report::{Backlog, LedgerReport, Store, Verdict};

/// The last acknowledged write of one field group, and the unacknowledged intents after it.
#[derive(Debug, Default)]
pub(super) struct Expectation {
    pub(super) last_ack: Option<AckedWrite>,
    pub(super) later_unacked: HashSet<String>,
}

#[derive(Debug)]
pub(super) struct AckedWrite {
    pub(super) digest: String,
    pub(super) seq: u64,
    pub(super) op: String,
    pub(super) phase: Phase,
    pub(super) phase_after: Option<Phase>,
}

impl AckedWrite {
    pub(super) fn promises(&self, store: Store) -> bool {
        let holds = |p: Phase| match store {
            Store::Postgres => p.writes_postgres(),
            Store::Cosmos => p.writes_cosmos(),
        };
        holds(self.phase) && self.phase_after.is_none_or(holds)
    }
}

pub(super) type AggregateId = (ContainerName, Uuid);

/// Per aggregate, per field group: what the stores must hold.
pub(super) type Expectations = BTreeMap<AggregateId, BTreeMap<String, Expectation>>;

/// Reads the ledger into expectations per aggregate and field group.
pub(super) fn read_ledger(path: &Path) -> Result<(Expectations, LedgerReport), LedgerError> {
    let mut report = LedgerReport {
        backlog: Backlog {
            journal_entries: 0,
            outbox_rows: 0,
            journal_dir: PathBuf::new(),
            journal_files: 0,
            journal_file_records: 0,
        },
        drained: true,
        runs: 0,
        intents: 0,
        acks: 0,
        unacknowledged: 0,
        torn_lines: 0,
        aggregates: 0,
        groups_checked: 0,
        promises_checked: 0,
        met_by_unacknowledged: 0,
        lost: Vec::new(),
        duplicates: Vec::new(),
        verdict: Verdict::NothingToCheck,
        passed: false,
    };
    let mut reader = BufReader::new(File::open(path).map_err(file_err(path))?);
    let mut records = Vec::new();
    let mut buf = Vec::new();
    for n in 1.. {
        if !next_line(&mut reader, &mut buf, path, n)? {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LedgerRecord>(&line) {
            Ok(r) => records.push(r),
            // A writer killed mid-line leaves one torn line, possibly followed by the next
            // run's records (the writer starts it on a new line). Anything else torn is damage.
            Err(_) if line.starts_with('{') && !line.ends_with('}') => report.torn_lines += 1,
            Err(_) => {
                return Err(LedgerError::Malformed {
                    path: path.to_owned(),
                    line: n,
                });
            }
        }
    }
    let acked: HashSet<u64> = records
        .iter()
        .filter_map(|r| match r {
            LedgerRecord::Ack { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    let mut expectations = Expectations::new();
    for record in records {
        match record {
            LedgerRecord::Run { .. } => report.runs += 1,
            LedgerRecord::Intent {
                seq,
                container,
                key,
                groups,
                ..
            } => {
                report.intents += 1;
                if acked.contains(&seq) {
                    continue;
                }
                report.unacknowledged += 1;
                let aggregate = expectations.entry((container, key)).or_default();
                for (group, digest) in groups {
                    aggregate
                        .entry(group)
                        .or_default()
                        .later_unacked
                        .insert(digest);
                }
            }
            LedgerRecord::Ack {
                seq,
                phase,
                phase_after,
                op,
                container,
                key,
                groups,
                ..
            } => {
                report.acks += 1;
                let aggregate = expectations.entry((container, key)).or_default();
                for (group, digest) in groups {
                    let e = aggregate.entry(group).or_default();
                    e.later_unacked.clear();
                    e.last_ack = Some(AckedWrite {
                        digest,
                        seq,
                        op: op.clone(),
                        phase,
                        phase_after,
                    });
                }
            }
        }
    }
    Ok((expectations, report))
}
