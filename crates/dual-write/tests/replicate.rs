//! Replication against real parts: a fresh PostgreSQL database per test (`sqlx::test`) and the
//! real Cosmos-protocol server behind our launcher, whose change feed is a real incremental
//! feed (`tools/cosmos-server/launch.js`). Every test backfills first, then writes straight
//! into Cosmos (as the app does when it bypasses the router) and replicates.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{CosmosStore, QuerySpec, import_dir};
use mystira_dual_write::replicate::{
    PageDone, PageHook, ReplicateConfig, ReplicationMode, StartAt, run_replication,
};
use mystira_migrate::{BackfillConfig, CosmosSource, run_backfill};
use mystira_test_support::cosmos::generated_store;
use mystira_test_support::postgres::{copied_row_text, digests};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

/// A Cosmos database holding a generated data set (no problem documents: counts stay exact).
async fn seeded_store(accounts: u64, seed: u64) -> CosmosStore {
    let options = GenerateOptions {
        accounts,
        seed,
        dirty: 0.0,
    };
    generated_store("replicate", &options).await.0
}

async fn backfill(pool: &PgPool, store: &CosmosStore) {
    let report = run_backfill(
        pool,
        &CosmosSource::new(store.clone()),
        &BackfillConfig::default(),
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(report.reconciles(), "{report:?}");
}

/// Direct writes into Cosmos: renames the first `renamed` accounts and adds `added` accounts
/// of another generated data set. Returns the ids renamed.
async fn write_directly(store: &CosmosStore, renamed: usize, added: u64) -> Vec<String> {
    let accounts = store.container("Accounts").await.unwrap();
    let mut pages = accounts.query::<Value>(QuerySpec::new("select * from c"), None);
    let mut docs = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        docs.extend(page.items);
    }
    docs.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut ids = Vec::new();
    for mut doc in docs.into_iter().take(renamed) {
        let id = doc["id"].as_str().unwrap().to_owned();
        doc["DisplayName"] = Value::String(format!("Renamed {}", ids.len()));
        accounts.upsert(id.clone(), &id, &doc).await.unwrap();
        ids.push(id);
    }
    if added > 0 {
        let dir = tempfile::tempdir().unwrap();
        generate::write_export(
            dir.path(),
            &GenerateOptions {
                accounts: added,
                seed: 977,
                dirty: 0.0,
            },
        )
        .unwrap();
        // only the accounts: their profiles are not needed here
        let only = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("Accounts.jsonl"),
            only.path().join("Accounts.jsonl"),
        )
        .unwrap();
        import_dir(store, only.path(), 8).await.unwrap();
    }
    ids
}

fn config(owner: &str) -> ReplicateConfig {
    ReplicateConfig {
        once: true,
        page_size: 7,
        workers: 2,
        lease: Duration::from_secs(5),
        delete_grace: Duration::ZERO,
        owner: owner.to_owned(),
        ..ReplicateConfig::default()
    }
}

