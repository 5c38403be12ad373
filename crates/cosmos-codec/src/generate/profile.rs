//! Profile documents and their badges.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::shape::Era;
use super::{DocKind, Documents, Problem};
use crate::codec::Container;

const THEMES: [&str; 6] = [
    "Classic Fantasy",
    "Magic & Wizards",
    "Space Adventure",
    "Underwater Worlds",
    "Dragons",
    "Fairy Tales",
];
const CHILD_NAMES: [&str; 10] = [
    "Ava", "Noah", "Mia", "Leo", "Zoe", "Finn", "Ivy", "Milo", "Luna", "Otto",
];
const AXES: [&str; 5] = ["courage", "kindness", "curiosity", "wisdom", "teamwork"];
const LEGACY_AGE_GROUPS: [&str; 5] = ["toddlers", "early_childhood", "school", "preteens", "adult"];
const CURRENT_AGE_GROUPS: [&str; 6] = ["1-2", "3-5", "6-9", "10-12", "13-18", "19-150"];

impl Documents {
    pub(super) fn generate_profile(
        &mut self,
        era: Era,
        mut obj: Map<String, Value>,
        account_key_source: &str,
        account_created: DateTime<Utc>,
    ) {
        let problem = self.problem_for(Container::UserProfiles);
        let profile_id = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let created = self.rng.later(account_created, 100 * 86_400);
        let updated = self.rng.later(created, 100 * 86_400);
        let name = *self.rng.pick(&CHILD_NAMES);
        obj.insert("Name".into(), json!(name));
        let account_ref = if problem == Some(Problem::OrphanProfile) {
            self.rng.uuid().hyphenated().to_string()
        } else {
            account_key_source.to_owned()
        };
        obj.insert("AccountId".into(), json!(account_ref));
        let themes: Vec<&str> = (0..self.rng.below(4))
            .map(|k| THEMES[(k * 2) as usize % THEMES.len()])
            .collect();
        obj.insert("PreferredFantasyThemes".into(), json!(themes.join(",")));
        let dob = if self.rng.chance(0.7) {
            let year = 2010 + self.rng.below(14);
            let day = format!(
                "{year}-{:02}-{:02}T00:00:00",
                self.rng.range(1, 12),
                self.rng.range(1, 28)
            );
            json!(if self.rng.chance(0.5) {
                day
            } else {
                format!("{day}Z")
            })
        } else {
            Value::Null
        };
        obj.insert("DateOfBirth".into(), dob);
        obj.insert("IsGuest".into(), json!(self.rng.chance(0.1)));
        obj.insert("IsNpc".into(), json!(self.rng.chance(0.02)));
        obj.insert(
            "Pronouns".into(),
            if self.rng.chance(0.3) {
                json!(*self.rng.pick(&["she/her", "he/him", "they/them"]))
            } else {
                Value::Null
            },
        );
        obj.insert(
            "Bio".into(),
            if self.rng.chance(0.2) {
                json!("Loves stories about dragons.")
            } else {
                Value::Null
            },
        );
        let avatar = format!("avatar-{}", self.rng.below(50));
        obj.insert("AvatarMediaId".into(), json!(avatar));
        obj.insert(
            "SelectedAvatarMediaId".into(),
            if self.rng.chance(0.5) {
                json!(avatar)
            } else {
                Value::Null
            },
        );
        obj.insert("HasCompletedOnboarding".into(), json!(self.rng.chance(0.8)));
        let age = if problem == Some(Problem::UnknownAgeGroup) {
            *self.rng.pick(&["teens", "kids", "grown-ups", "baby"])
        } else if self.rng.chance(0.15) {
            *self.rng.pick(&LEGACY_AGE_GROUPS)
        } else {
            *self.rng.pick(&CURRENT_AGE_GROUPS)
        };
        obj.insert("AgeGroupName".into(), json!(age));

        let mut badge_count = self.rng.below(11);
        if problem == Some(Problem::DuplicateBadges) {
            badge_count = badge_count.max(1);
        }
        let first_config = self.rng.below(40);
        let mut badges: Vec<Value> = (0..badge_count)
            .map(|k| {
                // Distinct configurations: duplicates are only planted on purpose.
                let config = format!("badge-config-{}", first_config + k);
                let earned = self.rng.later(created, 90 * 86_400);
                self.badge(era, &profile_id, &config, earned)
            })
            .collect();
        if problem == Some(Problem::DuplicateBadges) {
            let idx = self.rng.below(badges.len() as u64) as usize;
            let config = badges[idx]["BadgeConfigurationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // The app appended again later: the copy is never the earliest.
            let earned = updated + Duration::days(1);
            let copy = self.badge(Era::Ef9, &profile_id, &config, earned);
            badges.push(copy);
        }
        obj.insert("EarnedBadges".into(), Value::Array(badges));
        let created_s = self.rng.date_string(created);
        let updated_s = self.rng.date_string(updated);
        obj.insert("CreatedAt".into(), json!(created_s));
        obj.insert("UpdatedAt".into(), json!(updated_s));
        self.system_fields(&mut obj, updated);

        let (kind, foreign) = match problem {
            None => (DocKind::Clean, false),
            Some(Problem::ForeignType) => (DocKind::Clean, true),
            Some(p) => (DocKind::Problem(p), false),
        };
        self.push(Container::UserProfiles, kind, Value::Object(obj));
        if foreign {
            let doc = self.foreign_doc();
            self.push(
                Container::UserProfiles,
                DocKind::Problem(Problem::ForeignType),
                doc,
            );
        }
    }

    pub(super) fn badge(
        &mut self,
        era: Era,
        profile_id: &str,
        config: &str,
        earned: DateTime<Utc>,
    ) -> Value {
        let mut b = Map::new();
        if era == Era::Ef9 || self.rng.chance(0.5) {
            b.insert("Id".into(), json!(self.rng.uuid().hyphenated().to_string()));
        }
        b.insert("UserProfileId".into(), json!(profile_id));
        b.insert("BadgeConfigurationId".into(), json!(config));
        b.insert(
            "BadgeId".into(),
            if self.rng.chance(0.7) {
                json!(format!("badge-{}", self.rng.below(100)))
            } else {
                Value::Null
            },
        );
        let axis = *self.rng.pick(&AXES);
        b.insert("BadgeName".into(), json!(format!("Brave {axis}")));
        b.insert("BadgeMessage".into(), json!("You did it!"));
        b.insert("Axis".into(), json!(axis));
        // Quarter steps: exact in f32 and short in JSON.
        b.insert(
            "TriggerValue".into(),
            json!(self.rng.below(40) as f64 / 4.0),
        );
        b.insert("Threshold".into(), json!(self.rng.below(40) as f64 / 4.0));
        let earned_s = self.rng.date_string(earned);
        b.insert("EarnedAt".into(), json!(earned_s));
        b.insert(
            "GameSessionId".into(),
            if self.rng.chance(0.8) {
                json!(self.rng.uuid().hyphenated().to_string())
            } else {
                Value::Null
            },
        );
        b.insert(
            "ScenarioId".into(),
            json!(format!("scenario-{}", self.rng.below(100))),
        );
        b.insert(
            "ImageId".into(),
            json!(format!("img-{}", self.rng.below(100))),
        );
        Value::Object(b)
    }
}
