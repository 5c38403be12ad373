//! One decode test per shape and per problem of `shared/spec/cosmos-documents.md`, with the
//! documents written out as JSON literals.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use mystira_cosmos_codec::codec::{
    Container, DecodeError, decode, decode_account, decode_pending_signup, decode_profile,
    document_ref, encode_account, encode_pending_signup, encode_profile,
};
use mystira_domain::ids::derived_key;
use mystira_domain::{MappedId, Role, SubscriptionType};
use serde_json::{Value, json};
use uuid::Uuid;

const ACCOUNT_ID: &str = "7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The current (EF Core 9) account shape, with the Cosmos system fields.
fn ef9_account() -> Value {
    json!({
        "id": ACCOUNT_ID,
        "$type": "Account",
        "ExternalUserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "Parent.One@Example.com",
        "DisplayName": "Parent One",
        "Role": "Guest",
        "UserProfileIds": "a1b2c3d4-0000-4000-8000-000000000001,a1b2c3d4-0000-4000-8000-000000000002",
        "CompletedScenarioIds": ["scenario-1", "scenario-2"],
        "Subscription": {
            "Id": "5f0c9a4e-1111-4222-8333-444455556666",
            "Type": 1,
            "ProductId": "mystira.monthly",
            "ValidUntil": "2026-01-20T10:15:30.1234567Z",
            "IsActive": true,
            "PurchaseToken": "tok_secret",
            "LastVerified": "2025-12-21T10:15:30.0000000Z",
            "PurchasedScenarios": "scenario-9,scenario-10",
            "Tier": "Premium",
            "StartDate": "2025-12-20T10:15:30.1234567Z",
            "EndDate": "9999-12-31T23:59:59.9999999"
        },
        "Settings": {
            "Id": "9e8d7c6b-0000-4000-8000-00000000aaaa",
            "CacheCredentials": true,
            "RequireAuthOnStartup": false,
            "PreferredLanguage": "en",
            "NotificationsEnabled": true,
            "Theme": "dark"
        },
        "CreatedAt": "2025-12-20T10:15:30.1234567Z",
        "LastLoginAt": "2025-12-22T08:00:00.0000000Z",
        "_rid": "kV4mAKY9wT0BAAAAAAAAAA==",
        "_self": "dbs/kV4mAA==/colls/kV4mAKY9wT0=/docs/kV4mAKY9wT0BAAAAAAAAAA==/",
        "_etag": "\"0000d986-0000-0d00-0000-65a1b2c30000\"",
        "_attachments": "attachments/",
        "_ts": 1766390400
    })
}

fn with(mut doc: Value, path: &[&str], value: Value) -> Value {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = &mut doc;
    for p in parents {
        cur = cur.get_mut(*p).unwrap();
    }
    cur.as_object_mut()
        .unwrap()
        .insert((*last).to_owned(), value);
    doc
}

fn without(mut doc: Value, path: &[&str]) -> Value {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = &mut doc;
    for p in parents {
        cur = cur.get_mut(*p).unwrap();
    }
    cur.as_object_mut().unwrap().remove(*last);
    doc
}

fn rejection(result: Result<impl std::fmt::Debug, DecodeError>) -> DecodeError {
    result.expect_err("should be rejected")
}

/// The codes of the notes, without `user_profile_ids_dropped`: every account that has a
/// `UserProfileIds` list carries it (see `user_profile_ids_are_kept_in_a_note`).
fn note_codes(notes: &[mystira_cosmos_codec::Note]) -> Vec<&'static str> {
    notes
        .iter()
        .map(|n| n.code)
        .filter(|c| *c != "user_profile_ids_dropped")
        .collect()
}

// ---------------------------------------------------------------- accounts: shapes

#[test]
fn ef9_account_decodes_every_field() {
    let d = decode_account(&ef9_account()).unwrap();
    let a = &d.account;
    assert_eq!(a.id, Uuid::parse_str(ACCOUNT_ID).unwrap());
    assert_eq!(a.cosmos_id, None);
    assert_eq!(
        a.auth0_user_id.as_deref(),
        Some("auth0|0123456789abcdef0123456789abcdef")
    );
    assert_eq!(a.email.as_str(), "Parent.One@Example.com");
    assert_eq!(a.display_name, "Parent One");
    assert_eq!(a.role, Role::Guest);
    assert!(a.settings.cache_credentials);
    assert_eq!(a.settings.theme, "dark");
    assert_eq!(
        a.settings.id.as_deref(),
        Some("9e8d7c6b-0000-4000-8000-00000000aaaa")
    );
    assert_eq!(
        a.created_at,
        Utc.with_ymd_and_hms(2025, 12, 20, 10, 15, 30).unwrap()
            + chrono::Duration::nanoseconds(123_456_700)
    );
    assert_eq!(a.last_login_at, utc("2025-12-22T08:00:00Z"));

    let s = d.subscription.as_ref().unwrap();
    assert_eq!(
        s.id,
        Uuid::parse_str("5f0c9a4e-1111-4222-8333-444455556666").unwrap()
    );
    assert_eq!(s.account_id, a.id);
    assert_eq!(s.subscription_type, SubscriptionType::Monthly);
    assert_eq!(s.product_id.as_deref(), Some("mystira.monthly"));
    assert!(s.is_active);
    assert_eq!(s.end_date, None, "DateTime.MaxValue means no end");
    assert_eq!(s.purchase_token.as_ref().unwrap().expose(), "tok_secret");
    assert_eq!(s.purchased_scenarios, ["scenario-9", "scenario-10"]);
    assert_eq!(s.tier, "Premium");
    assert_eq!(
        s.created_at,
        s.start_date.unwrap(),
        "no CreatedAt: StartDate"
    );
    assert_eq!(
        s.updated_at,
        Utc.timestamp_opt(1_766_390_400, 0).unwrap(),
        "no UpdatedAt: _ts"
    );

    assert_eq!(d.completed_scenarios.len(), 2);
    assert_eq!(d.completed_scenarios[0].scenario_id, "scenario-1");
    assert_eq!(d.completed_scenarios[0].completed_at, a.last_login_at);
    assert_eq!(
        d.completed_scenarios[1].id,
        derived_key("completed_scenario", a.id, "scenario-2")
    );
    assert_eq!(d.profile_ids_hint.len(), 2);
    assert_eq!(d.version.ts, Some(1_766_390_400));
    assert_eq!(
        d.version.etag.as_deref(),
        Some("\"0000d986-0000-0d00-0000-65a1b2c30000\"")
    );
    assert_eq!(d.document_id, ACCOUNT_ID);
    assert!(note_codes(&d.notes).is_empty(), "{:?}", d.notes);
}

