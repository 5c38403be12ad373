//! Embedded ids that several documents share.
//!
//! An id embedded in a document (`Subscription.Id` in an account, a badge's `Id` in a profile)
//! is not a Cosmos document id, and nothing made the app keep it unique: real data repeats them
//! (copied defaults, cloned test accounts). Each such id is the primary key of a row here, so
//! without a rule the second document to arrive would fail on the primary key and be
//! quarantined whole, and which one failed would depend on the order documents arrive in.
//!
//! The rule: of the rows whose original id maps to one key (their *natural* key), the one that
//! ranks first keeps the key; every other row gets [`derived_key`]`(kind, owner, natural…)` and
//! keeps the original spelling in `cosmos_id` (so a write back to Cosmos still writes the
//! original id), and its document gets an `embedded_id_collision` note naming the original,
//! the key it got and the document that kept it. The rank is the row's own creation time
//! (`subscriptions.created_at`, `user_badges.earned_at`), then the owner's document id, then
//! the badge configuration. Not the document's `_ts`: it moves on every write, so the key would
//! flip between documents each time the original holder was updated; a creation time does not,
//! and the one created first is the best guess at the original.
//!
//! Resolution is a full recomputation for every natural key a batch touches (the keys it
//! brings and the keys its documents held before), over the rows of every document, under an
//! advisory lock per key: the result is a function of the set of documents, not of the order or
//! grouping in which they arrive, nor of the number of workers.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use mystira_domain::ids::derived_key;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{DocumentNote, NotesFor, Result, column};
use crate::error::map_sqlx_error;

/// The note a row gets when another document's row kept its original id.
pub const COLLISION_NOTE: &str = "embedded_id_collision";

/// A table whose rows carry embedded ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EmbeddedTable {
    Subscriptions,
    Badges,
}

impl EmbeddedTable {
    fn name(self) -> &'static str {
        match self {
            Self::Subscriptions => "subscriptions",
            Self::Badges => "user_badges",
        }
    }

    /// The container of the documents owning the rows.
    fn owner_container(self) -> &'static str {
        match self {
            Self::Subscriptions => "Accounts",
            Self::Badges => "UserProfiles",
        }
    }

    /// The kind passed to [`derived_key`] for a row that lost its id.
    fn derived_kind(self) -> &'static str {
        match self {
            Self::Subscriptions => "subscription_id_collision",
            Self::Badges => "badge_id_collision",
        }
    }

    /// The document field the note is about.
    fn subject(self, sub_key: &str) -> String {
        match self {
            Self::Subscriptions => "Subscription.Id".to_owned(),
            Self::Badges => format!("EarnedBadges[{sub_key}].Id"),
        }
    }

    /// Current rows claiming one of `$1` (natural keys), or (`$2`) owned by one of the owners;
    /// the owner's document id is its `cosmos_id`, or its key when that is the document id.
    ///
    /// Each of the three ways a row can match has an index of its own (the primary key, the
    /// source-key index, the owner's unique index), and the rows found are read by key, so a
    /// batch costs in proportion to the batch, whatever the table's size or statistics. The
    /// three conditions OR-ed in one `where` were planned as parallel sequential scans of the
    /// whole table per batch at 5 million badges (1.2 s a batch: issue 33). No branch lets
    /// the planner weigh the batch against the table: the primary-key branch takes its keys as
    /// an array it cannot count (an init plan), so it expects a few; the source-key and owner
    /// branches, whose columns are not unique, look each key up in a lateral subquery it may not
    /// flatten (`offset 0`), costed as one index lookup per key whatever the statistics.
    /// `owner = any($2)` with a batch's 1,000 ids on a table not analyzed yet was estimated at
    /// every row and planned as a sequential scan (as `profiles::write_badges`' delete was).
    fn candidates_sql(self) -> &'static str {
        match self {
            Self::Subscriptions => {
                "select s.id, s.cosmos_id, s.account_id as owner,
                        s.owner_document, '' as sub_key, s.created_at as rank_at,
                        coalesce(mystira_key_for_cosmos_id(s.cosmos_id), s.id) as natural_key
                 from (select id from subscriptions where id = any(array(select unnest($1::uuid[])))
                       union
                       select x.id from unnest($1::uuid[]) as k(id)
                       cross join lateral (
                           select id from subscriptions
                           where cosmos_id is not null and mystira_key_for_cosmos_id(cosmos_id) = k.id
                           offset 0) as x
                       union
                       select x.id from unnest($2::uuid[]) as k(id)
                       cross join lateral (select id from subscriptions where account_id = k.id offset 0) as x
                      ) as hit
                 -- one lookup by key per row found (the limit keeps it from being flattened
                 -- into a join the planner may choose to hash over the whole table)
                 cross join lateral (
                     select s.*, coalesce(a.cosmos_id, a.id::text) as owner_document
                     from subscriptions s join accounts a on a.id = s.account_id
                     where s.id = hit.id
                     limit 1
                 ) as s"
            }
            Self::Badges => {
                "select b.id, b.cosmos_id, b.user_profile_id as owner,
                        b.owner_document, b.badge_configuration_id::text as sub_key,
                        b.earned_at as rank_at,
                        coalesce(mystira_key_for_cosmos_id(b.cosmos_id), b.id) as natural_key
                 from (select id from user_badges where id = any(array(select unnest($1::uuid[])))
                       union
                       select x.id from unnest($1::uuid[]) as k(id)
                       cross join lateral (
                           select id from user_badges
                           where cosmos_id is not null and mystira_key_for_cosmos_id(cosmos_id) = k.id
                           offset 0) as x
                       union
                       select x.id from unnest($2::uuid[]) as k(id)
                       cross join lateral (select id from user_badges where user_profile_id = k.id offset 0) as x
                      ) as hit
                 cross join lateral (
                     select b.*, coalesce(p.cosmos_id, p.id::text) as owner_document
                     from user_badges b join user_profiles p on p.id = b.user_profile_id
                     where b.id = hit.id
                     limit 1
                 ) as b"
            }
        }
    }
}

