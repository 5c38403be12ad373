//! The API's request and response bodies, and their conversion to and from the domain's
//! entities. Requests carry text; turning them into entities goes through the domain's
//! parsers (`Email::parse`, `AgeGroup::parse`, ...) and `validate` methods, the same ones the
//! backfill applies to Cosmos documents, so the API cannot store what a migration would refuse.
//!
//! A client's values are also held to the caps and value rules of [`mystira_domain::input`]
//! (a bio of at most 2,000 characters, at most 20 themes, an age group whose bounds are a real
//! range, a date of birth in the past 150 years, ...), which the backfill does not apply to
//! what Cosmos already holds. A PATCH checks only the fields it sets, so a stored value from
//! before the caps does not block a change of another field. The caps are repeated as
//! `maxLength`/`maxItems` in the OpenAPI schema (docs/security.md, "Limits").
//!
//! Secrets the domain keeps (`purchase_token`, a sign-up's code) are accepted where the app
//! writes them and never returned: a response says whether one is set.

use chrono::{DateTime, NaiveDate, Utc};
use mystira_domain::input::{self, check_list, check_text};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, CompletedScenario, Email, Role, Secret, Subscription,
    SubscriptionType, UserBadge, UserProfile, ValidationError,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `absent` → `None` (keep), `null` → `Some(None)` (clear), a value → `Some(Some(v))`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn settings(value: Option<serde_json::Value>) -> Result<AccountSettings, ValidationError> {
    match value {
        None => Ok(AccountSettings::default()),
        Some(v) => {
            input::check_settings_size(&v.to_string())?;
            serde_json::from_value(v).map_err(|_| ValidationError::OutOfRange {
                field: "settings",
                rule: "must be an object whose known keys (CacheCredentials, \
                   RequireAuthOnStartup, PreferredLanguage, NotificationsEnabled, Theme, Id) \
                   have their types",
            })
        }
    }
}

/// The settings object with an `Id`, as the app's always has one (EF Core 9 writes
/// `Settings.Id`, and a delivery to Cosmos writes what PostgreSQL holds): the one given, else
/// the one it had, else a new one.
fn with_settings_id(mut s: AccountSettings, had: Option<String>) -> AccountSettings {
    if s.id.is_none() {
        s.id = Some(had.unwrap_or_else(|| Uuid::new_v4().to_string()));
    }
    s
}

/// An account as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountOut {
    pub id: Uuid,
    /// The external (Auth0 or Entra) user id: a token's `sub`.
    pub auth0_user_id: Option<String>,
    pub email: String,
    pub display_name: String,
    /// Guest, User, Admin or SuperAdmin.
    pub role: String,
    /// The app's settings object (PascalCase keys, unknown keys kept).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub last_login_at: DateTime<Utc>,
}

impl From<&Account> for AccountOut {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id,
            auth0_user_id: a.auth0_user_id.clone(),
            email: a.email.as_str().to_owned(),
            display_name: a.display_name.clone(),
            role: a.role.as_str().to_owned(),
            settings: serde_json::to_value(&a.settings).unwrap_or_default(),
            created_at: a.created_at,
            last_login_at: a.last_login_at,
        }
    }
}

/// A new account. `auth0_user_id` defaults to the caller's `sub`; only admins may name
/// another, or give a role above User.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// A client-chosen id (for a retry that must not create twice); a new one when absent.
    pub id: Option<Uuid>,
    #[schema(max_length = 255)]
    pub auth0_user_id: Option<String>,
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(max_length = 255)]
    pub display_name: String,
    #[schema(pattern = "^(Guest|User|Admin|SuperAdmin)$")]
    pub role: Option<String>,
    /// The app's settings object, at most 4096 bytes as JSON.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// A completed sign-up for `email` (the `signup_id` its verification answered): the proof
    /// that the caller holds the address, when the token's `email` is not it.
    pub signup_id: Option<Uuid>,
}

impl NewAccount {
    pub fn into_account(
        self,
        default_user: &str,
        now: DateTime<Utc>,
    ) -> Result<Account, ValidationError> {
        let account = Account {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            cosmos_id: None,
            auth0_user_id: Some(
                self.auth0_user_id
                    .unwrap_or_else(|| default_user.to_owned()),
            ),
            email: Email::parse(&self.email)?,
            display_name: self.display_name,
            role: self
                .role
                .as_deref()
                .map(Role::parse)
                .transpose()?
                .unwrap_or(Role::User),
            settings: with_settings_id(settings(self.settings)?, None),
            created_at: now,
            last_login_at: now,
        };
        account.validate()?;
        Ok(account)
    }
}

