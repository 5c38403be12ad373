//! The retry journal (`migration.retry_journal`): phase-1 writes that Cosmos (the primary) has
//! taken and PostgreSQL has not yet. Each entry holds the document exactly as Cosmos stored it
//! (or, for a delete, its id, key and time), so replaying it goes through the backfill's version
//! guard: replaying twice, or after a newer copy landed, changes nothing.
//!
//! Replayers claim due entries with `for update skip locked`, so any number of them can run; a
//! failed attempt is deferred with a growing delay and its failure class (never a value).

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::map_sqlx_error;

type Result<T> = std::result::Result<T, RepoError>;

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("retry_journal", e)
}

/// What a journal entry replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum JournalOp {
    /// Copy the document (as Cosmos stored it, with `_ts` and `_etag`).
    Upsert { document: serde_json::Value },
    /// Apply a delete seen at `source_ts` (epoch seconds).
    Delete { key: Uuid, source_ts: i64 },
}

/// One write to replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub container: String,
    pub document_id: String,
    #[serde(flatten)]
    pub op: JournalOp,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub id: i64,
    pub record: JournalRecord,
    pub attempts: i32,
}

/// Appends records (one statement); `origin` says where they come from (`router`, or
/// `file:<name>` for entries moved from a local journal file).
pub async fn append<'e>(
    exec: impl PgExecutor<'e>,
    records: &[JournalRecord],
    origin: &str,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&JournalRecord) -> Option<String>| -> Vec<Option<String>> {
        records.iter().map(f).collect()
    };
    let containers: Vec<String> = records.iter().map(|r| r.container.clone()).collect();
    let ids: Vec<String> = records.iter().map(|r| r.document_id.clone()).collect();
    let ops = column(|r| {
        Some(match r.op {
            JournalOp::Upsert { .. } => "upsert".to_owned(),
            JournalOp::Delete { .. } => "delete".to_owned(),
        })
    });
    let documents: Vec<Option<serde_json::Value>> = records
        .iter()
        .map(|r| match &r.op {
            JournalOp::Upsert { document } => Some(document.clone()),
            JournalOp::Delete { .. } => None,
        })
        .collect();
    let keys: Vec<Option<Uuid>> = records
        .iter()
        .map(|r| match r.op {
            JournalOp::Delete { key, .. } => Some(key),
            JournalOp::Upsert { .. } => None,
        })
        .collect();
    let source_ts: Vec<Option<i64>> = records
        .iter()
        .map(|r| match &r.op {
            JournalOp::Delete { source_ts, .. } => Some(*source_ts),
            JournalOp::Upsert { document } => document.get("_ts").and_then(|t| t.as_i64()),
        })
        .collect();
    sqlx::query(
        "insert into migration.retry_journal
             (container, document_id, op, document, key, source_ts, origin)
         select c, d, o, doc, k, t, $7
         from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::uuid[], $6::int8[])
             as x(c, d, o, doc, k, t)",
    )
    .bind(containers)
    .bind(ids)
    .bind(ops)
    .bind(documents)
    .bind(keys)
    .bind(source_ts)
    .bind(origin)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// Claims up to `limit` due entries, oldest first, locking them for the caller's transaction
/// (other replayers skip them).
pub async fn claim_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<JournalEntry>> {
    type Row = (
        i64,
        String,
        String,
        String,
        Option<serde_json::Value>,
        Option<Uuid>,
        Option<i64>,
        i32,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select id, container, document_id, op, document, key, source_ts, attempts
         from migration.retry_journal
         where next_attempt_at <= now()
         order by id
         limit $1
         for update skip locked",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(map)?;
    rows.into_iter()
        .map(
            |(id, container, document_id, op, document, key, ts, attempts)| {
                let op = match (op.as_str(), document, key, ts) {
                    ("upsert", Some(document), _, _) => JournalOp::Upsert { document },
                    ("delete", None, Some(key), Some(source_ts)) => {
                        JournalOp::Delete { key, source_ts }
                    }
                    _ => {
                        return Err(RepoError::Store(format!(
                            "retry journal entry {id} is malformed (op, document, key, source_ts)"
                        )));
                    }
                };
                Ok(JournalEntry {
                    id,
                    record: JournalRecord {
                        container,
                        document_id,
                        op,
                    },
                    attempts,
                })
            },
        )
        .collect()
}

/// Removes entries that have landed.
pub async fn remove(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
    sqlx::query("delete from migration.retry_journal where id = any($1)")
        .bind(ids)
        .execute(conn)
        .await
        .map_err(map)?;
    Ok(())
}

/// Defers an entry whose replay failed: one more attempt counted, the failure class kept, and
/// the next attempt after `delay_ms`.
pub async fn defer(
    conn: &mut PgConnection,
    id: i64,
    error_class: &str,
    delay_ms: i64,
) -> Result<()> {
    sqlx::query(
        "update migration.retry_journal
         set attempts = attempts + 1, last_error = $2,
             next_attempt_at = now() + make_interval(secs => $3::float8 / 1000)
         where id = $1",
    )
    .bind(id)
    .bind(error_class)
    .bind(delay_ms)
    .execute(conn)
    .await
    .map_err(map)?;
    Ok(())
}

/// How many entries wait, and since when the oldest does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Depth {
    pub entries: i64,
    pub oldest: Option<DateTime<Utc>>,
}

/// The journal's depth.
pub async fn depth<'e>(exec: impl PgExecutor<'e>) -> Result<Depth> {
    let (entries, oldest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("select count(*), min(enqueued_at) from migration.retry_journal")
            .fetch_one(exec)
            .await
            .map_err(map)?;
    Ok(Depth { entries, oldest })
}

/// One waiting entry as an operator sees it: where it is from and how its replays went, never
/// the document it carries (its values are personal data).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Waiting {
    pub id: i64,
    pub container: String,
    pub document_id: String,
    pub key: Option<Uuid>,
    /// `upsert` or `delete`.
    pub op: String,
    /// `router`, or `file:<name>` for an entry moved from a local journal file.
    pub origin: String,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: i32,
    /// The failure class of the last replay (never a value).
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

/// The oldest `limit` entries, oldest first.
pub async fn oldest<'e>(exec: impl PgExecutor<'e>, limit: i64) -> Result<Vec<Waiting>> {
    sqlx::query_as(
        "select id, container, document_id, key, op, origin, enqueued_at, attempts, last_error,
                next_attempt_at
         from migration.retry_journal order by id limit $1",
    )
    .bind(limit)
    .fetch_all(exec)
    .await
    .map_err(map)
}
