//! `ProfileRepository`: create and read back, the conflicts, an account's profiles in order,
//! update, delete and the badges it takes along, onboarding.

use chrono::Duration;
use mystira_domain::error::ConflictKind;
use mystira_domain::{AgeGroup, UserProfile};
use uuid::Uuid;

use super::Ports;
use super::accounts::stored_account;
use super::fixtures::{assert_conflict, assert_invalid, badge, now, profile};

/// A profile created through the ports (its defaults: [`profile`]).
pub async fn stored_profile(ports: &Ports<'_>, account_id: Option<Uuid>) -> UserProfile {
    let p = profile(account_id);
    ports.profiles.create(&p).await.expect("create profile");
    p
}

pub async fn a_created_profile_reads_back_equal(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let a = stored_account(ports, "a@example.com").await;
    let p = stored_profile(ports, Some(a.id)).await;
    assert_eq!(repo.get(p.id).await.expect("get"), Some(p.clone()));
    let mut guest = profile(None);
    guest.is_guest = true;
    guest.date_of_birth = None;
    guest.preferred_themes = vec![];
    repo.create(&guest).await.expect("guest without account");
    assert_eq!(repo.get(guest.id).await.expect("get"), Some(guest));
    assert_eq!(repo.get(Uuid::new_v4()).await.expect("missing"), None);
}

pub async fn creating_conflicting_profiles_is_refused_with_the_reason(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let p = stored_profile(ports, None).await;
    assert_conflict(repo.create(&p).await, ConflictKind::DuplicateId);
    assert_conflict(
        repo.create(&profile(Some(Uuid::new_v4()))).await,
        ConflictKind::MissingReference,
    );
    let mut long = profile(None);
    long.pronouns = Some("x".repeat(51));
    assert_invalid(repo.create(&long).await, "pronouns");
}

pub async fn list_by_account_returns_the_accounts_profiles_oldest_first(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let a = stored_account(ports, "a@example.com").await;
    let mut newer = profile(Some(a.id));
    newer.created_at = now() - Duration::days(1);
    let mut older = profile(Some(a.id));
    older.created_at = now() - Duration::days(2);
    repo.create(&newer).await.expect("newer");
    repo.create(&older).await.expect("older");
    stored_profile(ports, None).await;
    assert_eq!(
        repo.list_by_account(a.id).await.expect("list"),
        vec![older, newer]
    );
    assert!(
        repo.list_by_account(Uuid::new_v4())
            .await
            .expect("none")
            .is_empty()
    );
}

pub async fn update_replaces_the_fields_and_moves_updated_at_forward(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let mut p = profile(None);
    p.created_at = now() - Duration::days(3);
    p.updated_at = now() - Duration::days(3);
    repo.create(&p).await.expect("create");
    let mut changed = p.clone();
    changed.name = "Pippa".into();
    changed.age_group = AgeGroup::parse("10-12").expect("valid");
    changed.date_of_birth = None;
    changed.preferred_themes = vec!["ocean".into()];
    changed.created_at = now();
    let before = now();
    assert!(repo.update(&changed).await.expect("update"));
    let read = repo.get(p.id).await.expect("get").expect("exists");
    assert_eq!(read.name, "Pippa");
    assert_eq!(read.age_group.as_str(), "10-12");
    assert_eq!(read.date_of_birth, None);
    assert_eq!(read.preferred_themes, vec!["ocean".to_owned()]);
    assert_eq!(read.created_at, p.created_at);
    assert!(
        read.updated_at >= before,
        "the store stamps the time of the write"
    );
    assert!(!repo.update(&profile(None)).await.expect("missing"));
}

pub async fn deleting_a_profile_removes_its_badges(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let badges = ports.badges;
    let p = stored_profile(ports, None).await;
    let other = stored_profile(ports, None).await;
    badges.award(&badge(p.id, "cfg-1")).await.expect("award");
    badges
        .award(&badge(other.id, "cfg-1"))
        .await
        .expect("award other");
    assert!(repo.delete(p.id).await.expect("delete"));
    assert!(!repo.delete(p.id).await.expect("delete again"));
    assert_eq!(repo.get(p.id).await.expect("get"), None);
    assert!(badges.list_by_profile(p.id).await.expect("list").is_empty());
    assert_eq!(
        badges.list_by_profile(other.id).await.expect("list").len(),
        1
    );
}

pub async fn mark_onboarded_sets_the_flag_idempotently(ports: &Ports<'_>) {
    let repo = ports.profiles;
    let p = stored_profile(ports, None).await;
    assert!(repo.mark_onboarded(p.id).await.expect("mark"));
    assert!(repo.mark_onboarded(p.id).await.expect("mark again"));
    let read = repo.get(p.id).await.expect("get").expect("exists");
    assert!(read.has_completed_onboarding);
    assert!(!repo.mark_onboarded(Uuid::new_v4()).await.expect("missing"));
}
