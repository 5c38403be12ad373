//! The merge a delivery writes (`codec::{account,profile,signup}_document`), without I/O: over
//! documents in every shape, a change made to what the document decodes to is merged back, and
//! the document must differ from the stored one at exactly the properties whose meaning
//! changed (appends at the end), and decode to the changed state. The end-to-end version of
//! this, through PostgreSQL, the router and the Cosmos-protocol server, is
//! `crates/dual-write/tests/delivery_fidelity.rs`.
#![allow(clippy::unwrap_used)]

use mystira_test_support::shapes;

use chrono::{DateTime, TimeZone, Utc};
use mystira_cosmos_codec::codec::{
    account_document, decode_account, decode_pending_signup, decode_profile, profile_document,
    signup_document,
};
use mystira_domain::aggregate::{AccountAggregate, ProfileAggregate};
use mystira_domain::ids::derived_key;
use mystira_domain::{
    Account, AccountSettings, CompletedScenario, Email, PendingSignup, Role, SignupStatus,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use shapes::*;
use uuid::Uuid;

fn decode_account_state(doc: &Value) -> AccountAggregate {
    let d = decode_account(doc).unwrap();
    AccountAggregate {
        account: d.account,
        subscription: d.subscription,
        completed_scenarios: d.completed_scenarios,
    }
}

fn decode_profile_state(doc: &Value, account_cosmos_id: Option<String>) -> ProfileAggregate {
    let d = decode_profile(doc).unwrap();
    ProfileAggregate {
        profile: d.profile,
        badges: d.badges,
        account_cosmos_id,
    }
}

/// What PostgreSQL holds after `change` (the service's writes, as the repositories make them).
fn change_account(before: &AccountAggregate, change: &Change) -> AccountAggregate {
    let mut a = before.clone();
    match change {
        Change::RenameAccount(n) => a.account.display_name = n.clone(),
        Change::Login(t) => a.account.last_login_at = *t,
        Change::Theme(t) => a.account.settings.theme = t.clone(),
        Change::Subscribe { tier, valid_until } => match a.subscription.as_mut() {
            Some(s) => {
                s.tier = tier.clone();
                s.valid_until = Some(*valid_until);
                s.updated_at = *valid_until;
            }
            None => {
                a.subscription = Some(new_subscription(a.account.id, tier, *valid_until));
            }
        },
        // completing again changes nothing
        Change::Complete(scenario, at)
            if !a
                .completed_scenarios
                .iter()
                .any(|c| c.scenario_id == *scenario) =>
        {
            a.completed_scenarios.push(CompletedScenario {
                id: derived_key("completed_scenario", a.account.id, scenario),
                account_id: a.account.id,
                scenario_id: scenario.clone(),
                completed_at: *at,
            });
        }
        _ => {}
    }
    a
}

fn change_profile(before: &ProfileAggregate, change: &Change) -> ProfileAggregate {
    let mut p = before.clone();
    let touched = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    match change {
        Change::RenameProfile(name, bio) => {
            p.profile.name = name.clone();
            p.profile.bio = bio.clone();
            p.profile.updated_at = touched;
        }
        Change::Onboard => p.profile.has_completed_onboarding = true,
        // an award of a configuration the profile holds changes nothing
        Change::Award(config, at)
            if !p.badges.iter().any(|b| b.badge_configuration_id == *config) =>
        {
            p.badges.push(new_badge(p.profile.id, config, *at));
        }
        _ => {}
    }
    p
}

fn change_signup(before: &PendingSignup, change: &Change) -> PendingSignup {
    let mut s = before.clone();
    match change {
        Change::MarkUsed => s.is_used = true,
        Change::MarkVerified(status, at) => {
            if let Some(link) = s.magic_link.as_mut() {
                link.status = SignupStatus::new("status", i64::from(*status)).unwrap();
                link.verified_at = link.verified_at.or(Some(*at));
            }
        }
        _ => {}
    }
    s
}

fn account_case() -> impl Strategy<Value = (Value, Change)> {
    (account_doc().prop_map(|(d, _)| d), account_change())
}

fn profile_case() -> impl Strategy<Value = (Value, Value, Change)> {
    (
        account_doc().prop_map(|(d, _)| d),
        profile_doc().prop_map(|(d, _)| d),
        profile_change(),
    )
        .prop_map(|(account, draft, change)| {
            let profile = draft.with_account(&account);
            (account, profile, change)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn an_account_delivery_changes_exactly_what_changed((doc, change) in account_case()) {
        let before = decode_account_state(&doc);
        let after = change_account(&before, &change);
        let merged = account_document(
            Some(&doc),
            &after.account,
            after.subscription.as_ref(),
            &after.completed_scenarios,
        );
        prop_assert_eq!(changed_paths(&doc, &merged), expected_account_paths(&doc, &before, &after));
        prop_assert_eq!(
            account_meaning(&decode_account_state(&merged), false),
            account_meaning(&after, false)
        );
    }

    #[test]
    fn a_profile_delivery_changes_exactly_what_changed((account, doc, change) in profile_case()) {
        let account_id = decode_account(&account).unwrap().account.cosmos_id;
        let before = decode_profile_state(&doc, account_id.clone());
        let after = change_profile(&before, &change);
        let merged = profile_document(
            Some(&doc),
            &after.profile,
            &after.badges,
            after.account_cosmos_id.as_deref(),
        );
        prop_assert_eq!(changed_paths(&doc, &merged), expected_profile_paths(&doc, &before, &after));
        let decoded = decode_profile(&merged).unwrap();
        prop_assert_eq!(
            profile_meaning(&decode_profile_state(&merged, account_id), true),
            profile_meaning(&after, true)
        );
        // the duplicates the app appended are all still there
        let stored_dups = decode_profile(&doc).unwrap().duplicate_badges.len();
        prop_assert_eq!(decoded.duplicate_badges.len(), stored_dups);
    }

    #[test]
    fn a_signup_delivery_changes_exactly_what_changed(
        (doc, change) in (signup_doc().prop_map(|(d, _)| d), signup_change())
    ) {
        let before = decode_pending_signup(&doc).unwrap().signup;
        let after = change_signup(&before, &change);
        let merged = signup_document(Some(&doc), &after);
        prop_assert_eq!(changed_paths(&doc, &merged), expected_signup_paths(&before, &after));
        prop_assert_eq!(
            signup_meaning(&decode_pending_signup(&merged).unwrap().signup),
            signup_meaning(&after)
        );
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An account document as the app wrote it, with what the issue saw lost.
fn app_account() -> Value {
    json!({
        "id": "0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11",
        "$type": "Account",
        "ExternalUserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "Sam@Example.org",
        "DisplayName": "Sam",
        "Role": "User",
        "UserProfileIds": "",
        "CompletedScenarioIds": ["pirates", "dragons", "pirates"],
        "Subscription": {
            "Type": 1, "ProductId": "monthly", "ValidUntil": null, "IsActive": true,
            "PurchaseToken": null, "LastVerified": null, "PurchasedScenarios": "",
            "Tier": "Free", "StartDate": "2025-01-02T03:04:05.6313029+02:00",
            "EndDate": "9999-12-31T23:59:59.9999999", "SubExtra": {"kept": [1, 2]}
        },
        "Settings": {"CacheCredentials": false, "Theme": "dark", "SettingsExtra": 1},
        "CreatedAt": "2025-12-20T10:15:11.6313029Z",
        "LastLoginAt": "2025-12-21T10:15:11.6313029",
        "AppAddedLater": "kept"
    })
}

#[test]
fn renaming_an_account_changes_its_display_name_and_nothing_else() {
    let doc = app_account();
    let mut state = decode_account_state(&doc);
    state.account.display_name = "Samantha".to_owned();
    let merged = account_document(
        Some(&doc),
        &state.account,
        state.subscription.as_ref(),
        &state.completed_scenarios,
    );
    let mut expected = doc.clone();
    expected["DisplayName"] = json!("Samantha");
    assert_eq!(merged, expected);
}

#[test]
fn a_completion_is_appended_and_the_stored_order_and_repeats_stay() {
    let doc = app_account();
    let mut state = decode_account_state(&doc);
    let id = state.account.id;
    state.completed_scenarios.push(CompletedScenario {
        id: derived_key("completed_scenario", id, "castle"),
        account_id: id,
        scenario_id: "castle".to_owned(),
        completed_at: at("2026-01-01T00:00:00Z"),
    });
    // PostgreSQL lists them in its own order
    state.completed_scenarios.reverse();
    let merged = account_document(
        Some(&doc),
        &state.account,
        state.subscription.as_ref(),
        &state.completed_scenarios,
    );
    assert_eq!(
        merged["CompletedScenarioIds"],
        json!(["pirates", "dragons", "pirates", "castle"])
    );
    assert_eq!(changed_paths(&doc, &merged), ["CompletedScenarioIds[+]"]);
}

#[test]
fn a_profile_keeps_its_ef8_account_reference_duplicates_and_badge_extras() {
    let account = json!({
        "id": "Account|0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11",
        "Id": "0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11",
        "Discriminator": "Account", "Email": "a@b.org", "CreatedAt": "2025-01-01T00:00:00",
        "LastLoginAt": "2025-01-01T00:00:00"
    });
    let badge = |id: &str, earned: &str| {
        json!({
            "Id": id, "UserProfileId": "7f0b1c9e-2d3a-4e5f-8a9b-0c1d2e3f4a5b",
            "BadgeConfigurationId": "brave-1", "BadgeName": "Brave", "BadgeMessage": "",
            "Axis": "courage", "TriggerValue": 0.75, "Threshold": 1, "EarnedAt": earned,
            "ImageId": "img", "BadgeExtra": {"x": true}
        })
    };
    let doc = json!({
        "id": "7f0b1c9e-2d3a-4e5f-8a9b-0c1d2e3f4a5b",
        "$type": "UserProfile",
        "AccountId": "0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11",
        "Name": "Kid", "AgeGroupName": "school", "PreferredFantasyThemes": "A, B",
        "CreatedAt": "2025-12-20T10:15:11.6313029Z", "UpdatedAt": "2025-12-20T10:15:11.6313029Z",
        "EarnedBadges": [
            badge("b0000000-0000-4000-8000-000000000002", "2025-12-21T00:00:00.1234567Z"),
            badge("b0000000-0000-4000-8000-000000000001", "2025-12-20T00:00:00.1234567Z"),
        ]
    });
    let account_cosmos_id = decode_account(&account).unwrap().account.cosmos_id;
    assert_eq!(
        account_cosmos_id.as_deref(),
        Some("Account|0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11")
    );
    let mut state = decode_profile_state(&doc, account_cosmos_id);
    assert_eq!(state.badges.len(), 1, "the later badge is a duplicate");
    state.badges.push(new_badge(
        state.profile.id,
        "kind-2",
        at("2026-01-01T00:00:00Z"),
    ));
    let merged = profile_document(
        Some(&doc),
        &state.profile,
        &state.badges,
        state.account_cosmos_id.as_deref(),
    );
    assert_eq!(changed_paths(&doc, &merged), ["EarnedBadges[+]"]);
    assert_eq!(merged["AccountId"], doc["AccountId"]);
}

#[test]
fn new_documents_have_the_apps_shape() {
    let account = Account {
        id: Uuid::new_v4(),
        cosmos_id: None,
        auth0_user_id: None,
        email: Email::parse("Sam@Example.org").unwrap(),
        display_name: "Sam".to_owned(),
        role: Role::User,
        settings: AccountSettings {
            id: Some(Uuid::new_v4().to_string()),
            ..AccountSettings::default()
        },
        created_at: at("2026-01-01T00:00:00Z"),
        last_login_at: at("2026-01-01T00:00:00Z"),
    };
    let subscription = new_subscription(account.id, "Plus", at("2026-02-01T00:00:00Z"));
    let doc = account_document(None, &account, Some(&subscription), &[]);
    let sub = doc["Subscription"].as_object().unwrap();
    assert!(!sub.contains_key("CreatedAt") && !sub.contains_key("UpdatedAt"));
    assert_eq!(doc["Settings"]["Id"], json!(account.settings.id));
    assert_eq!(doc["UserProfileIds"], "");

    let signup = decode_pending_signup(&json!({
        "id": Uuid::new_v4().to_string(), "email": "x@y.org", "Code": "123456",
        "CreatedAt": "2026-01-01T00:00:00Z", "ExpiresAt": "2026-01-01T00:15:00Z"
    }))
    .unwrap()
    .signup;
    let typed = PendingSignup {
        email: Email::parse(" New.User@Example.ORG ").unwrap(),
        ..signup
    };
    let doc = signup_document(None, &typed);
    assert_eq!(doc["email"], "new.user@example.org");
}

#[test]
fn a_delivered_subscription_gains_no_timestamps() {
    let doc = app_account();
    let mut state = decode_account_state(&doc);
    let sub = state.subscription.as_mut().unwrap();
    sub.tier = "Plus".to_owned();
    sub.updated_at = at("2026-03-01T00:00:00Z");
    let merged = account_document(
        Some(&doc),
        &state.account,
        state.subscription.as_ref(),
        &state.completed_scenarios,
    );
    assert_eq!(changed_paths(&doc, &merged), ["Subscription.Tier"]);
}

/// `UserProfileIds` as the app keeps it: a created profile's id appended (the list's other
/// items, spacing and blanks untouched), a deleted profile's id removed in whatever spelling the
/// list holds it, nothing written when the list already says so.
#[test]
fn user_profile_ids_gain_and_lose_a_profile_as_the_app_does() {
    use mystira_cosmos_codec::codec::{profile_ids_with, profile_ids_without};
    let (p, other) = (Uuid::new_v4(), Uuid::new_v4());
    let upper = p.to_string().to_uppercase();
    let with = |v: Value| profile_ids_with(&json!({ "UserProfileIds": v }), &p.to_string(), p);
    let without = |v: Value| profile_ids_without(&json!({ "UserProfileIds": v }), p);
    let id = p.to_string();
    assert_eq!(with(json!("")), Some(json!(id)));
    assert_eq!(with(json!("  ")), Some(json!(id)));
    assert_eq!(with(Value::Null), Some(json!(id)));
    assert_eq!(profile_ids_with(&json!({}), &id, p), Some(json!(id)));
    assert_eq!(
        with(json!(format!(" {other} , "))),
        Some(json!(format!(" {other} , ,{id}")))
    );
    assert_eq!(
        with(json!([other.to_string()])),
        Some(json!([other.to_string(), id]))
    );
    // listed already, in any spelling: nothing to write
    assert_eq!(with(json!(format!("{other}, {upper}"))), None);
    assert_eq!(with(json!(format!("UserProfile|{p}"))), None);
    assert_eq!(with(json!(7)), None);

    assert_eq!(
        without(json!(format!(" {other} ,{upper}, ,UserProfile|{p}"))),
        Some(json!(format!(" {other} , ")))
    );
    assert_eq!(
        without(json!([id.clone(), other.to_string()])),
        Some(json!([other.to_string()]))
    );
    assert_eq!(without(json!(format!("{other}"))), None);
    assert_eq!(without(Value::Null), None);
    assert_eq!(profile_ids_without(&json!({}), p), None);
}
