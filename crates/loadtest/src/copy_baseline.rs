//! The baselines a backfill is measured against, both PostgreSQL's own binary `COPY` of the
//! same final rows, at its best:
//!
//! - **full schema**: into an empty, migrated database with every index, key, foreign key,
//!   check and trigger in place, in as many parallel streams as the backfill has workers, with
//!   send buffers of at least [`SEND_BUFFER_BYTES`];
//! - **restore order** (the ceiling): the same COPY into tables as pg_restore creates them
//!   (columns, defaults, NOT NULL and checks only), then the indexes, keys, foreign keys and
//!   triggers rebuilt the way pg_restore does, and the catalog checked to be the migrated one
//!   again, so the ceiling measures the real schema. The strip and the rebuild are the initial
//!   load's own ([`mystira_postgres::initial_load::schema`]).
//!
//! The rows are exported from the source database first, into memory, untimed: they stand for
//! rows that are already at hand.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use mystira_postgres::initial_load::schema::{
    DOMAIN_TABLES, StrippedSchema, check_catalog, in_parallel, rebuild_objects, strip_tables_in,
    table_names,
};
use sqlx::{PgConnection, PgPool};

/// What can make a baseline fail: the database, or a schema that did not come back as it was.
pub use mystira_postgres::initial_load::schema::SchemaError as BaselineError;

/// The domain tables by foreign-key depth: every table's parents are in an earlier level, so
/// the tables of one level can load at the same time once the levels before it committed (a
/// foreign-key check sees only committed parents).
const LOAD_LEVELS: [&[&str]; 3] = [
    &["accounts", "pending_signups"],
    &["subscriptions", "user_profiles", "completed_scenarios"],
    &["user_badges"],
];

/// The least size of one `CopyData` message the baselines send. `COPY ... TO STDOUT` yields
/// about one row per message; sending them as they come would measure round trips of the
/// client library, not PostgreSQL's loading.
pub const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// The rows of the domain tables, exported in binary COPY format: each table split into
/// streams by a hash of its key, each stream a complete COPY input of its own (header, rows,
/// trailer) in buffers of at least [`SEND_BUFFER_BYTES`] (the last of a stream excepted).
#[derive(Debug, Clone)]
pub struct Export {
    /// Rows in the source when it was exported.
    pub rows: u64,
    streams: Vec<Stream>,
}

#[derive(Debug, Clone)]
struct Stream {
    table: &'static str,
    level: usize,
    buffers: Vec<Bytes>,
}

impl Export {
    /// Bytes of COPY data, all streams together.
    pub fn bytes(&self) -> usize {
        self.streams
            .iter()
            .flat_map(|s| &s.buffers)
            .map(Bytes::len)
            .sum()
    }
}

/// Exports every domain table of `from` as `streams` streams per table (split by a hash of the
/// primary key, so they are about even and disjoint).
pub async fn export_domain_tables(from: &PgPool, streams: usize) -> Result<Export, sqlx::Error> {
    let streams = streams.max(1);
    let rows = count_domain_rows(from).await?;
    let mut out = Vec::new();
    for (level, tables) in LOAD_LEVELS.iter().enumerate() {
        for &table in *tables {
            for part in 0..streams {
                // hashtext is signed: shift it to 0..2^32 before the remainder
                let sql = format!(
                    "copy (select * from {table} \
                     where (hashtext(id::text)::bigint + 2147483648) % {streams} = {part}) \
                     to stdout (format binary)"
                );
                let mut conn = from.acquire().await?;
                let mut chunks = conn.copy_out_raw(&sql).await?;
                let mut buffers = Vec::new();
                let mut buffer = BytesMut::with_capacity(2 * SEND_BUFFER_BYTES);
                while let Some(chunk) = chunks.try_next().await? {
                    buffer.extend_from_slice(&chunk);
                    if buffer.len() >= SEND_BUFFER_BYTES {
                        buffers.push(buffer.split().freeze());
                    }
                }
                if !buffer.is_empty() {
                    buffers.push(buffer.freeze());
                }
                out.push(Stream {
                    table,
                    level,
                    buffers,
                });
            }
        }
    }
    Ok(Export { rows, streams: out })
}

/// Loads `export` into the domain tables of `to` (empty, whatever their indexes and
/// constraints), `streams` COPY streams at a time, parents' level before children's. Returns
/// the rows PostgreSQL reports loaded. Untimed here: the caller times it.
pub async fn copy_into(to: &PgPool, export: &Export, streams: usize) -> Result<u64, BaselineError> {
    let mut rows = 0;
    for level in 0..LOAD_LEVELS.len() {
        let jobs: Vec<Stream> = export
            .streams
            .iter()
            .filter(|s| s.level == level)
            .cloned()
            .collect();
        let pool = to.clone();
        let loaded = in_parallel(jobs, streams, move |stream| {
            copy_stream(pool.clone(), stream)
        })
        .await?;
        rows += loaded.into_iter().sum::<u64>();
    }
    Ok(rows)
}

