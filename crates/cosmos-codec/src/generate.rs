//! A deterministic synthetic data set in Cosmos's own document shapes, of any size.
//!
//! For `accounts` = N it produces N account documents, 1–4 profiles per account (0–10 badges
//! each), about N/10 pending sign-ups, spread over every historical shape the codec must read:
//! EF 8 documents (`Discriminator`, some with `"id": "Type|<guid>"` and the real id in `Id`),
//! EF 9 documents (`$type`), documents with neither; `Auth0UserId` vs `ExternalUserId` (and
//! `""` for none); subscriptions of every type (a few with the type as a label), with and
//! without their own `Id`, `DateTime.MaxValue` end dates; settings with and without `Id` and
//! with unknown keys; dates with 0–7 fractional digits, with `Z`, an offset or no offset;
//! legacy age groups; non-UUID ids (26-character upper-case hex, client ids) and upper-case
//! GUIDs, referenced by profiles exactly as spelled; magic-link sign-ups. Every document has the
//! Cosmos system fields `_rid`, `_self`, `_etag`, `_attachments` and `_ts`.
//!
//! A share `dirty` of the documents carries one of the problems of `cosmos-documents.md`
//! ([`Problem`]); each [`GeneratedDoc`] says what it is ([`DocKind`]) and what the codec must
//! make of it ([`Expected`]), so tests can check every document. All emails are at
//! `example.com`-style domains (RFC 2606), all names are made up.
//!
//! Determinism: one PCG-64 stream seeded from `seed`; values are drawn with this module's own
//! arithmetic (never `rand`'s distributions, whose outputs may change between versions), no
//! clock is read, and JSON object keys are written in a fixed order. Same seed and options →
//! byte-identical files. Memory does not grow with N: documents are produced one account at a
//! time and streamed to the export writer.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use rand_core::{Rng as _, SeedableRng};
use rand_pcg::Pcg64;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::codec::Container;
use crate::codec::{DOTNET_MAX_VALUE, format_dotnet};
use crate::export::{ExportError, ExportWriter, Manifest};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub accounts: u64,
    pub seed: u64,
    /// Share of documents (0.0–1.0) that carry a [`Problem`].
    pub dirty: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            accounts: 1000,
            seed: 42,
            dirty: 0.02,
        }
    }
}

/// A problem from `cosmos-documents.md` planted in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// `""`, the app's default email.
    EmptyEmail,
    /// Whitespace only, or whitespace inside the address.
    WhitespaceEmail,
    /// A numeric top-level domain.
    DigitTldEmail,
    /// An apostrophe in the local part (valid under the relaxed check).
    ApostropheEmail,
    /// A punycode top-level domain (valid under the relaxed check).
    PunycodeEmail,
    /// `AgeGroupName` neither `<min>-<max>` nor a known legacy name.
    UnknownAgeGroup,
    /// `"Role": null`.
    NullRole,
    /// A role in other casing (`admin`).
    OddCaseRole,
    /// The same `BadgeConfigurationId` twice in one profile.
    DuplicateBadges,
    /// A profile whose `AccountId` names an account that does not exist.
    OrphanProfile,
    /// A document of another entity type (`Scenario`) in the container.
    ForeignType,
}

impl Problem {
    const ACCOUNT: [Problem; 8] = [
        Self::EmptyEmail,
        Self::WhitespaceEmail,
        Self::DigitTldEmail,
        Self::ApostropheEmail,
        Self::PunycodeEmail,
        Self::NullRole,
        Self::OddCaseRole,
        Self::ForeignType,
    ];
    const PROFILE: [Problem; 4] = [
        Self::UnknownAgeGroup,
        Self::DuplicateBadges,
        Self::OrphanProfile,
        Self::ForeignType,
    ];
    const SIGNUP: [Problem; 6] = [
        Self::EmptyEmail,
        Self::WhitespaceEmail,
        Self::DigitTldEmail,
        Self::ApostropheEmail,
        Self::PunycodeEmail,
        Self::ForeignType,
    ];

    /// The problems that can be planted in a container's documents.
    pub fn for_container(container: Container) -> &'static [Problem] {
        match container {
            Container::Accounts => &Self::ACCOUNT,
            Container::UserProfiles => &Self::PROFILE,
            Container::PendingSignups => &Self::SIGNUP,
        }
    }
}

