//! `mystira-users bench`: the backfill's throughput against PostgreSQL's own COPY of the same
//! rows at its best (full schema, and pg_restore's order: the ceiling), `verify`'s cost, and the
//! backfill's peak memory; every measure taken several times in fresh databases on one server,
//! reported as median and spread.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mystira_cosmos_codec::generate::{GenerateOptions, write_export};
use mystira_migrate::backfill::BackfillConfig;
use mystira_postgres::copy_baseline::{
    self, copy_into, count_domain_rows, export_domain_tables, restore_order_load, strip_schema,
};
use serde_json::json;

use super::{Outcome, db};
use crate::cli::BenchArgs;
use crate::config::Settings;
use crate::exit::Exit;

/// How long a phase waits for autovacuum to finish before it is measured anyway (with a
/// warning): a bound, so a busy shared server cannot hang the benchmark.
const AUTOVACUUM_WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let (server, _) = db::database_url(settings).await?;
    let work = tempfile::Builder::new()
        .prefix("mystira-bench-")
        .tempdir()?;
    let tag = std::process::id();
    // the baselines get as many parallel streams as `migrate` has workers, found the way the
    // `migrate` child finds them (flag, then config file, then its default)
    let streams = args
        .workers
        .or(settings.file.migrate.as_ref().and_then(|m| m.workers))
        .unwrap_or(BackfillConfig::default().workers)
        .max(1);

    let export = data_set(work.path(), args.accounts)?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let sample = measure_run(
            &server,
            &export,
            args,
            streams,
            &format!("bench_{tag}_r{run}"),
        )
        .await
        .with_context(|| format!("run {run} of {}", args.runs))?;
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
    for &size in &args.memory_sizes {
        let dir = data_set(work.path(), size)?;
        let m = migrate_once(
            &server,
            &dir,
            args,
            &format!("bench_{tag}_mem{size}"),
            "initial",
        )
        .await?;
        memory.push(json!({ "accounts": size, "rows": m.rows, "peak_rss_bytes": m.peak_rss, "rows_per_second": m.rows as f64 / m.seconds }));
        drop_database(&server, &m.url, args.keep).await;
    }
    if args.keep {
        tracing::info!(dir = %work.keep().display(), "kept the benchmark files");
    }
    Ok(report(args, streams, &runs, memory))
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
    args: &BenchArgs,
    streams: usize,
    prefix: &str,
) -> anyhow::Result<RunSample> {
    let initial = migrate_once(
        server,
        export_dir,
        args,
        &format!("{prefix}_initial"),
        "initial",
    )
    .await?;
    let migrated = migrate_once(
        server,
        export_dir,
        args,
        &format!("{prefix}_migrate"),
        "upsert",
    )
    .await?;
    same_rows("the initial load", initial.rows, migrated.rows)?;
    same_content(&initial.url, &migrated.url).await?;
    drop_database(server, &initial.url, args.keep).await;
    let source = db::pool_on(&migrated.url).await?;
    settle(&source, "verify").await?;
    let verify_seconds = time_verify(&migrated.url, export_dir)?;
    let rows = export_domain_tables(&source, streams)
        .await
        .context("cannot export the migrated rows")?;
    source.close().await;
    drop_database(server, &migrated.url, args.keep).await;
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
    drop_database(server, &url, args.keep).await;

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
    drop_database(server, &url, args.keep).await;

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
        let pool = db::pool_on(url).await?;
        let mut digest = Vec::new();
        for table in copy_baseline::DOMAIN_TABLES {
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

async fn settle(pool: &sqlx::PgPool, phase: &str) -> anyhow::Result<()> {
    let settled = copy_baseline::settle(pool, AUTOVACUUM_WAIT)
        .await
        .context("cannot CHECKPOINT before a timed phase (needs a superuser or pg_checkpoint)")?;
    tracing::debug!(phase, ?settled, "settled before the phase");
    Ok(())
}

/// The median and the range of one measure over the runs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        // for a decreasing f (seconds to rows/s) the ends swap
        let (a, b) = (f(self.min), f(self.max));
        Spread {
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
        }
    }
}

