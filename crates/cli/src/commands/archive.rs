//! `mystira-users archive --out TARGET`, `archive verify TARGET` and `restore TARGET`: the
//! Cosmos side archived into a folder or Azure Blob Storage, checked, and loaded back (the
//! logic is in `mystira_migrate::archive`; docs/archive.md describes the format and targets).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use mystira_migrate::CosmosSource;
use mystira_migrate::archive::{
    self, ArchiveConfig, ArchiveError, RestoreConfig, RestoreTarget, StallPoint, Store,
};
use serde_json::json;

use super::source::CosmosArgs;
use super::{Outcome, source};
use crate::config::{ConfigError, DatabaseTarget, Settings};
use crate::exit::Exit;

/// The test hook that makes the process stop at a point until it is killed (see
/// `mystira_migrate::archive::StallPoint`); for the process tests only.
const STALL_ENV: &str = "MYSTIRA_ARCHIVE_TEST_STALL";

/// `mystira-users archive`
#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub command: Option<ArchiveCommand>,

    /// The Cosmos account to archive (the database: --cosmos-database, COSMOS_DATABASE or the
    /// config file)
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Where to write the archive: a folder (created), or Azure Blob Storage as
    /// az://CONTAINER/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX
    /// (credentials from AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY or a SAS token in
    /// the URL; docs/archive.md). Must be new or empty, or hold an unfinished archive, which is
    /// then finished
    #[arg(long, value_name = "DIR|URL", required = true)]
    pub out: Option<String>,

    /// Documents per chunk file at most (a resumed archive keeps its own)
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_documents: u64,

    /// Ranges each container is split into, as `migrate --ranges`: its feed ranges, each split
    /// further by `_ts` when there are fewer feed ranges than N
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub ranges: usize,

    /// Ranges read at the same time
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,

    /// At most this many documents read per second (this process)
    #[arg(long, value_name = "DOCS_PER_SECOND")]
    pub max_rps: Option<u32>,
}

/// `mystira-users archive ...`
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Check an archive offline: every chunk's SHA-256 and counts against the manifest, and
    /// the document counts against PostgreSQL when a database is configured.
    ///
    /// Re-hashes and decompresses every chunk; checks the manifest (finished, every chunk
    /// listed and present, no unlisted chunk file, per chunk its size, SHA-256 and document
    /// count, per container the documents read and the distinct documents adding up). With a
    /// database configured (--database-url, DATABASE_URL or the config file; never the private
    /// cluster), compares each container's document count with the documents PostgreSQL knows
    /// Cosmos to hold: versions not deleted plus open quarantine (docs/archive.md). Every
    /// finding names its chunk or container and has a stable code. Exit code 0 intact (and
    /// matching), 1 a finding, 2 PostgreSQL could not be compared.
    Verify {
        /// The archive: a folder or an Azure Blob Storage URL (as `archive --out`)
        #[arg(value_name = "DIR|URL")]
        dir: String,
    },
}

/// `mystira-users restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive (written by `archive --out`): a folder or an Azure Blob Storage URL
    #[arg(value_name = "DIR|URL")]
    pub dir: String,

    /// Cosmos account endpoint, e.g. https://myaccount.documents.azure.com:443/
    #[arg(long, env = "COSMOS_ENDPOINT", value_name = "URL")]
    pub cosmos_endpoint: Option<String>,

    /// Cosmos account key (never printed)
    #[arg(long, env = "COSMOS_KEY", value_name = "KEY", hide_env_values = true)]
    pub cosmos_key: Option<String>,

    /// The database to restore into (created when missing). Required on the command line:
    /// COSMOS_DATABASE is not read, so a restore never lands in the app's database by default
    #[arg(long, value_name = "NAME")]
    pub cosmos_database: String,

    /// PEM certificate to trust for the Cosmos endpoint (an emulator or test server); the
    /// process must also be started with SSL_CERT_FILE set to it (an SDK limitation)
    #[arg(long, env = "COSMOS_CERT_FILE", value_name = "FILE")]
    pub cosmos_ca_file: Option<PathBuf>,

    /// Restore into a database whose containers already hold documents, upserting the
    /// archive's documents over them
    #[arg(long)]
    pub merge: bool,

    /// Forget the checkpoint of an earlier restore of this archive into this database and
    /// start over
    #[arg(long)]
    pub restart: bool,

    /// Documents written at the same time
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
}

pub async fn run(args: &ArchiveArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    match &args.command {
        Some(ArchiveCommand::Verify { dir }) => verify(dir, settings).await,
        None => create(args, settings).await,
    }
}

fn stall_point() -> anyhow::Result<Option<StallPoint>> {
    match std::env::var(STALL_ENV) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| ConfigError::Usage(format!("{STALL_ENV}: {e}")).into()),
        _ => Ok(None),
    }
}

/// Usage errors of the library as configuration errors (exit code 2).
/// The archive's store; a malformed URL is a usage error.
fn open_store(target: &str) -> anyhow::Result<Store> {
    Store::open(target).map_err(lift)
}

fn lift(e: ArchiveError) -> anyhow::Error {
    match e {
        ArchiveError::Usage(message) => ConfigError::Usage(message).into(),
        other => other.into(),
    }
}

