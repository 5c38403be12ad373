//! The backfill: every document of every container, from a source into PostgreSQL.
//!
//! Containers are copied in dependency order (`Accounts` before `UserProfiles`, whose
//! `AccountId` must find its account; then `PendingSignups`). Each container is read page by
//! page; each page is decoded, validated and mapped (`crate::mapping`), written in batches
//! through the idempotent, version-guarded bulk writer, and its position is checkpointed after
//! the write. A `kill -9` at any moment loses at most the page in flight, which the re-run reads
//! again and writes as `unchanged` where it had already landed: the final state is the same.
//!
//! Every document read is accounted for: `read = written + unchanged + quarantined + skipped`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mystira_postgres::bookkeeping::{self, QuarantinedDocument};
use mystira_postgres::bulk::{self, BulkDocument, WriteOutcome};
use serde::Serialize;
use sqlx::PgPool;

use crate::mapping::{Mapped, map_document};
use crate::source::{DocumentSource, SourceDocument, SourceError};

/// The containers of the user domain, in the order they are copied.
pub const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];

const JOB: &str = "backfill";
/// The checkpoint unit that says whether the last run of the job finished.
const RUN_MARKER: &str = "_run";

/// How the backfill batches and paces its work.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// Documents per write transaction (and per source page).
    pub batch_rows: usize,
    /// Maximum source documents read per second (a Cosmos RU budget); `None` = unlimited.
    pub max_docs_per_second: Option<u32>,
    /// Ignore saved checkpoints and read every container from the beginning.
    pub restart: bool,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            max_docs_per_second: None,
            restart: false,
        }
    }
}

/// What happened to one container's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerCounts {
    pub read: u64,
    pub written: u64,
    /// Already in PostgreSQL at this version or newer (a re-run, or a resumed page).
    pub unchanged: u64,
    pub quarantined: u64,
    /// Not copied on purpose, by reason (e.g. a document of another entity type).
    pub skipped: BTreeMap<String, u64>,
}

impl ContainerCounts {
    /// Whether every document read is accounted for.
    pub fn reconciles(&self) -> bool {
        self.read
            == self.written + self.unchanged + self.quarantined + self.skipped.values().sum::<u64>()
    }
}

/// The result of a backfill run.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub run_id: uuid::Uuid,
    pub source: String,
    pub containers: BTreeMap<String, ContainerCounts>,
    pub elapsed_seconds: f64,
}

