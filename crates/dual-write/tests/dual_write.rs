//! The dual-write router, the retry journal and the outbox relay on the real stores (a real
//! PostgreSQL and the real Cosmos-protocol server, behind its fault-injection endpoint where a
//! test needs Cosmos to fail). Each test has its own PostgreSQL database and Cosmos database.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use mystira_cosmos_codec::codec::{self, Container};
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, Email, MagicLink, PendingSignup, Role, Secret, SignupCode,
    SignupStatus, Subscription, SubscriptionType, UserBadge, UserProfile,
};
use mystira_dual_write::journal::{FileJournal, apply_record, replay_files, replay_table};
use mystira_dual_write::relay::{RelayConfig, relay_once};
use mystira_dual_write::router::{DualWriteRouter, FixedPhase, RouterConfig};
use mystira_postgres::journal::{self, JournalOp, JournalRecord};
use mystira_postgres::{PgAccountRepository, PgProfileRepository, outbox};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 30, second).unwrap()
}

fn account() -> Account {
    Account {
        id: Uuid::new_v4(),
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{}", Uuid::new_v4().simple())),
        email: Email::parse(&format!("{}@example.org", Uuid::new_v4().simple())).unwrap(),
        display_name: "Sam".to_owned(),
        role: Role::User,
        settings: AccountSettings::default(),
        created_at: at(0),
        last_login_at: at(1),
    }
}

struct Setup {
    router: DualWriteRouter,
    store: mystira_cosmos_store::CosmosStore,
    _dir: tempfile::TempDir,
}

async fn setup_on(pool: PgPool, phase: Phase, test: &str, config: RouterConfig) -> Setup {
    let (store, repos) = support::user_domain(test).await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path().join("journal")).unwrap();
    let router = DualWriteRouter::new(pool, repos, Arc::new(FixedPhase(phase)), files, config);
    Setup {
        router,
        store,
        _dir: dir,
    }
}

async fn setup(pool: &PgPool, phase: Phase, test: &str) -> Setup {
    setup_on(pool.clone(), phase, test, RouterConfig::default()).await
}

async fn pg_account(pool: &PgPool, id: Uuid) -> Option<Account> {
    PgAccountRepository::new(pool.clone())
        .get(id)
        .await
        .unwrap()
}