async fn once(
    pool: &PgPool,
    store: &CosmosStore,
    config: &ReplicateConfig,
) -> mystira_dual_write::replicate::ReplicateReport {
    let (_stop, stop_rx) = watch::channel(false);
    let report = run_replication(pool, store, config, stop_rx, &|_| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "counts reconcile");
    report
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every row the backfill and replication write, as a digest per table (bookkeeping times
/// left out: they differ between any two runs).
async fn state(pool: &PgPool) -> BTreeMap<&'static str, (i64, String)> {
    let tables = [
        "accounts",
        "subscriptions",
        "user_profiles",
        "user_badges",
        "completed_scenarios",
        "pending_signups",
        "migration.quarantine",
        "migration.document_versions",
    ];
    let mut conn = pool.acquire().await.unwrap();
    digests(&mut conn, &tables, |table| match table {
        "migration.quarantine" => "(t.container, t.document_id, t.reason_code)::text",
        "migration.document_versions" => {
            "(t.container, t.document_id, t.key, t.source_ts, t.source_etag, t.deleted)::text"
        }
        _ => copied_row_text(table),
    })
    .await
}

async fn reset(pool: &PgPool) {
    sqlx::raw_sql(
        "truncate accounts, user_profiles, pending_signups, migration.document_versions,
                  migration.document_notes, migration.quarantine, migration.checkpoints,
                  migration.work_ranges cascade",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn replicate_once_copies_direct_writes_after_a_backfill_and_a_second_run_changes_nothing(
    pool: PgPool,
) {
    let store = seeded_store(20, 5).await;
    backfill(&pool, &store).await;
    let renamed = write_directly(&store, 3, 5).await;

    let first = once(&pool, &store, &config("replicator-a")).await;
    let accounts = &first.containers["Accounts"];
    assert_eq!(
        accounts.counts.read, 25,
        "every account once, at its latest version"
    );
    assert_eq!(accounts.counts.written, 8, "3 updates and 5 new accounts");
    assert_eq!(accounts.counts.unchanged, 17);
    assert_eq!(first.containers["UserProfiles"].counts.written, 0);
    assert!(accounts.lag_seconds.is_some() && accounts.newest_change_age_seconds.is_some());
    for (n, id) in renamed.iter().enumerate() {
        let name: String = sqlx::query_scalar(
            "select a.display_name from accounts a
             join migration.document_versions v on v.key = a.id
             where v.container = 'Accounts' and v.document_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(name, format!("Renamed {n}"), "the update landed");
    }
    assert_eq!(scalar(&pool, "select count(*) from accounts").await, 25);

    // Caught up: the next run resumes from the checkpoints and reads nothing.
    let before = state(&pool).await;
    let second = once(&pool, &store, &config("replicator-b")).await;
    for (container, c) in &second.containers {
        assert_eq!(c.counts.read, 0, "{container}: nothing new");
    }
    assert_eq!(state(&pool).await, before, "a second run changes nothing");

    // The replica equals a fresh backfill of what Cosmos holds now, row by row.
    reset(&pool).await;
    backfill(&pool, &store).await;
    assert_eq!(state(&pool).await, before);
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn watermark_mode_finds_the_same_changes(pool: PgPool) {
    let store = seeded_store(20, 6).await;
    backfill(&pool, &store).await;
    write_directly(&store, 4, 3).await;

    let watermark = ReplicateConfig {
        mode: ReplicationMode::Watermark,
        ..config("watermark")
    };
    let first = once(&pool, &store, &watermark).await;
    assert_eq!(
        first.containers["Accounts"].counts.written, 7,
        "4 updates, 3 new"
    );
    let after_watermark = state(&pool).await;

    // A second pass reads only the overlap window again, and skips it by _etag.
    let second = once(&pool, &store, &watermark).await;
    let accounts = &second.containers["Accounts"];
    assert_eq!(accounts.counts.written, 0);
    assert_eq!(
        accounts.counts.read, 0,
        "the overlap window is skipped by _etag"
    );
    assert!(
        accounts.duplicates_skipped > 0,
        "the overlap window was read again"
    );

    // The change feed finds exactly the same state.
    reset(&pool).await;
    backfill(&pool, &store).await;
    let feed = once(&pool, &store, &config("feed")).await;
    assert_eq!(
        feed.containers["Accounts"].counts.written, 0,
        "already current"
    );
    assert_eq!(state(&pool).await, after_watermark);
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn deletes_are_reported_and_applied_only_with_apply_deletes(pool: PgPool) {
    let store = seeded_store(10, 7).await;
    backfill(&pool, &store).await;
    let accounts = store.container("Accounts").await.unwrap();
    let mut pages = accounts.query::<Value>(QuerySpec::new("select c.id from c"), None);
    let mut ids = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        ids.extend(
            page.items
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
    }
    ids.sort();
    let gone = ids[0].clone();
    assert!(accounts.delete(gone.clone(), &gone).await.unwrap());

    let reported = once(&pool, &store, &config("deletes")).await;
    assert_eq!(reported.deletes["Accounts"].missing_from_cosmos, 1);
    assert_eq!(reported.deletes["Accounts"].applied, 0);
    assert_eq!(reported.unapplied_deletes(), 1);
    assert_eq!(reported.deletes["UserProfiles"].missing_from_cosmos, 0);
    assert_eq!(
        scalar(&pool, "select count(*) from accounts").await,
        10,
        "reported, not applied"
    );

    let applying = ReplicateConfig {
        apply_deletes: true,
        ..config("deletes")
    };
    let applied = once(&pool, &store, &applying).await;
    assert_eq!(applied.deletes["Accounts"].applied, 1);
    assert_eq!(applied.unapplied_deletes(), 0);
    assert_eq!(scalar(&pool, "select count(*) from accounts").await, 9);
    let tombstone: bool = sqlx::query_scalar(
        "select deleted from migration.document_versions
         where container = 'Accounts' and document_id = $1",
    )
    .bind(&gone)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(tombstone, "the delete is recorded as a tombstone version");

    // Nothing is missing any more.
    let again = once(&pool, &store, &config("deletes")).await;
    assert_eq!(again.deletes["Accounts"].missing_from_cosmos, 0);

    // A document written in PostgreSQL first (phase 2) and not yet delivered to Cosmos is not
    // a delete, however old its copy: its outbox row keeps it out of the comparison.
    let pending = ids[1].clone();
    sqlx::query(
        "insert into migration.outbox (container, key)
         select container, key from migration.document_versions
         where container = 'Accounts' and document_id = $1",
    )
    .bind(&pending)
    .execute(&pool)
    .await
    .unwrap();
    assert!(accounts.delete(pending.clone(), &pending).await.unwrap());
    let with_outbox = once(&pool, &store, &applying).await;
    assert_eq!(with_outbox.deletes["Accounts"].missing_from_cosmos, 0);
    assert_eq!(scalar(&pool, "select count(*) from accounts").await, 9);
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_profile_replicated_before_its_account_is_attached_once_the_account_arrives(
    pool: PgPool,
) {
    let store = seeded_store(5, 9).await;
    backfill(&pool, &store).await;
    // Profiles of new accounts reach Cosmos (and the replicator) before their accounts.
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 6,
            seed: 41,
            dirty: 0.0,
        },
    )
    .unwrap();
    let (profiles_only, accounts_only) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, into) in [
        ("UserProfiles", &profiles_only),
        ("Accounts", &accounts_only),
    ] {
        let file = format!("{name}.jsonl");
        std::fs::copy(dir.path().join(&file), into.path().join(&file)).unwrap();
    }
    import_dir(&store, profiles_only.path(), 8).await.unwrap();
    once(&pool, &store, &config("early")).await;
    let detached = scalar(
        &pool,
        "select count(*) from migration.document_notes where code = 'missing_account'",
    )
    .await;
    assert!(detached > 0, "the profiles landed detached");

    import_dir(&store, accounts_only.path(), 8).await.unwrap();
    once(&pool, &store, &config("late")).await;
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from migration.document_notes where code = 'missing_account'"
        )
        .await,
        0,
        "every profile is attached"
    );
    // The same state as a backfill of what Cosmos holds now.
    let replicated = state(&pool).await;
    reset(&pool).await;
    backfill(&pool, &store).await;
    assert_eq!(state(&pool).await, replicated);
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_range_leased_elsewhere_is_left_alone_until_its_lease_expires(pool: PgPool) {
    let store = seeded_store(5, 10).await;
    backfill(&pool, &store).await;
    once(&pool, &store, &config("first")).await; // plans the ranges and checkpoints them
    write_directly(&store, 2, 0).await;

    // Another replicator (on another host: its liveness cannot be checked) holds every range.
    sqlx::query(
        "update migration.work_ranges set owner = 'elsewhere:1/0.0',
             lease_until = now() + interval '60 seconds'
         where job = 'replicate'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let blocked = once(&pool, &store, &config("second")).await;
    for (container, c) in &blocked.containers {
        assert_eq!(c.ranges_served, 0, "{container}: held elsewhere");
        assert_eq!(c.counts.read, 0);
    }

    // Its lease expires (it died): the ranges are taken over from its checkpoints.
    sqlx::query(
        "update migration.work_ranges set lease_until = now() - interval '1 second'
         where job = 'replicate'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let taken = once(&pool, &store, &config("second")).await;
    assert_eq!(taken.containers["Accounts"].ranges_served, 1);
    assert_eq!(
        taken.containers["Accounts"].counts.read, 2,
        "resumed from the checkpoint: only the two changes"
    );
    assert_eq!(taken.containers["Accounts"].counts.written, 2);
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn starting_at_a_time_reads_only_what_changed_since_in_both_modes(pool: PgPool) {
    let store = seeded_store(10, 11).await;
    backfill(&pool, &store).await;
    // _ts has one-second resolution: start at the next whole second, once it has passed.
    let start = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 1, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while chrono::Utc::now() <= start {
        assert!(Instant::now() < deadline, "the clock did not advance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_directly(&store, 3, 0).await;

    let feed = ReplicateConfig {
        start: StartAt::Time(start),
        ..config("feed")
    };
    let report = once(&pool, &store, &feed).await;
    assert_eq!(
        report.containers["Accounts"].counts.read, 3,
        "only the changes"
    );
    assert_eq!(report.containers["Accounts"].counts.written, 3);
    assert_eq!(report.containers["UserProfiles"].counts.read, 0);

    let watermark = ReplicateConfig {
        mode: ReplicationMode::Watermark,
        overlap: Duration::ZERO,
        ..feed
    };
    let report = once(&pool, &store, &watermark).await;
    assert_eq!(
        report.containers["Accounts"].counts.read, 3,
        "only the changes"
    );
    assert_eq!(
        report.containers["Accounts"].counts.written, 0,
        "already replicated"
    );
    store.delete_database().await.unwrap();
}

/// Waits (bounded) until `sql` returns true.
async fn eventually(pool: &PgPool, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(pool)
            .await
            .unwrap();
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn two_replicators_share_the_ranges_and_one_takes_over_when_the_other_stops(pool: PgPool) {
    let store = seeded_store(15, 8).await;
    backfill(&pool, &store).await;
    let continuous = |owner: &str| ReplicateConfig {
        once: false,
        poll: Duration::from_millis(50),
        delete_check_every: None,
        lease: Duration::from_secs(3),
        ..config(owner)
    };
    let (a_cfg, b_cfg) = (continuous("replicator-a"), continuous("replicator-b"));
    let (stop_a, rx_a) = watch::channel(false);
    let (stop_b, rx_b) = watch::channel(false);
    let a = run_replication(&pool, &store, &a_cfg, rx_a, &|_| {});
    let b = run_replication(&pool, &store, &b_cfg, rx_b, &|_| {});
    let driver = async {
        // Both running: every range is leased to exactly one of them.
        eventually(
            &pool,
            "select count(*) = 3 and bool_and(owner is not null)
             from migration.work_ranges where job = 'replicate'",
            "every range leased",
        )
        .await;
        write_directly(&store, 2, 0).await;
        eventually(
            &pool,
            "select count(*) = 2 from accounts where display_name like 'Renamed %'",
            "the first change replicated",
        )
        .await;
        // A stops (releasing its ranges); B takes them over and replicates the next change.
        stop_a.send(true).unwrap();
        eventually(
            &pool,
            "select bool_and(owner like 'replicator-b/%')
             from migration.work_ranges where job = 'replicate'",
            "B holding every range",
        )
        .await;
        write_directly(&store, 4, 0).await;
        eventually(
            &pool,
            "select count(*) = 4 from accounts where display_name like 'Renamed %'",
            "the second change replicated",
        )
        .await;
        stop_b.send(true).unwrap();
    };
    let (a, b, ()) = tokio::join!(a, b, driver);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.stopped && b.stopped);
    // Each document was read from the feed by one of them only: no range was served twice.
    let read = |c: &str| {
        a.containers.get(c).map_or(0, |x| x.counts.read)
            + b.containers.get(c).map_or(0, |x| x.counts.read)
    };
    assert_eq!(
        read("UserProfiles"),
        scalar(&pool, "select count(*) from user_profiles").await as u64
    );
    // 15 from the beginning, then the 2 and the 4 renames (the first 2 may already have been
    // folded into the first pass, at their latest version)
    let accounts = read("Accounts");
    assert!(
        (15 + 4..=15 + 2 + 4).contains(&accounts),
        "accounts read {accounts}"
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from migration.work_ranges where job = 'replicate' and owner is not null"
        )
        .await,
        0,
        "stopping releases the leases"
    );
    store.delete_database().await.unwrap();
}

/// What [`change_mid_pass`] changed while a pass was held open: an account the pass had already
/// read (`early`, changed at `early_ts`) and one it had not read yet (`late`, changed at
/// `late_ts`, a later second).
#[derive(Debug, Clone)]
struct MidPass {
    early: String,
    early_ts: i64,
    late: String,
    late_ts: i64,
}

const CHANGED_EARLY: &str = "Changed mid-pass (early)";
const CHANGED_LATE: &str = "Changed mid-pass (late)";

fn epoch_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn cosmos_account(accounts: &mystira_cosmos_store::Container, id: &str) -> Value {
    let spec = QuerySpec::new("select * from c where c.id = @id").param("@id", id);
    let mut pages = accounts.query::<Value>(spec, None);
    let mut found = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        found.extend(page.items);
    }
    assert_eq!(found.len(), 1, "one account with that id");
    found.remove(0)
}

/// Run inside the pass, after its first page of accounts was applied (no backfill ran, so the
/// accounts PostgreSQL holds are exactly that page's): changes one of them, waits (bounded) for
/// the clock to pass the second of that change, then changes an account the pass has not read
/// yet, so that the pass goes on to read a `_ts` newer than the early change's.
async fn change_mid_pass(pool: &PgPool, store: &CosmosStore) -> MidPass {
    let read: BTreeSet<String> = sqlx::query_scalar(
        "select document_id from migration.document_versions where container = 'Accounts'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let accounts = store.container("Accounts").await.unwrap();
    let mut pages = accounts.query::<Value>(QuerySpec::new("select c.id from c"), None);
    let mut all = BTreeSet::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        all.extend(
            page.items
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
    }
    let early = read
        .first()
        .expect("the first page applied accounts")
        .clone();
    let late = all
        .difference(&read)
        .next()
        .expect("accounts left for later pages")
        .clone();

    let mut doc = cosmos_account(&accounts, &early).await;
    doc["DisplayName"] = Value::String(CHANGED_EARLY.to_owned());
    accounts.upsert(early.clone(), &early, &doc).await.unwrap();
    let early_ts = cosmos_account(&accounts, &early).await["_ts"]
        .as_i64()
        .unwrap();
    // `_ts` has one-second resolution: the late change must land in a later second (the test
    // server runs on this machine's clock), so wait, bounded, for the clock to pass it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while epoch_seconds() <= early_ts {
        assert!(Instant::now() < deadline, "the clock did not advance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut doc = cosmos_account(&accounts, &late).await;
    doc["DisplayName"] = Value::String(CHANGED_LATE.to_owned());
    accounts.upsert(late.clone(), &late, &doc).await.unwrap();
    let late_ts = cosmos_account(&accounts, &late).await["_ts"]
        .as_i64()
        .unwrap();
    assert!(late_ts > early_ts, "the late change is in a later second");
    MidPass {
        early,
        early_ts,
        late,
        late_ts,
    }
}

/// A hook that runs [`change_mid_pass`] once, after the first page of accounts, and keeps what
/// it changed.
fn hold_open_after_first_accounts_page(
    pool: &PgPool,
    store: &CosmosStore,
) -> (PageHook, Arc<Mutex<Option<MidPass>>>) {
    let changed = Arc::new(Mutex::new(None));
    let fired = Arc::new(AtomicBool::new(false));
    let (pool, store, out) = (pool.clone(), store.clone(), changed.clone());
    let hook = PageHook::new(move |page: PageDone| {
        let (pool, store, out, fired) = (pool.clone(), store.clone(), out.clone(), fired.clone());
        async move {
            if page.container != "Accounts" || page.page != 1 || fired.swap(true, Ordering::SeqCst)
            {
                return;
            }
            let done = change_mid_pass(&pool, &store).await;
            *out.lock().unwrap() = Some(done);
        }
    });
    (hook, changed)
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

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_watermark_pass_does_not_skip_a_document_changed_after_it_was_read(pool: PgPool) {
    let store = seeded_store(6, 12).await;
    let (hook, changed) = hold_open_after_first_accounts_page(&pool, &store);
    let held = ReplicateConfig {
        mode: ReplicationMode::Watermark,
        page_size: 2,
        // no overlap: the skip shows with any overlap shorter than the pass, and this keeps the
        // test to one second boundary
        overlap: Duration::ZERO,
        delete_check_every: None,
        after_page: hook,
        ..config("watermark-held")
    };
    let first = once(&pool, &store, &held).await;
    let mid = changed
        .lock()
        .unwrap()
        .clone()
        .expect("the pass was held open");
    assert_eq!(
        first.containers["Accounts"].counts.read, 6,
        "every account once"
    );
    assert_ne!(
        display_name(&pool, &mid.early).await,
        CHANGED_EARLY,
        "the pass had read the early account before it changed"
    );
    assert_eq!(
        display_name(&pool, &mid.late).await,
        CHANGED_LATE,
        "the pass read the late change (so it saw a newer _ts than the early change's)"
    );
    let since: i64 = sqlx::query_scalar(
        "select (position->>'since')::bigint from migration.work_ranges
         where job = 'replicate-watermark' and unit = 'Accounts'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        since <= mid.early_ts && since < mid.late_ts,
        "the watermark ({since}) stays at the pass's start, not at the newest _ts read ({})",
        mid.late_ts
    );

    // The next pass reads the early account's change.
    let next = ReplicateConfig {
        after_page: PageHook::default(),
        ..held
    };
    let second = once(&pool, &store, &next).await;
    assert_eq!(
        display_name(&pool, &mid.early).await,
        CHANGED_EARLY,
        "the change made after the document was read is replicated by the next pass"
    );
    assert!(second.containers["Accounts"].counts.written >= 1);
    store.delete_database().await.unwrap();
}

/// The change feed has no such gap: its position is the feed's own (a continuation), not a
/// `_ts`, and a document changed after it was read comes again, later in the feed.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_change_feed_reads_a_document_changed_after_it_was_read(pool: PgPool) {
    let store = seeded_store(6, 13).await;
    let (hook, changed) = hold_open_after_first_accounts_page(&pool, &store);
    let held = ReplicateConfig {
        page_size: 2,
        delete_check_every: None,
        after_page: hook,
        ..config("feed-held")
    };
    let first = once(&pool, &store, &held).await;
    let mid = changed
        .lock()
        .unwrap()
        .clone()
        .expect("the turn was held open");
    assert_eq!(
        display_name(&pool, &mid.early).await,
        CHANGED_EARLY,
        "the same turn read the early account again, at its new version"
    );
    assert_eq!(display_name(&pool, &mid.late).await, CHANGED_LATE);
    assert_eq!(
        first.containers["Accounts"].counts.read, 7,
        "six accounts, and the early one a second time"
    );
    store.delete_database().await.unwrap();
}

/// Issue 34, item 10: an idle replicator that is caught up reports a lag near its poll
/// interval, in its own report and in what `serve` exports from PostgreSQL, however long ago
/// the newest change was written, and however old the rows an earlier run in the other mode
/// left behind are.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn an_idle_caught_up_replicator_reports_a_lag_near_its_poll_interval(pool: PgPool) {
    let store = seeded_store(5, 12).await;
    // an earlier run in watermark mode, ten minutes ago
    once(
        &pool,
        &store,
        &ReplicateConfig {
            mode: ReplicationMode::Watermark,
            ..config("earlier-watermark")
        },
    )
    .await;
    sqlx::query(
        "update migration.work_ranges set caught_up_at = now() - interval '10 minutes'
         where job = 'replicate-watermark'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let continuous = ReplicateConfig {
        once: false,
        poll: Duration::from_millis(100),
        delete_check_every: None,
        ..config("idle-replicator")
    };
    let latest: Mutex<Option<mystira_dual_write::replicate::ReplicateReport>> = Mutex::new(None);
    let (stop, stop_rx) = watch::channel(false);
    let record = |r: &mystira_dual_write::replicate::ReplicateReport| {
        *latest.lock().unwrap() = Some(r.clone());
    };
    let replicate = run_replication(&pool, &store, &continuous, stop_rx, &record);
    let driver = async {
        // idle long enough that the newest change is clearly older than the poll interval
        let deadline = Instant::now() + Duration::from_secs(20);
        let accounts = loop {
            let report = latest.lock().unwrap().clone();
            if let Some(accounts) = report.and_then(|r| r.containers.get("Accounts").cloned())
                && accounts.newest_change_age_seconds.is_some_and(|a| a >= 3.0)
            {
                break accounts;
            }
            assert!(Instant::now() < deadline, "the replicator never went idle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let lag = accounts.lag_seconds.expect("caught up");
        assert!(
            lag < 2.0,
            "an idle, caught-up replicator reports a lag of {lag} s (the newest change is {:?} s old)",
            accounts.newest_change_age_seconds
        );
        let exported = mystira_postgres::leases::caught_up_lag(
            &pool,
            &[
                mystira_dual_write::replicate::JOB,
                mystira_dual_write::replicate::WATERMARK_JOB,
            ],
        )
        .await
        .unwrap();
        for (container, lag) in exported {
            let lag = lag.expect("caught up");
            assert!(
                lag < 2.0,
                "{container}: the exported lag is {lag} s while the replicator is idle"
            );
        }
        stop.send(true).unwrap();
    };
    let (report, ()) = tokio::join!(replicate, driver);
    assert!(report.unwrap().stopped);
    store.delete_database().await.unwrap();
}
