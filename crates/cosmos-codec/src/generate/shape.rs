//! What every generated document shares: its era (which discriminator and id form the app
//! wrote), its id, its Cosmos system fields, emails and the email problems planted in them.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{DocKind, Documents, GeneratedDoc, Problem};
use crate::codec::{Container, format_dotnet};

/// The document era: which discriminator and id form the app wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Era {
    /// EF Core 8: `Discriminator`, sometimes `"id": "Type|<guid>"` + `Id`.
    Ef8 { prefixed_id: bool },
    /// EF Core 9: `$type`.
    Ef9,
    /// No discriminator at all.
    Bare,
}

const EMAIL_DOMAINS: [&str; 4] = [
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
];

impl Documents {
    pub(super) fn push(&mut self, container: Container, kind: DocKind, value: Value) {
        self.pending.push_back(GeneratedDoc {
            container,
            kind,
            value,
        });
    }

    /// Whether to plant a problem, and which one, for a document of `container`.
    pub(super) fn problem_for(&mut self, container: Container) -> Option<Problem> {
        let dirty = self.opts.dirty;
        if dirty > 0.0 && self.rng.chance(dirty) {
            Some(*self.rng.pick(Problem::for_container(container)))
        } else {
            None
        }
    }

    pub(super) fn era(&mut self) -> Era {
        match self.rng.below(20) {
            0..=2 => Era::Ef8 { prefixed_id: false },
            3..=5 => Era::Ef8 { prefixed_id: true },
            6..=7 => Era::Bare,
            _ => Era::Ef9,
        }
    }

    /// A document id in one of the seen forms; returns (`id`, the key source: `Id` or `id`).
    pub(super) fn doc_id(&mut self, era: Era, entity: &str) -> (String, Option<String>) {
        let raw = match self.rng.below(40) {
            0..=2 => self.rng.uuid().hyphenated().to_string().to_uppercase(),
            3..=4 => self.rng.hex(26, true),
            5 => format!("client-{}", self.rng.hex(10, false)),
            _ => self.rng.uuid().hyphenated().to_string(),
        };
        match era {
            Era::Ef8 { prefixed_id: true } => (format!("{entity}|{raw}"), Some(raw)),
            _ => (raw, None),
        }
    }

    pub(super) fn start_doc(&mut self, era: Era, entity: &str) -> (Map<String, Value>, String) {
        let (id, separate_id) = self.doc_id(era, entity);
        let mut obj = Map::new();
        obj.insert("id".into(), json!(id));
        let key_source = separate_id.clone().unwrap_or_else(|| id.clone());
        if let Some(real) = separate_id {
            obj.insert("Id".into(), json!(real));
        }
        match era {
            Era::Ef8 { .. } => {
                obj.insert("Discriminator".into(), json!(entity));
            }
            Era::Ef9 => {
                obj.insert("$type".into(), json!(entity));
            }
            Era::Bare => {}
        }
        (obj, key_source)
    }

    pub(super) fn system_fields(
        &mut self,
        obj: &mut Map<String, Value>,
        last_write: DateTime<Utc>,
    ) {
        let rid = format!("{}AAAAAAAAAA==", self.rng.base64ish(12));
        let ts = last_write.timestamp() + self.rng.below(86_400) as i64;
        let etag = format!(
            "\"{}-0000-0d00-0000-{}0000\"",
            self.rng.hex(8, false),
            self.rng.hex(8, false)
        );
        obj.insert(
            "_self".into(),
            json!(format!("dbs/kV4mAA==/colls/kV4mAKY9wT0=/docs/{rid}/")),
        );
        obj.insert("_rid".into(), json!(rid));
        obj.insert("_etag".into(), json!(etag));
        obj.insert("_attachments".into(), json!("attachments/"));
        obj.insert("_ts".into(), json!(ts));
    }

    pub(super) fn email(&mut self, n: u64, lower: bool) -> String {
        let domain = *self.rng.pick(&EMAIL_DOMAINS);
        let local = format!("user{n}.{}", self.rng.hex(4, false));
        if !lower && self.rng.chance(0.2) {
            // Stored as typed: mixed case happens.
            format!(
                "User{n}.{}@{}",
                self.rng.hex(4, true),
                domain.to_uppercase()
            )
        } else {
            format!("{local}@{domain}")
        }
    }

    /// Replaces the email at `field` according to an email problem.
    pub(super) fn plant_email_problem(
        &mut self,
        obj: &mut Map<String, Value>,
        field: &str,
        p: Problem,
        n: u64,
    ) {
        let value = match p {
            Problem::EmptyEmail => String::new(),
            Problem::WhitespaceEmail => {
                if self.rng.chance(0.5) {
                    "   ".to_owned()
                } else {
                    format!("user {n}@example.com")
                }
            }
            Problem::DigitTldEmail => format!("user{n}@example.123"),
            Problem::ApostropheEmail => format!("o'brien.{n}@example.com"),
            Problem::PunycodeEmail => format!("user{n}@example.xn--p1ai"),
            _ => return,
        };
        obj.insert(field.into(), json!(value));
    }

    pub(super) fn foreign_doc(&mut self) -> Value {
        let t = self.rng.time();
        let mut obj = Map::new();
        obj.insert("id".into(), json!(self.rng.uuid().hyphenated().to_string()));
        let ty = *self.rng.pick(&["Scenario", "GameSession", "MediaAsset"]);
        obj.insert("$type".into(), json!(ty));
        obj.insert("Title".into(), json!("The Dragon Who Lost Her Roar"));
        obj.insert("CreatedAt".into(), json!(format_dotnet(t)));
        self.system_fields(&mut obj, t);
        Value::Object(obj)
    }
}
