//! Entities for the contract's cases and the stores' own tests: valid, unique by default
//! (ids, auth0 ids), times at the microsecond precision PostgreSQL keeps so round trips
//! compare equal in every store.

use chrono::{DateTime, Duration, NaiveDate, SubsecRound, Utc};
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::RepoResult;
use mystira_domain::{
    Account, AccountSettings, AgeGroup, Email, PendingSignup, RepoError, Role, Secret, SignupCode,
    Subscription, SubscriptionType, UserBadge, UserProfile,
};
use uuid::Uuid;

/// Now, at the microsecond precision PostgreSQL keeps, so round trips compare equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test email is valid")
}

pub fn account(address: &str) -> Account {
    let id = Uuid::new_v4();
    Account {
        id,
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{id}")),
        email: email(address),
        display_name: "Ada".into(),
        role: Role::User,
        settings: AccountSettings {
            theme: "dark".into(),
            ..AccountSettings::default()
        },
        created_at: now(),
        last_login_at: now(),
    }
}

pub fn subscription(account_id: Uuid) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id,
        subscription_type: SubscriptionType::Monthly,
        product_id: Some("mystira.monthly".into()),
        tier: "Premium".into(),
        is_active: true,
        valid_until: Some(now() + Duration::days(30)),
        start_date: Some(now()),
        end_date: None,
        purchase_token: Some(Secret::new("token-123".into())),
        last_verified: Some(now()),
        purchased_scenarios: vec!["scenario-a".into(), "scenario-b".into()],
        created_at: now(),
        updated_at: now(),
    }
}

pub fn profile(account_id: Option<Uuid>) -> UserProfile {
    UserProfile {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id,
        name: "Pip".into(),
        age_group: AgeGroup::parse("6-9").expect("valid age group"),
        date_of_birth: Some(Secret::new(
            NaiveDate::from_ymd_opt(2018, 4, 1).expect("valid date"),
        )),
        is_guest: false,
        is_npc: false,
        pronouns: Some("they/them".into()),
        bio: Some("likes dragons".into()),
        avatar_media_id: Some("avatar-1".into()),
        selected_avatar_media_id: None,
        preferred_themes: vec!["space".into(), "pirates".into()],
        has_completed_onboarding: false,
        created_at: now(),
        updated_at: now(),
    }
}

pub fn badge(profile_id: Uuid, configuration: &str) -> UserBadge {
    UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: profile_id,
        badge_configuration_id: configuration.into(),
        badge_id: Some("badge-1".into()),
        badge_name: "Brave".into(),
        badge_message: "You were brave".into(),
        axis: "courage".into(),
        trigger_value: 3.5,
        threshold: 3.25,
        earned_at: now(),
        game_session_id: Some("session-1".into()),
        scenario_id: Some("scenario-a".into()),
        image_id: "image-1".into(),
    }
}

pub fn signup(address: &str, code: &str, expires_at: DateTime<Utc>) -> PendingSignup {
    PendingSignup {
        id: Uuid::new_v4(),
        cosmos_id: None,
        email: email(address),
        display_name: "Ada".into(),
        code: Some(SignupCode::parse(code).expect("valid code")),
        magic_link: None,
        created_at: now(),
        expires_at,
        is_used: false,
        is_signin: false,
        failed_attempts: 0,
    }
}

pub fn assert_conflict<T: std::fmt::Debug>(result: RepoResult<T>, expected: ConflictKind) {
    match result {
        Err(e) => assert_eq!(e.conflict_kind(), Some(expected), "{e}"),
        Ok(v) => panic!("expected a {expected:?} conflict, got {v:?}"),
    }
}

pub fn assert_invalid<T: std::fmt::Debug>(result: RepoResult<T>, field: &str) {
    match result {
        Err(RepoError::Invalid(v)) => assert_eq!(v.field(), field, "{v}"),
        other => panic!("expected an invalid `{field}`, got {other:?}"),
    }
}
