//! The embedded items of a document, matched by key and merged property by property: an
//! account's `Settings` and `Subscription`, a profile's `CompletedScenarioIds` and badges.

use mystira_domain::{
    Account, AccountSettings, CompletedScenario, MappedId, Subscription, SubscriptionType,
    UserBadge, UserProfile,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::codec::DOTNET_MAX_VALUE;
use crate::codec::account::{SETTINGS_KEYS, derived_subscription_key, encode_settings};
use crate::codec::profile::{derived_badge_key, encode_badge, float_value};
use crate::codec::time::{format_dotnet, is_max_value, parse_dotnet};

use super::values::{
    get, int_of, list_of, pg_micros, put, put_bool, put_date, put_opt_str, str_or_empty_is,
};
use super::{Object, new_subscription};

/// `Settings`: known keys by their meaning (the decoder's defaults for missing ones), unknown
/// keys as PostgreSQL keeps them (`AccountSettings::extra`), `Id` kept unless PostgreSQL has
/// another.
pub(super) fn merge_settings(out: &mut Object, stored: Option<&Value>, pg: &AccountSettings) {
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
pub(super) fn embedded_key(obj: &Object, derived: Uuid) -> Option<Uuid> {
    match get(obj, "Id") {
        None => Some(derived),
        Some(Value::String(s)) if s.trim().is_empty() => Some(derived),
        Some(Value::String(s)) => Some(MappedId::from_source(s).uuid),
        Some(_) => None,
    }
}

pub(super) fn merge_subscription(
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
pub(super) fn subscription_type_of(v: &Value) -> Option<SubscriptionType> {
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
pub(super) fn merge_completed(out: &mut Object, stored: Option<&Value>, pg: &[CompletedScenario]) {
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
pub(super) fn trimmed(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether a stored list property is one the decoder reads (missing, a string, or an array of
/// strings).
pub(super) fn stored_items_are_list(stored: Option<&Value>) -> bool {
    list_of(stored).is_some()
}

/// `EarnedBadges`: stored badges matched by key and merged; a stored badge without a row
/// whose configuration PostgreSQL holds is a duplicate the app appended, and stays; new badges
/// are appended.
pub(super) fn merge_badges(
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

pub(super) fn merge_badge(stored: &Object, b: &UserBadge) -> Value {
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
