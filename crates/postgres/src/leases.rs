//! Work ranges handed out as leases (`migration.work_ranges`): how worker tasks and processes,
//! on one machine or many, share one job. A worker takes the lowest open range that nobody
//! holds a live lease on (`for update skip locked`, so takers never block each other), copies
//! it, and records its position and counts as it goes, which also extends the lease. A worker
//! that dies stops extending; when its lease expires another worker takes the range over from
//! the last recorded position.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::error::map_sqlx_error;
use mystira_domain::RepoError;

type Result<T> = std::result::Result<T, RepoError>;

/// Where a range starts and ends, in the source's own terms.
#[derive(Debug, Clone, PartialEq)]
pub struct RangePlan {
    pub start: Value,
    pub end: Option<Value>,
}

/// A range this worker holds.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Lease {
    pub unit: String,
    pub range_no: i32,
    pub range_start: Value,
    pub range_end: Option<Value>,
    /// How far the range has been copied (`None`: not started).
    pub position: Option<Value>,
    pub counts: Value,
}

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("work_ranges", e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts a new run of `job` with `plans` (ranges per unit), or joins the unfinished one that
/// another process (or a killed earlier run) left: returns `true` when it joined. A finished
/// run, or `restart`, is replaced by a new one. Runs under an advisory lock, so processes
/// starting at the same moment agree on one set of ranges.
pub async fn start_or_join(
    pool: &PgPool,
    job: &str,
    restart: bool,
    plans: &[(String, Vec<RangePlan>)],
) -> Result<bool> {
    let mut tx = pool.begin().await.map_err(map)?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('mystira.work_ranges/' || $1))")
        .bind(job)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    let (total, done): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where done) from migration.work_ranges where job = $1",
    )
    .bind(job)
    .fetch_one(&mut *tx)
    .await
    .map_err(map)?;
    let unfinished = total > 0 && done < total;
    if unfinished && !restart {
        tx.commit().await.map_err(map)?;
        return Ok(true);
    }
    sqlx::query("delete from migration.work_ranges where job = $1")
        .bind(job)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    // a new run starts with a fresh read-rate budget (`crate::read_budget`), in the same
    // transaction, so a process joining it cannot reserve from the old one first
    sqlx::query(
        "insert into migration.rate_budgets (job, next_free, updated_at)
         values ($1, clock_timestamp(), clock_timestamp())
         on conflict (job) do update set next_free = excluded.next_free,
                                         updated_at = excluded.updated_at",
    )
    .bind(job)
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    for (unit, ranges) in plans {
        let starts: Vec<Value> = ranges.iter().map(|p| p.start.clone()).collect();
        let ends: Vec<Option<Value>> = ranges.iter().map(|p| p.end.clone()).collect();
        sqlx::query(
            "insert into migration.work_ranges (job, unit, range_no, range_start, range_end)
             select $1, $2, (n - 1)::int, s, e
             from unnest($3::jsonb[], $4::jsonb[]) with ordinality as r(s, e, n)",
        )
        .bind(job)
        .bind(unit)
        .bind(starts)
        .bind(ends)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    }
    tx.commit().await.map_err(map)?;
    Ok(false)
}

/// A session-level advisory lock, held for as long as this value lives. Its connection is
/// closed when the value is dropped (never returned to the pool still holding the lock), and
/// the server releases the lock with the session, also when the process dies.
#[derive(Debug)]
pub struct SessionLock {
    _conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

impl SessionLock {
    /// Waits for the lock named `name` (any text; hashed to the lock key).
    pub async fn acquire(pool: &PgPool, name: &str) -> Result<Self> {
        let mut conn = pool.acquire().await.map_err(map)?;
        conn.close_on_drop();
        sqlx::query("select pg_advisory_lock(hashtext($1))")
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(map)?;
        Ok(Self { _conn: conn })
    }
}

/// Whether the job has ranges, and whether all of them are done.
pub async fn job_state(pool: &PgPool, job: &str) -> Result<Option<bool>> {
    let (total, done): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where done) from migration.work_ranges where job = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .map_err(map)?;
    Ok((total > 0).then_some(total == done))
}