#[test]
fn user_profile_ids_are_kept_in_a_note() {
    let doc = ef9_account();
    let d = decode_account(&doc).unwrap();
    let note = d
        .notes
        .iter()
        .find(|n| n.code == "user_profile_ids_dropped")
        .expect("the dropped list is on record");
    assert_eq!(note.subject, "UserProfileIds");
    assert_eq!(note.original.as_ref(), doc.get("UserProfileIds"));
    let none = decode_account(&without(ef9_account(), &["UserProfileIds"])).unwrap();
    assert!(
        none.notes
            .iter()
            .all(|n| n.code != "user_profile_ids_dropped")
    );
}

#[test]
fn changed_values_keep_their_original() {
    let original_of = |d: &mystira_cosmos_codec::codec::DecodedAccount, code: &str| {
        d.notes
            .iter()
            .find(|n| n.code == code)
            .and_then(|n| n.original.clone())
    };
    let d = decode_account(&with(ef9_account(), &["Role"], json!("admin"))).unwrap();
    assert_eq!(original_of(&d, "role_recased"), Some(json!("admin")));
    let d = decode_account(&with(
        ef9_account(),
        &["Email"],
        json!("  kid@example.com "),
    ))
    .unwrap();
    assert_eq!(d.account.email.as_str(), "kid@example.com");
    assert_eq!(
        original_of(&d, "email_trimmed"),
        Some(json!("  kid@example.com "))
    );
    let d = decode_account(&with(ef9_account(), &["Auth0UserId"], json!("auth0|other"))).unwrap();
    assert_eq!(
        original_of(&d, "conflicting_user_ids"),
        Some(json!("auth0|other"))
    );
    let d = decode_account(&with(
        ef9_account(),
        &["CompletedScenarioIds"],
        json!(" s-1 ,,s-2"),
    ))
    .unwrap();
    assert_eq!(
        original_of(&d, "list_normalised"),
        Some(json!(" s-1 ,,s-2"))
    );
    // a clean value changes nothing and leaves no note
    let d = decode_account(&ef9_account()).unwrap();
    assert!(original_of(&d, "email_trimmed").is_none());
}

#[test]
fn unknown_fields_are_kept_in_a_note_with_their_values() {
    let note = |notes: &[mystira_cosmos_codec::Note], subject: &str| {
        notes
            .iter()
            .find(|n| n.code == "unknown_fields_dropped" && n.subject == subject)
            .map(|n| (n.detail["fields"].clone(), n.original.clone()))
    };
    // a clean document has none: system fields and discriminators are not unknown
    assert!(note(&decode_account(&ef9_account()).unwrap().notes, "$").is_none());
    assert!(note(&decode_profile(&profile()).unwrap().notes, "$").is_none());

    let doc = with(ef9_account(), &["Nickname"], json!("Sunny"));
    let doc = with(doc, &["Subscription", "Store"], json!({"sku": "x"}));
    let d = decode_account(&doc).unwrap();
    assert_eq!(
        note(&d.notes, "$"),
        Some((json!(["Nickname"]), Some(json!({"Nickname": "Sunny"}))))
    );
    assert_eq!(
        note(&d.notes, "Subscription"),
        Some((json!(["Store"]), Some(json!({"Store": {"sku": "x"}}))))
    );

    let mut doc = with(profile(), &["Mood"], json!(3));
    doc["EarnedBadges"][0]["Sparkle"] = json!(true);
    let d = decode_profile(&doc).unwrap();
    assert_eq!(note(&d.notes, "$").unwrap().1, Some(json!({"Mood": 3})));
    assert_eq!(
        note(&d.notes, "EarnedBadges[0]").unwrap().1,
        Some(json!({"Sparkle": true}))
    );
}

#[test]
fn spellings_and_dropped_parts_keep_their_original() {
    let original = |notes: &[mystira_cosmos_codec::Note], code: &str| {
        notes
            .iter()
            .find(|n| n.code == code)
            .and_then(|n| n.original.clone())
    };
    let d = decode_account(&with(
        ef9_account(),
        &["Subscription", "Type"],
        json!("monthly"),
    ))
    .unwrap();
    assert_eq!(
        original(&d.notes, "subscription_type_spelled"),
        Some(json!("monthly"))
    );
    // the integer the app writes is not a spelling
    let d = decode_account(&with(ef9_account(), &["Subscription", "Type"], json!(1))).unwrap();
    assert!(original(&d.notes, "subscription_type_spelled").is_none());

    let d = decode_account(&with(
        ef9_account(),
        &["CompletedScenarioIds"],
        json!(["s-1", "s-2", "s-1"]),
    ))
    .unwrap();
    assert_eq!(
        original(&d.notes, "duplicate_completed_scenario"),
        Some(json!("s-1"))
    );

    let d = decode_profile(&with(
        profile(),
        &["DateOfBirth"],
        json!("2016-04-12T13:45:00"),
    ))
    .unwrap();
    assert_eq!(
        original(&d.notes, "date_not_midnight"),
        Some(json!("2016-04-12T13:45:00"))
    );

    let mut doc = profile();
    doc["EarnedBadges"][0]["UserProfileId"] = json!("someone-else");
    let d = decode_profile(&doc).unwrap();
    assert_eq!(
        original(&d.notes, "badge_profile_mismatch"),
        Some(json!("someone-else"))
    );

    // a double that is not a float's value is narrowed, and kept; 0.1 written by .NET is not
    let mut doc = profile();
    doc["EarnedBadges"][0]["TriggerValue"] = json!(0.1);
    doc["EarnedBadges"][0]["Threshold"] = json!(0.123456789012);
    let d = decode_profile(&doc).unwrap();
    let narrowed: Vec<_> = d
        .notes
        .iter()
        .filter(|n| n.code == "real_narrowed")
        .collect();
    assert_eq!(narrowed.len(), 1, "{narrowed:?}");
    assert_eq!(narrowed[0].subject, "EarnedBadges[0].Threshold");
    assert_eq!(narrowed[0].original, Some(json!(0.123456789012)));
}

