//! The change feed's cross-check against `_ts` probes (issue 34, item 6), on a fresh
//! PostgreSQL database (`sqlx::test`) and the real Cosmos-protocol server. The server's fault
//! endpoint freezes a container's change feed (every feed request answered 304 Not Modified
//! with the client's own continuation, as a feed that does not move) while a document is
//! written straight to Cosmos. Before, `replicate` read nothing, said it was caught up, and
//! the document never reached PostgreSQL. Now the probe of the same range finds it: change-feed
//! mode reports the disagreement (and leaves the document missing), auto mode reads the range
//! from the `_ts` watermark and the document arrives; once the feed moves again, the next probe
//! agrees and clears the record.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;

use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::GenerateOptions;
use mystira_cosmos_store::{CosmosStore, QuerySpec};
use mystira_dual_write::replicate::{
    JOB, ReplicateConfig, ReplicateReport, ReplicationMode, run_replication,
};
use mystira_postgres::feed_checks;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

async fn seeded_store(test: &str, accounts: u64, seed: u64) -> CosmosStore {
    let options = GenerateOptions {
        accounts,
        seed,
        dirty: 0.0,
    };
    support::generated_store(test, &options).await.0
}

fn config(mode: ReplicationMode) -> ReplicateConfig {
    ReplicateConfig {
        mode,
        once: true,
        page_size: 50,
        // the probe's window ends this far before the feed's read (the clock-skew margin)
        overlap: Duration::from_secs(1),
        delete_check_every: None,
        owner: "cross-check".to_owned(),
        ..ReplicateConfig::default()
    }
}

async fn once(pool: &PgPool, store: &CosmosStore, mode: ReplicationMode) -> ReplicateReport {
    let (_stop, stop_rx) = watch::channel(false);
    let report = run_replication(pool, store, &config(mode), stop_rx, &|_| {})
        .await
        .unwrap();
    assert!(report.reconciles());
    report
}

/// Renames one account straight in Cosmos (the app bypassing the router); returns its id and
/// the `_ts` Cosmos gave the write.
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

