//! The retry journal, both halves: the table in PostgreSQL (`mystira_postgres::journal`) and,
//! for when PostgreSQL itself is down, local append-only files; and the replayer that applies
//! both until they are empty.
//!
//! # Local journal files
//! `<dir>/journal-<pid>-<nanos>.jsonl`, one [`JournalRecord`] per line. A record is written and
//! the file `fsync`ed before the router's call returns, so an acknowledged write survives a
//! crash of the process and of the machine's page cache. The writing process holds an
//! exclusive `flock` on its current file; a replayer takes only files it can lock, i.e. files
//! whose writer has rotated away from them ([`FileJournal::seal`]) or died.
//!
//! An append that fails (the write or the `fsync`) may have left a record cut short at the end
//! of the file; the file is then sealed at once, so the next record starts a new file and is
//! never glued to the broken line. A torn line is therefore always the last line of its file
//! (a failed append, or a crash mid-write): its write was never acknowledged, so replay skips
//! and counts it (`torn_lines`). A line that cannot be read anywhere else is damage, not a
//! torn write: replay applies every readable record of the file, then keeps the file, renamed
//! `journal-….jsonl.damaged` (never replayed again, never deleted, counted by
//! [`FileJournal::pending`] as `damaged_files`) for an operator to look at. A record that an
//! older writer glued to a torn line (`{"contai{"container":…}`) is recovered and replayed.
//!
//! # Replay
//! Every record is applied through [`mystira_copy::apply`] (upserts, version-guarded; given Cosmos,
//! the document as Cosmos holds it now rather than the journalled copy, see [`replay_record`]) or
//! `bulk::delete_document` (deletes, with a tombstone), so replaying twice, in any order, or
//! after a newer copy landed, changes nothing. A document that cannot be migrated goes to the
//! quarantine as in the backfill (it is then on record, not lost). Table entries are claimed
//! with `for update skip locked`, so several replayers share the table; a transient failure
//! defers the entry with a growing delay.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mystira_domain::RepoError;
use mystira_postgres::journal::{self, JournalOp, JournalRecord};
use serde::Serialize;
use sqlx::PgPool;

/// Local append-only journal files in one directory (see the module docs).
#[derive(Debug, Clone)]
pub struct FileJournal {
    dir: PathBuf,
    current: Arc<Mutex<Writer>>,
}

#[derive(Debug, Default)]
struct Writer {
    open: Option<OpenJournal>,
    /// Test seam ([`FileJournal::cut_next_append`]): the next append writes only this many
    /// bytes, then fails.
    cut_next_append: Option<usize>,
}

#[derive(Debug)]
struct OpenJournal {
    file: File,
    path: PathBuf,
}

/// The error of a journal file operation, naming the file (never a record's content).
#[derive(Debug, thiserror::Error)]
#[error("journal file {path}: {source}")]
pub struct FileJournalError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileJournalError + '_ {
    move |source| FileJournalError {
        path: path.to_owned(),
        source,
    }
}

