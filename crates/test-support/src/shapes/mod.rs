//! Documents in every shape `../shared/spec/cosmos-documents.md` describes (EF 8 and EF 9 ids
//! and discriminators, `Auth0UserId`, 7-digit fractions, offsets, dates without one, legacy
//! age groups and role casings, type labels, duplicate badges and completions, missing
//! embedded `Id`s, unknown properties at every depth), the changes a write makes, and the two
//! sides of "a delivery changes exactly what PostgreSQL changed": the property paths at which two
//! documents differ, and the paths at which two states of an aggregate differ in meaning.
//!
//! The changes a write makes and the paths they touch are in [`changes`].
//!
//! Used by the codec's merge properties (`crates/cosmos-codec/tests/codec_merge.rs`) and the
//! end-to-end delivery test (`crates/dual-write/tests/delivery_fidelity.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use mystira_domain::aggregate::{AccountAggregate, ProfileAggregate};
use mystira_domain::{
    CompletedScenario, PendingSignup, Subscription, SubscriptionType, UserBadge, UserProfile,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

mod changes;
pub use changes::*;

/// Scenario ids and badge configurations are drawn from small pools so that repeats (and
/// completions / awards of something already held) happen often.
pub const SCENARIOS: [&str; 5] = ["dragons", "pirates", "space", "castle", "forest"];
pub const BADGE_CONFIGS: [&str; 3] = ["brave-1", "kind-2", "wise-3"];

// ---------------------------------------------------------------------------------------------
// values

/// An instant with .NET's 100 ns ticks, 2001..2030.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (978_307_200i64..1_893_456_000, 0u32..10_000_000)
        .prop_map(|(s, ticks)| Utc.timestamp_opt(s, ticks * 100).unwrap())
}

/// A .NET date-time text for `t` in one of the forms real documents carry.
fn date_text(t: DateTime<Utc>, form: u8) -> String {
    let ticks = t.timestamp_subsec_nanos() / 100;
    match form % 6 {
        0 => format!("{}.{ticks:07}Z", t.format("%Y-%m-%dT%H:%M:%S")),
        // no offset: UTC, what the app means
        1 => format!("{}.{ticks:07}", t.format("%Y-%m-%dT%H:%M:%S")),
        2 => {
            let local = t + Duration::hours(2);
            format!("{}.{ticks:07}+02:00", local.format("%Y-%m-%dT%H:%M:%S"))
        }
        3 => {
            let local = t - Duration::minutes(330);
            format!("{}.{ticks:07}-05:30", local.format("%Y-%m-%dT%H:%M:%S"))
        }
        // fewer digits: the instant is what those digits say
        4 => format!("{}Z", t.format("%Y-%m-%dT%H:%M:%S%.3f")),
        _ => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }
}

/// A date property's text: an instant in any of the forms.
fn date() -> impl Strategy<Value = Value> {
    (instant(), any::<u8>()).prop_map(|(t, form)| json!(date_text(t, form)))
}

fn opt_date() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(Value::Null)), 3 => date().prop_map(Some)]
}

/// An optional string property: missing, `null`, or a value.
fn opt_text(pattern: &'static str) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => pattern.prop_map(|s| Some(json!(s))),
    ]
}

/// A small JSON value an app version this code does not know may have written.
fn unknown_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        (-1000i64..1000).prop_map(|i| json!(i)),
        any::<bool>().prop_map(|b| json!(b)),
        "[a-zA-Z0-9 é€-]{0,8}".prop_map(|s| json!(s)),
        Just(Value::Null),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Unknown properties (names no shape uses).
fn unknown_props() -> impl Strategy<Value = BTreeMap<String, Value>> {
    proptest::collection::btree_map("(Extra|App)[A-Z][a-z]{0,5}", unknown_value(), 0..3)
}

fn set(obj: &mut Map<String, Value>, name: &str, v: Option<Value>) {
    if let Some(v) = v {
        obj.insert(name.to_owned(), v);
    }
}