/// Waits until this host's clock is past `ts` by more than the probe's margin (one second) and
/// one second of `_ts` resolution, so a probe made now covers a write stamped `ts`.
async fn past_the_margin(ts: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while chrono::Utc::now().timestamp() < ts + 2 {
        assert!(Instant::now() < deadline, "the clock did not move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn display_name(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar(
        "select a.display_name from accounts a
         join migration.document_versions v on v.key = a.id
         where v.container = 'Accounts' and v.document_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn accounts_check(pool: &PgPool) -> feed_checks::FeedCheck {
    feed_checks::list(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.unit == "Accounts")
        .expect("the Accounts range was probed")
}

async fn disagreeing(pool: &PgPool, container: &str) -> i64 {
    feed_checks::disagreeing_ranges(pool, JOB)
        .await
        .unwrap()
        .into_iter()
        .find(|(c, _)| c == container)
        .map_or(0, |(_, n)| n)
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_change_feed_that_does_not_move_is_caught_by_the_probe_and_auto_mode_falls_back(
    pool: PgPool,
) {
    let store = seeded_store("crosscheck", 6, 51).await;
    let db = store.database_name().to_owned();

    // A working feed: everything arrives, and the probe agrees.
    let first = once(&pool, &store, ReplicationMode::ChangeFeed).await;
    let accounts = &first.containers["Accounts"];
    assert_eq!(accounts.counts.written, 6);
    assert!(accounts.feed_probes >= 1);
    assert_eq!(first.feed_disagreements(), 0);
    assert_eq!(accounts_check(&pool).await.agreed, Some(true));

    // The Accounts feed stops moving; a document changes in Cosmos.
    let faults = support::Faults::new();
    let frozen = faults
        .arm(json!({
            "pathContains": format!("/dbs/{db}/colls/Accounts/docs"),
            "header": {"a-im": "Incremental feed"},
            "action": "respond", "status": 304, "count": 1_000_000
        }))
        .await;
    let (id, ts) = rename_in_cosmos(&store, "Missed by the feed").await;
    past_the_margin(ts).await;

    // change-feed mode: the feed reads nothing; the probe says so, loudly, and nothing else
    let second = once(&pool, &store, ReplicationMode::ChangeFeed).await;
    assert!(faults.hits(&frozen).await > 0, "the feed was asked");
    let accounts = &second.containers["Accounts"];
    assert_eq!(accounts.counts.read, 0, "the frozen feed delivered nothing");
    assert_eq!(accounts.feed_disagreements, 1, "{second:?}");
    assert_eq!(accounts.feed_missing, 1);
    assert_eq!(accounts.fallback_ranges, 0);
    assert_eq!(second.feed_disagreements(), 1);
    assert_ne!(display_name(&pool, &id).await, "Missed by the feed");
    let check = accounts_check(&pool).await;
    assert_eq!(
        (check.agreed, check.missing, check.fallback),
        (Some(false), 1, false)
    );
    assert_eq!(
        disagreeing(&pool, "Accounts").await,
        1,
        "what serve exports"
    );
    assert_eq!(disagreeing(&pool, "UserProfiles").await, 0);

    // auto mode: the same disagreement, and the range is read from the _ts watermark
    let third = once(&pool, &store, ReplicationMode::Auto).await;
    let accounts = &third.containers["Accounts"];
    assert_eq!(accounts.feed_disagreements, 1);
    assert_eq!(accounts.fallback_ranges, 1);
    assert_eq!(
        accounts.counts.written, 1,
        "the missed document, from the watermark"
    );
    assert_eq!(display_name(&pool, &id).await, "Missed by the feed");
    assert!(accounts_check(&pool).await.fallback);

    // The feed moves again: it delivers the next change, the probe agrees, and the record is
    // cleared.
    faults.disarm(&frozen).await;
    let (id, ts) = rename_in_cosmos(&store, "Delivered by the feed").await;
    past_the_margin(ts).await;
    let fourth = once(&pool, &store, ReplicationMode::Auto).await;
    let accounts = &fourth.containers["Accounts"];
    assert_eq!(display_name(&pool, &id).await, "Delivered by the feed");
    assert!(accounts.feed_probes >= 1);
    assert_eq!(fourth.feed_disagreements(), 0, "{fourth:?}");
    assert_eq!(accounts.fallback_ranges, 0);
    let check = accounts_check(&pool).await;
    assert_eq!(
        (check.agreed, check.missing, check.fallback),
        (Some(true), 0, false)
    );
    assert_eq!(check.disagreements, 2, "both disagreements stay counted");
    assert_eq!(disagreeing(&pool, "Accounts").await, 0);
    store.delete_database().await.unwrap();
}

/// The probe does not take a change made after the feed's read for a miss, nor a document the
/// feed delivered but PostgreSQL holds under no source version (held back by an outbox row).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_moving_feed_agrees_with_its_probes(pool: PgPool) {
    let store = seeded_store("crosscheck-ok", 4, 52).await;
    let (_, ts) = rename_in_cosmos(&store, "Changed before").await;
    past_the_margin(ts).await;
    let report = once(&pool, &store, ReplicationMode::Auto).await;
    assert_eq!(report.feed_disagreements(), 0);
    // a continuous run probing every cycle while documents keep changing
    let continuous = ReplicateConfig {
        once: false,
        poll: Duration::from_millis(50),
        probe_every: Some(Duration::ZERO),
        ..config(ReplicationMode::ChangeFeed)
    };
    let (stop, stop_rx) = watch::channel(false);
    let replicate = run_replication(&pool, &store, &continuous, stop_rx, &|_| {});
    let writer = async {
        for n in 0..6 {
            rename_in_cosmos(&store, &format!("Changed {n}")).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        stop.send(true).unwrap();
    };
    let (report, ()) = tokio::join!(replicate, writer);
    let report = report.unwrap();
    let accounts = &report.containers["Accounts"];
    // one probe a second at most: the window ends a whole second before the feed's read
    assert!(accounts.feed_probes >= 2, "{report:?}");
    assert_eq!(report.feed_disagreements(), 0, "{report:?}");
    store.delete_database().await.unwrap();
}