/// Changes to an account: absent fields are kept. Only admins may change `role`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[schema(format = Email, max_length = 255)]
    pub email: Option<String>,
    #[schema(max_length = 255)]
    pub display_name: Option<String>,
    #[schema(pattern = "^(Guest|User|Admin|SuperAdmin)$")]
    pub role: Option<String>,
    /// Replaces the whole settings object (at most 4096 bytes as JSON).
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// A completed sign-up for the new `email`: the proof of the address, as for a new account.
    pub signup_id: Option<Uuid>,
}

impl AccountPatch {
    pub fn role(&self) -> Result<Option<Role>, ValidationError> {
        self.role.as_deref().map(Role::parse).transpose()
    }

    pub fn apply(self, mut account: Account) -> Result<Account, ValidationError> {
        if let Some(email) = &self.email {
            account.email = Email::parse(email)?;
        }
        if let Some(role) = self.role()? {
            account.role = role;
        }
        if let Some(name) = self.display_name {
            account.display_name = name;
        }
        if self.settings.is_some() {
            account.settings = with_settings_id(settings(self.settings)?, account.settings.id);
        }
        account.validate()?;
        Ok(account)
    }
}

/// A subscription as the API returns it (without its purchase token).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionOut {
    pub id: Uuid,
    pub account_id: Uuid,
    /// Free, Monthly, Annual, Lifetime or Individual.
    pub subscription_type: String,
    pub product_id: Option<String>,
    pub tier: String,
    pub is_active: bool,
    /// Whether it grants access now (active and not past `valid_until`).
    pub active_now: bool,
    pub valid_until: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    /// `null`: no end.
    pub end_date: Option<DateTime<Utc>>,
    pub has_purchase_token: bool,
    pub last_verified: Option<DateTime<Utc>>,
    pub purchased_scenarios: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SubscriptionOut {
    pub fn new(s: &Subscription, now: DateTime<Utc>) -> Self {
        Self {
            id: s.id,
            account_id: s.account_id,
            subscription_type: s.subscription_type.as_str().to_owned(),
            product_id: s.product_id.clone(),
            tier: s.tier.clone(),
            is_active: s.is_active,
            active_now: s.is_active_at(now),
            valid_until: s.valid_until,
            start_date: s.start_date,
            end_date: s.end_date,
            has_purchase_token: s.purchase_token.is_some(),
            last_verified: s.last_verified,
            purchased_scenarios: s.purchased_scenarios.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The account's subscription, replaced whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionIn {
    #[schema(pattern = "^(Free|Monthly|Annual|Lifetime|Individual)$")]
    pub subscription_type: String,
    #[schema(max_length = 255)]
    pub product_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 50)]
    pub tier: String,
    pub is_active: bool,
    pub valid_until: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// The store's purchase token (write-only: never returned).
    #[schema(max_length = 8192)]
    pub purchase_token: Option<String>,
    pub last_verified: Option<DateTime<Utc>>,
    /// Scenario ids, each 1 to 255 characters with no comma.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub purchased_scenarios: Vec<String>,
}

