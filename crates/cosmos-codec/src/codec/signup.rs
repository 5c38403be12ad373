//! Pending sign-up documents (container `PendingSignups`, partition key `/email`).
//!
//! Mapping decisions:
//! * `email` (lower-case JSON name, the partition key; `Email` is accepted from writers that
//!   did not rename it) is required and must pass the email rule; it is kept as stored (the
//!   app stores it lower-cased and trimmed; changing it would move the document to another
//!   partition on write-back).
//! * A sign-up is of the **code version** (`Code`: 1-10 ASCII letters or digits, a string; a
//!   JSON number would have lost leading zeros: `wrong_type`), of the **magic-link version**
//!   (`VerificationTokenHash`, `Status`, `VerifiedAt`, `ConsumedAt`), or both. Both are stored
//!   as they are (`code`, and `verification_token_hash`, `status`, `verified_at`,
//!   `consumed_at`): the app writes the magic-link version today, and its sign-ups in flight at
//!   cutover must survive. A document with neither `Code` nor `VerificationTokenHash` is
//!   rejected `missing_field`: nothing could complete it.
//! * A document with fields of both versions keeps both (nothing is dropped) and gets a
//!   `signup_mixed_versions` note naming the magic-link fields it has (names, not values).
//! * `Status` is the app's number, 0..=4 (`out_of_range` outside, `wrong_type` if not an
//!   integer); the spec does not name the states, so none are named here. Missing or `null`
//!   reads as 0, the CLR default the app would read, with a `field_defaulted` note.
//! * Magic-link fields without a `VerificationTokenHash` identify no link: with a `Code` the
//!   document decodes as the code version and a `magic_link_fields_without_token` note keeps
//!   their values; without a `Code` it is rejected `missing_field` (`VerificationTokenHash`).
//! * `FailedAttempts` outside 0..=10 is `out_of_range` (the schema's CHECK). `IsUsed`,
//!   `IsSignin`, `FailedAttempts` belong to the code version: missing from a code sign-up they
//!   read as the app's defaults with a note; missing from a magic-link-only sign-up (whose
//!   version does not have them) they read as the defaults without one, and the encoder leaves
//!   them out again unless they changed.

use mystira_domain::{Email, MagicLink, PendingSignup, Secret, SignupCode, SignupStatus};
use serde_json::{Map, Value, json};

use super::fields::{
    DocIds, Fields, check_entity_type, note_email_trimmed, root, validation_to_decode, write_ids,
};
use super::time::format_dotnet;
use super::{DecodeError, Note, SourceVersion, source_version};

const ENTITY: &str = "PendingSignup";

/// The magic-link version's fields (the token hash first).
const MAGIC_LINK_FIELDS: [&str; 4] = [
    "VerificationTokenHash",
    "Status",
    "VerifiedAt",
    "ConsumedAt",
];

/// The properties of a sign-up document (both versions) the decoder reads (any other is noted
/// as dropped).
const SIGNUP_FIELDS: [&str; 15] = [
    "id",
    "Id",
    "email",
    "Email",
    "DisplayName",
    "Code",
    "CreatedAt",
    "ExpiresAt",
    "IsUsed",
    "IsSignin",
    "FailedAttempts",
    "VerificationTokenHash",
    "Status",
    "VerifiedAt",
    "ConsumedAt",
];

/// A decoded pending sign-up document.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedPendingSignup {
    pub signup: PendingSignup,
    pub notes: Vec<Note>,
    pub version: SourceVersion,
    /// The document's `id`, exactly as stored.
    pub document_id: String,
}

/// Decodes a `PendingSignups` document.
pub fn decode_pending_signup(doc: &Value) -> Result<DecodedPendingSignup, DecodeError> {
    let obj = root(doc)?;
    check_entity_type(obj, ENTITY)?;
    let ids = DocIds::read(obj, ENTITY)?;
    let f = Fields::new(obj, "");
    let mut notes = Vec::new();

    let code = match f.get("Code") {
        Some(Value::String(c)) => {
            Some(SignupCode::parse(c).map_err(|e| DecodeError::validation("Code", &e))?)
        }
        Some(_) => {
            return Err(DecodeError::wrong_type(
                "Code",
                "a string of 1-10 letters or digits",
            ));
        }
        None => None,
    };
    let magic_link = read_magic_link(&f, code.is_some(), &mut notes)?;
    if code.is_none() && magic_link.is_none() {
        return Err(DecodeError::new(
            "missing_field",
            "Code",
            "and `VerificationTokenHash` are both missing or null: a sign-up needs a code (the \
             code version) or a token hash (the magic-link version)",
        ));
    }
    if code.is_some() && magic_link.is_some() {
        let present: Vec<&str> = MAGIC_LINK_FIELDS
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        notes.push(Note::new(
            "signup_mixed_versions",
            "VerificationTokenHash",
            json!({
                "rule": "fields of both the code and the magic-link versions; both were kept",
                "fields": present,
            }),
        ));
    }
    let (email_field, raw_email) = match f.opt_str("email")? {
        Some(e) => ("email", e),
        None => (
            "Email",
            f.req_str("Email")
                .map_err(|_| DecodeError::missing("email"))?,
        ),
    };
    let email = Email::parse(raw_email).map_err(|e| DecodeError::validation(email_field, &e))?;
    note_email_trimmed(email_field, raw_email, &mut notes);
    // The code version's fields: defaulted with a note where that version should have had them,
    // silently where the version (magic-link only) does not have them at all.
    let (is_used, is_signin, failed_attempts) = if code.is_some() {
        (
            f.bool_or_false("IsUsed", &mut notes)?,
            f.bool_or_false("IsSignin", &mut notes)?,
            f.int_or_zero("FailedAttempts", &mut notes)?,
        )
    } else {
        // the default's note goes nowhere: these fields are not part of this version
        let flag = |name| f.bool_or_false(name, &mut Vec::new());
        let attempts = f.opt_int("FailedAttempts")?.unwrap_or(0);
        (flag("IsUsed")?, flag("IsSignin")?, attempts)
    };
    let signup = PendingSignup {
        id: ids.mapped.uuid,
        cosmos_id: ids.mapped.cosmos_id.clone(),
        email,
        display_name: f.str_or_empty("DisplayName", &mut notes)?,
        code,
        magic_link,
        created_at: f.req_date("CreatedAt")?,
        expires_at: f.req_date("ExpiresAt")?,
        is_used,
        is_signin,
        // Out of i32 range is out of the CHECK's range too.
        failed_attempts: i32::try_from(failed_attempts).unwrap_or(i32::MAX),
    };
    signup
        .validate()
        .map_err(|e| validation_to_decode("", &e))?;
    f.note_unknown(&SIGNUP_FIELDS, &mut notes);
    Ok(DecodedPendingSignup {
        signup,
        notes,
        version: source_version(doc),
        document_id: ids.document_id.to_owned(),
    })
}