impl BackfillReport {
    pub fn reconciles(&self) -> bool {
        self.containers.values().all(ContainerCounts::reconciles)
    }
    pub fn quarantined(&self) -> u64 {
        self.containers.values().map(|c| c.quarantined).sum()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("postgresql: {0}")]
    Store(#[from] mystira_domain::RepoError),
}

/// Called after every batch with the container and its counts so far (for progress bars).
pub type Progress<'a> = &'a (dyn Fn(&str, &ContainerCounts) + Send + Sync);

/// Runs the backfill to the end (or to the first error that is not about one document).
pub async fn run_backfill(
    pool: &PgPool,
    source: &dyn DocumentSource,
    config: &BackfillConfig,
    progress: Progress<'_>,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    // Resume only an unfinished run: when the last run finished (or there was none), a new run
    // reads everything again, so it picks up what changed since (cheaply: the version guard
    // skips unchanged documents).
    let last = bookkeeping::load_checkpoint(pool, JOB, RUN_MARKER).await?;
    let resuming = !config.restart && last.is_some_and(|m| !is_done(&m));
    if !resuming {
        bookkeeping::clear_checkpoints(pool, JOB).await?;
        bookkeeping::save_checkpoint(pool, JOB, RUN_MARKER, &serde_json::json!({ "done": false }))
            .await?;
    }
    let scope = serde_json::json!({ "batch_rows": config.batch_rows, "restart": config.restart });
    let run_id = bookkeeping::start_run(pool, JOB, &source.describe(), &scope).await?;
    let mut report = BackfillReport {
        run_id,
        source: source.describe(),
        containers: BTreeMap::new(),
        elapsed_seconds: 0.0,
    };
    let result = copy_all(pool, source, config, progress, &mut report).await;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    let status = match &result {
        Ok(()) if report.reconciles() => "succeeded",
        Ok(()) => "failed",
        Err(_) => "interrupted",
    };
    if result.is_ok() {
        bookkeeping::save_checkpoint(pool, JOB, RUN_MARKER, &serde_json::json!({ "done": true }))
            .await?;
    }
    let counts = serde_json::to_value(&report.containers).unwrap_or_default();
    bookkeeping::finish_run(pool, run_id, status, &counts).await?;
    result.map(|()| report)
}

async fn copy_all(
    pool: &PgPool,
    source: &dyn DocumentSource,
    config: &BackfillConfig,
    progress: Progress<'_>,
    report: &mut BackfillReport,
) -> Result<(), BackfillError> {
    for container in CONTAINERS {
        if !source.has_container(container).await? {
            tracing::info!(container, "container not in source, skipped");
            continue;
        }
        let counts = report.containers.entry(container.to_owned()).or_default();
        copy_container(pool, source, container, config, counts, progress).await?;
    }
    Ok(())
}

async fn copy_container(
    pool: &PgPool,
    source: &dyn DocumentSource,
    container: &str,
    config: &BackfillConfig,
    counts: &mut ContainerCounts,
    progress: Progress<'_>,
) -> Result<(), BackfillError> {
    let saved = bookkeeping::load_checkpoint(pool, JOB, container).await?;
    if saved.as_ref().is_some_and(is_done) {
        tracing::info!(container, "container already complete in an earlier run");
        return Ok(());
    }
    let mut position = saved.and_then(|p| p.get("position").cloned());
    let pacer = Pacer::new(config.max_docs_per_second);
    loop {
        let page = source
            .read_page(container, position.as_ref(), config.batch_rows)
            .await?;
        pacer.wait_for(page.documents.len()).await;
        write_page(pool, container, page.documents, counts).await?;
        match page.next {
            Some(next) => {
                let checkpoint = serde_json::json!({ "position": next });
                bookkeeping::save_checkpoint(pool, JOB, container, &checkpoint).await?;
                position = Some(next);
            }
            None => {
                let checkpoint = serde_json::json!({ "done": true });
                bookkeeping::save_checkpoint(pool, JOB, container, &checkpoint).await?;
                progress(container, counts);
                return Ok(());
            }
        }
        progress(container, counts);
    }
}

fn is_done(checkpoint: &serde_json::Value) -> bool {
    checkpoint.get("done") == Some(&serde_json::Value::Bool(true))
}

/// Maps and writes one page; quarantines what cannot be migrated.
async fn write_page(
    pool: &PgPool,
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
) -> Result<(), BackfillError> {
    let mut accounts = Vec::new();
    let mut profiles = Vec::new();
    let mut signups = Vec::new();
    // raw documents by id, kept only until the write says whether they need the quarantine
    let mut raw_by_id: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for doc in documents {
        counts.read += 1;
        let raw = match doc {
            SourceDocument::Document(v) => v,
            SourceDocument::Malformed {
                locator,
                message,
                raw,
            } => {
                let document = serde_json::json!({ "malformed_line": raw });
                quarantine(
                    pool,
                    container,
                    &locator,
                    "malformed_line",
                    &message,
                    &document,
                    None,
                )
                .await?;
                counts.quarantined += 1;
                continue;
            }
        };
        // names a document without a usable id; ids are how quarantine entries are keyed
        let locator = format!("{container}#no-id-{}", counts.read);
        match map_document(container, &raw, &locator) {
            Mapped::Account(d) => {
                raw_by_id.insert(d.version.document_id.clone(), raw);
                accounts.push(*d);
            }
            Mapped::Profile(d) => {
                raw_by_id.insert(d.version.document_id.clone(), raw);
                profiles.push(*d);
            }
            Mapped::Signup(d) => {
                raw_by_id.insert(d.version.document_id.clone(), raw);
                signups.push(*d);
            }
            Mapped::Reject {
                document_id,
                code,
                message,
                ts,
            } => {
                quarantine(pool, container, &document_id, code, &message, &raw, ts).await?;
                counts.quarantined += 1;
            }
        }
    }
    write_kind(pool, container, &accounts, &raw_by_id, counts).await?;
    write_kind(pool, container, &profiles, &raw_by_id, counts).await?;
    write_kind(pool, container, &signups, &raw_by_id, counts).await?;
    Ok(())
}

async fn write_kind<D: BulkDocument>(
    pool: &PgPool,
    container: &str,
    docs: &[D],
    raw_by_id: &BTreeMap<String, serde_json::Value>,
    counts: &mut ContainerCounts,
) -> Result<(), BackfillError> {
    if docs.is_empty() {
        return Ok(());
    }
    let outcomes = with_retry(|| bulk::write_batch(pool, docs)).await?;
    for (doc, outcome) in docs.iter().zip(outcomes) {
        match outcome {
            WriteOutcome::Written => counts.written += 1,
            WriteOutcome::Unchanged => counts.unchanged += 1,
            WriteOutcome::Failed(e) => {
                let id = &doc.version().document_id;
                let code = failure_code(&e);
                let raw = raw_by_id.get(id).cloned().unwrap_or_default();
                quarantine(
                    pool,
                    container,
                    id,
                    code,
                    &e.to_string(),
                    &raw,
                    Some(doc.version().ts),
                )
                .await?;
                counts.quarantined += 1;
            }
        }
    }
    Ok(())
}

fn failure_code(e: &mystira_domain::RepoError) -> &'static str {
    use mystira_domain::error::ConflictKind;
    match e {
        mystira_domain::RepoError::Invalid(v) => v.code(),
        mystira_domain::RepoError::Conflict { kind, .. } => match kind {
            ConflictKind::DuplicateAuth0UserId => "duplicate_auth0_user_id",
            ConflictKind::DuplicateId => "duplicate_id",
            ConflictKind::MissingReference => "missing_reference",
            _ => "conflict",
        },
        _ => "store_error",
    }
}

