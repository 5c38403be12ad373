//! The load generator and the ledger check on the real stores (a real PostgreSQL, the real
//! Cosmos-protocol server): a clean run passes, and the check finds a write that a store lost
//! or changed, a duplicate, and holds each write to what its phase promised. Each test has its
//! own PostgreSQL database and Cosmos database.
#![allow(clippy::unwrap_used)]

#[path = "../../cosmos-client/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use mystira_cosmos::codec::Container;
use mystira_domain::ports::AccountRepository;
use mystira_domain::{Account, AccountSettings, Email, Role};
use mystira_migrate::journal::FileJournal;
use mystira_migrate::ledger::{FieldGroups, LedgerWriter, Store, check};
use mystira_migrate::loadgen::{LoadConfig, run_load};
use mystira_migrate::relay::{RelayConfig, relay_once};
use mystira_migrate::router::{DualWriteRouter, FixedPhase, RouterConfig};
use mystira_postgres::phase::Phase;
use sqlx::PgPool;
use uuid::Uuid;

struct Setup {
    router: DualWriteRouter,
    store: mystira_cosmos_client::CosmosStore,
    dir: tempfile::TempDir,
}

async fn setup(pool: &PgPool, phase: Phase, test: &str) -> Setup {
    let (store, repos) = support::user_domain(test).await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path().join("journal")).unwrap();
    let router = DualWriteRouter::new(
        pool.clone(),
        repos,
        Arc::new(FixedPhase(phase)),
        files,
        RouterConfig::default(),
    );
    Setup { router, store, dir }
}

async fn load(s: &Setup, seconds: u64) -> std::path::PathBuf {
    let ledger = s.dir.path().join("ledger.jsonl");
    let mut config = LoadConfig::new(50.0, Duration::from_secs(seconds), ledger.clone());
    config.concurrency = 8;
    let report = run_load(&s.router, &config, std::future::pending())
        .await
        .unwrap();
    assert!(report.acknowledged > 40, "{}", report.summary());
    assert_eq!(report.failed, 0, "{}", report.summary());
    drain(s).await;
    ledger
}

