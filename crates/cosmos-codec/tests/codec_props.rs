//! Properties of the codec: encode → decode is the identity on valid entities, and the decoder
//! never panics, whatever JSON it is given.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, NaiveDate, Utc};
use mystira_cosmos_codec::codec::{
    Container, decode, decode_account, decode_pending_signup, decode_profile, document_id_of_json,
    document_key_of_json, document_ref, encode_account, encode_pending_signup, encode_profile,
};
use mystira_domain::ids::derived_key;
use mystira_domain::{
    Account, AccountSettings, AgeGroup, CompletedScenario, Email, MagicLink, MappedId,
    PendingSignup, Role, Secret, SignupCode, SignupStatus, Subscription, SubscriptionType,
    UserBadge, UserProfile,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Timestamps at microsecond precision (what PostgreSQL keeps), 1970..2100.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000)
        .prop_map(|(s, us)| DateTime::from_timestamp(s, us * 1000).unwrap())
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// A key and the Cosmos id it came from, in every form a document id takes.
fn mapped_id(entity: &'static str) -> impl Strategy<Value = MappedId> {
    prop_oneof![
        3 => embedded_id(),
        1 => uuid().prop_map(move |u| MappedId {
            uuid: u,
            cosmos_id: Some(format!("{entity}|{}", u.hyphenated())),
        }),
    ]
}