#[test]
fn ef8_account_with_discriminator_prefixed_id_and_auth0_user_id() {
    let doc = json!({
        "id": format!("Account|{ACCOUNT_ID}"),
        "Id": ACCOUNT_ID,
        "Discriminator": "Account",
        "Auth0UserId": "auth0|ffffffffffffffffffffffffffffffff",
        "Email": "old@example.com",
        "DisplayName": "Old",
        "Role": "Admin",
        "UserProfileIds": "",
        "CompletedScenarioIds": [],
        "Subscription": {
            "Type": 0, "ProductId": null, "ValidUntil": null, "IsActive": false,
            "PurchaseToken": null, "LastVerified": null, "PurchasedScenarios": "",
            "Tier": "Free", "StartDate": "2024-03-01T09:00:00", "EndDate": "9999-12-31T23:59:59.9999999"
        },
        "Settings": {"CacheCredentials": false, "RequireAuthOnStartup": false,
                     "PreferredLanguage": "en", "NotificationsEnabled": true, "Theme": ""},
        "CreatedAt": "2024-03-01T09:00:00",
        "LastLoginAt": "2024-03-02T09:00:00.12",
        "_ts": 1709370000
    });
    let d = decode_account(&doc).unwrap();
    let id = Uuid::parse_str(ACCOUNT_ID).unwrap();
    assert_eq!(d.account.id, id, "the key comes from Id");
    assert_eq!(
        d.account.cosmos_id.as_deref(),
        Some(format!("Account|{ACCOUNT_ID}").as_str())
    );
    assert_eq!(d.document_id, format!("Account|{ACCOUNT_ID}"));
    assert_eq!(
        d.account.auth0_user_id.as_deref(),
        Some("auth0|ffffffffffffffffffffffffffffffff")
    );
    assert_eq!(d.account.role, Role::Admin);
    assert_eq!(d.account.created_at, utc("2024-03-01T09:00:00Z"));
    let s = d.subscription.unwrap();
    assert_eq!(s.id, derived_key("subscription", id, ""), "no embedded Id");
    assert_eq!(s.cosmos_id, None);
    assert!(s.purchased_scenarios.is_empty());
    assert!(d.profile_ids_hint.is_empty());
    assert_eq!(d.account.settings.id, None);

    // Written back, the id is the same document's, and it decodes to the same entity.
    let again = encode_account(&d.account, Some(&s), &[], &[] as &[&str]);
    assert_eq!(again["id"], json!(format!("Account|{ACCOUNT_ID}")));
    assert_eq!(again["Id"], json!(ACCOUNT_ID));
    assert!(again["Subscription"].get("Id").is_none());
    assert_eq!(decode_account(&again).unwrap().account, d.account);
}

#[test]
fn prefixed_id_without_separate_id_uses_the_part_after_the_bar() {
    let doc = without(
        with(
            ef9_account(),
            &["id"],
            json!(format!("Account|{ACCOUNT_ID}")),
        ),
        &["$type"],
    );
    let d = decode_account(&doc).unwrap();
    assert_eq!(d.account.id, Uuid::parse_str(ACCOUNT_ID).unwrap());
    assert_eq!(d.document_id, format!("Account|{ACCOUNT_ID}"));
}

#[test]
fn account_without_any_discriminator_is_inferred_from_the_container() {
    let doc = without(ef9_account(), &["$type"]);
    assert!(decode(Container::Accounts, &doc).is_ok());
    assert!(matches!(
        decode(Container::Accounts, &doc).unwrap(),
        mystira_cosmos_codec::Decoded::Account(_)
    ));
}

#[test]
fn non_uuid_and_upper_case_ids_keep_their_spelling() {
    for raw in [
        "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q",
        "7D1C3A52-5B7E-4D5A-9F0E-2B1F3C4D5E6F",
        "client-supplied id",
    ] {
        let d = decode_account(&with(ef9_account(), &["id"], json!(raw))).unwrap();
        assert_eq!(d.account.id, MappedId::from_source(raw).uuid, "{raw}");
        assert_eq!(d.account.cosmos_id.as_deref(), Some(raw));
        let back = encode_account(&d.account, None, &[], &[] as &[&str]);
        assert_eq!(back["id"], json!(raw));
        assert!(back.get("Id").is_none(), "{raw}: id alone maps back");
        let r = document_ref(Container::Accounts, &back).unwrap();
        assert_eq!(r.key, d.account.id);
    }
}

#[test]
fn empty_external_user_id_is_none_and_external_wins_over_auth0() {
    let empty = with(ef9_account(), &["ExternalUserId"], json!(""));
    assert_eq!(decode_account(&empty).unwrap().account.auth0_user_id, None);
    let blank = with(ef9_account(), &["ExternalUserId"], json!("   "));
    assert_eq!(decode_account(&blank).unwrap().account.auth0_user_id, None);
    let null = with(ef9_account(), &["ExternalUserId"], Value::Null);
    assert_eq!(decode_account(&null).unwrap().account.auth0_user_id, None);
    let empty_new_old_set = with(empty.clone(), &["Auth0UserId"], json!("auth0|old"));
    assert_eq!(
        decode_account(&empty_new_old_set)
            .unwrap()
            .account
            .auth0_user_id
            .as_deref(),
        Some("auth0|old")
    );
    let both = with(ef9_account(), &["Auth0UserId"], json!("auth0|other"));
    let d = decode_account(&both).unwrap();
    assert_eq!(
        d.account.auth0_user_id.as_deref(),
        Some("auth0|0123456789abcdef0123456789abcdef")
    );
    assert_eq!(note_codes(&d.notes), ["conflicting_user_ids"]);
}

#[test]
fn comma_joined_lists_are_trimmed_and_empty_items_dropped() {
    let doc = with(ef9_account(), &["UserProfileIds"], json!(" a , ,b,, c "));
    let doc = with(
        doc,
        &["Subscription", "PurchasedScenarios"],
        json!("scenario-1, scenario-2 ,"),
    );
    let d = decode_account(&doc).unwrap();
    assert_eq!(d.profile_ids_hint, ["a", "b", "c"]);
    assert_eq!(
        d.subscription.unwrap().purchased_scenarios,
        ["scenario-1", "scenario-2"]
    );
    let empty = with(ef9_account(), &["UserProfileIds"], json!(""));
    assert!(decode_account(&empty).unwrap().profile_ids_hint.is_empty());
}

#[test]
fn subscription_type_integer_and_label_and_bad_values() {
    for (raw, expected) in [
        (json!(0), SubscriptionType::Free),
        (json!(2), SubscriptionType::Annual),
        (json!(3), SubscriptionType::Lifetime),
        (json!(4), SubscriptionType::Individual),
        (json!("Annual"), SubscriptionType::Annual),
        (json!("lifetime"), SubscriptionType::Lifetime),
        (json!("4"), SubscriptionType::Individual),
    ] {
        let d =
            decode_account(&with(ef9_account(), &["Subscription", "Type"], raw.clone())).unwrap();
        assert_eq!(d.subscription.unwrap().subscription_type, expected, "{raw}");
    }
    for (raw, code) in [
        (json!(5), "invalid_subscription_type"),
        (json!(-1), "invalid_subscription_type"),
        (json!("Platinum"), "invalid_subscription_type"),
        (json!(1.5), "wrong_type"),
        (json!(true), "wrong_type"),
    ] {
        let e = rejection(decode_account(&with(
            ef9_account(),
            &["Subscription", "Type"],
            raw.clone(),
        )));
        assert_eq!(
            (e.code, e.field.as_str()),
            (code, "Subscription.Type"),
            "{raw}"
        );
    }
    let missing = decode_account(&without(ef9_account(), &["Subscription", "Type"])).unwrap();
    assert_eq!(
        missing.subscription.unwrap().subscription_type,
        SubscriptionType::Free
    );
    assert_eq!(missing.notes[0].code, "field_defaulted");
    assert_eq!(missing.notes[0].subject, "Subscription.Type");
}