/// A row that is about to be written, with the id its document gave it.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    /// The key the original id maps to (the row's id as decoded).
    pub natural: Uuid,
    /// The original spelling (the decoded `cosmos_id`, else the key's text).
    pub original: String,
    pub owner: Uuid,
    pub owner_document: String,
    pub sub_key: String,
    pub rank_at: DateTime<Utc>,
}

/// What [`resolve`] decided for an incoming row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Assigned {
    pub id: Uuid,
    /// `Some(original)` when the row lost its id: its `cosmos_id` must hold the original.
    pub cosmos_id_override: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Existing {
    id: Uuid,
    cosmos_id: Option<String>,
    owner: Uuid,
    owner_document: String,
    sub_key: String,
    rank_at: DateTime<Utc>,
    natural_key: Uuid,
}

/// One claimant of a natural key.
struct Claimant {
    /// The rank: creation time in microseconds (what PostgreSQL keeps, so a stored row and an
    /// incoming one compare alike), owner document, sub key.
    rank: (i64, String, String),
    owner: Uuid,
    owner_document: String,
    sub_key: String,
    original: String,
    /// `Some(current id)` for a stored row outside the batch; `None` for an incoming row
    /// (its index in the batch is in `incoming_index`).
    stored_id: Option<Uuid>,
    incoming_index: Option<usize>,
}

