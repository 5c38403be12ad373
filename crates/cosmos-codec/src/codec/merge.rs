//! The document a delivery writes: PostgreSQL's state of an aggregate merged onto the document
//! Cosmos holds, property by property and at every depth, so that a delivery changes only what
//! PostgreSQL changed.
//!
//! # The rule
//! A mapped property whose stored value *means* what PostgreSQL holds (the decoder reads it as
//! that value) keeps its stored JSON value exactly: a date's digits and offset (compared as the
//! instant PostgreSQL keeps, microseconds truncated as sqlx sends them), an id's spelling, a
//! list's separator and whitespace, a role's casing, a legacy age-group name, a subscription
//! type's label. A property that is missing keeps missing when the decoder's default for it is
//! PostgreSQL's value. Only a property whose meaning differs is written, in the app's (EF Core 9)
//! form. Properties the decoder does not map (unknown ones, `$type`, `Discriminator`, the root
//! `Id`, a badge's `UserProfileId`, `UserProfileIds`) are kept at every depth.
//!
//! Embedded items are matched, never rebuilt: the `Subscription` by its key (its `Id`, or the
//! key the backfill derived without one), badges by theirs (`Id`, or the derived key of the
//! profile and `BadgeConfigurationId`). A matched item is merged property by property; a stored
//! badge PostgreSQL has no row for but whose configuration it holds (a duplicate the app
//! appended, which the backfill recorded in `document_notes`) stays where it is; items PostgreSQL
//! added are appended at the end, as the app appends them. `CompletedScenarioIds` keeps its
//! stored items (duplicates and spelling included) while PostgreSQL holds their scenario, drops
//! the ones it no longer holds and appends new ones.
//!
//! # What the app's shape cannot hold
//! * A completion's time (`completed_scenarios.completed_at`): the document lists ids only.
//! * A subscription's `CreatedAt`/`UpdatedAt`: the app's `Subscription` has neither, so they are
//!   written only where the stored subscription already has them (an older delivery wrote them).
//! * `Settings.Id` when PostgreSQL has none: the stored one stays (PostgreSQL's `None` means "not
//!   recorded", not "remove").
//! * A profile's `AccountId` when PostgreSQL holds the profile detached: the stored reference
//!   stays (it may name an account that does not exist, which PostgreSQL cannot keep).
//! * A sign-up's `email` is its partition key, which a replace cannot change: kept as stored.
//!
//! # `UserProfileIds`
//! The app keeps an account's list of its profiles' ids (comma-joined) by hand: it appends a new
//! profile's id when it creates one and removes a profile's id when it deletes one; nothing else
//! touches it, and it drifts. A delivery does the same and nothing more ([`profile_ids_with`],
//! [`profile_ids_without`]): the other items keep their text, spacing and order, and a list that
//! already says what the write means is not written.
//!
//! # New documents
//! A document Cosmos does not have is written as the app writes a new one: every property it
//! writes, nothing more. That is the encoders' shape, except that a subscription has no
//! `CreatedAt`/`UpdatedAt` and a sign-up's `email` is lower-cased and trimmed (the app stores it
//! so; it is also the partition key the app looks the sign-up up by).

use chrono::{DateTime, NaiveDate, Utc};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, CompletedScenario, MappedId, PendingSignup, Role,
    Subscription, SubscriptionType, UserBadge, UserProfile,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::account::{
    SETTINGS_KEYS, derived_subscription_key, encode_account, encode_settings, encode_subscription,
};
use super::fields::{date_value, opt_string_value};
use super::profile::{
    derived_badge_key, encode_badge, encode_profile_with_account_id, float_value,
};
use super::signup::encode_pending_signup;
use super::time::{
    format_dotnet, format_dotnet_date, is_max_value, parse_dotnet, parse_dotnet_date,
};
use super::{DOTNET_MAX_VALUE, reference_key};

type Object = Map<String, Value>;