/// The ids a document of `entity` is stored under: `(id, Id)`.
fn doc_ids(entity: &'static str) -> impl Strategy<Value = (String, Option<String>, Uuid)> {
    (any::<u128>(), 0u8..4, "[0-9A-F]{26}").prop_map(move |(n, form, hex)| {
        let key = Uuid::from_u128(n);
        let canonical = key.hyphenated().to_string();
        match form {
            0 => (canonical, None, key),
            1 => (canonical.to_uppercase(), None, key),
            // EF 8: `Type|<guid>` with the real id in `Id`
            2 => (format!("{entity}|{canonical}"), Some(canonical), key),
            // a non-UUID id (its key is derived from the text)
            _ => {
                let key = mystira_domain::MappedId::from_source(&hex).uuid;
                (hex, None, key)
            }
        }
    })
}

fn discriminator(obj: &mut Map<String, Value>, entity: &str, form: u8) {
    match form % 3 {
        0 => set(obj, "$type", Some(json!(entity))),
        1 => set(obj, "Discriminator", Some(json!(entity))),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// documents

/// An account document with its key.
pub fn account_doc() -> impl Strategy<Value = (Value, Uuid)> {
    let head = (
        doc_ids("Account"),
        0u8..3,
        (0u8..3, "[0-9a-f]{32}"),
        ("[a-zA-Z]{1,8}@[a-z]{2,6}\\.(org|COM|Net)", 0u8..6),
        "[A-Za-z ]{0,10}",
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            prop::sample::select(vec!["User", "Admin", "admin", "Guest", "SuperAdmin"])
                .prop_map(|r| Some(json!(r))),
        ],
        prop_oneof![
            Just(json!("")),
            proptest::collection::vec(any::<u128>(), 1..3).prop_map(|ids| json!(
                ids.iter()
                    .map(|i| Uuid::from_u128(*i).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        ],
    );
    let body = (
        prop_oneof![
            1 => Just(None),
            3 => proptest::collection::vec(prop::sample::select(SCENARIOS.to_vec()), 0..5)
                .prop_map(|v| Some(json!(v))),
        ],
        subscription_doc(),
        settings_doc(),
        (date(), date(), any::<bool>()),
        unknown_props(),
    );
    (head, body).prop_map(
        |(
            (ids, disc, (user_form, hex), (email, email_form), name, role, profile_ids),
            (completed, subscription, settings, (created, login, login_unset), extra),
        )| {
            let (id, upper_id, key) = ids;
            let mut o = Map::new();
            o.insert("id".into(), json!(id));
            set(&mut o, "Id", upper_id.map(|i| json!(i)));
            discriminator(&mut o, "Account", disc);
            match user_form {
                0 => set(
                    &mut o,
                    "ExternalUserId",
                    Some(json!(format!("auth0|{hex}"))),
                ),
                1 => set(&mut o, "Auth0UserId", Some(json!(format!("auth0|{hex}")))),
                _ => set(&mut o, "ExternalUserId", Some(json!(""))),
            }
            // stored as typed; now and then with whitespace around it
            let email = if email_form == 0 {
                format!(" {email} ")
            } else {
                email
            };
            o.insert("Email".into(), json!(email));
            o.insert("DisplayName".into(), json!(name));
            set(&mut o, "Role", role);
            o.insert("UserProfileIds".into(), profile_ids);
            set(&mut o, "CompletedScenarioIds", completed);
            set(&mut o, "Subscription", subscription);
            set(&mut o, "Settings", settings);
            o.insert("CreatedAt".into(), created);
            // DateTime.MinValue: a login never recorded
            let login = if login_unset {
                json!("0001-01-01T00:00:00")
            } else {
                login
            };
            o.insert("LastLoginAt".into(), login);
            o.extend(extra);
            (Value::Object(o), key)
        },
    )
}

fn subscription_doc() -> impl Strategy<Value = Option<Value>> {
    let fields = (
        prop_oneof![
            Just(None),
            any::<u128>().prop_map(|n| Some(Uuid::from_u128(n).to_string())),
            any::<u128>().prop_map(|n| Some(Uuid::from_u128(n).to_string().to_uppercase())),
        ],
        prop_oneof![
            (0i64..5).prop_map(|t| json!(t)),
            Just(json!("Monthly")),
            Just(json!("2")),
        ],
        opt_text("[a-z.]{3,12}"),
        opt_date(),
        any::<bool>(),
        opt_text("[A-Za-z0-9]{8,16}"),
        opt_date(),
        prop::sample::select(vec!["", "dragons,pirates", "space, castle"]),
        prop_oneof![
            Just(None),
            Just(Some(json!("Free"))),
            Just(Some(json!("Plus")))
        ],
        opt_date(),
        prop_oneof![
            Just(json!("9999-12-31T23:59:59.9999999")),
            Just(json!("9999-12-31T23:59:59.9999999Z")),
            date(),
        ],
        unknown_props(),
    );
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => fields.prop_map(
            |(id, ty, product, valid, active, token, verified, purchased, tier, start, end, extra)| {
                let mut o = Map::new();
                set(&mut o, "Id", id.map(|i| json!(i)));
                o.insert("Type".into(), ty);
                set(&mut o, "ProductId", product);
                set(&mut o, "ValidUntil", valid);
                o.insert("IsActive".into(), json!(active));
                set(&mut o, "PurchaseToken", token);
                set(&mut o, "LastVerified", verified);
                o.insert("PurchasedScenarios".into(), json!(purchased));
                set(&mut o, "Tier", tier);
                set(&mut o, "StartDate", start);
                o.insert("EndDate".into(), end);
                o.extend(extra);
                Some(Value::Object(o))
            }
        ),
    ]
}

fn settings_doc() -> impl Strategy<Value = Option<Value>> {
    let fields = (
        prop_oneof![
            Just(None),
            any::<u128>().prop_map(|n| Some(json!(Uuid::from_u128(n).to_string())))
        ],
        proptest::collection::vec(prop_oneof![Just(None), any::<bool>().prop_map(Some)], 3),
        prop_oneof![Just(None), Just(Some("en")), Just(Some("fr"))],
        prop_oneof![Just(None), Just(Some("")), Just(Some("dark"))],
        unknown_props(),
    );
    prop_oneof![
        1 => Just(None),
        4 => fields.prop_map(|(id, flags, language, theme, extra)| {
            let mut o = Map::new();
            set(&mut o, "Id", id);
            for (name, flag) in ["CacheCredentials", "RequireAuthOnStartup", "NotificationsEnabled"]
                .into_iter()
                .zip(flags)
            {
                set(&mut o, name, flag.map(|b| json!(b)));
            }
            set(&mut o, "PreferredLanguage", language.map(|l| json!(l)));
            set(&mut o, "Theme", theme.map(|t| json!(t)));
            o.extend(extra);
            Some(Value::Object(o))
        }),
    ]
}

/// How a profile names its account.
#[derive(Debug, Clone)]
pub enum AccountRef {
    /// The account of the case, spelled in form `n` (its `id`, upper-case, EF 8, canonical).
    Case(u8),
    /// An account that does not exist.
    Dangling(Uuid),
    Null,
    Missing,
}

/// A profile document with its key; `account` is the case's account document, if any.
pub fn profile_doc() -> impl Strategy<Value = (ProfileDraft, Uuid)> {
    let head = (
        doc_ids("UserProfile"),
        0u8..3,
        prop_oneof![
            4 => (0u8..4).prop_map(AccountRef::Case),
            1 => any::<u128>().prop_map(|n| AccountRef::Dangling(Uuid::from_u128(n))),
            1 => Just(AccountRef::Null),
            1 => Just(AccountRef::Missing),
        ],
        "[A-Za-z ]{0,10}",
        prop::sample::select(vec![
            "1-2",
            "3-5",
            "6-9",
            "10-12",
            "13-18",
            "19-150",
            "toddlers",
            "School",
            "preteens",
            "early_childhood",
            "adult",
        ]),
        prop::sample::select(vec![
            "",
            "Classic Fantasy,Magic & Wizards",
            "Space, Pirates",
        ]),
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            prop::sample::select(vec![
                "2015-06-01T00:00:00",
                "2015-06-01T00:00:00.0000000Z",
                "2016-02-29T00:00:00+02:00",
            ])
            .prop_map(|d| Some(json!(d))),
        ],
    );
    let body = (
        proptest::collection::vec(prop_oneof![Just(None), any::<bool>().prop_map(Some)], 3),
        (
            opt_text("[a-z/]{2,9}"),
            opt_text("[A-Za-z ]{0,12}"),
            opt_text("[a-z0-9]{4,8}"),
            opt_text("[a-z0-9]{4,8}"),
        ),
        (date(), date()),
        proptest::collection::vec(badge_doc(), 0..4),
        unknown_props(),
    );
    (head, body).prop_map(
        |(
            (ids, disc, account, name, age, themes, birth),
            (flags, (pronouns, bio, avatar, selected), (created, updated), badges, extra),
        )| {
            let (id, upper_id, key) = ids;
            let mut o = Map::new();
            o.insert("id".into(), json!(id));
            set(&mut o, "Id", upper_id.map(|i| json!(i)));
            discriminator(&mut o, "UserProfile", disc);
            o.insert("Name".into(), json!(name));
            o.insert("AgeGroupName".into(), json!(age));
            o.insert("PreferredFantasyThemes".into(), json!(themes));
            set(&mut o, "DateOfBirth", birth);
            for (name, flag) in ["IsGuest", "IsNpc", "HasCompletedOnboarding"]
                .into_iter()
                .zip(flags)
            {
                set(&mut o, name, flag.map(|b| json!(b)));
            }
            set(&mut o, "Pronouns", pronouns);
            set(&mut o, "Bio", bio);
            set(&mut o, "AvatarMediaId", avatar);
            set(&mut o, "SelectedAvatarMediaId", selected);
            o.insert("CreatedAt".into(), created);
            o.insert("UpdatedAt".into(), updated);
            let badges = badges
                .into_iter()
                .map(|(mut b, owner)| {
                    // the badge's owner: this profile as its id is spelled, or another one
                    match owner {
                        0 => {
                            b.insert("UserProfileId".into(), json!(id));
                        }
                        1 => {}
                        _ => {
                            b.insert(
                                "UserProfileId".into(),
                                json!(Uuid::from_u128(0x5EED).to_string()),
                            );
                        }
                    }
                    Value::Object(b)
                })
                .collect();
            o.insert("EarnedBadges".into(), Value::Array(badges));
            o.extend(extra);
            (
                ProfileDraft {
                    doc: Value::Object(o),
                    account,
                },
                key,
            )
        },
    )
}

/// A profile document whose `AccountId` is set once the case's account is known.
#[derive(Debug, Clone)]
pub struct ProfileDraft {
    pub doc: Value,
    pub account: AccountRef,
}

impl ProfileDraft {
    /// The document, naming `account` (the case's account document) as its `AccountRef` says.
    pub fn with_account(&self, account: &Value) -> Value {
        let mut doc = self.doc.clone();
        let obj = doc.as_object_mut().unwrap();
        let account_id = account["id"].as_str().unwrap();
        let reference = match &self.account {
            AccountRef::Case(form) => Some(json!(account_ref(account, account_id, *form))),
            AccountRef::Dangling(u) => Some(json!(u.to_string())),
            AccountRef::Null => Some(Value::Null),
            AccountRef::Missing => None,
        };
        set(obj, "AccountId", reference);
        doc
    }
}

/// A spelling of a reference to `account` (whose `id` is `id`) that resolves to its key.
fn account_ref(account: &Value, id: &str, form: u8) -> String {
    let key = mystira_cosmos_codec::codec::document_ref(
        mystira_cosmos_codec::codec::Container::Accounts,
        account,
    )
    .unwrap()
    .key;
    // a non-UUID id resolves only as itself
    if Uuid::parse_str(id.trim_start_matches("Account|")).is_err() {
        return id.to_owned();
    }
    match form % 4 {
        0 => id.to_owned(),
        1 => key.hyphenated().to_string().to_uppercase(),
        2 => format!("Account|{}", key.hyphenated()),
        _ => key.hyphenated().to_string(),
    }
}

/// A badge (without `UserProfileId`) and how its owner is named (0: this profile, 1: not at
/// all, 2: another profile).
fn badge_doc() -> impl Strategy<Value = (Map<String, Value>, u8)> {
    (
        prop_oneof![
            Just(None),
            any::<u128>().prop_map(|n| Some(Uuid::from_u128(n)))
        ],
        prop::sample::select(BADGE_CONFIGS.to_vec()),
        opt_text("[a-z0-9]{3,6}"),
        (
            "[A-Za-z ]{0,8}",
            "[A-Za-z ]{0,8}",
            "[a-z]{0,6}",
            "[a-z0-9]{0,6}",
        ),
        (
            prop::sample::select(vec![
                json!(0.5),
                json!(0.75),
                json!(1),
                json!(2.5),
                json!(0),
            ]),
            prop::sample::select(vec![json!(0.5), json!(1), json!(0.1)]),
        ),
        date(),
        (opt_text("[a-z0-9]{4,8}"), opt_text("[a-z]{4,8}")),
        unknown_props(),
        0u8..3,
    )
        .prop_map(
            |(
                id,
                config,
                badge_id,
                (name, message, axis, image),
                (trigger, threshold),
                earned,
                (session, scenario),
                extra,
                owner,
            )| {
                let mut o = Map::new();
                set(&mut o, "Id", id.map(|i| json!(i.to_string())));
                o.insert("BadgeConfigurationId".into(), json!(config));
                set(&mut o, "BadgeId", badge_id);
                o.insert("BadgeName".into(), json!(name));
                o.insert("BadgeMessage".into(), json!(message));
                o.insert("Axis".into(), json!(axis));
                o.insert("TriggerValue".into(), trigger);
                o.insert("Threshold".into(), threshold);
                o.insert("EarnedAt".into(), earned);
                set(&mut o, "GameSessionId", session);
                set(&mut o, "ScenarioId", scenario);
                o.insert("ImageId".into(), json!(image));
                o.extend(extra);
                (o, owner)
            },
        )
}

/// A sign-up document (its `email`, the partition key, lower-case and trimmed as the app
/// stores it) with its key.
pub fn signup_doc() -> impl Strategy<Value = (Value, Uuid)> {
    (
        doc_ids("PendingSignup"),
        0u8..3,
        "[a-z]{1,8}@[a-z]{2,6}\\.org",
        "[A-Za-z ]{0,10}",
        (date(), date()),
        0u8..3,
        (
            prop_oneof![Just(None), any::<bool>().prop_map(Some)],
            prop_oneof![Just(None), any::<bool>().prop_map(Some)],
            prop_oneof![Just(None), (0i64..4).prop_map(Some)],
        ),
        ("[0-9a-f]{16}", 0i64..5, opt_date(), opt_date()),
        unknown_props(),
    )
        .prop_map(
            |(
                ids,
                disc,
                email,
                name,
                (created, expires),
                version,
                (used, signin, attempts),
                (hash, status, verified, consumed),
                extra,
            )| {
                let (id, upper_id, key) = ids;
                let mut o = Map::new();
                o.insert("id".into(), json!(id));
                set(&mut o, "Id", upper_id.map(|i| json!(i)));
                discriminator(&mut o, "PendingSignup", disc);
                o.insert("email".into(), json!(email));
                o.insert("DisplayName".into(), json!(name));
                o.insert("CreatedAt".into(), created);
                o.insert("ExpiresAt".into(), expires);
                // 0: the code version, 1: the magic-link version, 2: both
                if version != 1 {
                    o.insert("Code".into(), json!("123456"));
                }
                if version != 0 {
                    o.insert("VerificationTokenHash".into(), json!(hash));
                    o.insert("Status".into(), json!(status));
                    o.insert("VerifiedAt".into(), verified.unwrap_or(Value::Null));
                    o.insert("ConsumedAt".into(), consumed.unwrap_or(Value::Null));
                }
                set(&mut o, "IsUsed", used.map(|b| json!(b)));
                set(&mut o, "IsSignin", signin.map(|b| json!(b)));
                set(&mut o, "FailedAttempts", attempts.map(|n| json!(n)));
                o.extend(extra);
                (Value::Object(o), key)
            },
        )
}