/// The magic-link part, or `None` when the document has no `VerificationTokenHash`.
fn read_magic_link(
    f: &Fields<'_>,
    has_code: bool,
    notes: &mut Vec<Note>,
) -> Result<Option<MagicLink>, DecodeError> {
    let Some(hash) = f.opt_str("VerificationTokenHash")? else {
        let orphans: Map<String, Value> = MAGIC_LINK_FIELDS[1..]
            .iter()
            .filter_map(|k| f.get(k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        if orphans.is_empty() {
            return Ok(None);
        }
        if !has_code {
            return Err(DecodeError::new(
                "missing_field",
                "VerificationTokenHash",
                "is missing or null, but the document has other magic-link fields and no `Code`: \
                 without the token hash no link can complete it",
            ));
        }
        // Status and times without a token are no link to follow; the code version stands,
        // and their values are kept in the note rather than dropped.
        let names: Vec<&String> = orphans.keys().collect();
        notes.push(
            Note::new(
                "magic_link_fields_without_token",
                "VerificationTokenHash",
                json!({
                    "rule": "magic-link fields without a token hash were not stored; the code version was",
                    "fields": names,
                }),
            )
            .with_original(Value::Object(orphans.clone())),
        );
        return Ok(None);
    };
    let status = match f.opt_int("Status")? {
        Some(n) => {
            SignupStatus::new("status", n).map_err(|e| DecodeError::validation("Status", &e))?
        }
        None => {
            notes.push(Note::new(
                "field_defaulted",
                "Status",
                json!({ "rule": "missing or null; the app's default 0 was applied" }),
            ));
            SignupStatus::new("status", 0).unwrap_or_else(|_| unreachable!("0 is in range"))
        }
    };
    let link = MagicLink {
        verification_token_hash: Secret::new(hash.to_owned()),
        status,
        verified_at: f.opt_date("VerifiedAt")?,
        consumed_at: f.opt_date("ConsumedAt")?,
    };
    link.validate().map_err(|e| validation_to_decode("", &e))?;
    Ok(Some(link))
}

/// Encodes a sign-up in the app's shape for its version(s), with the `email` partition-key
/// field: `Code` for the code version; `VerificationTokenHash`, `Status`, `VerifiedAt` and
/// `ConsumedAt` (`null` when unset, as the app writes them, so that a merge over a stored
/// document also clears them) for the magic-link version. A magic-link-only sign-up gets
/// `IsUsed`, `IsSignin` and `FailedAttempts` only when they differ from the defaults its
/// version implies, so its document keeps the app's shape and still decodes to the same value.
pub fn encode_pending_signup(s: &PendingSignup) -> Value {
    let mut obj = Map::new();
    write_ids(&mut obj, ENTITY, s.id, s.cosmos_id.as_deref());
    let mut fields = vec![
        ("$type", json!(ENTITY)),
        ("email", json!(s.email.as_str())),
        ("DisplayName", json!(s.display_name)),
        ("CreatedAt", json!(format_dotnet(s.created_at))),
        ("ExpiresAt", json!(format_dotnet(s.expires_at))),
    ];
    if let Some(code) = &s.code {
        fields.push(("Code", json!(code.as_str())));
    }
    if let Some(link) = &s.magic_link {
        let date = |d: Option<chrono::DateTime<chrono::Utc>>| {
            d.map_or(Value::Null, |d| json!(format_dotnet(d)))
        };
        fields.extend([
            (
                "VerificationTokenHash",
                json!(link.verification_token_hash.expose()),
            ),
            ("Status", json!(link.status.get())),
            ("VerifiedAt", date(link.verified_at)),
            ("ConsumedAt", date(link.consumed_at)),
        ]);
    }
    let code_version = s.code.is_some();
    if code_version || s.is_used {
        fields.push(("IsUsed", json!(s.is_used)));
    }
    if code_version || s.is_signin {
        fields.push(("IsSignin", json!(s.is_signin)));
    }
    if code_version || s.failed_attempts != 0 {
        fields.push(("FailedAttempts", json!(s.failed_attempts)));
    }
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}
