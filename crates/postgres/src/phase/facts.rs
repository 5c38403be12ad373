//! The facts the gates decide on (job runs, verify outcomes by direction, phase-3 exits,
//! whether an account exists, the retry journal and the outbox), generic over the executor so
//! a gate reads them inside the locked transaction; and the runs the admin views list.

use std::fmt;

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::map_sqlx_error;

/// A job run of `migration.runs`, as the gates see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub id: Uuid,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The most recently started run of `job`.
pub async fn latest_run<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
) -> Result<Option<RunSummary>, RepoError> {
    type RunRow = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);
    let row: Option<RunRow> = sqlx::query_as(
        "select id, status, started_at, finished_at from migration.runs
         where job = $1 order by started_at desc, id desc limit 1",
    )
    .bind(job)
    .fetch_optional(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))?;
    Ok(row.map(|(id, status, started_at, finished_at)| RunSummary {
        id,
        status,
        started_at,
        finished_at,
    }))
}

/// A run of `migration.runs` with what it recorded: its counts (and, for verify, its outcome)
/// and its scope (what it covered, how it was configured; never a secret or a personal value).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RunRecord {
    pub id: Uuid,
    pub source: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: serde_json::Value,
    pub scope: serde_json::Value,
}

/// The newest `limit` runs of `job`, newest first.
pub async fn recent_runs<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    limit: i64,
) -> Result<Vec<RunRecord>, RepoError> {
    sqlx::query_as(
        "select id, source, status, started_at, finished_at, counts, scope from migration.runs
         where job = $1 order by started_at desc, id desc limit $2",
    )
    .bind(job)
    .bind(limit)
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))
}

/// Which way a verify compared, as its run records it (`scope.direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyDirection {
    /// PostgreSQL must hold what Cosmos holds (`verify`). A run recorded without a direction
    /// (before runs recorded one) counts as this one.
    #[default]
    CosmosToPg,
    /// Cosmos must hold what PostgreSQL holds (`verify --direction pg-to-cosmos`).
    PgToCosmos,
}

impl VerifyDirection {
    /// The name in `scope.direction` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::CosmosToPg => "cosmos-to-pg",
            Self::PgToCosmos => "pg-to-cosmos",
        }
    }
}

impl fmt::Display for VerifyDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the recorded verify runs (job `verify`) of one direction say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VerifyFacts {
    /// When the newest clean verify of the whole key space finished: status `succeeded`,
    /// outcome `clean`, buckets 0 to 255 (a slice proves nothing about the rest).
    pub latest_clean: Option<DateTime<Utc>>,
    /// When the newest such clean verify started.
    pub latest_clean_started: Option<DateTime<Utc>>,
    /// When the newest verify that found drift (status `failed`, any slice) finished.
    pub latest_drift: Option<DateTime<Utc>>,
}

/// Reads [`VerifyFacts`] of the Cosmos-to-PostgreSQL direction (`verify`). A verify that could
/// not compare (`interrupted`) says nothing either way and is ignored.
pub async fn verify_facts<'e>(exec: impl PgExecutor<'e>) -> Result<VerifyFacts, RepoError> {
    verify_facts_for(exec, VerifyDirection::CosmosToPg, None).await
}

/// Reads [`VerifyFacts`] of one direction; with `clean_started_since`, only clean runs that
/// started at or after that time count as clean (drift counts whenever it finished).
pub async fn verify_facts_for<'e>(
    exec: impl PgExecutor<'e>,
    direction: VerifyDirection,
    clean_started_since: Option<DateTime<Utc>>,
) -> Result<VerifyFacts, RepoError> {
    // `scope` holds the VerifyOptions (first_bucket, last_bucket, direction); a scope without
    // them is the default: the whole key space, Cosmos to PostgreSQL
    type FactsRow = (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let (latest_clean, latest_clean_started, latest_drift): FactsRow = sqlx::query_as(
        "select
             max(finished_at) filter (where whole and ($2::timestamptz is null or started_at >= $2)),
             max(started_at) filter (where whole and ($2::timestamptz is null or started_at >= $2)),
             max(finished_at) filter (where status = 'failed')
         from (
             select r.started_at, r.finished_at, r.status,
                    r.status = 'succeeded'
                    and r.counts->>'outcome' = 'clean'
                    and coalesce((r.scope->>'first_bucket')::int, 0) = 0
                    and coalesce((r.scope->>'last_bucket')::int, 255) = 255 as whole
             from migration.runs r
             where r.job = 'verify' and r.finished_at is not null
               and coalesce(r.scope->>'direction', 'cosmos-to-pg') = $1
         ) v",
    )
    .bind(direction.name())
    .bind(clean_started_since)
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))?;
    Ok(VerifyFacts {
        latest_clean,
        latest_clean_started,
        latest_drift,
    })
}

/// When the domain or any account last left `postgres-only` (the newest audit row from it),
/// if ever.
pub async fn left_postgres_only_at<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Option<DateTime<Utc>>, RepoError> {
    sqlx::query_scalar(
        "select max(changed_at) from migration.phase_transitions
         where from_phase = 'postgres-only' and to_phase <> 'postgres-only'",
    )
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error("phase_transitions", e))
}

/// Whether PostgreSQL holds the account.
pub async fn account_exists<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<bool, RepoError> {
    sqlx::query_scalar("select exists (select 1 from accounts where id = $1)")
        .bind(id)
        .fetch_one(exec)
        .await
        .map_err(|e| map_sqlx_error("accounts", e))
}

/// Rows in `migration.retry_journal`: phase-1 writes PostgreSQL has not taken yet.
pub async fn retry_journal_len<'e>(exec: impl PgExecutor<'e>) -> Result<i64, RepoError> {
    sqlx::query_scalar("select count(*) from migration.retry_journal")
        .fetch_one(exec)
        .await
        .map_err(|e| map_sqlx_error("retry_journal", e))
}

/// What `migration.outbox` holds: PostgreSQL writes Cosmos has not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxBacklog {
    pub rows: i64,
    /// When the oldest row was enqueued.
    pub oldest: Option<DateTime<Utc>>,
}

/// Reads [`OutboxBacklog`].
pub async fn outbox_backlog<'e>(exec: impl PgExecutor<'e>) -> Result<OutboxBacklog, RepoError> {
    let (rows, oldest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("select count(*), min(enqueued_at) from migration.outbox")
            .fetch_one(exec)
            .await
            .map_err(|e| map_sqlx_error("outbox", e))?;
    Ok(OutboxBacklog { rows, oldest })
}
