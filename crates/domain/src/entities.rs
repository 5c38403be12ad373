//! The six entities of the user domain, as the application sees them. Fields are public plain
//! data; the ones the schema constrains use validated value types, and [`validate`] methods
//! check the column widths (`VARCHAR(n)`) that a type cannot express cheaply.
//!
//! Timestamps are UTC. PostgreSQL keeps microseconds; .NET keeps 100 ns ticks, so a value read
//! back from PostgreSQL may be up to 999 ns earlier than the one written.
//!
//! [`validate`]: Account::validate

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ValidationError, check_len, check_opt_len};
use crate::values::{AgeGroup, Email, Role, Secret, SignupCode, SignupStatus, SubscriptionType};

/// `VARCHAR(255)`, the width of most text columns.
const WIDE: usize = 255;

/// An account (table `accounts`).
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: Uuid,
    /// The Cosmos `id`, when it is not the canonical text of `id` (see [`crate::ids`]).
    pub cosmos_id: Option<String>,
    /// Auth0 or Entra user id (`ExternalUserId`, formerly `Auth0UserId`). `None` means none; an
    /// empty string in Cosmos also means none.
    pub auth0_user_id: Option<String>,
    pub email: Email,
    pub display_name: String,
    pub role: Role,
    pub settings: AccountSettings,
    pub created_at: DateTime<Utc>,
    pub last_login_at: DateTime<Utc>,
}

impl Account {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_opt_len("auth0_user_id", self.auth0_user_id.as_deref(), WIDE)?;
        check_len("display_name", &self.display_name, WIDE)?;
        Ok(())
    }
}

/// Account settings (column `accounts.settings`, JSONB). Keys keep the app's PascalCase names so
/// the .NET app can map the column directly. Unknown keys are kept, not dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountSettings {
    /// The embedded object's own `Id` (missing in documents older than December 2025).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub cache_credentials: bool,
    #[serde(default)]
    pub require_auth_on_startup: bool,
    #[serde(default = "default_language")]
    pub preferred_language: String,
    #[serde(default = "default_true")]
    pub notifications_enabled: bool,
    #[serde(default)]
    pub theme: String,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_language() -> String {
    "en".to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            id: None,
            cache_credentials: false,
            require_auth_on_startup: false,
            preferred_language: default_language(),
            notifications_enabled: true,
            theme: String::new(),
            extra: serde_json::Map::new(),
        }
    }
}

/// An account's subscription (table `subscriptions`, one per account).
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: Uuid,
    /// The embedded object's own `Id`, when it is not the canonical text of `id`.
    pub cosmos_id: Option<String>,
    pub account_id: Uuid,
    pub subscription_type: SubscriptionType,
    pub product_id: Option<String>,
    pub tier: String,
    pub is_active: bool,
    pub valid_until: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    /// `None` means no end (.NET's `DateTime.MaxValue` in Cosmos).
    pub end_date: Option<DateTime<Utc>>,
    pub purchase_token: Option<Secret<String>>,
    pub last_verified: Option<DateTime<Utc>>,
    pub purchased_scenarios: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_opt_len("product_id", self.product_id.as_deref(), WIDE)?;
        check_len("tier", &self.tier, 50)?;
        Ok(())
    }

    /// Whether the subscription grants access at `now`: active and not past `valid_until`
    /// (the `active_subscriptions` view's rule).
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.is_active && self.valid_until.is_none_or(|v| v > now)
    }
}

