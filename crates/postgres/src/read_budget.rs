//! A read-rate budget shared by every process of a job (`migration.rate_budgets`): the
//! backfill's `--max-rps`, so that two processes with `--max-rps 500` read 500 documents a
//! second between them, not 1000.
//!
//! The budget is a time line (virtual scheduling, as in GCRA): reserving `n` documents at `r`
//! per second moves the row's `next_free` on by `n / r` seconds, starting from now when it lies
//! in the past, and answers how long the caller must wait before its reservation has been paid
//! for. One `UPDATE ... RETURNING` per reservation, so a process asks once per page, not once
//! per document; the row lock serialises reservations, never a whole page's work. A new run's
//! budget starts afresh in [`crate::leases::start_or_join`], in the transaction that plans the
//! run, so a process joining it cannot reserve from the old one first.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::map_sqlx_error;
use mystira_domain::RepoError;

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("rate_budgets", e)
}

/// Reserves `documents` at `per_second` from `job`'s budget and returns how long to wait until
/// they are paid for (zero when the budget had time to spare). A budget row that does not
/// exist yet is created.
pub async fn reserve(
    pool: &PgPool,
    job: &str,
    documents: u64,
    per_second: u32,
) -> Result<Duration, RepoError> {
    if documents == 0 || per_second == 0 {
        return Ok(Duration::ZERO);
    }
    let cost = documents as f64 / f64::from(per_second);
    let wait: f64 = sqlx::query_scalar(
        "insert into migration.rate_budgets as b (job, next_free, updated_at)
         values ($1, clock_timestamp() + $2 * interval '1 second', clock_timestamp())
         on conflict (job) do update
           set next_free = greatest(b.next_free, clock_timestamp()) + $2 * interval '1 second',
               updated_at = clock_timestamp()
         returning extract(epoch from (next_free - clock_timestamp()))::float8",
    )
    .bind(job)
    .bind(cost)
    .fetch_one(pool)
    .await
    .map_err(map)?;
    Ok(Duration::try_from_secs_f64(wait.max(0.0)).unwrap_or(Duration::ZERO))
}
