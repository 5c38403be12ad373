//! The database a command works on: its url (the private cluster, started, when none is
//! configured) and a pool on it with the schema migrated.

use anyhow::Context as _;
use mystira_postgres::local_cluster::LocalCluster;

use crate::config::{DatabaseTarget, Settings};

/// The url to use, starting the private cluster when nothing is configured; and where it came
/// from, for output.
pub(crate) async fn database_url(settings: &Settings) -> anyhow::Result<(String, &'static str)> {
    let source = settings.database.source_label();
    match &settings.database {
        DatabaseTarget::Url { url, .. } => Ok((url.clone(), source)),
        DatabaseTarget::PrivateCluster => {
            let running = LocalCluster::discover(None)?.ensure_running().await?;
            Ok((running.url, source))
        }
    }
}

/// A pool on the configured database (the private cluster when none is), created and with
/// the schema migrated first: the data commands work on a fresh machine with nothing set up.
pub(crate) async fn prepared_pool(
    settings: &Settings,
    max_connections: u32,
) -> anyhow::Result<sqlx::PgPool> {
    let (url, source) = database_url(settings).await?;
    tracing::debug!(source, "database chosen");
    mystira_postgres::ensure_database(&url)
        .await
        .context("cannot create the database")?;
    let pool = mystira_postgres::connect(&url, max_connections)
        .await
        .context("cannot connect to the database")?;
    let applied = mystira_postgres::migrate(&pool)
        .await
        .context("migrating the schema failed")?;
    if applied > 0 {
        tracing::info!(applied, "schema migrations applied");
    }
    Ok(pool)
}
