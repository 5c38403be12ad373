//! Per-page and per-batch statements cost in proportion to the page, not to a table (issue 33):
//! each is run inside a transaction against a large table, and the transaction's own scan
//! counts (`pg_stat_xact_user_tables`) must show that the table was read by key, never
//! scanned whole.
#![allow(clippy::unwrap_used)]

use mystira_postgres::bookkeeping::resolve_quarantined;
use sqlx::PgPool;

/// Sequential and index scans of `table` so far in the current transaction.
async fn scans(conn: &mut sqlx::PgConnection, schema: &str, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(seq_scan, 0), coalesce(idx_scan, 0) from pg_stat_xact_user_tables
         where schemaname = $1 and relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// A page's documents resolve their quarantine entries by the primary key, one probe each,
/// however many entries are open: a million-account load leaves about 36,000, and a join with
/// the page's ids was planned as a hash of all of them per page (7.4 ms a page, 27 s of the
/// load).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn resolving_a_pages_quarantine_entries_reads_them_by_key(pool: PgPool) {
    // 36,000 open entries with documents of a realistic size, and statistics on them
    sqlx::raw_sql(
        "insert into migration.quarantine (container, document_id, reason_code, message, document, source_ts)
         select 'UserProfiles', 'doc-' || i, 'invalid_value', 'bad', jsonb_build_object('x', repeat('y', 600)), i
         from generate_series(1, 36000) i;
         analyze migration.quarantine",
    )
    .execute(&pool)
    .await
    .unwrap();
    // a page of 1,000 documents, 100 of which had been quarantined
    let page: Vec<String> = (35_901..36_901).map(|i| format!("doc-{i}")).collect();
    let mut tx = pool.begin().await.unwrap();
    let (seq_before, idx_before) = scans(&mut tx, "migration", "quarantine").await;
    let resolved = resolve_quarantined(&mut *tx, "UserProfiles", &page)
        .await
        .unwrap();
    let (seq_after, idx_after) = scans(&mut tx, "migration", "quarantine").await;
    tx.commit().await.unwrap();
    assert_eq!(resolved, 100);
    assert_eq!(
        seq_after - seq_before,
        0,
        "the quarantine was scanned whole for one page"
    );
    assert!(idx_after > idx_before, "the quarantine was not read by key");
    let open: i64 =
        sqlx::query_scalar("select count(*) from migration.quarantine where resolved_at is null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(open, 35_900);
}
