//! The bulk writer is idempotent, stale-safe, keeps source timestamps, isolates bad documents
//! and detaches profiles whose account does not exist (keeping the reference in a note).
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, SubsecRound, Utc};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, CompletedScenario, Email, Role, UserBadge, UserProfile,
    ids::derived_key,
};
use mystira_postgres::bulk::{
    AccountDocument, BatchOutcome, ProfileDocument, SourceVersion, WriteOutcome, write_batch,
};
use sqlx::PgPool;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    (Utc::now() - Duration::days(30)).trunc_subsecs(6)
}

fn version(id: Uuid, ts: i64, etag: &str) -> SourceVersion {
    SourceVersion {
        document_id: id.to_string(),
        ts,
        etag: Some(etag.to_owned()),
    }
}

fn account_doc(id: Uuid, ts: i64, name: &str, auth0: Option<&str>) -> AccountDocument {
    let account = Account {
        id,
        cosmos_id: None,
        auth0_user_id: auth0.map(str::to_owned),
        email: Email::parse("parent@example.com").unwrap(),
        display_name: name.to_owned(),
        role: Role::User,
        settings: AccountSettings::default(),
        created_at: t0(),
        last_login_at: t0(),
    };
    let completed = vec![CompletedScenario {
        id: derived_key("completed_scenario", id, "scn-1"),
        account_id: id,
        scenario_id: "scn-1".into(),
        completed_at: t0(),
    }];
    AccountDocument {
        version: version(id, ts, &format!("etag-{ts}")),
        account,
        subscription: None,
        completed_scenarios: completed,
        notes: vec![],
    }
}

fn profile_doc(id: Uuid, account: Option<Uuid>, updated_at: DateTime<Utc>) -> ProfileDocument {
    let profile = UserProfile {
        id,
        cosmos_id: None,
        account_id: account,
        name: "Kid".into(),
        age_group: AgeGroup::parse("6-9").unwrap(),
        date_of_birth: None,
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: None,
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: vec!["Classic Fantasy".into()],
        has_completed_onboarding: true,
        created_at: t0(),
        updated_at,
    };
    let badge = UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: id,
        badge_configuration_id: "cfg-1".into(),
        badge_id: None,
        badge_name: "Brave".into(),
        badge_message: String::new(),
        axis: "courage".into(),
        trigger_value: 1.5,
        threshold: 1.0,
        earned_at: t0(),
        game_session_id: None,
        scenario_id: None,
        image_id: String::new(),
    };
    ProfileDocument {
        version: version(id, 100, "p"),
        profile,
        account_ref: account.map(|a| a.to_string()),
        badges: vec![badge],
        notes: vec![],
    }
}

/// (written, unchanged, failed); a superseded document or one whose login is taken counts as
/// failed here.
fn count(batch: &BatchOutcome) -> (usize, usize, usize) {
    batch
        .outcomes
        .iter()
        .fold((0, 0, 0), |(w, u, f), o| match o {
            WriteOutcome::Written => (w + 1, u, f),
            WriteOutcome::Unchanged | WriteOutcome::HeldBack => (w, u + 1, f),
            WriteOutcome::Failed(_)
            | WriteOutcome::Superseded { .. }
            | WriteOutcome::IdentityTaken { .. } => (w, u, f + 1),
        })
}