/// What a generated document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// A valid document in one of the historical shapes.
    Clean,
    /// A sign-up of the magic-link version (no `Code`; a token hash, a status and its times),
    /// which the codec decodes as that version.
    MagicLinkSignup,
    Problem(Problem),
}

/// What the codec must make of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Decodes, with no note other than normalisation notes (`age_group_mapped`).
    Decodes,
    /// Decodes with (at least) this note.
    Note(&'static str),
    /// Decodes, but its `AccountId` resolves to no generated account.
    DecodesWithMissingAccount,
    /// Rejected with this code.
    Rejected(&'static str),
}

impl DocKind {
    pub fn expected(self) -> Expected {
        match self {
            Self::Clean => Expected::Decodes,
            Self::MagicLinkSignup => Expected::Decodes,
            Self::Problem(p) => match p {
                Problem::EmptyEmail | Problem::WhitespaceEmail | Problem::DigitTldEmail => {
                    Expected::Rejected("invalid_email")
                }
                Problem::ApostropheEmail | Problem::PunycodeEmail => Expected::Decodes,
                Problem::UnknownAgeGroup => Expected::Rejected("invalid_age_group"),
                Problem::NullRole => Expected::Note("role_defaulted"),
                Problem::OddCaseRole => Expected::Note("role_recased"),
                Problem::DuplicateBadges => Expected::Note("duplicate_badge"),
                Problem::OrphanProfile => Expected::DecodesWithMissingAccount,
                Problem::ForeignType => Expected::Rejected("foreign_type"),
            },
        }
    }

    pub fn is_dirty(self) -> bool {
        matches!(self, Self::Problem(_))
    }
}

/// One generated document.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedDoc {
    pub container: Container,
    pub kind: DocKind,
    pub value: Value,
}

/// What [`write_export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSummary {
    pub documents: BTreeMap<Container, u64>,
    pub kinds: BTreeMap<DocKind, u64>,
    pub total_documents: u64,
    pub dirty_documents: u64,
    pub manifest: Manifest,
}

/// Generates the data set into export files in `dir` (see [`crate::export`]), streaming.
pub fn write_export(dir: &Path, opts: &GenerateOptions) -> Result<GenerateSummary, ExportError> {
    let mut writer = ExportWriter::create(dir)?;
    for c in Container::ALL {
        writer.add_container(c.name())?;
    }
    let mut documents = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let (mut total, mut dirty) = (0u64, 0u64);
    for doc in documents_of(opts) {
        writer.write(doc.container.name(), &doc.value)?;
        *documents.entry(doc.container).or_insert(0) += 1;
        *kinds.entry(doc.kind).or_insert(0) += 1;
        total += 1;
        dirty += u64::from(doc.kind.is_dirty());
    }
    let manifest = writer.finish()?;
    Ok(GenerateSummary {
        documents,
        kinds,
        total_documents: total,
        dirty_documents: dirty,
        manifest,
    })
}

/// The generated documents, lazily, one account (with its profiles and sign-ups) at a time.
pub fn documents_of(opts: &GenerateOptions) -> Documents {
    Documents {
        rng: Draw(Pcg64::seed_from_u64(opts.seed)),
        opts: opts.clone(),
        next_account: 0,
        pending: VecDeque::new(),
    }
}

/// Iterator over generated documents (see [`documents_of`]).
#[derive(Debug)]
pub struct Documents {
    rng: Draw,
    opts: GenerateOptions,
    next_account: u64,
    pending: VecDeque<GeneratedDoc>,
}

impl Iterator for Documents {
    type Item = GeneratedDoc;

    fn next(&mut self) -> Option<GeneratedDoc> {
        while self.pending.is_empty() && self.next_account < self.opts.accounts {
            let n = self.next_account;
            self.next_account += 1;
            self.generate_account(n);
        }
        self.pending.pop_front()
    }
}

/// The random draws, on the raw PCG stream only.
#[derive(Debug)]
struct Draw(Pcg64);

