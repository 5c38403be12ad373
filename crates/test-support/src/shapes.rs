//! Documents in every shape `../shared/spec/cosmos-documents.md` describes (EF 8 and EF 9 ids
//! and discriminators, `Auth0UserId`, 7-digit fractions, offsets, dates without one, legacy
//! age groups and role casings, type labels, duplicate badges and completions, missing
//! embedded `Id`s, unknown properties at every depth), the changes a write makes, and the two
//! sides of "a delivery changes exactly what PostgreSQL changed": the property paths at which two
//! documents differ, and the paths at which two states of an aggregate differ in meaning.
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

// ---------------------------------------------------------------------------------------------
// changes

/// A write the service makes.
#[derive(Debug, Clone)]
pub enum Change {
    /// `AccountRepository::update` with another display name.
    RenameAccount(String),
    /// `AccountRepository::record_login`.
    Login(DateTime<Utc>),
    /// `AccountRepository::update` with another settings theme.
    Theme(String),
    /// `SubscriptionRepository::upsert_for_account`: the stored subscription with another tier
    /// and validity, or a new one when there is none.
    Subscribe {
        tier: String,
        valid_until: DateTime<Utc>,
    },
    /// `CompletedScenarioRepository::mark_completed`.
    Complete(String, DateTime<Utc>),
    /// `ProfileRepository::update` with another name and bio.
    RenameProfile(String, Option<String>),
    /// `ProfileRepository::mark_onboarded`.
    Onboard,
    /// `BadgeRepository::award` of a configuration (held already: nothing changes).
    Award(String, DateTime<Utc>),
    /// `PendingSignupRepository::mark_used`.
    MarkUsed,
    /// `PendingSignupRepository::mark_verified` (a magic-link sign-up; a no-op otherwise).
    MarkVerified(i16, DateTime<Utc>),
    /// An update with what is already stored.
    Same,
}

/// A microsecond instant (a time the service writes), 2026..2027.
fn service_time() -> impl Strategy<Value = DateTime<Utc>> {
    (1_767_225_600i64..1_798_761_600, 0u32..1_000_000)
        .prop_map(|(s, us)| Utc.timestamp_opt(s, us * 1000).unwrap())
}

pub fn account_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        "[A-Za-z]{3,10}".prop_map(Change::RenameAccount),
        service_time().prop_map(Change::Login),
        prop::sample::select(vec!["light", "dark", "sepia"])
            .prop_map(|t| Change::Theme(t.to_owned())),
        (prop::sample::select(vec!["Plus", "Family"]), service_time()).prop_map(
            |(tier, valid_until)| Change::Subscribe {
                tier: tier.to_owned(),
                valid_until
            }
        ),
        (prop::sample::select(SCENARIOS.to_vec()), service_time())
            .prop_map(|(s, at)| Change::Complete(s.to_owned(), at)),
        Just(Change::Same),
    ]
}

pub fn profile_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        ("[A-Za-z]{3,10}", proptest::option::of("[A-Za-z ]{1,10}"))
            .prop_map(|(n, b)| Change::RenameProfile(n, b)),
        Just(Change::Onboard),
        (prop::sample::select(BADGE_CONFIGS.to_vec()), service_time())
            .prop_map(|(c, at)| Change::Award(c.to_owned(), at)),
        Just(Change::Same),
    ]
}

pub fn signup_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::MarkUsed),
        (1i16..5, service_time()).prop_map(|(s, at)| Change::MarkVerified(s, at)),
        Just(Change::Same),
    ]
}

// ---------------------------------------------------------------------------------------------
// comparing

/// The instant PostgreSQL keeps (whole microseconds since 2000, truncated toward zero, as sqlx
/// sends them).
pub fn at_pg(t: DateTime<Utc>) -> DateTime<Utc> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    match (t - epoch).num_microseconds() {
        Some(us) => epoch + Duration::microseconds(us),
        None => t,
    }
}

fn opt_at_pg(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(at_pg)
}

/// The document without Cosmos's system properties.
pub fn user_part(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.retain(|k, _| {
            !["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"].contains(&k.as_str())
        });
    }
    doc
}

/// The property paths at which `after` differs from `before` (system properties aside): a
/// changed, added or removed property; `Name[i]` for an item changed in place; `Name[+]` once
/// per item appended to an array whose stored items are all still there, in place.
pub fn changed_paths(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(&user_part(before), &user_part(after), "", &mut out);
    out.sort();
    out
}

