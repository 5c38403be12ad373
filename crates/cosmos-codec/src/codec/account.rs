//! Account documents (container `Accounts`): the account, its embedded `Subscription` and
//! `Settings`, its `CompletedScenarioIds`, and the informational `UserProfileIds`.
//!
//! Mapping decisions:
//! * `ExternalUserId` (EF 9) or `Auth0UserId` (older) → `auth0_user_id`; `""` or whitespace
//!   means none (two "none"s must not collide on the UNIQUE column). When both are present
//!   and differ, `ExternalUserId` wins and a `conflicting_user_ids` note is recorded. Written
//!   back as `ExternalUserId` (`""` for none, the app's default).
//! * `Email` is required and must pass [`Email`]'s rule (`invalid_email` otherwise). Case is
//!   kept as typed.
//! * `Role`: `null`/missing → `Guest` (the app's default) with a `role_defaulted` note; any
//!   casing parses (`admin` → `Admin`) with a `role_recased` note; anything else is
//!   `invalid_role`.
//! * `Settings`: known keys are read with the domain's defaults (a missing key gets a
//!   `field_defaulted` note), unknown keys are kept in `extra`; a missing `Settings` object is
//!   the default settings with a `field_defaulted` note.
//! * `Subscription`: `null`/missing → no subscription. `Id` missing (documents older than
//!   December 2025) → key `derived_key("subscription", account, "")`, and the encoder then omits
//!   `Id` again. `Type` is the .NET enum's integer (the label is also accepted); missing →
//!   `Free` with a note. `EndDate` = `DateTime.MaxValue` → `None`. `Tier` missing → `Free` with
//!   a note. Cosmos has no subscription `CreatedAt`/`UpdatedAt`: the encoder writes them as
//!   extra properties (the app ignores unknown properties) so they survive a round trip; when
//!   absent, `created_at` = `StartDate`, else the account's `CreatedAt`, and `updated_at` = the
//!   document's `_ts`, else `created_at`.
//! * `CompletedScenarioIds` (a JSON array; a comma-joined string is accepted too): Cosmos keeps
//!   no completion time, so `completed_at` = the account's `LastLoginAt` (the latest moment
//!   the account is known to have been used: every completion happened in a session no later
//!   than that), unless it is .NET's `DateTime.MinValue` (never set): then the document's
//!   `_ts`, else `CreatedAt`, with a `completed_at_derived` note naming the source. Keys are
//!   `derived_key("completed_scenario", account, scenario_id)`. A repeated scenario id is kept
//!   once with a `duplicate_completed_scenario` note (the table is unique per account and
//!   scenario).
//! * `UserProfileIds` is returned as a hint only: `UserProfile.AccountId` is the truth.

use chrono::{DateTime, TimeZone, Utc};
use mystira_domain::ids::derived_key;
use mystira_domain::{
    Account, AccountSettings, CompletedScenario, Email, Role, Secret, Subscription,
    SubscriptionType,
};
use serde_json::{Map, Value, json};

use super::fields::{
    DocIds, Fields, Object, check_entity_type, date_value, embedded_id, note_email_trimmed,
    opt_string_value, read_embedded_id, root, validation_to_decode, write_ids,
};
use super::time::{DOTNET_MAX_VALUE, format_dotnet, is_min_value};
use super::{DecodeError, Note, SourceVersion, source_version};

const ENTITY: &str = "Account";

/// A decoded account document.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAccount {
    pub account: Account,
    pub subscription: Option<Subscription>,
    pub completed_scenarios: Vec<CompletedScenario>,
    /// `UserProfileIds` as stored (trimmed, empties dropped). Informational only: it drifts
    /// from the truth, which is `UserProfile.AccountId`.
    pub profile_ids_hint: Vec<String>,
    pub notes: Vec<Note>,
    pub version: SourceVersion,
    /// The document's `id`, exactly as stored.
    pub document_id: String,
}

