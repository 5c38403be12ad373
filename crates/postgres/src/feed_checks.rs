//! The change feed's cross-check (`migration.feed_checks`): per replication range, how far a
//! `_ts` probe of the range found the feed complete (`probed_to`), the last verdict, how many
//! probes disagreed, and whether the range is read from the `_ts` watermark instead
//! (`fallback`, auto mode). [`unaccounted`] is the comparison itself: which documents a probe
//! found in Cosmos that PostgreSQL does not account for. Counts and times only: no id or value
//! is stored or returned.

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use serde::Serialize;
use sqlx::PgExecutor;

use crate::error::map_sqlx_error;

type Result<T> = std::result::Result<T, RepoError>;

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("feed_checks", e)
}

/// One range's cross-check state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FeedCheck {
    pub job: String,
    /// The container.
    pub unit: String,
    pub range_no: i32,
    /// Epoch seconds: everything changed below this was accounted for at the last probe that
    /// agreed.
    pub probed_to: Option<i64>,
    pub checked_at: Option<DateTime<Utc>>,
    /// The last probe's verdict (`None`: no probe yet).
    pub agreed: Option<bool>,
    /// Documents the last disagreeing probe found missing from the feed.
    pub missing: i64,
    pub disagreements: i64,
    pub last_disagreement_at: Option<DateTime<Utc>>,
    pub fallback: bool,
}

const COLUMNS: &str = "job, unit, range_no, probed_to, checked_at, agreed, missing, \
                       disagreements, last_disagreement_at, fallback";

/// A range's state, if it was ever probed.
pub async fn load<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    range_no: i32,
) -> Result<Option<FeedCheck>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from migration.feed_checks
         where job = $1 and unit = $2 and range_no = $3"
    )))
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .fetch_optional(exec)
    .await
    .map_err(map)
}

/// Every range's state (for `status`).
pub async fn list<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<FeedCheck>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from migration.feed_checks order by job, unit, range_no"
    )))
    .fetch_all(exec)
    .await
    .map_err(map)
}

/// A probe agreed: everything below `probed_to` is accounted for; the range is read from its
/// feed (not in fallback).
pub async fn agreed<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    range_no: i32,
    probed_to: i64,
) -> Result<()> {
    sqlx::query(
        "insert into migration.feed_checks (job, unit, range_no, probed_to, checked_at, agreed)
         values ($1, $2, $3, $4, now(), true)
         on conflict (job, unit, range_no) do update
         set probed_to = greatest(migration.feed_checks.probed_to, excluded.probed_to),
             checked_at = now(), agreed = true, missing = 0, fallback = false",
    )
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .bind(probed_to)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// A probe disagreed: `missing` documents changed since `probed_from` are not accounted for.
/// `probed_to` stays where it was (the next probe reads the same window again), or becomes
/// `probed_from` for a range probed for the first time.
pub async fn disagreed<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    range_no: i32,
    probed_from: i64,
    missing: i64,
    fallback: bool,
) -> Result<()> {
    sqlx::query(
        "insert into migration.feed_checks
             (job, unit, range_no, probed_to, checked_at, agreed, missing, disagreements,
              last_disagreement_at, fallback)
         values ($1, $2, $3, $4, now(), false, $5, 1, now(), $6)
         on conflict (job, unit, range_no) do update
         set checked_at = now(), agreed = false, missing = excluded.missing,
             disagreements = migration.feed_checks.disagreements + 1,
             last_disagreement_at = now(), fallback = excluded.fallback",
    )
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .bind(probed_from)
    .bind(missing)
    .bind(fallback)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// Auto mode reads the range from the watermark because its feed cannot be read here (no
/// probe verdict: the feed was never compared).
pub async fn fell_back<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    range_no: i32,
    probed_from: i64,
) -> Result<()> {
    sqlx::query(
        "insert into migration.feed_checks (job, unit, range_no, probed_to, fallback)
         values ($1, $2, $3, $4, true)
         on conflict (job, unit, range_no) do update set fallback = true",
    )
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .bind(probed_from)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// A watermark pass of a range in fallback completed: everything below `applied_to` is in
/// PostgreSQL, so the next probe (when the feed is tried again) starts there.
pub async fn watermark_applied<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    unit: &str,
    range_no: i32,
    applied_to: i64,
) -> Result<()> {
    sqlx::query(
        "update migration.feed_checks
         set probed_to = greatest(probed_to, $4)
         where job = $1 and unit = $2 and range_no = $3",
    )
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .bind(applied_to)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// Per container of `job`: how many ranges' last probe disagreed (containers probed at least
/// once, with 0 when all agree). What `serve` exports.
pub async fn disagreeing_ranges<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
) -> Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "select unit, count(*) filter (where agreed = false)
         from migration.feed_checks where job = $1
         group by unit order by unit",
    )
    .bind(job)
    .fetch_all(exec)
    .await
    .map_err(map)
}

/// Of the documents a probe found in Cosmos (`ids[i]` at `etags[i]`, changed at `ts[i]`), how
/// many PostgreSQL does not account for: no source version of that document at that `_etag`
/// or a later `_ts`, no quarantine entry of it at that `_ts` or newer (or without one), and no
/// pending outbox row of its aggregate (a copy held back because PostgreSQL has a change Cosmos
/// has not taken: PostgreSQL is the reference for it). Such a document changed in Cosmos and
/// never reached PostgreSQL.
pub async fn unaccounted<'e>(
    exec: impl PgExecutor<'e>,
    container: &str,
    ids: &[String],
    etags: &[String],
    ts: &[i64],
) -> Result<i64> {
    sqlx::query_scalar(
        "select count(*)
         from unnest($2::text[], $3::text[], $4::bigint[]) as p(id, etag, ts)
         where not exists (
                 select 1 from migration.document_versions v
                 where v.container = $1 and v.document_id = p.id
                   and (v.source_etag = p.etag or v.source_ts > p.ts
                        or exists (select 1 from migration.outbox o
                                   where o.container = v.container and o.key = v.key)))
           and not exists (
                 select 1 from migration.quarantine q
                 where q.container = $1 and q.document_id = p.id
                   and coalesce(q.source_ts, p.ts) >= p.ts)",
    )
    .bind(container)
    .bind(ids)
    .bind(etags)
    .bind(ts)
    .fetch_one(exec)
    .await
    .map_err(map)
}
