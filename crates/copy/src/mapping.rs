//! From a raw Cosmos document to what the bulk writer writes, or to the reason it cannot be
//! written. The same mapping serves the backfill and (later) verification, so equal data
//! compares equal.

use mystira_cosmos_codec::codec::{self, Container, Decoded, Note};
use mystira_postgres::bulk::{
    AccountDocument, DocumentNote, ProfileDocument, SignupDocument, SourceVersion,
};

/// What a document becomes.
#[derive(Debug)]
pub enum Mapped {
    Account(Box<AccountDocument>),
    Profile(Box<ProfileDocument>),
    Signup(Box<SignupDocument>),
    /// Cannot be migrated: quarantine it with this reason.
    Reject {
        document_id: String,
        code: &'static str,
        message: String,
        ts: Option<i64>,
    },
}

/// Maps a document of `container`. `locator` names the document when it has no usable `id`
/// (an export file and line, say).
pub fn map_document(container: &str, raw: &serde_json::Value, locator: &str) -> Mapped {
    map_document_with(container, raw, || locator.to_owned())
}

/// [`map_document`] with the locator computed only when it is needed: when the document is
/// rejected and has no usable `id` (a [`content_locator`] hashes the whole document).
pub fn map_document_with(
    container: &str,
    raw: &serde_json::Value,
    locator: impl FnOnce() -> String,
) -> Mapped {
    map_document_hinted(container, raw, true, locator)
}

/// [`map_document_with`] for a document whose JSON text showed whether it may hold a NUL
/// character (`codec::text_may_hold_nul`): with `may_hold_nul` false the document is not
/// walked for one. The result is the same; only the walk is saved.
pub fn map_document_hinted(
    container: &str,
    raw: &serde_json::Value,
    may_hold_nul: bool,
    locator: impl FnOnce() -> String,
) -> Mapped {
    // an id holding a NUL cannot name a quarantine entry (PostgreSQL text refuses it)
    let reject_id = || {
        raw.get("id")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && !s.contains('\0'))
            .map_or_else(locator, str::to_owned)
    };
    let ts = codec::source_version(raw).ts;
    // before decoding: a NUL anywhere (a value, a kept unknown property, a name) reaches a
    // text or jsonb column and PostgreSQL refuses it, whichever load path writes it
    if let Some(e) = may_hold_nul
        .then(|| codec::find_nul_character(raw))
        .flatten()
    {
        return Mapped::Reject {
            document_id: reject_id(),
            code: e.code,
            message: e.message,
            ts,
        };
    }
    let Some(kind) = Container::from_name(container) else {
        return Mapped::Reject {
            document_id: reject_id(),
            code: "unknown_container",
            message: format!("container `{container}` is not part of the user domain"),
            ts,
        };
    };
    match codec::decode(kind, raw) {
        Ok(Decoded::Account(a)) => {
            let a = *a;
            Mapped::Account(Box::new(AccountDocument {
                version: version(a.document_id, &a.version),
                account: a.account,
                subscription: a.subscription,
                completed_scenarios: a.completed_scenarios,
                notes: notes(&a.notes),
            }))
        }
        Ok(Decoded::Profile(p)) => {
            let p = *p;
            Mapped::Profile(Box::new(ProfileDocument {
                version: version(p.document_id, &p.version),
                profile: p.profile,
                account_ref: p.account_ref,
                badges: p.badges,
                notes: notes(&p.notes),
            }))
        }
        Ok(Decoded::PendingSignup(s)) => {
            let s = *s;
            Mapped::Signup(Box::new(SignupDocument {
                version: version(s.document_id, &s.version),
                signup: s.signup,
                notes: notes(&s.notes),
            }))
        }
        Err(e) => Mapped::Reject {
            document_id: reject_id(),
            code: e.code,
            message: e.message,
            ts,
        },
    }
}

/// A document without `_ts` (hand-made export files) counts as version 0: any copy with a real
/// `_ts` supersedes it, and re-running it changes nothing.
fn version(document_id: String, v: &codec::SourceVersion) -> SourceVersion {
    SourceVersion {
        document_id,
        ts: v.ts.unwrap_or(0),
        etag: v.etag.clone(),
    }
}

fn notes(notes: &[Note]) -> Vec<DocumentNote> {
    notes
        .iter()
        .map(|n| DocumentNote {
            code: n.code.to_owned(),
            subject: n.subject.clone(),
            detail: n.detail.clone(),
            original: n.original.clone(),
        })
        .collect()
}

/// The name of a document without a usable `id`: its container and a hash of its content, so
/// the same document gets the same name in every run, a retry finds its quarantine entry, and
/// two such documents do not overwrite each other's (a position would do neither: it shifts
/// whenever a document before it is added or removed, and differs between ranges and workers).
pub fn content_locator(container: &str, raw: &serde_json::Value) -> String {
    use md5::{Digest, Md5};
    // keys sorted at every depth: the name predates serde_json's `preserve_order`, and must
    // not depend on the order a reader returned the properties in
    let mut sorted = raw.clone();
    sorted.sort_all_objects();
    let bytes = serde_json::to_vec(&sorted).unwrap_or_default();
    let digest = Md5::digest(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{container}#no-id-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_without_id_is_named_by_its_content() {
        let a = serde_json::json!({"$type": "Account", "Email": "a@example.com"});
        let b = serde_json::json!({"$type": "Account", "Email": "b@example.com"});
        assert_eq!(
            content_locator("Accounts", &a),
            content_locator("Accounts", &a.clone())
        );
        assert_ne!(
            content_locator("Accounts", &a),
            content_locator("Accounts", &b)
        );
        // the name carries no value of the document
        assert!(!content_locator("Accounts", &a).contains("example"));
        assert!(content_locator("Accounts", &a).starts_with("Accounts#no-id-"));
        // the same content with its properties in another order, at any depth: the same name
        let c = serde_json::json!({"Email": "a@example.com", "$type": "Account"});
        assert_eq!(
            content_locator("Accounts", &a),
            content_locator("Accounts", &c)
        );
        let d = serde_json::json!({"x": {"b": 1, "a": 2}});
        let e = serde_json::json!({"x": {"a": 2, "b": 1}});
        assert_eq!(
            content_locator("Accounts", &d),
            content_locator("Accounts", &e)
        );
    }
}
