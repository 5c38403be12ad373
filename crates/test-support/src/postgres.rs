//! The PostgreSQL server the tests run against (`DATABASE_URL`, started by `scripts/test`): a
//! fresh database per test, and a digest of a table's rows to compare two states by.

use std::collections::BTreeMap;

use sqlx::{Connection, PgConnection, PgPool};

/// The server's url (its maintenance database).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL server (scripts/test sets it)")
}

/// A database name no other test uses: `mu_<tag>_<uuid>`.
pub fn unique_database_name(tag: &str) -> String {
    format!("mu_{tag}_{}", uuid::Uuid::new_v4().simple())
}

/// The url of database `name` on the server of `server` (a url).
pub fn database_url(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).expect("DATABASE_URL is a url");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// The url of a new, empty database (no schema) on the server.
pub async fn fresh_database(tag: &str) -> String {
    let name = unique_database_name(tag);
    let server = server_url();
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await
        .expect("create the database");
    database_url(&server, &name)
}

/// A new database `name` on the server of `pool`, with the schema, and a pool on it (a second
/// database beside the one `#[sqlx::test]` gave the test).
pub async fn migrated_database_beside(pool: &PgPool, name: &str) -> PgPool {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(pool)
        .await
        .expect("create the database");
    let options = pool.connect_options().as_ref().clone().database(name);
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect to the new database");
    mystira_postgres::MIGRATOR
        .run(&other)
        .await
        .expect("migrate the new database");
    other
}

/// A table's rows as one value: how many, and the md5 of their texts (`row_text`, an SQL
/// expression over the row `t`) joined in the texts' order, so two equal sets of rows give the
/// same digest whatever order they were written in.
pub async fn table_digest(conn: &mut PgConnection, table: &str, row_text: &str) -> (i64, String) {
    let sql = format!(
        "select count(*), coalesce(md5(string_agg({row_text}, '|' order by {row_text})), '') \
         from {table} t"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("digest of {table}: {e}"))
}

/// The digest of every table in `tables`, each row read as `row_text(table)`.
pub async fn digests(
    conn: &mut PgConnection,
    tables: &[&'static str],
    row_text: impl Fn(&str) -> &'static str,
) -> BTreeMap<&'static str, (i64, String)> {
    let mut out = BTreeMap::new();
    for &table in tables {
        out.insert(table, table_digest(conn, table, row_text(table)).await);
    }
    out
}

/// A row's text for the digest of what the backfill and replication write: the whole row of a
/// domain table; of the bookkeeping tables, what says which document was copied or set aside
/// and why, without the times a copy was made (they differ between any two runs).
pub fn copied_row_text(table: &str) -> &'static str {
    match table {
        "migration.quarantine" => "(t.container, t.document_id, t.reason_code, t.message)::text",
        "migration.document_notes" => {
            "(t.container, t.document_id, t.code, t.subject, t.detail)::text"
        }
        "migration.document_versions" => {
            "(t.container, t.document_id, t.key, t.source_ts, t.source_etag)::text"
        }
        _ => "t::text",
    }
}
