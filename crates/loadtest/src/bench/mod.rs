//! `mystira-users bench`: the backfill's throughput against PostgreSQL's own COPY of the same
//! rows at its best (full schema, and pg_restore's order: the ceiling), `verify`'s cost, and the
//! backfill's peak memory; every measure taken several times in fresh databases on one server,
//! reported as median and spread. The CLI parses the flags and calls [`run_bench`].

mod children;
pub mod databases;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mystira_postgres::initial_load::schema::DOMAIN_TABLES;
use serde_json::json;
use sqlx::PgPool;

use crate::copy_baseline::{
    self, copy_into, count_domain_rows, export_domain_tables, restore_order_load, strip_schema,
};
use children::{data_set, migrate_once, time_verify};
use databases::{database, drop_database, pool_on, prepared_with};

/// How long a phase waits for autovacuum to finish before it is measured anyway (with a
/// warning): a bound, so a busy shared server cannot hang the benchmark.
const AUTOVACUUM_WAIT: Duration = Duration::from_secs(120);

/// What to measure (the flags of `bench`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Accounts to generate.
    pub accounts: u64,
    /// Also migrate data sets of these sizes (accounts) and report each one's peak memory.
    pub memory_sizes: Vec<u64>,
    /// Passed to `migrate`.
    pub batch_rows: Option<usize>,
    /// Passed to `migrate`.
    pub workers: Option<usize>,
    /// Parallel streams of the COPY baselines: as many as `migrate` has workers.
    pub streams: usize,
    /// Times each measure is taken, each run in fresh databases.
    pub runs: u32,
    /// Keep the benchmark databases and files instead of dropping them.
    pub keep: bool,
    /// The `mystira-users` binary whose `migrate` and `verify` are timed as child processes.
    pub exe: PathBuf,
}

/// What `bench` reports: text for a terminal and the same as JSON.
#[derive(Debug)]
pub struct BenchReport {
    pub human: String,
    pub json: serde_json::Value,
}

/// Runs the benchmark in temporary databases on the server at `server` (any database url on
/// it).
pub async fn run_bench(server: &str, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let work = tempfile::Builder::new()
        .prefix("mystira-bench-")
        .tempdir()?;
    let tag = std::process::id();

    let export = data_set(work.path(), options.accounts)?;
    let mut runs = Vec::new();
    for run in 1..=options.runs {
        let sample = measure_run(server, &export, options, &format!("bench_{tag}_r{run}"))
            .await
            .with_context(|| format!("run {run} of {}", options.runs))?;
        tracing::info!(run, ?sample, "benchmark run done");
        if let Some(first) = runs.first().map(|r: &RunSample| r.rows)
            && first != sample.rows
        {
            bail!(
                "run {run} migrated {} rows, run 1 {first}: the same data set must give the same rows",
                sample.rows
            );
        }
        runs.push(sample);
    }

    let mut memory = Vec::new();
    for &size in &options.memory_sizes {
        let dir = data_set(work.path(), size)?;
        let m = migrate_once(
            server,
            &dir,
            options,
            &format!("bench_{tag}_mem{size}"),
            "initial",
        )
        .await?;
        memory.push(json!({ "accounts": size, "rows": m.rows, "peak_rss_bytes": m.peak_rss, "rows_per_second": m.rows as f64 / m.seconds }));
        drop_database(server, &m.url, options.keep).await;
    }
    if options.keep {
        tracing::info!(dir = %work.keep().display(), "kept the benchmark files");
    }
    Ok(report::report(
        options.accounts,
        options.streams,
        &runs,
        memory,
    ))
}

/// One run's figures, every load of the same `rows`.
#[derive(Debug)]
struct RunSample {
    rows: u64,
    /// `migrate --load-mode upsert`.
    migrate_seconds: f64,
    peak_rss: Option<u64>,
    /// `migrate --load-mode initial`, into its own fresh database, the same rows.
    initial_seconds: f64,
    initial_peak_rss: Option<u64>,
    verify_seconds: f64,
    full_schema_seconds: f64,
    restore_copy_seconds: f64,
    restore_rebuild_seconds: f64,
}

impl RunSample {
    fn restore_seconds(&self) -> f64 {
        self.restore_copy_seconds + self.restore_rebuild_seconds
    }
}

