//! The ledger: what the load generator ([`crate::loadgen`]) asked of the dual-write router and
//! what the router acknowledged, and [`check`], which compares it with both stores after the
//! faults are over: every acknowledged write is where its phase promised it, and nothing is
//! duplicated.
//!
//! # The file
//! JSON lines, appended; one [`LedgerRecord`] per line:
//! * `run`: a load generator started on this file (its run number and seed);
//! * `intent`: a call is about to be made: its sequence number, the operation, the aggregate
//!   (container and key) and, per *field group* it sets (`account`, `login`, `subscription`,
//!   `completed:<scenario>`, `profile`, `onboarded`, `badge:<configuration>`, `signup`,
//!   `attempts`, `used`), the digest of the state the call leaves that group in;
//! * `ack`: the router returned `Ok` for that call: the same, with the time and the phase the
//!   router used (sampled right before and right after the call).
//!
//! A digest is the md5 of the aggregate's key, the group's name and the group's canonical field
//! values ([`FieldGroups`]), never the values themselves: the file holds no email, code, token
//! or name. A failed call leaves only its intent. Intents exist because an acknowledgement is not
//! the only way a write lands: a call that failed with an unknown outcome, or that was in flight
//! when the process was killed, may have landed too, and then it, not the last acknowledged
//! write, is what the stores hold. Without its intent the check could not tell such a write from
//! a lost one. Every record is handed to the kernel (one `write` of the whole line) before the
//! writer returns, so it survives a `kill -9` of the writer; records are fsynced in batches
//! ([`LedgerWriter::sync`]) and at the end. An acknowledgement lost in a machine crash leaves its
//! intent behind: that write is then checked less strictly (as "may have landed"), never falsely
//! reported lost. The first write or fsync that fails breaks the writer: every later record is
//! refused (nothing is written after a gap), and the load generator stops its run.
//!
//! A ledger line is a few hundred bytes; the reader refuses a line longer than [`MAX_LINE`]
//! instead of reading on (a device such as `/dev/full` or `/dev/zero` reads as one endless
//! line). Only a regular file is scanned for earlier runs when a writer opens it, and only a
//! regular file is fsynced: a pipe or a device holds no earlier runs and has nothing to sync.
//!
//! # The check
//! Every field group of every aggregate is checked against its last acknowledged write: each
//! store that write's phase promised (0 `cosmos-only`: Cosmos; 1 and 2: both; 3
//! `postgres-only`: PostgreSQL; a call whose phase changed under it promises what both phases
//! promise) must hold the digest of that write, or of an intent that came after it and was not
//! acknowledged. The load generator runs the calls of one simulated user one at a time, so the
//! order of the file is the order of the calls on each aggregate. Then duplicates: one badge per
//! profile and configuration and one completion per account and scenario (in both stores), one
//! account per auth0 id (both stores, by looking the account's email up), and one PostgreSQL row
//! per Cosmos document id. Cosmos duplicates in embedded lists are counted in the raw document,
//! since the codec keeps one of each when it decodes.
//!
//! The check is meaningful only after recovery, once the retry journal (the table
//! `migration.retry_journal` and the local journal files of the machine it runs on) and the
//! outbox (`migration.outbox`) have drained, and only when the ledger holds something to check.
//! [`check`] reports their depth first, and its [`Verdict`] is [`Verdict::NothingToCheck`] when
//! no acknowledged write with a field group is in the ledger (an empty ledger, or one whose
//! every call failed), else [`Verdict::NotDrained`] while anything waits in the journal or the
//! outbox, else [`Verdict::Fail`] when a write is lost or something is duplicated, else
//! [`Verdict::Pass`]. Only a pass passes. Local journal files on other machines (other routers)
//! are not visible from here: run `journal status` on each of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use mystira_cosmos_store::CosmosRepositories;
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};
use mystira_domain::{
    Account, CompletedScenario, PendingSignup, RepoError, Subscription, UserBadge, UserProfile,
};
use mystira_postgres::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The container an aggregate lives in (the Cosmos container names).
pub type ContainerName = String;