/// Cosmos's own properties: never part of what is written (Cosmos sets them).
const SYSTEM_PROPERTIES: [&str; 6] = ["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"];

/// The subscription properties the app's `Subscription` does not have.
const SUBSCRIPTION_TIMESTAMPS: [&str; 2] = ["CreatedAt", "UpdatedAt"];

/// The account document a delivery writes: `stored` (the document as Cosmos holds it, `None`
/// when it has none) with PostgreSQL's state merged in (see the module docs).
pub fn account_document(
    stored: Option<&Value>,
    account: &Account,
    subscription: Option<&Subscription>,
    completed: &[CompletedScenario],
) -> Value {
    let Some(stored) = stored.and_then(Value::as_object) else {
        return new_account_document(account, subscription, completed);
    };
    let mut out = user_properties(stored);
    merge_user_id(&mut out, stored, account.auth0_user_id.as_deref());
    let email_same = get(stored, "Email")
        .and_then(Value::as_str)
        .is_some_and(|e| e.trim() == account.email.as_str());
    put(&mut out, "Email", email_same, json!(account.email.as_str()));
    put(
        &mut out,
        "DisplayName",
        str_or_empty_is(get(stored, "DisplayName"), &account.display_name),
        json!(account.display_name),
    );
    let role_same = match get(stored, "Role") {
        None => account.role == Role::Guest,
        Some(Value::String(r)) => Role::parse(r).is_ok_and(|r| r == account.role),
        Some(_) => false,
    };
    put(&mut out, "Role", role_same, json!(account.role.as_str()));
    put_date(&mut out, stored, "CreatedAt", Some(account.created_at));
    put_date(&mut out, stored, "LastLoginAt", Some(account.last_login_at));
    merge_settings(&mut out, get(stored, "Settings"), &account.settings);
    merge_subscription(&mut out, get(stored, "Subscription"), subscription, account);
    merge_completed(&mut out, get(stored, "CompletedScenarioIds"), completed);
    Value::Object(out)
}

/// The profile document a delivery writes (see [`account_document`]). `account_cosmos_id` is
/// the owning account's Cosmos id when PostgreSQL knows it.
pub fn profile_document(
    stored: Option<&Value>,
    profile: &UserProfile,
    badges: &[UserBadge],
    account_cosmos_id: Option<&str>,
) -> Value {
    let Some(stored) = stored.and_then(Value::as_object) else {
        return encode_profile_with_account_id(profile, badges, account_cosmos_id);
    };
    let mut out = user_properties(stored);
    if let Some(key) = profile.account_id {
        let stored_key = get(stored, "AccountId")
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .map(|r| reference_key(r, "Account"));
        let encoded = account_cosmos_id.map_or_else(|| key.hyphenated().to_string(), str::to_owned);
        put(
            &mut out,
            "AccountId",
            stored_key == Some(key),
            json!(encoded),
        );
    }
    put(
        &mut out,
        "Name",
        str_or_empty_is(get(stored, "Name"), &profile.name),
        json!(profile.name),
    );
    let age_same = get(stored, "AgeGroupName")
        .and_then(Value::as_str)
        .is_some_and(|a| AgeGroup::from_source(a).is_ok_and(|a| a == profile.age_group));
    put(
        &mut out,
        "AgeGroupName",
        age_same,
        json!(profile.age_group.as_str()),
    );
    let birth = profile.date_of_birth.as_ref().map(|d| *d.expose());
    put(
        &mut out,
        "DateOfBirth",
        calendar_date_of(get(stored, "DateOfBirth")) == Some(birth),
        birth.map_or(Value::Null, |d| json!(format_dotnet_date(d))),
    );
    put_bool(&mut out, stored, "IsGuest", profile.is_guest, false);
    put_bool(&mut out, stored, "IsNpc", profile.is_npc, false);
    put_opt_str(&mut out, stored, "Pronouns", profile.pronouns.as_deref());
    put_opt_str(&mut out, stored, "Bio", profile.bio.as_deref());
    put_opt_str(
        &mut out,
        stored,
        "AvatarMediaId",
        profile.avatar_media_id.as_deref(),
    );
    put_opt_str(
        &mut out,
        stored,
        "SelectedAvatarMediaId",
        profile.selected_avatar_media_id.as_deref(),
    );
    put(
        &mut out,
        "PreferredFantasyThemes",
        list_of(get(stored, "PreferredFantasyThemes")).as_deref()
            == Some(profile.preferred_themes.as_slice()),
        json!(profile.preferred_themes.join(",")),
    );
    put_bool(
        &mut out,
        stored,
        "HasCompletedOnboarding",
        profile.has_completed_onboarding,
        false,
    );
    put_date(&mut out, stored, "CreatedAt", Some(profile.created_at));
    put_date(&mut out, stored, "UpdatedAt", Some(profile.updated_at));
    let profile_cosmos_id = stored.get("id").cloned().unwrap_or(Value::Null);
    merge_badges(
        &mut out,
        get(stored, "EarnedBadges"),
        badges,
        profile,
        &profile_cosmos_id,
    );
    Value::Object(out)
}

