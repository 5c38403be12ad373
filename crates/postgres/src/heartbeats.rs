//! Heartbeats of the long-running workers (`migration.worker_heartbeats`): every continuous
//! `replicate` and `relay` process upserts its row every few seconds, also while it waits out
//! a store outage (state `retrying`, with the failure's class). A worker that died, hangs or
//! cannot reach PostgreSQL stops beating, so the age of its row is the signal: `serve`
//! exports the newest beat's age per kind ([`beat_ages`]), `status` lists the rows
//! ([`list`]), and a phase gate asks [`live_workers`].
//!
//! Every time is the server's (`now()`), so ages do not depend on the clocks of the hosts the
//! workers run on. No row holds a message or a value: ids of processes, states and error
//! classes only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use serde::Serialize;
use sqlx::PgExecutor;

use crate::error::map_sqlx_error;

type Result<T> = std::result::Result<T, RepoError>;

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("worker_heartbeats", e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How often a worker beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

/// A beat older than this means the worker is not live (six missed beats).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Rows of workers not heard of for this long are deleted when a worker starts.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Which long-runner a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// `mystira-users replicate` (continuous): Cosmos changes into PostgreSQL.
    Replicate,
    /// `mystira-users relay` (continuous): the outbox into Cosmos.
    Relay,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 2] = [WorkerKind::Replicate, WorkerKind::Relay];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Replicate => "replicate",
            WorkerKind::Relay => "relay",
        }
    }
}

impl std::fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker is doing at its latest beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Working normally.
    Running,
    /// A store is unreachable; the worker is backing off and will try again.
    Retrying,
    /// The worker stopped (SIGINT/SIGTERM, or an error it does not retry).
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Retrying => "retrying",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// Who is beating: one process of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId {
    pub kind: WorkerKind,
    pub host: String,
    pub pid: u32,
    /// `replicate`'s mode (`change-feed`, `watermark`, `auto`); `None` for the relay.
    pub mode: Option<String>,
}

impl WorkerId {
    /// The row's key: `<kind>@<host>:<pid>`.
    pub fn worker(&self) -> String {
        format!("{}@{}:{}", self.kind, self.host, self.pid)
    }
}

/// Creates (or resets) the worker's row at start, and forgets workers not heard of for a day.
pub async fn register(pool: &sqlx::PgPool, id: &WorkerId) -> Result<()> {
    sqlx::query(
        "delete from migration.worker_heartbeats
         where beat_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(millis(FORGET_AFTER))
    .execute(pool)
    .await
    .map_err(map)?;
    sqlx::query(
        "insert into migration.worker_heartbeats
             (worker, kind, host, pid, mode, started_at, beat_at, state)
         values ($1, $2, $3, $4, $5, now(), now(), 'running')
         on conflict (worker) do update
         set kind = excluded.kind, host = excluded.host, pid = excluded.pid,
             mode = excluded.mode, started_at = now(), beat_at = now(), state = 'running',
             last_error_class = null, retrying_since = null",
    )
    .bind(id.worker())
    .bind(id.kind.as_str())
    .bind(&id.host)
    .bind(i32::try_from(id.pid).unwrap_or(i32::MAX))
    .bind(&id.mode)
    .execute(pool)
    .await
    .map_err(map)?;
    Ok(())
}

/// One beat: the worker is alive, in `state`, retrying a failure of class `error_class` (for
/// `Retrying`). Inserts the row when it is missing (deleted, or registering failed while
/// PostgreSQL was down). A failed beat is for the caller to log and skip: a worker that cannot
/// reach PostgreSQL has a stale heartbeat, which is the point.
pub async fn beat<'e>(
    exec: impl PgExecutor<'e>,
    id: &WorkerId,
    state: WorkerState,
    error_class: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "insert into migration.worker_heartbeats
             (worker, kind, host, pid, mode, started_at, beat_at, state, last_error_class,
              retrying_since)
         values ($1, $2, $3, $4, $5, now(), now(), $6, $7,
                 case when $6 = 'retrying' then now() end)
         on conflict (worker) do update
         set beat_at = now(), state = excluded.state,
             last_error_class = coalesce(excluded.last_error_class,
                                         migration.worker_heartbeats.last_error_class),
             retrying_since = case
                 when excluded.state <> 'retrying' then null
                 else coalesce(migration.worker_heartbeats.retrying_since, now()) end",
    )
    .bind(id.worker())
    .bind(id.kind.as_str())
    .bind(&id.host)
    .bind(i32::try_from(id.pid).unwrap_or(i32::MAX))
    .bind(&id.mode)
    .bind(state.as_str())
    .bind(error_class)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// A worker's row as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WorkerHeartbeat {
    pub worker: String,
    pub kind: String,
    pub host: String,
    pub pid: i32,
    pub mode: Option<String>,
    pub started_at: DateTime<Utc>,
    pub beat_at: DateTime<Utc>,
    pub state: String,
    pub last_error_class: Option<String>,
    pub retrying_since: Option<DateTime<Utc>>,
    /// Seconds since `beat_at`, by the server's clock.
    pub age_seconds: f64,
}

impl WorkerHeartbeat {
    /// Beating within `max_age` and not stopped.
    pub fn is_live(&self, max_age: Duration) -> bool {
        self.state != WorkerState::Stopped.as_str() && self.age_seconds <= max_age.as_secs_f64()
    }
}

const COLUMNS: &str = "worker, kind, host, pid, mode, started_at, beat_at, state, \
                       last_error_class, retrying_since, \
                       extract(epoch from now() - beat_at)::float8 as age_seconds";

/// Every worker's row, newest beat first (live and dead: `status` shows both).
pub async fn list<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<WorkerHeartbeat>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from migration.worker_heartbeats order by kind, beat_at desc"
    )))
    .fetch_all(exec)
    .await
    .map_err(map)
}

/// The workers of `kind` that beat within `max_age` and have not stopped (a worker retrying an
/// outage of Cosmos is live: it beats, and resumes by itself). Empty: none is running.
/// [`STALE_AFTER`] is the usual `max_age`.
pub async fn live_workers<'e>(
    exec: impl PgExecutor<'e>,
    kind: WorkerKind,
    max_age: Duration,
) -> Result<Vec<WorkerHeartbeat>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from migration.worker_heartbeats
         where kind = $1 and state <> 'stopped'
           and beat_at >= now() - $2 * interval '1 millisecond'
         order by beat_at desc"
    )))
    .bind(kind.as_str())
    .bind(millis(max_age))
    .fetch_all(exec)
    .await
    .map_err(map)
}

/// Per kind (both, always): seconds since the newest beat of any worker of that kind (a
/// stopped worker's last beat counts: the age grows from its stop), or `None` when no worker of
/// that kind has beaten in the last day; and how many workers of that kind are live and
/// retrying an outage. What `serve` exports.
pub async fn beat_ages<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Vec<(WorkerKind, Option<f64>, i64)>> {
    let rows: Vec<(String, Option<f64>, i64)> = sqlx::query_as(
        "select kind,
                extract(epoch from now() - max(beat_at))::float8,
                count(*) filter (where state = 'retrying'
                                   and beat_at >= now() - $1 * interval '1 millisecond')
         from migration.worker_heartbeats
         group by kind",
    )
    .bind(millis(STALE_AFTER))
    .fetch_all(exec)
    .await
    .map_err(map)?;
    Ok(WorkerKind::ALL
        .into_iter()
        .map(|kind| {
            rows.iter()
                .find(|(k, _, _)| k == kind.as_str())
                .map_or((kind, None, 0), |(_, age, retrying)| {
                    (kind, *age, *retrying)
                })
        })
        .collect())
}