/// Field group name to digest.
pub type Groups = BTreeMap<String, String>;

/// One line of the ledger (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerRecord {
    Run {
        run: u64,
        seed: u64,
        at: DateTime<Utc>,
    },
    Intent {
        seq: u64,
        op: String,
        container: ContainerName,
        key: Uuid,
        groups: Groups,
    },
    Ack {
        seq: u64,
        /// The `seq` of the call's intent.
        call: u64,
        at: DateTime<Utc>,
        phase: Phase,
        /// The phase after the call, when it differs (a switch under the call).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase_after: Option<Phase>,
        op: String,
        container: ContainerName,
        key: Uuid,
        groups: Groups,
    },
}

/// The error of reading or writing a ledger file, naming the file (never a record's content).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("ledger file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger file {path}, line {line}: not a ledger record")]
    Malformed { path: PathBuf, line: u64 },
    #[error("ledger file {path}, line {line}: longer than 64 KiB, not a ledger record")]
    LineTooLong { path: PathBuf, line: u64 },
    #[error("ledger file {path}: not written, an earlier write failed ({first})")]
    Broken { path: PathBuf, first: String },
    #[error("reading the stores failed: {0}")]
    Store(#[from] RepoError),
    #[error("reading the local journal files failed: {0}")]
    Journal(#[from] mystira_dual_write::journal::FileJournalError),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::File {
        path: path.to_owned(),
        source,
    }
}

/// The longest line a ledger reader accepts, newline excluded (a record is a few hundred bytes).
pub const MAX_LINE: u64 = 64 * 1024;

/// Reads the next line of `reader` into `buf` (without its newline): `Ok(false)` at the end.
/// Stops at [`MAX_LINE`] bytes with an error rather than reading on: a device that never ends
/// a line (`/dev/zero`, `/dev/full`) must not fill memory.
fn next_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    path: &Path,
    line: u64,
) -> Result<bool, LedgerError> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE + 1)
        .read_until(b'\n', buf)
        .map_err(file_err(path))?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 > MAX_LINE {
        return Err(LedgerError::LineTooLong {
            path: path.to_owned(),
            line,
        });
    }
    Ok(true)
}

/// Whether `path` is a regular file (false when it does not exist).
fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

// ---------------------------------------------------------------------------------------------
// digests

/// The md5 (lower-case hex) of the key, the group and the values, each length-prefixed so that
/// no two different lists of values give the same text.
fn digest(key: Uuid, group: &str, values: &[&str]) -> String {
    let mut h = Md5::new();
    h.update(key.as_bytes());
    for part in std::iter::once(group).chain(values.iter().copied()) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("\u{0}none")
}

/// The field groups of each entity and their digests: what a write sets, computed the same way
/// from what the load generator sent and from what the check reads back. Only fields that
/// survive both stores' round trip unchanged are used (times at millisecond precision; the load
/// generator writes millisecond times).
#[derive(Debug, Clone, Copy)]
pub struct FieldGroups;

impl FieldGroups {
    /// `account` (who the account is) and `login` (`last_login_at`): what `create` and `update`
    /// set.
    pub fn account(a: &Account) -> Groups {
        let mut g = Groups::new();
        g.insert(
            "account".into(),
            digest(
                a.id,
                "account",
                &[
                    &a.email.normalized(),
                    &a.display_name,
                    a.role.as_str(),
                    opt(a.auth0_user_id.as_deref()),
                    &a.settings.theme,
                    &a.settings.preferred_language,
                ],
            ),
        );
        g.extend(Self::login(a.id, a.last_login_at));
        g
    }

    /// `login`: what `record_login` sets.
    pub fn login(account: Uuid, at: DateTime<Utc>) -> Groups {
        Groups::from([("login".into(), digest(account, "login", &[&millis(at)]))])
    }