/// The sign-up document a delivery writes (see [`account_document`]).
pub fn signup_document(stored: Option<&Value>, signup: &PendingSignup) -> Value {
    let Some(stored) = stored.and_then(Value::as_object) else {
        return new_signup_document(signup);
    };
    let mut out = user_properties(stored);
    // `email` is the partition key: a replace keeps it. A document from a writer that named
    // it `Email` (not the key) gets that property merged like any other.
    if get(stored, "email").is_none() {
        let same = get(stored, "Email")
            .and_then(Value::as_str)
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(signup.email.as_str()));
        put(&mut out, "Email", same, json!(signup.email.as_str()));
    }
    put(
        &mut out,
        "DisplayName",
        str_or_empty_is(get(stored, "DisplayName"), &signup.display_name),
        json!(signup.display_name),
    );
    match &signup.code {
        Some(code) => put(
            &mut out,
            "Code",
            get(stored, "Code").and_then(Value::as_str) == Some(code.as_str()),
            json!(code.as_str()),
        ),
        None => {
            if get(stored, "Code").is_some() {
                out.shift_remove("Code");
            }
        }
    }
    put_date(&mut out, stored, "CreatedAt", Some(signup.created_at));
    put_date(&mut out, stored, "ExpiresAt", Some(signup.expires_at));
    put_bool(&mut out, stored, "IsUsed", signup.is_used, false);
    put_bool(&mut out, stored, "IsSignin", signup.is_signin, false);
    put(
        &mut out,
        "FailedAttempts",
        int_of(get(stored, "FailedAttempts"), 0) == Some(i64::from(signup.failed_attempts)),
        json!(signup.failed_attempts),
    );
    match &signup.magic_link {
        Some(link) => {
            put_opt_str(
                &mut out,
                stored,
                "VerificationTokenHash",
                Some(link.verification_token_hash.expose()),
            );
            put(
                &mut out,
                "Status",
                int_of(get(stored, "Status"), 0) == Some(i64::from(link.status.get())),
                json!(link.status.get()),
            );
            put_date(&mut out, stored, "VerifiedAt", link.verified_at);
            put_date(&mut out, stored, "ConsumedAt", link.consumed_at);
        }
        // the other magic-link properties without a token hash are no link (the decoder
        // keeps them in a note): only the hash decides
        None => {
            if get(stored, "VerificationTokenHash").is_some() {
                out.shift_remove("VerificationTokenHash");
            }
        }
    }
    Value::Object(out)
}

/// A new account document as the app writes one.
fn new_account_document(
    account: &Account,
    subscription: Option<&Subscription>,
    completed: &[CompletedScenario],
) -> Value {
    let mut doc = encode_account(account, subscription, completed, &[] as &[&str]);
    if let Some(Value::Object(sub)) = doc.get_mut("Subscription") {
        for name in SUBSCRIPTION_TIMESTAMPS {
            sub.shift_remove(name);
        }
    }
    doc
}