/// What `run_background` does beside a router: the outbox relayed until empty (bounded).
async fn drain(s: &Setup) {
    let pool = s.router.pool();
    for _ in 0..100 {
        relay_once(pool, &s.router.cosmos().writer, &RelayConfig::default())
            .await
            .unwrap();
        if mystira_postgres::outbox::depth(pool).await.unwrap().rows == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the outbox did not drain in 10 s");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_clean_phase1_run_passes_and_a_changed_or_duplicated_write_fails(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-p1").await;
    let ledger = load(&s, 3).await;
    let report = check(&ledger, &pool, s.router.cosmos()).await.unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert!(report.drained);
    assert_eq!(report.promises_checked, 2 * report.groups_checked);

    // PostgreSQL loses a profile edit
    let profile: Uuid = sqlx::query_scalar("select id from user_profiles limit 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("update user_profiles set name = 'Someone else' where id = $1")
        .bind(profile)
        .execute(&pool)
        .await
        .unwrap();
    // Cosmos holds a badge twice
    let badged: Uuid =
        sqlx::query_scalar("select user_profile_id from user_badges group by 1 limit 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut doc = s
        .router
        .cosmos()
        .writer
        .read(Container::UserProfiles, badged)
        .await
        .unwrap()
        .unwrap();
    let badges = doc["EarnedBadges"].as_array_mut().unwrap();
    let mut twin = badges[0].clone();
    twin["Id"] = serde_json::json!(Uuid::new_v4().to_string());
    badges.push(twin);
    let id = badged.to_string();
    s.store
        .container("UserProfiles")
        .await
        .unwrap()
        .upsert(id.clone(), &id, &doc)
        .await
        .unwrap();

    let report = check(&ledger, &pool, s.router.cosmos()).await.unwrap();
    assert!(!report.passed);
    assert!(
        report
            .lost
            .iter()
            .any(|l| l.key == profile && l.store == Store::Postgres && l.group == "profile"),
        "{}",
        report.summary(10)
    );
    assert!(
        report
            .duplicates
            .iter()
            .any(|d| d.key == badged && d.store == Store::Cosmos && d.what.starts_with("badge:")),
        "{}",
        report.summary(10)
    );
    // only keys and field names are reported, never values
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains("Someone else") && !text.contains('@'));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_clean_phase2_run_passes(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "ledger-p2").await;
    let ledger = load(&s, 3).await;
    let report = check(&ledger, &pool, s.router.cosmos()).await.unwrap();
    assert!(report.passed, "{}", report.summary(10));
}

fn account() -> Account {
    let at = Utc.with_ymd_and_hms(2026, 1, 5, 9, 30, 0).unwrap();
    Account {
        id: Uuid::new_v4(),
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{}", Uuid::new_v4().simple())),
        email: Email::parse(&format!("{}@example.org", Uuid::new_v4().simple())).unwrap(),
        display_name: "Sam".to_owned(),
        role: Role::User,
        settings: AccountSettings::default(),
        created_at: at,
        last_login_at: at,
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn each_write_is_held_to_what_its_phase_promised(pool: PgPool) {
    let s = setup(&pool, Phase::CosmosOnly, "ledger-promise").await;
    // written to Cosmos only, as phase 0 does
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let groups = FieldGroups::account(&a);
    let ack = |path: &std::path::Path, phase: Phase| {
        let w = LedgerWriter::open(path, 1).unwrap();
        let call = w
            .intent("account.create", "Accounts", a.id, groups.clone())
            .unwrap();
        w.ack(
            call,
            phase,
            phase,
            "account.create",
            "Accounts",
            a.id,
            groups.clone(),
        )
        .unwrap();
        w.sync().unwrap();
    };
    let phase0 = s.dir.path().join("phase0.jsonl");
    ack(&phase0, Phase::CosmosOnly);
    let report = check(&phase0, &pool, s.router.cosmos()).await.unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert_eq!(
        report.promises_checked, 2,
        "account and login, in Cosmos only"
    );

    let phase1 = s.dir.path().join("phase1.jsonl");
    ack(&phase1, Phase::DualWriteCosmosRead);
    let report = check(&phase1, &pool, s.router.cosmos()).await.unwrap();
    assert!(!report.passed);
    assert_eq!(report.lost.len(), 2, "{}", report.summary(10));
    assert!(
        report
            .lost
            .iter()
            .all(|l| l.store == Store::Postgres && l.reason == "missing" && l.key == a.id)
    );

    // a later call that was never acknowledged may be what a store holds: not a lost write
    let renamed = Account {
        display_name: "Sam's parent".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&s.router, &renamed)
        .await
        .unwrap();
    let w = LedgerWriter::open(&phase0, 1).unwrap();
    w.intent(
        "account.update",
        "Accounts",
        a.id,
        FieldGroups::account(&renamed),
    )
    .unwrap();
    w.sync().unwrap();
    let report = check(&phase0, &pool, s.router.cosmos()).await.unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert_eq!(report.met_by_unacknowledged, 1);
    assert_eq!(report.runs, 2);
}

/// Found by `dual_write_faults::phase1_postgres_down_for_10s_...`: in phase 1, a write that
/// depends on a journalled one (a profile of an account whose copy waits in a local journal
/// file while PostgreSQL was down) is copied directly once PostgreSQL is back, before the
/// journal is replayed. The profile then lands as an orphan (`account_id` null, note
/// `missing_account`), and when the account's copy is replayed nothing re-links it: PostgreSQL
/// keeps a detached profile while Cosmos has it attached, and no later copy repairs it until
/// the profile document itself changes again. Fixed by `bulk::attach_waiting_profiles`: an
/// account's copy attaches the profiles noted `missing_account` for it.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_profile_copied_before_its_journalled_account_is_replayed_stays_attached(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-orphan").await;
    // PostgreSQL down: the account's copy goes to a local journal file
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let files = s.router.file_journal().clone();
    let down = DualWriteRouter::new(
        dead,
        s.router.cosmos().clone(),
        Arc::new(FixedPhase(Phase::DualWriteCosmosRead)),
        files.clone(),
        RouterConfig::default(),
    );
    let a = account();
    AccountRepository::create(&down, &a).await.unwrap();
    assert_eq!(down.stats().journalled_file, 1);
    // PostgreSQL back: the next write, a profile of that account, is copied at once
    let profile = mystira_domain::UserProfile {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: Some(a.id),
        name: "Pip".to_owned(),
        age_group: mystira_domain::AgeGroup::parse("6-9").unwrap(),
        date_of_birth: None,
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: None,
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: vec!["Space".to_owned()],
        has_completed_onboarding: false,
        created_at: a.created_at,
        updated_at: a.created_at,
    };
    mystira_domain::ports::ProfileRepository::create(&s.router, &profile)
        .await
        .unwrap();
    // then the journal is replayed, as run_background does
    files.seal();
    let replayed =
        mystira_migrate::journal::replay_files(&pool, &files, Some(&s.router.cosmos().writer))
            .await
            .unwrap();
    assert_eq!(replayed.applied, 1);
    let in_pg = mystira_postgres::PgProfileRepository::new(pool.clone());
    let stored = mystira_domain::ports::ProfileRepository::get(&in_pg, profile.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.account_id,
        Some(a.id),
        "the profile stayed detached from its account in PostgreSQL after the replay"
    );
}

/// The version guard (`mystira_postgres::bulk`, `write_in_transaction`) lets a copy with the
/// same `_ts` and another `_etag` through, since `_ts` has one-second resolution. A journalled
/// copy replayed after a newer copy of the same document that landed directly within the same
/// second then overwrote the newer one with the older state. Fixed by `journal::replay_record`:
/// a replay applies the document as Cosmos holds it now, the newest by definition.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_journalled_copy_replayed_after_a_newer_copy_of_the_same_second_does_not_win(
    pool: PgPool,
) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-same-second").await;
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(100))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let files = s.router.file_journal().clone();
    let down = DualWriteRouter::new(
        dead,
        s.router.cosmos().clone(),
        Arc::new(FixedPhase(Phase::DualWriteCosmosRead)),
        files.clone(),
        RouterConfig::default(),
    );
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    // wait for the start of a second, so that the next two writes share their `_ts`
    let ms = Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms) + 20)).await;
    let older = Account {
        display_name: "older".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&down, &older).await.unwrap();
    assert_eq!(down.stats().journalled_file, 1);
    let newer = Account {
        display_name: "newer".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&s.router, &newer).await.unwrap();
    files.seal();
    mystira_migrate::journal::replay_files(&pool, &files, Some(&s.router.cosmos().writer))
        .await
        .unwrap();
    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.display_name, "newer");
    let in_pg = mystira_postgres::PgAccountRepository::new(pool.clone())
        .get(a.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        in_pg.display_name, "newer",
        "the replayed older copy overwrote the newer one in PostgreSQL"
    );
}