async fn create(args: &ArchiveArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let Some(out) = &args.out else {
        bail!(ConfigError::Usage("archive needs --out DIR|URL".into()));
    };
    let out = open_store(out)?;
    let config = ArchiveConfig {
        ranges: args.ranges.max(1),
        workers: args.workers.max(1),
        chunk_documents: usize::try_from(args.chunk_documents).unwrap_or(usize::MAX),
        max_docs_per_second: args.max_rps,
        stall: stall_point()?,
        ..ArchiveConfig::default()
    };
    let store = source::connect_cosmos(&args.cosmos, settings).await?;
    let source = CosmosSource::new(store);
    let report = archive::run_archive(&source, &out, &config)
        .await
        .map_err(lift)
        .context("the archive failed (run it again: it resumes)")?;
    let counts = report.manifest.chunk_counts();
    let containers: Vec<serde_json::Value> = report
        .manifest
        .containers
        .iter()
        .map(|c| {
            let (chunks, bytes) = counts.get(&c.name).copied().unwrap_or_default();
            json!({
                "name": c.name,
                "present": c.present,
                "partition_key": c.partition_key,
                "started_at": c.started_at,
                "documents": c.documents,
                "lines": c.lines,
                "chunks": chunks,
                "bytes": bytes,
            })
        })
        .collect();
    Ok(Outcome {
        exit: Exit::Ok,
        human: report.summary(),
        json: json!({
            "dir": report.dir,
            "outcome": report.outcome,
            "source": report.manifest.source,
            "started_at": report.manifest.started_at,
            "finished_at": report.manifest.finished_at,
            "chunks": report.manifest.chunks.len(),
            "chunks_written": report.chunks_written,
            "orphans_removed": report.orphans_removed,
            "containers": containers,
        }),
    })
}

async fn verify(target: &str, settings: &Settings) -> anyhow::Result<Outcome> {
    let store = open_store(target)?;
    let mut report = archive::verify_offline(&store).await;
    let mut could_not_compare = None;
    if let DatabaseTarget::Url { url, .. } = &settings.database
        && report.finished
    {
        match postgres_counts(url).await {
            Ok(counts) => report.compare_with_postgres(&counts),
            Err(e) => could_not_compare = Some(format!("{e:#}")),
        }
    }
    let mut human = report.summary();
    let mut json = serde_json::to_value(&report).context("cannot encode the report")?;
    let exit = match (&could_not_compare, report.ok) {
        (_, false) => Exit::Failure,
        (Some(e), true) => {
            tracing::error!(error = %e, "could not compare with PostgreSQL");
            human.push_str(&format!("  could not compare with PostgreSQL: {e}\n"));
            json["postgres_error"] = json!(e);
            Exit::Usage
        }
        (None, true) => Exit::Ok,
    };
    Ok(Outcome { exit, human, json })
}

/// PostgreSQL's comparable counts; reads only: an unmigrated database is an error.
async fn postgres_counts(url: &str) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let probe = mystira_postgres::schema::connect_one(url)
        .await
        .context("cannot connect to the database")?;
    let _ = sqlx::Connection::close(probe).await;
    let pool = mystira_postgres::connect(url, 2)
        .await
        .context("cannot connect to the database")?;
    let result = async {
        let migrations = mystira_postgres::status(&pool)
            .await
            .context("cannot read the applied schema migrations")?;
        if migrations.iter().any(|m| !m.applied) {
            bail!("the database is not migrated: nothing to compare with");
        }
        Ok(archive::postgres_counts(&pool).await?)
    }
    .await;
    pool.close().await;
    result
}

pub async fn restore(args: &RestoreArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let cosmos = CosmosArgs {
        cosmos_endpoint: args.cosmos_endpoint.clone(),
        cosmos_key: args.cosmos_key.clone(),
        cosmos_database: Some(args.cosmos_database.clone()),
        cosmos_ca_file: args.cosmos_ca_file.clone(),
    };
    let archive_store = open_store(&args.dir)?;
    let endpoint = source::cosmos_endpoint(&cosmos, settings).unwrap_or_default();
    let store = source::connect_cosmos(&cosmos, settings).await?;
    let target = RestoreTarget {
        endpoint,
        database: args.cosmos_database.clone(),
    };
    let config = RestoreConfig {
        concurrency: args.concurrency.max(1),
        merge: args.merge,
        restart: args.restart,
        stall: stall_point()?,
    };
    let report = match archive::restore(&archive_store, &store, &target, &config).await {
        Ok(report) => report,
        Err(e @ ArchiveError::TargetNotEmpty { .. }) => {
            // refused before anything was written: the operator decides (--merge)
            let message = e.to_string();
            return Ok(Outcome {
                exit: Exit::Attention,
                human: format!("refused: {message}\n"),
                json: json!({"refused": "target_not_empty", "message": message,
                             "database": args.cosmos_database}),
            });
        }
        Err(e) => {
            return Err(lift(e)).context("the restore failed (run it again: it resumes)");
        }
    };
    Ok(Outcome {
        exit: if report.ok() { Exit::Ok } else { Exit::Failure },
        human: report.summary(),
        json: json!(report),
    })
}
