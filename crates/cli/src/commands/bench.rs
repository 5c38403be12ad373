//! `mystira-users bench`: the backfill's throughput against PostgreSQL's own COPY of the same
//! rows, measured in one run on one machine, and the backfill's peak memory at several sizes.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use mystira_cosmos::generate::{GenerateOptions, write_export};
use mystira_postgres::copy_baseline::{copy_domain_tables, count_domain_rows};
use serde_json::json;

use super::{Outcome, db};
use crate::cli::BenchArgs;
use crate::config::Settings;
use crate::exit::Exit;

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let (server, _) = db::database_url(settings).await?;
    let work = tempfile::Builder::new()
        .prefix("mystira-bench-")
        .tempdir()?;
    let tag = std::process::id();

    let main = measure_migration(
        &server,
        work.path(),
        args,
        args.accounts,
        &format!("bench_{tag}_migrate"),
    )
    .await?;

    // verification of the same data set, timed in the same run (issue: no slower than migrating)
    let verify_seconds = time_verify(
        &main.url,
        &work.path().join(format!("export-{}", args.accounts)),
    )?;

    // the ceiling: the same final rows, loaded with binary COPY into an empty schema
    let copy_url = database(&server, &format!("bench_{tag}_copy"));
    let from = db::pool_on(&main.url).await?;
    let to = prepared(&copy_url).await?;
    let baseline = copy_domain_tables(&from, &to)
        .await
        .context("the COPY baseline failed")?;
    from.close().await;
    to.close().await;
    let copy_rps = baseline.rows as f64 / baseline.load_seconds;
    let ratio = main.rows_per_second / copy_rps;

    let mut memory = Vec::new();
    for &size in &args.memory_sizes {
        let m = measure_migration(
            &server,
            work.path(),
            args,
            size,
            &format!("bench_{tag}_mem{size}"),
        )
        .await?;
        memory.push(json!({ "accounts": size, "rows": m.rows, "peak_rss_bytes": m.peak_rss, "rows_per_second": m.rows_per_second }));
        drop_database(&server, &m.url, args.keep).await;
    }
    drop_database(&server, &main.url, args.keep).await;
    drop_database(&server, &copy_url, args.keep).await;
    if args.keep {
        tracing::info!(dir = %work.keep().display(), "kept the benchmark files");
    }

    let mb = |b: Option<u64>| {
        b.map_or_else(
            || "?".to_owned(),
            |b| format!("{:.1} MiB", b as f64 / 1048576.0),
        )
    };
    let mut human = format!(
        "data set: {} accounts, {} rows in the six tables\n\
         migrate (export files -> PostgreSQL): {:>10.0} rows/s  ({:.1} s, peak memory {})\n\
         COPY baseline (binary, same rows):     {:>10.0} rows/s  ({:.1} s)\n\
         ratio migrate / COPY: {:.2}\n\
         verify (same data, clean):             {:>10.0} rows/s  ({:.1} s, {:.2}x the migration time)\n",
        args.accounts,
        main.rows,
        main.rows_per_second,
        main.seconds,
        mb(main.peak_rss),
        copy_rps,
        baseline.load_seconds,
        ratio,
        main.rows as f64 / verify_seconds,
        verify_seconds,
        verify_seconds / main.seconds,
    );
    for m in &memory {
        human.push_str(&format!(
            "memory at {} accounts ({} rows): peak {}\n",
            m["accounts"],
            m["rows"],
            mb(m["peak_rss_bytes"].as_u64())
        ));
    }
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({
            "accounts": args.accounts,
            "rows": main.rows,
            "migrate": { "seconds": main.seconds, "rows_per_second": main.rows_per_second, "peak_rss_bytes": main.peak_rss },
            "copy": { "seconds": baseline.load_seconds, "rows_per_second": copy_rps },
            "ratio": ratio,
            "verify": { "seconds": verify_seconds, "relative_to_migrate": verify_seconds / main.seconds },
            "memory": memory,
        }),
    })
}

struct Measured {
    url: String,
    rows: u64,
    seconds: f64,
    rows_per_second: f64,
    peak_rss: Option<u64>,
}

/// Generates `accounts` accounts and migrates them into a new database with a child process.
async fn measure_migration(
    server: &str,
    work: &Path,
    args: &BenchArgs,
    accounts: u64,
    name: &str,
) -> anyhow::Result<Measured> {
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
    let url = database(server, name);
    // the schema is created before timing starts: the benchmark measures copying, not DDL
    prepared(&url).await?.close().await;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["migrate", "--json", "--quiet", "--export-dir"])
        .arg(&dir)
        .args(["--database-url", &url]);
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
    Ok(Measured {
        url,
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds,
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
    mystira_postgres::ensure_database(url)
        .await
        .context("cannot create a benchmark database")?;
    let pool = db::pool_on(url).await?;
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
}