/// The properties of an account document the decoder reads (any other is noted as dropped).
const ACCOUNT_FIELDS: [&str; 13] = [
    "id",
    "Id",
    "ExternalUserId",
    "Auth0UserId",
    "Email",
    "DisplayName",
    "Role",
    "Settings",
    "Subscription",
    "CompletedScenarioIds",
    "UserProfileIds",
    "CreatedAt",
    "LastLoginAt",
];

/// The properties of the embedded `Subscription` the decoder reads.
const SUBSCRIPTION_FIELDS: [&str; 13] = [
    "Id",
    "Type",
    "ProductId",
    "Tier",
    "IsActive",
    "ValidUntil",
    "StartDate",
    "EndDate",
    "PurchaseToken",
    "LastVerified",
    "PurchasedScenarios",
    "CreatedAt",
    "UpdatedAt",
];

/// Decodes an `Accounts` document.
pub fn decode_account(doc: &Value) -> Result<DecodedAccount, DecodeError> {
    let obj = root(doc)?;
    check_entity_type(obj, ENTITY)?;
    let ids = DocIds::read(obj, ENTITY)?;
    let version = source_version(doc);
    let f = Fields::new(obj, "");
    let mut notes = Vec::new();

    let auth0_user_id = read_user_id(&f, &mut notes)?;
    let raw_email = f.req_str("Email")?;
    note_email_trimmed("Email", raw_email, &mut notes);
    let email =
        Email::parse_field("email", raw_email).map_err(|e| DecodeError::validation("Email", &e))?;
    let display_name = f.str_or_empty("DisplayName", &mut notes)?;
    let role = read_role(&f, &mut notes)?;
    let settings = read_settings(f.opt_object("Settings")?, &mut notes)?;
    let created_at = f.req_date("CreatedAt")?;
    let last_login_at = f.req_date("LastLoginAt")?;

    let account = Account {
        id: ids.mapped.uuid,
        cosmos_id: ids.mapped.cosmos_id.clone(),
        auth0_user_id,
        email,
        display_name,
        role,
        settings,
        created_at,
        last_login_at,
    };
    account
        .validate()
        .map_err(|e| validation_to_decode("", &e))?;

    let subscription = f
        .opt_object("Subscription")?
        .map(|s| read_subscription(s, &account, &version, &mut notes))
        .transpose()?;
    let completed_scenarios = read_completed(&f, &account, &version, &mut notes)?;
    f.note_unknown(&ACCOUNT_FIELDS, &mut notes);
    let profile_ids_hint = f.list("UserProfileIds", &mut notes)?;
    // the relation lives in each profile's AccountId; the account's own list is not stored,
    // so it is kept here for a report to compare (it drifts in real data)
    if let Some(raw) = f.get("UserProfileIds").filter(|v| !v.is_null()) {
        notes.push(
            Note::new(
                "user_profile_ids_dropped",
                "UserProfileIds",
                json!({ "rule": "not stored: profiles point at their account" }),
            )
            .with_original(raw.clone()),
        );
    }

    Ok(DecodedAccount {
        account,
        subscription,
        completed_scenarios,
        profile_ids_hint,
        notes,
        version,
        document_id: ids.document_id.to_owned(),
    })
}

fn read_user_id(f: &Fields<'_>, notes: &mut Vec<Note>) -> Result<Option<String>, DecodeError> {
    let external = f.opt_nonempty_str("ExternalUserId")?;
    let legacy = f.opt_nonempty_str("Auth0UserId")?;
    if let (Some(e), Some(l)) = (external, legacy)
        && e != l
    {
        notes.push(
            Note::new(
                "conflicting_user_ids",
                "Auth0UserId",
                json!({ "rule": "ExternalUserId and Auth0UserId differ; ExternalUserId was kept" }),
            )
            .with_original(json!(l)),
        );
    }
    Ok(external.or(legacy).map(str::to_owned))
}