async fn recorded_version(pool: &PgPool, container: &str, key: Uuid) -> (i64, Option<String>) {
    sqlx::query_as(
        "select source_ts, source_etag from migration.document_versions
         where container = $1 and key = $2",
    )
    .bind(container)
    .bind(key)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The document as an independent HTTP client reads it from the server (plain GET on the
/// REST path, no SDK; the test server does not check the signature).
async fn raw_document(
    store: &mystira_cosmos_store::CosmosStore,
    container: &str,
    id: &str,
    pk: &str,
) -> Value {
    support::raw_document(store.database_name(), container, id, pk).await
}

/// The account's document as Cosmos stores it (with `_ts` and `_etag`).
async fn stored_account(s: &Setup, key: Uuid) -> Value {
    s.router
        .cosmos()
        .writer
        .read(Container::Accounts, key)
        .await
        .unwrap()
        .unwrap()
}

/// Runs relay passes until the outbox is empty (bounded).
async fn drain_outbox(setup: &Setup) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        relay_once(
            setup.router.pool(),
            &setup.router.cosmos().writer,
            &RelayConfig::default(),
        )
        .await
        .unwrap();
        if outbox::depth(setup.router.pool()).await.unwrap().rows == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase1_write_lands_in_cosmos_then_in_postgres_at_the_version_cosmos_stored(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "p1-write").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let renamed = Account {
        display_name: "Sam's parent".to_owned(),
        ..a.clone()
    };
    assert!(
        AccountRepository::update(&s.router, &renamed)
            .await
            .unwrap()
    );

    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.display_name, "Sam's parent");
    assert_eq!(
        pg_account(&pool, a.id).await.unwrap().display_name,
        "Sam's parent"
    );
    let stored = stored_account(&s, a.id).await;
    let (ts, etag) = recorded_version(&pool, "Accounts", a.id).await;
    assert_eq!(Some(ts), stored["_ts"].as_i64());
    assert_eq!(etag.as_deref(), stored["_etag"].as_str());
    assert_eq!(s.router.stats().copied, 2);
    // a copy from Cosmos must not echo back to Cosmos
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase1_copy_that_cannot_land_goes_to_the_journal_table_and_replays(pool: PgPool) {
    let config = RouterConfig {
        postgres_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    };
    let s = setup_on(
        pool.clone(),
        Phase::DualWriteCosmosRead,
        "p1-journal",
        config,
    )
    .await;
    // Holding this lock blocks the copy (it claims a version row) but not the journal insert.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("lock table migration.document_versions in exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    assert_eq!(s.router.stats().journalled_postgres, 1);
    assert_eq!(journal::depth(&pool).await.unwrap().entries, 1);
    blocker.rollback().await.unwrap();
    assert!(pg_account(&pool, a.id).await.is_none());

    let report = replay_table(&pool, 100, Some(&s.router.cosmos().writer))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(pg_account(&pool, a.id).await.unwrap().email, a.email);
    assert_eq!(journal::depth(&pool).await.unwrap().entries, 0);
    // replaying again finds nothing, and re-applying the same record changes nothing
    assert_eq!(
        replay_table(&pool, 100, Some(&s.router.cosmos().writer))
            .await
            .unwrap()
            .applied,
        0
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase1_with_postgres_unreachable_journals_to_a_local_file_that_replays(pool: PgPool) {
    // a database nobody listens for: every PostgreSQL call of the router fails at once
    let dead = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let s = setup_on(
        dead,
        Phase::DualWriteCosmosRead,
        "p1-file",
        RouterConfig::default(),
    )
    .await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let profile_id = Uuid::new_v4();
    ProfileRepository::create(&s.router, &profile(profile_id, Some(a.id)))
        .await
        .unwrap();
    // the account's creation, its `UserProfileIds` gaining the profile, the profile
    assert_eq!(s.router.stats().journalled_file, 3);
    let files = s.router.file_journal();
    assert_eq!(files.pending().unwrap().records, 3);

    // the writer still holds its file: nothing to replay yet
    assert_eq!(
        replay_files(&pool, files, Some(&s.router.cosmos().writer))
            .await
            .unwrap()
            .files_done,
        0
    );
    files.seal();
    let report = replay_files(&pool, files, Some(&s.router.cosmos().writer))
        .await
        .unwrap();
    assert_eq!((report.applied, report.files_done), (3, 1));
    assert_eq!(pg_account(&pool, a.id).await.unwrap().email, a.email);
    let p = PgProfileRepository::new(pool.clone())
        .get(profile_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.account_id, Some(a.id));
    assert_eq!(files.pending().unwrap().files, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase1_delete_leaves_a_tombstone_that_a_late_copy_cannot_pass(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "p1-delete").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let before_delete = stored_account(&s, a.id).await;
    assert!(AccountRepository::delete(&s.router, a.id).await.unwrap());
    assert!(pg_account(&pool, a.id).await.is_none());

    // a journal replay (or a change-feed page) of the deleted version arrives late
    let late = JournalRecord {
        container: "Accounts".to_owned(),
        document_id: a.id.to_string(),
        op: JournalOp::Upsert {
            document: before_delete,
        },
    };
    apply_record(&pool, &late).await.unwrap();
    assert!(
        pg_account(&pool, a.id).await.is_none(),
        "a copy of the deleted version brought the account back"
    );
}

fn profile(id: Uuid, account_id: Option<Uuid>) -> UserProfile {
    UserProfile {
        id,
        cosmos_id: None,
        account_id,
        name: "Pip".to_owned(),
        age_group: AgeGroup::parse("6-9").unwrap(),
        date_of_birth: None,
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: Some("likes dragons".to_owned()),
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: vec!["Classic Fantasy".to_owned(), "Magic & Wizards".to_owned()],
        has_completed_onboarding: false,
        created_at: at(2),
        updated_at: at(2),
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase2_writes_reach_cosmos_in_the_shape_the_app_reads(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "p2-shape").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let subscription = Subscription {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: a.id,
        subscription_type: SubscriptionType::Annual,
        product_id: Some("annual".to_owned()),
        tier: "Plus".to_owned(),
        is_active: true,
        valid_until: Some(at(50)),
        start_date: Some(at(3)),
        end_date: None,
        purchase_token: Some(Secret::new("tok".to_owned())),
        last_verified: None,
        purchased_scenarios: vec!["dragons".to_owned(), "pirates".to_owned()],
        created_at: at(3),
        updated_at: at(3),
    };
    SubscriptionRepository::upsert_for_account(&s.router, &subscription)
        .await
        .unwrap();
    CompletedScenarioRepository::mark_completed(&s.router, a.id, "dragons", at(4))
        .await
        .unwrap();
    let profile_id = Uuid::new_v4();
    ProfileRepository::create(&s.router, &profile(profile_id, Some(a.id)))
        .await
        .unwrap();
    let badge = UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: profile_id,
        badge_configuration_id: "brave-1".to_owned(),
        badge_id: None,
        badge_name: "Brave".to_owned(),
        badge_message: "Well done".to_owned(),
        axis: "courage".to_owned(),
        trigger_value: 0.75,
        threshold: 0.5,
        earned_at: at(5),
        game_session_id: None,
        scenario_id: Some("dragons".to_owned()),
        image_id: "img".to_owned(),
    };
    BadgeRepository::award(&s.router, &badge).await.unwrap();
    let email = format!("{}@example.org", Uuid::new_v4().simple());
    let signup = PendingSignup {
        id: Uuid::new_v4(),
        cosmos_id: None,
        email: Email::parse(&email).unwrap(),
        display_name: "New".to_owned(),
        code: Some(SignupCode::parse("123456").unwrap()),
        magic_link: None,
        created_at: at(6),
        expires_at: at(59),
        is_used: false,
        is_signin: false,
        failed_attempts: 0,
    };
    PendingSignupRepository::create(&s.router, &signup)
        .await
        .unwrap();

    assert_eq!(s.router.stats().delivered_inline, 6);
    assert_eq!(s.router.stats().left_to_relay, 0);
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 0);

    let id = a.id.to_string();
    let doc = raw_document(&s.store, "Accounts", &id, &id).await;
    assert_eq!(doc["$type"], "Account");
    assert_eq!(doc["Email"], a.email.as_str());
    assert_eq!(
        doc["ExternalUserId"],
        a.auth0_user_id.clone().unwrap().as_str()
    );
    assert_eq!(doc["Role"], "User");
    assert_eq!(doc["Subscription"]["Type"], 2, "enums are integers");
    assert_eq!(doc["Subscription"]["PurchasedScenarios"], "dragons,pirates");
    assert_eq!(doc["CompletedScenarioIds"], json!(["dragons"]));
    assert!(doc["Settings"].is_object());
    let snake: Vec<&String> = doc
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with('_') && k.contains('_'))
        .collect();
    assert!(snake.is_empty(), "snake_case properties: {snake:?}");

    let pid = profile_id.to_string();
    let doc = raw_document(&s.store, "UserProfiles", &pid, &pid).await;
    assert_eq!(doc["$type"], "UserProfile");
    assert_eq!(doc["AccountId"], id.as_str());
    assert_eq!(
        doc["PreferredFantasyThemes"],
        "Classic Fantasy,Magic & Wizards"
    );
    assert_eq!(doc["AgeGroupName"], "6-9");
    let badges = doc["EarnedBadges"].as_array().unwrap();
    assert_eq!(badges.len(), 1);
    assert_eq!(badges[0]["BadgeConfigurationId"], "brave-1");
    assert!(badges[0]["TriggerValue"].is_number());

    let doc = raw_document(&s.store, "PendingSignups", &signup.id.to_string(), &email).await;
    assert_eq!(doc["email"], email.as_str());
    assert_eq!(doc["Code"], "123456");
    assert_eq!(doc["FailedAttempts"], 0);

    // and the app's codec reads back exactly what PostgreSQL holds
    let decoded =
        codec::decode_account(&raw_document(&s.store, "Accounts", &id, &id).await).unwrap();
    assert_eq!(decoded.account, pg_account(&pool, a.id).await.unwrap());
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase2_with_cosmos_unreachable_commits_in_postgres_and_the_relay_delivers_later(
    pool: PgPool,
) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "p2-relay").await;
    let faults = support::Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", s.store.database_name()),
            "action": "drop",
            "count": 100000,
        }))
        .await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    assert!(pg_account(&pool, a.id).await.is_some());
    assert_eq!(s.router.stats().left_to_relay, 1);
    assert!(outbox::depth(&pool).await.unwrap().rows >= 1);
    assert!(faults.hits(&rule).await > 0);

    faults.disarm(&rule).await;
    drain_outbox(&s).await;
    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.email, a.email);
    // the version Cosmos answered is on record, so the change feed's echo is a no-op
    let stored = stored_account(&s, a.id).await;
    let (ts, _) = recorded_version(&pool, "Accounts", a.id).await;
    assert_eq!(Some(ts), stored["_ts"].as_i64());
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase2_delete_in_postgres_removes_the_cosmos_document(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "p2-delete").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    assert!(
        s.router
            .cosmos()
            .accounts
            .get(a.id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(AccountRepository::delete(&s.router, a.id).await.unwrap());
    assert!(
        s.router
            .cosmos()
            .accounts
            .get(a.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase2_miss_falls_back_to_cosmos_and_backfills_postgres(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "p2-fallback").await;
    let a = account();
    // written by the app straight into Cosmos, never seen by PostgreSQL
    s.router.cosmos().accounts.create(&a).await.unwrap();
    assert!(pg_account(&pool, a.id).await.is_none());

    let found = AccountRepository::get(&s.router, a.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.email, a.email);
    assert_eq!(s.router.stats().fallback_reads, 1);
    assert_eq!(pg_account(&pool, a.id).await.unwrap().email, a.email);
    // the back-fill is a copy from Cosmos: nothing to send back
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 0);
    // the next read is served by PostgreSQL
    AccountRepository::get(&s.router, a.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.router.stats().fallback_reads, 1);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_copy_from_cosmos_does_not_overwrite_a_change_cosmos_has_not_taken(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "p2-holdback").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let old = stored_account(&s, a.id).await;
    // a change in PostgreSQL that Cosmos has not taken yet (its outbox row is pending)
    PgAccountRepository::new(pool.clone())
        .update(&Account {
            display_name: "newer".to_owned(),
            ..a.clone()
        })
        .await
        .unwrap();
    let mut newer_in_cosmos = old.clone();
    newer_in_cosmos["_ts"] = json!(old["_ts"].as_i64().unwrap() + 10);
    newer_in_cosmos["_etag"] = json!("a-later-etag");
    let record = JournalRecord {
        container: "Accounts".to_owned(),
        document_id: a.id.to_string(),
        op: JournalOp::Upsert {
            document: newer_in_cosmos,
        },
    };
    apply_record(&pool, &record).await.unwrap();
    assert_eq!(pg_account(&pool, a.id).await.unwrap().display_name, "newer");
    drain_outbox(&s).await;
    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.display_name, "newer");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn outbox_rows_come_from_postgres_writes_only_and_not_in_postgres_only(pool: PgPool) {
    let repo = PgAccountRepository::new(pool.clone());
    let a = account();
    repo.create(&a).await.unwrap();
    let depth = outbox::depth(&pool).await.unwrap();
    assert_eq!((depth.rows, depth.aggregates), (1, 1));

    sqlx::query("update migration.phase_state set phase = 'postgres-only'")
        .execute(&pool)
        .await
        .unwrap();
    repo.create(&account()).await.unwrap();
    assert_eq!(
        outbox::depth(&pool).await.unwrap().rows,
        1,
        "phase 3 writes no outbox rows"
    );

    // a canary account still in phase 2 keeps its outbox
    let canary = account();
    sqlx::query(
        "insert into migration.phase_overrides (account_id, phase, changed_by, reason)
         values ($1, 'dual-write-postgres-read', 'test', 'canary')",
    )
    .bind(canary.id)
    .execute(&pool)
    .await
    .unwrap();
    repo.create(&canary).await.unwrap();
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 2);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn verify_towards_cosmos_finds_what_cosmos_lacks_and_repair_delivers_it(pool: PgPool) {
    use mystira_migrate::verify::towards_cosmos::repair_towards_cosmos;
    use mystira_migrate::{CosmosSource, Outcome, RepairOptions, VerifyOptions, run_verify};

    let s = setup(&pool, Phase::DualWritePostgresRead, "pg-to-cosmos").await;
    let (kept, changed, lost) = (account(), account(), account());
    for a in [&kept, &changed, &lost] {
        AccountRepository::create(&s.router, a).await.unwrap();
    }
    let source = CosmosSource::new(s.store.clone());
    let clean = run_verify(&pool, &source, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(clean.outcome, Outcome::Clean, "{}", clean.summary(10));

    // behind the router's back: one document edited, one deleted
    let accounts = s.store.container("Accounts").await.unwrap();
    let id = changed.id.to_string();
    let mut doc = raw_document(&s.store, "Accounts", &id, &id).await;
    doc["DisplayName"] = json!("edited in cosmos");
    accounts.upsert(id.clone(), &id, &doc).await.unwrap();
    let gone = lost.id.to_string();
    assert!(accounts.delete(gone.clone(), &gone).await.unwrap());

    let drift = run_verify(&pool, &source, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(drift.outcome, Outcome::Drift);
    let keys: std::collections::BTreeSet<String> =
        drift.drift().filter_map(|i| i.key.clone()).collect();
    assert!(
        keys.contains(&id) && keys.contains(&gone),
        "{}",
        drift.summary(10)
    );
    assert!(!keys.contains(&kept.id.to_string()));

    let delivery = mystira_dual_write::relay::RelayDelivery {
        pool: &pool,
        writer: &s.router.cosmos().writer,
        config: Default::default(),
    };
    let report = repair_towards_cosmos(
        &pool,
        &source,
        &delivery,
        &VerifyOptions::default(),
        &RepairOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.after.outcome,
        Outcome::Clean,
        "{}",
        report.after.summary(10)
    );
    // the summary counts what the repair delivered (it said "0 documents re-copied": issue
    // 34, item 10): the edited document and the deleted one
    assert!(
        report
            .summary(10)
            .contains("repair round 1: 2 documents re-copied"),
        "{}",
        report.summary(10)
    );
    let restored = s
        .router
        .cosmos()
        .accounts
        .get(changed.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(restored.display_name, changed.display_name);
    assert!(
        s.router
            .cosmos()
            .accounts
            .get(lost.id)
            .await
            .unwrap()
            .is_some()
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn background_modes_leave_the_second_store_to_the_background_work_which_catches_up(
    pool: PgPool,
) {
    use mystira_dual_write::router::{
        BackgroundConfig, Phase1Copy, Phase2Delivery, run_background,
    };
    let config = RouterConfig {
        phase1_copy: Phase1Copy::Journal,
        phase2_delivery: Phase2Delivery::Background,
        ..RouterConfig::default()
    };
    let p1 = setup_on(
        pool.clone(),
        Phase::DualWriteCosmosRead,
        "bg-modes",
        config.clone(),
    )
    .await;
    let a = account();
    AccountRepository::create(&p1.router, &a).await.unwrap();
    // acknowledged with the journal entry, before PostgreSQL has the row
    assert_eq!(p1.router.stats().journalled_postgres, 1);
    assert!(pg_account(&pool, a.id).await.is_none());

    let p2 = DualWriteRouter::new(
        pool.clone(),
        p1.router.cosmos().clone(),
        Arc::new(FixedPhase(Phase::DualWritePostgresRead)),
        p1.router.file_journal().clone(),
        config,
    );
    let b = account();
    AccountRepository::create(&p2, &b).await.unwrap();
    assert!(p2.cosmos().accounts.get(b.id).await.unwrap().is_none());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let background = {
        let router = p2.clone();
        tokio::spawn(async move {
            run_background(&router, &BackgroundConfig::default(), async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg_account(&pool, a.id).await.is_none()
        || p2.cosmos().accounts.get(b.id).await.unwrap().is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the background work did not catch up in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    let report = background.await.unwrap();
    assert!(
        report.journal.applied >= 1 && report.relay.put >= 1,
        "{report:?}"
    );
    assert_eq!(journal::depth(&pool).await.unwrap().entries, 0);
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 0);
}

fn magic_signup(hash: &str) -> PendingSignup {
    PendingSignup {
        id: Uuid::new_v4(),
        cosmos_id: None,
        email: Email::parse(&format!("{}@example.org", Uuid::new_v4().simple())).unwrap(),
        display_name: "Link".to_owned(),
        code: None,
        magic_link: Some(MagicLink {
            verification_token_hash: Secret::new(hash.to_owned()),
            status: SignupStatus::new("status", 0).unwrap(),
            verified_at: None,
            consumed_at: None,
        }),
        created_at: at(6),
        expires_at: at(59),
        is_used: false,
        is_signin: false,
        failed_attempts: 0,
    }
}

/// The magic-link methods go through the router like the others: in phase 1 what Cosmos
/// stored is copied into PostgreSQL; in phase 2 PostgreSQL is written first and Cosmos gets the
/// app's shape inline, and a token PostgreSQL does not know yet falls back to Cosmos.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn magic_link_signups_are_routed_by_phase(pool: PgPool) {
    let pg = mystira_postgres::PgPendingSignupRepository::new(pool.clone());
    let status = |n| SignupStatus::new("status", n).unwrap();

    let s = setup(&pool, Phase::DualWriteCosmosRead, "magic_link_phase1").await;
    let first = magic_signup("aa11");
    PendingSignupRepository::create(&s.router, &first)
        .await
        .unwrap();
    assert_eq!(pg.get(first.id).await.unwrap(), Some(first.clone()));
    assert!(
        PendingSignupRepository::mark_verified(&s.router, first.id, status(1), at(7))
            .await
            .unwrap()
    );
    let copied = pg.get(first.id).await.unwrap().unwrap();
    assert_eq!(copied.magic_link.as_ref().unwrap().verified_at, Some(at(7)));
    assert_eq!(
        PendingSignupRepository::find_by_token_hash(&s.router, "aa11")
            .await
            .unwrap(),
        Some(copied)
    );

    let s = setup(&pool, Phase::DualWritePostgresRead, "magic_link_phase2").await;
    let second = magic_signup("bb22");
    PendingSignupRepository::create(&s.router, &second)
        .await
        .unwrap();
    assert!(
        PendingSignupRepository::mark_consumed(&s.router, second.id, status(3), at(8))
            .await
            .unwrap()
    );
    let doc = raw_document(
        &s.store,
        "PendingSignups",
        &second.id.to_string(),
        second.email.as_str(),
    )
    .await;
    assert_eq!(doc["Status"], 3);
    assert_eq!(doc["ConsumedAt"], codec::format_dotnet(at(8)).as_str());
    assert!(doc.get("Code").is_none() && doc.get("IsUsed").is_none());

    // in Cosmos only (written before the copy caught up): found there and back-filled
    let third = magic_signup("cc33");
    s.router
        .cosmos()
        .pending_signups
        .create(&third)
        .await
        .unwrap();
    assert_eq!(pg.get(third.id).await.unwrap(), None);
    assert_eq!(
        PendingSignupRepository::find_by_token_hash(&s.router, "cc33")
            .await
            .unwrap(),
        Some(third.clone())
    );
    assert_eq!(pg.get(third.id).await.unwrap(), Some(third));
}

/// A router in another phase on the same two stores (a router that has not yet seen a phase
/// change, beside one that has).
fn router_beside(s: &Setup, phase: Phase, config: RouterConfig) -> DualWriteRouter {
    let files = FileJournal::open(s._dir.path().join(format!("journal-{phase:?}"))).unwrap();
    DualWriteRouter::new(
        s.router.pool().clone(),
        s.router.cosmos().clone(),
        Arc::new(FixedPhase(phase)),
        files,
        config,
    )
}

fn subscription_of(account_id: Uuid, tier: &str) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id,
        subscription_type: SubscriptionType::Annual,
        product_id: Some("annual".to_owned()),
        tier: tier.to_owned(),
        is_active: true,
        valid_until: Some(at(50)),
        start_date: Some(at(3)),
        end_date: None,
        purchase_token: None,
        last_verified: None,
        purchased_scenarios: vec![],
        created_at: at(3),
        updated_at: at(3),
    }
}

/// Both stores hold `login` as the account's last login and `tier` as its subscription's.
async fn assert_both_stores_hold(s: &Setup, id: Uuid, login: DateTime<Utc>, tier: &str) {
    let pool = s.router.pool();
    let cosmos = s.router.cosmos();
    let in_cosmos = cosmos.accounts.get(id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.last_login_at, login, "last login in cosmos");
    let sub = cosmos.subscriptions.get_for_account(id).await.unwrap();
    assert_eq!(sub.unwrap().tier, tier, "subscription tier in cosmos");
    assert_eq!(pg_account(pool, id).await.unwrap().last_login_at, login);
    let pg_sub = mystira_postgres::PgSubscriptionRepository::new(pool.clone())
        .get_for_account(id)
        .await
        .unwrap();
    assert_eq!(
        pg_sub.unwrap().tier,
        tier,
        "subscription tier in postgresql"
    );
}

/// Issue 29, item 1: after a 2 -> 1 rollback, an aggregate can still have a phase-2 change
/// Cosmos has not taken (its outbox row pending). A phase-1 write to it must not be held back
/// and then overwritten by the relay: the router delivers the pending change first, so Cosmos
/// and PostgreSQL end with both writes.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_phase1_write_after_a_rollback_lands_on_top_of_the_undelivered_phase2_change(
    pool: PgPool,
) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "p1-after-rollback").await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    // a router that has not seen the rollback: its write commits in PostgreSQL and leaves the
    // delivery to background work that never comes (as when the inline delivery fails)
    let stale = router_beside(
        &s,
        Phase::DualWritePostgresRead,
        RouterConfig {
            phase2_delivery: mystira_dual_write::router::Phase2Delivery::Background,
            ..RouterConfig::default()
        },
    );
    SubscriptionRepository::upsert_for_account(&stale, &subscription_of(a.id, "Plus"))
        .await
        .unwrap();
    assert_eq!(outbox::depth(&pool).await.unwrap().rows, 1);

    let login = at(40);
    assert!(
        AccountRepository::record_login(&s.router, a.id, login)
            .await
            .unwrap()
    );
    drain_outbox(&s).await;
    assert_both_stores_hold(&s, a.id, login, "Plus").await;
    assert_eq!(s.router.stats().delivered_before_write, 1);
}

/// Issue 29, item 1, the race: the phase-2 change commits while the phase-1 write is between
/// Cosmos and its copy (the copy is paused on its document lock, which the test holds). The
/// copy is held back, so the call must not be acknowledged: it fails with a retryable error,
/// PostgreSQL's change is delivered over the write, and the retry lands on top of it.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_phase1_copy_held_back_by_a_change_made_meanwhile_is_not_acknowledged(pool: PgPool) {
    let config = RouterConfig {
        // the pause below must not turn into the journal's timeout path
        postgres_timeout: Duration::from_secs(60),
        ..RouterConfig::default()
    };
    let s = setup_on(
        pool.clone(),
        Phase::DualWriteCosmosRead,
        "p1-held-back",
        config,
    )
    .await;
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();

    // pause every copy of this account's document: the bulk writer takes this lock first
    let mut pause = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock(hashtextextended('document:Accounts:' || $1::text, 0))")
        .bind(a.id)
        .execute(&mut *pause)
        .await
        .unwrap();
    let router = s.router.clone();
    let login = at(40);
    let write =
        tokio::spawn(async move { AccountRepository::record_login(&router, a.id, login).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_locks where locktype = 'advisory' and not granted",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !write.is_finished(),
            "the write finished without its copy waiting"
        );
        assert!(Instant::now() < deadline, "the copy never reached its lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the write is in Cosmos now; a router that has not seen the phase change commits a
    // change of the same aggregate in PostgreSQL
    mystira_postgres::PgSubscriptionRepository::new(pool.clone())
        .upsert_for_account(&subscription_of(a.id, "Plus"))
        .await
        .unwrap();
    sqlx::query("select pg_advisory_unlock_all()")
        .execute(&mut *pause)
        .await
        .unwrap();

    let result = write.await.unwrap();
    let err = result.expect_err("a held-back copy must not be acknowledged");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(s.router.stats().held_back, 1);
    drain_outbox(&s).await;
    // the unacknowledged write was overwritten by PostgreSQL's change; both stores agree
    assert_both_stores_hold(&s, a.id, a.last_login_at, "Plus").await;
    // the caller's retry lands on top of it
    assert!(
        AccountRepository::record_login(&s.router, a.id, login)
            .await
            .unwrap()
    );
    drain_outbox(&s).await;
    assert_both_stores_hold(&s, a.id, login, "Plus").await;
}

/// Issue 34, item 7: with Cosmos hanging (requests neither answered nor refused), a phase-2
/// call is answered once its inline delivery passes the deadline; the delivery is left to the
/// background and the relay, which delivers once Cosmos answers again.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn phase2_call_is_answered_when_cosmos_hangs_past_the_delivery_deadline(pool: PgPool) {
    let config = RouterConfig {
        phase2_delivery_deadline: Duration::from_millis(500),
        ..RouterConfig::default()
    };
    let s = setup_on(
        pool.clone(),
        Phase::DualWritePostgresRead,
        "p2-hang",
        config,
    )
    .await;
    let faults = support::Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", s.store.database_name()),
            "action": "hang",
            "count": 100000,
        }))
        .await;
    let a = account();
    // the hang lasts until the rule is disarmed below; a call that waits for Cosmos returns
    // only when the client gives up (about 10 s with this test's retry policy, 90 s with the
    // service's), the deadline answers after 0.5 s: 5 s tells them apart with room to spare
    let created = tokio::time::timeout(
        Duration::from_secs(5),
        AccountRepository::create(&s.router, &a),
    )
    .await
    .expect("a phase-2 call waited for a hanging Cosmos");
    created.unwrap();
    assert!(pg_account(&pool, a.id).await.is_some());
    assert_eq!(s.router.stats().left_to_relay, 1);
    assert!(faults.hits(&rule).await > 0);

    faults.disarm(&rule).await;
    drain_outbox(&s).await;
    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.email, a.email);
}
