//! The long-runners against real faults, in-process: a continuous `run_replication` on a fresh
//! PostgreSQL database (`sqlx::test`) and the real Cosmos-protocol server, whose `/_faults`
//! endpoint drops connections, answers 5xx or holds requests unanswered for the test's own
//! database. The store's client gives up after two attempts, so each fault reaches the
//! replicator within milliseconds instead of the production budget's 20-odd seconds. The
//! replicator must keep running through every fault, say in its heartbeat that it is retrying
//! (and why, by class), and replicate what was written to Cosmos once the fault is gone.
//! (PostgreSQL outages need a server of the test's own: `crates/cli/tests/long_runners.rs`.)
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{CosmosStore, import_dir};
use mystira_dual_write::heartbeat::{Heartbeat, this_process};
use mystira_dual_write::replicate::{ReplicateConfig, run_replication};
use mystira_postgres::heartbeats::{self, WorkerKind};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

/// A fresh Cosmos database with `accounts` generated accounts (and their profiles), on a
/// client that retries a failed request once.
async fn store_with_accounts(test: &str, accounts: u64, seed: u64) -> CosmosStore {
    let store = CosmosStore::connect(
        support::config(&support::unique_db(test)).with_retry(support::fast_retry(2)),
    )
    .await
    .unwrap();
    import_generated(&store, accounts, seed).await;
    store
}

async fn import_generated(store: &CosmosStore, accounts: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts,
            seed,
            dirty: 0.0,
        },
    )
    .unwrap();
    import_dir(store, dir.path(), 8).await.unwrap();
}

async fn accounts(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits (bounded) until `check` holds, failing with `what` otherwise; fails at once if the
/// replicator has stopped.
async fn until<F, Fut>(running: &AtomicBool, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            running.load(Ordering::SeqCst),
            "the replicator stopped while waiting for {what}"
        );
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replicator's heartbeat row: (state, last error class, seconds since its beat).
async fn heartbeat(pool: &PgPool) -> Option<(String, Option<String>, f64)> {
    heartbeats::list(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.kind == "replicate")
        .map(|w| (w.state, w.last_error_class, w.age_seconds))
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn continuous_replication_rides_out_cosmos_faults_and_its_heartbeat_says_so(pool: PgPool) {
    let store = store_with_accounts("longrun-cosmos", 6, 41).await;
    let db = store.database_name().to_owned();
    let beat = Heartbeat::start_every(
        &pool,
        this_process(WorkerKind::Replicate, Some("change-feed")),
        Duration::from_millis(200),
    )
    .await;
    let config = ReplicateConfig {
        once: false,
        poll: Duration::from_millis(100),
        delete_check_every: None,
        lease: Duration::from_secs(5),
        outage_backoff_cap: Duration::from_millis(500),
        health: beat.health(),
        owner: "longrun-cosmos".to_owned(),
        ..ReplicateConfig::default()
    };
    let (stop, stop_rx) = watch::channel(false);
    let running = AtomicBool::new(true);
    let replicate = async {
        let result = run_replication(&pool, &store, &config, stop_rx, &|_| {}).await;
        running.store(false, Ordering::SeqCst);
        result
    };
    let faults = support::Faults::new();
    let scope = format!("/dbs/{db}/");
    let driver = async {
        until(&running, "the first catch-up", || async {
            accounts(&pool).await == 6
        })
        .await;
        // Each fault in turn, held until the replicator has reported it in its heartbeat:
        // connections dropped (transport), 500s (a service error the client does not retry),
        // requests held unanswered and then cut (a Cosmos that stops responding).
        for (rule, class) in [
            (json!({"action": "drop"}), "cosmos_transport"),
            (
                json!({"action": "respond", "status": 500}),
                "cosmos_service",
            ),
            (json!({"action": "hang"}), "cosmos_transport"),
        ] {
            let mut rule = rule;
            rule["pathContains"] = json!(scope);
            rule["count"] = json!(1_000_000);
            let id = faults.arm(rule.clone()).await;
            if rule["action"] == "hang" {
                // held requests fail only when the rule goes (their connections are closed)
                until(&running, "a request held", || async {
                    faults.hits(&id).await > 0
                })
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                faults.disarm(&id).await;
                let id = faults
                    .arm(json!({"pathContains": scope, "count": 1_000_000, "action": "drop"}))
                    .await;
                until(&running, "the cut reported", || async {
                    heartbeat(&pool).await.is_some_and(|(state, c, _)| {
                        state == "retrying" && c.as_deref() == Some(class)
                    })
                })
                .await;
                faults.disarm(&id).await;
            } else {
                until(&running, &format!("{class} reported"), || async {
                    heartbeat(&pool).await.is_some_and(|(state, c, _)| {
                        state == "retrying" && c.as_deref() == Some(class)
                    })
                })
                .await;
                // the replicator keeps trying (and keeps failing) while the fault lasts
                let before = faults.hits(&id).await;
                until(&running, "another attempt", || async {
                    faults.hits(&id).await > before
                })
                .await;
                faults.disarm(&id).await;
            }
            until(&running, "running again", || async {
                heartbeat(&pool)
                    .await
                    .is_some_and(|(state, _, age)| state == "running" && age < 2.0)
            })
            .await;
        }
        // Documents written to Cosmos after the faults arrive.
        import_generated(&store, 4, 42).await;
        until(&running, "the later accounts", || async {
            accounts(&pool).await == 10
        })
        .await;
        stop.send(true).unwrap();
    };
    let (report, ()) = tokio::join!(replicate, driver);
    let report = report.unwrap();
    assert!(report.stopped && report.reconciles());
    beat.stop().await;
    let (state, _, _) = heartbeat(&pool).await.unwrap();
    assert_eq!(state, "stopped");
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_once_run_still_fails_on_a_cosmos_fault(pool: PgPool) {
    let store = store_with_accounts("longrun-once", 2, 43).await;
    let faults = support::Faults::new();
    let id = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", store.database_name()),
            "count": 1_000_000, "action": "respond", "status": 500
        }))
        .await;
    let config = ReplicateConfig {
        once: true,
        ..ReplicateConfig::default()
    };
    let (_stop, stop_rx) = watch::channel(false);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        run_replication(&pool, &store, &config, stop_rx, &|_| {}),
    )
    .await
    .expect("a --once run does not wait out an outage");
    faults.disarm(&id).await;
    let err = result.expect_err("a --once run reports the failure");
    assert_eq!(err.outage_class(), Some("cosmos_service"));
    store.delete_database().await.unwrap();
}
