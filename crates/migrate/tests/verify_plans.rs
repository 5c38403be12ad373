//! The shape of verify's per-table aggregate statements, from their executed plans (issue 33,
//! item 5: verify at half a load). They read every row of a table, so what each row costs is
//! the whole cost, and on the 2 cores verify is meant for, PostgreSQL's side shares the CPU with
//! the source pass:
//!
//! - no parallel workers (a `Gather` only adds handing every row to the leader: the source
//!   pass already keeps the other core busy), and no sort of every row to group the 256
//!   buckets (the planner's estimate of the bucket filter made it sort, and the sort spilled);
//! - the lookup of the `embedded_id_collision` note (a correlated subplan over
//!   `user_profiles` / `accounts` and `document_notes`) runs only for the rows that hold a
//!   derived id, never once per row: it sits behind the cheap tests of the row's own columns.
//!
//! The session is set up so that the planner would choose parallel workers even for these
//! small tables, as it does at 100,000 accounts.
#![allow(clippy::unwrap_used)]

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_migrate::{BackfillConfig, ExportDirSource, Outcome, run_backfill, verify};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Every node of a plan tree, depth first.
fn nodes<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    for child in node["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_aggregates_run_serially_hash_their_buckets_and_look_up_collisions_only_for_derived_ids(
    pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // parallel plans at any size, as a table of a million rows gets them
    let connect = connect.options([
        ("min_parallel_table_scan_size", "0"),
        ("parallel_setup_cost", "0"),
        ("parallel_tuple_cost", "0"),
    ]);
    let pool = pool_opts.connect_with(connect).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 300,
            seed: 5,
            dirty: 0.05,
        },
    )
    .unwrap();
    let source = ExportDirSource::new(dir.path());
    let report = run_backfill(&pool, &source, &BackfillConfig::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles());
    sqlx::raw_sql("analyze").execute(&pool).await.unwrap();
    let clean = verify(&pool, &source, &Default::default()).await.unwrap();
    assert_eq!(clean.outcome, Outcome::Clean, "{clean:?}");

    for (entity, explained) in mystira_migrate::verify::explain_pg_aggregates(&pool)
        .await
        .unwrap()
    {
        let table = entity.table();
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(rows > 0, "{table} has no rows: nothing would be measured");
        let mut all = Vec::new();
        nodes(&explained[0]["Plan"], &mut all);
        for node in &all {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            assert!(
                !kind.starts_with("Gather") && kind != "Sort",
                "the aggregate of {table} runs a {kind}:\n{explained:#}"
            );
        }
        // the rows whose id is derived from another: the only ones that may look the note up
        let derived: i64 = if matches!(table, "subscriptions" | "user_badges") {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select count(*) from {table}
                 where cosmos_id is not null and id <> mystira_key_for_cosmos_id(cosmos_id)"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        } else {
            0
        };
        assert!(
            derived < rows,
            "{table}: every row has a derived id, so a lookup per row would not show"
        );
        for node in all.iter().filter(|n| n["Parent Relationship"] == "SubPlan") {
            let loops = node["Actual Loops"].as_i64().unwrap();
            assert!(
                loops <= derived,
                "a subplan of the aggregate of {table} ran {loops} times for {rows} rows, \
                 {derived} of them with a derived id:\n{explained:#}"
            );
        }
    }
}

/// Verify hashes each row's canonical text on both sides: with PostgreSQL's own
/// `hashtextextended` there, and with its port (`canonical::pg_hash`) here. The two must agree
/// for every length (the hash reads 12 bytes at a time and treats the last 0 to 11 apart) and
/// every kind of character.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_row_hash_is_the_servers_hashtextextended_for_every_length(pool: sqlx::PgPool) {
    const CHARS: [char; 9] = ['a', '7', ':', '~', 'é', '✓', '🙂', '\u{7f}', '"'];
    let texts: Vec<String> = (0..=150_usize)
        .map(|len| {
            (0..len)
                .map(|i| CHARS[(i * 7 + len) % CHARS.len()])
                .collect()
        })
        .collect();
    let server: Vec<i64> = sqlx::query_scalar(
        "select hashtextextended(t collate \"C\", 0)
         from unnest($1::text[]) with ordinality as p(t, n) order by n",
    )
    .bind(&texts)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(server.len(), texts.len());
    for (text, server) in texts.iter().zip(server) {
        assert_eq!(
            mystira_migrate::verify::canonical::pg_hash(text.as_bytes()),
            server,
            "{} bytes: {text:?}",
            text.len()
        );
    }
}