impl SubscriptionIn {
    pub fn into_subscription(
        self,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Subscription, ValidationError> {
        check_text(
            "purchase_token",
            self.purchase_token.as_deref(),
            input::PURCHASE_TOKEN_MAX,
        )?;
        check_list(
            "purchased_scenarios",
            &self.purchased_scenarios,
            input::PURCHASED_SCENARIOS_MAX_ITEMS,
            input::SCENARIO_ID_MAX,
        )?;
        let subscription = Subscription {
            id: Uuid::new_v4(),
            cosmos_id: None,
            account_id,
            subscription_type: SubscriptionType::parse(&self.subscription_type)?,
            product_id: self.product_id,
            tier: self.tier,
            is_active: self.is_active,
            valid_until: self.valid_until,
            start_date: self.start_date,
            end_date: self.end_date,
            purchase_token: self.purchase_token.map(Secret::new),
            last_verified: self.last_verified,
            purchased_scenarios: self.purchased_scenarios,
            created_at: now,
            updated_at: now,
        };
        subscription.validate()?;
        Ok(subscription)
    }
}

/// A user profile as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileOut {
    pub id: Uuid,
    /// `null` once the account is deleted.
    pub account_id: Option<Uuid>,
    pub name: String,
    pub age_group: String,
    pub date_of_birth: Option<NaiveDate>,
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

impl From<&UserProfile> for ProfileOut {
    fn from(p: &UserProfile) -> Self {
        Self {
            id: p.id,
            account_id: p.account_id,
            name: p.name.clone(),
            age_group: p.age_group.as_str().to_owned(),
            date_of_birth: p.date_of_birth.as_ref().map(|d| *d.expose()),
            is_guest: p.is_guest,
            is_npc: p.is_npc,
            pronouns: p.pronouns.clone(),
            bio: p.bio.clone(),
            avatar_media_id: p.avatar_media_id.clone(),
            selected_avatar_media_id: p.selected_avatar_media_id.clone(),
            preferred_themes: p.preferred_themes.clone(),
            has_completed_onboarding: p.has_completed_onboarding,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A new profile of the account in the path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfile {
    pub id: Option<Uuid>,
    #[schema(max_length = 255)]
    pub name: String,
    /// `<min>-<max>`, for example `6-9`: min <= max <= 150, no leading zeros.
    #[schema(pattern = "^(0|[1-9][0-9]{0,2})-(0|[1-9][0-9]{0,2})$")]
    pub age_group: String,
    /// Not in the future, not more than 150 years ago.
    pub date_of_birth: Option<NaiveDate>,
    #[serde(default)]
    pub is_guest: bool,
    #[serde(default)]
    pub is_npc: bool,
    #[schema(max_length = 50)]
    pub pronouns: Option<String>,
    #[schema(max_length = 2000)]
    pub bio: Option<String>,
    #[schema(max_length = 255)]
    pub avatar_media_id: Option<String>,
    #[schema(max_length = 255)]
    pub selected_avatar_media_id: Option<String>,
    /// Theme names, each 1 to 50 characters with no comma.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub preferred_themes: Vec<String>,
}

impl NewProfile {
    pub fn into_profile(
        self,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<UserProfile, ValidationError> {
        let profile = UserProfile {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            cosmos_id: None,
            account_id: Some(account_id),
            name: self.name,
            age_group: AgeGroup::parse_input(&self.age_group)?,
            date_of_birth: self
                .date_of_birth
                .map(|d| input::check_date_of_birth(d, now.date_naive()).map(|()| Secret::new(d)))
                .transpose()?,
            is_guest: self.is_guest,
            is_npc: self.is_npc,
            pronouns: self.pronouns,
            bio: self.bio,
            avatar_media_id: self.avatar_media_id,
            selected_avatar_media_id: self.selected_avatar_media_id,
            preferred_themes: self.preferred_themes,
            has_completed_onboarding: false,
            created_at: now,
            updated_at: now,
        };
        profile.validate()?;
        check_profile_input(
            profile.bio.as_deref(),
            Some(profile.preferred_themes.as_slice()),
        )?;
        Ok(profile)
    }
}

/// Changes to a profile: absent fields are kept, `null` clears a nullable one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    #[schema(max_length = 255)]
    pub name: Option<String>,
    #[schema(pattern = "^(0|[1-9][0-9]{0,2})-(0|[1-9][0-9]{0,2})$")]
    pub age_group: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<NaiveDate>)]
    pub date_of_birth: Option<Option<NaiveDate>>,
    pub is_guest: Option<bool>,
    pub is_npc: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 50)]
    pub pronouns: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub avatar_media_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub selected_avatar_media_id: Option<Option<String>>,
    #[schema(max_items = 20)]
    pub preferred_themes: Option<Vec<String>>,
    pub has_completed_onboarding: Option<bool>,
}