    /// `subscription`, in the account's aggregate.
    pub fn subscription(s: &Subscription) -> Groups {
        let valid_until = s.valid_until.map(millis);
        Groups::from([(
            "subscription".into(),
            digest(
                s.account_id,
                "subscription",
                &[
                    &s.subscription_type.code().to_string(),
                    &s.tier,
                    opt(s.product_id.as_deref()),
                    if s.is_active { "active" } else { "inactive" },
                    opt(valid_until.as_deref()),
                ],
            ),
        )])
    }

    /// `completed:<scenario>`, in the account's aggregate (Cosmos keeps no completion time).
    pub fn completion(account: Uuid, scenario_id: &str) -> Groups {
        let group = format!("completed:{scenario_id}");
        let d = digest(account, &group, &[scenario_id]);
        Groups::from([(group, d)])
    }

    /// `profile` (every field `update` replaces but onboarding) and `onboarded`.
    pub fn profile(p: &UserProfile) -> Groups {
        let account = p.account_id.map(|a| a.to_string());
        let mut g = Groups::from([(
            "profile".into(),
            digest(
                p.id,
                "profile",
                &[
                    &p.name,
                    p.age_group.as_str(),
                    opt(p.bio.as_deref()),
                    opt(p.pronouns.as_deref()),
                    &p.preferred_themes.join("\u{1f}"),
                    if p.is_guest { "guest" } else { "member" },
                    opt(account.as_deref()),
                ],
            ),
        )]);
        g.extend(Self::onboarded(p.id, p.has_completed_onboarding));
        g
    }

    /// `onboarded`: what `mark_onboarded` sets.
    pub fn onboarded(profile: Uuid, done: bool) -> Groups {
        let v = if done { "onboarded" } else { "not onboarded" };
        Groups::from([("onboarded".into(), digest(profile, "onboarded", &[v]))])
    }

    /// `badge:<configuration>`, in the profile's aggregate.
    pub fn badge(b: &UserBadge) -> Groups {
        let group = format!("badge:{}", b.badge_configuration_id);
        let d = digest(
            b.user_profile_id,
            &group,
            &[&b.badge_configuration_id, &b.badge_name, &b.axis],
        );
        Groups::from([(group, d)])
    }

    /// `signup` (who asked), `attempts` (wrong codes counted) and `used`.
    pub fn signup(s: &PendingSignup) -> Groups {
        let mut g = Groups::from([(
            "signup".into(),
            digest(
                s.id,
                "signup",
                &[
                    &s.email.normalized(),
                    &s.display_name,
                    if s.is_signin { "sign-in" } else { "sign-up" },
                ],
            ),
        )]);
        g.extend(Self::attempts(s.id, s.failed_attempts));
        g.extend(Self::used(s.id, s.is_used));
        g
    }

    /// `attempts`: what a wrong code sets.
    pub fn attempts(signup: Uuid, failed: i32) -> Groups {
        Groups::from([(
            "attempts".into(),
            digest(signup, "attempts", &[&failed.to_string()]),
        )])
    }

    /// `used`: what `mark_used` sets.
    pub fn used(signup: Uuid, used: bool) -> Groups {
        let v = if used { "used" } else { "open" };
        Groups::from([("used".into(), digest(signup, "used", &[v]))])
    }
}

// ---------------------------------------------------------------------------------------------
// writing

struct WriterState {
    out: File,
    /// Only a regular file is fsynced (a pipe or a device has nothing to sync).
    regular: bool,
    next_seq: u64,
    unsynced: u64,
    lines: u64,
    /// The first write or fsync that failed: nothing is written after it.
    broken: Option<String>,
}