/// A new sign-up document as the app writes one: its email lower-cased and trimmed.
fn new_signup_document(signup: &PendingSignup) -> Value {
    let mut doc = encode_pending_signup(signup);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "email".into(),
            json!(signup.email.as_str().trim().to_lowercase()),
        );
    }
    doc
}

/// A subscription PostgreSQL holds that the stored document does not (as the app writes one).
fn new_subscription(subscription: &Subscription, account: &Account) -> Value {
    let mut v = encode_subscription(subscription, account);
    if let Some(obj) = v.as_object_mut() {
        for name in SUBSCRIPTION_TIMESTAMPS {
            obj.shift_remove(name);
        }
    }
    v
}

/// The stored document without Cosmos's system properties.
fn user_properties(stored: &Object) -> Object {
    stored
        .iter()
        .filter(|(k, _)| !SYSTEM_PROPERTIES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A property, `None` when missing or `null` (the decoder reads both alike).
fn get<'a>(obj: &'a Object, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// Keeps the stored value when it means PostgreSQL's (`same`), else writes `encoded`.
fn put(out: &mut Object, name: &str, same: bool, encoded: Value) {
    if !same {
        out.insert(name.to_owned(), encoded);
    }
}

fn put_date(out: &mut Object, stored: &Object, name: &str, pg: Option<DateTime<Utc>>) {
    put(
        out,
        name,
        date_of(get(stored, name)) == Some(pg.map(pg_micros)),
        date_value(pg),
    );
}

fn put_bool(out: &mut Object, stored: &Object, name: &str, pg: bool, default: bool) {
    put(
        out,
        name,
        bool_of(get(stored, name), default) == Some(pg),
        json!(pg),
    );
}

fn put_opt_str(out: &mut Object, stored: &Object, name: &str, pg: Option<&str>) {
    let same = match get(stored, name) {
        None => pg.is_none(),
        Some(Value::String(s)) => pg == Some(s.as_str()),
        Some(_) => false,
    };
    put(out, name, same, opt_string_value(pg));
}

/// A string the decoder reads as `""` when missing.
fn str_or_empty_is(stored: Option<&Value>, pg: &str) -> bool {
    match stored {
        None => pg.is_empty(),
        Some(Value::String(s)) => s == pg,
        Some(_) => false,
    }
}

/// A bool as the decoder reads it (`default` when missing); `None` when it is not one.
fn bool_of(stored: Option<&Value>, default: bool) -> Option<bool> {
    match stored {
        None => Some(default),
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => None,
    }
}

/// An integer as the decoder reads it (`default` when missing); `None` when it is not one.
fn int_of(stored: Option<&Value>, default: i64) -> Option<i64> {
    match stored {
        None => Some(default),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Some(_) => None,
    }
}

/// An optional date as PostgreSQL would keep it (`Some(None)` when missing); `None` when it is
/// not a date.
fn date_of(stored: Option<&Value>) -> Option<Option<Option<i64>>> {
    match stored {
        None => Some(None),
        Some(Value::String(s)) => parse_dotnet(s).ok().map(|d| Some(pg_micros(d))),
        Some(_) => None,
    }
}

/// An optional calendar date (`DateOfBirth`) as the decoder reads it.
fn calendar_date_of(stored: Option<&Value>) -> Option<Option<NaiveDate>> {
    match stored {
        None => Some(None),
        Some(Value::String(s)) => parse_dotnet_date(s).ok().map(|(d, _)| Some(d)),
        Some(_) => None,
    }
}

/// The instant PostgreSQL keeps for `t`: whole microseconds since 2000-01-01, truncated toward
/// zero, as sqlx sends a `timestamptz` (`None` out of range, where no write succeeds).
pub(crate) fn pg_micros(t: DateTime<Utc>) -> Option<i64> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_hms_opt(0, 0, 0)?;
    (t.naive_utc() - epoch).num_microseconds()
}

/// A comma-joined string or an array of strings as the decoder reads it (items trimmed, empty
/// ones dropped); `None` when it is neither.
fn list_of(stored: Option<&Value>) -> Option<Vec<String>> {
    let items: Vec<&str> = match stored {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(',').collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()?,
        Some(_) => return None,
    };
    Some(
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// `ExternalUserId` (else `Auth0UserId`, blank meaning none) as the decoder reads it.
fn merge_user_id(out: &mut Object, stored: &Object, pg: Option<&str>) {
    let decoded =
        nonblank(stored, "ExternalUserId").and_then(|e| Ok(e.or(nonblank(stored, "Auth0UserId")?)));
    if decoded == Ok(pg) {
        return;
    }
    out.insert("ExternalUserId".into(), json!(pg.unwrap_or("")));
    // the legacy name would be read when `ExternalUserId` is blank, and contradict it otherwise
    out.shift_remove("Auth0UserId");
}

/// A string property where blank means none; `Err` when it is not a string.
fn nonblank<'a>(obj: &'a Object, name: &str) -> Result<Option<&'a str>, ()> {
    match get(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(()),
    }
}

/// `Settings`: known keys by their meaning (the decoder's defaults for missing ones), unknown
/// keys as PostgreSQL keeps them (`AccountSettings::extra`), `Id` kept unless PostgreSQL has
/// another.
fn merge_settings(out: &mut Object, stored: Option<&Value>, pg: &AccountSettings) {
    let stored = match stored {
        None if *pg == AccountSettings::default() => return,
        Some(Value::Object(o)) => o,
        _ => {
            out.insert("Settings".into(), encode_settings(pg));
            return;
        }
    };
    let defaults = AccountSettings::default();
    let mut m = stored.clone();
    if let Some(id) = &pg.id {
        put_opt_str(&mut m, stored, "Id", Some(id));
    }
    put_bool(
        &mut m,
        stored,
        "CacheCredentials",
        pg.cache_credentials,
        defaults.cache_credentials,
    );
    put_bool(
        &mut m,
        stored,
        "RequireAuthOnStartup",
        pg.require_auth_on_startup,
        defaults.require_auth_on_startup,
    );
    put_bool(
        &mut m,
        stored,
        "NotificationsEnabled",
        pg.notifications_enabled,
        defaults.notifications_enabled,
    );
    for (name, value, default) in [
        (
            "PreferredLanguage",
            &pg.preferred_language,
            &defaults.preferred_language,
        ),
        ("Theme", &pg.theme, &defaults.theme),
    ] {
        let same = match get(stored, name) {
            None => value == default,
            Some(Value::String(s)) => s == value,
            Some(_) => false,
        };
        put(&mut m, name, same, json!(value));
    }
    // unknown keys live in PostgreSQL (`extra`): what it holds is what the app's object holds
    m.retain(|k, _| SETTINGS_KEYS.contains(&k.as_str()) || pg.extra.contains_key(k));
    for (k, v) in &pg.extra {
        if stored.get(k) != Some(v) {
            m.insert(k.clone(), v.clone());
        }
    }
    if m != *stored {
        out.insert("Settings".into(), Value::Object(m));
    }
}

/// The key of an embedded object: its `Id` (any spelling), else `derived`; `None` when `Id` is
/// not a string.
fn embedded_key(obj: &Object, derived: Uuid) -> Option<Uuid> {
    match get(obj, "Id") {
        None => Some(derived),
        Some(Value::String(s)) if s.trim().is_empty() => Some(derived),
        Some(Value::String(s)) => Some(MappedId::from_source(s).uuid),
        Some(_) => None,
    }
}

fn merge_subscription(
    out: &mut Object,
    stored: Option<&Value>,
    pg: Option<&Subscription>,
    account: &Account,
) {
    let s = match (stored, pg) {
        (None, None) => return,
        (Some(_), None) => {
            out.insert("Subscription".into(), Value::Null);
            return;
        }
        (Some(Value::Object(o)), Some(s))
            if embedded_key(o, derived_subscription_key(account)) == Some(s.id) =>
        {
            (o, s)
        }
        (_, Some(s)) => {
            out.insert("Subscription".into(), new_subscription(s, account));
            return;
        }
    };
    let (stored, s) = s;
    let mut m = stored.clone();
    let type_same = match get(stored, "Type") {
        None => s.subscription_type == SubscriptionType::Free,
        Some(v) => subscription_type_of(v) == Some(s.subscription_type),
    };
    put(&mut m, "Type", type_same, json!(s.subscription_type.code()));
    put_opt_str(&mut m, stored, "ProductId", s.product_id.as_deref());
    let tier_same = match get(stored, "Tier") {
        None => s.tier == "Free",
        Some(Value::String(t)) => *t == s.tier,
        Some(_) => false,
    };
    put(&mut m, "Tier", tier_same, json!(s.tier));
    put_bool(&mut m, stored, "IsActive", s.is_active, false);
    put_date(&mut m, stored, "ValidUntil", s.valid_until);
    put_date(&mut m, stored, "StartDate", s.start_date);
    let end_same = match get(stored, "EndDate") {
        None => s.end_date.is_none(),
        Some(Value::String(e)) => match parse_dotnet(e) {
            Ok(d) if is_max_value(d) => s.end_date.is_none(),
            Ok(d) => s.end_date.map(pg_micros) == Some(pg_micros(d)),
            Err(_) => false,
        },
        Some(_) => false,
    };
    put(
        &mut m,
        "EndDate",
        end_same,
        s.end_date
            .map_or_else(|| json!(DOTNET_MAX_VALUE), |d| json!(format_dotnet(d))),
    );
    put_opt_str(
        &mut m,
        stored,
        "PurchaseToken",
        s.purchase_token.as_ref().map(|t| t.expose().as_str()),
    );
    put_date(&mut m, stored, "LastVerified", s.last_verified);
    put(
        &mut m,
        "PurchasedScenarios",
        list_of(get(stored, "PurchasedScenarios")).as_deref()
            == Some(s.purchased_scenarios.as_slice()),
        json!(s.purchased_scenarios.join(",")),
    );
    // not part of the app's `Subscription`: kept up to date only where they already are
    if get(stored, "CreatedAt").is_some() {
        put_date(&mut m, stored, "CreatedAt", Some(s.created_at));
    }
    if get(stored, "UpdatedAt").is_some() {
        put_date(&mut m, stored, "UpdatedAt", Some(s.updated_at));
    }
    if m != *stored {
        out.insert("Subscription".into(), Value::Object(m));
    }
}

/// `Subscription.Type` as the decoder reads it: the integer, a numeric string, or the label.
fn subscription_type_of(v: &Value) -> Option<SubscriptionType> {
    match v {
        Value::Number(_) => SubscriptionType::from_code(int_of(Some(v), 0)?).ok(),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(code) => SubscriptionType::from_code(code).ok(),
            Err(_) => SubscriptionType::parse(s).ok(),
        },
        _ => None,
    }
}

