//! The benchmarks' temporary databases on one server: their urls, creating and migrating them,
//! dropping them.

use anyhow::Context as _;
use sqlx::PgPool;

/// `server`'s url with the database name replaced.
pub fn database(server: &str, name: &str) -> String {
    match url_with_path(server, name) {
        Some(u) => u,
        None => server.to_owned(),
    }
}

fn url_with_path(server: &str, name: &str) -> Option<String> {
    let (scheme, authority, _, query) = url_parts(server)?;
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("{scheme}://{authority}/{name}{query}"))
}

/// The database `url` names: its path, read the way [`database`] writes it. Not the text after
/// the last `/`: a private cluster's url ends in `?host=/path/to/socket`, and that took the
/// socket's directory for the database, so `bench` dropped nothing on a private cluster (found
/// at a million accounts, when three 8 GB databases filled the disk).
fn database_name(url: &str) -> Option<&str> {
    let (_, _, path, _) = url_parts(url)?;
    (!path.is_empty()).then_some(path)
}

/// A url's scheme, authority, path (without its `/`) and query (without its `?`): the one
/// reading of a url both [`database`] and [`database_name`] use.
fn url_parts(url: &str) -> Option<(&str, &str, &str, Option<&str>)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    Some((scheme, authority, path, query))
}

/// A new database at `url` with the schema migrated, and a small pool on it.
pub async fn prepared(url: &str) -> anyhow::Result<PgPool> {
    prepared_with(url, 4).await
}

/// A new database at `url` with the schema migrated, and a pool of `connections` on it.
pub(super) async fn prepared_with(url: &str, connections: usize) -> anyhow::Result<PgPool> {
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

/// A small pool on `url`.
pub(super) async fn pool_on(url: &str) -> anyhow::Result<PgPool> {
    mystira_postgres::connect(url, 4)
        .await
        .context("cannot connect to the database")
}

/// Drops the database at `url` (a warning when that fails), unless `keep`.
pub async fn drop_database(server: &str, url: &str, keep: bool) {
    if keep {
        return;
    }
    let Some(name) = database_name(url) else {
        tracing::warn!("could not drop a benchmark database: its url names none");
        return;
    };
    if let Err(e) = drop_named(server, name).await {
        tracing::warn!(error = %e, database = name, "could not drop a benchmark database");
    }
}

async fn drop_named(server: &str, name: &str) -> anyhow::Result<()> {
    let pool = pool_on(&database(server, "postgres")).await?;
    let sql = format!("drop database if exists \"{name}\" with (force)");
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
    pool.close().await;
    dropped?;
    Ok(())
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
    fn the_database_dropped_is_the_one_the_url_names_not_its_socket_directory() {
        let url = database(
            "postgres://postgres@/mystira_users?host=/tmp/pg/socket",
            "b1",
        );
        assert_eq!(database_name(&url), Some("b1"));
        assert_eq!(database_name("postgres://u:p@h:5432/b2"), Some("b2"));
        assert_eq!(database_name("postgres://h:5432"), None);
        assert_eq!(database_name("postgres://h:5432/?host=/tmp/s"), None);
    }
}