impl FileJournal {
    /// Uses `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, FileJournalError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self {
            dir,
            current: Arc::new(Mutex::new(Writer::default())),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where journal files live when no directory is configured: as root
    /// `/var/lib/mystira-users/journal`, else `$XDG_DATA_HOME/mystira-users/journal`
    /// (`~/.local/share/mystira-users/journal`), like the private PostgreSQL cluster. `None`
    /// when neither `XDG_DATA_HOME` nor `HOME` is set.
    pub fn default_dir() -> Option<PathBuf> {
        if mystira_postgres::local_cluster::effective_uid() == Some(0) {
            return Some(PathBuf::from("/var/lib/mystira-users/journal"));
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
        Some(data.join("mystira-users/journal"))
    }

    /// Appends records and fsyncs the file before returning. Blocking: call it from
    /// `spawn_blocking` (see [`FileJournal::append_async`]).
    ///
    /// When the write or the `fsync` fails, the file is sealed: what reached it is unknown (a
    /// record cut short, or whole but not durable), and the next append must not continue a
    /// torn line, so it starts a new file.
    pub fn append(&self, records: &[JournalRecord]) -> Result<(), FileJournalError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.open.is_none() {
            current.open = Some(self.create_file()?);
        }
        let cut = current.cut_next_append.take();
        let open = current.open.as_mut().expect("just opened");
        let mut buf = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(|e| FileJournalError {
                path: open.path.clone(),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let written = match cut {
            Some(n) if n < buf.len() => open.file.write_all(&buf[..n]).and_then(|()| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "write cut short (injected)",
                ))
            }),
            _ => open.file.write_all(&buf),
        }
        .and_then(|()| open.file.sync_data());
        if let Err(source) = written {
            let path = open.path.clone();
            // dropping the file releases its lock: a replayer may take it from now on
            current.open = None;
            tracing::warn!(file = %path.display(), "journal append failed, file sealed");
            return Err(FileJournalError { path, source });
        }
        Ok(())
    }

    /// Test seam: the next [`FileJournal::append`] writes only the first `bytes` bytes of its
    /// records and then fails, as a write cut short by a full disk or an I/O error does.
    #[doc(hidden)]
    pub fn cut_next_append(&self, bytes: usize) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut_next_append = Some(bytes);
    }

    /// [`FileJournal::append`] off the async runtime's threads.
    pub async fn append_async(&self, records: Vec<JournalRecord>) -> Result<(), FileJournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.append(&records))
            .await
            .unwrap_or_else(|e| {
                Err(FileJournalError {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })
            })
    }

    fn create_file(&self) -> Result<OpenJournal, FileJournalError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self
            .dir
            .join(format!("journal-{}-{nanos}.jsonl", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        // the new name must survive a crash too
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(OpenJournal { file, path })
    }

    /// Whether this journal has a file open for appending (files are created by the first
    /// append after a seal, so an open file holds at least one record).
    pub fn has_open_file(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .is_some()
    }

    /// Closes the current file (its lock goes with it), so that a replayer can take it; the next
    /// append starts a new file.
    pub fn seal(&self) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .take();
    }

    /// The journal files no live writer holds, oldest first.
    fn replayable_files(&self) -> Result<Vec<(PathBuf, File)>, FileJournalError> {
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".jsonl"))
            })
            .collect();
        paths.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        let mut out = Vec::new();
        for path in paths {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                out.push((path, file));
            }
        }
        Ok(out)
    }

    /// How many records wait in files no live writer holds, how many files there are in all
    /// (including the current one), and how many were kept as damaged.
    pub fn pending(&self) -> Result<FileDepth, FileJournalError> {
        let mut depth = FileDepth::default();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            if path.extension().is_some_and(|e| e == DAMAGED) {
                depth.damaged_files += 1;
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                depth.files += 1;
                let file = File::open(&path).map_err(io_err(&path))?;
                depth.records += BufReader::new(file).lines().count() as u64;
            }
        }
        Ok(depth)
    }
}

/// Records waiting in local journal files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileDepth {
    pub files: u64,
    pub records: u64,
    /// Files kept as `.jsonl.damaged` (a line other than the last could not be read; every
    /// readable record in them was replayed): an operator has to look at them.
    pub damaged_files: u64,
}

/// The extension added to a journal file kept as damaged.
const DAMAGED: &str = "damaged";

/// What a replay pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Records applied (written, unchanged or quarantined: all of them landed or are on record).
    pub applied: u64,
    /// Records deferred after a transient failure (still journalled).
    pub deferred: u64,
    /// Local files fully replayed and removed.
    pub files_done: u64,
    /// Lines of local files that were cut short by a failed append or a crash (never
    /// acknowledged).
    pub torn_lines: u64,
    /// Local files kept as damaged (renamed `.jsonl.damaged`) after their readable records
    /// were applied.
    pub damaged_files: u64,
    /// Unreadable lines in those files (not the last line of their file, so not torn writes).
    pub damaged_lines: u64,
}

