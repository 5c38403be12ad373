//! The order of a delivered document's properties (issue 28): the merge keeps the stored
//! document's order at every depth, a property it removes leaves the others where they were,
//! and a property it adds goes at the end. The documents here are parsed from text in the
//! app's order (not alphabetical) and the merged document is compared as text, so these fail
//! when serde_json's maps sort their keys (the workspace's serde_json without
//! `preserve_order`) or when a removal moves the last property into the hole (`Map::remove`
//! is `swap_remove` with `preserve_order`; the merge uses `shift_remove`).
#![allow(clippy::unwrap_used)]

use mystira_cosmos_codec::codec::{
    account_document, decode_account, decode_pending_signup, signup_document,
};
use serde_json::Value;

/// An account as the app writes it: `$type` before `Email`, unknown properties in the middle of
/// the root, of `Subscription` and of `Settings`, and `_ts` last (Cosmos appends it).
const ACCOUNT: &str = concat!(
    r#"{"id":"0d3c2f4e-8a4b-4c57-9a53-2b6d1f0e9c11","$type":"Account","#,
    r#""Zeta":{"b":1,"a":2},"ExternalUserId":"auth0|0123456789abcdef0123456789abcdef","#,
    r#""Email":"sam@example.org","DisplayName":"Sam","Role":"User","UserProfileIds":"","#,
    r#""CompletedScenarioIds":["pirates","dragons"],"#,
    r#""Subscription":{"Type":1,"ProductId":"monthly","SubExtra":{"z":1,"a":[3,1,2]},"#,
    r#""ValidUntil":null,"IsActive":true,"PurchaseToken":null,"LastVerified":null,"#,
    r#""PurchasedScenarios":"","Tier":"Free","StartDate":"2025-01-02T03:04:05.6313029+02:00","#,
    r#""EndDate":"9999-12-31T23:59:59.9999999"},"#,
    r#""Settings":{"Theme":"dark","SettingsExtra":1,"CacheCredentials":false},"#,
    r#""CreatedAt":"2025-12-20T10:15:11.6313029Z","LastLoginAt":"2025-12-21T10:15:11.6313029","#,
    r#""AppAddedLater":"kept","_ts":1766224800}"#
);

const SIGNUP: &str = concat!(
    r#"{"id":"c0000000-0000-4000-8000-000000000001","$type":"PendingSignup","#,
    r#""email":"new.parent@example.com","DisplayName":"New Parent","Code":"042917","#,
    r#""CreatedAt":"2025-12-20T10:00:00.0000000Z","ExpiresAt":"2025-12-20T10:15:00.0000000Z","#,
    r#""IsUsed":false,"IsSignin":true,"FailedAttempts":2,"_ts":1766224800}"#
);

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// `text` with each `from` (found exactly once) replaced by its `to`.
fn edited(text: &str, edits: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in edits {
        assert_eq!(out.matches(from).count(), 1, "{from} is not once in {out}");
        out = out.replacen(from, to, 1);
    }
    out
}

fn merged_account(
    text: &str,
    change: impl FnOnce(&mut mystira_cosmos_codec::codec::DecodedAccount),
) -> String {
    let doc = parse(text);
    let mut d = decode_account(&doc).unwrap();
    change(&mut d);
    let merged = account_document(
        Some(&doc),
        &d.account,
        d.subscription.as_ref(),
        &d.completed_scenarios,
    );
    serde_json::to_string(&merged).unwrap()
}

#[test]
fn a_changed_property_stays_where_it_was_and_the_rest_keeps_the_apps_order() {
    let merged = merged_account(ACCOUNT, |d| {
        d.account.display_name = "Samantha".to_owned();
        let s = d.subscription.as_mut().unwrap();
        s.tier = "Family".to_owned();
    });
    let expected = edited(
        ACCOUNT,
        &[
            (r#""DisplayName":"Sam""#, r#""DisplayName":"Samantha""#),
            (r#""Tier":"Free""#, r#""Tier":"Family""#),
            (r#","_ts":1766224800"#, ""),
        ],
    );
    assert_eq!(merged, expected);
}

#[test]
fn a_removed_property_leaves_the_others_in_their_order() {
    let doc = parse(SIGNUP);
    let mut signup = decode_pending_signup(&doc).unwrap().signup;
    signup.code = None;
    let merged = serde_json::to_string(&signup_document(Some(&doc), &signup)).unwrap();
    let expected = edited(
        SIGNUP,
        &[(r#""Code":"042917","#, ""), (r#","_ts":1766224800"#, "")],
    );
    assert_eq!(merged, expected);
}

#[test]
fn a_replaced_legacy_user_id_leaves_the_others_in_their_order_and_its_successor_goes_last() {
    let legacy = edited(
        ACCOUNT,
        &[(
            r#""ExternalUserId":"auth0|0123456789abcdef0123456789abcdef""#,
            r#""Auth0UserId":"auth0|0123456789abcdef0123456789abcdef""#,
        )],
    );
    let merged = merged_account(&legacy, |d| {
        d.account.auth0_user_id = Some("auth0|fedcba9876543210fedcba9876543210".to_owned());
    });
    let expected = edited(
        &legacy,
        &[
            (
                r#""Auth0UserId":"auth0|0123456789abcdef0123456789abcdef","#,
                "",
            ),
            (
                r#","_ts":1766224800"#,
                r#","ExternalUserId":"auth0|fedcba9876543210fedcba9876543210""#,
            ),
        ],
    );
    assert_eq!(merged, expected);
}

#[test]
fn a_new_accounts_settings_write_the_apps_properties_first_and_unknown_ones_after() {
    let doc = parse(ACCOUNT);
    let mut d = decode_account(&doc).unwrap();
    // an unknown key named like a known one never overwrites it
    d.account
        .settings
        .extra
        .insert("Theme".to_owned(), Value::from("stray"));
    let new = account_document(
        None,
        &d.account,
        d.subscription.as_ref(),
        &d.completed_scenarios,
    );
    let keys: Vec<&str> = new["Settings"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "CacheCredentials",
            "RequireAuthOnStartup",
            "PreferredLanguage",
            "NotificationsEnabled",
            "Theme",
            "SettingsExtra",
        ]
    );
    assert_eq!(new["Settings"]["Theme"], "dark");
}
