//! The schema: embedded sqlx migrations (`crates/postgres/migrations`), creating the database
//! when it does not exist, and reporting which migrations are applied; connecting to the
//! server, and the two round trips that check it (it answers, its clock).

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Every migration of the schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
    /// Applied, but the embedded file's checksum differs from the one recorded: someone edited
    /// an applied migration.
    pub checksum_mismatch: bool,
}

/// Creates the database named in `url` if it does not exist (connecting to the `postgres`
/// maintenance database to do so). Returns whether it was created.
pub async fn ensure_database(url: &str) -> Result<bool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(false);
    };
    if let Ok(conn) = options.connect().await {
        conn.close().await?;
        return Ok(false);
    }
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        admin.close().await?;
        return Ok(false);
    }
    // identifiers cannot be bound as parameters; quote it the way PostgreSQL does
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {quoted}")))
        .execute(&mut admin)
        .await;
    admin.close().await?;
    match created {
        Ok(_) => Ok(true),
        // another process created it between our check and our create
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A pool on `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(PgConnectOptions::from_str(url)?)
        .await
}

/// One round trip to the server (`select 1`): whether it answers, for a readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}

/// The server's clock (`now()`: in a transaction, its start), so that ages computed from it
/// do not depend on this host's clock.
pub async fn server_now<'e>(
    exec: impl sqlx::PgExecutor<'e>,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar("select now()").fetch_one(exec).await
}

/// Applies every pending migration. Idempotent. Returns how many were applied.
pub async fn migrate(pool: &PgPool) -> Result<usize, sqlx::migrate::MigrateError> {
    let before = applied_versions(pool).await.unwrap_or_default().len();
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await.unwrap_or_default().len();
    Ok(after.saturating_sub(before))
}

/// Every embedded migration and whether it is applied.
pub async fn status(pool: &PgPool) -> Result<Vec<MigrationStatus>, sqlx::Error> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let recorded = applied.iter().find(|(v, _)| *v == m.version);
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                applied: recorded.is_some(),
                checksum_mismatch: recorded.is_some_and(|(_, sum)| sum[..] != m.checksum[..]),
            }
        })
        .collect())
}

/// (version, checksum) of applied migrations; empty when sqlx's table does not exist yet.
async fn applied_versions(pool: &PgPool) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Ok(Vec::new());
    }
    sqlx::query_as("select version, checksum from _sqlx_migrations where success order by version")
        .fetch_all(pool)
        .await
}

/// Opens a single connection (for tools that need one, not a pool).
pub async fn connect_one(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url).await
}
