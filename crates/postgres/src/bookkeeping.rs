//! Migration bookkeeping in the `migration` schema: job runs and their counts, resume
//! checkpoints, and the quarantine of documents that could not be migrated.
//!
//! Nothing here stores personal data outside `quarantine.document` (the raw document, kept so
//! an operator can fix and retry it); messages name fields and rules, never values.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::map_sqlx_error;
use mystira_domain::RepoError;

type Result<T> = std::result::Result<T, RepoError>;

/// Records the start of a job run; returns its id.
pub async fn start_run(
    pool: &PgPool,
    job: &str,
    source: &str,
    scope: &serde_json::Value,
) -> Result<Uuid> {
    sqlx::query_scalar(
        "insert into migration.runs (job, source, scope) values ($1, $2, $3) returning id",
    )
    .bind(job)
    .bind(source)
    .bind(scope)
    .fetch_one(pool)
    .await
    .map_err(|e| map_sqlx_error("runs", e))
}

/// Records the end of a run with its final counts.
pub async fn finish_run(
    pool: &PgPool,
    run_id: Uuid,
    status: &str,
    counts: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "update migration.runs set finished_at = now(), status = $2, counts = $3 where id = $1",
    )
    .bind(run_id)
    .bind(status)
    .bind(counts)
    .execute(pool)
    .await
    .map_err(|e| map_sqlx_error("runs", e))?;
    Ok(())
}

/// Closes as `abandoned` the runs of `job` still marked `running` whose process is gone: a
/// run records its process's lease owner (`scope.owner`); it is abandoned once it is older
/// than `lease` and no lease of that owner is live. Called when a run starts, so a run killed
/// with -9 is closed by the next one (one statement: several processes starting at once agree).
/// A live process misjudged between two leases is harmless: its own `finish_run` sets the
/// final status whatever this wrote. Returns how many runs were closed.
pub async fn abandon_dead_runs(
    pool: &PgPool,
    job: &str,
    lease: std::time::Duration,
) -> Result<u64> {
    sqlx::query(
        "update migration.runs r set status = 'abandoned', finished_at = now()
         where r.job = $1 and r.status = 'running' and r.scope ? 'owner'
           and r.started_at < now() - make_interval(secs => $2)
           and not exists (
               select 1 from migration.work_ranges w
               where w.job = r.job and w.lease_until > now()
                 and (w.owner = r.scope->>'owner' or w.owner like (r.scope->>'owner') || '/%'))",
    )
    .bind(job)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| map_sqlx_error("runs", e))
}

/// The saved position of `unit` in `job`, if any.
pub async fn load_checkpoint<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
) -> Result<Option<serde_json::Value>> {
    sqlx::query_scalar("select position from migration.checkpoints where job = $1 and unit = $2")
        .bind(job)
        .bind(unit)
        .fetch_optional(exec)
        .await
        .map_err(|e| map_sqlx_error("checkpoints", e))
}

/// Saves the position of `unit` in `job`, replacing the previous one.
pub async fn save_checkpoint<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    position: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "insert into migration.checkpoints (job, unit, position) values ($1, $2, $3)
         on conflict (job, unit) do update set position = excluded.position, updated_at = now()",
    )
    .bind(job)
    .bind(unit)
    .bind(position)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx_error("checkpoints", e))?;
    Ok(())
}

/// Forgets every checkpoint of `job` (a fresh start).
pub async fn clear_checkpoints(pool: &PgPool, job: &str) -> Result<u64> {
    sqlx::query("delete from migration.checkpoints where job = $1")
        .bind(job)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| map_sqlx_error("checkpoints", e))
}

/// A document that could not be migrated.
#[derive(Debug, Clone)]
pub struct QuarantinedDocument<'a> {
    pub container: &'a str,
    pub document_id: &'a str,
    pub reason_code: &'a str,
    /// Names the field and the rule; must not contain the document's values.
    pub message: &'a str,
    pub document: &'a serde_json::Value,
    pub source_ts: Option<i64>,
}