impl Draw {
    /// Uniform-enough integer in `0..n` (multiply-shift; the bias is below 2^-60 for small n).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        ((self.0.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.0.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn hex(&mut self, len: usize, upper: bool) -> String {
        let digits: &[u8; 16] = if upper {
            b"0123456789ABCDEF"
        } else {
            b"0123456789abcdef"
        };
        (0..len)
            .map(|_| char::from(digits[self.below(16) as usize]))
            .collect()
    }

    fn base64ish(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+=";
        (0..len).map(|_| char::from(*self.pick(ALPHABET))).collect()
    }

    /// A time between 2023-01-01 and mid-2026, at 100 ns resolution.
    fn time(&mut self) -> DateTime<Utc> {
        let base = DateTime::<Utc>::from_timestamp(1_672_531_200, 0).unwrap_or_default();
        let secs = self.below(3 * 365 * 86_400 + 180 * 86_400) as i64;
        let ticks = self.below(10_000_000) as i64;
        base + Duration::seconds(secs) + Duration::nanoseconds(ticks * 100)
    }

    fn later(&mut self, t: DateTime<Utc>, max_secs: u64) -> DateTime<Utc> {
        t + Duration::seconds(self.below(max_secs) as i64)
            + Duration::nanoseconds(self.below(10_000_000) as i64 * 100)
    }

    /// A date-time in one of the historical spellings: 7 digits and `Z` (most), no offset,
    /// fewer digits, or an offset.
    fn date_string(&mut self, t: DateTime<Utc>) -> String {
        let canonical = format_dotnet(t);
        match self.below(20) {
            0..=11 => canonical,
            12..=15 => canonical.trim_end_matches('Z').to_owned(),
            16..=17 => {
                let digits = self.below(7) as usize;
                let whole = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                let frac = &canonical[20..20 + digits];
                let z = if self.chance(0.5) { "Z" } else { "" };
                // Dropped digits change the value; the generator keeps only what it writes.
                if digits == 0 {
                    format!("{whole}{z}")
                } else {
                    format!("{whole}.{frac}{z}")
                }
            }
            _ => {
                let local = t + Duration::hours(2);
                format!("{}+02:00", format_dotnet(local).trim_end_matches('Z'))
            }
        }
    }
}

/// The document era: which discriminator and id form the app wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    /// EF Core 8: `Discriminator`, sometimes `"id": "Type|<guid>"` + `Id`.
    Ef8 { prefixed_id: bool },
    /// EF Core 9: `$type`.
    Ef9,
    /// No discriminator at all.
    Bare,
}

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
const SUBSCRIPTION_LABELS: [&str; 5] = ["Free", "Monthly", "Annual", "Lifetime", "Individual"];
const EMAIL_DOMAINS: [&str; 4] = [
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
];

impl Documents {
    fn push(&mut self, container: Container, kind: DocKind, value: Value) {
        self.pending.push_back(GeneratedDoc {
            container,
            kind,
            value,
        });
    }

    /// Whether to plant a problem, and which one, for a document of `container`.
    fn problem_for(&mut self, container: Container) -> Option<Problem> {
        let dirty = self.opts.dirty;
        if dirty > 0.0 && self.rng.chance(dirty) {
            Some(*self.rng.pick(Problem::for_container(container)))
        } else {
            None
        }
    }

    fn era(&mut self) -> Era {
        match self.rng.below(20) {
            0..=2 => Era::Ef8 { prefixed_id: false },
            3..=5 => Era::Ef8 { prefixed_id: true },
            6..=7 => Era::Bare,
            _ => Era::Ef9,
        }
    }

    /// A document id in one of the seen forms; returns (`id`, the key source: `Id` or `id`).
    fn doc_id(&mut self, era: Era, entity: &str) -> (String, Option<String>) {
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

    fn start_doc(&mut self, era: Era, entity: &str) -> (Map<String, Value>, String) {
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

    fn system_fields(&mut self, obj: &mut Map<String, Value>, last_write: DateTime<Utc>) {
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

    fn email(&mut self, n: u64, lower: bool) -> String {
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
    fn plant_email_problem(
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

    fn foreign_doc(&mut self) -> Value {
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

    fn generate_account(&mut self, n: u64) {
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

    fn subscription(&mut self, era: Era, created: DateTime<Utc>) -> Value {
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

    fn settings(&mut self, era: Era) -> Value {
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

    fn generate_profile(
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

    fn badge(&mut self, era: Era, profile_id: &str, config: &str, earned: DateTime<Utc>) -> Value {
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

    fn generate_signup(&mut self, n: u64) {
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