/// Decides the id of every row claiming a natural key that `incoming` brings, that the
/// `owners`' current rows hold or that is `released` (held by rows just deleted), moves stored rows outside the batch to their new ids, rewrites
/// their documents' collision notes, and returns the ids for `incoming` (in order) and the
/// collision notes of the incoming documents. The owners' current rows are being replaced by
/// the caller, so they take no part (except for releasing the keys they held). Runs inside the
/// caller's transaction, before it writes the incoming rows.
pub(super) async fn resolve(
    conn: &mut PgConnection,
    table: EmbeddedTable,
    owners: &[Uuid],
    released: &[Uuid],
    incoming: &[Incoming],
) -> Result<(Vec<Assigned>, Vec<NotesFor>)> {
    let map = |e| map_sqlx_error(table.name(), e);
    let mut naturals: BTreeSet<Uuid> = incoming.iter().map(|i| i.natural).collect();
    naturals.extend(released);
    // the keys the owners hold now may be released by this batch: recompute those too
    let held: Vec<Existing> = sqlx::query_as(sqlx::AssertSqlSafe(table.candidates_sql()))
        .bind(Vec::<Uuid>::new())
        .bind(owners)
        .fetch_all(&mut *conn)
        .await
        .map_err(map)?;
    naturals.extend(held.iter().map(|r| r.natural_key));
    if naturals.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let naturals: Vec<Uuid> = naturals.into_iter().collect();
    // one lock per natural key, taken in key order so two batches cannot deadlock on them
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended($1 || ':' || k::text, 0))
         from unnest($2::uuid[]) as k order by k",
    )
    .bind(table.name())
    .bind(&naturals)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    let stored: Vec<Existing> = sqlx::query_as(sqlx::AssertSqlSafe(table.candidates_sql()))
        .bind(&naturals)
        .bind(Vec::<Uuid>::new())
        .fetch_all(&mut *conn)
        .await
        .map_err(map)?;

    let mut claims: BTreeMap<Uuid, Vec<Claimant>> = BTreeMap::new();
    for r in stored {
        if owners.contains(&r.owner) || naturals.binary_search(&r.natural_key).is_err() {
            continue;
        }
        let original = r
            .cosmos_id
            .clone()
            .unwrap_or_else(|| r.natural_key.hyphenated().to_string());
        claims.entry(r.natural_key).or_default().push(Claimant {
            rank: (
                r.rank_at.timestamp_micros(),
                r.owner_document.clone(),
                r.sub_key.clone(),
            ),
            owner: r.owner,
            owner_document: r.owner_document,
            sub_key: r.sub_key,
            original,
            stored_id: Some(r.id),
            incoming_index: None,
        });
    }
    for (i, r) in incoming.iter().enumerate() {
        claims.entry(r.natural).or_default().push(Claimant {
            rank: (
                r.rank_at.timestamp_micros(),
                r.owner_document.clone(),
                r.sub_key.clone(),
            ),
            owner: r.owner,
            owner_document: r.owner_document.clone(),
            sub_key: r.sub_key.clone(),
            original: r.original.clone(),
            stored_id: None,
            incoming_index: Some(i),
        });
    }

    let mut assigned: Vec<Option<Assigned>> = vec![None; incoming.len()];
    let mut incoming_notes = Vec::new();
    // stored rows that change id: (old, new, cosmos_id); those giving up a key move first
    let mut moves_away: Vec<(Uuid, Uuid, Option<String>)> = Vec::new();
    let mut moves_to_natural: Vec<(Uuid, Uuid, Option<String>)> = Vec::new();
    // collision notes of stored documents outside the batch: (document, subject, note)
    let mut stored_notes: Vec<(String, DocumentNote)> = Vec::new();
    let mut stored_note_subjects: Vec<(String, String)> = Vec::new();
    for (natural, mut rows) in claims {
        rows.sort_by(|a, b| a.rank.cmp(&b.rank));
        let winner_document = rows[0].owner_document.clone();
        for (place, row) in rows.into_iter().enumerate() {
            let subject = table.subject(&row.sub_key);
            let (id, cosmos_id, note) = if place == 0 {
                // the original spelling is the id's own text unless it differs from the key's
                let keep = (row.original != natural.hyphenated().to_string())
                    .then(|| row.original.clone());
                (natural, keep, None)
            } else {
                let discriminator = if row.sub_key.is_empty() {
                    natural.hyphenated().to_string()
                } else {
                    format!("{}:{}", natural.hyphenated(), row.sub_key)
                };
                let id = derived_key(table.derived_kind(), row.owner, &discriminator);
                let note = DocumentNote {
                    code: COLLISION_NOTE.to_owned(),
                    subject: subject.clone(),
                    detail: serde_json::json!({
                        "original_id": row.original,
                        "assigned_id": id,
                        "kept_by": winner_document,
                    }),
                    original: Some(serde_json::Value::String(row.original.clone())),
                };
                (id, Some(row.original.clone()), Some(note))
            };
            match (row.stored_id, row.incoming_index) {
                (Some(old), _) => {
                    stored_note_subjects.push((row.owner_document.clone(), subject));
                    if let Some(note) = note {
                        stored_notes.push((row.owner_document.clone(), note));
                    }
                    if old != id {
                        if id == natural {
                            moves_to_natural.push((old, id, cosmos_id));
                        } else {
                            moves_away.push((old, id, cosmos_id));
                        }
                    }
                }
                (None, Some(i)) => {
                    assigned[i] = Some(Assigned {
                        id,
                        cosmos_id_override: (place > 0).then(|| row.original.clone()),
                    });
                    if let Some(note) = note {
                        incoming_notes.push(NotesFor {
                            document_id: row.owner_document.clone(),
                            note,
                        });
                    }
                }
                (None, None) => unreachable!("a claimant is stored or incoming"),
            }
        }
    }

    for (old, new, cosmos_id) in moves_away.into_iter().chain(moves_to_natural) {
        // `table` is one of two constants, never input
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update {} set id = $2, cosmos_id = $3 where id = $1",
            table.name()
        )))
        .bind(old)
        .bind(new)
        .bind(cosmos_id)
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    }
    if !stored_note_subjects.is_empty() {
        let map = |e| map_sqlx_error("document_notes", e);
        sqlx::query(
            // one primary-key descent per note, deleted by row address (see
            // `super::replace_notes`): never a join that may hash the whole table
            "delete from migration.document_notes
             where ctid = any(array(
                 select n.ctid from unnest($2::text[], $3::text[]) as x(d, s)
                 cross join lateral (
                     select ctid from migration.document_notes
                     where container = $1 and document_id = x.d and code = $4 and subject = x.s
                     offset 0) as n))",
        )
        .bind(table.owner_container())
        .bind(column(&stored_note_subjects, |(d, _)| d.clone()))
        .bind(column(&stored_note_subjects, |(_, s)| s.clone()))
        .bind(COLLISION_NOTE)
        .execute(&mut *conn)
        .await
        .map_err(map)?;
        sqlx::query(
            "insert into migration.document_notes (container, document_id, code, subject, detail, original)
             select $1, d, $2, s, x, o
             from unnest($3::text[], $4::text[], $5::jsonb[], $6::jsonb[]) as n(d, s, x, o)
             on conflict (container, document_id, code, subject) do update
                 set detail = excluded.detail, original = excluded.original",
        )
        .bind(table.owner_container())
        .bind(COLLISION_NOTE)
        .bind(column(&stored_notes, |(d, _)| d.clone()))
        .bind(column(&stored_notes, |(_, n)| n.subject.clone()))
        .bind(column(&stored_notes, |(_, n)| n.detail.clone()))
        .bind(column(&stored_notes, |(_, n)| n.original.clone()))
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    }
    let assigned = assigned
        .into_iter()
        .map(|a| a.expect("every incoming row is a claimant of its natural key"))
        .collect();
    Ok((assigned, incoming_notes))
}

/// The natural keys the rows of `owners` hold, read before the owners are deleted, so that
/// [`resolve`] can hand them to the next claimant afterwards.
pub(super) async fn keys_held_by(
    conn: &mut PgConnection,
    table: EmbeddedTable,
    owners: &[Uuid],
) -> Result<Vec<Uuid>> {
    let rows: Vec<Existing> = sqlx::query_as(sqlx::AssertSqlSafe(table.candidates_sql()))
        .bind(Vec::<Uuid>::new())
        .bind(owners)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx_error(table.name(), e))?;
    Ok(rows.into_iter().map(|r| r.natural_key).collect())
}