impl ReplayReport {
    pub fn add(&mut self, other: &ReplayReport) {
        self.applied += other.applied;
        self.deferred += other.deferred;
        self.files_done += other.files_done;
        self.torn_lines += other.torn_lines;
        self.damaged_files += other.damaged_files;
        self.damaged_lines += other.damaged_lines;
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error(transparent)]
    File(#[from] FileJournalError),
    #[error("postgresql: {0}")]
    Store(#[from] RepoError),
}

/// Applies one record. `Err` only for a failure that says nothing about the record (PostgreSQL
/// unavailable): keep it and try again later.
pub async fn apply_record(pool: &PgPool, record: &JournalRecord) -> Result<(), RepoError> {
    // held back (a pending outbox row: PostgreSQL's change is the newer side) counts as applied
    // for a replay; only the router's own copy must not acknowledge such a write
    mystira_copy::apply::copy_record(pool, record)
        .await
        .map(|_| ())
}

/// Where a replay reads the current state of a journalled document (see [`replay_record`]).
pub type CurrentSource<'a> = Option<&'a mystira_cosmos_store::AggregateWriter>;

/// Replays one record. With `current` (Cosmos), an upsert applies the document as Cosmos holds
/// it *now* rather than the journalled copy: `_ts` has one-second resolution, so a journalled
/// copy and a newer copy that landed directly within the same second cannot be told apart by
/// their versions, but the current document is the newest by definition. A document Cosmos no
/// longer has was deleted after the write (that delete has its own record, or came through the
/// change feed): the journalled copy is applied, and the delete's tombstone, whichever lands
/// first, keeps the document deleted. Without `current`, the journalled copy is applied as it
/// is, under the version guard alone.
pub async fn replay_record(
    pool: &PgPool,
    record: &JournalRecord,
    current: CurrentSource<'_>,
) -> Result<(), RepoError> {
    if let (Some(writer), JournalOp::Upsert { document }) = (current, &record.op)
        && let Some(container) =
            mystira_cosmos_codec::codec::Container::from_name(&record.container)
        && let Some(doc_ref) = mystira_cosmos_codec::codec::document_ref(container, document)
        && let Some(now) = writer
            .read_exact(container, &doc_ref.document_id, doc_ref.key)
            .await?
    {
        let fresh = JournalRecord {
            container: record.container.clone(),
            document_id: record.document_id.clone(),
            op: JournalOp::Upsert { document: now },
        };
        return apply_record(pool, &fresh).await;
    }
    apply_record(pool, record).await
}

/// A short name for a failure, kept on a deferred entry (never a value).
pub(crate) fn error_class(e: &RepoError) -> &'static str {
    match e {
        RepoError::Unavailable(_) => "unavailable",
        RepoError::Invalid(_) => "invalid",
        RepoError::Conflict { .. } => "conflict",
        _ => "store",
    }
}

/// The delay before attempt `attempts + 1`: 1 s doubling to at most 5 minutes.
pub(crate) fn retry_delay_ms(attempts: i32) -> i64 {
    1000i64
        .saturating_mul(1i64 << attempts.clamp(0, 9))
        .min(300_000)
}

/// One pass over the table: claims due entries in batches of `batch` and applies them, until
/// none is due.
pub async fn replay_table(
    pool: &PgPool,
    batch: i64,
    current: CurrentSource<'_>,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    loop {
        let mut tx = pool.begin().await.map_err(|e| {
            RepoError::Unavailable(format!("cannot begin a replay transaction: {e}"))
        })?;
        let entries = journal::claim_due(&mut tx, batch).await?;
        if entries.is_empty() {
            return Ok(report);
        }
        let mut landed = Vec::new();
        for entry in &entries {
            match replay_record(pool, &entry.record, current).await {
                Ok(()) => landed.push(entry.id),
                Err(e) => {
                    tracing::warn!(
                        container = %entry.record.container,
                        class = error_class(&e),
                        attempts = entry.attempts + 1,
                        "journal entry deferred"
                    );
                    journal::defer(
                        &mut tx,
                        entry.id,
                        error_class(&e),
                        retry_delay_ms(entry.attempts),
                    )
                    .await?;
                    report.deferred += 1;
                }
            }
        }
        journal::remove(&mut tx, &landed).await?;
        tx.commit()
            .await
            .map_err(|e| RepoError::Unavailable(format!("cannot commit a replay: {e}")))?;
        report.applied += landed.len() as u64;
        if report.deferred > 0 {
            // what is left is not due yet
            return Ok(report);
        }
    }
}

/// What one line of a journal file holds.
#[derive(Debug)]
enum Line {
    Record(JournalRecord),
    /// A torn line with a whole record after it on the same line (written by an older writer
    /// that kept appending to a file after a failed write).
    Glued(JournalRecord),
    Unreadable,
}

/// Every record line starts like this (`container` is the record's first field).
const RECORD_START: &[u8] = b"{\"container\":";