impl WriterState {
    /// Refuses to write once a write has failed.
    fn usable(&self, path: &Path) -> Result<(), LedgerError> {
        match &self.broken {
            Some(first) => Err(LedgerError::Broken {
                path: path.to_owned(),
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the writer broken by `e` and returns the error.
    fn fail(&mut self, path: &Path, e: std::io::Error) -> LedgerError {
        self.broken.get_or_insert_with(|| e.to_string());
        file_err(path)(e)
    }
}

/// Appends to a ledger file (see the module docs on what is written when). Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    path: PathBuf,
    run: u64,
    state: Arc<Mutex<WriterState>>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("path", &self.path)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl LedgerWriter {
    /// Opens (or creates) the file for appending and starts a new run on it: the run number
    /// and sequence numbers continue those already in the file, so a restarted load generator
    /// appends to the ledger of the one that was killed. Fails at once when the run's first
    /// record cannot be written.
    pub fn open(path: &Path, seed: u64) -> Result<Self, LedgerError> {
        let (mut run, mut seq) = (0u64, 0u64);
        // a pipe or a device holds no earlier runs (and reading one may never end)
        if is_regular(path) {
            let mut reader = BufReader::new(File::open(path).map_err(file_err(path))?);
            let mut buf = Vec::new();
            for n in 1.. {
                if !next_line(&mut reader, &mut buf, path, n)? {
                    break;
                }
                // a line cut short by a kill is skipped here as in the check
                match serde_json::from_slice::<LedgerRecord>(&buf) {
                    Ok(LedgerRecord::Run { run: r, .. }) => run = run.max(r),
                    Ok(LedgerRecord::Intent { seq: s, .. } | LedgerRecord::Ack { seq: s, .. }) => {
                        seq = seq.max(s)
                    }
                    Err(_) => {}
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(file_err(path))?;
        // a torn last line (a kill mid-write) must not swallow the next record
        let meta = file.metadata().map_err(file_err(path))?;
        let (regular, len) = (meta.is_file(), meta.len());
        if regular && len > 0 {
            let mut last = [0u8; 1];
            let mut reader = File::open(path).map_err(file_err(path))?;
            reader
                .seek(SeekFrom::Start(len - 1))
                .and_then(|_| reader.read_exact(&mut last))
                .map_err(file_err(path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(file_err(path))?;
            }
        }
        let writer = Self {
            path: path.to_owned(),
            run: run + 1,
            state: Arc::new(Mutex::new(WriterState {
                out: file,
                regular,
                next_seq: seq + 1,
                unsynced: 0,
                lines: 0,
                broken: None,
            })),
        };
        writer.append(&LedgerRecord::Run {
            run: writer.run,
            seed,
            at: Utc::now(),
        })?;
        writer.sync()?;
        Ok(writer)
    }

    /// This writer's run number (1 for a new file).
    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands one record to the kernel in one `write` of the whole line.
    fn append(&self, record: &LedgerRecord) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(record).map_err(|e| LedgerError::File {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut state = self.lock();
        state.usable(&self.path)?;
        if let Err(e) = state.out.write_all(&line) {
            return Err(state.fail(&self.path, e));
        }
        state.unsynced += 1;
        state.lines += 1;
        Ok(())
    }

    fn take_seq(&self) -> u64 {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        seq
    }

    /// Records that a call is about to be made, handing the bytes to the kernel before it
    /// returns (a `kill -9` of this process cannot lose them). Returns the call's number.
    pub fn intent(
        &self,
        op: &str,
        container: &str,
        key: Uuid,
        groups: Groups,
    ) -> Result<u64, LedgerError> {
        let seq = self.take_seq();
        self.append(&LedgerRecord::Intent {
            seq,
            op: op.to_owned(),
            container: container.to_owned(),
            key,
            groups,
        })?;
        Ok(seq)
    }

    /// Records an acknowledged call, handed to the kernel before it returns (fsynced with the
    /// next [`LedgerWriter::sync`]).
    #[allow(clippy::too_many_arguments)]
    pub fn ack(
        &self,
        call: u64,
        phase: Phase,
        phase_after: Phase,
        op: &str,
        container: &str,
        key: Uuid,
        groups: Groups,
    ) -> Result<(), LedgerError> {
        let seq = self.take_seq();
        self.append(&LedgerRecord::Ack {
            seq,
            call,
            at: Utc::now(),
            phase,
            phase_after: (phase_after != phase).then_some(phase_after),
            op: op.to_owned(),
            container: container.to_owned(),
            key,
            groups,
        })
    }

    /// Fsyncs the records written since the last sync. Returns how many records it made
    /// durable. A pipe or a device is not fsynced (it has nothing to sync).
    pub fn sync(&self) -> Result<u64, LedgerError> {
        let mut state = self.lock();
        state.usable(&self.path)?;
        if state.unsynced == 0 {
            return Ok(0);
        }
        if state.regular
            && let Err(e) = state.out.sync_data()
        {
            return Err(state.fail(&self.path, e));
        }
        Ok(std::mem::take(&mut state.unsynced))
    }

    /// Lines this writer appended.
    pub fn lines(&self) -> u64 {
        self.lock().lines
    }
}

// ---------------------------------------------------------------------------------------------
// checking

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

/// The last acknowledged write of one field group, and the unacknowledged intents after it.
#[derive(Debug, Default)]
struct Expectation {
    last_ack: Option<AckedWrite>,
    later_unacked: HashSet<String>,
}

#[derive(Debug)]
struct AckedWrite {
    digest: String,
    seq: u64,
    op: String,
    phase: Phase,
    phase_after: Option<Phase>,
}

impl AckedWrite {
    fn promises(&self, store: Store) -> bool {
        let holds = |p: Phase| match store {
            Store::Postgres => p.writes_postgres(),
            Store::Cosmos => p.writes_cosmos(),
        };
        holds(self.phase) && self.phase_after.is_none_or(holds)
    }
}

type AggregateId = (ContainerName, Uuid);

/// Per aggregate, per field group: what the stores must hold.
type Expectations = BTreeMap<AggregateId, BTreeMap<String, Expectation>>;

/// Reads the ledger into expectations per aggregate and field group.
fn read_ledger(path: &Path) -> Result<(Expectations, LedgerReport), LedgerError> {
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

/// What one store holds for one aggregate: digest per field group, and what it holds twice.
#[derive(Debug, Default)]
struct Held {
    groups: Groups,
    duplicated: Vec<(String, u64)>,
}

fn hold_completions(held: &mut Held, account: Uuid, list: &[CompletedScenario]) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for c in list {
        *seen.entry(c.scenario_id.as_str()).or_default() += 1;
        held.groups
            .extend(FieldGroups::completion(account, &c.scenario_id));
    }
    for (scenario, n) in seen {
        if n > 1 {
            held.duplicated.push((format!("completed:{scenario}"), n));
        }
    }
}

fn hold_badges(held: &mut Held, list: &[UserBadge]) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for b in list {
        *seen.entry(b.badge_configuration_id.as_str()).or_default() += 1;
        // the first award wins; a duplicate is reported, not digested
        if seen[b.badge_configuration_id.as_str()] == 1 {
            held.groups.extend(FieldGroups::badge(b));
        }
    }
    for (config, n) in seen {
        if n > 1 {
            held.duplicated.push((format!("badge:{config}"), n));
        }
    }
}

/// The ports of one store, to read an aggregate the same way from either.
struct Reader<'a> {
    accounts: &'a (dyn AccountRepository + 'a),
    subscriptions: &'a (dyn SubscriptionRepository + 'a),
    completed: &'a (dyn CompletedScenarioRepository + 'a),
    profiles: &'a (dyn ProfileRepository + 'a),
    badges: &'a (dyn BadgeRepository + 'a),
    signups: &'a (dyn PendingSignupRepository + 'a),
}

impl Reader<'_> {
    async fn held(&self, container: &str, key: Uuid) -> Result<Held, RepoError> {
        let mut held = Held::default();
        match container {
            "Accounts" => {
                if let Some(a) = self.accounts.get(key).await? {
                    held.groups.extend(FieldGroups::account(&a));
                    // one account per auth0 id: the same user's email finds every copy
                    let same_user = self
                        .accounts
                        .find_by_email(&a.email)
                        .await?
                        .into_iter()
                        .filter(|o| a.auth0_user_id.is_some() && o.auth0_user_id == a.auth0_user_id)
                        .count() as u64;
                    if same_user > 1 {
                        held.duplicated.push(("auth0_user_id".into(), same_user));
                    }
                }
                if let Some(s) = self.subscriptions.get_for_account(key).await? {
                    held.groups.extend(FieldGroups::subscription(&s));
                }
                let completed = self.completed.list_by_account(key).await?;
                hold_completions(&mut held, key, &completed);
            }
            "UserProfiles" => {
                if let Some(p) = self.profiles.get(key).await? {
                    held.groups.extend(FieldGroups::profile(&p));
                }
                let badges = self.badges.list_by_profile(key).await?;
                hold_badges(&mut held, &badges);
            }
            "PendingSignups" => {
                if let Some(s) = self.signups.get(key).await? {
                    held.groups.extend(FieldGroups::signup(&s));
                }
            }
            _ => {}
        }
        Ok(held)
    }
}

