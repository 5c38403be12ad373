//! `AccountRepository`: create and read back, the conflicts, find by email, update, logins,
//! delete and what it takes along, paging, and lookups by the id an account has in Cosmos.

use chrono::Duration;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::PageRequest;
use mystira_domain::{Account, MappedId, Role};
use uuid::Uuid;

use super::Ports;
use super::fixtures::{
    account, assert_conflict, assert_invalid, email, now, profile, subscription,
};

/// An account created through the ports (its defaults: [`account`]).
pub async fn stored_account(ports: &Ports<'_>, address: &str) -> Account {
    let a = account(address);
    ports.accounts.create(&a).await.expect("create account");
    a
}

pub async fn a_created_account_reads_back_equal_by_id_and_auth0_id(ports: &Ports<'_>) -> Account {
    let repo = ports.accounts;
    let mut a = account("ada@example.com");
    a.settings
        .extra
        .insert("FutureFlag".into(), serde_json::json!(3));
    repo.create(&a).await.expect("create");
    assert_eq!(repo.get(a.id).await.expect("get"), Some(a.clone()));
    let auth0 = a.auth0_user_id.clone().expect("has auth0 id");
    assert_eq!(
        repo.get_by_auth0_id(&auth0).await.expect("by auth0"),
        Some(a.clone())
    );
    assert_eq!(repo.get(Uuid::new_v4()).await.expect("get missing"), None);
    assert_eq!(
        repo.get_by_auth0_id("auth0|nobody")
            .await
            .expect("by auth0"),
        None
    );
    a
}

pub async fn an_empty_auth0_id_is_stored_as_none(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let mut first = account("a@example.com");
    first.auth0_user_id = Some(String::new());
    let mut second = account("b@example.com");
    second.auth0_user_id = Some(String::new());
    repo.create(&first).await.expect("first");
    repo.create(&second).await.expect("second does not collide");
    let read = repo.get(first.id).await.expect("get").expect("exists");
    assert_eq!(read.auth0_user_id, None);
}

pub async fn creating_an_existing_id_or_cosmos_id_is_a_duplicate_id_conflict(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let mut a = account("a@example.com");
    a.cosmos_id = Some("user-42".into());
    repo.create(&a).await.expect("create");
    let mut same_id = account("b@example.com");
    same_id.id = a.id;
    assert_conflict(repo.create(&same_id).await, ConflictKind::DuplicateId);
    let mut same_cosmos_id = account("c@example.com");
    same_cosmos_id.cosmos_id = Some("user-42".into());
    assert_conflict(
        repo.create(&same_cosmos_id).await,
        ConflictKind::DuplicateId,
    );
}

pub async fn a_second_account_with_the_same_auth0_id_is_refused(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let a = account("a@example.com");
    repo.create(&a).await.expect("create");
    let mut b = account("b@example.com");
    b.auth0_user_id = a.auth0_user_id.clone();
    assert_conflict(repo.create(&b).await, ConflictKind::DuplicateAuth0UserId);
    let mut c = account("c@example.com");
    repo.create(&c).await.expect("create c");
    c.auth0_user_id = a.auth0_user_id.clone();
    assert_conflict(repo.update(&c).await, ConflictKind::DuplicateAuth0UserId);
}

pub async fn an_overlong_display_name_is_refused_before_anything_is_written(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let mut a = account("a@example.com");
    a.display_name = "x".repeat(256);
    assert_invalid(repo.create(&a).await, "display_name");
    assert_eq!(repo.get(a.id).await.expect("get"), None);
}

pub async fn find_by_email_ignores_case_and_returns_the_oldest_first(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let mut newer = account("Ada@Example.com");
    let mut older = account("ada@example.COM");
    older.created_at = now() - Duration::days(2);
    newer.created_at = now() - Duration::days(1);
    repo.create(&newer).await.expect("newer");
    repo.create(&older).await.expect("older");
    repo.create(&account("someone@example.com"))
        .await
        .expect("other");
    let found = repo
        .find_by_email(&email("ADA@example.com"))
        .await
        .expect("find");
    assert_eq!(found, vec![older, newer]);
    assert!(
        repo.find_by_email(&email("nobody@example.com"))
            .await
            .expect("find none")
            .is_empty()
    );
}

pub async fn update_replaces_every_field_but_id_and_created_at(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let a = stored_account(ports, "a@example.com").await;
    let mut changed = a.clone();
    changed.email = email("new@example.com");
    changed.display_name = "Ada L.".into();
    changed.role = Role::Admin;
    changed.settings.theme = "light".into();
    changed.cosmos_id = Some("legacy-1".into());
    changed.auth0_user_id = Some("auth0|other".into());
    changed.last_login_at = now() + Duration::hours(1);
    changed.created_at = now() - Duration::days(100);
    assert!(repo.update(&changed).await.expect("update"));
    let read = repo.get(a.id).await.expect("get").expect("exists");
    assert_eq!(read.created_at, a.created_at);
    assert_eq!(
        read,
        Account {
            created_at: a.created_at,
            ..changed
        }
    );
    assert!(
        !repo
            .update(&account("ghost@example.com"))
            .await
            .expect("update missing")
    );
}

