//! The throttle of sign-up requests (per email and per client, `api/signups.rs`): fixed-window
//! rate limits kept in PostgreSQL (`service.rate_limit_hits`), so that every replica of the
//! service counts against one budget. A window is `[start, start + window)` with `start` a
//! multiple of the window since the epoch, by the database's clock (one clock for all
//! replicas). Like every fixed window, a caller can spend up to twice the budget across a
//! window boundary; that is the accepted price of one statement per hit.

use std::time::Duration;

use mystira_domain::RepoError;
use sqlx::PgPool;

use crate::map_sqlx_error;

/// The result of one hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    /// Whether the hit is within the budget.
    pub allowed: bool,
    /// Hits in this window so far, this one included.
    pub hits: i64,
    /// Until the window ends.
    pub retry_after: Duration,
}

/// Counts a hit on `bucket` and says whether it is within `max` per `window`.
pub async fn hit(
    pool: &PgPool,
    bucket: &str,
    max: u32,
    window: Duration,
) -> Result<Admission, RepoError> {
    let seconds = window.as_secs_f64().max(1.0);
    let (hits, left): (i32, f64) = sqlx::query_as(
        "insert into service.rate_limit_hits as r (bucket, window_start, hits)
         values ($1, date_bin(make_interval(secs => $2), now(), timestamptz 'epoch'), 1)
         on conflict (bucket, window_start) do update set hits = r.hits + 1
         returning r.hits,
                   extract(epoch from r.window_start + make_interval(secs => $2) - now())::float8",
    )
    .bind(bucket)
    .bind(seconds)
    .fetch_one(pool)
    .await
    .map_err(|e| map_sqlx_error("rate_limit_hits", e))?;
    if hits == 1 {
        // a new window for this bucket: its old ones are done with
        sqlx::query(
            "delete from service.rate_limit_hits
             where bucket = $1 and window_start < now() - make_interval(secs => $2)",
        )
        .bind(bucket)
        .bind(seconds)
        .execute(pool)
        .await
        .map_err(|e| map_sqlx_error("rate_limit_hits", e))?;
    }
    Ok(Admission {
        allowed: i64::from(hits) <= i64::from(max),
        hits: i64::from(hits),
        retry_after: Duration::from_secs_f64(left.max(0.0).ceil()),
    })
}

/// Deletes windows that ended more than a day ago (buckets that never came back); returns how
/// many.
pub async fn sweep(pool: &PgPool) -> Result<u64, RepoError> {
    sqlx::query("delete from service.rate_limit_hits where window_start < now() - interval '1 day'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| map_sqlx_error("rate_limit_hits", e))
}
