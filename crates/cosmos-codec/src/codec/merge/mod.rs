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
//!
//! # Where
//! This module merges the documents; reading and writing a stored property by its meaning is in
//! `values`, the embedded items (settings, subscription, completions, badges) in `embedded`,
//! and `UserProfileIds` in `profile_ids`.

mod embedded;
mod profile_ids;
mod values;

use mystira_domain::{
    Account, AgeGroup, CompletedScenario, PendingSignup, Role, Subscription, UserBadge, UserProfile,
};
use serde_json::{Map, Value, json};

use super::account::{encode_account, encode_subscription};
use super::profile::encode_profile_with_account_id;
use super::reference_key;
use super::signup::encode_pending_signup;
use super::time::format_dotnet_date;

use embedded::{merge_badges, merge_completed, merge_settings, merge_subscription};
use values::{
    calendar_date_of, get, int_of, list_of, merge_user_id, put, put_bool, put_date, put_opt_str,
    str_or_empty_is, user_properties,
};

pub use profile_ids::{profile_ids_with, profile_ids_without};

type Object = Map<String, Value>;

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