#[test]
fn date_times_in_every_spelling() {
    let expected = utc("2025-12-20T10:15:30.1234567Z");
    for raw in [
        "2025-12-20T10:15:30.1234567Z",
        "2025-12-20T10:15:30.1234567",
        "2025-12-20T11:15:30.1234567+01:00",
    ] {
        let d = decode_account(&with(ef9_account(), &["CreatedAt"], json!(raw))).unwrap();
        assert_eq!(d.account.created_at, expected, "{raw}");
    }
    for (raw, secs_frac) in [
        ("2025-12-20T10:15:30", "2025-12-20T10:15:30Z"),
        ("2025-12-20T10:15:30.1Z", "2025-12-20T10:15:30.1Z"),
        ("2025-12-20T10:15:30.12345", "2025-12-20T10:15:30.12345Z"),
    ] {
        let d = decode_account(&with(ef9_account(), &["CreatedAt"], json!(raw))).unwrap();
        assert_eq!(d.account.created_at, utc(secs_frac), "{raw}");
    }
}

#[test]
fn end_date_max_value_is_none_and_a_real_end_date_is_kept() {
    let with_z = with(
        ef9_account(),
        &["Subscription", "EndDate"],
        json!("9999-12-31T23:59:59.9999999Z"),
    );
    assert_eq!(
        decode_account(&with_z)
            .unwrap()
            .subscription
            .unwrap()
            .end_date,
        None
    );
    let null = with(ef9_account(), &["Subscription", "EndDate"], Value::Null);
    assert_eq!(
        decode_account(&null)
            .unwrap()
            .subscription
            .unwrap()
            .end_date,
        None
    );
    let real = with(
        ef9_account(),
        &["Subscription", "EndDate"],
        json!("2026-12-20T00:00:00Z"),
    );
    assert_eq!(
        decode_account(&real)
            .unwrap()
            .subscription
            .unwrap()
            .end_date,
        Some(utc("2026-12-20T00:00:00Z"))
    );
}

#[test]
fn nullable_fields_may_be_null_or_missing() {
    let doc = with(ef9_account(), &["Subscription", "ValidUntil"], Value::Null);
    let doc = with(doc, &["Subscription", "PurchaseToken"], Value::Null);
    let doc = without(doc, &["Subscription", "LastVerified"]);
    let doc = without(doc, &["Subscription", "ProductId"]);
    let doc = with(doc, &["Subscription", "StartDate"], Value::Null);
    let s = decode_account(&doc).unwrap().subscription.unwrap();
    assert_eq!(s.valid_until, None);
    assert!(s.purchase_token.is_none());
    assert_eq!(s.last_verified, None);
    assert_eq!(s.product_id, None);
    assert_eq!(s.start_date, None);
    let d = decode_account(&with(ef9_account(), &["Subscription"], Value::Null)).unwrap();
    assert!(d.subscription.is_none());
    assert!(
        decode_account(&without(ef9_account(), &["Subscription"]))
            .unwrap()
            .subscription
            .is_none()
    );
}

#[test]
fn settings_keep_unknown_keys_and_note_defaults() {
    let doc = with(ef9_account(), &["Settings", "FontScale"], json!(1.25));
    let doc = without(doc, &["Settings", "PreferredLanguage"]);
    let d = decode_account(&doc).unwrap();
    assert_eq!(
        d.account.settings.extra.get("FontScale"),
        Some(&json!(1.25))
    );
    assert_eq!(d.account.settings.preferred_language, "en");
    assert_eq!(note_codes(&d.notes), ["field_defaulted"]);
    assert_eq!(d.notes[0].subject, "Settings.PreferredLanguage");
    let back = encode_account(&d.account, None, &[], &[] as &[&str]);
    assert_eq!(back["Settings"]["FontScale"], json!(1.25));

    let none = decode_account(&without(ef9_account(), &["Settings"])).unwrap();
    assert_eq!(
        none.account.settings,
        mystira_domain::AccountSettings::default()
    );
    assert_eq!(none.notes[0].subject, "Settings");
    let wrong = rejection(decode_account(&with(
        ef9_account(),
        &["Settings", "CacheCredentials"],
        json!("yes"),
    )));
    assert_eq!(
        (wrong.code, wrong.field.as_str()),
        ("wrong_type", "Settings.CacheCredentials")
    );
}

#[test]
fn completed_scenarios_use_last_login_else_ts_and_are_deduplicated() {
    let doc = with(
        ef9_account(),
        &["CompletedScenarioIds"],
        json!(["s-1", "s-2", "s-1", "", "  "]),
    );
    let d = decode_account(&doc).unwrap();
    let ids: Vec<_> = d
        .completed_scenarios
        .iter()
        .map(|c| c.scenario_id.as_str())
        .collect();
    assert_eq!(ids, ["s-1", "s-2"]);
    assert_eq!(
        note_codes(&d.notes),
        ["list_normalised", "duplicate_completed_scenario"]
    );

    let unset = with(
        ef9_account(),
        &["LastLoginAt"],
        json!("0001-01-01T00:00:00"),
    );
    let d = decode_account(&unset).unwrap();
    assert_eq!(
        d.completed_scenarios[0].completed_at,
        Utc.timestamp_opt(1_766_390_400, 0).unwrap()
    );
    assert_eq!(note_codes(&d.notes), ["completed_at_derived"]);
    assert_eq!(d.notes[0].detail["source"], "_ts");
    let no_ts = without(unset, &["_ts"]);
    let d = decode_account(&no_ts).unwrap();
    assert_eq!(d.completed_scenarios[0].completed_at, d.account.created_at);

    let bad = rejection(decode_account(&with(
        ef9_account(),
        &["CompletedScenarioIds"],
        json!(["ok", 7]),
    )));
    assert_eq!(
        (bad.code, bad.field.as_str()),
        ("wrong_type", "CompletedScenarioIds")
    );
}

// ---------------------------------------------------------------- accounts: problems

