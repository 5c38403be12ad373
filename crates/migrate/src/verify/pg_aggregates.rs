//! PostgreSQL's side of the comparison: the per-(entity, bucket) aggregates computed inside
//! PostgreSQL, and the transactions verify's whole-table and whole-bucket reads run in.

use std::collections::HashMap;
use std::time::Instant;

use sqlx::PgPool;

use super::canonical::Aggregate;
use super::tables::{self, Entity};
use super::{VerifyError, sql};

/// A read-only transaction for verify's reads of whole tables (or whole buckets) joined with
/// their version records. Statistics taken while a migration was still writing (autovacuum
/// analyzed `document_versions` when it held few profiles' versions, and `user_profiles` not
/// at all) led the planner to a nested loop that compared every profile with every profile's
/// version: one verify of 20,000 accounts took 170 s instead of 3 s. The join reads every
/// row of both sides, so a hash join is right whatever the sizes, and forbidding nested loops
/// costs nothing where the statistics are sound.
pub(super) async fn hash_joined(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, VerifyError> {
    let mut tx = pool.begin().await.map_err(sql)?;
    sqlx::query("set local enable_nestloop = off")
        .execute(&mut *tx)
        .await
        .map_err(sql)?;
    Ok(tx)
}

pub(super) async fn pg_aggregates(
    pool: &PgPool,
    entity: Entity,
    first: u8,
    last: u8,
) -> Result<HashMap<u8, Aggregate>, VerifyError> {
    let started = Instant::now();
    let mut tx = aggregate_tx(pool).await?;
    let rows: Vec<(i32, i64, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(tables::table(entity).aggregate_sql()))
            .bind(i32::from(first))
            .bind(i32::from(last))
            .fetch_all(&mut *tx)
            .await
            .map_err(sql)?;
    tx.commit().await.map_err(sql)?;
    tracing::debug!(
        %entity,
        seconds = started.elapsed().as_secs_f64(),
        "verify: postgresql aggregates done"
    );
    Ok(rows
        .into_iter()
        .map(|(b, count, sum)| {
            let bucket = u8::try_from(b).unwrap_or(0);
            let agg = Aggregate {
                count: u64::try_from(count).unwrap_or(0),
                sum: sum.parse().unwrap_or(0),
            };
            (bucket, agg)
        })
        .collect())
}

/// The transaction the per-table aggregates run in ([`hash_joined`], and the settings below).
async fn aggregate_tx(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, VerifyError> {
    let mut tx = hash_joined(pool).await?;
    // No parallel workers: the source pass keeps the other cores busy, so workers add no
    // throughput, only the cost of handing every row to the leader (0.65 s of 5.1 s of server
    // CPU for 1.24 million badges). And a hash aggregate of the 256 buckets, not a sort of
    // every row: the bucket filter's estimate (half a percent of the rows) made the planner
    // sort, and the sort spilled to disk (57 MB at 100,000 accounts). docs/benchmarks.md,
    // "Verify at half a load".
    sqlx::raw_sql("set local max_parallel_workers_per_gather = 0; set local enable_sort = off")
        .execute(&mut *tx)
        .await
        .map_err(sql)?;
    Ok(tx)
}

/// The executed plan (`EXPLAIN (ANALYZE, FORMAT JSON)`) of each table's aggregate statement
/// over the whole key space, run exactly as [`verify`] runs it: for tests that hold the
/// statements to their shape (tests/verify_plans.rs).
#[doc(hidden)]
pub async fn explain_pg_aggregates(
    pool: &PgPool,
) -> Result<Vec<(Entity, serde_json::Value)>, VerifyError> {
    let mut plans = Vec::new();
    for entity in Entity::ALL {
        let mut tx = aggregate_tx(pool).await?;
        let explain = format!(
            "explain (analyze, format json) {}",
            tables::table(entity).aggregate_sql()
        );
        let (plan,): (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(explain))
            .bind(0_i32)
            .bind(255_i32)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql)?;
        tx.rollback().await.map_err(sql)?;
        plans.push((entity, plan));
    }
    Ok(plans)
}
