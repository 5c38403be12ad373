//! NUL characters (U+0000). JSON allows `\u0000` in any string and Cosmos stores it, but
//! PostgreSQL refuses it in `text` (SQLSTATE 22021) and in `jsonb` (22P05) alike, so a document
//! holding one anywhere (a value at any depth, an unknown property kept in a note or in
//! `settings`, a property name, `_etag`) cannot be stored as it is. The rule
//! (`docs/cosmos-mapping.md`, "Characters PostgreSQL cannot store"): such a document is not
//! changed but rejected with [`NUL_CHARACTER`], the message naming the path of the first NUL
//! found, never the value.

use serde_json::Value;

use super::DecodeError;

/// The rejection code of a document holding a NUL character.
pub const NUL_CHARACTER: &str = "nul_character";

const RULE: &str = "which PostgreSQL cannot store in text or jsonb";

/// The rejection of a document holding a NUL character anywhere (a string value or a property
/// name at any depth), naming the first one's path (`Settings.Theme`, `EarnedBadges[2].Name`;
/// `$` is the document itself); `None` when it holds none.
pub fn find_nul_character(doc: &Value) -> Option<DecodeError> {
    // every document is checked, and almost none holds a NUL: a plain scan first (a fifth of
    // the cost of the walk that keeps a path), the path only when there is one to name
    if !has_nul_character(doc) {
        return None;
    }
    let mut path = Vec::new();
    let at = walk(doc, &mut path)?;
    let field = render(&path);
    let message = match at {
        Hit::Value => format!("`{field}` holds a NUL character (U+0000), {RULE}"),
        Hit::Key => {
            format!("`{field}` has a property name holding a NUL character (U+0000), {RULE}")
        }
    };
    Some(DecodeError {
        code: NUL_CHARACTER,
        field,
        message,
    })
}

/// Whether `doc` holds a NUL character anywhere ([`find_nul_character`] without the path).
pub fn has_nul_character(doc: &Value) -> bool {
    match doc {
        Value::String(s) => holds_nul(s),
        Value::Array(items) => items.iter().any(has_nul_character),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| holds_nul(k) || has_nul_character(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether the JSON text of a document may hold a NUL character: false only when it cannot.
/// JSON writes U+0000 only as the escape `\u0000` (a raw 0 byte is not valid JSON text:
/// serde_json refuses it, so such a line is never a document), so a text without those six
/// bytes decodes to a document [`has_nul_character`] finds nothing in. A text with them may
/// still hold none (`\\u0000` is a backslash followed by `u0000`): then the document is walked.
/// One SIMD search of the text costs a small part of walking the parsed document (which was a
/// twentieth of a verify's client CPU).
pub fn text_may_hold_nul(json_text: &[u8]) -> bool {
    memchr::memmem::find(json_text, br"\u0000").is_some()
}

/// A byte scan: UTF-8 encodes U+0000, and only it, as the byte 0.
fn holds_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

enum Hit {
    /// In the string value at the path.
    Value,
    /// In a property name of the object at the path.
    Key,
}

enum Step<'a> {
    Name(&'a str),
    Index(usize),
}

/// Depth first, in the document's property order; `path` holds the steps to the hit.
fn walk<'a>(value: &'a Value, path: &mut Vec<Step<'a>>) -> Option<Hit> {
    match value {
        Value::String(s) => holds_nul(s).then_some(Hit::Value),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                if let Some(hit) = walk(item, path) {
                    return Some(hit);
                }
                path.pop();
            }
            None
        }
        Value::Object(map) => {
            // a name holding a NUL cannot be named in a path (nor stored in a message)
            if map.keys().any(|k| holds_nul(k)) {
                return Some(Hit::Key);
            }
            for (k, v) in map {
                path.push(Step::Name(k));
                if let Some(hit) = walk(v, path) {
                    return Some(hit);
                }
                path.pop();
            }
            None
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn render(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Name(n) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(n);
            }
            Step::Index(i) => {
                if out.is_empty() {
                    out.push('$');
                }
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    if out.is_empty() {
        out.push('$');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_path_of_the_first_nul_never_the_value() {
        let doc = json!({"id": "a", "DisplayName": "sec\u{0}ret"});
        let e = find_nul_character(&doc).unwrap_or_else(|| panic!("a NUL is found"));
        assert_eq!(e.code, NUL_CHARACTER);
        assert_eq!(e.field, "DisplayName");
        assert!(!e.message.contains("sec"), "{}", e.message);
        assert!(!e.message.contains('\0'));

        let deep = json!({"EarnedBadges": [{"Name": "x"}, {"Extra": {"k": ["", "\u{0}"]}}]});
        let e = find_nul_character(&deep).unwrap_or_else(|| panic!("a NUL is found"));
        assert_eq!(e.field, "EarnedBadges[1].Extra.k[1]");

        let key = json!({"Settings": {"a\u{0}b": 1}});
        let e = find_nul_character(&key).unwrap_or_else(|| panic!("a NUL is found"));
        assert_eq!(e.field, "Settings");
        assert!(e.message.contains("property name"), "{}", e.message);
        assert!(!e.message.contains('\0'));
        assert_eq!(
            find_nul_character(&json!({"a\u{0}": 1})).map(|e| e.field),
            Some("$".to_owned())
        );
    }

    #[test]
    fn a_document_without_nul_passes() {
        let doc = json!({"id": "a", "n": 1, "b": true, "x": null, "l": ["\\u0000", "U+0000"]});
        assert!(find_nul_character(&doc).is_none());
        assert!(!has_nul_character(&doc));
        assert!(has_nul_character(&json!(["\u{0}"])));
    }

    #[test]
    fn a_text_without_the_escape_holds_no_nul() {
        // the escape is the only way JSON text writes a NUL: a raw 0 byte is not JSON
        assert!(serde_json::from_slice::<Value>(b"{\"a\": \"x\x00\"}").is_err());
        assert!(text_may_hold_nul(br#"{"a":"x\u0000"}"#));
        // a backslash written as an escape, then `u0000`: no NUL, but the walk decides
        assert!(text_may_hold_nul(br#"{"a":"\\u0000"}"#));
        assert!(!text_may_hold_nul(br#"{"a":"\u0001","b":"u0000"}"#));
    }

    /// JSON values whose strings and names mix NULs, backslashes, `u` and `0`.
    fn tricky_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = proptest::collection::vec(
            prop::sample::select(vec!['\0', '\\', 'u', '0', 'a', '"', 'é']),
            0..8,
        )
        .prop_map(|chars| chars.into_iter().collect::<String>());
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((text.clone(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// What serde_json writes (as export files hold it) shows every NUL the parsed document
        /// holds: `text_may_hold_nul` is never false for a document that holds one.
        #[test]
        fn the_text_shows_every_nul_of_the_document(doc in tricky_json()) {
            let text = serde_json::to_vec(&doc).unwrap_or_default();
            let parsed: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            proptest::prop_assert_eq!(&parsed, &doc);
            if has_nul_character(&parsed) {
                proptest::prop_assert!(text_may_hold_nul(&text));
            }
        }
    }
}
