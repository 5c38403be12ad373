//! The outbox (`migration.outbox`): aggregates whose PostgreSQL state Cosmos has not taken yet.
//! Rows are written by a trigger in the same transaction as the change (see the migration
//! `20261203000001_dual_write.sql`), so no change can commit without one.
//!
//! Delivery of one aggregate happens inside a [`Delivery`]: a transaction holding a
//! transaction-scoped advisory lock on the aggregate, so that deliveries of one aggregate, from
//! any number of relays and routers, happen one at a time; each reads the state afresh after
//! taking the lock, so Cosmos only ever moves forward. The rows pending when the lock was taken
//! are removed when the delivery commits; rows added meanwhile stay for the next delivery.

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use serde::Serialize;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::map_sqlx_error;

type Result<T> = std::result::Result<T, RepoError>;

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("outbox", e)
}

/// An aggregate with pending outbox rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingAggregate {
    pub container: String,
    pub key: Uuid,
}

/// Up to `limit` aggregates that have rows due, oldest first. Not locked: a [`Delivery`] takes
/// the lock, and finds nothing to do if another relay delivered in between.
pub async fn due_aggregates<'e>(
    exec: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<PendingAggregate>> {
    let rows: Vec<(String, Uuid)> = sqlx::query_as(
        "select container, key from migration.outbox
         where next_attempt_at <= now()
         group by container, key
         order by min(id)
         limit $1",
    )
    .bind(limit)
    .fetch_all(exec)
    .await
    .map_err(map)?;
    Ok(rows
        .into_iter()
        .map(|(container, key)| PendingAggregate { container, key })
        .collect())
}

/// One delivery of one aggregate (see the module docs). Dropping it without
/// [`Delivery::delivered`] rolls back: the rows stay.
#[derive(Debug)]
pub struct Delivery {
    tx: Transaction<'static, Postgres>,
    pub aggregate: PendingAggregate,
    /// The rows pending when the lock was taken.
    pub row_ids: Vec<i64>,
}

impl Delivery {
    /// Takes the aggregate's lock (waiting for a delivery in progress elsewhere) and the rows
    /// pending now. `None` when nothing is pending (someone delivered it already).
    pub async fn begin(pool: &PgPool, aggregate: PendingAggregate) -> Result<Option<Self>> {
        let mut tx = pool.begin().await.map_err(map)?;
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 0))")
            .bind(&aggregate.container)
            .bind(aggregate.key)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        let row_ids: Vec<i64> = sqlx::query_scalar(
            "select id from migration.outbox where container = $1 and key = $2
             order by id for update",
        )
        .bind(&aggregate.container)
        .bind(aggregate.key)
        .fetch_all(&mut *tx)
        .await
        .map_err(map)?;
        if row_ids.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            tx,
            aggregate,
            row_ids,
        }))
    }

    /// The id the aggregate's document was last seen under in Cosmos, if any (for a delete).
    pub async fn known_document_id(&mut self) -> Result<Option<String>> {
        sqlx::query_scalar(
            "select document_id from migration.document_versions
             where container = $1 and key = $2 order by written_at desc limit 1",
        )
        .bind(&self.aggregate.container)
        .bind(self.aggregate.key)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map)
    }

    /// The delivery's connection, inside its transaction: read the aggregate's state here,
    /// after the lock (see `crate::aggregates`).
    pub fn connection(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Commits a successful delivery: records the version Cosmos now holds for the document
    /// (`None` when it was deleted), so that copies of that same version coming back from Cosmos
    /// (the change feed) are recognised as already applied, and removes the rows.
    pub async fn delivered(mut self, version: Option<DeliveredVersion>) -> Result<()> {
        match version {
            Some(v) => {
                sqlx::query(
                    "insert into migration.document_versions as v
                         (container, document_id, key, source_ts, source_etag, deleted)
                     values ($1, $2, $3, $4, $5, false)
                     on conflict (container, document_id) do update set
                         key = excluded.key, source_ts = excluded.source_ts,
                         source_etag = excluded.source_etag, deleted = false, written_at = now()
                     where v.source_ts <= excluded.source_ts",
                )
                .bind(&self.aggregate.container)
                .bind(&v.document_id)
                .bind(self.aggregate.key)
                .bind(v.ts)
                .bind(&v.etag)
                .execute(&mut *self.tx)
                .await
                .map_err(map)?;
            }
            None => {
                sqlx::query(
                    "update migration.document_versions
                     set deleted = true, source_etag = null, written_at = now(),
                         source_ts = greatest(source_ts, extract(epoch from now())::int8)
                     where container = $1 and key = $2",
                )
                .bind(&self.aggregate.container)
                .bind(self.aggregate.key)
                .execute(&mut *self.tx)
                .await
                .map_err(map)?;
            }
        }
        sqlx::query("delete from migration.outbox where id = any($1)")
            .bind(&self.row_ids)
            .execute(&mut *self.tx)
            .await
            .map_err(map)?;
        self.tx.commit().await.map_err(map)
    }
}