impl ProfilePatch {
    /// The profile with the patch's fields, checked as at creation; only the fields the patch
    /// sets are held to the input caps (a value stored before them stays until changed).
    pub fn apply(
        self,
        mut p: UserProfile,
        now: DateTime<Utc>,
    ) -> Result<UserProfile, ValidationError> {
        check_profile_input(
            self.bio.as_ref().and_then(Option::as_deref),
            self.preferred_themes.as_deref(),
        )?;
        if let Some(name) = self.name {
            p.name = name;
        }
        if let Some(group) = &self.age_group {
            p.age_group = AgeGroup::parse_input(group)?;
        }
        if let Some(dob) = self.date_of_birth {
            if let Some(d) = dob {
                input::check_date_of_birth(d, now.date_naive())?;
            }
            p.date_of_birth = dob.map(Secret::new);
        }
        p.is_guest = self.is_guest.unwrap_or(p.is_guest);
        p.is_npc = self.is_npc.unwrap_or(p.is_npc);
        let keep = |new: Option<Option<String>>, old: Option<String>| new.unwrap_or(old);
        p.pronouns = keep(self.pronouns, p.pronouns);
        p.bio = keep(self.bio, p.bio);
        p.avatar_media_id = keep(self.avatar_media_id, p.avatar_media_id);
        p.selected_avatar_media_id =
            keep(self.selected_avatar_media_id, p.selected_avatar_media_id);
        if let Some(themes) = self.preferred_themes {
            p.preferred_themes = themes;
        }
        p.has_completed_onboarding = self
            .has_completed_onboarding
            .unwrap_or(p.has_completed_onboarding);
        p.validate()?;
        Ok(p)
    }
}

/// The caps of a profile's unbounded fields (`bio`, `preferred_themes`) on what a client sends;
/// the bounded ones are the schema's widths, checked by `UserProfile::validate`.
fn check_profile_input(
    bio: Option<&str>,
    themes: Option<&[String]>,
) -> Result<(), ValidationError> {
    check_text("bio", bio, input::BIO_MAX)?;
    if let Some(themes) = themes {
        check_list(
            "preferred_themes",
            themes,
            input::PREFERRED_THEMES_MAX_ITEMS,
            input::THEME_MAX,
        )?;
    }
    Ok(())
}

/// A badge as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BadgeOut {
    pub id: Uuid,
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

impl From<&UserBadge> for BadgeOut {
    fn from(b: &UserBadge) -> Self {
        Self {
            id: b.id,
            user_profile_id: b.user_profile_id,
            badge_configuration_id: b.badge_configuration_id.clone(),
            badge_id: b.badge_id.clone(),
            badge_name: b.badge_name.clone(),
            badge_message: b.badge_message.clone(),
            axis: b.axis.clone(),
            trigger_value: b.trigger_value,
            threshold: b.threshold,
            earned_at: b.earned_at,
            game_session_id: b.game_session_id.clone(),
            scenario_id: b.scenario_id.clone(),
            image_id: b.image_id.clone(),
        }
    }
}

/// A badge to award to the profile in the path (once per badge configuration).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBadge {
    pub id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 255)]
    pub badge_configuration_id: String,
    #[schema(max_length = 255)]
    pub badge_id: Option<String>,
    #[schema(max_length = 255)]
    pub badge_name: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub badge_message: String,
    #[serde(default)]
    #[schema(max_length = 100)]
    pub axis: String,
    #[serde(default)]
    pub trigger_value: f32,
    #[serde(default)]
    pub threshold: f32,
    /// When it was earned; now when absent.
    pub earned_at: Option<DateTime<Utc>>,
    #[schema(max_length = 255)]
    pub game_session_id: Option<String>,
    #[schema(max_length = 255)]
    pub scenario_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 255)]
    pub image_id: String,
}

impl NewBadge {
    pub fn into_badge(
        self,
        profile_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<UserBadge, ValidationError> {
        for (field, v) in [
            ("trigger_value", self.trigger_value),
            ("threshold", self.threshold),
        ] {
            if !v.is_finite() {
                return Err(ValidationError::OutOfRange {
                    field,
                    rule: "must be a finite number",
                });
            }
        }
        let badge = UserBadge {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            cosmos_id: None,
            user_profile_id: profile_id,
            badge_configuration_id: self.badge_configuration_id,
            badge_id: self.badge_id,
            badge_name: self.badge_name,
            badge_message: self.badge_message,
            axis: self.axis,
            trigger_value: self.trigger_value,
            threshold: self.threshold,
            earned_at: self.earned_at.unwrap_or(now),
            game_session_id: self.game_session_id,
            scenario_id: self.scenario_id,
            image_id: self.image_id,
        };
        badge.validate()?;
        check_text(
            "badge_message",
            Some(&badge.badge_message),
            input::BADGE_MESSAGE_MAX,
        )?;
        Ok(badge)
    }
}

/// A completed scenario as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletedOut {
    pub id: Uuid,
    pub account_id: Uuid,
    pub scenario_id: String,
    pub completed_at: DateTime<Utc>,
}