#[test]
fn bad_emails_are_rejected_and_relaxed_ones_accepted() {
    for raw in [
        "",
        "   ",
        "a b@example.com",
        "user@example.123",
        "no-at-sign",
    ] {
        let e = rejection(decode_account(&with(ef9_account(), &["Email"], json!(raw))));
        assert_eq!(
            (e.code, e.field.as_str()),
            ("invalid_email", "Email"),
            "{raw:?}"
        );
        assert!(
            raw.trim().is_empty() || !e.message.contains(raw),
            "{}",
            e.message
        );
    }
    for raw in [
        "o'brien@example.ie",
        "user@example.xn--p1ai",
        " padded@example.com ",
    ] {
        let d = decode_account(&with(ef9_account(), &["Email"], json!(raw))).unwrap();
        assert_eq!(d.account.email.as_str(), raw.trim());
    }
    let missing = rejection(decode_account(&without(ef9_account(), &["Email"])));
    assert_eq!(
        (missing.code, missing.field.as_str()),
        ("missing_field", "Email")
    );
    let null = rejection(decode_account(&with(
        ef9_account(),
        &["Email"],
        Value::Null,
    )));
    assert_eq!(null.code, "missing_field");
    let number = rejection(decode_account(&with(ef9_account(), &["Email"], json!(42))));
    assert_eq!(number.code, "wrong_type");
}

#[test]
fn null_role_defaults_to_guest_with_a_note_and_casing_is_normalised() {
    let d = decode_account(&with(ef9_account(), &["Role"], Value::Null)).unwrap();
    assert_eq!(d.account.role, Role::Guest);
    assert_eq!(note_codes(&d.notes), ["role_defaulted"]);
    let d = decode_account(&without(ef9_account(), &["Role"])).unwrap();
    assert_eq!(note_codes(&d.notes), ["role_defaulted"]);
    let d = decode_account(&with(ef9_account(), &["Role"], json!("admin"))).unwrap();
    assert_eq!(d.account.role, Role::Admin);
    assert_eq!(note_codes(&d.notes), ["role_recased"]);
    let e = rejection(decode_account(&with(
        ef9_account(),
        &["Role"],
        json!("root"),
    )));
    assert_eq!((e.code, e.field.as_str()), ("invalid_role", "Role"));
}

#[test]
fn foreign_types_are_classified_rejections() {
    for (container, field) in [
        (Container::Accounts, "$type"),
        (Container::UserProfiles, "$type"),
        (Container::PendingSignups, "$type"),
    ] {
        let doc =
            json!({"id": "3f1e2d3c-0000-4000-8000-000000000001", field: "Scenario", "Title": "x"});
        let e = rejection(decode(container, &doc));
        assert_eq!((e.code, e.field.as_str()), ("foreign_type", field));
    }
    let ef8 = with(
        without(ef9_account(), &["$type"]),
        &["Discriminator"],
        json!("GameSession"),
    );
    assert_eq!(rejection(decode_account(&ef8)).code, "foreign_type");
    // An account document in the profiles container is foreign there.
    assert_eq!(
        rejection(decode(Container::UserProfiles, &ef9_account())).code,
        "foreign_type"
    );
    let numeric = with(ef9_account(), &["$type"], json!(3));
    assert_eq!(rejection(decode_account(&numeric)).code, "wrong_type");
}

#[test]
fn broken_ids_dates_and_roots_are_classified() {
    let cases = [
        (without(ef9_account(), &["id"]), "missing_field", "id"),
        (with(ef9_account(), &["id"], json!("")), "invalid_id", "id"),
        (with(ef9_account(), &["id"], json!(12)), "wrong_type", "id"),
        (with(ef9_account(), &["Id"], json!(" ")), "invalid_id", "Id"),
        (
            with(ef9_account(), &["CreatedAt"], json!("last tuesday")),
            "invalid_date",
            "CreatedAt",
        ),
        (
            with(ef9_account(), &["CreatedAt"], json!(1_700_000_000)),
            "wrong_type",
            "CreatedAt",
        ),
        (
            without(ef9_account(), &["LastLoginAt"]),
            "missing_field",
            "LastLoginAt",
        ),
        (
            with(
                ef9_account(),
                &["Subscription", "ValidUntil"],
                json!("2025-02-30T00:00:00"),
            ),
            "invalid_date",
            "Subscription.ValidUntil",
        ),
        (
            with(ef9_account(), &["Subscription"], json!("Monthly")),
            "wrong_type",
            "Subscription",
        ),
        (
            with(ef9_account(), &["DisplayName"], json!("x".repeat(256))),
            "too_long",
            "DisplayName",
        ),
        (
            with(
                ef9_account(),
                &["Subscription", "Tier"],
                json!("t".repeat(51)),
            ),
            "too_long",
            "Subscription.Tier",
        ),
        (json!([1, 2]), "wrong_type", "$"),
        (json!(null), "wrong_type", "$"),
    ];
    for (doc, code, field) in cases {
        let e = rejection(decode_account(&doc));
        assert_eq!((e.code, e.field.as_str()), (code, field), "{}", e.message);
        assert!(
            e.message.contains(field),
            "message names the field: {}",
            e.message
        );
    }
}

#[test]
fn unknown_fields_change_no_row() {
    // not stored (and noted: see unknown_fields_are_kept_in_a_note_with_their_values)
    let doc = with(ef9_account(), &["SomethingNew"], json!({"deep": [1, 2, 3]}));
    let d = decode_account(&doc).unwrap();
    assert_eq!(d.account, decode_account(&ef9_account()).unwrap().account);
}

#[test]
fn rejection_messages_never_contain_values() {
    let secret_email = "very.private.person@example.123";
    let e = rejection(decode_account(&with(
        ef9_account(),
        &["Email"],
        json!(secret_email),
    )));
    assert!(!e.message.contains("very.private"), "{}", e.message);
    let e = rejection(decode_pending_signup(&with(
        signup(),
        &["Code"],
        json!("12 345"),
    )));
    assert!(!e.message.contains("12 345"), "{}", e.message);
    let e = rejection(decode_profile(&with(
        profile(),
        &["DateOfBirth"],
        json!("2015-99-01"),
    )));
    assert!(!e.message.contains("2015-99"), "{}", e.message);
}

// ---------------------------------------------------------------- profiles

fn profile() -> Value {
    json!({
        "id": "a1b2c3d4-0000-4000-8000-000000000001",
        "$type": "UserProfile",
        "Name": "Ava",
        "AccountId": ACCOUNT_ID,
        "PreferredFantasyThemes": "Classic Fantasy,Magic & Wizards",
        "DateOfBirth": "2016-04-12T00:00:00",
        "IsGuest": false,
        "IsNpc": false,
        "Pronouns": "she/her",
        "Bio": null,
        "AvatarMediaId": "avatar-3",
        "SelectedAvatarMediaId": null,
        "HasCompletedOnboarding": true,
        "AgeGroupName": "6-9",
        "EarnedBadges": [
            {
                "Id": "b0000000-0000-4000-8000-000000000001",
                "UserProfileId": "a1b2c3d4-0000-4000-8000-000000000001",
                "BadgeConfigurationId": "courage-1",
                "BadgeId": null,
                "BadgeName": "Brave Heart",
                "BadgeMessage": "You did it!",
                "Axis": "courage",
                "TriggerValue": 0.5,
                "Threshold": 3.0,
                "EarnedAt": "2025-12-21T10:00:00.0000000Z",
                "GameSessionId": "gs-1",
                "ScenarioId": "scenario-1",
                "ImageId": "img-1"
            }
        ],
        "CreatedAt": "2025-12-20T10:15:30.1234567Z",
        "UpdatedAt": "2025-12-21T10:15:30.1234567Z",
        "_ts": 1766390400,
        "_etag": "\"e\""
    })
}

