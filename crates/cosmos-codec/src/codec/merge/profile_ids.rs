//! An account's `UserProfileIds`, kept as the app keeps it: a profile's id appended when it is
//! created and removed when it is deleted, nothing else touched.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::codec::reference_key;

/// The `UserProfileIds` the app's account document holds once the profile whose document id is
/// `profile_doc_id` (and key `profile_key`) is created: the id appended at the end, as the app
/// appends it. `None` when the list names the profile already (any spelling of its id), or is
/// not a list the app reads (then it is left as it is).
pub fn profile_ids_with(
    account_doc: &Value,
    profile_doc_id: &str,
    profile_key: Uuid,
) -> Option<Value> {
    let names = |item: &str| names_profile(item, profile_key);
    match account_doc.get("UserProfileIds") {
        None | Some(Value::Null) => Some(json!(profile_doc_id)),
        Some(Value::String(s)) if s.split(',').any(names) => None,
        Some(Value::String(s)) if s.trim().is_empty() => Some(json!(profile_doc_id)),
        Some(Value::String(s)) => Some(json!(format!("{s},{profile_doc_id}"))),
        Some(Value::Array(items)) if items.iter().filter_map(Value::as_str).any(names) => None,
        Some(Value::Array(items)) => {
            let mut items = items.clone();
            items.push(json!(profile_doc_id));
            Some(Value::Array(items))
        }
        Some(_) => None,
    }
}

/// The `UserProfileIds` the app's account document holds once the profile with key
/// `profile_key` is deleted: every item naming it removed, the others kept as they are. `None`
/// when the list does not name it (or is not a list the app reads).
pub fn profile_ids_without(account_doc: &Value, profile_key: Uuid) -> Option<Value> {
    let names = |item: &str| names_profile(item, profile_key);
    match account_doc.get("UserProfileIds") {
        Some(Value::String(s)) if s.split(',').any(names) => {
            let kept: Vec<&str> = s.split(',').filter(|i| !names(i)).collect();
            Some(json!(kept.join(",")))
        }
        Some(Value::Array(items)) if items.iter().filter_map(Value::as_str).any(names) => {
            Some(Value::Array(
                items
                    .iter()
                    .filter(|i| !i.as_str().is_some_and(names))
                    .cloned()
                    .collect(),
            ))
        }
        _ => None,
    }
}

/// Whether an item of `UserProfileIds` names the profile with key `key` (the reference rule:
/// trimmed, a leading `UserProfile|` stripped).
fn names_profile(item: &str, key: Uuid) -> bool {
    let item = item.trim();
    !item.is_empty() && reference_key(item, "UserProfile") == key
}
