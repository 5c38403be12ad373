//! `verify --round-trip`: does what PostgreSQL holds, written back in the document shape the app
//! reads, say what the source document says?
//!
//! The checksum comparison maps the source through the backfill's own mapping, so a mapping bug
//! (a field decoded wrongly, or dropped) lands in PostgreSQL and in the comparison alike and
//! goes unseen. The round trip does not share it: every PostgreSQL aggregate is encoded by the
//! phase-2 write path's encoders (`mystira_cosmos_codec::codec::{encode_account, encode_profile_with_
//! account_id, encode_pending_signup}`, as `mystira_cosmos_store`'s aggregate writer calls
//! them) and compared field by field with the raw source document. A difference at field path
//! `F` is excused when
//!
//! - the document has a note (`migration.document_notes`) whose `subject` is `F` or a prefix
//!   path of `F` (`EarnedBadges[3]` covers `EarnedBadges[3].Id`): the codec changed that value
//!   on purpose and kept its original; or
//! - it is one of the class-wide normalisations of `docs/cosmos-mapping.md` (listed in
//!   [`differences`]).
//!
//! Anything else is a `round_trip` drift item naming `F`; values only with `show_values`.

use std::collections::{BTreeSet, HashMap, HashSet};

use mystira_cosmos_codec::codec::{self, Container};
use mystira_domain::SubscriptionType;
use mystira_domain::aggregate::Aggregate;
use serde_json::{Map, Value};
use uuid::Uuid;

use futures::TryStreamExt as _;

use super::read::{self, DocState, ReadDoc};
use super::{DriftItem, DriftKind, Entity, FieldValues, Verifier, VerifyError, canonical, sql};
use mystira_copy::CONTAINERS;

/// A field path whose values differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    /// The path in the source document (`Subscription.Type`, `EarnedBadges[2].Axis`).
    pub path: String,
    /// Other names of the same path: a badge named by its configuration id instead of its
    /// position (`EarnedBadges[<BadgeConfigurationId>].Id`, the writer's collision-note
    /// subject), and a whole badge by its `Id` (what older `duplicate_badge` notes name).
    pub alt_paths: Vec<String>,
    pub source: Option<String>,
    pub encoded: Option<String>,
}