/// What a Cosmos document holds twice in its embedded lists, read from the raw document: the
/// codec keeps one of each when it decodes (and notes the rest), so the repositories never
/// show a duplicate.
fn raw_duplicates(container: &str, doc: &serde_json::Value) -> Vec<(String, u64)> {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    match container {
        "Accounts" => {
            let ids: Vec<String> = match doc.get("CompletedScenarioIds") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(serde_json::Value::String(s)) => s
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                *seen.entry(format!("completed:{id}")).or_default() += 1;
            }
        }
        "UserProfiles" => {
            for badge in doc
                .get("EarnedBadges")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(config) = badge
                    .get("BadgeConfigurationId")
                    .and_then(serde_json::Value::as_str)
                {
                    *seen.entry(format!("badge:{config}")).or_default() += 1;
                }
            }
        }
        _ => {}
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// PostgreSQL rows that share a Cosmos document id (two rows for one document), among `keys`.
async fn pg_document_duplicates(
    pool: &PgPool,
    keys: &[Uuid],
) -> Result<Vec<(String, Uuid, i64)>, RepoError> {
    let sql = |e| mystira_postgres::map_sqlx_error("ledger check", e);
    let mut out = Vec::new();
    for (container, table) in [
        ("Accounts", "accounts"),
        ("UserProfiles", "user_profiles"),
        ("PendingSignups", "pending_signups"),
    ] {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select min(t.id::text)::uuid, count(*) from {table} t
             where coalesce(t.cosmos_id, t.id::text) in
                   (select coalesce(cosmos_id, id::text) from {table} where id = any($1))
             group by coalesce(t.cosmos_id, t.id::text) having count(*) > 1"
        )))
        .bind(keys)
        .fetch_all(pool)
        .await
        .map_err(sql)?;
        out.extend(rows.into_iter().map(|(k, n)| (container.to_owned(), k, n)));
    }
    Ok(out)
}

