//! What PostgreSQL's rows do not hold, checked in `verify --direction pg-to-cosmos`: the
//! properties the app wrote that the mapping has no column for. The comparison of rows cannot
//! see them (a document that lost one still maps to the same rows), so a delivery that dropped
//! them, or anyone removing or changing one behind the router's back, would go unseen, and a
//! rollback would hand the app documents without them.
//!
//! The last copy from Cosmos recorded them, values included, in `migration.document_notes`
//! (replaced on every copy of a document); a delivery never changes them (it merges onto the
//! stored document, keeping what it does not map: `docs/dual-write.md`, "What a delivery may
//! change"). So every noted value must still be in the document, at the same place:
//!
//! - `unknown_fields_dropped`: each unknown property of the root (`$`), of `Subscription`, of
//!   a badge (`EarnedBadges[i]`: deliveries only append, so positions stay), with its value;
//! - `duplicate_badge`: the whole badge the app appended again, as an item of `EarnedBadges`;
//! - `duplicate_completed_scenario`: the repeated id at its position in `CompletedScenarioIds`;
//! - `user_profile_ids_dropped`: `UserProfileIds` as it was (a delivery that appends or removes
//!   a profile's id records the list it wrote here);
//! - `badge_profile_mismatch`: a badge's `UserProfileId` naming another profile;
//! - `magic_link_fields_without_token`: magic-link properties of a sign-up without a token.
//!
//! A value that is missing or differs is a `changed` drift item on the document's entity (the
//! badge's or subscription's for properties inside them), named by the document's id and the
//! property path, never by value, with reason [`LOST_REASON`]. Not covered: an unmapped
//! property no note recorded (`$type`, `Discriminator`, a redundant root `Id`), and a mapped
//! property removed whose codec default equals PostgreSQL's value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mystira_cosmos_codec::codec::{self, Container};
use serde_json::Value;

use super::{DriftItem, DriftKind, Entity, Verifier, VerifyError, sql};
use mystira_copy::CONTAINERS;
use mystira_copy::source::{SourceDocument, read_page_of_ids};

/// The reason of a drift item for an app-written property the document no longer holds as
/// the last copy recorded it.
pub const LOST_REASON: &str = "unmapped_property_lost_or_changed";

/// The note codes whose originals are app-written properties no row holds.
const CODES: [&str; 6] = [
    "unknown_fields_dropped",
    "duplicate_badge",
    "duplicate_completed_scenario",
    "user_profile_ids_dropped",
    "badge_profile_mismatch",
    "magic_link_fields_without_token",
];

/// A note recording app-written properties.
#[derive(Debug)]
struct Recorded {
    code: String,
    subject: String,
    original: Value,
}