fn badge(id: &str, config: &str, earned: &str) -> Value {
    let mut b = profile()["EarnedBadges"][0].clone();
    b["Id"] = json!(id);
    b["BadgeConfigurationId"] = json!(config);
    b["EarnedAt"] = json!(earned);
    b
}

#[test]
fn profile_decodes_every_field() {
    let d = decode_profile(&profile()).unwrap();
    let p = &d.profile;
    assert_eq!(p.account_id, Some(Uuid::parse_str(ACCOUNT_ID).unwrap()));
    assert_eq!(p.name, "Ava");
    assert_eq!(p.preferred_themes, ["Classic Fantasy", "Magic & Wizards"]);
    assert_eq!(
        p.date_of_birth.as_ref().map(|d| *d.expose()),
        NaiveDate::from_ymd_opt(2016, 4, 12)
    );
    assert_eq!(p.age_group.as_str(), "6-9");
    assert_eq!(p.pronouns.as_deref(), Some("she/her"));
    assert_eq!(p.bio, None);
    assert!(p.has_completed_onboarding);
    assert_eq!(d.badges.len(), 1);
    let b = &d.badges[0];
    assert_eq!(b.user_profile_id, p.id);
    assert_eq!(b.trigger_value, 0.5);
    assert_eq!(b.threshold, 3.0);
    assert_eq!(b.badge_id, None);
    assert_eq!(d.account_ref.as_deref(), Some(ACCOUNT_ID));
    assert!(d.duplicate_badges.is_empty());
    assert!(d.notes.is_empty(), "{:?}", d.notes);
}

#[test]
fn legacy_age_groups_map_and_unknown_ones_are_rejected() {
    for (raw, group) in [
        ("toddlers", "1-2"),
        ("early_childhood", "3-5"),
        ("school", "6-9"),
        ("preteens", "10-12"),
        ("adult", "19-150"),
        ("School", "6-9"),
    ] {
        let d = decode_profile(&with(profile(), &["AgeGroupName"], json!(raw))).unwrap();
        assert_eq!(d.profile.age_group.as_str(), group);
        assert_eq!(note_codes(&d.notes), ["age_group_mapped"]);
    }
    for raw in ["teens", "6 - 9", ""] {
        let e = rejection(decode_profile(&with(
            profile(),
            &["AgeGroupName"],
            json!(raw),
        )));
        assert_eq!(
            (e.code, e.field.as_str()),
            ("invalid_age_group", "AgeGroupName")
        );
    }
    let e = rejection(decode_profile(&without(profile(), &["AgeGroupName"])));
    assert_eq!(e.code, "missing_field");
}

#[test]
fn duplicate_badges_keep_the_earliest_and_report_the_rest() {
    let doc = with(
        profile(),
        &["EarnedBadges"],
        json!([
            badge("b-late", "courage-1", "2025-12-22T00:00:00Z"),
            badge("b-other", "kindness-1", "2025-12-22T00:00:00Z"),
            badge("b-early", "courage-1", "2025-12-21T00:00:00Z"),
            badge("b-tie", "courage-1", "2025-12-21T00:00:00Z"),
        ]),
    );
    let d = decode_profile(&doc).unwrap();
    let kept: Vec<_> = d
        .badges
        .iter()
        .map(|b| b.cosmos_id.as_deref().unwrap())
        .collect();
    assert_eq!(kept, ["b-other", "b-early"]);
    let dups: Vec<_> = d
        .duplicate_badges
        .iter()
        .map(|b| b.cosmos_id.as_deref().unwrap())
        .collect();
    assert_eq!(dups, ["b-late", "b-tie"]);
    assert_eq!(note_codes(&d.notes), ["duplicate_badge", "duplicate_badge"]);
    assert_eq!(d.notes[0].subject, "b-late");
    assert_eq!(d.notes[0].detail["kept_badge_id"], "b-early");
}

#[test]
fn badges_without_id_get_a_derived_key_and_mismatched_owner_is_noted() {
    let mut b = badge("x", "courage-1", "2025-12-21T00:00:00Z");
    b.as_object_mut().unwrap().remove("Id");
    b["UserProfileId"] = json!("some-other-profile");
    let d = decode_profile(&with(profile(), &["EarnedBadges"], json!([b]))).unwrap();
    assert_eq!(
        d.badges[0].id,
        derived_key("user_badge", d.profile.id, "courage-1")
    );
    assert_eq!(note_codes(&d.notes), ["badge_profile_mismatch"]);
    let back = encode_profile(&d.profile, &d.badges);
    assert!(back["EarnedBadges"][0].get("Id").is_none());
    assert_eq!(decode_profile(&back).unwrap().badges, d.badges);
}

#[test]
fn profile_account_references_resolve_like_the_account_ids() {
    let upper = "7D1C3A52-5B7E-4D5A-9F0E-2B1F3C4D5E6F";
    let d = decode_profile(&with(profile(), &["AccountId"], json!(upper))).unwrap();
    assert_eq!(
        d.profile.account_id,
        Some(Uuid::parse_str(ACCOUNT_ID).unwrap())
    );
    let ulid = "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q";
    let d = decode_profile(&with(profile(), &["AccountId"], json!(ulid))).unwrap();
    let account = decode_account(&with(ef9_account(), &["id"], json!(ulid))).unwrap();
    assert_eq!(d.profile.account_id, Some(account.account.id));
    let prefixed = decode_profile(&with(
        profile(),
        &["AccountId"],
        json!(format!("Account|{ACCOUNT_ID}")),
    ))
    .unwrap();
    assert_eq!(
        prefixed.profile.account_id,
        Some(Uuid::parse_str(ACCOUNT_ID).unwrap())
    );
    for none in [Value::Null, json!("")] {
        let d = decode_profile(&with(profile(), &["AccountId"], none)).unwrap();
        assert_eq!(d.profile.account_id, None);
        assert_eq!(d.account_ref, None);
    }
    // Encoding with the account's original id keeps the reference resolvable for the app.
    let back =
        mystira_cosmos_codec::codec::encode_profile_with_account_id(&d.profile, &[], Some(ulid));
    assert_eq!(back["AccountId"], json!(ulid));
}