/// `CompletedScenarioIds` as a set: stored items stay (in place, as spelled, repeats
/// included) while PostgreSQL holds their scenario; new ones are appended.
fn merge_completed(out: &mut Object, stored: Option<&Value>, pg: &[CompletedScenario]) {
    let stored_items: Option<Vec<Value>> = match stored {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => Some(items.clone()),
        // the comma-joined form, accepted from older writers
        Some(Value::String(s)) => Some(s.split(',').map(|i| json!(i)).collect()),
        Some(_) => None,
    };
    let pg_ids: Vec<&str> = pg.iter().map(|c| c.scenario_id.as_str()).collect();
    let items = stored_items.unwrap_or_default();
    let stored_ids: Vec<&str> = items.iter().filter_map(trimmed).collect();
    let same = stored_items_are_list(stored)
        && stored_ids.iter().all(|i| pg_ids.contains(i))
        && pg_ids.iter().all(|i| stored_ids.contains(i));
    if same {
        return;
    }
    let mut merged: Vec<Value> = items
        .iter()
        .filter(|v| trimmed(v).is_some_and(|i| pg_ids.contains(&i)))
        .cloned()
        .collect();
    for id in &pg_ids {
        if !stored_ids.contains(id) && !merged.iter().any(|v| trimmed(v) == Some(id)) {
            merged.push(json!(id));
        }
    }
    out.insert("CompletedScenarioIds".into(), Value::Array(merged));
}