fn diff_into(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for k in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
                match (b.get(k), a.get(k)) {
                    (Some(x), Some(y)) => diff_into(x, y, &join(k), out),
                    _ => out.push(join(k)),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() >= b.len() => {
            if a.len() > b.len() && a[..b.len()] != b[..] {
                out.push(path.to_owned());
                return;
            }
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                diff_into(x, y, &format!("{path}[{i}]"), out);
            }
            for _ in b.len()..a.len() {
                out.push(format!("{path}[+]"));
            }
        }
        (x, y) => {
            if x != y {
                out.push(path.to_owned());
            }
        }
    }
}

fn push_if(out: &mut Vec<String>, differ: bool, path: impl Into<String>) {
    if differ {
        out.push(path.into());
    }
}

/// Where a property is in `obj`: present (not null), `null`, or missing.
fn has(obj: &Value, name: &str) -> bool {
    obj.get(name).is_some_and(|v| !v.is_null())
}

/// The paths at which a delivery of `after` onto `stored` (whose content is `before`) must
/// change the document: one per mapped property whose meaning differs between the two states
/// (at PostgreSQL's precision), `[+]` per item appended, nothing else.
pub fn expected_account_paths(
    stored: &Value,
    before: &AccountAggregate,
    after: &AccountAggregate,
) -> Vec<String> {
    let (b, a) = (&before.account, &after.account);
    let mut out = Vec::new();
    if b.auth0_user_id != a.auth0_user_id {
        out.push("ExternalUserId".into());
        push_if(&mut out, stored.get("Auth0UserId").is_some(), "Auth0UserId");
    }
    push_if(&mut out, b.email != a.email, "Email");
    push_if(&mut out, b.display_name != a.display_name, "DisplayName");
    push_if(&mut out, b.role != a.role, "Role");
    push_if(
        &mut out,
        at_pg(b.created_at) != at_pg(a.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(b.last_login_at) != at_pg(a.last_login_at),
        "LastLoginAt",
    );
    let (bs, as_) = (&b.settings, &a.settings);
    if bs != as_ {
        if !has(stored, "Settings") {
            out.push("Settings".into());
        } else {
            if as_.id.is_some() {
                push_if(&mut out, bs.id != as_.id, "Settings.Id");
            }
            push_if(
                &mut out,
                bs.cache_credentials != as_.cache_credentials,
                "Settings.CacheCredentials",
            );
            push_if(
                &mut out,
                bs.require_auth_on_startup != as_.require_auth_on_startup,
                "Settings.RequireAuthOnStartup",
            );
            push_if(
                &mut out,
                bs.preferred_language != as_.preferred_language,
                "Settings.PreferredLanguage",
            );
            push_if(
                &mut out,
                bs.notifications_enabled != as_.notifications_enabled,
                "Settings.NotificationsEnabled",
            );
            push_if(&mut out, bs.theme != as_.theme, "Settings.Theme");
            for k in bs
                .extra
                .keys()
                .chain(as_.extra.keys().filter(|k| !bs.extra.contains_key(*k)))
            {
                push_if(
                    &mut out,
                    bs.extra.get(k) != as_.extra.get(k),
                    format!("Settings.{k}"),
                );
            }
        }
    }
    match (&before.subscription, &after.subscription) {
        (None, None) => {}
        (Some(x), Some(y)) if x.id == y.id => {
            subscription_paths(&stored["Subscription"], x, y, &mut out)
        }
        _ => out.push("Subscription".into()),
    }
    let held: Vec<&str> = before
        .completed_scenarios
        .iter()
        .map(|c| c.scenario_id.as_str())
        .collect();
    let added = after
        .completed_scenarios
        .iter()
        .filter(|c| !held.contains(&c.scenario_id.as_str()))
        .count();
    if added > 0 {
        if stored
            .get("CompletedScenarioIds")
            .is_some_and(Value::is_array)
        {
            out.extend(std::iter::repeat_n(
                "CompletedScenarioIds[+]".to_owned(),
                added,
            ));
        } else {
            out.push("CompletedScenarioIds".into());
        }
    }
    out.sort();
    out
}

fn subscription_paths(stored: &Value, b: &Subscription, a: &Subscription, out: &mut Vec<String>) {
    let p = |n: &str| format!("Subscription.{n}");
    push_if(out, b.subscription_type != a.subscription_type, p("Type"));
    push_if(out, b.product_id != a.product_id, p("ProductId"));
    push_if(out, b.tier != a.tier, p("Tier"));
    push_if(out, b.is_active != a.is_active, p("IsActive"));
    push_if(
        out,
        opt_at_pg(b.valid_until) != opt_at_pg(a.valid_until),
        p("ValidUntil"),
    );
    push_if(
        out,
        opt_at_pg(b.start_date) != opt_at_pg(a.start_date),
        p("StartDate"),
    );
    push_if(
        out,
        opt_at_pg(b.end_date) != opt_at_pg(a.end_date),
        p("EndDate"),
    );
    push_if(
        out,
        b.purchase_token.as_ref().map(|t| t.expose().clone())
            != a.purchase_token.as_ref().map(|t| t.expose().clone()),
        p("PurchaseToken"),
    );
    push_if(
        out,
        opt_at_pg(b.last_verified) != opt_at_pg(a.last_verified),
        p("LastVerified"),
    );
    push_if(
        out,
        b.purchased_scenarios != a.purchased_scenarios,
        p("PurchasedScenarios"),
    );
    // the app's subscription has no timestamps: only ones already stored are kept up to date
    push_if(
        out,
        has(stored, "CreatedAt") && at_pg(b.created_at) != at_pg(a.created_at),
        p("CreatedAt"),
    );
    push_if(
        out,
        has(stored, "UpdatedAt") && at_pg(b.updated_at) != at_pg(a.updated_at),
        p("UpdatedAt"),
    );
}

/// [`expected_account_paths`] for a profile.
pub fn expected_profile_paths(
    stored: &Value,
    before: &ProfileAggregate,
    after: &ProfileAggregate,
) -> Vec<String> {
    let (b, a) = (&before.profile, &after.profile);
    let mut out = Vec::new();
    push_if(
        &mut out,
        a.account_id.is_some() && b.account_id != a.account_id,
        "AccountId",
    );
    push_if(&mut out, b.name != a.name, "Name");
    push_if(&mut out, b.age_group != a.age_group, "AgeGroupName");
    push_if(
        &mut out,
        b.date_of_birth.as_ref().map(|d| *d.expose())
            != a.date_of_birth.as_ref().map(|d| *d.expose()),
        "DateOfBirth",
    );
    push_if(&mut out, b.is_guest != a.is_guest, "IsGuest");
    push_if(&mut out, b.is_npc != a.is_npc, "IsNpc");
    push_if(&mut out, b.pronouns != a.pronouns, "Pronouns");
    push_if(&mut out, b.bio != a.bio, "Bio");
    push_if(
        &mut out,
        b.avatar_media_id != a.avatar_media_id,
        "AvatarMediaId",
    );
    push_if(
        &mut out,
        b.selected_avatar_media_id != a.selected_avatar_media_id,
        "SelectedAvatarMediaId",
    );
    push_if(
        &mut out,
        b.preferred_themes != a.preferred_themes,
        "PreferredFantasyThemes",
    );
    push_if(
        &mut out,
        b.has_completed_onboarding != a.has_completed_onboarding,
        "HasCompletedOnboarding",
    );
    push_if(
        &mut out,
        at_pg(b.created_at) != at_pg(a.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(b.updated_at) != at_pg(a.updated_at),
        "UpdatedAt",
    );
    let added = after
        .badges
        .iter()
        .filter(|x| !before.badges.iter().any(|y| y.id == x.id))
        .count();
    if added > 0 {
        if stored.get("EarnedBadges").is_some_and(Value::is_array) {
            out.extend(std::iter::repeat_n("EarnedBadges[+]".to_owned(), added));
        } else {
            out.push("EarnedBadges".into());
        }
    }
    out.sort();
    out
}

/// [`expected_account_paths`] for a sign-up.
pub fn expected_signup_paths(before: &PendingSignup, after: &PendingSignup) -> Vec<String> {
    let mut out = Vec::new();
    push_if(
        &mut out,
        before.display_name != after.display_name,
        "DisplayName",
    );
    push_if(&mut out, before.code != after.code, "Code");
    push_if(
        &mut out,
        at_pg(before.created_at) != at_pg(after.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(before.expires_at) != at_pg(after.expires_at),
        "ExpiresAt",
    );
    push_if(&mut out, before.is_used != after.is_used, "IsUsed");
    push_if(&mut out, before.is_signin != after.is_signin, "IsSignin");
    push_if(
        &mut out,
        before.failed_attempts != after.failed_attempts,
        "FailedAttempts",
    );
    if let (Some(b), Some(a)) = (&before.magic_link, &after.magic_link) {
        push_if(&mut out, b.status != a.status, "Status");
        push_if(
            &mut out,
            opt_at_pg(b.verified_at) != opt_at_pg(a.verified_at),
            "VerifiedAt",
        );
        push_if(
            &mut out,
            opt_at_pg(b.consumed_at) != opt_at_pg(a.consumed_at),
            "ConsumedAt",
        );
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// states at PostgreSQL's precision, for comparing what a document decodes to with a state

/// The account aggregate as PostgreSQL would hold it, with what the app's shape cannot say
/// left out: completion times, and the subscription's timestamps (`keep_sub_times`: unless the
/// document has them).
pub fn account_meaning(a: &AccountAggregate, keep_sub_times: bool) -> AccountAggregate {
    let mut a = a.clone();
    a.account.created_at = at_pg(a.account.created_at);
    a.account.last_login_at = at_pg(a.account.last_login_at);
    if let Some(s) = a.subscription.as_mut() {
        s.valid_until = opt_at_pg(s.valid_until);
        s.start_date = opt_at_pg(s.start_date);
        s.end_date = opt_at_pg(s.end_date);
        s.last_verified = opt_at_pg(s.last_verified);
        if keep_sub_times {
            s.created_at = at_pg(s.created_at);
            s.updated_at = at_pg(s.updated_at);
        } else {
            s.created_at = DateTime::UNIX_EPOCH;
            s.updated_at = DateTime::UNIX_EPOCH;
        }
    }
    let mut ids: Vec<CompletedScenario> = a
        .completed_scenarios
        .into_iter()
        .map(|mut c| {
            c.completed_at = DateTime::UNIX_EPOCH;
            c
        })
        .collect();
    ids.sort_by(|x, y| x.scenario_id.cmp(&y.scenario_id));
    a.completed_scenarios = ids;
    a
}

/// The profile aggregate at PostgreSQL's precision, badges in key order; the account reference
/// only when `with_account`.
pub fn profile_meaning(p: &ProfileAggregate, with_account: bool) -> (UserProfile, Vec<UserBadge>) {
    let mut profile = p.profile.clone();
    profile.created_at = at_pg(profile.created_at);
    profile.updated_at = at_pg(profile.updated_at);
    if !with_account {
        profile.account_id = None;
    }
    let mut badges: Vec<UserBadge> = p
        .badges
        .iter()
        .cloned()
        .map(|mut b| {
            b.earned_at = at_pg(b.earned_at);
            b
        })
        .collect();
    badges.sort_by_key(|b| b.id);
    (profile, badges)
}

pub fn signup_meaning(s: &PendingSignup) -> PendingSignup {
    let mut s = s.clone();
    s.created_at = at_pg(s.created_at);
    s.expires_at = at_pg(s.expires_at);
    if let Some(l) = s.magic_link.as_mut() {
        l.verified_at = opt_at_pg(l.verified_at);
        l.consumed_at = opt_at_pg(l.consumed_at);
    }
    // a sign-up's email is compared ignoring case (the app stores it lower-cased)
    s.email = mystira_domain::Email::parse(&s.email.normalized()).unwrap();
    s
}

/// A subscription the service creates for `account`.
pub fn new_subscription(account: Uuid, tier: &str, valid_until: DateTime<Utc>) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: account,
        subscription_type: SubscriptionType::Monthly,
        product_id: Some("monthly".to_owned()),
        tier: tier.to_owned(),
        is_active: true,
        valid_until: Some(valid_until),
        start_date: Some(valid_until - Duration::days(30)),
        end_date: None,
        purchase_token: None,
        last_verified: None,
        purchased_scenarios: Vec::new(),
        created_at: valid_until - Duration::days(30),
        updated_at: valid_until - Duration::days(30),
    }
}

/// A badge the service awards.
pub fn new_badge(profile: Uuid, config: &str, at: DateTime<Utc>) -> UserBadge {
    UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: profile,
        badge_configuration_id: config.to_owned(),
        badge_id: None,
        badge_name: "Brave".to_owned(),
        badge_message: "Well done".to_owned(),
        axis: "courage".to_owned(),
        trigger_value: 0.75,
        threshold: 0.5,
        earned_at: at,
        game_session_id: None,
        scenario_id: Some("dragons".to_owned()),
        image_id: "img".to_owned(),
    }
}
