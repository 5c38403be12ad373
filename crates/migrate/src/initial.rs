//! The backfill's initial-load path (`--load-mode`): when PostgreSQL holds nothing of the
//! domain yet, pages go by binary COPY into tables stripped of their keys, and the keys are
//! built once at the end (`mystira_postgres::initial_load` has the steps and why the result is
//! the upsert path's). This module is the job's side: choosing the path, copying a page with
//! its checkpoint in one transaction, and finishing the load (set aside, rebuild, redo).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use mystira_postgres::bookkeeping;
use mystira_postgres::initial_load::{self, CopyDocument, CopyOutcome, SetAside, Stage};
use mystira_postgres::leases;
use serde::Serialize;
use sqlx::PgPool;

use crate::backfill::BackfillError;
use mystira_copy::apply::{
    MappedPage, Retries, drop_apart, failure_code, map_page_apart, write_page,
};
use mystira_copy::source::{DocumentSource, SourceDocument, read_page_of_ids};
use mystira_copy::{CONTAINERS, ContainerCounts};

/// Which path `migrate` loads by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// The initial load when PostgreSQL holds nothing of the domain, the upserts otherwise.
    #[default]
    Auto,
    /// The initial load, or a usage error saying why it cannot run.
    Initial,
    /// The version-guarded upserts, whatever PostgreSQL holds.
    Upsert,
}

impl std::str::FromStr for LoadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "initial" => Ok(Self::Initial),
            "upsert" => Ok(Self::Upsert),
            other => Err(format!(
                "unknown load mode `{other}`: expected auto, initial or upsert"
            )),
        }
    }
}

/// The path a run took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadPath {
    Initial,
    Upsert,
}

/// What finishing an initial load did (reported by the process that finished it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct InitialLoadSummary {
    /// Documents set aside for the upsert pass, by container (and how many had been copied).
    pub set_aside: SetAside,
    /// The set-based checks and the removal of what they found.
    pub set_aside_seconds: f64,
    pub rebuild_seconds: f64,
    /// The upsert pass over the documents set aside, by container.
    pub redo: BTreeMap<String, ContainerCounts>,
    pub redo_seconds: f64,
}

/// The reason a document read twice or refused by COPY is counted under until the upsert pass
/// reads and applies it again.
pub const DEFERRED: &str = "deferred_to_upsert_pass";

/// Copies one page by the initial-load path: decode and map as the upsert path does, then the
/// COPY, the quarantine entries and the range's checkpoint (`advance`) in one transaction, so a
/// kill loses the page in flight and nothing else. Returns `false` when the lease was lost (the
/// page is then not copied: the new holder copies it).
pub(crate) async fn copy_page(
    pool: &PgPool,
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
    checkpoint: Checkpoint<'_>,
) -> Result<bool, BackfillError> {
    let mut page_counts = ContainerCounts::default();
    let page = map_page_apart(container, documents, &mut page_counts).await;
    // the page's transaction is opened and ended by statements on one connection rather than
    // held as a `Transaction`, so the fallback below can reuse the connection
    let mut conn = CloseUnlessFinished(pool.acquire().await.map_err(store)?, false);
    let attempt = async {
        let tx = begin_page(&mut conn.0).await?;
        let mut tried = page_counts.clone();
        quarantine_rejected(tx, container, &page, &mut tried).await?;
        let (raw, t) = (&page.raw_by_id, &mut tried);
        copy_kind(tx, container, &page.accounts, raw, t).await?;
        copy_kind(tx, container, &page.profiles, raw, t).await?;
        copy_kind(tx, container, &page.signups, raw, t).await?;
        Ok::<_, BackfillError>(tried)
    };
    let tried = match attempt.await {
        Ok(tried) => tried,
        Err(BackfillError::Store(e)) if !e.is_retryable() => {
            // the database refused a row the codec let through: the whole page goes to the
            // upsert pass, which isolates the bad document and quarantines it with its reason
            tracing::warn!(container, error = %e, "COPY refused a page; deferring it");
            end_page(&mut conn.0, "rollback").await?;
            let tx = begin_page(&mut conn.0).await?;
            let mut deferred = page_counts.clone();
            quarantine_rejected(tx, container, &page, &mut deferred).await?;
            let ids: Vec<String> = page.raw_by_id.keys().cloned().collect();
            initial_load::defer(&mut *tx, container, &ids, initial_load::PAGE_REFUSED).await?;
            *deferred.skipped.entry(DEFERRED.to_owned()).or_default() += ids.len() as u64;
            deferred
        }
        // the connection may be inside a failed transaction: the guard closes it
        Err(e) => return Err(e),
    };
    let mut range_counts = checkpoint.counts.clone();
    range_counts.add(&tried);
    let kept = leases::advance(
        &mut *conn.0,
        checkpoint.job,
        checkpoint.lease,
        checkpoint.owner,
        checkpoint.position,
        &serde_json::to_value(&range_counts).unwrap_or_default(),
        checkpoint.done,
        checkpoint.extend,
    )
    .await?;
    if !kept {
        // another worker holds the range now and copies this page itself
        end_page(&mut conn.0, "rollback").await?;
        conn.1 = true;
        return Ok(false);
    }
    end_page(&mut conn.0, "commit").await?;
    conn.1 = true;
    counts.add(&tried);
    drop_apart(page);
    Ok(true)
}