/// A list item as the decoder reads it (trimmed; `None` when empty or not a string).
fn trimmed(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether a stored list property is one the decoder reads (missing, a string, or an array of
/// strings).
fn stored_items_are_list(stored: Option<&Value>) -> bool {
    list_of(stored).is_some()
}

/// `EarnedBadges`: stored badges matched by key and merged; a stored badge without a row
/// whose configuration PostgreSQL holds is a duplicate the app appended, and stays; new badges
/// are appended.
fn merge_badges(
    out: &mut Object,
    stored: Option<&Value>,
    pg: &[UserBadge],
    profile: &UserProfile,
    profile_cosmos_id: &Value,
) {
    let items: &[Value] = match stored {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(_) => {
            let encoded = pg
                .iter()
                .map(|b| encode_badge(b, profile, profile_cosmos_id))
                .collect();
            out.insert("EarnedBadges".into(), Value::Array(encoded));
            return;
        }
    };
    // the stored items of each row's key; the row's own item is the one that already says
    // what the row says, else the one the decoder stored (the earliest `EarnedAt`, the first
    // on a tie): the others are copies the app appended
    let keys: Vec<Option<(Uuid, &str)>> = items
        .iter()
        .map(|item| {
            let obj = item.as_object()?;
            let config = get(obj, "BadgeConfigurationId").and_then(Value::as_str)?;
            Some((
                embedded_key(obj, derived_badge_key(profile.id, config))?,
                config,
            ))
        })
        .collect();
    let row_item: Vec<Option<usize>> = pg
        .iter()
        .map(|b| {
            let candidates: Vec<usize> = (0..items.len())
                .filter(|&i| keys[i].is_some_and(|(k, _)| k == b.id))
                .collect();
            let unchanged = candidates.iter().copied().find(|&i| {
                items[i]
                    .as_object()
                    .is_some_and(|o| merge_badge(o, b) == items[i])
            });
            let earned = |i: usize| {
                items[i]
                    .get("EarnedAt")
                    .and_then(Value::as_str)
                    .and_then(|t| parse_dotnet(t).ok())
            };
            unchanged.or_else(|| {
                candidates
                    .iter()
                    .copied()
                    .min_by_key(|&i| (earned(i).is_none(), earned(i), i))
            })
        })
        .collect();
    let mut matched = vec![false; pg.len()];
    let mut merged = Vec::with_capacity(items.len().max(pg.len()));
    for (i, item) in items.iter().enumerate() {
        let Some((_, config)) = keys[i] else {
            continue;
        };
        match row_item.iter().position(|r| *r == Some(i)) {
            Some(row) => {
                matched[row] = true;
                if let Some(obj) = item.as_object() {
                    merged.push(merge_badge(obj, &pg[row]));
                }
            }
            // a copy the app appended, which PostgreSQL keeps in `document_notes`
            None => {
                if pg.iter().any(|b| b.badge_configuration_id == config) {
                    merged.push(item.clone());
                }
            }
        }
    }
    for (b, _) in pg.iter().zip(&matched).filter(|(_, m)| !**m) {
        merged.push(encode_badge(b, profile, profile_cosmos_id));
    }
    if stored.is_none() && merged.is_empty() {
        return;
    }
    if stored.and_then(Value::as_array) != Some(&merged) {
        out.insert("EarnedBadges".into(), Value::Array(merged));
    }
}

fn merge_badge(stored: &Object, b: &UserBadge) -> Value {
    let mut m = stored.clone();
    put(
        &mut m,
        "BadgeConfigurationId",
        get(stored, "BadgeConfigurationId").and_then(Value::as_str)
            == Some(b.badge_configuration_id.as_str()),
        json!(b.badge_configuration_id),
    );
    put_opt_str(&mut m, stored, "BadgeId", b.badge_id.as_deref());
    for (name, value) in [
        ("BadgeName", &b.badge_name),
        ("BadgeMessage", &b.badge_message),
        ("Axis", &b.axis),
        ("ImageId", &b.image_id),
    ] {
        put(
            &mut m,
            name,
            str_or_empty_is(get(stored, name), value),
            json!(value),
        );
    }
    for (name, value) in [
        ("TriggerValue", b.trigger_value),
        ("Threshold", b.threshold),
    ] {
        let same = match get(stored, name) {
            None => value == 0.0,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| (f as f32) == value),
            Some(_) => false,
        };
        put(&mut m, name, same, float_value(value));
    }
    put_date(&mut m, stored, "EarnedAt", Some(b.earned_at));
    put_opt_str(
        &mut m,
        stored,
        "GameSessionId",
        b.game_session_id.as_deref(),
    );
    put_opt_str(&mut m, stored, "ScenarioId", b.scenario_id.as_deref());
    Value::Object(m)
}

/// The `UserProfileIds` the app's account document holds once the profile whose document id is
/// `profile_doc_id` (and key `profile_key`) is created: the id appended at the end, as the app
/// appends it. `None` when the list names the profile already (any spelling of its id), or is
/// not a list the app reads (then it is left as it is).
pub fn profile_ids_with(
    account_doc: &Value,
    profile_doc_id: &str,
    profile_key: Uuid,
) -> Option<Value> {
    let names = |item: &str| names_profile(item, profile_key);
    match account_doc.get("UserProfileIds") {
        None | Some(Value::Null) => Some(json!(profile_doc_id)),
        Some(Value::String(s)) if s.split(',').any(names) => None,
        Some(Value::String(s)) if s.trim().is_empty() => Some(json!(profile_doc_id)),
        Some(Value::String(s)) => Some(json!(format!("{s},{profile_doc_id}"))),
        Some(Value::Array(items)) if items.iter().filter_map(Value::as_str).any(names) => None,
        Some(Value::Array(items)) => {
            let mut items = items.clone();
            items.push(json!(profile_doc_id));
            Some(Value::Array(items))
        }
        Some(_) => None,
    }
}

/// The `UserProfileIds` the app's account document holds once the profile with key
/// `profile_key` is deleted: every item naming it removed, the others kept as they are. `None`
/// when the list does not name it (or is not a list the app reads).
pub fn profile_ids_without(account_doc: &Value, profile_key: Uuid) -> Option<Value> {
    let names = |item: &str| names_profile(item, profile_key);
    match account_doc.get("UserProfileIds") {
        Some(Value::String(s)) if s.split(',').any(names) => {
            let kept: Vec<&str> = s.split(',').filter(|i| !names(i)).collect();
            Some(json!(kept.join(",")))
        }
        Some(Value::Array(items)) if items.iter().filter_map(Value::as_str).any(names) => {
            Some(Value::Array(
                items
                    .iter()
                    .filter(|i| !i.as_str().is_some_and(names))
                    .cloned()
                    .collect(),
            ))
        }
        _ => None,
    }
}

/// Whether an item of `UserProfileIds` names the profile with key `key` (the reference rule:
/// trimmed, a leading `UserProfile|` stripped).
fn names_profile(item: &str, key: Uuid) -> bool {
    let item = item.trim();
    !item.is_empty() && reference_key(item, "UserProfile") == key
}
