//! The bodies of `/v1/profiles` (and an account's profiles): a profile, with the caps on its
//! unbounded fields, and its badges.

use chrono::{DateTime, NaiveDate, Utc};
use mystira_domain::input::{self, check_list, check_text};
use mystira_domain::{AgeGroup, Secret, UserBadge, UserProfile, ValidationError};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `absent` → `None` (keep), `null` → `Some(None)` (clear), a value → `Some(Some(v))`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
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