/// The one property of the stored form of a quarantined document that holds a NUL character
/// (U+0000): its JSON text, in which every NUL is the escape `\u0000`. `jsonb` refuses a NUL
/// in any string or name (SQLSTATE 22P05), and a quarantine write that failed would stop the
/// whole job over the one document it was meant to set aside. [`quarantined_document`] and
/// [`open_quarantined_documents`] give the document back as it was.
pub const DOCUMENT_JSON_TEXT: &str = "document_json_text_with_nul";

/// What `migration.quarantine.document` stores for `document`: the document itself, or, when
/// it holds a NUL character anywhere, `{DOCUMENT_JSON_TEXT: "<its JSON text>"}`.
pub fn storable_document(document: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    if holds_nul(document) {
        // serde_json writes a NUL as the six characters `\u0000`: the text holds none
        let text = serde_json::to_string(document).unwrap_or_default();
        std::borrow::Cow::Owned(serde_json::json!({ DOCUMENT_JSON_TEXT: text }))
    } else {
        std::borrow::Cow::Borrowed(document)
    }
}

/// The document [`storable_document`] stored as `stored`.
pub fn document_from_stored(stored: serde_json::Value) -> serde_json::Value {
    let text = match &stored {
        serde_json::Value::Object(map) if map.len() == 1 => map
            .get(DOCUMENT_JSON_TEXT)
            .and_then(serde_json::Value::as_str),
        _ => None,
    };
    // only a text that parses and holds a NUL was written by `storable_document`
    match text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
        Some(document) if holds_nul(&document) => document,
        _ => stored,
    }
}

fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// `text` with each NUL written as `\u0000`, for the text columns of an entry (a document
/// id or message is not expected to hold one; this keeps the entry writable if one does).
fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Puts a document in quarantine, or refreshes its entry (new reason, new copy, one more
/// attempt, open again) if it is already there. A document holding a NUL character is stored
/// in the form [`storable_document`] gives, so the entry can always be written.
pub async fn quarantine<'e>(
    exec: impl PgExecutor<'e>,
    doc: &QuarantinedDocument<'_>,
) -> Result<()> {
    let document = storable_document(doc.document);
    sqlx::query(
        "insert into migration.quarantine
             (container, document_id, reason_code, message, document, source_ts)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (container, document_id) do update set
             reason_code = excluded.reason_code,
             message = excluded.message,
             document = excluded.document,
             source_ts = excluded.source_ts,
             last_seen_at = now(),
             attempts = migration.quarantine.attempts + 1,
             resolved_at = null",
    )
    .bind(doc.container)
    .bind(without_nul(doc.document_id).as_ref())
    .bind(doc.reason_code)
    .bind(without_nul(doc.message).as_ref())
    .bind(document.as_ref())
    .bind(doc.source_ts)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))?;
    Ok(())
}

/// The quarantine entries of a page's documents (`$1` the container, `$2` the ids), one
/// primary-key descent per id whatever the statistics (see [`resolve_quarantined`]): the
/// `from` of a select whose rows are `e`.
macro_rules! entries_by_key {
    () => {
        " from unnest($2::text[]) as d(id)
          cross join lateral (select *, ctid from migration.quarantine
                              where container = $1 and document_id = d.id offset 0) as e "
    };
}

/// The open quarantine entries of `document_ids`: (document id, reason code, the quarantined
/// copy's `_ts`), read by key (see [`resolve_quarantined`]).
pub async fn open_entries<'e>(
    exec: impl PgExecutor<'e>,
    container: &str,
    document_ids: &[String],
) -> Result<Vec<(String, String, Option<i64>)>> {
    sqlx::query_as(concat!(
        "select e.document_id, e.reason_code, e.source_ts",
        entries_by_key!(),
        "where e.resolved_at is null"
    ))
    .bind(container)
    .bind(document_ids)
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))
}