fn report(
    args: &BenchArgs,
    streams: usize,
    runs: &[RunSample],
    memory: Vec<serde_json::Value>,
) -> Outcome {
    let rows = runs.first().map_or(0, |r| r.rows);
    let per_second = |s: f64| rows as f64 / s;
    let seconds = |f: fn(&RunSample) -> f64| Spread::of(runs.iter().map(f));
    let migrate = seconds(|r| r.migrate_seconds);
    let initial = seconds(|r| r.initial_seconds);
    let verify = seconds(|r| r.verify_seconds);
    let full = seconds(|r| r.full_schema_seconds);
    let restore = seconds(RunSample::restore_seconds);
    let restore_copy = seconds(|r| r.restore_copy_seconds);
    let restore_rebuild = seconds(|r| r.restore_rebuild_seconds);
    // ratios per run pairing: each run's migration against the baselines of the same run, so a
    // slow moment of the machine weighs on both sides of one ratio rather than on one side
    let ratio = |f: fn(&RunSample) -> f64| Spread::of(runs.iter().map(f));
    let over_full = ratio(|r| r.full_schema_seconds / r.migrate_seconds);
    let over_restore = ratio(|r| r.restore_seconds() / r.migrate_seconds);
    let verify_ratio = ratio(|r| r.verify_seconds / r.migrate_seconds);
    let initial_over_full = ratio(|r| r.full_schema_seconds / r.initial_seconds);
    let initial_over_restore = ratio(|r| r.restore_seconds() / r.initial_seconds);
    let verify_over_initial = ratio(|r| r.verify_seconds / r.initial_seconds);
    let peak_of = |f: fn(&RunSample) -> Option<u64>| {
        let peaks: Vec<u64> = runs.iter().filter_map(f).collect();
        (!peaks.is_empty()).then(|| Spread::of(peaks.iter().map(|&b| b as f64)))
    };
    let peak = peak_of(|r| r.peak_rss);
    let initial_peak = peak_of(|r| r.initial_peak_rss);

    let mib = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    let line = |name: &str, s: Spread| {
        let r = s.map(per_second);
        format!(
            "{name:<38} {:>9.0} rows/s ({:.0} .. {:.0})  {:>7.1} s ({:.1} .. {:.1})\n",
            r.median, r.min, r.max, s.median, s.min, s.max
        )
    };
    let ratio_line = |name: &str, s: Spread| {
        format!(
            "{name:<38} {:>9.2} ({:.2} .. {:.2})\n",
            s.median, s.min, s.max
        )
    };
    let mut human = format!(
        "data set: {} accounts, {rows} rows in the six tables; {} runs in fresh databases, \
         {streams} parallel streams (= migrate's workers)\n\
         median (min .. max) over the runs\n",
        args.accounts,
        runs.len(),
    );
    if runs.len() < 3 {
        human.push_str("warning: fewer than 3 runs, the spread says little\n");
    }
    human.push_str(&line("migrate, upsert path", migrate));
    human.push_str(&line("migrate, initial load", initial));
    human.push_str(&line("COPY, full schema", full));
    human.push_str(&line("COPY, restore order (COPY + rebuild)", restore));
    human.push_str(&format!(
        "{:<38} COPY {:.1} s ({:.1} .. {:.1}) + rebuild {:.1} s ({:.1} .. {:.1})\n",
        "",
        restore_copy.median,
        restore_copy.min,
        restore_copy.max,
        restore_rebuild.median,
        restore_rebuild.min,
        restore_rebuild.max
    ));
    human.push_str(&line("verify (same data, clean)", verify));
    human.push_str("ratios, each run's own pairing, then median (min .. max):\n");
    human.push_str(&ratio_line(
        "  migrate / full-schema COPY (rows/s)",
        over_full,
    ));
    human.push_str(&ratio_line(
        "  migrate / restore order (rows/s)",
        over_restore,
    ));
    human.push_str(&ratio_line(
        "  initial load / full-schema COPY",
        initial_over_full,
    ));
    human.push_str(&ratio_line(
        "  initial load / restore order",
        initial_over_restore,
    ));
    human.push_str(&ratio_line("  verify / migrate (time)", verify_ratio));
    human.push_str(&ratio_line(
        "  verify / initial load (time)",
        verify_over_initial,
    ));
    for (name, peak) in [("upsert path", peak), ("initial load", initial_peak)] {
        match peak {
            Some(p) => human.push_str(&format!(
                "{name} peak memory: {} ({} .. {})\n",
                mib(p.median),
                mib(p.min),
                mib(p.max)
            )),
            None => human.push_str(&format!("{name} peak memory: unknown on this system\n")),
        }
    }
    for m in &memory {
        human.push_str(&format!(
            "memory at {} accounts ({} rows): peak {}\n",
            m["accounts"],
            m["rows"],
            m["peak_rss_bytes"]
                .as_f64()
                .map_or_else(|| "?".to_owned(), mib)
        ));
    }
    let measure = |s: Spread| json!({ "seconds": s, "rows_per_second": s.map(per_second) });
    Outcome {
        exit: Exit::Ok,
        human,
        json: json!({
            "accounts": args.accounts,
            "rows": rows,
            "runs": runs.len(),
            "streams": streams,
            "send_buffer_bytes": copy_baseline::SEND_BUFFER_BYTES,
            "migrate": measure(migrate),
            "initial_load": measure(initial),
            "full_schema_copy": measure(full),
            "restore_order": {
                "seconds": restore,
                "rows_per_second": restore.map(per_second),
                "copy_seconds": restore_copy,
                "rebuild_seconds": restore_rebuild,
            },
            "verify": measure(verify),
            "ratios": {
                "pairing": "per run",
                "migrate_over_full_schema_copy": over_full,
                "migrate_over_restore_order": over_restore,
                "verify_over_migrate": verify_ratio,
                "initial_load_over_full_schema_copy": initial_over_full,
                "initial_load_over_restore_order": initial_over_restore,
                "verify_over_initial_load": verify_over_initial,
            },
            "peak_rss_bytes": peak,
            "initial_load_peak_rss_bytes": initial_peak,
            "samples": runs.iter().map(|r| json!({
                "migrate_seconds": r.migrate_seconds,
                "peak_rss_bytes": r.peak_rss,
                "initial_load_seconds": r.initial_seconds,
                "initial_load_peak_rss_bytes": r.initial_peak_rss,
                "verify_seconds": r.verify_seconds,
                "full_schema_copy_seconds": r.full_schema_seconds,
                "restore_order_copy_seconds": r.restore_copy_seconds,
                "restore_order_rebuild_seconds": r.restore_rebuild_seconds,
            })).collect::<Vec<_>>(),
            "memory": memory,
        }),
    }
}

