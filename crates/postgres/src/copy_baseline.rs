//! The ceiling a backfill is measured against: PostgreSQL's own binary `COPY` of the same
//! final rows into an empty copy of the schema (with its constraints, indexes and triggers).

use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use sqlx::PgPool;

/// The domain tables in an order that satisfies their foreign keys.
pub const DOMAIN_TABLES: [&str; 6] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
];

/// What the baseline measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyBaseline {
    pub rows: u64,
    /// Time spent in `COPY ... FROM STDIN` only (the export from the source database is not
    /// counted: it stands for rows that are already at hand).
    pub load_seconds: f64,
}

/// Copies every domain table of `from` into `to` (an empty, migrated database) with binary
/// COPY, timing the loads.
pub async fn copy_domain_tables(from: &PgPool, to: &PgPool) -> Result<CopyBaseline, sqlx::Error> {
    let mut rows = 0u64;
    let mut load = Duration::ZERO;
    for table in DOMAIN_TABLES {
        let mut source = from.acquire().await?;
        let chunks: Vec<bytes::Bytes> = source
            .copy_out_raw(&format!("copy {table} to stdout (format binary)"))
            .await?
            .try_collect()
            .await?;
        drop(source);
        let mut target = to.acquire().await?;
        let started = Instant::now();
        let mut copy = target
            .copy_in_raw(&format!("copy {table} from stdin (format binary)"))
            .await?;
        for chunk in chunks {
            copy.send(chunk).await?;
        }
        rows += copy.finish().await?;
        load += started.elapsed();
    }
    Ok(CopyBaseline {
        rows,
        load_seconds: load.as_secs_f64(),
    })
}

/// Rows in the domain tables.
pub async fn count_domain_rows(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0i64;
    for table in DOMAIN_TABLES {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(pool)
                .await?;
        total += n;
    }
    Ok(u64::try_from(total).unwrap_or(0))
}