/// A child or guest profile (table `user_profiles`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    pub id: Uuid,
    pub cosmos_id: Option<String>,
    /// The owning account; `None` once the account is deleted (or never had one).
    pub account_id: Option<Uuid>,
    pub name: String,
    pub age_group: AgeGroup,
    pub date_of_birth: Option<Secret<NaiveDate>>,
    pub is_guest: bool,
    pub is_npc: bool,
    pub pronouns: Option<String>,
    pub bio: Option<String>,
    pub avatar_media_id: Option<String>,
    pub selected_avatar_media_id: Option<String>,
    pub preferred_themes: Vec<String>,
    pub has_completed_onboarding: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserProfile {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_len("name", &self.name, WIDE)?;
        check_opt_len("pronouns", self.pronouns.as_deref(), 50)?;
        check_opt_len("avatar_media_id", self.avatar_media_id.as_deref(), WIDE)?;
        check_opt_len(
            "selected_avatar_media_id",
            self.selected_avatar_media_id.as_deref(),
            WIDE,
        )?;
        Ok(())
    }
}

/// A badge earned by a profile (table `user_badges`; embedded `EarnedBadges` in Cosmos).
#[derive(Debug, Clone, PartialEq)]
pub struct UserBadge {
    pub id: Uuid,
    pub cosmos_id: Option<String>,
    pub user_profile_id: Uuid,
    pub badge_configuration_id: String,
    pub badge_id: Option<String>,
    pub badge_name: String,
    pub badge_message: String,
    pub axis: String,
    pub trigger_value: f32,
    pub threshold: f32,
    pub earned_at: DateTime<Utc>,
    pub game_session_id: Option<String>,
    pub scenario_id: Option<String>,
    pub image_id: String,
}

impl UserBadge {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.badge_configuration_id.is_empty() {
            return Err(ValidationError::Empty {
                field: "badge_configuration_id",
            });
        }
        check_len("badge_configuration_id", &self.badge_configuration_id, WIDE)?;
        check_opt_len("badge_id", self.badge_id.as_deref(), WIDE)?;
        check_len("badge_name", &self.badge_name, WIDE)?;
        check_len("axis", &self.axis, 100)?;
        check_opt_len("game_session_id", self.game_session_id.as_deref(), WIDE)?;
        check_opt_len("scenario_id", self.scenario_id.as_deref(), WIDE)?;
        check_len("image_id", &self.image_id, WIDE)?;
        Ok(())
    }
}

/// A scenario an account has completed (table `completed_scenarios`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedScenario {
    pub id: Uuid,
    pub account_id: Uuid,
    pub scenario_id: String,
    pub completed_at: DateTime<Utc>,
}

impl CompletedScenario {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.scenario_id.is_empty() {
            return Err(ValidationError::Empty {
                field: "scenario_id",
            });
        }
        check_len("scenario_id", &self.scenario_id, WIDE)
    }
}

/// A sign-up or sign-in waiting for its emailed code or link (table `pending_signups`).
///
/// The app has written two versions of this entity into one container: the code version (a
/// short code typed back, with a lock-out on wrong guesses) and the magic-link version (a hash
/// of an emailed token, with a status and the times it was verified and consumed). Both are
/// kept as they are: `code` for the first, `magic_link` for the second, and a document that
/// carries fields of both keeps both. [`validate`](Self::validate) requires at least one.
/// `is_used`, `is_signin` and `failed_attempts` belong to the code version; a magic-link-only
/// sign-up has them at their defaults unless its source said otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSignup {
    pub id: Uuid,
    pub cosmos_id: Option<String>,
    pub email: Email,
    pub display_name: String,
    /// The emailed code (the code version); `None` for a magic-link-only sign-up.
    pub code: Option<SignupCode>,
    /// The emailed link's state (the magic-link version); `None` for a code-only sign-up.
    pub magic_link: Option<MagicLink>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub is_used: bool,
    pub is_signin: bool,
    pub failed_attempts: i32,
}

/// The magic-link part of a sign-up (columns `verification_token_hash`, `status`,
/// `verified_at`, `consumed_at`). The token itself is never stored, only its hash, which still
/// identifies the sign-up to whoever holds it: it is a [`Secret`], never in `Debug` or a log.
#[derive(Debug, Clone, PartialEq)]
pub struct MagicLink {
    pub verification_token_hash: Secret<String>,
    /// The app's state number, kept as stored (see [`SignupStatus`]).
    pub status: SignupStatus,
    pub verified_at: Option<DateTime<Utc>>,
    pub consumed_at: Option<DateTime<Utc>>,
}