impl Verifier<'_> {
    /// Reads the documents that have such notes and reports each recorded property they no
    /// longer hold as recorded.
    pub(super) async fn remainder(&mut self) -> Result<(), VerifyError> {
        self.passes += 1;
        let (pool, source) = (self.pool, self.source);
        for container in CONTAINERS {
            let rows: Vec<(String, String, String, Value)> = sqlx::query_as(
                "select document_id, code, subject, original from migration.document_notes
                 where container = $1 and code = any($2) and original is not null
                 order by document_id, code, subject",
            )
            .bind(container)
            .bind(&CODES[..])
            .fetch_all(pool)
            .await
            .map_err(sql)?;
            let mut noted: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
            for (document_id, code, subject, original) in rows {
                noted.entry(document_id).or_default().push(Recorded {
                    code,
                    subject,
                    original,
                });
            }
            if noted.is_empty() || !source.has_container(container).await? {
                continue;
            }
            let Some(kind) = Container::from_name(container) else {
                continue;
            };
            let ids: Arc<BTreeSet<String>> = Arc::new(noted.keys().cloned().collect());
            let mut position: Option<Value> = None;
            loop {
                let page = read_page_of_ids(
                    source,
                    container,
                    position.as_ref(),
                    self.opts.page_size,
                    &ids,
                )
                .await?;
                for doc in page.documents {
                    let SourceDocument::Document(doc) = doc else {
                        continue;
                    };
                    let Some(r) = codec::document_ref(kind, &doc) else {
                        continue;
                    };
                    let Some(notes) = noted.get(&r.document_id) else {
                        continue;
                    };
                    if !self.in_slice(Some(r.key.as_bytes()[0])) {
                        continue;
                    }
                    let main = Entity::of_container(container).unwrap_or(Entity::Accounts);
                    for path in lost_paths(&doc, notes) {
                        let entity = entity_of_path(main, &path);
                        self.items.push(DriftItem {
                            fields: vec![path],
                            reason: Some(LOST_REASON.to_owned()),
                            ..DriftItem::new(
                                entity,
                                DriftKind::Changed,
                                Some(r.key.to_string()),
                                Some(r.document_id.clone()),
                            )
                        });
                    }
                }
                match page.next {
                    Some(next) => position = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }
}

/// The paths of the recorded properties `doc` no longer holds as recorded.
fn lost_paths(doc: &Value, notes: &[Recorded]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in notes {
        match n.code.as_str() {
            // an object of properties under the subject (`$` is the root)
            "unknown_fields_dropped" | "magic_link_fields_without_token" => {
                let (at, prefix) = match n.subject.as_str() {
                    "$" | "VerificationTokenHash" => (Some(doc), String::new()),
                    subject => (at_path(doc, subject), format!("{subject}.")),
                };
                for (name, value) in n.original.as_object().into_iter().flatten() {
                    if at.and_then(|o| o.get(name)) != Some(value) {
                        out.insert(format!("{prefix}{name}"));
                    }
                }
            }
            "duplicate_badge" => {
                let held = doc
                    .get("EarnedBadges")
                    .and_then(Value::as_array)
                    .is_some_and(|items| items.contains(&n.original));
                if !held {
                    out.insert(format!("EarnedBadges[{}]", n.subject));
                }
            }
            // the value at the subject's path
            _ => {
                if at_path(doc, &n.subject) != Some(&n.original) {
                    out.insert(n.subject.clone());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The value at a path such as `Subscription`, `EarnedBadges[2]` or
/// `EarnedBadges[2].UserProfileId`.
fn at_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = doc;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (part, None),
        };
        at = at.get(name)?;
        if let Some(i) = index {
            at = at.get(i)?;
        }
    }
    Some(at)
}

/// The table a property path's value belongs to.
fn entity_of_path(main: Entity, path: &str) -> Entity {
    match main {
        Entity::Accounts if path.starts_with("Subscription") => Entity::Subscriptions,
        Entity::Accounts if path.starts_with("CompletedScenarioIds") => Entity::CompletedScenarios,
        Entity::UserProfiles if path.starts_with("EarnedBadges") => Entity::UserBadges,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note(code: &str, subject: &str, original: Value) -> Recorded {
        Recorded {
            code: code.to_owned(),
            subject: subject.to_owned(),
            original,
        }
    }

    #[test]
    fn a_recorded_property_removed_or_changed_is_named_by_its_path() {
        let doc = json!({
            "id": "p", "AppExtra": 1,
            "EarnedBadges": [{"BadgeConfigurationId": "b", "BadgeExtra": {"x": 1}}],
            "CompletedScenarioIds": ["a", "a"],
        });
        let notes = [
            note(
                "unknown_fields_dropped",
                "$",
                json!({"AppExtra": 1, "Gone": true}),
            ),
            note(
                "unknown_fields_dropped",
                "EarnedBadges[0]",
                json!({"BadgeExtra": {"x": 2}}),
            ),
            note(
                "duplicate_badge",
                "b-2",
                json!({"BadgeConfigurationId": "b"}),
            ),
            note(
                "duplicate_completed_scenario",
                "CompletedScenarioIds[1]",
                json!("a"),
            ),
            note("user_profile_ids_dropped", "UserProfileIds", json!("x,y")),
        ];
        assert_eq!(
            lost_paths(&doc, &notes),
            [
                "EarnedBadges[0].BadgeExtra",
                "EarnedBadges[b-2]",
                "Gone",
                "UserProfileIds"
            ]
        );
    }
}
