//! The field groups of each entity and their digests: what a write sets, computed the same way
//! from what the load generator sent and from what the check reads back.

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use mystira_domain::{Account, PendingSignup, Subscription, UserBadge, UserProfile};
use uuid::Uuid;

use super::record::Groups;

/// The md5 (lower-case hex) of the key, the group and the values, each length-prefixed so that
/// no two different lists of values give the same text.
pub(super) fn digest(key: Uuid, group: &str, values: &[&str]) -> String {
    let mut h = Md5::new();
    h.update(key.as_bytes());
    for part in std::iter::once(group).chain(values.iter().copied()) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn millis(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

pub(super) fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("\u{0}none")
}

/// The field groups of each entity and their digests: what a write sets, computed the same way
/// from what the load generator sent and from what the check reads back. Only fields that
/// survive both stores' round trip unchanged are used (times at millisecond precision; the load
/// generator writes millisecond times).
#[derive(Debug, Clone, Copy)]
pub struct FieldGroups;

impl FieldGroups {
    /// `account` (who the account is) and `login` (`last_login_at`): what `create` and `update`
    /// set.
    pub fn account(a: &Account) -> Groups {
        let mut g = Groups::new();
        g.insert(
            "account".into(),
            digest(
                a.id,
                "account",
                &[
                    &a.email.normalized(),
                    &a.display_name,
                    a.role.as_str(),
                    opt(a.auth0_user_id.as_deref()),
                    &a.settings.theme,
                    &a.settings.preferred_language,
                ],
            ),
        );
        g.extend(Self::login(a.id, a.last_login_at));
        g
    }

    /// `login`: what `record_login` sets.
    pub fn login(account: Uuid, at: DateTime<Utc>) -> Groups {
        Groups::from([("login".into(), digest(account, "login", &[&millis(at)]))])
    }

    /// `subscription`, in the account's aggregate.
    pub fn subscription(s: &Subscription) -> Groups {
        let valid_until = s.valid_until.map(millis);
        Groups::from([(
            "subscription".into(),
            digest(
                s.account_id,
                "subscription",
                &[
                    &s.subscription_type.code().to_string(),
                    &s.tier,
                    opt(s.product_id.as_deref()),
                    if s.is_active { "active" } else { "inactive" },
                    opt(valid_until.as_deref()),
                ],
            ),
        )])
    }

    /// `completed:<scenario>`, in the account's aggregate (Cosmos keeps no completion time).
    pub fn completion(account: Uuid, scenario_id: &str) -> Groups {
        let group = format!("completed:{scenario_id}");
        let d = digest(account, &group, &[scenario_id]);
        Groups::from([(group, d)])
    }

    /// `profile` (every field `update` replaces but onboarding) and `onboarded`.
    pub fn profile(p: &UserProfile) -> Groups {
        let account = p.account_id.map(|a| a.to_string());
        let mut g = Groups::from([(
            "profile".into(),
            digest(
                p.id,
                "profile",
                &[
                    &p.name,
                    p.age_group.as_str(),
                    opt(p.bio.as_deref()),
                    opt(p.pronouns.as_deref()),
                    &p.preferred_themes.join("\u{1f}"),
                    if p.is_guest { "guest" } else { "member" },
                    opt(account.as_deref()),
                ],
            ),
        )]);
        g.extend(Self::onboarded(p.id, p.has_completed_onboarding));
        g
    }

    /// `onboarded`: what `mark_onboarded` sets.
    pub fn onboarded(profile: Uuid, done: bool) -> Groups {
        let v = if done { "onboarded" } else { "not onboarded" };
        Groups::from([("onboarded".into(), digest(profile, "onboarded", &[v]))])
    }

    /// `badge:<configuration>`, in the profile's aggregate.
    pub fn badge(b: &UserBadge) -> Groups {
        let group = format!("badge:{}", b.badge_configuration_id);
        let d = digest(
            b.user_profile_id,
            &group,
            &[&b.badge_configuration_id, &b.badge_name, &b.axis],
        );
        Groups::from([(group, d)])
    }

    /// `signup` (who asked), `attempts` (wrong codes counted) and `used`.
    pub fn signup(s: &PendingSignup) -> Groups {
        let mut g = Groups::from([(
            "signup".into(),
            digest(
                s.id,
                "signup",
                &[
                    &s.email.normalized(),
                    &s.display_name,
                    if s.is_signin { "sign-in" } else { "sign-up" },
                ],
            ),
        )]);
        g.extend(Self::attempts(s.id, s.failed_attempts));
        g.extend(Self::used(s.id, s.is_used));
        g
    }

    /// `attempts`: what a wrong code sets.
    pub fn attempts(signup: Uuid, failed: i32) -> Groups {
        Groups::from([(
            "attempts".into(),
            digest(signup, "attempts", &[&failed.to_string()]),
        )])
    }

    /// `used`: what `mark_used` sets.
    pub fn used(signup: Uuid, used: bool) -> Groups {
        let v = if used { "used" } else { "open" };
        Groups::from([("used".into(), digest(signup, "used", &[v]))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_the_key_and_never_show_the_values() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let d = FieldGroups::attempts(a, 2);
        assert_ne!(d, FieldGroups::attempts(b, 2));
        assert_ne!(d, FieldGroups::attempts(a, 3));
        assert_eq!(d["attempts"].len(), 32, "an md5 in hex");
    }
}