fn read_role(f: &Fields<'_>, notes: &mut Vec<Note>) -> Result<Role, DecodeError> {
    let Some(raw) = f.opt_str("Role")? else {
        notes.push(Note::new(
            "role_defaulted",
            "Role",
            json!({ "rule": "missing or null; the app's default Guest was applied" }),
        ));
        return Ok(Role::Guest);
    };
    let role = Role::parse(raw).map_err(|e| DecodeError::validation("Role", &e))?;
    if role.as_str() != raw {
        // Role names are not personal data: the canonical one is safe to record.
        notes.push(
            Note::new(
                "role_recased",
                "Role",
                json!({ "stored_as": role.as_str() }),
            )
            .with_original(json!(raw)),
        );
    }
    Ok(role)
}

pub(crate) const SETTINGS_KEYS: [&str; 6] = [
    "Id",
    "CacheCredentials",
    "RequireAuthOnStartup",
    "PreferredLanguage",
    "NotificationsEnabled",
    "Theme",
];

fn read_settings(
    obj: Option<&Object>,
    notes: &mut Vec<Note>,
) -> Result<AccountSettings, DecodeError> {
    let Some(obj) = obj else {
        notes.push(Note::new(
            "field_defaulted",
            "Settings",
            json!({ "rule": "missing or null; the default settings were applied" }),
        ));
        return Ok(AccountSettings::default());
    };
    let f = Fields::new(obj, "Settings.");
    let defaults = AccountSettings::default();
    // A missing key gets the domain's default (what the app's initialisers give), noted.
    let read_bool = |name: &str, default: bool, notes: &mut Vec<Note>| match f.get(name) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(DecodeError::wrong_type(f.path(name), "true or false")),
        None => {
            note_default(notes, &f.path(name));
            Ok(default)
        }
    };
    let read_string = |name: &str, default: &str, notes: &mut Vec<Note>| {
        f.opt_str(name).map(|v| {
            v.map(str::to_owned).unwrap_or_else(|| {
                note_default(notes, &f.path(name));
                default.to_owned()
            })
        })
    };
    Ok(AccountSettings {
        id: f.opt_str("Id")?.map(str::to_owned),
        cache_credentials: read_bool("CacheCredentials", defaults.cache_credentials, notes)?,
        require_auth_on_startup: read_bool(
            "RequireAuthOnStartup",
            defaults.require_auth_on_startup,
            notes,
        )?,
        preferred_language: read_string("PreferredLanguage", &defaults.preferred_language, notes)?,
        notifications_enabled: read_bool(
            "NotificationsEnabled",
            defaults.notifications_enabled,
            notes,
        )?,
        theme: read_string("Theme", &defaults.theme, notes)?,
        extra: obj
            .iter()
            .filter(|(k, _)| !SETTINGS_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn note_default(notes: &mut Vec<Note>, path: &str) {
    notes.push(Note::new(
        "field_defaulted",
        path,
        json!({ "rule": "missing or null; the app's default was applied" }),
    ));
}

fn read_subscription(
    obj: &Object,
    account: &Account,
    version: &SourceVersion,
    notes: &mut Vec<Note>,
) -> Result<Subscription, DecodeError> {
    let f = Fields::new(obj, "Subscription.");
    let (id, cosmos_id) = match read_embedded_id(&f)? {
        Some(m) => (m.uuid, m.cosmos_id),
        None => (derived_subscription_key(account), None),
    };
    let subscription_type = read_subscription_type(&f, notes)?;
    let tier = match f.opt_str("Tier")? {
        Some(t) => t.to_owned(),
        None => {
            note_default(notes, "Subscription.Tier");
            "Free".to_owned()
        }
    };
    let start_date = f.opt_date("StartDate")?;
    let created_at = match f.opt_date("CreatedAt")? {
        Some(c) => c,
        None => start_date
            .filter(|d| !is_min_value(*d))
            .unwrap_or(account.created_at),
    };
    let updated_at = match f.opt_date("UpdatedAt")? {
        Some(u) => u,
        None => version.ts.and_then(ts_time).unwrap_or(created_at),
    };
    let subscription = Subscription {
        id,
        cosmos_id,
        account_id: account.id,
        subscription_type,
        product_id: f.opt_str("ProductId")?.map(str::to_owned),
        tier,
        is_active: f.bool_or_false("IsActive", notes)?,
        valid_until: f.opt_date("ValidUntil")?,
        start_date,
        end_date: f.opt_date_max_is_none("EndDate")?,
        purchase_token: f
            .opt_str("PurchaseToken")?
            .map(|t| Secret::new(t.to_owned())),
        last_verified: f.opt_date("LastVerified")?,
        purchased_scenarios: f.list("PurchasedScenarios", notes)?,
        created_at,
        updated_at,
    };
    f.note_unknown(&SUBSCRIPTION_FIELDS, notes);
    subscription
        .validate()
        .map_err(|e| validation_to_decode("Subscription.", &e))?;
    Ok(subscription)
}

fn read_subscription_type(
    f: &Fields<'_>,
    notes: &mut Vec<Note>,
) -> Result<SubscriptionType, DecodeError> {
    let parsed = match f.get("Type") {
        None => {
            note_default(notes, "Subscription.Type");
            return Ok(SubscriptionType::Free);
        }
        Some(Value::Number(_)) => SubscriptionType::from_code(f.opt_int("Type")?.unwrap_or(-1)),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(code) => SubscriptionType::from_code(code),
            Err(_) => SubscriptionType::parse(s),
        },
        Some(_) => {
            return Err(DecodeError::wrong_type(
                "Subscription.Type",
                "an integer 0-4 or a subscription type name",
            ));
        }
    };
    let parsed = parsed.map_err(|e| DecodeError::validation("Subscription.Type", &e))?;
    // the app writes the integer; a name or a numeric string is another spelling of it
    if let Some(raw @ Value::String(_)) = f.get("Type") {
        notes.push(
            Note::new(
                "subscription_type_spelled",
                "Subscription.Type",
                json!({ "stored_as": parsed.code() }),
            )
            .with_original(raw.clone()),
        );
    }
    Ok(parsed)
}

fn read_completed(
    f: &Fields<'_>,
    account: &Account,
    version: &SourceVersion,
    notes: &mut Vec<Note>,
) -> Result<Vec<CompletedScenario>, DecodeError> {
    let scenario_ids = f.list("CompletedScenarioIds", notes)?;
    if scenario_ids.is_empty() {
        return Ok(Vec::new());
    }
    let completed_at = completion_time(account, version, notes);
    let mut out: Vec<CompletedScenario> = Vec::with_capacity(scenario_ids.len());
    for (i, scenario_id) in scenario_ids.into_iter().enumerate() {
        if out.iter().any(|c| c.scenario_id == scenario_id) {
            notes.push(
                Note::new(
                    "duplicate_completed_scenario",
                    format!("CompletedScenarioIds[{i}]"),
                    json!({ "rule": "the same scenario id appears again; kept once" }),
                )
                .with_original(json!(scenario_id)),
            );
            continue;
        }
        let row = CompletedScenario {
            id: derived_key("completed_scenario", account.id, &scenario_id),
            account_id: account.id,
            scenario_id,
            completed_at,
        };
        row.validate()
            .map_err(|e| DecodeError::validation(format!("CompletedScenarioIds[{i}]"), &e))?;
        out.push(row);
    }
    Ok(out)
}

/// The documented stand-in for the completion time Cosmos does not keep (see the module docs).
fn completion_time(
    account: &Account,
    version: &SourceVersion,
    notes: &mut Vec<Note>,
) -> DateTime<Utc> {
    if !is_min_value(account.last_login_at) {
        return account.last_login_at;
    }
    let (source, at) = match version.ts.and_then(ts_time) {
        Some(at) => ("_ts", at),
        None => ("CreatedAt", account.created_at),
    };
    notes.push(Note::new(
        "completed_at_derived",
        "CompletedScenarioIds",
        json!({ "source": source, "rule": "LastLoginAt is unset (DateTime.MinValue)" }),
    ));
    at
}

fn ts_time(ts: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(ts, 0).single()
}

/// The key of a subscription embedded without an `Id`.
pub(crate) fn derived_subscription_key(account: &Account) -> uuid::Uuid {
    derived_key("subscription", account.id, "")
}

/// Encodes an account in the current (EF Core 9) shape. `profile_ids` are the Cosmos ids of
/// the account's profiles (written comma-joined as `UserProfileIds`); `completed` are written
/// as `CompletedScenarioIds` (their times cannot be stored, see the module docs).
pub fn encode_account<S: AsRef<str>>(
    account: &Account,
    subscription: Option<&Subscription>,
    completed: &[CompletedScenario],
    profile_ids: &[S],
) -> Value {
    let mut obj = Map::new();
    write_ids(&mut obj, ENTITY, account.id, account.cosmos_id.as_deref());
    let profile_ids: Vec<&str> = profile_ids.iter().map(AsRef::as_ref).collect();
    let fields = [
        ("$type", json!(ENTITY)),
        (
            "ExternalUserId",
            json!(account.auth0_user_id.as_deref().unwrap_or("")),
        ),
        ("Email", json!(account.email.as_str())),
        ("DisplayName", json!(account.display_name)),
        ("Role", json!(account.role.as_str())),
        ("UserProfileIds", json!(profile_ids.join(","))),
        (
            "CompletedScenarioIds",
            Value::Array(completed.iter().map(|c| json!(c.scenario_id)).collect()),
        ),
        (
            "Subscription",
            subscription.map_or(Value::Null, |s| encode_subscription(s, account)),
        ),
        ("Settings", encode_settings(&account.settings)),
        ("CreatedAt", json!(format_dotnet(account.created_at))),
        ("LastLoginAt", json!(format_dotnet(account.last_login_at))),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}

pub(crate) fn encode_subscription(s: &Subscription, account: &Account) -> Value {
    let mut obj = Map::new();
    if !(s.id == derived_subscription_key(account) && s.cosmos_id.is_none()) {
        obj.insert(
            "Id".into(),
            json!(embedded_id(s.id, s.cosmos_id.as_deref())),
        );
    }
    let fields = [
        ("Type", json!(s.subscription_type.code())),
        ("ProductId", opt_string_value(s.product_id.as_deref())),
        ("ValidUntil", date_value(s.valid_until)),
        ("IsActive", json!(s.is_active)),
        (
            "PurchaseToken",
            opt_string_value(s.purchase_token.as_ref().map(|t| t.expose().as_str())),
        ),
        ("LastVerified", date_value(s.last_verified)),
        ("PurchasedScenarios", json!(s.purchased_scenarios.join(","))),
        ("Tier", json!(s.tier)),
        ("StartDate", date_value(s.start_date)),
        (
            "EndDate",
            s.end_date
                .map_or_else(|| json!(DOTNET_MAX_VALUE), |d| json!(format_dotnet(d))),
        ),
        ("CreatedAt", json!(format_dotnet(s.created_at))),
        ("UpdatedAt", json!(format_dotnet(s.updated_at))),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}

pub(crate) fn encode_settings(s: &AccountSettings) -> Value {
    let mut obj = Map::new();
    if let Some(id) = &s.id {
        obj.insert("Id".into(), json!(id));
    }
    let fields = [
        ("CacheCredentials", json!(s.cache_credentials)),
        ("RequireAuthOnStartup", json!(s.require_auth_on_startup)),
        ("PreferredLanguage", json!(s.preferred_language)),
        ("NotificationsEnabled", json!(s.notifications_enabled)),
        ("Theme", json!(s.theme)),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    // unknown keys after the app's (the order its serializer writes them in), never over a
    // known one: a stray extra with a known key's name cannot overwrite it
    for (k, v) in &s.extra {
        if !obj.contains_key(k) {
            obj.insert(k.clone(), v.clone());
        }
    }
    Value::Object(obj)
}