/// Takes the lowest open range of `unit` that has no live lease (or is already `owner`'s).
pub async fn take(
    pool: &PgPool,
    job: &str,
    unit: &str,
    owner: &str,
    lease: Duration,
) -> Result<Option<Lease>> {
    sqlx::query_as(
        "with candidate as (
             select job, unit, range_no from migration.work_ranges
             where job = $1 and unit = $2 and not done
               and (owner is null or owner = $3 or lease_until < now())
             order by range_no
             limit 1
             for update skip locked
         )
         update migration.work_ranges w
         set owner = $3, lease_until = now() + $4 * interval '1 millisecond', updated_at = now()
         from candidate c
         where w.job = c.job and w.unit = c.unit and w.range_no = c.range_no
         returning w.unit, w.range_no, w.range_start, w.range_end, w.position, w.counts",
    )
    .bind(job)
    .bind(unit)
    .bind(owner)
    .bind(millis(lease))
    .fetch_optional(pool)
    .await
    .map_err(map)
}

/// Records how far the range got and what it counted, and extends the lease. Returns `false`
/// when the lease was lost (it expired and another worker took the range): stop working on it.
#[allow(clippy::too_many_arguments)]
pub async fn advance<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    job: &str,
    lease: &Lease,
    owner: &str,
    position: Option<&Value>,
    counts: &Value,
    done: bool,
    extend: Duration,
) -> Result<bool> {
    let updated = sqlx::query(
        "update migration.work_ranges
         set position = $5, counts = $6, done = $7,
             lease_until = now() + $8 * interval '1 millisecond', updated_at = now(),
             owner = case when $7 then null else owner end
         where job = $1 and unit = $2 and range_no = $3 and owner = $4",
    )
    .bind(job)
    .bind(&lease.unit)
    .bind(lease.range_no)
    .bind(owner)
    .bind(position)
    .bind(counts)
    .bind(done)
    .bind(millis(extend))
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(updated.rows_affected() == 1)
}

/// The counts of every range of `unit`, by range number, locked until the transaction ends
/// (for a job that corrects its totals, such as the initial load's upsert pass).
pub async fn unit_counts_for_update(
    conn: &mut sqlx::PgConnection,
    job: &str,
    unit: &str,
) -> Result<Vec<(i32, Value)>> {
    sqlx::query_as(
        "select range_no, counts from migration.work_ranges
         where job = $1 and unit = $2 order by range_no for update",
    )
    .bind(job)
    .bind(unit)
    .fetch_all(&mut *conn)
    .await
    .map_err(map)
}

/// Replaces the counts of one range.
pub async fn set_counts(
    conn: &mut sqlx::PgConnection,
    job: &str,
    unit: &str,
    range_no: i32,
    counts: &Value,
) -> Result<()> {
    sqlx::query(
        "update migration.work_ranges set counts = $4, updated_at = now()
         where job = $1 and unit = $2 and range_no = $3",
    )
    .bind(job)
    .bind(unit)
    .bind(range_no)
    .bind(counts)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

/// Records that the range `lease` holds had everything its source held `ago` before now
/// applied (replication: the moment the feed was read and found caught up, or the start of a
/// watermark pass that completed). False when the lease is no longer ours.
pub async fn mark_caught_up(
    pool: &PgPool,
    job: &str,
    lease: &Lease,
    owner: &str,
    ago: Duration,
) -> Result<bool> {
    let updated = sqlx::query(
        "update migration.work_ranges
         set caught_up_at = now() - $5 * interval '1 millisecond'
         where job = $1 and unit = $2 and range_no = $3 and owner = $4",
    )
    .bind(job)
    .bind(&lease.unit)
    .bind(lease.range_no)
    .bind(owner)
    .bind(millis(ago))
    .execute(pool)
    .await
    .map_err(map)?;
    Ok(updated.rows_affected() == 1)
}

/// Per unit of `jobs`: seconds since its least recently caught-up range caught up (by the
/// server's clock), or `None` while a range of it has never caught up. When several of `jobs`
/// have ranges of a unit (replication ran in one mode, then in another), only the job whose
/// ranges caught up most recently counts: the other's rows stay behind unserved, and their
/// old times would make the lag grow while the running replicator is idle and caught up.
pub async fn caught_up_lag<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    jobs: &[&str],
) -> Result<Vec<(String, Option<f64>)>> {
    let jobs: Vec<String> = jobs.iter().map(|j| (*j).to_owned()).collect();
    sqlx::query_as(
        "with per_job as (
             select unit, bool_or(caught_up_at is null) as never,
                    min(caught_up_at) as oldest, max(caught_up_at) as newest
             from migration.work_ranges
             where job = any($1)
             group by job, unit
         ), current as (
             select distinct on (unit) unit, never, oldest
             from per_job
             order by unit, newest desc nulls last
         )
         select unit,
                case when never then null
                     else extract(epoch from now() - oldest)::float8 end
         from current
         order by unit",
    )
    .bind(&jobs)
    .fetch_all(exec)
    .await
    .map_err(map)
}

