//! `verify` against a live Cosmos source (the real Cosmos-protocol server) that is written while
//! it runs: a write in flight between the descent's read of the source and its read of
//! PostgreSQL is rechecked away, real drift is still reported after the rechecks, and a quiet
//! source gives the same report with rechecks as without.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mystira_copy::apply::{Retries, write_page};
use mystira_cosmos_codec::generate::GenerateOptions;
use mystira_cosmos_store::CosmosStore;
use mystira_migrate::verify::DescentHook;
use mystira_migrate::{
    BackfillConfig, ContainerCounts, CosmosSource, DocumentSource, DriftKind, Entity, Outcome,
    SourceDocument, VerifyOptions, VerifyReport, run_backfill, verify,
};
use mystira_test_support::cosmos::generated_store;
use sqlx::PgPool;

/// A live Cosmos database of `accounts` generated accounts (no dirty documents), migrated into
/// `pool`.
async fn migrated_store(pool: &PgPool, accounts: u64) -> CosmosStore {
    let options = GenerateOptions {
        accounts,
        seed: 11,
        dirty: 0.0,
    };
    let (store, _dir) = generated_store("verify-live", &options).await;
    let report = run_backfill(
        pool,
        &CosmosSource::new(store.clone()),
        &BackfillConfig::default(),
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(report.reconciles());
    store
}

/// The id of one account document of the source.
async fn some_account_id(store: &CosmosStore) -> String {
    let source = CosmosSource::new(store.clone());
    let page = source.read_page("Accounts", None, 1).await.unwrap();
    match page.documents.into_iter().next() {
        Some(SourceDocument::Document(doc)) => doc["id"].as_str().unwrap().to_owned(),
        other => panic!("no account document: {other:?}"),
    }
}

async fn account_doc(store: &CosmosStore, id: &str) -> serde_json::Value {
    let container = store.container("Accounts").await.unwrap();
    container
        .read::<serde_json::Value>(id.to_owned(), id)
        .await
        .unwrap()
        .unwrap()
        .value
}

/// Writes account `id` to Cosmos again (the server gives it a new `_ts`/`_etag`; the content
/// is the app's), in a later second than `after` when given, and returns what Cosmos holds.
async fn write_cosmos(store: &CosmosStore, id: &str, after: Option<i64>) -> serde_json::Value {
    let container = store.container("Accounts").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut doc = account_doc(store, id).await;
        for system in ["_rid", "_self", "_etag", "_attachments", "_ts"] {
            doc.as_object_mut().unwrap().remove(system);
        }
        container.upsert(id.to_owned(), id, &doc).await.unwrap();
        let written = account_doc(store, id).await;
        let ts = written["_ts"].as_i64().unwrap();
        // `_ts` counts seconds: the test needs a version PostgreSQL can tell is newer
        if after.is_none_or(|a| ts > a) {
            return written;
        }
        assert!(Instant::now() < deadline, "cosmos _ts did not advance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The copy of a document into PostgreSQL as the router's phase-1 copy makes it (after Cosmos).
async fn copy_to_postgres(pool: &PgPool, doc: serde_json::Value) {
    let mut counts = ContainerCounts::default();
    write_page(
        pool,
        "Accounts",
        vec![SourceDocument::Document(doc)],
        &mut counts,
        Retries::Backoff,
    )
    .await
    .unwrap();
    assert_eq!(counts.written, 1, "the copy was not written: {counts:?}");
}

/// A verify of the live source that races the app's writes of account `id` deterministically:
/// before it starts, a write has reached Cosmos and not yet PostgreSQL (so the descent looks at
/// the account's bucket); once the descent has read the source, the app writes the account
/// again, Cosmos first and then PostgreSQL, before the descent reads PostgreSQL's side.
async fn racing_verify(
    pool: &PgPool,
    store: &CosmosStore,
    id: &str,
    recheck_rounds: u32,
) -> VerifyReport {
    let in_flight = write_cosmos(store, id, None).await;
    let fired = Arc::new(AtomicBool::new(false));
    let hook = {
        let (pool, store, id, fired) = (pool.clone(), store.clone(), id.to_owned(), fired.clone());
        let read_at = in_flight["_ts"].as_i64();
        DescentHook::new(move || {
            let (pool, store, id, fired) = (pool.clone(), store.clone(), id.clone(), fired.clone());
            async move {
                if fired.swap(true, Ordering::SeqCst) {
                    return;
                }
                let newer = write_cosmos(&store, &id, read_at).await;
                copy_to_postgres(&pool, newer).await;
            }
        })
    };
    let opts = VerifyOptions {
        page_size: 50,
        recheck_rounds,
        after_descent_read: hook,
        ..VerifyOptions::default()
    };
    let report = verify(pool, &CosmosSource::new(store.clone()), &opts)
        .await
        .unwrap();
    assert!(
        fired.load(Ordering::SeqCst),
        "the descent did not run: {}",
        report.summary(10)
    );
    report
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_write_in_flight_during_verify_is_rechecked_away(pool: PgPool) {
    let store = migrated_store(&pool, 12).await;
    let id = some_account_id(&store).await;
    let source = CosmosSource::new(store.clone());
    let quiet = verify(&pool, &source, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(quiet.outcome, Outcome::Clean, "{}", quiet.summary(10));
    assert_eq!(quiet.recheck.rounds, 0);

    // without rechecks, the write between the two reads is reported: PostgreSQL is ahead
    let unchecked = racing_verify(&pool, &store, &id, 0).await;
    assert_eq!(
        unchecked.outcome,
        Outcome::Drift,
        "{}",
        unchecked.summary(10)
    );
    assert!(
        unchecked.drift().any(|i| i.kind == DriftKind::Ahead
            && i.entity == Entity::Accounts
            && i.cosmos_id.as_deref() == Some(id.as_str())),
        "{}",
        unchecked.summary(10)
    );
    assert_eq!(unchecked.recheck.documents, 0);

    // with them, the document is read again from both sides, which agree: clean
    let rechecked = racing_verify(&pool, &store, &id, 3).await;
    assert_eq!(
        rechecked.outcome,
        Outcome::Clean,
        "{}",
        rechecked.summary(10)
    );
    assert_eq!(rechecked.drift_count(), 0);
    assert_eq!(rechecked.recheck.documents, 1, "{:?}", rechecked.recheck);
    assert_eq!(rechecked.recheck.cleared_documents, 1);
    assert!(rechecked.recheck.cleared_items >= 1);
    assert_eq!(rechecked.recheck.rounds, 1);
    assert_eq!(rechecked.entities[&Entity::Accounts].ahead, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn real_drift_is_still_reported_after_the_rechecks(pool: PgPool) {
    let store = migrated_store(&pool, 12).await;
    let id = some_account_id(&store).await;
    // changed behind verify's back, in PostgreSQL only
    let changed = sqlx::query("update accounts set display_name = 'changed behind verify' where cosmos_id = $1 or id::text = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);

    let source = CosmosSource::new(store.clone());
    let opts = VerifyOptions {
        recheck_pause_ms: 50,
        ..VerifyOptions::default()
    };
    let report = verify(&pool, &source, &opts).await.unwrap();
    assert_eq!(report.outcome, Outcome::Drift, "{}", report.summary(10));
    let drift: Vec<_> = report.drift().collect();
    assert_eq!(drift.len(), 1, "{}", report.summary(10));
    assert_eq!(drift[0].kind, DriftKind::Changed);
    assert_eq!(drift[0].entity, Entity::Accounts);
    assert_eq!(drift[0].cosmos_id.as_deref(), Some(id.as_str()));
    assert_eq!(drift[0].fields, vec!["display_name".to_owned()]);
    // rechecked in every round, never cleared, and not taken for a write in progress
    assert_eq!(report.recheck.documents, 1, "{:?}", report.recheck);
    assert_eq!(report.recheck.rounds, 3);
    assert_eq!(report.recheck.cleared_items, 0);
    assert_eq!(report.recheck.changing_documents, 0);

    // a quiet source: the same items and counts as a run without rechecks
    let unchecked = verify(
        &pool,
        &source,
        &VerifyOptions {
            recheck_rounds: 0,
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.items, unchecked.items);
    assert_eq!(report.entities, unchecked.entities);
    assert_eq!(unchecked.recheck.rounds, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_document_written_at_every_recheck_is_reported_changing(pool: PgPool) {
    let store = migrated_store(&pool, 12).await;
    let id = some_account_id(&store).await;
    // a write that has reached Cosmos and not PostgreSQL, and another one before every round
    write_cosmos(&store, &id, None).await;
    let hook = {
        let (store, id) = (store.clone(), id.clone());
        DescentHook::new(move || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                write_cosmos(&store, &id, None).await;
            }
        })
    };
    let opts = VerifyOptions {
        recheck_pause_ms: 10,
        before_recheck_round: hook,
        ..VerifyOptions::default()
    };
    let report = verify(&pool, &CosmosSource::new(store.clone()), &opts)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Drift, "{}", report.summary(10));
    let drift: Vec<_> = report.drift().collect();
    assert_eq!(drift.len(), 1, "{}", report.summary(10));
    assert_eq!(drift[0].kind, DriftKind::Changing);
    assert_eq!(drift[0].cosmos_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        drift[0].reason.as_deref(),
        Some(format!("{}: stale", mystira_migrate::verify::CHANGING_REASON).as_str())
    );
    assert_eq!(report.recheck.rounds, 3);
    assert_eq!(report.recheck.changing_documents, 1);
    assert_eq!(report.recheck.cleared_items, 0);
    assert_eq!(report.entities[&Entity::Accounts].changing, 1);
}