pub async fn record_login_sets_last_login_at(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let a = stored_account(ports, "a@example.com").await;
    let at = now() + Duration::minutes(5);
    assert!(repo.record_login(a.id, at).await.expect("login"));
    assert!(repo.record_login(a.id, at).await.expect("login again"));
    let read = repo.get(a.id).await.expect("get").expect("exists");
    assert_eq!(read.last_login_at, at);
    assert!(
        !repo
            .record_login(Uuid::new_v4(), at)
            .await
            .expect("missing")
    );
}

/// What the case left behind, for a store's own checks of its rows.
#[derive(Debug)]
pub struct DeletedAccount {
    pub deleted: Uuid,
    pub kept: Uuid,
    pub profile: Uuid,
}

pub async fn deleting_an_account_removes_its_subscription_and_completions_and_detaches_its_profiles(
    ports: &Ports<'_>,
) -> DeletedAccount {
    let repo = ports.accounts;
    let a = stored_account(ports, "a@example.com").await;
    let kept = stored_account(ports, "b@example.com").await;
    ports
        .subscriptions
        .upsert_for_account(&subscription(a.id))
        .await
        .expect("subscription");
    let completions = ports.completions;
    completions
        .mark_completed(a.id, "scenario-a", now())
        .await
        .expect("completion");
    completions
        .mark_completed(kept.id, "scenario-a", now())
        .await
        .expect("other completion");
    let p = profile(Some(a.id));
    ports.profiles.create(&p).await.expect("create profile");

    assert!(repo.delete(a.id).await.expect("delete"));
    assert!(!repo.delete(a.id).await.expect("delete again"));
    assert_eq!(repo.get(a.id).await.expect("get"), None);
    assert_eq!(
        ports
            .subscriptions
            .get_for_account(a.id)
            .await
            .expect("subscription"),
        None
    );
    assert!(
        completions
            .list_by_account(a.id)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        completions
            .list_by_account(kept.id)
            .await
            .expect("list")
            .len(),
        1
    );
    let detached = ports
        .profiles
        .get(p.id)
        .await
        .expect("get profile")
        .expect("profile stays");
    assert_eq!(detached.account_id, None);
    DeletedAccount {
        deleted: a.id,
        kept: kept.id,
        profile: p.id,
    }
}

pub async fn list_pages_through_every_account_in_id_order(ports: &Ports<'_>) {
    let repo = ports.accounts;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            stored_account(ports, &format!("user{i}@example.com"))
                .await
                .id,
        );
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut request = Some(PageRequest::first(2));
    let mut pages = 0;
    while let Some(page) = request {
        let result = repo.list(page).await.expect("list");
        assert!(result.items.len() <= 2);
        seen.extend(result.items.iter().map(|a| a.id));
        request = result.next;
        pages += 1;
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
    let exact = repo.list(PageRequest::first(5)).await.expect("list all");
    assert_eq!(exact.items.len(), 5);
    assert_eq!(exact.next, None);
}

pub async fn get_by_cosmos_id_finds_accounts_by_the_original_spelling_of_their_id(
    ports: &Ports<'_>,
) {
    let repo = ports.accounts;
    let mut non_uuid = account("a@example.com");
    let mapped = MappedId::from_source("user-42");
    (non_uuid.id, non_uuid.cosmos_id) = (mapped.uuid, mapped.cosmos_id);
    repo.create(&non_uuid).await.expect("non-uuid");

    let upper = "7D1C3A52-5B7E-4D5A-9F0E-2B1F3C4D5E6F";
    let mut upper_case = account("b@example.com");
    let mapped = MappedId::from_source(upper);
    (upper_case.id, upper_case.cosmos_id) = (mapped.uuid, mapped.cosmos_id);
    repo.create(&upper_case).await.expect("upper-case guid");

    let native = stored_account(ports, "c@example.com").await;

    let by = async |id: &str| repo.get_by_cosmos_id(id).await.expect("lookup");
    assert_eq!(by("user-42").await, Some(non_uuid));
    assert_eq!(by(upper).await, Some(upper_case));
    // the same key spelled another way is another Cosmos id
    assert_eq!(by(&upper.to_lowercase()).await, None);
    assert_eq!(by(&native.id.to_string()).await, Some(native.clone()));
    assert_eq!(by(&native.id.to_string().to_uppercase()).await, None);
    assert_eq!(by("user-43").await, None);
}
