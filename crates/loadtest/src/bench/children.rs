//! What `bench` times in child processes of the `mystira-users` binary: `migrate` of a
//! generated data set into a fresh database, and `verify` of it; and the data sets themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use mystira_cosmos_codec::generate::{GenerateOptions, write_export};

use super::BenchOptions;
use super::databases::{database, pool_on, prepared};
use crate::copy_baseline::count_domain_rows;

/// The export files of `accounts` generated accounts (seed 42, 2 % problem documents),
/// generated once per size and reused by every run.
pub(super) fn data_set(work: &Path, accounts: u64) -> anyhow::Result<PathBuf> {
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

/// What one `migrate` child did.
pub(super) struct Migrated {
    pub(super) url: String,
    pub(super) rows: u64,
    pub(super) seconds: f64,
    pub(super) peak_rss: Option<u64>,
}

/// Migrates the export files in `dir` into a new database `name` with a child process.
pub(super) async fn migrate_once(
    server: &str,
    dir: &Path,
    options: &BenchOptions,
    name: &str,
    load_mode: &str,
) -> anyhow::Result<Migrated> {
    let url = database(server, name);
    // the schema is created before timing starts: the benchmark measures copying, not DDL
    let pool = prepared(&url).await?;
    super::settle(&pool, "migrate").await?;
    pool.close().await;
    let mut command = Command::new(&options.exe);
    command
        .args(["migrate", "--json", "--quiet", "--export-dir"])
        .arg(dir)
        .args(["--database-url", &url, "--load-mode", load_mode]);
    if let Some(rows) = options.batch_rows {
        command.args(["--batch-rows", &rows.to_string()]);
    }
    if let Some(workers) = options.workers {
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
    let pool = pool_on(&url).await?;
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
pub(super) fn time_verify(exe: &Path, url: &str, export: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new(exe)
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