/// A page's connection, closed instead of returned to the pool unless the page's transaction
/// ended cleanly (`.1` set). sqlx's COPY is not cancel-safe: a `PgCopyIn` dropped mid-way
/// (its future cancelled, as when a sibling worker fails or a test stops a run) queues a
/// `CopyFail` without counting the `ReadyForQuery` the server answers with (sqlx-postgres
/// 0.9 `copy.rs`), so the next statement on that connection fails with "expected
/// ParseComplete, got ReadyForQuery".
struct CloseUnlessFinished(sqlx::pool::PoolConnection<sqlx::Postgres>, bool);

impl Drop for CloseUnlessFinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.close_on_drop();
        }
    }
}

/// Opens a page's transaction on `conn` and returns the connection to run it on. Its commit
/// does not wait for the WAL flush (`synchronous_commit = off`): the page's rows and its
/// checkpoint commit together, so a server crash that loses the last commits loses both, and
/// the re-run reads those pages again. A `kill -9` of this process loses nothing committed.
async fn begin_page(
    conn: &mut sqlx::PgConnection,
) -> Result<&mut sqlx::PgConnection, BackfillError> {
    sqlx::raw_sql("begin; set local synchronous_commit = off")
        .execute(&mut *conn)
        .await
        .map_err(store)?;
    Ok(conn)
}

/// Ends the page's transaction: `commit` or `rollback`.
async fn end_page(conn: &mut sqlx::PgConnection, how: &'static str) -> Result<(), BackfillError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(how))
        .execute(conn)
        .await
        .map_err(store)?;
    Ok(())
}

/// What the codec rejected, to the quarantine, in the page's transaction.
async fn quarantine_rejected(
    conn: &mut sqlx::PgConnection,
    container: &str,
    page: &MappedPage,
    counts: &mut ContainerCounts,
) -> Result<(), BackfillError> {
    for r in &page.rejected {
        bookkeeping::quarantine(&mut *conn, &r.entry(container)).await?;
        counts.quarantined += 1;
    }
    Ok(())
}

/// Where a range's checkpoint goes once its page is copied.
pub(crate) struct Checkpoint<'a> {
    pub job: &'a str,
    pub lease: &'a leases::Lease,
    pub owner: &'a str,
    pub position: Option<&'a serde_json::Value>,
    /// The range's counts before this page.
    pub counts: &'a ContainerCounts,
    pub done: bool,
    pub extend: std::time::Duration,
}

fn store(e: sqlx::Error) -> BackfillError {
    BackfillError::Store(mystira_postgres::map_sqlx_error("initial_load", e))
}

async fn copy_kind<D: CopyDocument>(
    conn: &mut sqlx::PgConnection,
    container: &str,
    docs: &[D],
    raw_by_id: &BTreeMap<String, serde_json::Value>,
    counts: &mut ContainerCounts,
) -> Result<(), BackfillError> {
    if docs.is_empty() {
        return Ok(());
    }
    let outcomes = initial_load::copy_documents(&mut *conn, docs).await?;
    for (doc, outcome) in docs.iter().zip(outcomes) {
        match outcome {
            CopyOutcome::Copied => counts.written += 1,
            CopyOutcome::Unchanged => counts.unchanged += 1,
            CopyOutcome::Failed(e) => {
                let id = &doc.version().document_id;
                let document = raw_by_id.get(id).cloned().unwrap_or_default();
                let message = e.to_string();
                bookkeeping::quarantine(
                    &mut *conn,
                    &bookkeeping::QuarantinedDocument {
                        container,
                        document_id: id,
                        reason_code: failure_code(&e),
                        message: &message,
                        document: &document,
                        source_ts: Some(doc.version().ts),
                    },
                )
                .await?;
                counts.quarantined += 1;
            }
        }
    }
    Ok(())
}