async fn quarantine(
    pool: &PgPool,
    container: &str,
    document_id: &str,
    reason_code: &str,
    message: &str,
    document: &serde_json::Value,
    source_ts: Option<i64>,
) -> Result<(), BackfillError> {
    let entry = QuarantinedDocument {
        container,
        document_id,
        reason_code,
        message,
        document,
        source_ts,
    };
    with_retry(|| bookkeeping::quarantine(pool, &entry)).await?;
    tracing::warn!(container, reason_code, "document quarantined");
    Ok(())
}

/// Retries a store call that failed transiently, with exponential back-off, a bounded number
/// of times.
async fn with_retry<T, F, Fut>(mut call: F) -> Result<T, mystira_domain::RepoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, mystira_domain::RepoError>>,
{
    const ATTEMPTS: u32 = 6;
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match call().await {
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "transient store error, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// Spreads reads so that no more than `per_second` documents are read per second.
struct Pacer {
    per_second: Option<u32>,
    started: Instant,
    done: std::sync::atomic::AtomicU64,
}

impl Pacer {
    fn new(per_second: Option<u32>) -> Self {
        Self {
            per_second,
            started: Instant::now(),
            done: 0.into(),
        }
    }

    async fn wait_for(&self, docs: usize) {
        let Some(rate) = self.per_second.filter(|r| *r > 0) else {
            return;
        };
        let done = self
            .done
            .fetch_add(docs as u64, std::sync::atomic::Ordering::Relaxed)
            + docs as u64;
        let due = Duration::from_secs_f64(done as f64 / f64::from(rate));
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}