async fn display_name(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("select display_name from accounts where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn rerunning_a_batch_writes_nothing_the_second_time(pool: PgPool) {
    let docs: Vec<_> = (0..50)
        .map(|_| account_doc(Uuid::new_v4(), 10, "A", None))
        .collect();
    assert_eq!(count(&write_batch(&pool, &docs).await.unwrap()), (50, 0, 0));
    assert_eq!(count(&write_batch(&pool, &docs).await.unwrap()), (0, 50, 0));
    let rows: i64 = sqlx::query_scalar("select count(*) from completed_scenarios")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 50);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn an_older_copy_never_overwrites_a_newer_one(pool: PgPool) {
    let id = Uuid::new_v4();
    write_batch(&pool, &[account_doc(id, 20, "new", None)])
        .await
        .unwrap();
    let out = write_batch(&pool, &[account_doc(id, 10, "old", None)])
        .await
        .unwrap();
    assert_eq!(count(&out), (0, 1, 0));
    assert_eq!(display_name(&pool, id).await, "new");
    let out = write_batch(&pool, &[account_doc(id, 30, "newer", None)])
        .await
        .unwrap();
    assert_eq!(count(&out), (1, 0, 0));
    assert_eq!(display_name(&pool, id).await, "newer");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn within_one_batch_the_newest_copy_of_a_document_wins(pool: PgPool) {
    let id = Uuid::new_v4();
    let docs = [
        account_doc(id, 30, "newest", None),
        account_doc(id, 10, "oldest", None),
    ];
    let out = write_batch(&pool, &docs).await.unwrap();
    assert_eq!(count(&out), (1, 1, 0));
    assert_eq!(display_name(&pool, id).await, "newest");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_conflicting_document_fails_alone_and_the_rest_land(pool: PgPool) {
    // two documents of different keys carrying one original Cosmos id (the unique
    // `cosmos_id`): no rule picks one, the constraint refuses the second
    let mut docs = vec![
        account_doc(Uuid::new_v4(), 1, "a", None),
        account_doc(Uuid::new_v4(), 1, "b", None),
        account_doc(Uuid::new_v4(), 1, "c", None),
    ];
    docs[0].account.cosmos_id = Some("Account|same".into());
    docs[2].account.cosmos_id = Some("Account|same".into());
    let out = write_batch(&pool, &docs).await.unwrap();
    assert_eq!(count(&out), (2, 0, 1));
    match &out.outcomes[2] {
        WriteOutcome::Failed(e) => assert_eq!(
            e.conflict_kind(),
            Some(mystira_domain::error::ConflictKind::DuplicateId)
        ),
        other => panic!("expected the third document to fail, got {other:?}"),
    }
    let n: i64 = sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn source_updated_at_survives_the_trigger_on_rewrite(pool: PgPool) {
    let account = Uuid::new_v4();
    write_batch(&pool, &[account_doc(account, 1, "a", None)])
        .await
        .unwrap();
    let id = Uuid::new_v4();
    let first = t0();
    write_batch(&pool, &[profile_doc(id, Some(account), first)])
        .await
        .unwrap();
    let mut newer = profile_doc(id, Some(account), first + Duration::hours(1));
    newer.version.ts = 200;
    assert_eq!(
        count(&write_batch(&pool, &[newer]).await.unwrap()),
        (1, 0, 0)
    );
    let stored: DateTime<Utc> =
        sqlx::query_scalar("select updated_at from user_profiles where id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, first + Duration::hours(1));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_profile_of_a_missing_account_lands_detached_with_its_reference_noted(pool: PgPool) {
    let id = Uuid::new_v4();
    let ghost = Uuid::new_v4();
    let out = write_batch(&pool, &[profile_doc(id, Some(ghost), t0())])
        .await
        .unwrap();
    assert_eq!(count(&out), (1, 0, 0));
    let account: Option<Uuid> =
        sqlx::query_scalar("select account_id from user_profiles where id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(account, None);
    let note: serde_json::Value = sqlx::query_scalar(
        "select detail from migration.document_notes
         where container = 'UserProfiles' and document_id = $1 and code = 'missing_account'",
    )
    .bind(id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(note["account_ref"], ghost.to_string());
    let badges: i64 =
        sqlx::query_scalar("select count(*) from user_badges where user_profile_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(badges, 1);
}

/// Empties the domain tables and the migration's records, between two orders of one test.
async fn reset(pool: &PgPool) {
    sqlx::query(
        "truncate accounts, user_profiles, migration.document_versions,
                  migration.document_notes, migration.quarantine cascade",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Everything a write decides, in a form two runs can be compared by.
async fn state(pool: &PgPool) -> serde_json::Value {
    sqlx::query_scalar(
        "select jsonb_build_object(
             'accounts', (select jsonb_agg(jsonb_build_array(id, auth0_user_id, display_name)
                                           order by id) from accounts),
             'scenarios', (select jsonb_agg(account_id order by account_id) from completed_scenarios),
             'profiles', (select jsonb_agg(jsonb_build_array(id, account_id) order by id)
                          from user_profiles),
             'notes', (select jsonb_agg(jsonb_build_array(container, document_id, code, detail)
                                        order by container, document_id, code)
                       from migration.document_notes),
             'versions', (select jsonb_agg(jsonb_build_array(container, document_id, source_ts, deleted)
                                           order by container, document_id)
                          from migration.document_versions))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Writes the documents one batch at a time, in order, and returns the ids of the documents
/// that lost their login (refused, or displaced after they had landed).
async fn write_in_order(pool: &PgPool, order: &[Either]) -> Vec<String> {
    let mut lost = Vec::new();
    for doc in order {
        let out = match doc {
            Either::Account(a) => write_batch(pool, std::slice::from_ref(a)).await.unwrap(),
            Either::Profile(p) => write_batch(pool, std::slice::from_ref(p)).await.unwrap(),
        };
        lost.extend(out.displaced);
        for (o, id) in out.outcomes.iter().zip([doc.id()]) {
            if let WriteOutcome::IdentityTaken { .. } = o {
                lost.push(id);
            }
        }
    }
    lost.sort();
    lost.dedup();
    lost
}

#[derive(Clone)]
// a handful of test values: their size does not matter
#[allow(clippy::large_enum_variant)]
enum Either {
    Account(AccountDocument),
    Profile(ProfileDocument),
}

impl Either {
    fn id(&self) -> String {
        match self {
            Either::Account(a) => a.version.document_id.clone(),
            Either::Profile(p) => p.version.document_id.clone(),
        }
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn of_two_accounts_of_one_login_the_newer_keeps_it_whatever_the_order(pool: PgPool) {
    let (older, newer, kid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a = Either::Account(account_doc(older, 10, "older", Some("auth0|same")));
    let b = Either::Account(account_doc(newer, 20, "newer", Some("auth0|same")));
    let p = Either::Profile(profile_doc(kid, Some(older), t0()));
    let orders = [
        vec![a.clone(), b.clone(), p.clone()],
        vec![b.clone(), a.clone(), p.clone()],
        vec![p.clone(), a.clone(), b.clone()],
        vec![p.clone(), b.clone(), a.clone()],
        vec![a.clone(), p.clone(), b.clone()],
        vec![b.clone(), p.clone(), a.clone()],
    ];
    let mut first: Option<serde_json::Value> = None;
    for order in &orders {
        reset(&pool).await;
        let lost = write_in_order(&pool, order).await;
        assert_eq!(
            lost,
            vec![older.to_string()],
            "the older account loses the login"
        );
        let now = state(&pool).await;
        assert_eq!(now["accounts"][0][1], "auth0|same");
        assert_eq!(now["accounts"][0][2], "newer");
        assert_eq!(now["accounts"].as_array().unwrap().len(), 1);
        // the older account's profile is detached with the note it gets when its account
        // never landed
        assert_eq!(now["profiles"][0][1], serde_json::Value::Null);
        assert_eq!(now["notes"][0][2], "missing_account");
        match &first {
            None => first = Some(now),
            Some(f) => assert_eq!(&now, f, "the same state whatever the order"),
        }
    }
    // and in one batch, in either order
    for docs in [
        [
            account_doc(older, 10, "older", Some("auth0|same")),
            account_doc(newer, 20, "newer", Some("auth0|same")),
        ],
        [
            account_doc(newer, 20, "newer", Some("auth0|same")),
            account_doc(older, 10, "older", Some("auth0|same")),
        ],
    ] {
        reset(&pool).await;
        let out = write_batch(&pool, &docs).await.unwrap();
        assert_eq!(count(&out), (1, 0, 1));
        let now = state(&pool).await;
        assert_eq!(now["accounts"][0][2], "newer");
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn an_older_copy_of_a_loser_never_lands_in_its_place(pool: PgPool) {
    let (loser, keeper) = (Uuid::new_v4(), Uuid::new_v4());
    // the loser once had another login; its newer version claims the keeper's
    let old = Either::Account(account_doc(loser, 5, "loser-old", Some("auth0|other")));
    let new = Either::Account(account_doc(loser, 10, "loser-new", Some("auth0|same")));
    let k = Either::Account(account_doc(keeper, 20, "keeper", Some("auth0|same")));
    let mut first: Option<serde_json::Value> = None;
    for order in [
        vec![old.clone(), k.clone(), new.clone()],
        vec![new.clone(), k.clone(), old.clone()],
        vec![k.clone(), old.clone(), new.clone()],
        vec![k.clone(), new.clone(), old.clone()],
    ] {
        reset(&pool).await;
        write_in_order(&pool, &order).await;
        let now = state(&pool).await;
        assert_eq!(now["accounts"].as_array().unwrap().len(), 1, "{now}");
        assert_eq!(now["accounts"][0][2], "keeper");
        match &first {
            None => first = Some(now),
            Some(f) => assert_eq!(&now, f, "the same state whatever the order"),
        }
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_login_held_by_an_account_the_service_wrote_is_never_taken_by_a_copy(pool: PgPool) {
    let service = Uuid::new_v4();
    sqlx::query(
        "insert into accounts (id, auth0_user_id, email, display_name, role)
         values ($1, 'auth0|svc', 'svc@example.com', 'service', 'User')",
    )
    .bind(service)
    .execute(&pool)
    .await
    .unwrap();
    let copy = account_doc(
        Uuid::new_v4(),
        i64::from(i32::MAX),
        "copy",
        Some("auth0|svc"),
    );
    let out = write_batch(&pool, &[copy]).await.unwrap();
    match &out.outcomes[0] {
        WriteOutcome::IdentityTaken { by } => assert_eq!(by, &None),
        other => panic!("expected the copy to lose the login, got {other:?}"),
    }
    assert!(out.displaced.is_empty());
    assert_eq!(display_name(&pool, service).await, "service");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_loser_lands_at_its_next_copy_once_the_keeper_gives_the_login_up(pool: PgPool) {
    let (loser, keeper) = (Uuid::new_v4(), Uuid::new_v4());
    let lost = account_doc(loser, 10, "loser", Some("auth0|same"));
    write_batch(
        &pool,
        &[account_doc(keeper, 20, "keeper", Some("auth0|same"))],
    )
    .await
    .unwrap();
    let out = write_batch(&pool, std::slice::from_ref(&lost))
        .await
        .unwrap();
    assert!(
        matches!(&out.outcomes[0], WriteOutcome::IdentityTaken { by: Some(k) } if *k == keeper.to_string())
    );
    // the keeper moves to another login, in one batch with a copy of the loser: the login
    // passes within the batch, whatever the rows' order in it
    let moved = account_doc(keeper, 30, "keeper", Some("auth0|moved"));
    let out = write_batch(&pool, &[lost.clone(), moved]).await.unwrap();
    assert_eq!(count(&out), (2, 0, 0));
    let holder: Uuid =
        sqlx::query_scalar("select id from accounts where auth0_user_id = 'auth0|same'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(holder, loser);
    // a re-run changes nothing
    let out = write_batch(&pool, &[lost]).await.unwrap();
    assert_eq!(count(&out), (0, 1, 0));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn two_claimants_of_one_login_written_at_once_give_the_result_of_any_order(pool: PgPool) {
    for round in 0..8 {
        reset(&pool).await;
        let (older, newer) = (Uuid::new_v4(), Uuid::new_v4());
        let a = [account_doc(older, 10, "older", Some("auth0|same"))];
        let b = [account_doc(newer, 20, "newer", Some("auth0|same"))];
        let (x, y) = tokio::join!(write_batch(&pool, &a), write_batch(&pool, &b));
        let (x, y) = (x.unwrap(), y.unwrap());
        let lost_older = matches!(x.outcomes[0], WriteOutcome::IdentityTaken { .. })
            || y.displaced == vec![older.to_string()];
        assert!(lost_older, "round {round}: the older claimant loses");
        let ids: Vec<Uuid> = sqlx::query_scalar("select id from accounts")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(ids, vec![newer], "round {round}");
    }
}

/// While an initial load has the domain tables stripped of their keys, every other writer is
/// refused with a retryable error naming the load (the router journals, `replicate` waits),
/// no phase but cosmos-only can start (not even forced), and the rebuild brings back the
/// catalog of `db migrate`.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn while_an_initial_load_has_the_tables_stripped_other_writers_wait(pool: PgPool) {
    use mystira_domain::phase::Phase;
    use mystira_postgres::initial_load::schema::domain_catalog;
    use mystira_postgres::initial_load::{self, Stage};
    use mystira_postgres::phase::{self, ChangeRequest, Ungated};

    let migrated = domain_catalog(&pool).await.unwrap();
    assert_eq!(initial_load::begin(&pool).await.unwrap(), None);
    assert_eq!(
        initial_load::stage(&pool).await.unwrap(),
        Some(Stage::Loading)
    );
    let stripped = domain_catalog(&pool).await.unwrap();
    assert!(
        stripped.iter().all(|l| !l.starts_with("index ")),
        "no index left: {stripped:?}"
    );
    assert_eq!(
        initial_load::begin(&pool).await.unwrap().as_deref(),
        Some("an initial load is already under way")
    );

    let id = Uuid::new_v4();
    let err = write_batch(&pool, &[account_doc(id, 10, "Ada", None)])
        .await
        .expect_err("refused while stripped");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("initial load"), "{err}");
    let request = ChangeRequest {
        actor: "ada",
        reason: "too early",
        force: true,
    };
    let refused = phase::set_phase(&pool, Phase::DualWriteCosmosRead, request, &Ungated)
        .await
        .expect_err("no phase change while stripped, even forced");
    assert!(refused.to_string().contains("initial load"), "{refused}");

    initial_load::set_aside(&pool).await.unwrap();
    initial_load::rebuild(&pool, 2).await.unwrap();
    assert_eq!(domain_catalog(&pool).await.unwrap(), migrated);
    assert_eq!(
        initial_load::stage(&pool).await.unwrap(),
        Some(Stage::Redoing)
    );
    // the schema is whole: the upsert pass (and any writer) may write
    let batch = write_batch(&pool, &[account_doc(id, 10, "Ada", None)])
        .await
        .unwrap();
    assert!(matches!(batch.outcomes[0], WriteOutcome::Written));
    let mut tx = pool.begin().await.unwrap();
    initial_load::finish(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(initial_load::stage(&pool).await.unwrap(), None);
}