impl From<&CompletedScenario> for CompletedOut {
    fn from(c: &CompletedScenario) -> Self {
        Self {
            id: c.id,
            account_id: c.account_id,
            scenario_id: c.scenario_id.clone(),
            completed_at: c.completed_at,
        }
    }
}

/// That the account completed a scenario (idempotent: the first completion is kept).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    #[schema(min_length = 1, max_length = 255)]
    pub scenario_id: String,
    /// When; now when absent.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A request for a sign-up (or sign-in) code, emailed to `email`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(max_length = 255)]
    pub display_name: String,
    /// A sign-in of an existing user rather than a new sign-up.
    #[serde(default)]
    pub is_signin: bool,
}

/// A sign-up was created and its code sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupAccepted {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A code typed back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupVerify {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(pattern = "^[A-Za-z0-9]{1,10}$")]
    pub code: String,
}

/// The code was right; the sign-up is now used.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupVerified {
    pub signup_id: Uuid,
    pub display_name: String,
    pub is_signin: bool,
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The token's `sub` (an account's `auth0_user_id`).
    pub user_id: String,
    pub role: String,
    /// The caller's account, when one has their `sub`.
    pub account_id: Option<Uuid>,
}

/// How many rows a clean-up removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    pub removed: u64,
}

/// An email to look accounts up by.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSearch {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
}

/// A job run (`migration.runs`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunOut {
    pub id: Uuid,
    /// `running`, `succeeded`, `failed`, `interrupted` or `abandoned`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<mystira_postgres::phase::RunSummary> for RunOut {
    fn from(r: mystira_postgres::phase::RunSummary) -> Self {
        Self {
            id: r.id,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// The migration's state, as the phase gates read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationState {
    pub retry_journal_entries: i64,
    pub retry_journal_oldest: Option<DateTime<Utc>>,
    pub outbox_rows: i64,
    pub outbox_aggregates: i64,
    pub outbox_oldest: Option<DateTime<Utc>>,
    pub latest_backfill: Option<RunOut>,
    pub latest_verify: Option<RunOut>,
    /// When the newest clean verify of the whole key space finished.
    pub latest_clean_verify: Option<DateTime<Utc>>,
    /// When the newest verify that found drift finished.
    pub latest_drift: Option<DateTime<Utc>>,
}

/// A quarantined document's entry (never the document: its values are personal data).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineOut {
    pub container: String,
    pub document_id: String,
    pub reason_code: String,
    /// What is wrong, naming fields and rules, never values.
    pub message: String,
    pub source_ts: Option<i64>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub attempts: i32,
}

impl From<mystira_postgres::bookkeeping::QuarantineEntry> for QuarantineOut {
    fn from(q: mystira_postgres::bookkeeping::QuarantineEntry) -> Self {
        Self {
            container: q.container,
            document_id: q.document_id,
            reason_code: q.reason_code,
            message: q.message,
            source_ts: q.source_ts,
            first_seen_at: q.first_seen_at,
            last_seen_at: q.last_seen_at,
            attempts: q.attempts,
        }
    }
}

/// A phase change (`PUT /v1/admin/phase`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseChange {
    /// `cosmos-only`, `dual-write-cosmos-read`, `dual-write-postgres-read`, `postgres-only`, or
    /// `0` to `3`.
    #[schema(min_length = 1, max_length = 40)]
    pub phase: String,
    /// Only this canary account (its own phase, overriding the domain's).
    pub account: Option<Uuid>,
    /// Why (recorded in the audit trail).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    /// Go past a refusing gate (the audit row says forced).
    #[serde(default)]
    pub force: bool,
    /// When the move needs an empty outbox, wait at most this long for the relay (at most 5).
    #[schema(maximum = 5)]
    pub wait_drain_seconds: Option<u64>,
    /// A domain move keeps the canary overrides it leaves on the wrong side (listed in the
    /// audit row) instead of clearing them (`phase set --keep-overrides`).
    #[serde(default)]
    pub keep_overrides: bool,
}