/// Marks quarantine entries resolved: the documents have now been migrated. Returns how many
/// entries the documents have, resolved now or earlier.
pub async fn resolve_quarantined<'e>(
    exec: impl PgExecutor<'e>,
    container: &str,
    document_ids: &[String],
) -> Result<u64> {
    // One descent of the primary key per id, whatever the number of entries and whatever the
    // statistics, in a lateral subquery the planner may not flatten (`offset 0`: both of the
    // key's columns equal, one row expected), and the update by row address (a TID scan). No
    // condition names `resolved_at`, so the open-entries index (partial) cannot serve it; an
    // entry resolved already keeps its time. Each earlier form read a whole table per page at
    // some statistics (issue 33): `document_id = any($2) and resolved_at is null` went over
    // the open-entries index, comparing every open entry with every id (25 ms a page at 36,000
    // never analyzed, 92 s of a million-account initial load); a join with `unnest($2)`
    // hashed every open entry (7.4 ms a page, 27 s of that load); and
    // `document_id = any(array(select unnest($2)))`, the key's second column, was left out of
    // the index condition and used as a filter over every entry of the container when the
    // quarantine had last been analyzed while it held another container's entries (965 ms a
    // page at 36,000).
    sqlx::query(concat!(
        "update migration.quarantine set resolved_at = coalesce(resolved_at, now())
         where ctid = any(array(select e.ctid",
        entries_by_key!(),
        "))"
    ))
    .bind(container)
    .bind(document_ids)
    .execute(exec)
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| map_sqlx_error("quarantine", e))
}

/// How many entries are open, by container and reason code (what `status` reports).
pub async fn open_quarantine_counts<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "select container, reason_code, count(*) from migration.quarantine
         where resolved_at is null group by container, reason_code",
    )
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))
}

/// One quarantine entry, as an operator sees it (without the document unless asked).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QuarantineEntry {
    pub container: String,
    pub document_id: String,
    pub reason_code: String,
    pub message: String,
    pub source_ts: Option<i64>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub attempts: i32,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Open (unresolved) quarantine entries, optionally of one container or reason, oldest first.
pub async fn list_quarantine(
    pool: &PgPool,
    container: Option<&str>,
    reason_code: Option<&str>,
    include_resolved: bool,
    limit: i64,
) -> Result<Vec<QuarantineEntry>> {
    sqlx::query_as(
        "select container, document_id, reason_code, message, source_ts, first_seen_at,
                last_seen_at, attempts, resolved_at
         from migration.quarantine
         where ($1::text is null or container = $1)
           and ($2::text is null or reason_code = $2)
           and ($3 or resolved_at is null)
         order by first_seen_at, container, document_id
         limit $4",
    )
    .bind(container)
    .bind(reason_code)
    .bind(include_resolved)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))
}

/// The raw document of a quarantine entry.
pub async fn quarantined_document(
    pool: &PgPool,
    container: &str,
    document_id: &str,
) -> Result<Option<(QuarantineEntry, serde_json::Value)>> {
    let entry: Option<QuarantineEntry> = sqlx::query_as(
        "select container, document_id, reason_code, message, source_ts, first_seen_at,
                last_seen_at, attempts, resolved_at
         from migration.quarantine where container = $1 and document_id = $2",
    )
    .bind(container)
    .bind(document_id)
    .fetch_optional(pool)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))?;
    let Some(entry) = entry else { return Ok(None) };
    let doc: serde_json::Value = sqlx::query_scalar(
        "select document from migration.quarantine where container = $1 and document_id = $2",
    )
    .bind(container)
    .bind(document_id)
    .fetch_one(pool)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))?;
    Ok(Some((entry, document_from_stored(doc))))
}

/// Open quarantine entries' documents, in (container, document id) order after `after`, for
/// retrying them.
pub async fn open_quarantined_documents(
    pool: &PgPool,
    container: Option<&str>,
    reason_code: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<(String, String, serde_json::Value)>> {
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "select container, document_id, document from migration.quarantine
         where resolved_at is null
           and ($1::text is null or container = $1)
           and ($2::text is null or reason_code = $2)
           and ($3::text is null or (container, document_id) > ($3, $4))
         order by container, document_id
         limit $5",
    )
    .bind(container)
    .bind(reason_code)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx_error("quarantine", e))?;
    Ok(rows
        .into_iter()
        .map(|(c, d, document)| (c, d, document_from_stored(document)))
        .collect())
}