impl Verifier<'_> {
    /// One more pass over the source: every mapped document (the winner of its key) whose
    /// aggregate PostgreSQL has is encoded back and compared. Documents PostgreSQL lacks are
    /// the comparison's `missing` items already.
    pub(super) async fn round_trip(&mut self) -> Result<(), VerifyError> {
        self.passes += 1;
        let (pool, source) = (self.pool, self.source);
        for container in CONTAINERS {
            if !source.has_container(container).await? {
                continue;
            }
            let mut pages = std::pin::pin!(read::doc_pages(
                pool,
                source,
                container,
                self.opts.page_size,
                None,
                read::Keep {
                    values: false,
                    raw: true,
                }
            ));
            while let Some(docs) = pages.try_next().await? {
                let docs: Vec<ReadDoc> = docs
                    .into_iter()
                    .filter(|d| {
                        d.state == DocState::Mapped
                            && d.document_key.is_some()
                            && self.in_slice(d.bucket())
                            && !self.is_loser(d)
                    })
                    .collect();
                if !docs.is_empty() {
                    self.round_trip_page(container, docs).await?;
                }
            }
        }
        Ok(())
    }

    async fn round_trip_page(
        &mut self,
        container: &'static str,
        docs: Vec<ReadDoc>,
    ) -> Result<(), VerifyError> {
        let ids: Vec<String> = docs.iter().map(|d| d.document_id.clone()).collect();
        let mut subjects: HashMap<String, Vec<String>> = HashMap::new();
        // one descent of the notes' primary key per document, whatever the statistics: a
        // lateral subquery the planner may not flatten (`offset 0`) costs one lookup per id
        for (document_id, subject) in sqlx::query_as::<_, (String, String)>(
            "select n.document_id, n.subject from unnest($2::text[]) as d(id)
             cross join lateral (select document_id, subject from migration.document_notes
                                 where container = $1 and document_id = d.id offset 0) as n",
        )
        .bind(container)
        .bind(&ids)
        .fetch_all(self.pool)
        .await
        .map_err(sql)?
        {
            subjects.entry(document_id).or_default().push(subject);
        }
        let main = Entity::of_container(container).unwrap_or(Entity::Accounts);
        let mut conn = self.pool.acquire().await.map_err(sql)?;
        for doc in docs {
            let Some(key) = doc.document_key else {
                continue;
            };
            let Some(aggregate) =
                mystira_postgres::aggregates::load(&mut conn, container, key).await?
            else {
                continue;
            };
            let encoded = match &aggregate {
                Aggregate::Account(a) => {
                    // what the account's profiles are in PostgreSQL (the list is derived)
                    let profile_ids: Vec<String> = sqlx::query_scalar(
                        "select coalesce(cosmos_id, id::text) from user_profiles
                         where account_id = $1 order by id",
                    )
                    .bind(key)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(sql)?;
                    codec::encode_account(
                        &a.account,
                        a.subscription.as_ref(),
                        &a.completed_scenarios,
                        &profile_ids,
                    )
                }
                Aggregate::Profile(p) => codec::encode_profile_with_account_id(
                    &p.profile,
                    &p.badges,
                    p.account_cosmos_id.as_deref(),
                ),
                Aggregate::Signup(s) => codec::encode_pending_signup(s),
            };
            let notes = subjects
                .get(&doc.document_id)
                .map_or(&[][..], Vec::as_slice);
            for d in differences(container, &doc.raw, &encoded) {
                if excused(&d, notes) {
                    continue;
                }
                let values = self.opts.show_values.then(|| {
                    vec![FieldValues {
                        field: d.path.clone(),
                        source: d.source.clone(),
                        postgres: d.encoded.clone(),
                    }]
                });
                let entity = entity_of_path(main, &d.path);
                self.items.push(DriftItem {
                    fields: vec![d.path],
                    values,
                    ..DriftItem::new(
                        entity,
                        DriftKind::RoundTrip,
                        Some(key.to_string()),
                        Some(doc.document_id.clone()),
                    )
                });
            }
        }
        Ok(())
    }
}

/// Whether a note's subject is the path or a prefix path of it.
pub(crate) fn excused(d: &Difference, subjects: &[String]) -> bool {
    let covers = |path: &str, subject: &str| {
        !subject.is_empty()
            && path.strip_prefix(subject).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
    };
    subjects
        .iter()
        .any(|s| covers(&d.path, s) || d.alt_paths.iter().any(|alt| covers(alt, s)))
}

/// The table a field path's value lives in.
fn entity_of_path(main: Entity, path: &str) -> Entity {
    match main {
        Entity::Accounts if path.starts_with("Subscription") => Entity::Subscriptions,
        Entity::Accounts if path.starts_with("CompletedScenarioIds") => Entity::CompletedScenarios,
        Entity::UserProfiles if path.starts_with("EarnedBadges") => Entity::UserBadges,
        other => other,
    }
}

/// The fields that hold a point in time (compared as the instant PostgreSQL keeps).
const TIMESTAMPS: &[&str] = &[
    "CreatedAt",
    "UpdatedAt",
    "LastLoginAt",
    "ValidUntil",
    "StartDate",
    "EndDate",
    "LastVerified",
    "EarnedAt",
    "ExpiresAt",
    "VerifiedAt",
    "ConsumedAt",
];

