//! Decoding raw Cosmos documents into domain entities, and encoding entities back into the
//! shape the current .NET app (EF Core 9's Cosmos provider) reads.
//!
//! # Principles
//! * **Every shape decodes, or is rejected with a reason.** A decode never panics. A rejection
//!   is a [`DecodeError`] with a stable `code` (the quarantine reason), the document `field` it
//!   is about (a path such as `Subscription.Type` or `EarnedBadges[2].EarnedAt`) and a message
//!   naming the field and the rule. Messages never contain document values: they are personal
//!   data (emails, birth dates, purchase tokens, sign-up codes).
//! * **Nothing is defaulted silently.** A required field that is missing is a `missing_field`
//!   rejection. Where a default is the right call (the app itself reads a missing value as its
//!   CLR default), the default is applied and a [`Note`] records it, so an operator can see it.
//! * **Unknown fields are not stored, but kept on record.** Inside `Settings` unknown keys are
//!   kept in `AccountSettings::extra` (the column is JSONB and the app may add settings);
//!   anywhere else (the document, `Subscription`, a badge) an `unknown_fields_dropped` note
//!   keeps them, values included, as its original. System fields (`_rid`, `_etag`, `_ts`, ...)
//!   and the discriminators are not entity fields.
//! * **Every value the codec changes or drops is on record**: the note of the change carries
//!   the source's value in [`Note::original`] (stored in `migration.document_notes.original`,
//!   never logged). `docs/cosmos-mapping.md` lists every note code.
//!
//! # The entity type of a document
//! EF Core 9 writes `"$type": "Account"`; documents written before the EF 8 → 9 upgrade carry
//! `"Discriminator": "Account"`; some carry neither, and the container tells the type. When a
//! discriminator is present it must name the container's entity type (`Account`,
//! `UserProfile`, `PendingSignup`), otherwise the document is rejected with `foreign_type`
//! (a `Scenario` document in `Accounts` is not an account, and guessing would be wrong).
//!
//! # Ids, and what makes the round trip exact
//! The key is [`MappedId::from_source`] of the document's *key source*:
//! the `Id` property when present (EF 8 wrote `"id": "Account|<guid>"` with the real id in
//! `Id`), else `id` with a leading `<EntityType>|` stripped, else `id`. The entity's
//! `cosmos_id` is the document's actual `id` string whenever it is not the canonical text of
//! the key, so a write back to Cosmos lands on the same document, byte for byte.
//!
//! The encoder writes `id` = the entity's Cosmos id and adds `Id` only when `id` alone would not
//! map back to the same key (the `Type|<guid>` form): `Id` is then the part after `|` when that
//! maps to the key (keeping its spelling), else the key's canonical text. So for every entity,
//! `decode(encode(e)) == e`; and a source document re-encoded keeps its `id` exactly. What a
//! document → entity → document trip does not keep: a redundant `Id` equal to `id`, fields the
//! entity has no place for (unknown fields outside `Settings`, noted), the spelling of values the
//! decoder normalises (role casing, legacy age-group names, date offsets and digit counts,
//! whitespace around comma-joined items), and `Auth0UserId` (written back as `ExternalUserId`).
//!
//! References (`UserProfile.AccountId`) map with the same rule (a leading `Account|` is
//! stripped), so they resolve to the key of the document they point at.
//!
//! # Dates
//! .NET `DateTime` strings: 0 to 7 (up to 9 accepted) fractional digits, with `Z`, with an
//! offset (converted to UTC), or with no offset (= UTC, what the app means). Full 100 ns
//! precision is kept; the PostgreSQL layer rounds to microseconds. The encoder writes 7
//! fractional digits and `Z`, like .NET's round-trip format. `DateTime.MaxValue`
//! (`9999-12-31T23:59:59.9999999`) in `Subscription.EndDate` means "no end" (`None`); it is
//! written back as `DateTime.MaxValue`.

mod account;
mod fields;
mod merge;
mod nul;
mod profile;
mod signup;
mod time;

use std::fmt;

use mystira_domain::{MappedId, ValidationError};
use serde_json::Value;
use uuid::Uuid;

pub use account::{DecodedAccount, decode_account, encode_account};
pub use merge::{
    account_document, profile_document, profile_ids_with, profile_ids_without, signup_document,
};
pub use nul::{NUL_CHARACTER, find_nul_character, has_nul_character, text_may_hold_nul};
pub use profile::{DecodedProfile, decode_profile, encode_profile, encode_profile_with_account_id};
pub use signup::{DecodedPendingSignup, decode_pending_signup, encode_pending_signup};
pub use time::{DOTNET_MAX_VALUE, format_dotnet, parse_dotnet};

/// The three containers of the user domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    Accounts,
    UserProfiles,
    PendingSignups,
}

impl Container {
    pub const ALL: [Container; 3] = [Self::Accounts, Self::UserProfiles, Self::PendingSignups];

    /// The container's name in the `MystiraAppDb` database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accounts => "Accounts",
            Self::UserProfiles => "UserProfiles",
            Self::PendingSignups => "PendingSignups",
        }
    }

    /// The EF Core entity type the container holds (the `$type` / `Discriminator` value).
    pub fn entity_type(self) -> &'static str {
        match self {
            Self::Accounts => "Account",
            Self::UserProfiles => "UserProfile",
            Self::PendingSignups => "PendingSignup",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Cosmos version of a document: `_ts` (epoch seconds of the last write) and `_etag`.
/// Both are absent in documents this crate encodes (Cosmos adds them on write).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceVersion {
    pub ts: Option<i64>,
    pub etag: Option<String>,
}