/// The export files of `accounts` generated accounts (seed 42, 2 % problem documents),
/// generated once per size and reused by every run.
fn data_set(work: &Path, accounts: u64) -> anyhow::Result<PathBuf> {
    let dir = work.join(format!("export-{accounts}"));
    if !dir.join("manifest.json").is_file() {
        let started = Instant::now();
        write_export(
            &dir,
            &GenerateOptions {
                accounts,
                seed: 42,
                dirty: 0.02,
            },
        )
        .context("cannot generate the data set")?;
        tracing::info!(
            accounts,
            seconds = started.elapsed().as_secs_f64(),
            "data set generated"
        );
    }
    Ok(dir)
}

struct Migrated {
    url: String,
    rows: u64,
    seconds: f64,
    peak_rss: Option<u64>,
}

/// Migrates the export files in `dir` into a new database `name` with a child process.
async fn migrate_once(
    server: &str,
    dir: &Path,
    args: &BenchArgs,
    name: &str,
    load_mode: &str,
) -> anyhow::Result<Migrated> {
    let url = database(server, name);
    // the schema is created before timing starts: the benchmark measures copying, not DDL
    let pool = prepared(&url).await?;
    settle(&pool, "migrate").await?;
    pool.close().await;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["migrate", "--json", "--quiet", "--export-dir"])
        .arg(dir)
        .args(["--database-url", &url, "--load-mode", load_mode]);
    if let Some(rows) = args.batch_rows {
        command.args(["--batch-rows", &rows.to_string()]);
    }
    if let Some(workers) = args.workers {
        command.args(["--workers", &workers.to_string()]);
    }
    let started = Instant::now();
    let output = command.output().context("cannot run `migrate`")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "`migrate` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let pool = db::pool_on(&url).await?;
    let rows = count_domain_rows(&pool).await?;
    pool.close().await;
    Ok(Migrated {
        url,
        rows,
        seconds,
        peak_rss: report["peak_rss_bytes"].as_u64(),
    })
}