#[test]
fn birth_dates_and_themes() {
    let d = decode_profile(&with(
        profile(),
        &["DateOfBirth"],
        json!("2016-04-12T00:00:00+02:00"),
    ))
    .unwrap();
    assert_eq!(
        d.profile.date_of_birth.map(|d| *d.expose()),
        NaiveDate::from_ymd_opt(2016, 4, 12)
    );
    let d = decode_profile(&with(
        profile(),
        &["DateOfBirth"],
        json!("2016-04-11T22:00:00Z"),
    ))
    .unwrap();
    assert_eq!(
        d.profile.date_of_birth.map(|d| *d.expose()),
        NaiveDate::from_ymd_opt(2016, 4, 11)
    );
    assert_eq!(note_codes(&d.notes), ["date_not_midnight"]);
    let d = decode_profile(&with(profile(), &["DateOfBirth"], Value::Null)).unwrap();
    assert!(d.profile.date_of_birth.is_none());
    let d = decode_profile(&with(profile(), &["PreferredFantasyThemes"], json!(""))).unwrap();
    assert!(d.profile.preferred_themes.is_empty());
}

#[test]
fn ef8_profile_with_prefixed_id() {
    let doc = with(
        with(
            without(profile(), &["$type"]),
            &["Discriminator"],
            json!("UserProfile"),
        ),
        &["id"],
        json!("UserProfile|a1b2c3d4-0000-4000-8000-000000000001"),
    );
    let doc = with(doc, &["Id"], json!("a1b2c3d4-0000-4000-8000-000000000001"));
    let d = decode_profile(&doc).unwrap();
    assert_eq!(
        d.profile.id,
        Uuid::parse_str("a1b2c3d4-0000-4000-8000-000000000001").unwrap()
    );
    let back = encode_profile(&d.profile, &d.badges);
    assert_eq!(back["id"], doc["id"]);
    assert_eq!(back["Id"], doc["Id"]);
}

#[test]
fn missing_profile_booleans_default_with_notes() {
    let d = decode_profile(&without(profile(), &["IsNpc"])).unwrap();
    assert!(!d.profile.is_npc);
    assert_eq!(note_codes(&d.notes), ["field_defaulted"]);
    assert_eq!(d.notes[0].subject, "IsNpc");
    let e = rejection(decode_profile(&with(profile(), &["IsNpc"], json!("no"))));
    assert_eq!((e.code, e.field.as_str()), ("wrong_type", "IsNpc"));
    let e = rejection(decode_profile(&with(
        profile(),
        &["EarnedBadges"],
        json!([{"BadgeConfigurationId": "c", "EarnedAt": "soon"}]),
    )));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_date", "EarnedBadges[0].EarnedAt")
    );
}

// ---------------------------------------------------------------- pending sign-ups

fn signup() -> Value {
    json!({
        "id": "c0000000-0000-4000-8000-000000000001",
        "$type": "PendingSignup",
        "email": "new.parent@example.com",
        "DisplayName": "New Parent",
        "Code": "042917",
        "CreatedAt": "2025-12-20T10:00:00.0000000Z",
        "ExpiresAt": "2025-12-20T10:15:00.0000000Z",
        "IsUsed": false,
        "IsSignin": true,
        "FailedAttempts": 2,
        "_ts": 1766224800
    })
}

#[test]
fn signup_changes_and_unknown_fields_keep_their_original() {
    let doc = with(signup(), &["email"], json!(" new.parent@example.com"));
    let doc = with(doc, &["Referrer"], json!("school-newsletter"));
    let d = decode_pending_signup(&doc).unwrap();
    assert_eq!(d.signup.email.as_str(), "new.parent@example.com");
    let trimmed = d.notes.iter().find(|n| n.code == "email_trimmed").unwrap();
    assert_eq!(trimmed.subject, "email");
    assert_eq!(trimmed.original, Some(json!(" new.parent@example.com")));
    let unknown = d
        .notes
        .iter()
        .find(|n| n.code == "unknown_fields_dropped")
        .unwrap();
    assert_eq!(
        unknown.original,
        Some(json!({"Referrer": "school-newsletter"}))
    );
    // the clean document has neither
    let clean = decode_pending_signup(&signup()).unwrap();
    assert!(
        clean
            .notes
            .iter()
            .all(|n| n.code != "email_trimmed" && n.code != "unknown_fields_dropped"),
        "{:?}",
        clean.notes
    );
}

#[test]
fn code_signup_decodes_and_encodes_with_the_partition_key() {
    let d = decode_pending_signup(&signup()).unwrap();
    let s = &d.signup;
    assert_eq!(s.email.as_str(), "new.parent@example.com");
    assert!(s.code.as_ref().unwrap().matches("042917"));
    assert!(s.magic_link.is_none());
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    assert!(s.is_signin);
    assert_eq!(s.failed_attempts, 2);
    assert_eq!(s.expires_at - s.created_at, chrono::Duration::minutes(15));
    let back = encode_pending_signup(s);
    assert_eq!(back["email"], json!("new.parent@example.com"));
    assert_eq!(back["$type"], json!("PendingSignup"));
    // a code sign-up is written back without the magic-link version's fields
    for k in [
        "VerificationTokenHash",
        "Status",
        "VerifiedAt",
        "ConsumedAt",
    ] {
        assert!(back.get(k).is_none(), "{k}");
    }
    assert_eq!(decode_pending_signup(&back).unwrap().signup, *s);
}

const TOKEN_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The magic-link version, as the app writes it today: no `Code`, `IsUsed`, `IsSignin` or
/// `FailedAttempts`.
fn magic_link_signup() -> Value {
    json!({
        "id": "c0000000-0000-4000-8000-000000000002",
        "$type": "PendingSignup",
        "email": "magic@example.com",
        "DisplayName": "Magic",
        "VerificationTokenHash": TOKEN_HASH,
        "Status": 1,
        "VerifiedAt": "2025-12-20T10:05:00.0000000Z",
        "ConsumedAt": null,
        "CreatedAt": "2025-12-20T10:00:00.0000000Z",
        "ExpiresAt": "2025-12-20T10:15:00.0000000Z",
        "_ts": 1766225100
    })
}

