//! `mystira-users db ...`: schema migrations and the private PostgreSQL cluster.

use anyhow::Context as _;
use clap::Subcommand;
use mystira_postgres::MigrationStatus;
use mystira_postgres::local_cluster::{LocalCluster, StopOutcome};
use serde_json::json;

use super::Outcome;
use super::database::database_url;
use crate::config::{DatabaseTarget, Settings};
use crate::exit::Exit;

/// `mystira-users db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply every pending schema migration, creating the database if it does not exist.
    ///
    /// Prints each migration it applied (nothing when all were already applied: running it
    /// again is harmless). With no database configured, starts the private cluster first.
    Migrate,

    /// List the applied and pending schema migrations; exit code 3 when any are pending.
    ///
    /// Exit code 0: every migration is applied. 3: some are pending (run `db migrate`), or an
    /// applied migration's file differs from what was applied (someone edited it). With no
    /// database configured, starts the private cluster first.
    Status,

    /// Start the private PostgreSQL cluster (or reuse it when running) and print its url.
    ///
    /// Creates the cluster on first use (initdb), starts it, waits until it accepts
    /// connections (at most 30 s), creates the `mystira_users` database, and prints its url.
    /// With --json prints {"database_url": ..., "action": "initialized"|"started"|"reused",
    /// "dir": ...}. Always the private cluster, even when a database url is configured.
    Start,

    /// Stop the private PostgreSQL cluster (its data stays for the next start).
    ///
    /// Open sessions are ended; committed data is kept. Doing nothing when it is not running
    /// is not an error.
    Stop,

    /// Print the database url the other commands use, without starting anything.
    ///
    /// The configured url (flag, env or config file), or else the private cluster's url (which
    /// accepts connections only after `db start` or any command that starts it).
    Url,
}

/// Connections the db commands need: they run one statement at a time.
const POOL_SIZE: u32 = 2;

pub async fn run(command: &DbCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    match command {
        DbCommand::Migrate => migrate(settings).await,
        DbCommand::Status => status(settings).await,
        DbCommand::Start => start(settings).await,
        DbCommand::Stop => stop().await,
        DbCommand::Url => url(settings),
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<Outcome> {
    let (url, source) = database_url(settings).await?;
    let created = mystira_postgres::ensure_database(&url)
        .await
        .context("cannot create the database")?;
    let pool = mystira_postgres::connect(&url, POOL_SIZE)
        .await
        .context("cannot connect to the database")?;
    let before = mystira_postgres::status(&pool)
        .await
        .context("cannot read the applied migrations")?;
    let count = mystira_postgres::migrate(&pool)
        .await
        .context("migrating the schema failed")?;
    let after = mystira_postgres::status(&pool)
        .await
        .context("cannot read the applied migrations")?;
    pool.close().await;
    tracing::info!(applied = count, "schema migrated");

    let applied_now: Vec<&MigrationStatus> = after
        .iter()
        .filter(|m| m.applied && !before.iter().any(|b| b.version == m.version && b.applied))
        .collect();
    let mut human = String::new();
    if created {
        human.push_str("created the database\n");
    }
    for m in &applied_now {
        human.push_str(&format!("applied {} {}\n", m.version, m.description));
    }
    if applied_now.is_empty() {
        human.push_str(&format!(
            "nothing to apply: all {} migrations are applied\n",
            after.len()
        ));
    }
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({
            "database_source": source,
            "database_created": created,
            "applied": applied_now
                .iter()
                .map(|m| json!({"version": m.version, "description": m.description}))
                .collect::<Vec<_>>(),
            "total": after.len(),
        }),
    })
}

async fn status(settings: &Settings) -> anyhow::Result<Outcome> {
    let (url, source) = database_url(settings).await?;
    let pool = mystira_postgres::connect(&url, POOL_SIZE).await.context(
        "cannot connect to the database (if it does not exist yet, `mystira-users db migrate` \
         creates it)",
    )?;
    let migrations = mystira_postgres::status(&pool)
        .await
        .context("cannot read the applied migrations")?;
    pool.close().await;

    let pending = migrations.iter().filter(|m| !m.applied).count();
    let edited = migrations.iter().filter(|m| m.checksum_mismatch).count();
    let mut human = String::new();
    for m in &migrations {
        let state = match (m.applied, m.checksum_mismatch) {
            (true, true) => "edited ",
            (true, false) => "applied",
            (false, _) => "pending",
        };
        human.push_str(&format!("{state}  {}  {}\n", m.version, m.description));
    }
    human.push_str(&format!(
        "{} applied, {pending} pending",
        migrations.len() - pending
    ));
    if edited > 0 {
        human.push_str(&format!(
            ", {edited} edited after being applied (migrations are append-only: restore the \
             file and add a new migration instead)"
        ));
    }
    human.push('\n');
    Ok(Outcome {
        exit: if pending > 0 || edited > 0 {
            Exit::Attention
        } else {
            Exit::Ok
        },
        human,
        json: json!({
            "database_source": source,
            "migrations": migrations,
            "applied": migrations.len() - pending,
            "pending": pending,
            "edited": edited,
        }),
    })
}

async fn start(settings: &Settings) -> anyhow::Result<Outcome> {
    if let DatabaseTarget::Url { .. } = &settings.database {
        tracing::warn!(
            source = settings.database.source_label(),
            "a database url is configured: other commands use it, not the private cluster"
        );
    }
    let cluster = LocalCluster::discover(None)?;
    let running = cluster.ensure_running().await?;
    Ok(Outcome {
        exit: Exit::Ok,
        human: format!("{}\n", running.url),
        json: json!({
            "database_url": running.url,
            "action": running.action,
            "dir": cluster.dir(),
        }),
    })
}

async fn stop() -> anyhow::Result<Outcome> {
    let cluster = LocalCluster::discover(None)?;
    let outcome = cluster.stop().await?;
    let dir = cluster.dir().display();
    let human = match outcome {
        StopOutcome::Stopped => format!("stopped the private PostgreSQL cluster in {dir}\n"),
        StopOutcome::WasNotRunning => {
            format!("the private PostgreSQL cluster in {dir} was not running\n")
        }
        StopOutcome::NotInitialized => format!("there is no private PostgreSQL cluster in {dir}\n"),
    };
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({"outcome": outcome, "dir": cluster.dir()}),
    })
}

fn url(settings: &Settings) -> anyhow::Result<Outcome> {
    let url = match &settings.database {
        DatabaseTarget::Url { url, .. } => url.clone(),
        DatabaseTarget::PrivateCluster => LocalCluster::discover(None)?.url(),
    };
    let source = settings.database.source_label();
    Ok(Outcome {
        exit: Exit::Ok,
        human: format!("{url}\n"),
        json: json!({"database_url": url, "database_source": source}),
    })
}
