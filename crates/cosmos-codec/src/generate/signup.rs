//! Pending sign-up documents (magic-link and code sign-ups).

use chrono::Duration;
use serde_json::{Value, json};

use super::shape::Era;
use super::{DocKind, Documents, Problem};
use crate::codec::{Container, format_dotnet};

impl Documents {
    pub(super) fn generate_signup(&mut self, n: u64) {
        let problem = self.problem_for(Container::PendingSignups);
        let era = if self.rng.chance(0.5) {
            Era::Ef9
        } else {
            Era::Bare
        };
        let (mut obj, _) = self.start_doc(era, "PendingSignup");
        let email = format!("signup{n}.{}@example.com", self.rng.hex(4, false));
        obj.insert("email".into(), json!(email));
        obj.insert("DisplayName".into(), json!(format!("New Parent {n}")));
        let created = self.rng.time();
        let created_s = self.rng.date_string(created);
        obj.insert("CreatedAt".into(), json!(created_s));
        obj.insert(
            "ExpiresAt".into(),
            json!(format_dotnet(created + Duration::minutes(15))),
        );
        let magic_link = self.rng.chance(0.2);
        if magic_link {
            obj.insert(
                "VerificationTokenHash".into(),
                json!(self.rng.hex(64, false)),
            );
            let status = self.rng.below(5);
            obj.insert("Status".into(), json!(status));
            let verified = self.rng.later(created, 600);
            obj.insert(
                "VerifiedAt".into(),
                if status >= 1 {
                    json!(format_dotnet(verified))
                } else {
                    Value::Null
                },
            );
            obj.insert(
                "ConsumedAt".into(),
                if status >= 2 {
                    json!(format_dotnet(self.rng.later(verified, 60)))
                } else {
                    Value::Null
                },
            );
        } else {
            obj.insert(
                "Code".into(),
                json!(format!("{:06}", self.rng.below(1_000_000))),
            );
            obj.insert("IsUsed".into(), json!(self.rng.chance(0.4)));
            obj.insert("IsSignin".into(), json!(self.rng.chance(0.3)));
            obj.insert("FailedAttempts".into(), json!(self.rng.below(6)));
        }
        self.system_fields(&mut obj, created);

        let base_kind = if magic_link {
            DocKind::MagicLinkSignup
        } else {
            DocKind::Clean
        };
        let mut kind = base_kind;
        let mut foreign = false;
        match problem {
            Some(Problem::ForeignType) => foreign = true,
            // Email problems are planted in code sign-ups only: the kind names one thing per
            // document (and planting in magic-link ones too would change the data every seed
            // has produced so far).
            Some(p) if !magic_link => {
                self.plant_email_problem(&mut obj, "email", p, n);
                kind = DocKind::Problem(p);
            }
            _ => {}
        }
        self.push(Container::PendingSignups, kind, Value::Object(obj));
        if foreign {
            let doc = self.foreign_doc();
            self.push(
                Container::PendingSignups,
                DocKind::Problem(Problem::ForeignType),
                doc,
            );
        }
    }
}