/// Something an operator should see about a document that did decode: a default that was
/// applied, a duplicate that was set aside, a value that was normalised. Matches
/// `migration.document_notes`: `subject` and `detail` hold ids and field names only, never
/// personal data.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Stable code, e.g. `role_defaulted`, `duplicate_badge`, `field_defaulted`.
    pub code: &'static str,
    /// What the note is about within the document (a field path or a badge id), or empty.
    pub subject: String,
    pub detail: Value,
    /// The source's value before the codec changed or dropped it (`None` when nothing was
    /// changed, e.g. a default applied to a missing field). It may be personal data: it goes to
    /// `migration.document_notes.original`, never to a log or a report.
    pub original: Option<Value>,
}

impl Note {
    pub(crate) fn new(code: &'static str, subject: impl Into<String>, detail: Value) -> Self {
        Self {
            code,
            subject: subject.into(),
            detail,
            original: None,
        }
    }

    /// The same note, keeping the source's original value.
    pub(crate) fn with_original(mut self, original: Value) -> Self {
        self.original = Some(original);
        self
    }
}

/// Why a document could not be decoded. `code` is stable (a quarantine reason code); `field` is
/// the document field path; `message` names the field and the rule and never holds values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl DecodeError {
    pub(crate) fn new(code: &'static str, field: impl Into<String>, rule: &str) -> Self {
        let field = field.into();
        let message = format!("`{field}` {rule}");
        Self {
            code,
            field,
            message,
        }
    }

    /// A domain validation failure on document field `field`; keeps the validation's code.
    pub(crate) fn validation(field: impl Into<String>, err: &ValidationError) -> Self {
        let field = field.into();
        // ValidationError's Display names the entity field and the rule, never the value.
        let message = format!("`{field}`: {err}");
        Self {
            code: err.code(),
            field,
            message,
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> Self {
        Self::new("missing_field", field, "is required but missing or null")
    }

    pub(crate) fn wrong_type(field: impl Into<String>, expected: &str) -> Self {
        Self::new("wrong_type", field, &format!("must be {expected}"))
    }
}

/// A decoded document of any of the three containers.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Account(Box<DecodedAccount>),
    Profile(Box<DecodedProfile>),
    PendingSignup(Box<DecodedPendingSignup>),
}

impl Decoded {
    pub fn notes(&self) -> &[Note] {
        match self {
            Self::Account(a) => &a.notes,
            Self::Profile(p) => &p.notes,
            Self::PendingSignup(s) => &s.notes,
        }
    }
}

/// Decodes a document read from `container`.
pub fn decode(container: Container, doc: &Value) -> Result<Decoded, DecodeError> {
    Ok(match container {
        Container::Accounts => Decoded::Account(Box::new(decode_account(doc)?)),
        Container::UserProfiles => Decoded::Profile(Box::new(decode_profile(doc)?)),
        Container::PendingSignups => Decoded::PendingSignup(Box::new(decode_pending_signup(doc)?)),
    })
}

/// The id and key of a document, for bookkeeping of documents that may not decode (quarantine,
/// source versions). `None` when the document has no usable `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// The document's `id`, exactly as stored.
    pub document_id: String,
    /// The PostgreSQL key the document maps to.
    pub key: Uuid,
}

/// The id and key of a document of `container`, using the same rule as the decoder.
pub fn document_ref(container: Container, doc: &Value) -> Option<DocumentRef> {
    let obj = doc.as_object()?;
    let ids = fields::DocIds::read(obj, container.entity_type()).ok()?;
    Some(DocumentRef {
        document_id: ids.document_id.to_owned(),
        key: ids.mapped.uuid,
    })
}

/// The key [`document_ref`] gives the document in the JSON text `json`, found without building
/// the document: only `id` and `Id` are decoded, the rest is skipped over (still checked as
/// JSON). `None` when that cannot tell (not an object, a missing, empty or ill-typed id, a field
/// given twice): then only decoding the document can, and [`document_ref`] decides. When this
/// gives a key, `document_ref` of the parsed document gives the same one.
pub fn document_key_of_json(container: Container, json: &[u8]) -> Option<Uuid> {
    let ids = IdFields::of_json(json)?;
    let id = ids.id?;
    if id.trim().is_empty() {
        return None;
    }
    let doc_ids =
        fields::DocIds::from_strings(&id, ids.upper_id.as_deref(), container.entity_type()).ok()?;
    Some(doc_ids.mapped.uuid)
}

/// The string `id` of the document in the JSON text `json`, found as [`document_key_of_json`]
/// finds the key: `None` when that cannot tell without parsing the document (no string `id`,
/// a field given twice, not an object).
pub fn document_id_of_json(json: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    IdFields::of_json(json)?.id
}

/// A document's `id` and `Id`, read from its text with every other field skipped over.
#[derive(serde::Deserialize)]
struct IdFields<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "Id", borrow, default)]
    upper_id: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> IdFields<'a> {
    /// `None` unless `json` is an object whose `id` and `Id` are strings, null or absent, and
    /// given at most once (serde_json's `Value` keeps the last of two; this cannot tell).
    fn of_json(json: &'a [u8]) -> Option<Self> {
        // a derived struct would also read a JSON array; a document is an object
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

/// The `_ts` / `_etag` of a document (absent or ill-typed system fields read as `None`).
pub fn source_version(doc: &Value) -> SourceVersion {
    SourceVersion {
        ts: doc.get("_ts").and_then(Value::as_i64),
        etag: doc.get("_etag").and_then(Value::as_str).map(str::to_owned),
    }
}

/// The key a reference (`UserProfile.AccountId`) resolves to: the same rule as the referenced
/// document's own id, including stripping EF 8's `<EntityType>|` prefix.
pub fn reference_key(raw: &str, entity_type: &str) -> Uuid {
    MappedId::from_source(fields::strip_type_prefix(raw, entity_type)).uuid
}