#[test]
fn magic_link_signup_decodes_and_encodes_back_to_its_own_shape() {
    let d = decode_pending_signup(&magic_link_signup()).unwrap();
    let s = &d.signup;
    assert!(s.code.is_none());
    let link = s.magic_link.as_ref().expect("the magic-link part");
    assert_eq!(link.verification_token_hash.expose(), TOKEN_HASH);
    assert_eq!(link.status.get(), 1);
    assert_eq!(link.verified_at, Some(utc("2025-12-20T10:05:00Z")));
    assert_eq!(link.consumed_at, None);
    assert_eq!(
        (s.is_used, s.is_signin, s.failed_attempts),
        (false, false, 0)
    );
    // the code version's fields are not defaulted with notes: this version has none of them
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    // the hash is a secret: not in Debug
    assert!(!format!("{d:?}").contains(TOKEN_HASH));

    let back = encode_pending_signup(s);
    assert_eq!(back["VerificationTokenHash"], json!(TOKEN_HASH));
    assert_eq!(back["Status"], json!(1));
    assert_eq!(back["VerifiedAt"], json!("2025-12-20T10:05:00.0000000Z"));
    // written as null, so that a write over the stored document also clears it
    assert_eq!(back.get("ConsumedAt"), Some(&Value::Null));
    for k in ["Code", "IsUsed", "IsSignin", "FailedAttempts"] {
        assert!(
            back.get(k).is_none(),
            "{k} written for a magic-link-only sign-up"
        );
    }
    assert_eq!(decode_pending_signup(&back).unwrap().signup, *s);
    // the version's own fields, and nothing else, come back as the app wrote them
    let source = magic_link_signup();
    for (k, v) in back.as_object().unwrap() {
        assert_eq!(source.get(k), Some(v), "{k}");
    }

    // state the code version tracks, set on a magic-link-only sign-up, survives the trip
    let mut used = s.clone();
    used.is_used = true;
    used.failed_attempts = 1;
    let back = encode_pending_signup(&used);
    assert_eq!(
        (back["IsUsed"].clone(), back["FailedAttempts"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(decode_pending_signup(&back).unwrap().signup, used);
}

#[test]
fn a_signup_with_both_versions_keeps_both_and_says_so() {
    let mixed = with(
        with(magic_link_signup(), &["Code"], json!("123456")),
        &["IsUsed"],
        json!(true),
    );
    let d = decode_pending_signup(&mixed).unwrap();
    let s = &d.signup;
    assert!(s.code.as_ref().unwrap().matches("123456"));
    assert_eq!(
        s.magic_link
            .as_ref()
            .unwrap()
            .verification_token_hash
            .expose(),
        TOKEN_HASH
    );
    assert!(s.is_used);
    let note = d
        .notes
        .iter()
        .find(|n| n.code == "signup_mixed_versions")
        .expect("a signup_mixed_versions note");
    assert_eq!(note.subject, "VerificationTokenHash");
    // field names, never values (the hash is a secret)
    assert_eq!(
        note.detail["fields"],
        json!(["VerificationTokenHash", "Status", "VerifiedAt"])
    );
    assert!(!note.detail.to_string().contains(TOKEN_HASH));
    assert_eq!(note.original, None);
    // a code sign-up of this document still defaults the code version's missing fields
    assert!(
        d.notes
            .iter()
            .any(|n| n.code == "field_defaulted" && n.subject == "IsSignin")
    );
    let back = encode_pending_signup(s);
    assert_eq!(back["Code"], json!("123456"));
    assert_eq!(back["VerificationTokenHash"], json!(TOKEN_HASH));
    assert_eq!(decode_pending_signup(&back).unwrap().signup, *s);
}

#[test]
fn magic_link_problems_are_classified() {
    let cases = [
        (
            with(magic_link_signup(), &["Status"], json!(5)),
            "out_of_range",
            "Status",
        ),
        (
            with(magic_link_signup(), &["Status"], json!(-1)),
            "out_of_range",
            "Status",
        ),
        (
            with(magic_link_signup(), &["Status"], json!("Verified")),
            "wrong_type",
            "Status",
        ),
        (
            with(magic_link_signup(), &["VerificationTokenHash"], json!(42)),
            "wrong_type",
            "VerificationTokenHash",
        ),
        (
            with(magic_link_signup(), &["VerificationTokenHash"], json!("")),
            "empty",
            "VerificationTokenHash",
        ),
        (
            with(magic_link_signup(), &["VerifiedAt"], json!("yesterday")),
            "invalid_date",
            "VerifiedAt",
        ),
        // Status and times without the token: no link anybody could follow, and no code
        (
            without(magic_link_signup(), &["VerificationTokenHash"]),
            "missing_field",
            "VerificationTokenHash",
        ),
        // neither version
        (without(signup(), &["Code"]), "missing_field", "Code"),
    ];
    for (doc, code, field) in cases {
        let e = rejection(decode_pending_signup(&doc));
        assert_eq!((e.code, e.field.as_str()), (code, field), "{}", e.message);
        assert!(!e.message.contains(TOKEN_HASH));
    }
    let neither = rejection(decode_pending_signup(&without(signup(), &["Code"])));
    assert!(
        neither.message.contains("VerificationTokenHash") && neither.message.contains("Code"),
        "{}",
        neither.message
    );

    // a missing Status is the app's default 0, noted
    let d = decode_pending_signup(&without(magic_link_signup(), &["Status"])).unwrap();
    assert_eq!(d.signup.magic_link.unwrap().status.get(), 0);
    assert!(
        d.notes
            .iter()
            .any(|n| n.code == "field_defaulted" && n.subject == "Status")
    );

    // magic-link fields without a token beside a Code: the code version, their values noted
    let orphan = with(signup(), &["Status"], json!(2));
    let d = decode_pending_signup(&orphan).unwrap();
    assert!(d.signup.magic_link.is_none());
    let note = d
        .notes
        .iter()
        .find(|n| n.code == "magic_link_fields_without_token")
        .expect("note");
    assert_eq!(note.original, Some(json!({ "Status": 2 })));
}

#[test]
fn signup_problems_are_classified() {
    let cases = [
        (
            with(signup(), &["email"], json!("")),
            "invalid_email",
            "email",
        ),
        (
            with(signup(), &["email"], json!("x@example.123")),
            "invalid_email",
            "email",
        ),
        (without(signup(), &["email"]), "missing_field", "email"),
        (
            with(signup(), &["Code"], json!(42917)),
            "wrong_type",
            "Code",
        ),
        (
            with(signup(), &["Code"], json!("")),
            "invalid_signup_code",
            "Code",
        ),
        (
            with(signup(), &["FailedAttempts"], json!(11)),
            "out_of_range",
            "FailedAttempts",
        ),
        (
            with(signup(), &["FailedAttempts"], json!(-1)),
            "out_of_range",
            "FailedAttempts",
        ),
        (
            with(signup(), &["ExpiresAt"], Value::Null),
            "missing_field",
            "ExpiresAt",
        ),
    ];
    for (doc, code, field) in cases {
        let e = rejection(decode_pending_signup(&doc));
        assert_eq!((e.code, e.field.as_str()), (code, field), "{}", e.message);
    }
    let upper_name = with(
        without(signup(), &["email"]),
        &["Email"],
        json!("a@example.com"),
    );
    assert_eq!(
        decode_pending_signup(&upper_name)
            .unwrap()
            .signup
            .email
            .as_str(),
        "a@example.com"
    );
}
