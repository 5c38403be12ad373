//! What the process tests of the binary share: the PostgreSQL server `scripts/test` started
//! (in `DATABASE_URL`) and a fresh database on it per test; `serve` as a child process
//! ([`serve`]).
#![allow(clippy::unwrap_used, dead_code)]

pub mod serve;

use sqlx::{Connection, PgConnection};

/// The server's url (its maintenance database).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL server (scripts/test sets it)")
}

/// The url of a new, empty database on the server.
pub async fn fresh_database(tag: &str) -> String {
    let name = format!("mu_{tag}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&server_url()).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}
