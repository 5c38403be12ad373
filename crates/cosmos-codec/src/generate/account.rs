//! Account documents: the account with its subscription and settings (and, through it, the
//! account's profiles and sign-ups).

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::shape::Era;
use super::{DocKind, Documents, Problem};
use crate::codec::{Container, DOTNET_MAX_VALUE};

const SUBSCRIPTION_LABELS: [&str; 5] = ["Free", "Monthly", "Annual", "Lifetime", "Individual"];

impl Documents {
    pub(super) fn generate_account(&mut self, n: u64) {
        let problem = self.problem_for(Container::Accounts);
        let era = self.era();
        let (mut obj, account_key_source) = self.start_doc(era, "Account");
        let created = self.rng.time();
        let last_login = self.rng.later(created, 200 * 86_400);

        // The user id property was renamed with EF 9.
        let user_id_field = if era == Era::Ef9 {
            "ExternalUserId"
        } else {
            "Auth0UserId"
        };
        let user_id = match self.rng.below(10) {
            0 => String::new(),
            1..=2 => self.rng.uuid().hyphenated().to_string(),
            _ => format!("auth0|{}", self.rng.hex(32, false)),
        };
        obj.insert(user_id_field.into(), json!(user_id));
        let email = self.email(n, false);
        obj.insert("Email".into(), json!(email));
        obj.insert("DisplayName".into(), json!(format!("Test Parent {n}")));
        let role = *self.rng.pick(&[
            "Guest",
            "Guest",
            "Guest",
            "User",
            "User",
            "Admin",
            "SuperAdmin",
        ]);
        obj.insert("Role".into(), json!(role));

        let profile_count = self.rng.range(1, 4);
        let profile_eras_and_ids: Vec<(Era, Map<String, Value>, String)> = (0..profile_count)
            .map(|_| {
                let (o, _) = self.start_doc(era, "UserProfile");
                let id = o
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (era, o, id)
            })
            .collect();
        let mut hint: Vec<String> = profile_eras_and_ids
            .iter()
            .map(|(_, o, id)| o.get("Id").and_then(Value::as_str).unwrap_or(id).to_owned())
            .collect();
        if self.rng.chance(0.1) {
            // UserProfileIds drifts from the truth.
            hint.pop();
        }
        let sep = if self.rng.chance(0.2) { ", " } else { "," };
        obj.insert("UserProfileIds".into(), json!(hint.join(sep)));

        let completed: Vec<String> = {
            let count = self.rng.below(7);
            let start = self.rng.below(100);
            (0..count)
                .map(|k| format!("scenario-{}", start + k * 3))
                .collect()
        };
        obj.insert("CompletedScenarioIds".into(), json!(completed));
        let subscription = if self.rng.chance(0.9) {
            self.subscription(era, created)
        } else {
            Value::Null
        };
        obj.insert("Subscription".into(), subscription);
        let settings = self.settings(era);
        obj.insert("Settings".into(), settings);
        let created_s = self.rng.date_string(created);
        let login_s = self.rng.date_string(last_login);
        obj.insert("CreatedAt".into(), json!(created_s));
        obj.insert("LastLoginAt".into(), json!(login_s));
        self.system_fields(&mut obj, last_login);

        let mut kind = DocKind::Clean;
        let mut foreign = false;
        match problem {
            Some(
                p @ (Problem::EmptyEmail
                | Problem::WhitespaceEmail
                | Problem::DigitTldEmail
                | Problem::ApostropheEmail
                | Problem::PunycodeEmail),
            ) => {
                self.plant_email_problem(&mut obj, "Email", p, n);
                kind = DocKind::Problem(p);
            }
            Some(Problem::NullRole) => {
                obj.insert("Role".into(), Value::Null);
                kind = DocKind::Problem(Problem::NullRole);
            }
            Some(Problem::OddCaseRole) => {
                let odd = *self.rng.pick(&["admin", "GUEST", "user", "superADMIN"]);
                obj.insert("Role".into(), json!(odd));
                kind = DocKind::Problem(Problem::OddCaseRole);
            }
            // A foreign document is planted beside the account, which stays clean.
            Some(Problem::ForeignType) => foreign = true,
            Some(_) | None => {}
        }
        self.push(Container::Accounts, kind, Value::Object(obj));
        if foreign {
            let doc = self.foreign_doc();
            self.push(
                Container::Accounts,
                DocKind::Problem(Problem::ForeignType),
                doc,
            );
        }

        for (era, obj, _) in profile_eras_and_ids {
            self.generate_profile(era, obj, &account_key_source, created);
        }
        if self.rng.chance(0.1) {
            self.generate_signup(n);
        }
    }