/// Finishes the initial load under way, if any (whichever process gets here first; the others
/// wait for it, then find nothing to do): set aside, rebuild, the upsert pass, the end.
pub(crate) async fn finish(
    pool: &PgPool,
    source: &dyn DocumentSource,
    job: &str,
    streams: usize,
    batch_rows: usize,
) -> Result<Option<InitialLoadSummary>, BackfillError> {
    let _lock = leases::SessionLock::acquire(pool, "mystira.initial_load/finish").await?;
    finish_locked(pool, source, job, streams, batch_rows).await
}

async fn finish_locked(
    pool: &PgPool,
    source: &dyn DocumentSource,
    job: &str,
    streams: usize,
    batch_rows: usize,
) -> Result<Option<InitialLoadSummary>, BackfillError> {
    if initial_load::stage(pool).await?.is_none() {
        return Ok(None);
    }
    let started = Instant::now();
    let mut summary = InitialLoadSummary {
        set_aside: initial_load::set_aside(pool).await?,
        ..InitialLoadSummary::default()
    };
    summary.set_aside_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    tracing::info!("initial load: building the indexes, keys and foreign keys");
    initial_load::rebuild(pool, streams).await?;
    summary.rebuild_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for container in CONTAINERS {
        let ids: BTreeSet<String> = initial_load::redo_list(pool, container)
            .await?
            .into_iter()
            .collect();
        if ids.is_empty() {
            continue;
        }
        tracing::info!(
            container,
            documents = ids.len(),
            "initial load: applying the documents set aside through the upsert path"
        );
        let (mut documents, missing) = reread(source, container, &ids).await?;
        // newest first: the document a written rule keeps (the newest by `_ts`) lands before
        // those it beats, so they reach the quarantine with their raw document rather than a
        // snapshot of rows they held for a moment; the result is the same in any order
        documents.sort_by_cached_key(|d| match d {
            SourceDocument::Document(raw) => (
                std::cmp::Reverse(raw.get("_ts").and_then(serde_json::Value::as_i64)),
                std::cmp::Reverse(raw.get("id").and_then(|v| v.as_str()).map(str::to_owned)),
            ),
            SourceDocument::Malformed { .. } => (std::cmp::Reverse(None), std::cmp::Reverse(None)),
        });
        let mut counts = ContainerCounts::default();
        for chunk in chunks(documents, batch_rows) {
            write_page(pool, container, chunk, &mut counts, Retries::Backoff).await?;
        }
        if missing > 0 {
            // gone from a live source since it was copied: nothing is left to apply
            counts.read += missing;
            *counts
                .skipped
                .entry("gone_from_source".to_owned())
                .or_default() += missing;
        }
        counts.set_aside = summary
            .set_aside
            .copied
            .get(container)
            .copied()
            .unwrap_or(0);
        summary.redo.insert(container.to_owned(), counts);
    }
    let mut tx = pool.begin().await.map_err(store)?;
    for (container, redo) in &summary.redo {
        correct_totals(&mut tx, job, container, redo).await?;
    }
    initial_load::finish(&mut tx).await?;
    tx.commit().await.map_err(store)?;
    summary.redo_seconds = started.elapsed().as_secs_f64();
    Ok(Some(summary))
}

/// Makes the job's totals of `container` what the upsert path would have counted: each
/// document read once, with its final outcome. The documents set aside were counted when the
/// COPY read them (`written` when copied, `deferred_to_upsert_pass` otherwise); those counts
/// are taken back from the ranges that hold them, and the upsert pass's outcomes (not its
/// second reads) are added to the container's last range (the job's totals are the sum over
/// ranges, so which range carries them does not matter).
async fn correct_totals(
    conn: &mut sqlx::PgConnection,
    job: &str,
    container: &str,
    redo: &ContainerCounts,
) -> Result<(), BackfillError> {
    let ranges = leases::unit_counts_for_update(&mut *conn, job, container).await?;
    let mut copied_left = redo.set_aside;
    let mut taken = 0;
    let mut corrected: Vec<(i32, ContainerCounts)> = ranges
        .into_iter()
        .map(|(range_no, counts)| {
            let mut counts: ContainerCounts = serde_json::from_value(counts).unwrap_or_default();
            taken += take_back(&mut counts, &mut copied_left);
            (range_no, counts)
        })
        .collect();
    if let Some((_, last)) = corrected.last_mut() {
        last.add(&outcomes_in_place_of(redo, taken));
    }
    for (range_no, counts) in corrected {
        let counts = serde_json::to_value(&counts).unwrap_or_default();
        leases::set_counts(&mut *conn, job, container, range_no, &counts).await?;
    }
    Ok(())
}

/// Takes back from `counts` up to `copied_left` documents counted `written` and every one
/// counted `deferred_to_upsert_pass`; returns how many counts it took.
fn take_back(counts: &mut ContainerCounts, copied_left: &mut u64) -> u64 {
    let written = (*copied_left).min(counts.written);
    counts.written -= written;
    *copied_left -= written;
    written + counts.skipped.remove(DEFERRED).unwrap_or(0)
}

