//! User-profile documents (container `UserProfiles`): the profile and its embedded
//! `EarnedBadges`.
//!
//! Mapping decisions:
//! * `AccountId`: `null`, missing or `""` → no account. Otherwise the key of the referenced
//!   account by the same rule as the account's own id ([`super::reference_key`]), so a
//!   non-UUID or upper-case account id still resolves. Whether that account exists is not the
//!   codec's business (the backfill checks it); the raw reference is returned as
//!   `account_ref`. The encoder writes the key's canonical text unless the caller passes the
//!   account's Cosmos id ([`encode_profile_with_account_id`]), which it must for accounts with a
//!   non-UUID id, or the app will not find the account.
//! * `AgeGroupName` is required; `<min>-<max>` is kept, the known legacy names (`toddlers`,
//!   `early_childhood`, `school`, `preteens`, `adult`, any case) map to their current group
//!   with an `age_group_mapped` note, anything else is `invalid_age_group`.
//! * `PreferredFantasyThemes`: comma-joined string → list (trimmed, empty items dropped); a
//!   theme name containing a comma cannot be represented (as in the app).
//! * `DateOfBirth`: the written calendar date (see [`super::time::parse_dotnet_date`]).
//! * `EarnedBadges`: each badge belongs to this profile, whatever its `UserProfileId` says (a
//!   mismatch is noted as `badge_profile_mismatch`). A badge without `Id` gets
//!   `derived_key("user_badge", profile, BadgeConfigurationId)`. Badges sharing a
//!   `BadgeConfigurationId` (the app appended without de-duplication; the table is unique per
//!   profile and configuration): the earliest `EarnedAt` is kept (the first in array order on a
//!   tie), the others are returned in `duplicate_badges` with a `duplicate_badge` note each —
//!   never dropped silently. Kept badges stay in array order.

use mystira_domain::ids::derived_key;
use mystira_domain::{AgeGroup, Secret, UserBadge, UserProfile};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::fields::{
    DocIds, Fields, Object, check_entity_type, embedded_id, opt_string_value, read_embedded_id,
    root, validation_to_decode, write_ids,
};
use super::time::{format_dotnet, format_dotnet_date};
use super::{DecodeError, Note, SourceVersion, reference_key, source_version};

const ENTITY: &str = "UserProfile";

/// A decoded user-profile document.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedProfile {
    pub profile: UserProfile,
    /// The badges to store: one per `BadgeConfigurationId`, in array order.
    pub badges: Vec<UserBadge>,
    /// Later copies of a badge configuration the profile already holds (not stored; reported).
    pub duplicate_badges: Vec<UserBadge>,
    /// `AccountId` as stored (when not empty), for reporting a reference that does not resolve.
    pub account_ref: Option<String>,
    pub notes: Vec<Note>,
    pub version: SourceVersion,
    /// The document's `id`, exactly as stored.
    pub document_id: String,
}

/// The properties of a profile document the decoder reads (any other is noted as dropped).
const PROFILE_FIELDS: [&str; 17] = [
    "id",
    "Id",
    "AccountId",
    "Name",
    "AgeGroupName",
    "DateOfBirth",
    "IsGuest",
    "IsNpc",
    "Pronouns",
    "Bio",
    "AvatarMediaId",
    "SelectedAvatarMediaId",
    "PreferredFantasyThemes",
    "HasCompletedOnboarding",
    "CreatedAt",
    "UpdatedAt",
    "EarnedBadges",
];

/// The properties of an embedded badge the decoder reads.
const BADGE_FIELDS: [&str; 13] = [
    "Id",
    "UserProfileId",
    "BadgeConfigurationId",
    "BadgeId",
    "BadgeName",
    "BadgeMessage",
    "Axis",
    "TriggerValue",
    "Threshold",
    "EarnedAt",
    "GameSessionId",
    "ScenarioId",
    "ImageId",
];

