//! `BadgeRepository`: one badge per profile and configuration (also under concurrency), the
//! order of a profile's badges, and what an award to nothing or without configuration gets.

use chrono::Duration;
use mystira_domain::UserBadge;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::AwardOutcome;
use uuid::Uuid;

use super::Ports;
use super::fixtures::{assert_conflict, assert_invalid, badge, now};
use super::profiles::stored_profile;

pub async fn a_second_award_of_a_configuration_returns_the_first_badge(ports: &Ports<'_>) {
    let repo = ports.badges;
    let p = stored_profile(ports, None).await;
    let first = badge(p.id, "cfg-1");
    assert_eq!(
        repo.award(&first).await.expect("award"),
        AwardOutcome::Awarded(first.clone())
    );
    let mut again = badge(p.id, "cfg-1");
    again.badge_name = "Braver".into();
    assert_eq!(
        repo.award(&again).await.expect("award again"),
        AwardOutcome::AlreadyHeld(first.clone())
    );
    assert_eq!(
        repo.award(&first).await.expect("retry of the same award"),
        AwardOutcome::AlreadyHeld(first.clone())
    );
    assert_eq!(repo.list_by_profile(p.id).await.expect("list"), vec![first]);
}

pub async fn list_by_profile_returns_the_earliest_badge_first(ports: &Ports<'_>) {
    let repo = ports.badges;
    let p = stored_profile(ports, None).await;
    let mut later = badge(p.id, "cfg-later");
    later.earned_at = now() - Duration::hours(1);
    let mut earlier = badge(p.id, "cfg-earlier");
    earlier.earned_at = now() - Duration::hours(2);
    earlier.badge_id = None;
    earlier.trigger_value = 0.1;
    repo.award(&later).await.expect("later");
    repo.award(&earlier).await.expect("earlier");
    assert_eq!(
        repo.list_by_profile(p.id).await.expect("list"),
        vec![earlier, later]
    );
    assert!(
        repo.list_by_profile(Uuid::new_v4())
            .await
            .expect("none")
            .is_empty()
    );
}

/// Returns the profile, which holds five badges.
pub async fn two_concurrent_awards_of_one_configuration_store_exactly_one_badge(
    ports: &Ports<'_>,
) -> Uuid {
    let repo = ports.badges;
    let p = stored_profile(ports, None).await;
    for round in 0..5 {
        let configuration = format!("cfg-{round}");
        let (a, b) = (badge(p.id, &configuration), badge(p.id, &configuration));
        let (ra, rb) = tokio::join!(repo.award(&a), repo.award(&b));
        let outcomes = [ra.expect("award a"), rb.expect("award b")];
        let awarded: Vec<&UserBadge> = outcomes
            .iter()
            .filter_map(|o| match o {
                AwardOutcome::Awarded(b) => Some(b),
                AwardOutcome::AlreadyHeld(_) => None,
            })
            .collect();
        assert_eq!(awarded.len(), 1, "exactly one award wins");
        for outcome in &outcomes {
            if let AwardOutcome::AlreadyHeld(held) = outcome {
                assert_eq!(held, awarded[0]);
            }
        }
    }
    assert_eq!(repo.list_by_profile(p.id).await.expect("list").len(), 5);
    p.id
}

pub async fn awarding_to_a_missing_profile_or_without_configuration_is_refused(ports: &Ports<'_>) {
    let repo = ports.badges;
    assert_conflict(
        repo.award(&badge(Uuid::new_v4(), "cfg-1")).await,
        ConflictKind::MissingReference,
    );
    let p = stored_profile(ports, None).await;
    assert_invalid(repo.award(&badge(p.id, "")).await, "badge_configuration_id");
    let mut long_axis = badge(p.id, "cfg-1");
    long_axis.axis = "x".repeat(101);
    assert_invalid(repo.award(&long_axis).await, "axis");
    let stolen_id = badge(p.id, "cfg-1");
    repo.award(&stolen_id).await.expect("award");
    let mut same_id = badge(p.id, "cfg-2");
    same_id.id = stolen_id.id;
    assert_conflict(repo.award(&same_id).await, ConflictKind::DuplicateId);
}