/// (ranges, ranges done) of the whole job, every unit together.
pub async fn job_progress<'e>(exec: impl sqlx::PgExecutor<'e>, job: &str) -> Result<(i64, i64)> {
    sqlx::query_as(
        "select count(*), count(*) filter (where done) from migration.work_ranges
         where job = $1",
    )
    .bind(job)
    .fetch_one(exec)
    .await
    .map_err(map)
}

/// (ranges, ranges done) of a unit.
pub async fn unit_progress(pool: &PgPool, job: &str, unit: &str) -> Result<(i64, i64)> {
    sqlx::query_as(
        "select count(*), count(*) filter (where done) from migration.work_ranges
         where job = $1 and unit = $2",
    )
    .bind(job)
    .bind(unit)
    .fetch_one(pool)
    .await
    .map_err(map)
}

/// The counts of every range of the job, by unit (the whole job's totals, whichever worker
/// or process did the work).
pub async fn counts_by_unit(pool: &PgPool, job: &str) -> Result<Vec<(String, Value)>> {
    sqlx::query_as(
        "select unit, coalesce(jsonb_agg(counts order by range_no), '[]'::jsonb)
         from migration.work_ranges where job = $1 group by unit order by unit",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .map_err(map)
}

/// The distinct owners holding leases on unfinished ranges of the job.
pub async fn owners(pool: &PgPool, job: &str) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "select distinct owner from migration.work_ranges
         where job = $1 and not done and owner is not null",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .map_err(map)
}

/// Releases the leases of `owner` at once (it is known to be dead), instead of waiting for
/// them to expire. Returns how many ranges were released.
pub async fn release(pool: &PgPool, job: &str, owner: &str) -> Result<u64> {
    sqlx::query(
        "update migration.work_ranges set owner = null, lease_until = null
         where job = $1 and owner = $2 and not done",
    )
    .bind(job)
    .bind(owner)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
    .map_err(map)
}

/// Of the unit's bounded ranges (those with an end), how many are not done, and how many of
/// those nobody holds a live lease on.
pub async fn bounded_open(pool: &PgPool, job: &str, unit: &str) -> Result<(i64, i64)> {
    sqlx::query_as(
        "select count(*), count(*) filter (where owner is null or lease_until < now())
         from migration.work_ranges
         where job = $1 and unit = $2 and not done
           and range_end is not null and range_end <> 'null'::jsonb",
    )
    .bind(job)
    .bind(unit)
    .fetch_one(pool)
    .await
    .map_err(map)
}

/// Hands `lease` back unfinished (its position stays), so that any worker may take it again.
pub async fn give_back(pool: &PgPool, job: &str, lease: &Lease, owner: &str) -> Result<()> {
    sqlx::query(
        "update migration.work_ranges set owner = null, lease_until = null, updated_at = now()
         where job = $1 and unit = $2 and range_no = $3 and owner = $4 and not done",
    )
    .bind(job)
    .bind(&lease.unit)
    .bind(lease.range_no)
    .bind(owner)
    .execute(pool)
    .await
    .map_err(map)?;
    Ok(())
}
