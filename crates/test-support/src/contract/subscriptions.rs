//! `SubscriptionRepository`: what a missing account and an invalid subscription get, and the
//! active subscriptions at a time, paged.

use chrono::Duration;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::PageRequest;
use uuid::Uuid;

use super::Ports;
use super::accounts::stored_account;
use super::fixtures::{assert_conflict, assert_invalid, now, subscription};

pub async fn upserting_for_a_missing_account_is_a_missing_reference(ports: &Ports<'_>) {
    assert_conflict(
        ports
            .subscriptions
            .upsert_for_account(&subscription(Uuid::new_v4()))
            .await,
        ConflictKind::MissingReference,
    );
}

pub async fn an_overlong_tier_is_refused_before_anything_is_written(ports: &Ports<'_>) {
    let repo = ports.subscriptions;
    let a = stored_account(ports, "a@example.com").await;
    let mut s = subscription(a.id);
    s.tier = "x".repeat(51);
    assert_invalid(repo.upsert_for_account(&s).await, "tier");
    assert_eq!(repo.get_for_account(a.id).await.expect("get"), None);
}

/// Four accounts' subscriptions: active without end, active until tomorrow, inactive, and
/// expired. Returns the active ones' ids (sorted) and the others'.
pub async fn mixed_subscriptions(ports: &Ports<'_>) -> (Vec<Uuid>, Vec<Uuid>) {
    let repo = ports.subscriptions;
    let mut active = Vec::new();
    let mut inactive = Vec::new();
    for (i, (is_active, valid_until)) in [
        (true, None),
        (true, Some(now() + Duration::days(1))),
        (false, None),
        (true, Some(now() - Duration::days(1))),
    ]
    .into_iter()
    .enumerate()
    {
        let a = stored_account(ports, &format!("user{i}@example.com")).await;
        let mut s = subscription(a.id);
        s.is_active = is_active;
        s.valid_until = valid_until;
        repo.upsert_for_account(&s).await.expect("subscription");
        if s.is_active_at(now()) {
            active.push(s.id);
        } else {
            inactive.push(s.id);
        }
    }
    active.sort();
    (active, inactive)
}

pub async fn list_active_excludes_inactive_and_expired_and_pages_in_id_order(ports: &Ports<'_>) {
    let repo = ports.subscriptions;
    let (active, _) = mixed_subscriptions(ports).await;
    let first = repo
        .list_active(now(), PageRequest::first(1))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 1);
    let next = first.next.expect("a second page");
    let second = repo.list_active(now(), next).await.expect("page 2");
    assert_eq!(second.next, None);
    let ids: Vec<Uuid> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, active);
    // two days on, the one valid until tomorrow has lapsed too
    let later = repo
        .list_active(now() + Duration::days(2), PageRequest::first(10))
        .await
        .expect("later");
    assert_eq!(later.items.len(), 1);
    assert_eq!(later.items[0].valid_until, None);
}