/// Runs `verify` on the migrated database with a child process; it must come out clean.
fn time_verify(url: &str, export: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new(std::env::current_exe()?)
        .args(["verify", "--json", "--quiet", "--export-dir"])
        .arg(export)
        .args(["--database-url", url])
        .output()
        .context("cannot run `verify`")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "`verify` did not come out clean (exit {:?})",
            output.status.code()
        );
    }
    Ok(seconds)
}

/// `server`'s url with the database name replaced.
pub(super) fn database(server: &str, name: &str) -> String {
    match url_with_path(server, name) {
        Some(u) => u,
        None => server.to_owned(),
    }
}

fn url_with_path(server: &str, name: &str) -> Option<String> {
    let (scheme_host, rest) = server.split_once("://")?;
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Some(format!("{scheme_host}://{authority}/{name}{query}"))
}

pub(super) async fn prepared(url: &str) -> anyhow::Result<sqlx::PgPool> {
    prepared_with(url, 4).await
}

/// A new database at `url` with the schema migrated, and a pool of `connections` on it.
async fn prepared_with(url: &str, connections: usize) -> anyhow::Result<sqlx::PgPool> {
    mystira_postgres::ensure_database(url)
        .await
        .context("cannot create a benchmark database")?;
    let pool = mystira_postgres::connect(url, u32::try_from(connections).unwrap_or(u32::MAX))
        .await
        .context("cannot connect to a benchmark database")?;
    mystira_postgres::migrate(&pool)
        .await
        .context("cannot migrate the benchmark schema")?;
    Ok(pool)
}

pub(super) async fn drop_database(server: &str, url: &str, keep: bool) {
    if keep {
        return;
    }
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_owned())
    else {
        return;
    };
    let admin_url = database(server, "postgres");
    if let Ok(pool) = db::pool_on(&admin_url).await {
        let sql = format!("drop database if exists \"{name}\" with (force)");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
            tracing::warn!(error = %e, "could not drop a benchmark database");
        }
        pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_keeping_host_and_query() {
        assert_eq!(
            database(
                "postgres://postgres@localhost:5432/mystira_users?host=/tmp/s",
                "b1"
            ),
            "postgres://postgres@localhost:5432/b1?host=/tmp/s"
        );
        assert_eq!(database("postgres://u:p@h/db", "b2"), "postgres://u:p@h/b2");
        assert_eq!(database("postgres://h:5432", "b3"), "postgres://h:5432/b3");
    }

    #[test]
    fn spreads_give_the_median_and_keep_min_below_max_through_a_decreasing_map() {
        let s = Spread::of([30.0, 10.0, 20.0]);
        assert_eq!((s.median, s.min, s.max), (20.0, 10.0, 30.0));
        let even = Spread::of([4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
        // seconds to rows/s: the slowest run is the lowest throughput
        let rps = s.map(|secs| 600.0 / secs);
        assert_eq!((rps.median, rps.min, rps.max), (30.0, 20.0, 60.0));
    }
}