/// One run in fresh databases: migrate, verify, then the two COPY baselines of the rows the
/// migration wrote. Each database is dropped (unless --keep) once measured, so autovacuum of
/// an earlier phase's tables cannot run into a later phase.
async fn measure_run(
    server: &str,
    export_dir: &Path,
    options: &BenchOptions,
    prefix: &str,
) -> anyhow::Result<RunSample> {
    let streams = options.streams;
    let initial = migrate_once(
        server,
        export_dir,
        options,
        &format!("{prefix}_initial"),
        "initial",
    )
    .await?;
    let migrated = migrate_once(
        server,
        export_dir,
        options,
        &format!("{prefix}_migrate"),
        "upsert",
    )
    .await?;
    same_rows("the initial load", initial.rows, migrated.rows)?;
    same_content(&initial.url, &migrated.url).await?;
    drop_database(server, &initial.url, options.keep).await;
    let source = pool_on(&migrated.url).await?;
    settle(&source, "verify").await?;
    let verify_seconds = time_verify(&options.exe, &migrated.url, export_dir)?;
    let rows = export_domain_tables(&source, streams)
        .await
        .context("cannot export the migrated rows")?;
    source.close().await;
    drop_database(server, &migrated.url, options.keep).await;
    same_rows(
        "the export of the migrated database",
        rows.rows,
        migrated.rows,
    )?;
    tracing::info!(
        rows = rows.rows,
        mib = rows.bytes() / (1 << 20),
        "migrated rows exported for the COPY baselines"
    );

    // the full schema: every index, key, foreign key, check and trigger in place
    let url = database(server, &format!("{prefix}_copy"));
    let pool = prepared_with(&url, streams).await?;
    settle(&pool, "full-schema COPY").await?;
    let started = Instant::now();
    let loaded = copy_into(&pool, &rows, streams)
        .await
        .context("the full-schema COPY baseline failed")?;
    let full_schema_seconds = started.elapsed().as_secs_f64();
    same_rows("the full-schema COPY", loaded, migrated.rows)?;
    same_rows(
        "the full-schema COPY's tables",
        count_domain_rows(&pool).await?,
        migrated.rows,
    )?;
    pool.close().await;
    drop_database(server, &url, options.keep).await;

    // pg_restore's order: bare tables, then the schema rebuilt and checked against the catalog
    let url = database(server, &format!("{prefix}_restore"));
    let pool = prepared_with(&url, streams).await?;
    let schema = strip_schema(&pool)
        .await
        .context("cannot strip the schema for the restore-order baseline")?;
    tracing::debug!(objects = schema.objects(), "schema stripped");
    settle(&pool, "restore-order COPY").await?;
    let restored = restore_order_load(&pool, &schema, &rows, streams)
        .await
        .context("the restore-order baseline failed")?;
    same_rows("the restore-order COPY", restored.rows, migrated.rows)?;
    same_rows(
        "the restore-order COPY's tables",
        count_domain_rows(&pool).await?,
        migrated.rows,
    )?;
    pool.close().await;
    drop_database(server, &url, options.keep).await;

    Ok(RunSample {
        rows: migrated.rows,
        migrate_seconds: migrated.seconds,
        peak_rss: migrated.peak_rss,
        initial_seconds: initial.seconds,
        initial_peak_rss: initial.peak_rss,
        verify_seconds,
        full_schema_seconds,
        restore_copy_seconds: restored.copy_seconds,
        restore_rebuild_seconds: restored.rebuild_seconds,
    })
}

/// Checks, untimed, that the two paths wrote the same rows: a digest of every table of each.
async fn same_content(initial: &str, upserted: &str) -> anyhow::Result<()> {
    let mut digests = Vec::new();
    for url in [initial, upserted] {
        let pool = pool_on(url).await?;
        let mut digest = Vec::new();
        for table in DOMAIN_TABLES {
            // each row's md5, then the md5 of those in order: 33 bytes a row to aggregate
            // instead of the row's text (the whole table's text passed PostgreSQL's 1 GB limit
            // at 1,000,000 accounts); equal multisets of rows give equal digests
            let sql = format!(
                "select coalesce(md5(string_agg(h, '|' order by h)), '')
                 from (select md5(t::text) as h from {table} t) r"
            );
            let d: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await?;
            digest.push((table, d));
        }
        pool.close().await;
        digests.push(digest);
    }
    if digests[0] != digests[1] {
        bail!("the initial load and the upsert path wrote different rows: {digests:?}");
    }
    Ok(())
}

fn same_rows(what: &str, rows: u64, migrated: u64) -> anyhow::Result<()> {
    if rows != migrated {
        bail!("{what} has {rows} rows, the migration {migrated}: the sides would not compare");
    }
    Ok(())
}

async fn settle(pool: &PgPool, phase: &str) -> anyhow::Result<()> {
    let settled = copy_baseline::settle(pool, AUTOVACUUM_WAIT)
        .await
        .context("cannot CHECKPOINT before a timed phase (needs a superuser or pg_checkpoint)")?;
    tracing::debug!(phase, ?settled, "settled before the phase");
    Ok(())
}
