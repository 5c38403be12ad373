//! The backfill from a live Cosmos-protocol server (the real `@vercel/cosmosdb-server`, started
//! by the test command): the same documents land as from export files, and a run interrupted
//! mid-container resumes from its continuation token to the same final state.
#![allow(clippy::unwrap_used)]

use mystira_cosmos::generate::{self, GenerateOptions};
use mystira_cosmos_client::{CosmosConfig, CosmosStore, TlsTrust, import_dir};
use mystira_domain::Secret;
use mystira_migrate::{BackfillConfig, CosmosSource, ExportDirSource, run_backfill};
use sqlx::PgPool;

const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the Cosmos test server (scripts/test does)")
    })
}

async fn seeded_store(accounts: u64) -> (CosmosStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts,
            seed: 5,
            dirty: 0.05,
        },
    )
    .unwrap();
    let database = format!("backfill-{}", uuid::Uuid::new_v4().simple());
    let config = CosmosConfig::new(env("COSMOS_ENDPOINT"), Secret::new(EMULATOR_KEY.to_owned()))
        .with_database(database)
        .with_tls(TlsTrust::CaFile(env("COSMOS_CERT_FILE").into()));
    let store = CosmosStore::connect(config).await.unwrap();
    import_dir(&store, dir.path(), 16).await.unwrap();
    (store, dir)
}

async fn counts(pool: &PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for t in [
        "accounts",
        "subscriptions",
        "user_profiles",
        "user_badges",
        "completed_scenarios",
        "pending_signups",
        "migration.quarantine",
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t}")))
            .fetch_one(pool)
            .await
            .unwrap();
        out.push(n);
    }
    out
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn backfill_from_cosmos_matches_backfill_from_export_files(pool: PgPool) {
    let (store, dir) = seeded_store(40).await;
    let config = BackfillConfig {
        batch_rows: 50,
        ..BackfillConfig::default()
    };
    let from_files = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config,
        &|_, _| {},
    )
    .await
    .unwrap();
    let expected = counts(&pool).await;
    sqlx::raw_sql(
        "truncate accounts, user_profiles, pending_signups, migration.document_versions,
                  migration.quarantine, migration.checkpoints cascade",
    )
    .execute(&pool)
    .await
    .unwrap();
    let from_cosmos = run_backfill(&pool, &CosmosSource::new(store), &config, &|_, _| {})
        .await
        .unwrap();
    assert!(from_cosmos.reconciles());
    assert_eq!(counts(&pool).await, expected);
    for (container, c) in &from_cosmos.containers {
        assert_eq!(c.read, from_files.containers[container].read, "{container}");
        assert_eq!(
            c.written, from_files.containers[container].written,
            "{container}"
        );
    }
}
