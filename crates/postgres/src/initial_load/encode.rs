//! The rows of each document kind in COPY form: the same columns and values as the upsert
//! path's `insert`s in `bulk` (a row copied here must equal the row written there).

use super::{CopyDocument, PageRows};
use crate::bulk::{AccountDocument, ProfileDocument, SignupDocument};

impl CopyDocument for AccountDocument {
    const TABLES: &'static [(&'static str, &'static str)] = &[
        (
            "accounts",
            "id, cosmos_id, auth0_user_id, email, display_name, role, settings, created_at, \
             last_login_at",
        ),
        (
            "subscriptions",
            "id, cosmos_id, account_id, type, product_id, tier, is_active, valid_until, \
             start_date, end_date, purchase_token, last_verified, purchased_scenarios, \
             created_at, updated_at",
        ),
        (
            "completed_scenarios",
            "id, account_id, scenario_id, completed_at",
        ),
    ];

    fn encode(&self, page: &mut PageRows) {
        let a = &self.account;
        let settings = serde_json::to_value(&a.settings).unwrap_or_default();
        page.table("accounts")
            .row(9)
            .uuid(a.id)
            .opt_text(a.cosmos_id.as_deref())
            .opt_text(a.auth0_user_id.as_deref())
            .text(a.email.as_str())
            .text(&a.display_name)
            .text(a.role.as_str())
            .jsonb(&settings)
            .ts(a.created_at)
            .ts(a.last_login_at);
        if let Some(s) = &self.subscription {
            page.table("subscriptions")
                .row(15)
                .uuid(s.id)
                .opt_text(s.cosmos_id.as_deref())
                .uuid(s.account_id)
                .text(s.subscription_type.as_str())
                .opt_text(s.product_id.as_deref())
                .text(&s.tier)
                .bool(s.is_active)
                .opt_ts(s.valid_until)
                .opt_ts(s.start_date)
                .opt_ts(s.end_date)
                .opt_text(s.purchase_token.as_ref().map(|t| t.expose().as_str()))
                .opt_ts(s.last_verified)
                .text_array(&s.purchased_scenarios)
                .ts(s.created_at)
                .ts(s.updated_at);
        }
        let scenarios = page.table("completed_scenarios");
        for c in &self.completed_scenarios {
            scenarios
                .row(4)
                .uuid(c.id)
                .uuid(c.account_id)
                .text(&c.scenario_id)
                .ts(c.completed_at);
        }
    }
}

impl CopyDocument for ProfileDocument {
    const TABLES: &'static [(&'static str, &'static str)] = &[
        (
            "user_profiles",
            "id, cosmos_id, account_id, name, age_group, date_of_birth, is_guest, is_npc, \
             pronouns, bio, avatar_media_id, selected_avatar_media_id, preferred_themes, \
             has_completed_onboarding, created_at, updated_at",
        ),
        (
            "user_badges",
            "id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name, \
             badge_message, axis, trigger_value, threshold, earned_at, game_session_id, \
             scenario_id, image_id",
        ),
    ];

    fn encode(&self, page: &mut PageRows) {
        let p = &self.profile;
        page.table("user_profiles")
            .row(16)
            .uuid(p.id)
            .opt_text(p.cosmos_id.as_deref())
            .opt_uuid(p.account_id)
            .text(&p.name)
            .text(p.age_group.as_str())
            .opt_date(p.date_of_birth.as_ref().map(|d| *d.expose()))
            .bool(p.is_guest)
            .bool(p.is_npc)
            .opt_text(p.pronouns.as_deref())
            .opt_text(p.bio.as_deref())
            .opt_text(p.avatar_media_id.as_deref())
            .opt_text(p.selected_avatar_media_id.as_deref())
            .jsonb(&serde_json::json!(p.preferred_themes))
            .bool(p.has_completed_onboarding)
            .ts(p.created_at)
            .ts(p.updated_at);
        let badges = page.table("user_badges");
        for b in &self.badges {
            badges
                .row(14)
                .uuid(b.id)
                .opt_text(b.cosmos_id.as_deref())
                .uuid(b.user_profile_id)
                .text(&b.badge_configuration_id)
                .opt_text(b.badge_id.as_deref())
                .text(&b.badge_name)
                .text(&b.badge_message)
                .text(&b.axis)
                .f32(b.trigger_value)
                .f32(b.threshold)
                .ts(b.earned_at)
                .opt_text(b.game_session_id.as_deref())
                .opt_text(b.scenario_id.as_deref())
                .text(&b.image_id);
        }
    }

    fn account_ref_to_keep(&self) -> Option<&str> {
        match (self.account_ref.as_deref(), self.profile.account_id) {
            (Some(r), Some(a)) if r != a.hyphenated().to_string() => Some(r),
            _ => None,
        }
    }
}

impl CopyDocument for SignupDocument {
    const TABLES: &'static [(&'static str, &'static str)] = &[(
        "pending_signups",
        "id, cosmos_id, email, display_name, code, verification_token_hash, status, \
         verified_at, consumed_at, created_at, expires_at, is_used, is_signin, failed_attempts",
    )];

    fn encode(&self, page: &mut PageRows) {
        let s = &self.signup;
        page.table("pending_signups")
            .row(14)
            .uuid(s.id)
            .opt_text(s.cosmos_id.as_deref())
            .text(s.email.as_str())
            .text(&s.display_name)
            .opt_text(s.code.as_ref().map(|c| c.as_str()))
            .opt_text(s.token_hash())
            .opt_i16(s.magic_link.as_ref().map(|m| m.status.get()))
            .opt_ts(s.magic_link.as_ref().and_then(|m| m.verified_at))
            .opt_ts(s.magic_link.as_ref().and_then(|m| m.consumed_at))
            .ts(s.created_at)
            .ts(s.expires_at)
            .bool(s.is_used)
            .bool(s.is_signin)
            .i32(s.failed_attempts);
    }
}