impl PhaseChange {
    pub fn phase(&self) -> Result<mystira_domain::phase::Phase, crate::Problem> {
        self.phase.trim().parse().map_err(|_| {
            crate::Problem::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "phase: one of cosmos-only, dual-write-cosmos-read, dual-write-postgres-read, \
                 postgres-only (or 0-3)",
            )
            .with("field", "phase")
        })
    }
}

/// A phase change's `reason` (the audit trail's): at most [`REASON_MAX`] characters (an empty
/// one is refused by the phase change itself, `invalid_body`).
pub fn check_reason(reason: &str) -> Result<(), crate::Problem> {
    mystira_domain::error::check_len("reason", reason, REASON_MAX).map_err(|e| super::invalid(&e))
}

/// The longest `reason` of a phase change, in characters.
pub const REASON_MAX: usize = 1_000;

/// Returning a canary account to the domain phase.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideClear {
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    #[serde(default)]
    pub force: bool,
    #[schema(maximum = 5)]
    pub wait_drain_seconds: Option<u64>,
}

/// A retry-journal entry, without the document it carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct JournalEntryOut {
    pub id: i64,
    pub container: String,
    pub document_id: String,
    pub key: Option<Uuid>,
    /// `upsert` or `delete`.
    pub op: String,
    /// `router`, or `file:<name>` for an entry moved from a local journal file.
    pub origin: String,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: i32,
    /// The failure class of the last replay, never a value.
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<mystira_postgres::journal::Waiting> for JournalEntryOut {
    fn from(w: mystira_postgres::journal::Waiting) -> Self {
        Self {
            id: w.id,
            container: w.container,
            document_id: w.document_id,
            key: w.key,
            op: w.op,
            origin: w.origin,
            enqueued_at: w.enqueued_at,
            attempts: w.attempts,
            last_error: w.last_error,
            next_attempt_at: w.next_attempt_at,
        }
    }
}

/// An aggregate waiting in the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxAggregateOut {
    pub container: String,
    pub key: Uuid,
    /// Changes waiting since its last delivery.
    pub rows: i64,
    pub oldest: DateTime<Utc>,
    pub attempts: i32,
    /// The failure class of its newest failed attempt, never a value.
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<mystira_postgres::outbox::WaitingAggregate> for OutboxAggregateOut {
    fn from(a: mystira_postgres::outbox::WaitingAggregate) -> Self {
        Self {
            container: a.container,
            key: a.key,
            rows: a.rows,
            oldest: a.oldest,
            attempts: a.attempts,
            last_error: a.last_error,
            next_attempt_at: a.next_attempt_at,
        }
    }
}

/// A job run with what it recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunRecordOut {
    pub id: Uuid,
    /// What it read (an export directory, a Cosmos account's endpoint and database).
    pub source: String,
    /// `running`, `succeeded`, `failed`, `interrupted` or `abandoned`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Its counts (verify: its `outcome` and what it compared).
    #[schema(value_type = Object)]
    pub counts: serde_json::Value,
    /// What it covered and how it was configured.
    #[schema(value_type = Object)]
    pub scope: serde_json::Value,
}

impl From<mystira_postgres::phase::RunRecord> for RunRecordOut {
    fn from(r: mystira_postgres::phase::RunRecord) -> Self {
        Self {
            id: r.id,
            source: r.source,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            counts: r.counts,
            scope: r.scope,
        }
    }
}

/// A phase change, as audited.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionOut {
    pub id: i64,
    pub from_phase: String,
    pub to_phase: String,
    pub changed_at: DateTime<Utc>,
    /// Who: an OS user, or `api:<sub>` for a change made over this API.
    pub changed_by: String,
    pub reason: String,
    /// Whether a refusing gate was forced past.
    pub forced: bool,
    /// The canary account, or null for the domain-wide phase.
    pub account_id: Option<Uuid>,
}

impl From<mystira_postgres::phase::Transition> for TransitionOut {
    fn from(t: mystira_postgres::phase::Transition) -> Self {
        Self {
            id: t.id,
            from_phase: t.from_phase.name().to_owned(),
            to_phase: t.to_phase.name().to_owned(),
            changed_at: t.changed_at,
            changed_by: t.changed_by,
            reason: t.reason,
            forced: t.forced,
            account_id: t.account_id,
        }
    }
}