/// Every field path at which `encoded` (the document written back from PostgreSQL) says
/// something else than `source`, modulo the class-wide normalisations of
/// `docs/cosmos-mapping.md` (the numbers are its items):
///
/// - fields the encoder does not write are not compared: system properties (`_rid`, `_ts`,
///   ...), a redundant root `Id`, unknown fields outside `Settings` (3); `$type` and
///   `Discriminator` are not compared either (1: the container decides the type);
/// - missing and `null` are alike (5);
/// - `ExternalUserId` is read as the decoder reads it, `ExternalUserId` else `Auth0UserId`,
///   empty or whitespace meaning none (7);
/// - references (`AccountId`, a badge's `UserProfileId`, `UserProfileIds` items) compare by
///   the key they map to (4); `UserProfileIds` as a set, since PostgreSQL keeps the profiles'
///   `account_id`, not the list; a badge's `UserProfileId` absent from the source is derived;
/// - comma-joined lists compare as their trimmed, non-empty items (9); `CompletedScenarioIds`
///   as a set (10: a repeated id is kept once; the table keeps no order);
/// - timestamps compare as the instant PostgreSQL keeps (microseconds, 13); `DateOfBirth` as
///   its calendar date (13); an `EndDate` of `null` and `DateTime.MaxValue` both mean no end
///   (11); the subscription's `CreatedAt`/`UpdatedAt`, which Cosmos documents lack, are
///   derived when absent (11);
/// - `Subscription.Type` compares as the type it names (integer, numeric string or label, 11);
///   `TriggerValue`/`Threshold` as the 32-bit floats the app's properties are (REAL);
/// - badges are matched by `BadgeConfigurationId`, not by position (PostgreSQL orders them by
///   `EarnedAt`).
pub(crate) fn differences(container: &str, source: &Value, encoded: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    let (Some(src), Some(enc)) = (source.as_object(), encoded.as_object()) else {
        out.push(Difference {
            path: "$".into(),
            alt_paths: Vec::new(),
            source: Some(short(source)),
            encoded: Some(short(encoded)),
        });
        return out;
    };
    let entity_type = Container::from_name(container).map_or("", |c| c.entity_type());
    compare_object(&Ctx::root(entity_type), src, enc, &mut out);
    // named in path order, whatever order the document holds its properties in (objects keep
    // their order since serde_json's preserve_order)
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Where in the document a comparison is.
#[derive(Clone)]
struct Ctx {
    /// The path prefix (`""`, `"Subscription."`, `"EarnedBadges[2]."`).
    prefix: String,
    /// The same prefix with a badge named by its configuration id.
    alt_prefix: Option<String>,
    /// The parent object's name (`""` at the root).
    parent: &'static str,
    entity_type: &'static str,
}

impl Ctx {
    fn root(entity_type: &'static str) -> Self {
        Self {
            prefix: String::new(),
            alt_prefix: None,
            parent: "",
            entity_type,
        }
    }

    fn diff(&self, name: &str, source: Option<&Value>, encoded: Option<&Value>) -> Difference {
        Difference {
            path: format!("{}{name}", self.prefix),
            alt_paths: self
                .alt_prefix
                .iter()
                .map(|p| format!("{p}{name}"))
                .collect(),
            source: source.map(short),
            encoded: encoded.map(short),
        }
    }
}

/// A value as shown with `show_values`.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A source field as the decoder finds it: by its name, else by its name in another case
/// (`email` / `Email`).
fn lookup<'a>(src: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    src.get(name)
        .or_else(|| {
            src.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn compare_object(
    ctx: &Ctx,
    src: &Map<String, Value>,
    enc: &Map<String, Value>,
    out: &mut Vec<Difference>,
) {
    for (name, e) in enc {
        let at_root = ctx.parent.is_empty();
        if name == "$type"
            || name == "Discriminator"
            || (at_root && (name.starts_with('_') || name == "Id"))
        {
            continue;
        }
        let s = lookup(src, name);
        let e = Some(e).filter(|v| !v.is_null());
        compare_field(ctx, name, s, e, src, out);
    }
    if ctx.parent == "Settings" {
        // unknown Settings keys are kept (12): one the encoding lacks was lost
        for (name, s) in src {
            if !s.is_null() && lookup(enc, name).is_none() {
                out.push(ctx.diff(name, Some(s), None));
            }
        }
    }
}

fn compare_field(
    ctx: &Ctx,
    name: &str,
    s: Option<&Value>,
    e: Option<&Value>,
    src_obj: &Map<String, Value>,
    out: &mut Vec<Difference>,
) {
    let differ = |out: &mut Vec<Difference>| out.push(ctx.diff(name, s, e));
    let parent = ctx.parent;
    match (parent, name) {
        ("", "id") => {
            if s != e {
                differ(out);
            }
        }
        ("", "ExternalUserId") => {
            let none_if_blank = |v: Option<&Value>| {
                v.and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
                    .map(str::to_owned)
            };
            let source = none_if_blank(s).or_else(|| none_if_blank(lookup(src_obj, "Auth0UserId")));
            if source != none_if_blank(e) {
                out.push(ctx.diff(name, s.or_else(|| lookup(src_obj, "Auth0UserId")), e));
            }
        }
        ("", "AccountId") => {
            if reference(s, "Account") != reference(e, "Account") {
                differ(out);
            }
        }
        ("EarnedBadges", "UserProfileId") => {
            if s.is_some() && reference(s, "UserProfile") != reference(e, "UserProfile") {
                differ(out);
            }
        }
        ("", "UserProfileIds") => {
            let keys = |v: Option<&Value>| -> BTreeSet<Uuid> {
                list(v)
                    .iter()
                    .map(|i| codec::reference_key(i, "UserProfile"))
                    .collect()
            };
            if keys(s) != keys(e) {
                differ(out);
            }
        }
        ("", "CompletedScenarioIds") => {
            let set = |v: Option<&Value>| list(v).into_iter().collect::<BTreeSet<_>>();
            if set(s) != set(e) {
                differ(out);
            }
        }
        (_, "PurchasedScenarios" | "PreferredFantasyThemes") => {
            if list(s) != list(e) {
                differ(out);
            }
        }
        ("Subscription", "Type") => {
            if subscription_type(s) != subscription_type(e) {
                differ(out);
            }
        }
        ("Subscription", "CreatedAt" | "UpdatedAt") if s.is_none() => {}
        ("Subscription", "EndDate") => {
            let end = |v: Option<&Value>| instant(v).filter(|t| !t.starts_with("9999-12-31"));
            if end(s) != end(e) {
                differ(out);
            }
        }
        (_, "DateOfBirth") => {
            fn day(v: Option<&Value>) -> Option<&str> {
                v.and_then(Value::as_str).and_then(|t| t.get(..10))
            }
            if day(s) != day(e) {
                differ(out);
            }
        }
        ("EarnedBadges", "TriggerValue" | "Threshold") => {
            let f = |v: Option<&Value>| v.and_then(Value::as_f64).map(|f| (f as f32).to_bits());
            if f(s) != f(e) {
                differ(out);
            }
        }
        (_, n) if TIMESTAMPS.contains(&n) => {
            if instant(s) != instant(e) {
                differ(out);
            }
        }
        ("", "Subscription") => match (s, e) {
            (None, None) => {}
            (Some(Value::Object(so)), Some(Value::Object(eo))) => {
                let inner = Ctx {
                    prefix: "Subscription.".into(),
                    alt_prefix: None,
                    parent: "Subscription",
                    entity_type: ctx.entity_type,
                };
                compare_object(&inner, so, eo, out);
            }
            _ => differ(out),
        },
        ("", "Settings") => match (s, e) {
            (None, None) => {}
            (Some(Value::Object(so)), Some(Value::Object(eo))) => {
                let inner = Ctx {
                    prefix: "Settings.".into(),
                    alt_prefix: None,
                    parent: "Settings",
                    entity_type: ctx.entity_type,
                };
                compare_object(&inner, so, eo, out);
            }
            _ => differ(out),
        },
        ("", "EarnedBadges") => compare_badges(ctx, s, e, out),
        _ => {
            if !same_value(s, e) {
                differ(out);
            }
        }
    }
}

/// Badges matched by `BadgeConfigurationId` (a profile earns a configuration once; of source
/// badges repeating one, the counterpart is the one with the encoded badge's `Id`, else the
/// first): a source badge without a counterpart is reported at its position, an encoded one
/// without a source badge at `EarnedBadges[<configuration>]`.
fn compare_badges(ctx: &Ctx, s: Option<&Value>, e: Option<&Value>, out: &mut Vec<Difference>) {
    let config = |b: &Map<String, Value>| {
        b.get("BadgeConfigurationId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let id = |b: &Map<String, Value>| b.get("Id").and_then(Value::as_str).map(str::to_owned);
    let encoded: Vec<&Map<String, Value>> = e
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let sources: Vec<&Value> = s
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // the source position each encoded badge is compared with
    let mut counterpart: Vec<Option<usize>> = vec![None; encoded.len()];
    let mut taken: HashSet<usize> = HashSet::new();
    for (j, enc) in encoded.iter().enumerate() {
        let candidates: Vec<usize> = sources
            .iter()
            .enumerate()
            .filter(|(i, b)| {
                !taken.contains(i) && b.as_object().is_some_and(|o| config(o) == config(enc))
            })
            .map(|(i, _)| i)
            .collect();
        let same_id = candidates
            .iter()
            .copied()
            .find(|&i| sources[i].as_object().is_some_and(|o| id(o) == id(enc)));
        if let Some(i) = same_id.or(candidates.first().copied()) {
            counterpart[j] = Some(i);
            taken.insert(i);
        }
    }
    for (i, b) in sources.iter().enumerate() {
        if taken.contains(&i) {
            continue;
        }
        let obj = b.as_object();
        let alt_paths = obj
            .into_iter()
            .flat_map(|o| [config(o).map(|c| format!("EarnedBadges[{c}]")), id(o)])
            .flatten()
            .collect();
        out.push(Difference {
            path: format!("EarnedBadges[{i}]"),
            alt_paths,
            source: Some(short(b)),
            encoded: None,
        });
    }
    for (j, enc) in encoded.iter().enumerate() {
        let c = config(enc).unwrap_or_default();
        match counterpart[j].and_then(|i| sources[i].as_object().map(|o| (i, o))) {
            Some((i, src)) => {
                let inner = Ctx {
                    prefix: format!("EarnedBadges[{i}]."),
                    alt_prefix: Some(format!("EarnedBadges[{c}].")),
                    parent: "EarnedBadges",
                    entity_type: ctx.entity_type,
                };
                compare_object(&inner, src, enc, out);
            }
            None => out.push(Difference {
                path: format!("EarnedBadges[{c}]"),
                alt_paths: Vec::new(),
                source: None,
                encoded: Some(short(&Value::Object((*enc).clone()))),
            }),
        }
    }
}

/// A reference's key (an `<Entity>|` prefix stripped, any case); blank means none.
fn reference(v: Option<&Value>, entity_type: &str) -> Option<Uuid> {
    v.and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .map(|t| codec::reference_key(t, entity_type))
}

/// A comma-joined string or an array of strings, as its trimmed non-empty items.
fn list(v: Option<&Value>) -> Vec<String> {
    let items: Vec<String> = match v {
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().map(short).collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .collect()
}

fn subscription_type(v: Option<&Value>) -> Option<Result<SubscriptionType, String>> {
    v.map(|v| match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|c| SubscriptionType::from_code(c).ok())
            .ok_or_else(|| n.to_string()),
        Value::String(t) => match t.trim().parse::<i64>() {
            Ok(c) => SubscriptionType::from_code(c).map_err(|_| t.clone()),
            Err(_) => SubscriptionType::parse(t).map_err(|_| t.clone()),
        },
        other => Err(other.to_string()),
    })
}

/// A timestamp as PostgreSQL keeps it; an unparseable one as itself.
fn instant(v: Option<&Value>) -> Option<String> {
    v.map(|v| match v.as_str().map(codec::parse_dotnet) {
        Some(Ok(t)) => canonical::timestamp(&t),
        _ => short(v),
    })
}

/// Equal JSON values, numbers by value (`1.0` is `1`), objects key by key.
fn same_value(s: Option<&Value>, e: Option<&Value>) -> bool {
    match (s, e) {
        (None, None) => true,
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    same_value(
                        Some(v).filter(|v| !v.is_null()),
                        b.get(k).filter(|v| !v.is_null()),
                    )
                })
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(Some(x), Some(y)))
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(source: Value, encoded: Value) -> Vec<String> {
        differences("Accounts", &source, &encoded)
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    #[test]
    fn documented_normalisations_are_not_differences() {
        let source = json!({
            "id": "Account|1B4E28BA-2FA1-11D2-883F-0016D3CCA427", "Discriminator": "Account",
            "_rid": "x", "_ts": 5, "Unknown": 1, "Auth0UserId": "auth0|1", "email": "a@b.c",
            "CreatedAt": "2024-01-02T03:04:05.1234567", "UserProfileIds": " p1 , ,P2",
            "CompletedScenarioIds": ["b", "a", "a"],
            "Subscription": {"Type": "monthly", "PurchasedScenarios": "x, y", "EndDate": null},
        });
        let encoded = json!({
            "id": "Account|1B4E28BA-2FA1-11D2-883F-0016D3CCA427", "$type": "Account",
            "Id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "ExternalUserId": "auth0|1",
            "Email": "a@b.c", "CreatedAt": "2024-01-02T03:04:05.1234560Z",
            "UserProfileIds": "UserProfile|P2,p1", "CompletedScenarioIds": ["a", "b"],
            "Subscription": {"Type": 1, "PurchasedScenarios": "x,y",
                             "EndDate": "9999-12-31T23:59:59.9999999",
                             "CreatedAt": "2024-01-02T03:04:05Z"},
        });
        assert_eq!(paths(source, encoded), Vec::<String>::new());
    }

    #[test]
    fn a_changed_dropped_or_added_value_is_named_by_its_path() {
        let source = json!({"id": "a", "DisplayName": "Ann", "Settings": {"Theme": "dark", "X": 1},
                            "Subscription": {"Type": 2, "ValidUntil": "2024-01-01T00:00:00Z"}});
        let encoded = json!({"id": "a", "DisplayName": "Anne", "Settings": {"Theme": "dark"},
                             "Subscription": {"Type": 1, "ValidUntil": "2024-01-01T00:00:01Z"},
                             "LastLoginAt": "2024-01-01T00:00:00Z"});
        assert_eq!(
            paths(source, encoded),
            [
                "DisplayName",
                "LastLoginAt",
                "Settings.X",
                "Subscription.Type",
                "Subscription.ValidUntil"
            ]
        );
    }

    #[test]
    fn badges_match_by_configuration_then_id_and_notes_excuse_by_prefix() {
        let badge = |id: &str, config: &str, axis: &str, value: f64| json!({"Id": id, "BadgeConfigurationId": config, "Axis": axis, "TriggerValue": value});
        let source = json!({"id": "p", "EarnedBadges": [
            badge("b1", "c1", "x", 0.1), badge("b2", "c2", "y", 1.0), badge("b3", "c2", "z", 1.0),
        ]});
        // PostgreSQL kept the second badge of c2, in another order, with f32 values
        let encoded = json!({"id": "p", "EarnedBadges": [
            badge("b3", "c2", "z", f64::from(1.0f32)), badge("b1", "c1", "x", f64::from(0.1f32)),
        ]});
        let diffs = differences("UserProfiles", &source, &encoded);
        let named: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(named, ["EarnedBadges[1]"]);
        assert!(excused(&diffs[0], &["EarnedBadges[1]".to_owned()]));
        assert!(excused(&diffs[0], &["b2".to_owned()]), "the old note form");
        assert!(excused(&diffs[0], &["EarnedBadges".to_owned()]));
        assert!(!excused(&diffs[0], &["EarnedBadges[10]".to_owned()]));
        assert!(!excused(&diffs[0], &["EarnedBadges[0]".to_owned()]));

        let moved = json!({"id": "p", "EarnedBadges": [badge("b1", "c1", "w", 0.1)]});
        let diffs = differences(
            "UserProfiles",
            &json!({"id": "p", "EarnedBadges": [badge("b1", "c1", "x", 0.1)]}),
            &moved,
        );
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].path, "EarnedBadges[0].Axis");
        assert!(excused(&diffs[0], &["EarnedBadges[c1].Axis".to_owned()]));
    }
}
