//! What a check found: lost writes, duplicates, the backlog still waiting, the verdict, and its
//! summary for a terminal.

use std::path::PathBuf;

use mystira_domain::phase::Phase;
use serde::Serialize;
use uuid::Uuid;

use super::record::ContainerName;

/// Which stores hold what the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    Postgres,
    Cosmos,
}

/// An acknowledged write a store does not hold (named by aggregate and field group, never a
/// value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostWrite {
    pub store: Store,
    pub container: ContainerName,
    pub key: Uuid,
    pub group: String,
    /// The `seq` of the acknowledgement.
    pub ack_seq: u64,
    pub op: String,
    pub phase: Phase,
    /// `missing`: the store has nothing for the group; `differs`: it holds another state.
    pub reason: &'static str,
}

/// Something held more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    pub store: Store,
    pub container: ContainerName,
    pub key: Uuid,
    /// What is duplicated: `badge:<configuration>`, `completed:<scenario>`, `auth0_user_id`,
    /// `document_id`.
    pub what: String,
    pub count: u64,
}

/// How full the journal (table and this machine's files) and the outbox were when the check
/// ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Entries in `migration.retry_journal`.
    pub journal_entries: i64,
    /// Rows in `migration.outbox`.
    pub outbox_rows: i64,
    /// The local journal directory looked at (this machine's only).
    pub journal_dir: PathBuf,
    /// Journal files in it, and the records (lines) they hold.
    pub journal_files: u64,
    pub journal_file_records: u64,
}

impl Backlog {
    /// Whether nothing waits anywhere.
    pub fn is_empty(&self) -> bool {
        self.journal_entries == 0 && self.outbox_rows == 0 && self.journal_file_records == 0
    }

    /// What waits, for people: `None` when nothing does.
    pub fn pending(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.journal_entries > 0 {
            parts.push(format!(
                "the retry journal table (migration.retry_journal) holds {} entries",
                self.journal_entries
            ));
        }
        if self.outbox_rows > 0 {
            parts.push(format!(
                "the outbox (migration.outbox) holds {} rows",
                self.outbox_rows
            ));
        }
        if self.journal_file_records > 0 {
            parts.push(format!(
                "the local journal files in {} hold {} records in {} files",
                self.journal_dir.display(),
                self.journal_file_records,
                self.journal_files
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// What the check concluded (see the module docs for the order in which they are decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every acknowledged write is where its phase promised, nothing is duplicated, and nothing
    /// waited in the journal or the outbox.
    Pass,
    /// An acknowledged write is lost, or something is duplicated.
    Fail,
    /// The ledger holds no acknowledged write with a field group to check (empty, or every call
    /// failed): it proves nothing.
    NothingToCheck,
    /// Writes still wait in the journal (table or local files) or the outbox: a write waiting
    /// there would be reported lost, and one that is not in the ledger is not checked at all.
    NotDrained,
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerReport {
    /// Depth of the retry journal (table and local files) and the outbox when the check
    /// started: all must be 0 for the check to mean something (see the module docs).
    pub backlog: Backlog,
    pub drained: bool,
    pub runs: u64,
    pub intents: u64,
    pub acks: u64,
    /// Calls that were never acknowledged (failed, or in flight at a kill).
    pub unacknowledged: u64,
    /// Lines that do not parse (the last line of a killed writer).
    pub torn_lines: u64,
    pub aggregates: u64,
    /// (aggregate, field group) pairs with an acknowledged write.
    pub groups_checked: u64,
    /// Store-level promises checked (a phase-1 or -2 write counts twice).
    pub promises_checked: u64,
    /// Promises met by an unacknowledged later write rather than the last acknowledged one.
    pub met_by_unacknowledged: u64,
    pub lost: Vec<LostWrite>,
    pub duplicates: Vec<Duplicate>,
    pub verdict: Verdict,
    /// `verdict` is [`Verdict::Pass`].
    pub passed: bool,
}

impl LedgerReport {
    /// A few lines for people (aggregate keys, never values), the last one the verdict.
    pub fn summary(&self, max_items: usize) -> String {
        let b = &self.backlog;
        let mut out = format!(
            "backlog before the check: retry journal {} entries, outbox {} rows, local journal \
             files in {}: {} records in {} files{}\n",
            b.journal_entries,
            b.outbox_rows,
            b.journal_dir.display(),
            b.journal_file_records,
            b.journal_files,
            if self.drained { "" } else { " (NOT drained)" }
        );
        out.push_str(&format!(
            "ledger: {} runs, {} calls, {} acknowledged, {} never acknowledged, {} torn lines\n\
             checked: {} aggregates, {} field groups, {} store promises ({} met by an \
             unacknowledged later write)\n",
            self.runs,
            self.intents,
            self.acks,
            self.unacknowledged,
            self.torn_lines,
            self.aggregates,
            self.groups_checked,
            self.promises_checked,
            self.met_by_unacknowledged,
        ));
        out.push_str(&format!(
            "lost acknowledged writes: {}\nduplicates: {}\n",
            self.lost.len(),
            self.duplicates.len()
        ));
        for l in self.lost.iter().take(max_items) {
            out.push_str(&format!(
                "  LOST in {:?}: {}/{} {} ({}, {} in {}, ack #{})\n",
                l.store, l.container, l.key, l.group, l.reason, l.op, l.phase, l.ack_seq
            ));
        }
        for d in self.duplicates.iter().take(max_items) {
            out.push_str(&format!(
                "  DUPLICATE in {:?}: {}/{} {} x{}\n",
                d.store, d.container, d.key, d.what, d.count
            ));
        }
        out.push_str(&match self.verdict {
            Verdict::Pass => "ledger check: PASS\n".to_owned(),
            Verdict::Fail => format!(
                "ledger check: FAIL: {} acknowledged writes lost, {} duplicates\n",
                self.lost.len(),
                self.duplicates.len()
            ),
            Verdict::NothingToCheck => "ledger check: NOTHING TO CHECK: the ledger holds no \
                 acknowledged write (it is empty, or every call failed), so it proves nothing\n"
                .to_owned(),
            Verdict::NotDrained => format!(
                "ledger check: NOT DRAINED: {}. A write still waiting there is reported lost \
                 (or not checked at all): replay the journal (`journal replay`) and drain the \
                 outbox (`relay --drain`), then check again\n",
                b.pending().unwrap_or_default()
            ),
        });
        out
    }
}