/// Decodes a `UserProfiles` document.
pub fn decode_profile(doc: &Value) -> Result<DecodedProfile, DecodeError> {
    let obj = root(doc)?;
    check_entity_type(obj, ENTITY)?;
    let ids = DocIds::read(obj, ENTITY)?;
    let f = Fields::new(obj, "");
    let mut notes = Vec::new();

    let account_ref = f.opt_nonempty_str("AccountId")?;
    let raw_age = f.req_str("AgeGroupName")?;
    let age_group =
        AgeGroup::from_source(raw_age).map_err(|e| DecodeError::validation("AgeGroupName", &e))?;
    if age_group.as_str() != raw_age {
        // Age-group names are a fixed vocabulary, not personal data.
        notes.push(
            Note::new(
                "age_group_mapped",
                "AgeGroupName",
                json!({ "stored_as": age_group.as_str() }),
            )
            .with_original(json!(raw_age)),
        );
    }
    let profile = UserProfile {
        id: ids.mapped.uuid,
        cosmos_id: ids.mapped.cosmos_id.clone(),
        account_id: account_ref.map(|r| reference_key(r, "Account")),
        name: f.str_or_empty("Name", &mut notes)?,
        age_group,
        date_of_birth: f
            .opt_calendar_date("DateOfBirth", &mut notes)?
            .map(Secret::new),
        is_guest: f.bool_or_false("IsGuest", &mut notes)?,
        is_npc: f.bool_or_false("IsNpc", &mut notes)?,
        pronouns: f.opt_str("Pronouns")?.map(str::to_owned),
        bio: f.opt_str("Bio")?.map(str::to_owned),
        avatar_media_id: f.opt_str("AvatarMediaId")?.map(str::to_owned),
        selected_avatar_media_id: f.opt_str("SelectedAvatarMediaId")?.map(str::to_owned),
        preferred_themes: f.list("PreferredFantasyThemes", &mut notes)?,
        has_completed_onboarding: f.bool_or_false("HasCompletedOnboarding", &mut notes)?,
        created_at: f.req_date("CreatedAt")?,
        updated_at: f.req_date("UpdatedAt")?,
    };
    profile
        .validate()
        .map_err(|e| validation_to_decode("", &e))?;

    let all = read_badges(&f, &profile, &mut notes)?;
    let raw_badges = match f.get("EarnedBadges") {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    let (badges, duplicate_badges) = split_duplicates(all, raw_badges, &mut notes);
    f.note_unknown(&PROFILE_FIELDS, &mut notes);
    Ok(DecodedProfile {
        profile,
        badges,
        duplicate_badges,
        account_ref: account_ref.map(str::to_owned),
        notes,
        version: source_version(doc),
        document_id: ids.document_id.to_owned(),
    })
}

fn read_badges(
    f: &Fields<'_>,
    profile: &UserProfile,
    notes: &mut Vec<Note>,
) -> Result<Vec<UserBadge>, DecodeError> {
    let items = match f.get("EarnedBadges") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(DecodeError::wrong_type(
                "EarnedBadges",
                "an array of badges",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("EarnedBadges[{i}].");
            let obj = item.as_object().ok_or_else(|| {
                DecodeError::wrong_type(format!("EarnedBadges[{i}]"), "an object")
            })?;
            read_badge(obj, &prefix, profile, notes)
        })
        .collect()
}

fn read_badge(
    obj: &Object,
    prefix: &str,
    profile: &UserProfile,
    notes: &mut Vec<Note>,
) -> Result<UserBadge, DecodeError> {
    let f = Fields::new(obj, prefix);
    let badge_configuration_id = f.req_str("BadgeConfigurationId")?.to_owned();
    let (id, cosmos_id) = match read_embedded_id(&f)? {
        Some(m) => (m.uuid, m.cosmos_id),
        None => (derived_badge_key(profile.id, &badge_configuration_id), None),
    };
    if let Some(owner) = f.opt_nonempty_str("UserProfileId")?
        && reference_key(owner, ENTITY) != profile.id
    {
        notes.push(
            Note::new(
                "badge_profile_mismatch",
                f.path("UserProfileId"),
                json!({ "rule": "names another profile; the badge was kept with the profile that embeds it" }),
            )
            .with_original(json!(owner)),
        );
    }
    let badge = UserBadge {
        id,
        cosmos_id,
        user_profile_id: profile.id,
        badge_configuration_id,
        badge_id: f.opt_str("BadgeId")?.map(str::to_owned),
        badge_name: f.str_or_empty("BadgeName", notes)?,
        badge_message: f.str_or_empty("BadgeMessage", notes)?,
        axis: f.str_or_empty("Axis", notes)?,
        trigger_value: f.f32_or_zero("TriggerValue", notes)?,
        threshold: f.f32_or_zero("Threshold", notes)?,
        earned_at: f.req_date("EarnedAt")?,
        game_session_id: f.opt_str("GameSessionId")?.map(str::to_owned),
        scenario_id: f.opt_str("ScenarioId")?.map(str::to_owned),
        image_id: f.str_or_empty("ImageId", notes)?,
    };
    badge
        .validate()
        .map_err(|e| validation_to_decode(prefix, &e))?;
    f.note_unknown(&BADGE_FIELDS, notes);
    Ok(badge)
}

/// Keeps one badge per configuration (the earliest `EarnedAt`, first on a tie), in array order;
/// returns the rest as duplicates, each with a note whose original is the whole raw badge
/// (`raw[i]` is the source of `all[i]`: badges decode one per array item, in order).
fn split_duplicates(
    all: Vec<UserBadge>,
    raw: &[Value],
    notes: &mut Vec<Note>,
) -> (Vec<UserBadge>, Vec<UserBadge>) {
    let winner_of = |config: &str| {
        all.iter()
            .enumerate()
            .filter(|(_, b)| b.badge_configuration_id == config)
            .min_by_key(|(i, b)| (b.earned_at, *i))
            .map(|(i, _)| i)
    };
    let winners: Vec<Option<usize>> = all
        .iter()
        .map(|b| winner_of(&b.badge_configuration_id))
        .collect();
    let mut kept = Vec::new();
    let mut duplicates = Vec::new();
    for (i, badge) in all.iter().enumerate() {
        match winners[i] {
            Some(w) if w != i => {
                let kept_id = embedded_id(all[w].id, all[w].cosmos_id.as_deref());
                let note = Note::new(
                    "duplicate_badge",
                    embedded_id(badge.id, badge.cosmos_id.as_deref()),
                    json!({
                        "badge_configuration_id": badge.badge_configuration_id,
                        "kept_badge_id": kept_id,
                        "rule": "the profile holds an earlier badge of this configuration",
                    }),
                );
                notes.push(match raw.get(i) {
                    Some(original) => note.with_original(original.clone()),
                    None => note,
                });
                duplicates.push(badge.clone());
            }
            _ => kept.push(badge.clone()),
        }
    }
    (kept, duplicates)
}

/// The key of a badge embedded without an `Id`.
pub(crate) fn derived_badge_key(profile: Uuid, badge_configuration_id: &str) -> Uuid {
    derived_key("user_badge", profile, badge_configuration_id)
}

/// Encodes a profile in the current shape, with `AccountId` = the account key's canonical text.
pub fn encode_profile(profile: &UserProfile, badges: &[UserBadge]) -> Value {
    encode_profile_with_account_id(profile, badges, None)
}

/// Encodes a profile; `account_cosmos_id` is the owning account's Cosmos id when known (needed
/// when it is not a UUID). It must map to `profile.account_id`.
pub fn encode_profile_with_account_id(
    profile: &UserProfile,
    badges: &[UserBadge],
    account_cosmos_id: Option<&str>,
) -> Value {
    let mut obj = Map::new();
    write_ids(&mut obj, ENTITY, profile.id, profile.cosmos_id.as_deref());
    let profile_cosmos_id = obj.get("id").cloned().unwrap_or(Value::Null);
    let account_id = match (profile.account_id, account_cosmos_id) {
        (None, _) => Value::Null,
        (Some(_), Some(raw)) => json!(raw),
        (Some(key), None) => json!(key.hyphenated().to_string()),
    };
    let fields = [
        ("$type", json!(ENTITY)),
        ("Name", json!(profile.name)),
        ("AccountId", account_id),
        (
            "PreferredFantasyThemes",
            json!(profile.preferred_themes.join(",")),
        ),
        (
            "DateOfBirth",
            profile
                .date_of_birth
                .as_ref()
                .map_or(Value::Null, |d| json!(format_dotnet_date(*d.expose()))),
        ),
        ("IsGuest", json!(profile.is_guest)),
        ("IsNpc", json!(profile.is_npc)),
        ("Pronouns", opt_string_value(profile.pronouns.as_deref())),
        ("Bio", opt_string_value(profile.bio.as_deref())),
        (
            "AvatarMediaId",
            opt_string_value(profile.avatar_media_id.as_deref()),
        ),
        (
            "SelectedAvatarMediaId",
            opt_string_value(profile.selected_avatar_media_id.as_deref()),
        ),
        (
            "HasCompletedOnboarding",
            json!(profile.has_completed_onboarding),
        ),
        ("AgeGroupName", json!(profile.age_group.as_str())),
        (
            "EarnedBadges",
            Value::Array(
                badges
                    .iter()
                    .map(|b| encode_badge(b, profile, &profile_cosmos_id))
                    .collect(),
            ),
        ),
        ("CreatedAt", json!(format_dotnet(profile.created_at))),
        ("UpdatedAt", json!(format_dotnet(profile.updated_at))),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}

pub(crate) fn encode_badge(
    b: &UserBadge,
    profile: &UserProfile,
    profile_cosmos_id: &Value,
) -> Value {
    let mut obj = Map::new();
    if !(b.id == derived_badge_key(profile.id, &b.badge_configuration_id) && b.cosmos_id.is_none())
    {
        obj.insert(
            "Id".into(),
            json!(embedded_id(b.id, b.cosmos_id.as_deref())),
        );
    }
    let fields = [
        ("UserProfileId", profile_cosmos_id.clone()),
        ("BadgeConfigurationId", json!(b.badge_configuration_id)),
        ("BadgeId", opt_string_value(b.badge_id.as_deref())),
        ("BadgeName", json!(b.badge_name)),
        ("BadgeMessage", json!(b.badge_message)),
        ("Axis", json!(b.axis)),
        ("TriggerValue", float_value(b.trigger_value)),
        ("Threshold", float_value(b.threshold)),
        ("EarnedAt", json!(format_dotnet(b.earned_at))),
        (
            "GameSessionId",
            opt_string_value(b.game_session_id.as_deref()),
        ),
        ("ScenarioId", opt_string_value(b.scenario_id.as_deref())),
        ("ImageId", json!(b.image_id)),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}

/// A .NET `float` as JSON: the shortest decimal that reads back as the same f32 (`0.1`, not
/// `0.10000000149011612`), which is what the app writes. Non-finite values have no JSON form
/// and become `null` (read back as 0 with a note).
pub(crate) fn float_value(v: f32) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_in_their_shortest_form_and_read_back_exactly() {
        for v in [0.1_f32, 1.0, 3.4028235e38, -2.5e-7, 0.0] {
            let json = float_value(v);
            let back = json.as_f64().map(|f| f as f32);
            assert_eq!(back, Some(v));
        }
        assert_eq!(float_value(0.1).to_string(), "0.1");
        assert_eq!(float_value(f32::NAN), Value::Null);
    }
}