/// The local journal files waiting in `dir` (none when it does not exist: it is not created).
fn local_journal(dir: &Path) -> Result<mystira_dual_write::journal::FileDepth, LedgerError> {
    if !dir.is_dir() {
        return Ok(mystira_dual_write::journal::FileDepth::default());
    }
    Ok(mystira_dual_write::journal::FileJournal::open(dir)?.pending()?)
}

/// Compares the ledger at `ledger` with both stores (see the module docs). `journal_dir` is
/// this machine's local journal directory (the routers' `--journal-dir`). Run it after
/// recovery, once the retry journal (table and files) and the outbox are empty: the verdict is
/// [`Verdict::NotDrained`] before, and [`Verdict::NothingToCheck`] for a ledger without an
/// acknowledged write.
pub async fn check(
    ledger: &Path,
    pool: &PgPool,
    cosmos: &CosmosRepositories,
    journal_dir: &Path,
) -> Result<LedgerReport, LedgerError> {
    let journal = mystira_postgres::journal::depth(pool).await?;
    let outbox = mystira_postgres::outbox::depth(pool).await?;
    let files = local_journal(journal_dir)?;
    let (expectations, mut report) = read_ledger(ledger)?;
    report.backlog = Backlog {
        journal_entries: journal.entries,
        outbox_rows: outbox.rows,
        journal_dir: journal_dir.to_owned(),
        journal_files: files.files,
        journal_file_records: files.records,
    };
    report.drained = report.backlog.is_empty();
    report.aggregates = expectations.len() as u64;

    let pg_accounts = PgAccountRepository::new(pool.clone());
    let pg_subscriptions = PgSubscriptionRepository::new(pool.clone());
    let pg_completed = PgCompletedScenarioRepository::new(pool.clone());
    let pg_profiles = PgProfileRepository::new(pool.clone());
    let pg_badges = PgBadgeRepository::new(pool.clone());
    let pg_signups = PgPendingSignupRepository::new(pool.clone());
    let readers = [
        (
            Store::Postgres,
            Reader {
                accounts: &pg_accounts,
                subscriptions: &pg_subscriptions,
                completed: &pg_completed,
                profiles: &pg_profiles,
                badges: &pg_badges,
                signups: &pg_signups,
            },
        ),
        (
            Store::Cosmos,
            Reader {
                accounts: &cosmos.accounts,
                subscriptions: &cosmos.subscriptions,
                completed: &cosmos.completed_scenarios,
                profiles: &cosmos.profiles,
                badges: &cosmos.badges,
                signups: &cosmos.pending_signups,
            },
        ),
    ];

    for ((container, key), groups) in &expectations {
        let checked = groups.values().filter(|e| e.last_ack.is_some()).count() as u64;
        report.groups_checked += checked;
        for (store, reader) in &readers {
            let promised: Vec<(&String, &Expectation, &AckedWrite)> = groups
                .iter()
                .filter_map(|(g, e)| e.last_ack.as_ref().map(|a| (g, e, a)))
                .filter(|(_, _, a)| a.promises(*store))
                .collect();
            let mut held = reader.held(container, *key).await?;
            if *store == Store::Cosmos
                && let Some(kind) = mystira_cosmos_codec::codec::Container::from_name(container)
                && let Some(doc) = cosmos.writer.read(kind, *key).await?
            {
                for (what, n) in raw_duplicates(container, &doc) {
                    if !held.duplicated.iter().any(|(w, _)| *w == what) {
                        held.duplicated.push((what, n));
                    }
                }
            }
            for (what, count) in held.duplicated {
                report.duplicates.push(Duplicate {
                    store: *store,
                    container: container.clone(),
                    key: *key,
                    what,
                    count,
                });
            }
            for (group, e, ack) in promised {
                report.promises_checked += 1;
                let found = held.groups.get(group);
                if found == Some(&ack.digest) {
                    continue;
                }
                if found.is_some_and(|d| e.later_unacked.contains(d)) {
                    report.met_by_unacknowledged += 1;
                    continue;
                }
                report.lost.push(LostWrite {
                    store: *store,
                    container: container.clone(),
                    key: *key,
                    group: group.clone(),
                    ack_seq: ack.seq,
                    op: ack.op.clone(),
                    phase: ack.phase,
                    reason: if found.is_some() {
                        "differs"
                    } else {
                        "missing"
                    },
                });
            }
        }
    }

    let keys: Vec<Uuid> = expectations.keys().map(|(_, k)| *k).collect();
    for (container, key, count) in pg_document_duplicates(pool, &keys).await? {
        report.duplicates.push(Duplicate {
            store: Store::Postgres,
            container,
            key,
            what: "document_id".into(),
            count: count as u64,
        });
    }
    report.verdict = if report.groups_checked == 0 {
        Verdict::NothingToCheck
    } else if !report.drained {
        Verdict::NotDrained
    } else if report.lost.is_empty() && report.duplicates.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    report.passed = report.verdict == Verdict::Pass;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_after_a_torn_line_continues_the_numbering_on_a_new_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.jsonl");
        let key = Uuid::new_v4();
        let w = LedgerWriter::open(&path, 1).expect("open");
        let call = w
            .intent(
                "profile.onboard",
                "UserProfiles",
                key,
                FieldGroups::onboarded(key, true),
            )
            .expect("intent");
        w.sync().expect("sync");
        drop(w);
        // a kill in the middle of writing the acknowledgement
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"{\"kind\":\"ack\",\"seq\":3,\"ca")
            .expect("torn line");
        drop(f);

        let w = LedgerWriter::open(&path, 1).expect("reopen");
        assert_eq!(w.run(), 2);
        let next = w
            .intent(
                "account.login",
                "Accounts",
                key,
                FieldGroups::login(key, Utc::now()),
            )
            .expect("intent");
        assert!(next > call);
        w.sync().expect("sync");

        let (expectations, report) = read_ledger(&path).expect("read");
        assert_eq!((report.runs, report.intents, report.acks), (2, 2, 0));
        assert_eq!(report.torn_lines, 1);
        assert_eq!(report.unacknowledged, 2);
        // an unacknowledged call promises nothing
        assert!(
            expectations
                .values()
                .flat_map(|g| g.values())
                .all(|e| e.last_ack.is_none())
        );
    }

    /// Found by review (issue 29): `loadgen --ledger /dev/full` grew to 24 GiB. Opening the
    /// ledger scanned the existing "file" for earlier runs line by line, and `/dev/full` reads
    /// as an endless run of zero bytes without a newline: one line, growing until the kernel
    /// killed the process. A device is not scanned now (the write then fails at once), and a
    /// reader gives up on a line longer than `MAX_LINE`.
    #[test]
    fn a_device_that_never_ends_a_line_is_refused_not_read_forever() {
        let full = Path::new("/dev/full");
        match LedgerWriter::open(full, 1) {
            Err(LedgerError::File { path, source }) => {
                assert_eq!(path, full);
                assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}");
            }
            other => panic!("writing to /dev/full must fail at once: {other:?}"),
        }
        match read_ledger(Path::new("/dev/zero")) {
            Err(LedgerError::LineTooLong { line: 1, .. }) => {}
            other => panic!("an endless line must be refused: {:?}", other.map(|r| r.1)),
        }
    }

    #[test]
    fn a_failed_write_breaks_the_writer_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = LedgerWriter::open(&dir.path().join("ledger.jsonl"), 1).expect("open");
        let key = Uuid::new_v4();
        w.intent("profile.onboard", "UserProfiles", key, Groups::new())
            .expect("intent");
        // the file is swapped for a device whose writes fail, as a full disk would
        w.lock().out = OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("/dev/full");
        assert!(matches!(
            w.intent("profile.onboard", "UserProfiles", key, Groups::new()),
            Err(LedgerError::File { .. })
        ));
        // nothing is written after a gap, also not once writes would work again
        w.lock().out = OpenOptions::new()
            .append(true)
            .open(dir.path().join("ledger.jsonl"))
            .expect("reopen");
        assert!(matches!(
            w.intent("profile.onboard", "UserProfiles", key, Groups::new()),
            Err(LedgerError::Broken { .. })
        ));
        assert!(matches!(w.sync(), Err(LedgerError::Broken { .. })));
        assert_eq!(w.lines(), 2, "the run record and the first intent");
    }

    #[test]
    fn digests_depend_on_the_key_and_never_show_the_values() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let d = FieldGroups::attempts(a, 2);
        assert_ne!(d, FieldGroups::attempts(b, 2));
        assert_ne!(d, FieldGroups::attempts(a, 3));
        assert_eq!(d["attempts"].len(), 32, "an md5 in hex");
    }
}