impl MagicLink {
    pub fn validate(&self) -> Result<(), ValidationError> {
        // an empty hash would match an empty lookup and identify nothing
        if self.verification_token_hash.expose().trim().is_empty() {
            return Err(ValidationError::Empty {
                field: "verification_token_hash",
            });
        }
        Ok(())
    }
}

/// What checking a code against a sign-up decides, before anything is written. Every store
/// applies the same rule ([`PendingSignup::check_code`]) and only differs in how it counts a
/// wrong code atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// The sign-up has no code (magic-link only): no code can verify it, and a guess is not
    /// counted against it.
    NoCode,
    Expired,
    /// At the lock-out limit: refused, even when the code is right.
    LockedOut,
    Verified,
    /// Wrong code, below the limit: the store counts the failure.
    Wrong,
}

impl PendingSignup {
    /// The schema's ceiling on `failed_attempts` (`pending_signups_failed_attempts_check`).
    pub const MAX_FAILED_ATTEMPTS: i32 = 10;
    /// The app's lock-out limit: after this many wrong codes the sign-up is locked.
    pub const DEFAULT_LOCKOUT_ATTEMPTS: i32 = 5;

    /// The lock-out limit actually applied: never above the schema's ceiling (so counting a
    /// failure can never trip the CHECK) and never negative. A limit of 0 locks every sign-up:
    /// a misconfiguration then refuses codes rather than accepting them unchecked.
    pub fn effective_lockout(lockout_attempts: i32) -> i32 {
        lockout_attempts.clamp(0, Self::MAX_FAILED_ATTEMPTS)
    }

    /// The checks, in order: no code at all (a magic-link-only sign-up); expired at `now`; at
    /// the (effective) lock-out limit, even for the right code; the right code; else wrong.
    pub fn check_code(&self, code: &str, now: DateTime<Utc>, lockout_attempts: i32) -> CodeCheck {
        let Some(expected) = &self.code else {
            return CodeCheck::NoCode;
        };
        if self.expires_at <= now {
            CodeCheck::Expired
        } else if self.failed_attempts >= Self::effective_lockout(lockout_attempts) {
            CodeCheck::LockedOut
        } else if expected.matches(code) {
            CodeCheck::Verified
        } else {
            CodeCheck::Wrong
        }
    }