async fn copy_stream(pool: PgPool, stream: Stream) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // the backfill's own setting: its writes are copies from Cosmos, so the outbox trigger
    // (fired per row here as there) returns without writing an outbox row
    sqlx::query("set local mystira.keep_source_timestamps = 'on'")
        .execute(&mut *tx)
        .await?;
    let mut copy = tx
        .copy_in_raw(&format!("copy {} from stdin (format binary)", stream.table))
        .await?;
    for buffer in stream.buffers {
        copy.send(buffer).await?;
    }
    let rows = copy.finish().await?;
    tx.commit().await?;
    Ok(rows)
}

/// Takes the definitions of the domain tables' secondary indexes, primary/unique keys, foreign
/// keys and triggers from the catalog of `pool` (a freshly migrated, empty database) and drops
/// them, leaving the tables pg_restore creates before it loads data: columns, defaults, NOT
/// NULL and checks ([`strip_tables_in`] says why the checks stay).
pub async fn strip_schema(pool: &PgPool) -> Result<StrippedSchema, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let stripped = strip_schema_in(&mut tx).await?;
    tx.commit().await?;
    Ok(stripped)
}

/// [`strip_schema`] inside the caller's transaction, so that the caller can record the
/// definitions in the same commit that drops the objects.
pub async fn strip_schema_in(conn: &mut PgConnection) -> Result<StrippedSchema, sqlx::Error> {
    strip_tables_in(conn, table_names()).await
}

/// What the restore-order ceiling measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOrder {
    pub rows: u64,
    /// COPY into the bare tables.
    pub copy_seconds: f64,
    /// Indexes, keys, foreign keys, triggers.
    pub rebuild_seconds: f64,
}

impl RestoreOrder {
    pub fn seconds(&self) -> f64 {
        self.copy_seconds + self.rebuild_seconds
    }
}

/// The restore-order ceiling on a database stripped by [`strip_schema`]: COPY of `export` into
/// the bare tables, then, as pg_restore does, the secondary indexes (in parallel sessions),
/// the primary and unique keys, the foreign keys (validated as they are added, one `alter
/// table` per table), the triggers; `streams` sessions at a time, each with
/// `maintenance_work_mem` raised. Timed from
/// the first COPY to the last trigger; then checks, untimed, that the catalog of the domain
/// tables is the one [`strip_schema`] found.
pub async fn restore_order_load(
    pool: &PgPool,
    schema: &StrippedSchema,
    export: &Export,
    streams: usize,
) -> Result<RestoreOrder, BaselineError> {
    let started = Instant::now();
    let rows = copy_into(pool, export, streams).await?;
    let copied = started.elapsed();
    rebuild_objects(pool, schema, streams).await?;
    let timing = RestoreOrder {
        rows,
        copy_seconds: copied.as_secs_f64(),
        rebuild_seconds: (started.elapsed() - copied).as_secs_f64(),
    };
    check_catalog(pool, schema).await?;
    Ok(timing)
}

/// What [`settle`] found.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Settled {
    /// Time spent waiting for autovacuum workers to finish.
    pub waited_seconds: f64,
    /// Whether autovacuum was still busy when the wait's bound ran out.
    pub gave_up: bool,
}

/// Prepares a timed phase: waits (at most `bound`) until no autovacuum worker runs on the
/// server, then `CHECKPOINT`s, so the phase neither competes with autovacuum nor pays for
/// writing out the dirty buffers of the phase before it. Needs a superuser or the
/// pg_checkpoint role (the private cluster's user is a superuser).
pub async fn settle(pool: &PgPool, bound: Duration) -> Result<Settled, sqlx::Error> {
    let started = Instant::now();
    let mut gave_up = false;
    loop {
        // the whole server, not only this database: autovacuum of a database loaded by an
        // earlier phase takes the same disk and cores
        let busy: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where backend_type = 'autovacuum worker' or query like 'autovacuum:%'",
        )
        .fetch_one(pool)
        .await?;
        if busy == 0 {
            break;
        }
        if started.elapsed() >= bound {
            gave_up = true;
            tracing::warn!(
                busy,
                "autovacuum still running when the wait ran out; measuring anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited = started.elapsed();
    sqlx::raw_sql("checkpoint").execute(pool).await?;
    Ok(Settled {
        waited_seconds: waited.as_secs_f64(),
        gave_up,
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