/// The counts that replace `taken` counts of documents set aside: the upsert pass's outcomes
/// (not its reads: each of those documents was counted read when the COPY read it), one per
/// document; a document the run had read more than once (an export line repeated, a live
/// document written during the run) has one outcome, and each of its other reads counts
/// `unchanged`.
fn outcomes_in_place_of(redo: &ContainerCounts, taken: u64) -> ContainerCounts {
    let mut outcomes = ContainerCounts {
        read: 0,
        ..redo.clone()
    };
    let applied =
        redo.written + redo.unchanged + redo.quarantined + redo.skipped.values().sum::<u64>();
    if taken > applied {
        outcomes.unchanged += taken - applied;
    } else {
        // copies the source gained since: read for the first time by the pass
        outcomes.read = applied - taken;
    }
    outcomes
}

/// The same correction of this process's own counts, once the load is finished.
pub(crate) fn correct_process_counts(
    counts: &mut BTreeMap<String, ContainerCounts>,
    summary: &InitialLoadSummary,
) {
    for (container, redo) in &summary.redo {
        let mut copied_left = redo.set_aside;
        let mine = counts.entry(container.clone()).or_default();
        let taken = take_back(mine, &mut copied_left);
        mine.add(&outcomes_in_place_of(redo, taken));
    }
}

fn chunks(documents: Vec<SourceDocument>, size: usize) -> Vec<Vec<SourceDocument>> {
    let mut out = Vec::new();
    let mut rest = documents.into_iter().peekable();
    while rest.peek().is_some() {
        out.push(rest.by_ref().take(size.max(1)).collect());
    }
    out
}

/// The documents of `container` with one of `ids`, read from the source again (the newest copy
/// of each, by `_ts` then `_etag`, as a batch keeps it), and how many of `ids` it no longer
/// has. One document each, so the upsert pass gives each document set aside one outcome.
/// Reads the whole container: sources have no lookup by id yet (planned for the live source:
/// a query by ids). Export lines whose `id` shows in their text that they are not wanted are
/// not parsed.
async fn reread(
    source: &dyn DocumentSource,
    container: &str,
    ids: &BTreeSet<String>,
) -> Result<(Vec<SourceDocument>, u64), BackfillError> {
    let wanted = std::sync::Arc::new(ids.clone());
    let version = |raw: &serde_json::Value| {
        (
            raw.get("_ts").and_then(serde_json::Value::as_i64),
            raw.get("_etag").and_then(|v| v.as_str()).map(str::to_owned),
        )
    };
    let mut found: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut position: Option<serde_json::Value> = None;
    loop {
        let page = read_page_of_ids(source, container, position.as_ref(), 1000, &wanted).await?;
        for doc in page.documents {
            let SourceDocument::Document(raw) = doc else {
                continue;
            };
            let Some(id) = raw.get("id").and_then(|v| v.as_str()).map(str::to_owned) else {
                continue;
            };
            if !ids.contains(&id) {
                continue;
            }
            match found.get(&id) {
                Some(kept) if version(kept) >= version(&raw) => {}
                _ => {
                    found.insert(id, raw);
                }
            }
        }
        match page.next {
            Some(next) => position = Some(next),
            None => break,
        }
    }
    let missing = (ids.len() - found.len()) as u64;
    Ok((
        found.into_values().map(SourceDocument::Document).collect(),
        missing,
    ))
}

/// Chooses the path of a run that is about to start or join, and strips the schema when it
/// is the initial load's first process. `joined`: the run was already under way.
pub(crate) async fn choose_path(
    pool: &PgPool,
    mode: LoadMode,
    joined: bool,
    stage: Option<Stage>,
) -> Result<LoadPath, BackfillError> {
    if stage.is_some() {
        return Ok(LoadPath::Initial);
    }
    if joined || mode == LoadMode::Upsert {
        if joined && mode == LoadMode::Initial {
            return Err(BackfillError::LoadMode(
                "the unfinished run this process joins loads by upserts; run with \
                 --load-mode auto or upsert to finish it, or --restart"
                    .to_owned(),
            ));
        }
        return Ok(LoadPath::Upsert);
    }
    match initial_load::begin(pool).await? {
        None => Ok(LoadPath::Initial),
        Some(reason) if mode == LoadMode::Initial => Err(BackfillError::LoadMode(format!(
            "--load-mode initial needs PostgreSQL to hold nothing of the domain: {reason}"
        ))),
        Some(reason) => {
            tracing::info!(reason, "loading by upserts");
            Ok(LoadPath::Upsert)
        }
    }
}
