//! `mystira-users replicate --once` as a process against a change feed that does not move
//! (issue 34, item 6): the Cosmos test server's fault endpoint answers every change-feed request
//! of `Accounts` with 304 Not Modified while an account changes in Cosmos. Before, the run
//! printed `read 0` and exited 0, and the change never reached PostgreSQL. Now
//! `--mode change-feed` says so loudly (an error in the log, the counts in `--json`, exit code
//! 3) and the default mode (`auto`) reads that range from the `_ts` watermark: the change
//! arrives.
//!
//! Environment: `DATABASE_URL` and the Cosmos test server, as `scripts/test` exports them.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as cosmos_support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{CosmosStore, QuerySpec, import_dir};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

fn replicate(db: &str, cosmos_db: &str, args: &[&str]) -> (Output, Value) {
    let out = Command::new(BIN)
        .args([
            "replicate",
            "--once",
            "--json",
            "--delete-check-seconds",
            "0",
        ])
        // the probe's window ends this far before the feed's read (the clock-skew margin)
        .args(["--overlap-seconds", "1"])
        .args(args)
        .args(["--database-url", db])
        .env_remove("MYSTIRA_CONFIG")
        .env("COSMOS_KEY", cosmos_support::EMULATOR_KEY)
        .env("COSMOS_DATABASE", cosmos_db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

async fn rename_in_cosmos(store: &CosmosStore, name: &str) -> (String, i64) {
    let accounts = store.container("Accounts").await.unwrap();
    let mut pages = accounts.query::<Value>(QuerySpec::new("select * from c"), None);
    let mut doc = pages.next_page().await.unwrap().unwrap().items.remove(0);
    let id = doc["id"].as_str().unwrap().to_owned();
    doc["DisplayName"] = json!(name);
    accounts.upsert(id.clone(), &id, &doc).await.unwrap();
    let spec = QuerySpec::new("select c._ts from c where c.id = @id").param("@id", id.as_str());
    let mut pages = accounts.query::<Value>(spec, None);
    let ts = pages.next_page().await.unwrap().unwrap().items[0]["_ts"]
        .as_i64()
        .unwrap();
    (id, ts)
}

async fn display_name(db: &str, id: &str) -> String {
    let mut conn = PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(
        "select a.display_name from accounts a
         join migration.document_versions v on v.key = a.id
         where v.container = 'Accounts' and v.document_id = $1",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_frozen_change_feed_is_reported_in_change_feed_mode_and_worked_around_in_auto_mode() {
    let db = mystira_test_support::postgres::fresh_database("feed_check").await;
    let (store, _repos) = cosmos_support::user_domain("feedcheck").await;
    let cosmos_db = store.database_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 5,
            seed: 81,
            dirty: 0.0,
        },
    )
    .unwrap();
    import_dir(&store, dir.path(), 8).await.unwrap();

    let (out, report) = replicate(&db, &cosmos_db, &["--mode", "change-feed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["containers"]["Accounts"]["written"], 5);
    assert_eq!(report["feed_disagreements"], 0);

    let faults = cosmos_support::Faults::new();
    let frozen = faults
        .arm(json!({
            "pathContains": format!("/dbs/{cosmos_db}/colls/Accounts/docs"),
            "header": {"a-im": "Incremental feed"},
            "action": "respond", "status": 304, "count": 1_000_000
        }))
        .await;
    let (id, ts) = rename_in_cosmos(&store, "Written straight to Cosmos").await;
    // the probe covers writes stamped before its margin (one second) and one second of `_ts`
    let deadline = Instant::now() + Duration::from_secs(10);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() < ts + 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (out, report) = replicate(&db, &cosmos_db, &["--mode", "change-feed"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{report}\n{log}");
    assert_eq!(
        report["containers"]["Accounts"]["read"], 0,
        "the feed read nothing"
    );
    assert_eq!(report["feed_disagreements"], 1);
    assert_eq!(report["feed_missing"], 1);
    assert_eq!(report["fallback_ranges"], 0);
    assert!(
        log.contains("the change feed disagrees with a _ts probe") && log.contains("ERROR"),
        "{log}"
    );
    assert!(!log.contains(&id), "no document id in the log: {log}");
    assert_ne!(display_name(&db, &id).await, "Written straight to Cosmos");

    // the default mode: auto
    let (out, report) = replicate(&db, &cosmos_db, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["mode"], "auto");
    assert_eq!(report["feed_disagreements"], 1);
    assert_eq!(report["fallback_ranges"], 1);
    assert_eq!(
        display_name(&db, &id).await,
        "Written straight to Cosmos",
        "auto mode read the range from the _ts watermark"
    );
    assert!(faults.hits(&frozen).await > 0);
    faults.disarm(&frozen).await;
    store.delete_database().await.unwrap();
}