/// The forms an embedded object's `Id` takes (EF 8's `Type|` prefix was only on documents).
fn embedded_id() -> impl Strategy<Value = MappedId> {
    prop_oneof![
        uuid().prop_map(MappedId::new_native),
        uuid().prop_map(|u| MappedId::from_source(&u.hyphenated().to_string().to_uppercase())),
        "[A-Za-z0-9_.|-][A-Za-z0-9 _.|-]{0,29}".prop_map(|s| MappedId::from_source(&s)),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
}

fn email() -> impl Strategy<Value = Email> {
    "[A-Za-z0-9._%+'-]{1,20}@[A-Za-z0-9-]{1,10}\\.([A-Za-z]{2,6}|xn--[a-z0-9]{2,6})"
        .prop_map(|s| Email::parse(&s).unwrap())
}

/// Items of a comma-joined list: no commas, no surrounding whitespace, not empty.
fn list_item() -> impl Strategy<Value = String> {
    "[A-Za-z0-9&][A-Za-z0-9& _-]{0,10}[A-Za-z0-9&]"
}

fn settings() -> impl Strategy<Value = AccountSettings> {
    let extra = proptest::collection::btree_map(
        "X[A-Za-z]{0,8}",
        prop_oneof![
            any::<i32>().prop_map(|i| json!(i)),
            any::<bool>().prop_map(|b| json!(b)),
            text(8).prop_map(|s| json!(s)),
            Just(Value::Null),
        ],
        0..3,
    );
    (
        proptest::option::of(text(10)),
        any::<[bool; 3]>(),
        text(5),
        text(8),
        extra,
    )
        .prop_map(|(id, b, lang, theme, extra)| AccountSettings {
            id,
            cache_credentials: b[0],
            require_auth_on_startup: b[1],
            preferred_language: lang,
            notifications_enabled: b[2],
            theme,
            extra: extra.into_iter().collect::<Map<_, _>>(),
        })
}

fn account() -> impl Strategy<Value = Account> {
    (
        mapped_id("Account"),
        proptest::option::of("auth0\\|[0-9a-f]{32}|[A-Za-z0-9 ]{0,8}[A-Za-z0-9]"),
        email(),
        text(20),
        prop::sample::select(Role::ALL.to_vec()),
        settings(),
        timestamp(),
        timestamp(),
    )
        .prop_map(
            |(
                id,
                auth0_user_id,
                email,
                display_name,
                role,
                settings,
                created_at,
                last_login_at,
            )| {
                Account {
                    id: id.uuid,
                    cosmos_id: id.cosmos_id,
                    auth0_user_id,
                    email,
                    display_name,
                    role,
                    settings,
                    created_at,
                    last_login_at,
                }
            },
        )
}

fn subscription_for(account: &Account) -> impl Strategy<Value = Subscription> + use<> {
    let account_id = account.id;
    let id = prop_oneof![
        Just(MappedId::new_native(derived_key(
            "subscription",
            account_id,
            ""
        ))),
        embedded_id(),
    ];
    (
        id,
        prop::sample::select(SubscriptionType::ALL.to_vec()),
        proptest::option::of(text(10)),
        text(10),
        any::<bool>(),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
        proptest::option::of(text(16)),
        proptest::option::of(timestamp()),
        proptest::collection::vec(list_item(), 0..4),
        (timestamp(), timestamp()),
    )
        .prop_map(
            move |(
                id,
                ty,
                product_id,
                tier,
                is_active,
                valid,
                start,
                end,
                token,
                verified,
                scen,
                (c, u),
            )| {
                Subscription {
                    id: id.uuid,
                    cosmos_id: id.cosmos_id,
                    account_id,
                    subscription_type: ty,
                    product_id,
                    tier,
                    is_active,
                    valid_until: valid,
                    start_date: start,
                    end_date: end,
                    purchase_token: token.map(Secret::new),
                    last_verified: verified,
                    purchased_scenarios: scen,
                    created_at: c,
                    updated_at: u,
                }
            },
        )
}

type AccountCase = (
    Account,
    Option<Subscription>,
    Vec<CompletedScenario>,
    Vec<String>,
);

fn account_case() -> impl Strategy<Value = AccountCase> {
    account().prop_flat_map(|a| {
        let completed = proptest::collection::btree_set("[a-z0-9-]{1,12}", 0..5);
        let profile_ids = proptest::collection::vec(list_item(), 0..4);
        (
            Just(a.clone()),
            proptest::option::of(subscription_for(&a)),
            completed,
            profile_ids,
        )
            .prop_map(|(a, s, completed, profile_ids)| {
                let completed = completed
                    .into_iter()
                    .map(|scenario_id| CompletedScenario {
                        id: derived_key("completed_scenario", a.id, &scenario_id),
                        account_id: a.id,
                        // Cosmos keeps no completion time: the codec's documented stand-in.
                        completed_at: a.last_login_at,
                        scenario_id,
                    })
                    .collect();
                (a, s, completed, profile_ids)
            })
    })
}

fn profile() -> impl Strategy<Value = UserProfile> {
    (
        mapped_id("UserProfile"),
        proptest::option::of(uuid()),
        text(20),
        prop::sample::select(AgeGroup::CURRENT.to_vec()),
        proptest::option::of((1900i32..2030, 1u32..=365)),
        any::<[bool; 3]>(),
        (
            proptest::option::of(text(12)),
            proptest::option::of(text(30)),
            proptest::option::of(text(12)),
            proptest::option::of(text(12)),
        ),
        proptest::collection::vec(list_item(), 0..4),
        timestamp(),
        timestamp(),
    )
        .prop_map(
            |(
                id,
                account_id,
                name,
                age,
                dob,
                flags,
                (pronouns, bio, avatar, selected),
                themes,
                c,
                u,
            )| {
                UserProfile {
                    id: id.uuid,
                    cosmos_id: id.cosmos_id,
                    account_id,
                    name,
                    age_group: AgeGroup::parse(age).unwrap(),
                    date_of_birth: dob
                        .and_then(|(y, d)| NaiveDate::from_yo_opt(y, d))
                        .map(Secret::new),
                    is_guest: flags[0],
                    is_npc: flags[1],
                    pronouns,
                    bio,
                    avatar_media_id: avatar,
                    selected_avatar_media_id: selected,
                    preferred_themes: themes,
                    has_completed_onboarding: flags[2],
                    created_at: c,
                    updated_at: u,
                }
            },
        )
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("finite", |f| f.is_finite())
}

fn badges_for(profile: &UserProfile) -> impl Strategy<Value = Vec<UserBadge>> + use<> {
    let profile_id = profile.id;
    let configs = proptest::collection::btree_set("[a-z0-9-]{1,12}", 0..5);
    configs.prop_flat_map(move |configs| {
        configs
            .into_iter()
            .map(|config| {
                let id = prop_oneof![
                    Just(MappedId::new_native(derived_key(
                        "user_badge",
                        profile_id,
                        &config
                    ))),
                    embedded_id(),
                ];
                (
                    id,
                    proptest::option::of(text(8)),
                    (text(10), text(10), text(10)),
                    finite_f32(),
                    finite_f32(),
                    timestamp(),
                    (proptest::option::of(text(8)), proptest::option::of(text(8))),
                    text(8),
                )
                    .prop_map(
                        move |(
                            id,
                            badge_id,
                            (name, message, axis),
                            tv,
                            th,
                            earned,
                            (gs, sc),
                            image,
                        )| {
                            UserBadge {
                                id: id.uuid,
                                cosmos_id: id.cosmos_id,
                                user_profile_id: profile_id,
                                badge_configuration_id: config.clone(),
                                badge_id,
                                badge_name: name,
                                badge_message: message,
                                axis,
                                trigger_value: tv,
                                threshold: th,
                                earned_at: earned,
                                game_session_id: gs,
                                scenario_id: sc,
                                image_id: image,
                            }
                        },
                    )
            })
            .collect::<Vec<_>>()
    })
}

fn magic_link() -> impl Strategy<Value = MagicLink> {
    (
        "[0-9a-f]{1,64}",
        0i64..=4,
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
    )
        .prop_map(|(hash, status, verified_at, consumed_at)| MagicLink {
            verification_token_hash: Secret::new(hash),
            status: SignupStatus::new("status", status).unwrap(),
            verified_at,
            consumed_at,
        })
}

/// Sign-ups of the code version, the magic-link version, or both.
fn signup() -> impl Strategy<Value = PendingSignup> {
    (
        mapped_id("PendingSignup"),
        email(),
        text(20),
        "[A-Za-z0-9]{1,10}",
        magic_link(),
        0u8..3,
        timestamp(),
        timestamp(),
        any::<[bool; 2]>(),
        0i32..=10,
    )
        .prop_map(
            |(id, email, display_name, code, link, versions, c, e, flags, failed)| PendingSignup {
                id: id.uuid,
                cosmos_id: id.cosmos_id,
                email,
                display_name,
                code: (versions != 1).then(|| SignupCode::parse(&code).unwrap()),
                magic_link: (versions != 0).then_some(link),
                created_at: c,
                expires_at: e,
                is_used: flags[0],
                is_signin: flags[1],
                failed_attempts: failed,
            },
        )
}

/// Arbitrary JSON trees.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        text(12).prop_map(Value::String),
        // Strings that look like what the decoder parses.
        prop::sample::select(vec![
            "9999-12-31T23:59:59.9999999",
            "0001-01-01T00:00:00",
            "2025-12-20T10:15:30.1234567+01:00",
            "Account|7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f",
            "a@b.co",
            "toddlers",
            "Account",
            "UserProfile",
            "PendingSignup",
            "2025-12-20T10:15:30+99:99",
            "2025-12-20T10:15:30.1234567890123",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop::sample::select(vec![
                    "id",
                    "Id",
                    "$type",
                    "Discriminator",
                    "Email",
                    "email",
                    "Role",
                    "Code",
                    "Subscription",
                    "Settings",
                    "Type",
                    "EndDate",
                    "EarnedBadges",
                    "AgeGroupName",
                    "CreatedAt",
                    "LastLoginAt",
                    "UpdatedAt",
                    "ExpiresAt",
                    "EarnedAt",
                    "BadgeConfigurationId",
                    "CompletedScenarioIds",
                    "UserProfileIds",
                    "FailedAttempts",
                    "TriggerValue",
                    "DateOfBirth",
                    "_ts",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..10,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An `id` to put into a document: the shapes the decoder reads ids in, and some it rejects.
fn any_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        uuid().prop_map(|u| Some(json!(u.to_string()))),
        uuid().prop_map(|u| Some(json!(format!("Account|{u}")))),
        uuid().prop_map(|u| Some(json!(format!(
            "UserProfile|{}",
            u.to_string().to_uppercase()
        )))),
        text(12).prop_map(|t| Some(json!(t))),
        Just(Some(json!("  "))),
        Just(Some(json!(7))),
        Just(Some(Value::Null)),
    ]
}

/// Every JSON pointer into a document.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        _ => {}
    }
}

/// Valid documents of each container, in mixed historical shapes, to mutate.
fn sample_documents() -> Vec<(Container, Value)> {
    let account = json!({
        "id": "Account|7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f",
        "Id": "7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f",
        "Discriminator": "Account",
        "Auth0UserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "parent@example.com",
        "DisplayName": "Parent",
        "Role": null,
        "UserProfileIds": "a,b",
        "CompletedScenarioIds": ["s-1", "s-2"],
        "Subscription": {
            "Type": 2, "ProductId": "p", "ValidUntil": "2026-01-20T10:15:30.1234567",
            "IsActive": true, "PurchaseToken": "t", "LastVerified": null,
            "PurchasedScenarios": "s-9, s-10", "Tier": "Premium",
            "StartDate": "2025-12-20T10:15:30+01:00", "EndDate": "9999-12-31T23:59:59.9999999"
        },
        "Settings": {"CacheCredentials": true, "Theme": "dark", "Extra": [1]},
        "CreatedAt": "2025-12-20T10:15:30.1234567",
        "LastLoginAt": "2025-12-22T08:00:00Z",
        "_ts": 1766390400, "_etag": "\"e\""
    });
    let profile = json!({
        "id": "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q",
        "$type": "UserProfile",
        "Name": "Ava", "AccountId": "7D1C3A52-5B7E-4D5A-9F0E-2B1F3C4D5E6F",
        "PreferredFantasyThemes": "Classic Fantasy,Magic & Wizards",
        "DateOfBirth": "2016-04-12T00:00:00", "IsGuest": false, "IsNpc": false,
        "Pronouns": null, "Bio": null, "AvatarMediaId": "a", "SelectedAvatarMediaId": null,
        "HasCompletedOnboarding": true, "AgeGroupName": "school",
        "EarnedBadges": [
            {"Id": "b1", "UserProfileId": "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q", "BadgeConfigurationId": "c1",
             "BadgeId": null, "BadgeName": "n", "BadgeMessage": "m", "Axis": "courage",
             "TriggerValue": 0.5, "Threshold": 3.0, "EarnedAt": "2025-12-21T10:00:00Z",
             "GameSessionId": null, "ScenarioId": "s", "ImageId": "i"},
            {"UserProfileId": "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q", "BadgeConfigurationId": "c1",
             "BadgeName": "n", "BadgeMessage": "m", "Axis": "courage",
             "TriggerValue": 1, "Threshold": 3, "EarnedAt": "2025-12-20T10:00:00Z", "ImageId": "i"}
        ],
        "CreatedAt": "2025-12-20T10:15:30.1234567Z", "UpdatedAt": "2025-12-21T10:15:30Z"
    });
    let signup = json!({
        "id": "c0000000-0000-4000-8000-000000000001",
        "email": "new@example.com", "DisplayName": "New", "Code": "042917",
        "CreatedAt": "2025-12-20T10:00:00Z", "ExpiresAt": "2025-12-20T10:15:00Z",
        "IsUsed": false, "IsSignin": true, "FailedAttempts": 2
    });
    vec![
        (Container::Accounts, account),
        (Container::UserProfiles, profile),
        (Container::PendingSignups, signup),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn account_round_trips((a, s, completed, profile_ids) in account_case()) {
        let doc = encode_account(&a, s.as_ref(), &completed, &profile_ids);
        let d = decode_account(&doc).unwrap();
        prop_assert_eq!(&d.account, &a);
        prop_assert_eq!(&d.subscription, &s);
        prop_assert_eq!(&d.completed_scenarios, &completed);
        prop_assert_eq!(&d.profile_ids_hint, &profile_ids);
        // the one note a clean account may carry: its dropped UserProfileIds list, whole
        prop_assert!(
            d.notes.iter().all(|n| n.code == "user_profile_ids_dropped"
                && n.original.as_ref() == doc.get("UserProfileIds")),
            "{:?}", d.notes
        );
    }

    #[test]
    fn profile_round_trips((p, badges) in profile().prop_flat_map(|p| (Just(p.clone()), badges_for(&p)))) {
        let doc = encode_profile(&p, &badges);
        let d = decode_profile(&doc).unwrap();
        prop_assert_eq!(&d.profile, &p);
        prop_assert_eq!(&d.badges, &badges);
        prop_assert!(d.duplicate_badges.is_empty());
        prop_assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    #[test]
    fn signup_round_trips(s in signup()) {
        let doc = encode_pending_signup(&s);
        let d = decode_pending_signup(&doc).unwrap();
        prop_assert_eq!(&d.signup, &s);
        // the one note a clean sign-up may carry: that it has both versions, when it does
        let both = s.code.is_some() && s.magic_link.is_some();
        let codes: Vec<_> = d.notes.iter().map(|n| n.code).collect();
        let expected: Vec<&str> = if both { vec!["signup_mixed_versions"] } else { vec![] };
        prop_assert_eq!(codes, expected);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_json(doc in any_json()) {
        for c in Container::ALL {
            if let Err(e) = decode(c, &doc) {
                prop_assert!(!e.code.is_empty());
                prop_assert!(!e.field.is_empty());
            }
        }
    }

    /// The key read from a document's text without building it is `document_ref`'s, or
    /// nothing: verify skips the lines of keys it does not want on this alone.
    #[test]
    fn the_key_read_from_text_is_document_refs_key(doc in any_json(), id in any_id()) {
        let mut doc = doc;
        if let (Value::Object(m), Some(id)) = (&mut doc, id) {
            m.insert("id".into(), id);
        }
        for c in Container::ALL {
            let text = serde_json::to_vec(&doc).unwrap();
            if let Some(key) = document_key_of_json(c, &text) {
                prop_assert_eq!(Some(key), document_ref(c, &doc).map(|r| r.key));
            }
        }
        let text = serde_json::to_vec(&doc).unwrap();
        if let Some(id) = document_id_of_json(&text) {
            prop_assert_eq!(Some(id.as_ref()), doc.get("id").and_then(Value::as_str));
        }
    }

    #[test]
    fn decoder_never_panics_on_mutated_documents(
        which in 0usize..3,
        pick in any::<prop::sample::Index>(),
        replacement in any_json(),
        delete in any::<bool>(),
    ) {
        let (container, mut doc) = sample_documents().swap_remove(which);
        let mut paths = Vec::new();
        pointers(&doc, String::new(), &mut paths);
        let path = pick.get(&paths).clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        match doc.pointer_mut(parent) {
            Some(Value::Object(m)) if delete => { m.remove(key); }
            Some(Value::Array(v)) if delete => {
                let i: usize = key.parse().unwrap();
                v.remove(i);
            }
            _ => { *doc.pointer_mut(&path).unwrap() = replacement; }
        }
        // Whatever happens, it is a value or a classified error, never a panic.
        let _ = decode(container, &doc);
    }
}

#[test]
fn the_key_read_from_text_covers_every_sample_document_and_refuses_unclear_text() {
    for (c, doc) in sample_documents() {
        let text = serde_json::to_vec(&doc).unwrap();
        let expected = document_ref(c, &doc).map(|r| r.key);
        assert!(expected.is_some());
        assert_eq!(document_key_of_json(c, &text), expected);
        assert_eq!(document_id_of_json(&text).as_deref(), doc["id"].as_str());
        // the same document with an extra copy of `id`: serde_json keeps the last one, the
        // probe cannot tell which, so it does not answer
        let mut twice = text.clone();
        twice.pop();
        twice.extend_from_slice(br#","id":"other"}"#);
        assert_eq!(document_key_of_json(c, &twice), None);
        assert_eq!(document_id_of_json(&twice), None);
    }
    let id = "7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f";
    for text in [
        format!(r#"["{id}"]"#),
        format!(r#"{{"id": "{id}", "Id": ""}}"#),
        format!(r#"{{"id": "{id}", "Id": 3}}"#),
        r#"{"id": null}"#.to_owned(),
        format!(r#"{{"id": "{id}""#),
    ] {
        assert_eq!(
            document_key_of_json(Container::Accounts, text.as_bytes()),
            None,
            "{text}"
        );
    }
}

#[test]
fn sample_documents_decode_unmutated() {
    for (c, doc) in sample_documents() {
        decode(c, &doc).unwrap();
    }
}