    /// The token hash of the magic link, if the sign-up has one.
    pub fn token_hash(&self) -> Option<&str> {
        self.magic_link
            .as_ref()
            .map(|m| m.verification_token_hash.expose().as_str())
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        check_len("display_name", &self.display_name, WIDE)?;
        match &self.magic_link {
            Some(link) => link.validate()?,
            None if self.code.is_none() => {
                return Err(ValidationError::NoCodeOrToken { field: "code" });
            }
            None => {}
        }
        if !(0..=Self::MAX_FAILED_ATTEMPTS).contains(&self.failed_attempts) {
            return Err(ValidationError::OutOfRange {
                field: "failed_attempts",
                rule: "must be between 0 and 10",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keep_unknown_keys_and_fill_defaults() {
        let s: AccountSettings =
            serde_json::from_value(serde_json::json!({"Theme": "dark", "FutureFlag": 3}))
                .expect("settings");
        assert_eq!(s.theme, "dark");
        assert_eq!(s.preferred_language, "en");
        assert!(s.notifications_enabled);
        assert_eq!(s.extra.get("FutureFlag"), Some(&serde_json::json!(3)));
        let back = serde_json::to_value(&s).expect("json");
        assert_eq!(back["FutureFlag"], 3);
        assert_eq!(back["PreferredLanguage"], "en");
    }

    #[test]
    fn code_checks_come_in_order_expired_locked_verified_wrong() {
        let now = Utc::now();
        let mut s = PendingSignup {
            id: Uuid::nil(),
            cosmos_id: None,
            email: Email::parse("a@b.co").expect("valid"),
            display_name: String::new(),
            code: Some(SignupCode::parse("123456").expect("valid")),
            magic_link: None,
            created_at: now,
            expires_at: now + chrono::Duration::minutes(15),
            is_used: false,
            is_signin: false,
            failed_attempts: 4,
        };
        assert_eq!(s.check_code("123456", now, 5), CodeCheck::Verified);
        assert_eq!(s.check_code("000000", now, 5), CodeCheck::Wrong);
        assert_eq!(s.check_code("123456", now, 4), CodeCheck::LockedOut);
        assert_eq!(s.check_code("123456", now, 0), CodeCheck::LockedOut);
        // a limit above the schema's ceiling is clamped to it
        s.failed_attempts = 10;
        assert_eq!(s.check_code("123456", now, 50), CodeCheck::LockedOut);
        assert_eq!(s.check_code("123456", s.expires_at, 50), CodeCheck::Expired);
    }

    #[test]
    fn signup_failed_attempts_range_is_the_checks() {
        let mut s = PendingSignup {
            id: Uuid::nil(),
            cosmos_id: None,
            email: Email::parse("a@b.co").expect("valid"),
            display_name: String::new(),
            code: Some(SignupCode::parse("123456").expect("valid")),
            magic_link: None,
            created_at: Utc::now(),
            expires_at: Utc::now(),
            is_used: false,
            is_signin: false,
            failed_attempts: 10,
        };
        assert!(s.validate().is_ok());
        s.failed_attempts = 11;
        assert_eq!(s.validate().map_err(|e| e.field()), Err("failed_attempts"));
        s.failed_attempts = -1;
        assert!(s.validate().is_err());
    }

    fn link(hash: &str) -> MagicLink {
        MagicLink {
            verification_token_hash: Secret::new(hash.to_owned()),
            status: SignupStatus::new("status", 0).expect("valid"),
            verified_at: None,
            consumed_at: None,
        }
    }

    #[test]
    fn a_signup_needs_a_code_or_a_link_and_keeps_both() {
        let now = Utc::now();
        let mut s = PendingSignup {
            id: Uuid::nil(),
            cosmos_id: None,
            email: Email::parse("a@b.co").expect("valid"),
            display_name: String::new(),
            code: None,
            magic_link: Some(link("ab12")),
            created_at: now,
            expires_at: now + chrono::Duration::minutes(15),
            is_used: false,
            is_signin: false,
            failed_attempts: 0,
        };
        assert!(s.validate().is_ok());
        assert_eq!(s.token_hash(), Some("ab12"));
        // a code cannot verify a magic-link-only sign-up, even one that "matches" nothing
        assert_eq!(s.check_code("123456", now, 5), CodeCheck::NoCode);
        assert_eq!(s.check_code("", now, 5), CodeCheck::NoCode);
        // both versions at once: both stay, and the code works
        s.code = Some(SignupCode::parse("123456").expect("valid"));
        assert!(s.validate().is_ok());
        assert_eq!(s.check_code("123456", now, 5), CodeCheck::Verified);
        // neither: refused, naming the rule
        s.code = None;
        s.magic_link = None;
        let e = s.validate().expect_err("neither");
        assert_eq!(e.code(), "no_code_or_token");
        assert!(e.to_string().contains("verification_token_hash"), "{e}");
        s.magic_link = Some(link("  "));
        assert_eq!(
            s.validate().map_err(|e| e.field()),
            Err("verification_token_hash")
        );
    }

    #[test]
    fn the_token_hash_never_shows_in_debug() {
        let l = link("deadbeefcafe");
        assert!(!format!("{l:?}").contains("deadbeefcafe"));
    }
}