fn parse_line(line: &[u8]) -> Line {
    if let Ok(record) = serde_json::from_slice(line) {
        return Line::Record(record);
    }
    // The leftmost record start after which the rest of the line is exactly one record: a
    // start nested in a document leaves the outer record's end behind it, which does not parse.
    (1..line.len())
        .filter(|&at| line[at..].starts_with(RECORD_START))
        .find_map(|at| serde_json::from_slice(&line[at..]).ok())
        .map_or(Line::Unreadable, Line::Glued)
}

/// One pass over the local files no live writer holds: applies each file's records in order and
/// removes the file when all of them landed. An unreadable last line is a torn write (skipped,
/// counted); an unreadable line before it is damage: the file's readable records are applied
/// and the file is kept, renamed `.jsonl.damaged` (see the module docs). Stops at the first
/// transient failure (the file stays; replaying it again is harmless).
pub async fn replay_files(
    pool: &PgPool,
    files: &FileJournal,
    current: CurrentSource<'_>,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    for (path, mut file) in files.replayable_files()? {
        // bytes, not text: a write cut short can end inside a multi-byte character
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            // what follows the final newline
            lines.pop();
        }
        let last = lines.len().saturating_sub(1);
        let mut damaged_lines = 0;
        for (n, line) in lines.iter().enumerate() {
            let record = match parse_line(line) {
                Line::Record(r) => r,
                Line::Glued(r) => {
                    report.torn_lines += 1;
                    tracing::warn!(file = %path.display(), line = n + 1, "journal record recovered from behind a line cut short");
                    r
                }
                Line::Unreadable if n == last => {
                    report.torn_lines += 1;
                    tracing::warn!(file = %path.display(), "skipping a journal line cut short");
                    continue;
                }
                Line::Unreadable => {
                    damaged_lines += 1;
                    tracing::error!(file = %path.display(), line = n + 1, "unreadable journal line");
                    continue;
                }
            };
            if let Err(e) = replay_record(pool, &record, current).await {
                report.deferred += 1;
                tracing::warn!(file = %path.display(), class = error_class(&e), "journal file replay stopped");
                return Ok(report);
            }
            report.applied += 1;
        }
        if damaged_lines > 0 {
            let mut kept = path.clone().into_os_string();
            kept.push(".");
            kept.push(DAMAGED);
            fs::rename(&path, &kept).map_err(io_err(&path))?;
            report.damaged_files += 1;
            report.damaged_lines += damaged_lines;
            tracing::error!(
                file = %PathBuf::from(kept).display(),
                lines = damaged_lines,
                "journal file kept as damaged: its readable records were replayed"
            );
        } else {
            fs::remove_file(&path).map_err(io_err(&path))?;
            report.files_done += 1;
        }
        drop(file);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str) -> JournalRecord {
        JournalRecord {
            container: "Accounts".to_owned(),
            document_id: id.to_owned(),
            // a document can itself hold a `{"container":` that is not a record's start
            op: JournalOp::Upsert {
                document: json!({"id": id, "Settings": {"container": "Accounts", "x": 1}}),
            },
        }
    }

    #[test]
    fn a_record_line_starts_like_every_record() {
        let line = serde_json::to_vec(&record("a")).expect("serializes");
        assert!(line.starts_with(RECORD_START));
        assert!(matches!(parse_line(&line), Line::Record(r) if r == record("a")));
    }

    #[test]
    fn a_record_glued_behind_a_torn_line_is_found_and_a_nested_start_is_not_taken_for_one() {
        let torn = serde_json::to_vec(&record("torn")).expect("serializes");
        let glued = serde_json::to_vec(&record("glued")).expect("serializes");
        let nested = torn
            .windows(RECORD_START.len())
            .rposition(|w| w == RECORD_START)
            .expect("a nested start");
        // cut after the nested start, and cut before it
        for cut in [nested + 5, nested - 3, 10] {
            let line = [&torn[..cut], &glued[..]].concat();
            assert!(
                matches!(parse_line(&line), Line::Glued(r) if r == record("glued")),
                "cut at {cut}"
            );
        }
        assert!(matches!(parse_line(&torn[..nested + 5]), Line::Unreadable));
        assert!(matches!(parse_line(b"\0\0\0"), Line::Unreadable));
        assert!(matches!(parse_line(b""), Line::Unreadable));
    }
}
