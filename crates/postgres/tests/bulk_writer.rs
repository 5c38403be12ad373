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

/// (written, unchanged, failed); a superseded document counts as failed here.
fn count(batch: &BatchOutcome) -> (usize, usize, usize) {
    batch
        .outcomes
        .iter()
        .fold((0, 0, 0), |(w, u, f), o| match o {
            WriteOutcome::Written => (w + 1, u, f),
            WriteOutcome::Unchanged => (w, u + 1, f),
            WriteOutcome::Failed(_) | WriteOutcome::Superseded { .. } => (w, u, f + 1),
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
    let docs = vec![
        account_doc(Uuid::new_v4(), 1, "a", Some("auth0|same")),
        account_doc(Uuid::new_v4(), 1, "b", None),
        account_doc(Uuid::new_v4(), 1, "c", Some("auth0|same")),
    ];
    let out = write_batch(&pool, &docs).await.unwrap();
    assert_eq!(count(&out), (2, 0, 1));
    match &out.outcomes[2] {
        WriteOutcome::Failed(e) => assert_eq!(
            e.conflict_kind(),
            Some(mystira_domain::error::ConflictKind::DuplicateAuth0UserId)
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