    pub(super) fn subscription(&mut self, era: Era, created: DateTime<Utc>) -> Value {
        let mut s = Map::new();
        // Embedded Ids exist only in documents from December 2025 on (EF 9 era, mostly).
        if era == Era::Ef9 && self.rng.chance(0.7) {
            s.insert("Id".into(), json!(self.rng.uuid().hyphenated().to_string()));
        }
        let code = self.rng.below(5);
        let ty = if self.rng.chance(0.05) {
            json!(SUBSCRIPTION_LABELS[code as usize])
        } else {
            json!(code)
        };
        s.insert("Type".into(), ty);
        let paid = code != 0;
        s.insert(
            "ProductId".into(),
            if paid {
                json!(format!(
                    "mystira.{}",
                    SUBSCRIPTION_LABELS[code as usize].to_lowercase()
                ))
            } else {
                Value::Null
            },
        );
        let start = self.rng.later(created, 30 * 86_400);
        let valid_until = if paid && code != 3 {
            json!(self.rng.date_string(start + Duration::days(365)))
        } else {
            Value::Null
        };
        s.insert("ValidUntil".into(), valid_until);
        s.insert("IsActive".into(), json!(self.rng.chance(0.8)));
        s.insert(
            "PurchaseToken".into(),
            if paid {
                json!(format!("tok_{}", self.rng.hex(40, false)))
            } else {
                Value::Null
            },
        );
        s.insert(
            "LastVerified".into(),
            if paid {
                let at = self.rng.later(start, 60 * 86_400);
                json!(self.rng.date_string(at))
            } else {
                Value::Null
            },
        );
        let scenarios: Vec<String> = (0..self.rng.below(4))
            .map(|k| format!("scenario-{}", 200 + k))
            .collect();
        let sep = if self.rng.chance(0.2) { ", " } else { "," };
        s.insert("PurchasedScenarios".into(), json!(scenarios.join(sep)));
        s.insert("Tier".into(), json!(if paid { "Premium" } else { "Free" }));
        s.insert("StartDate".into(), json!(self.rng.date_string(start)));
        let end = if self.rng.chance(0.6) || !paid {
            json!(DOTNET_MAX_VALUE)
        } else {
            json!(self.rng.date_string(start + Duration::days(400)))
        };
        s.insert("EndDate".into(), end);
        Value::Object(s)
    }

    pub(super) fn settings(&mut self, era: Era) -> Value {
        let mut s = Map::new();
        if era == Era::Ef9 && self.rng.chance(0.7) {
            s.insert("Id".into(), json!(self.rng.uuid().hyphenated().to_string()));
        }
        s.insert("CacheCredentials".into(), json!(self.rng.chance(0.5)));
        s.insert("RequireAuthOnStartup".into(), json!(self.rng.chance(0.2)));
        s.insert(
            "PreferredLanguage".into(),
            json!(*self.rng.pick(&["en", "en", "en", "es", "fr", "de"])),
        );
        s.insert("NotificationsEnabled".into(), json!(self.rng.chance(0.7)));
        s.insert(
            "Theme".into(),
            json!(*self.rng.pick(&["light", "dark", "system", ""])),
        );
        if self.rng.chance(0.1) {
            s.insert("FontScale".into(), json!(1.25));
        }
        Value::Object(s)
    }
}