/// The version of a document in Cosmos after a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredVersion {
    pub document_id: String,
    pub ts: i64,
    pub etag: Option<String>,
}

/// Defers an aggregate whose delivery failed: every row of it counts one more attempt, keeps the
/// failure class (never a value), and waits before the next attempt, 1 s doubling with the
/// attempts already made to at most 5 minutes. Returns the attempts now counted.
pub async fn defer<'e>(
    exec: impl PgExecutor<'e>,
    aggregate: &PendingAggregate,
    error_class: &str,
) -> Result<i32> {
    let attempts: Option<i32> = sqlx::query_scalar(
        "with deferred as (
             update migration.outbox
             set attempts = attempts + 1, last_error = $3,
                 next_attempt_at = now()
                     + make_interval(secs => least(300, power(2, least(attempts, 9))))
             where container = $1 and key = $2
             returning attempts
         )
         select max(attempts) from deferred",
    )
    .bind(&aggregate.container)
    .bind(aggregate.key)
    .bind(error_class)
    .fetch_one(exec)
    .await
    .map_err(map)?;
    Ok(attempts.unwrap_or(0))
}

/// How many rows wait, for how many aggregates, and since when the oldest does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Depth {
    pub rows: i64,
    pub aggregates: i64,
    pub oldest: Option<DateTime<Utc>>,
}

/// The outbox's depth.
pub async fn depth<'e>(exec: impl PgExecutor<'e>) -> Result<Depth> {
    let (rows, aggregates, oldest): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), count(distinct (container, key)), min(enqueued_at) from migration.outbox",
    )
    .fetch_one(exec)
    .await
    .map_err(map)?;
    Ok(Depth {
        rows,
        aggregates,
        oldest,
    })
}

/// Whether the aggregate `(container, key)` has pending rows: PostgreSQL holds a change of it
/// that Cosmos has not taken yet. One index lookup (`idx_outbox_aggregate`).
pub async fn has_pending<'e>(
    exec: impl PgExecutor<'e>,
    container: &str,
    key: Uuid,
) -> Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from migration.outbox where container = $1 and key = $2)",
    )
    .bind(container)
    .bind(key)
    .fetch_one(exec)
    .await
    .map_err(map)
}

/// Adds an outbox row for an aggregate by hand (a repair towards Cosmos: the relay then
/// delivers PostgreSQL's state of it, by the same path as every other delivery).
pub async fn enqueue<'e>(exec: impl PgExecutor<'e>, container: &str, key: Uuid) -> Result<()> {
    sqlx::query("insert into migration.outbox (container, key) values ($1, $2)")
        .bind(container)
        .bind(key)
        .execute(exec)
        .await
        .map_err(map)?;
    Ok(())
}

/// One aggregate waiting for delivery to Cosmos, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WaitingAggregate {
    pub container: String,
    pub key: Uuid,
    /// Outbox rows for it (changes since its last delivery).
    pub rows: i64,
    pub oldest: DateTime<Utc>,
    /// The most attempts any of its rows has had.
    pub attempts: i32,
    /// The failure class of the newest failed attempt (never a value).
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

/// The `limit` aggregates waiting longest, oldest first.
pub async fn oldest_aggregates<'e>(
    exec: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<WaitingAggregate>> {
    sqlx::query_as(
        "select container, key, count(*) as rows, min(enqueued_at) as oldest,
                max(attempts) as attempts,
                (array_agg(last_error order by id desc) filter (where last_error is not null))[1]
                    as last_error,
                min(next_attempt_at) as next_attempt_at
         from migration.outbox
         group by container, key
         order by min(id)
         limit $1",
    )
    .bind(limit)
    .fetch_all(exec)
    .await
    .map_err(map)
}
