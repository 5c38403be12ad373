//! Pending sign-up documents (container `PendingSignups`, partition key `/email`).
//!
//! Mapping decisions:
//! * `email` (lower-case JSON name, the partition key; `Email` is accepted from writers that
//!   did not rename it) is required and must pass the email rule; it is kept as stored (the
//!   app stores it lower-cased and trimmed; changing it would move the document to another
//!   partition on write-back).
//! * `Code` is required: 1-10 ASCII letters or digits, a string (a JSON number would have lost
//!   leading zeros: `wrong_type`).
//! * `FailedAttempts` outside 0..=10 is `out_of_range` (the schema's CHECK); `IsUsed`,
//!   `IsSignin`, `FailedAttempts` missing read as the app's defaults with a note.
//!
//! # The magic-link version: rejected as `unsupported_version`
//! A later version of the entity has no `Code`; it carries `VerificationTokenHash`, `Status`
//! (0..4), `VerifiedAt` and `ConsumedAt`. A document without `Code` that has any of those is
//! rejected with `unsupported_version` rather than mapped, because no faithful mapping exists:
//! * `pending_signups.code` is `NOT NULL` and at most 10 alphanumerics; a token *hash* is
//!   neither a code nor short, and a made-up code would be a row nobody can ever complete —
//!   indistinguishable from a real, pending code sign-up;
//! * `Status`, `VerifiedAt` and `ConsumedAt` have no columns, so mapping would drop them, and
//!   `Status` has more states than `is_used` can say;
//! * the records live 15 minutes: losing an in-flight one costs the user a new link, while a
//!   wrong mapping corrupts the table the code flow reads.
//!
//! The rejected document goes to quarantine with this reason, so an operator sees every one.
//! A document that has a `Code` is decoded as the code version, whatever else it carries.

use mystira_domain::{Email, PendingSignup, SignupCode};
use serde_json::{Map, Value, json};

use super::fields::{DocIds, Fields, check_entity_type, root, validation_to_decode, write_ids};
use super::time::format_dotnet;
use super::{DecodeError, Note, SourceVersion, source_version};

const ENTITY: &str = "PendingSignup";

/// Fields only the magic-link version has.
const MAGIC_LINK_FIELDS: [&str; 4] = [
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
            SignupCode::parse(c).map_err(|e| DecodeError::validation("Code", &e))?
        }
        Some(_) => {
            return Err(DecodeError::wrong_type(
                "Code",
                "a string of 1-10 letters or digits",
            ));
        }
        None if MAGIC_LINK_FIELDS.iter().any(|k| f.get(k).is_some()) => {
            return Err(DecodeError::new(
                "unsupported_version",
                "VerificationTokenHash",
                "belongs to the magic-link sign-up version, which has no Code and cannot be stored in pending_signups",
            ));
        }
        None => return Err(DecodeError::missing("Code")),
    };
    let (email_field, raw_email) = match f.opt_str("email")? {
        Some(e) => ("email", e),
        None => (
            "Email",
            f.req_str("Email")
                .map_err(|_| DecodeError::missing("email"))?,
        ),
    };
    let email = Email::parse(raw_email).map_err(|e| DecodeError::validation(email_field, &e))?;
    let failed_attempts = f.int_or_zero("FailedAttempts", &mut notes)?;
    let signup = PendingSignup {
        id: ids.mapped.uuid,
        cosmos_id: ids.mapped.cosmos_id.clone(),
        email,
        display_name: f.str_or_empty("DisplayName", &mut notes)?,
        code,
        created_at: f.req_date("CreatedAt")?,
        expires_at: f.req_date("ExpiresAt")?,
        is_used: f.bool_or_false("IsUsed", &mut notes)?,
        is_signin: f.bool_or_false("IsSignin", &mut notes)?,
        // Out of i32 range is out of the CHECK's range too.
        failed_attempts: i32::try_from(failed_attempts).unwrap_or(i32::MAX),
    };
    signup
        .validate()
        .map_err(|e| validation_to_decode("", &e))?;
    Ok(DecodedPendingSignup {
        signup,
        notes,
        version: source_version(doc),
        document_id: ids.document_id.to_owned(),
    })
}

/// Encodes a sign-up in the current shape, with the `email` partition-key field.
pub fn encode_pending_signup(s: &PendingSignup) -> Value {
    let mut obj = Map::new();
    write_ids(&mut obj, ENTITY, s.id, s.cosmos_id.as_deref());
    let fields = [
        ("$type", json!(ENTITY)),
        ("email", json!(s.email.as_str())),
        ("DisplayName", json!(s.display_name)),
        ("Code", json!(s.code.as_str())),
        ("CreatedAt", json!(format_dotnet(s.created_at))),
        ("ExpiresAt", json!(format_dotnet(s.expires_at))),
        ("IsUsed", json!(s.is_used)),
        ("IsSignin", json!(s.is_signin)),
        ("FailedAttempts", json!(s.failed_attempts)),
    ];
    obj.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(obj)
}
