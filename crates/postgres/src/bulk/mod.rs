//! Bulk writes of whole Cosmos documents into the domain tables: batched, idempotent and
//! stale-safe.
//!
//! A batch is written in one transaction with `UNNEST` array parameters (one round trip per
//! table, whatever the batch size). Every document first claims its version in
//! `migration.document_versions`; only documents whose `_ts`/`_etag` is newer than the copy
//! already there are written, so re-running a batch changes nothing and an older copy never
//! overwrites newer data. The transaction sets `mystira.keep_source_timestamps`, so the
//! `updated_at` trigger keeps the source's timestamps.
//!
//! Two more rules of the guard, for the dual write: a document whose aggregate has a pending
//! outbox row (PostgreSQL changed it and Cosmos has not taken the change yet) is held back
//! (`unchanged`), since PostgreSQL is then the newer side; and a document deleted in Cosmos
//! keeps a tombstone version ([`delete_document`]) that only a strictly newer write can pass.
//!
//! When a batch fails on a constraint (one bad document among many), the batch is retried one
//! document per transaction, so the good documents land and each bad one comes back with its
//! own classified error for the caller to quarantine. Transient failures are returned as they
//! are, for the caller to retry the whole batch.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use mystira_domain::{
    Account, CompletedScenario, PendingSignup, RepoError, Subscription, UserBadge, UserProfile,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::map_sqlx_error;

type Result<T> = std::result::Result<T, RepoError>;

/// The version of a source document: its Cosmos `id`, `_ts` and `_etag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVersion {
    pub document_id: String,
    pub ts: i64,
    pub etag: Option<String>,
}

/// Something an operator should know about a document that landed (a broken reference, a
/// duplicate that was not copied, a default applied). Ids and field names only.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentNote {
    pub code: String,
    pub subject: String,
    pub detail: serde_json::Value,
    /// The value as the source had it, when the codec changed or dropped it. May be personal
    /// data: stored beside the domain tables, never logged or printed.
    pub original: Option<serde_json::Value>,
}

/// An `Accounts` document: the account, its embedded subscription and its completed scenarios.
#[derive(Debug, Clone)]
pub struct AccountDocument {
    pub version: SourceVersion,
    pub account: Account,
    pub subscription: Option<Subscription>,
    pub completed_scenarios: Vec<CompletedScenario>,
    pub notes: Vec<DocumentNote>,
}

/// A `UserProfiles` document: the profile and its badges (duplicates already removed).
#[derive(Debug, Clone)]
pub struct ProfileDocument {
    pub version: SourceVersion,
    pub profile: UserProfile,
    /// The `AccountId` string as it is in the document, kept in a note if it resolves to no
    /// account (the profile then lands detached).
    pub account_ref: Option<String>,
    pub badges: Vec<UserBadge>,
    pub notes: Vec<DocumentNote>,
}

/// A `PendingSignups` document.
#[derive(Debug, Clone)]
pub struct SignupDocument {
    pub version: SourceVersion,
    pub signup: PendingSignup,
    pub notes: Vec<DocumentNote>,
}

/// What happened to one document of a batch.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Written (new, or newer than the stored copy).
    Written,
    /// Not written: the stored copy has this version or a newer one.
    Unchanged,
    /// Not written: the document breaks a constraint. Quarantine it.
    Failed(RepoError),
}

/// A kind of document the bulk writer can write.
#[async_trait]
pub trait BulkDocument: Send + Sync {
    /// The Cosmos container the documents come from.
    const CONTAINER: &'static str;
    fn version(&self) -> &SourceVersion;
    /// The primary key of the document's main row.
    fn key(&self) -> Uuid;
    fn notes(&self) -> &[DocumentNote];
    /// Writes the (already version-checked) documents inside `conn`'s transaction.
    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>>;
}

/// Extra notes the writer itself produced for a document (e.g. a detached profile).
#[derive(Debug, Clone)]
pub struct NotesFor {
    pub document_id: String,
    pub note: DocumentNote,
}

/// One column of a batch, for binding as an array to an `unnest` insert.
fn column<I, U>(rows: &[I], value: impl Fn(&I) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// The [`BulkDocument`] accessors every document kind has alike: `$main` is the field holding
/// the document's main entity, whose id is the document's key.
macro_rules! document_accessors {
    ($main:ident) => {
        fn version(&self) -> &SourceVersion {
            &self.version
        }
        fn key(&self) -> Uuid {
            self.$main.id
        }
        fn notes(&self) -> &[DocumentNote] {
            &self.notes
        }
    };
}

// after the macro: the document kinds' modules use it
mod accounts;
mod profiles;
mod signups;

/// A transaction that copies source values: `mystira.keep_source_timestamps` makes the
/// `updated_at` trigger keep the source's timestamps and the outbox trigger stay silent (a copy
/// from Cosmos must not echo back to Cosmos).
async fn begin_copy(
    pool: &PgPool,
    entity: &'static str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let map = |e| map_sqlx_error(entity, e);
    let mut tx = pool.begin().await.map_err(map)?;
    sqlx::query("set local mystira.keep_source_timestamps = 'on'")
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    Ok(tx)
}

/// Writes a batch and returns one outcome per input document, in order. `Err` only for a
/// failure that says nothing about the documents (the database went away): retry the batch.
pub async fn write_batch<D: BulkDocument>(pool: &PgPool, docs: &[D]) -> Result<Vec<WriteOutcome>> {
    // Within one batch a document id may appear twice (a source read twice across a resume);
    // only the newest copy is written, the other is reported unchanged.
    let mut newest: HashMap<&str, usize> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        let v = d.version();
        newest
            .entry(v.document_id.as_str())
            .and_modify(|j| {
                let w = docs[*j].version();
                if (v.ts, &v.etag) > (w.ts, &w.etag) {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    let chosen: Vec<usize> = {
        let mut c: Vec<usize> = newest.into_values().collect();
        c.sort_unstable();
        c
    };
    let refs: Vec<&D> = chosen.iter().map(|&i| &docs[i]).collect();

    let mut outcomes: Vec<WriteOutcome> = docs.iter().map(|_| WriteOutcome::Unchanged).collect();
    match write_in_transaction(pool, &refs).await {
        Ok(fresh) => {
            for &i in &chosen {
                if fresh.contains(&docs[i].version().document_id) {
                    outcomes[i] = WriteOutcome::Written;
                }
            }
        }
        Err(e) if e.is_retryable() => return Err(e),
        Err(_) => {
            // isolate the documents that break a constraint
            for &i in &chosen {
                outcomes[i] = match write_in_transaction(pool, &[&docs[i]]).await {
                    Ok(fresh) if fresh.is_empty() => WriteOutcome::Unchanged,
                    Ok(_) => WriteOutcome::Written,
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => WriteOutcome::Failed(e),
                };
            }
        }
    }
    Ok(outcomes)
}

/// One transaction: claim versions, write the fresh documents' rows, replace their notes, and
/// resolve their quarantine entries. Returns the ids of the documents written.
async fn write_in_transaction<D: BulkDocument>(
    pool: &PgPool,
    docs: &[&D],
) -> Result<HashSet<String>> {
    let map = |e| map_sqlx_error(D::CONTAINER, e);
    let mut tx = begin_copy(pool, D::CONTAINER).await?;

    let fresh: HashSet<String> = sqlx::query_scalar(
        "insert into migration.document_versions as v
             (container, document_id, key, source_ts, source_etag)
         select $1, d, k, t, e from unnest($2::text[], $3::uuid[], $4::int8[], $5::text[]) as x(d, k, t, e)
         -- PostgreSQL holds a change of this document that Cosmos has not taken yet (an outbox
         -- row): PostgreSQL is the newer side, and a copy from Cosmos must not overwrite it
         where not exists (select 1 from migration.outbox o where o.container = $1 and o.key = x.k)
         on conflict (container, document_id) do update set
             key = excluded.key, source_ts = excluded.source_ts,
             source_etag = excluded.source_etag, deleted = false, written_at = now()
         -- a newer version wins; within one second (`_ts` has no finer resolution) another
         -- etag is another version, except after a delete: its tombstone carries the deleted
         -- version's `_ts`, and only a strictly newer write may bring the document back
         where v.source_ts < excluded.source_ts
            or (v.source_ts = excluded.source_ts and not v.deleted
                and v.source_etag is distinct from excluded.source_etag)
         returning document_id",
    )
    .bind(D::CONTAINER)
    .bind(column(docs, |d| d.version().document_id.clone()))
    .bind(column(docs, |d| d.key()))
    .bind(column(docs, |d| d.version().ts))
    .bind(column(docs, |d| d.version().etag.clone()))
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?
    .into_iter()
    .collect();

    let to_write: Vec<&D> = docs
        .iter()
        .copied()
        .filter(|d| fresh.contains(&d.version().document_id))
        .collect();
    if !to_write.is_empty() {
        let extra = D::write_rows(&mut tx, &to_write).await?;
        replace_notes::<D>(&mut tx, &to_write, &extra).await?;
    }
    let all_ids: Vec<String> = docs
        .iter()
        .map(|d| d.version().document_id.clone())
        .collect();
    crate::bookkeeping::resolve_quarantined(&mut *tx, D::CONTAINER, &all_ids).await?;
    tx.commit().await.map_err(map)?;
    Ok(fresh)
}

async fn replace_notes<D: BulkDocument>(
    conn: &mut PgConnection,
    docs: &[&D],
    extra: &[NotesFor],
) -> Result<()> {
    let map = |e| map_sqlx_error("document_notes", e);
    let ids: Vec<String> = docs
        .iter()
        .map(|d| d.version().document_id.clone())
        .collect();
    sqlx::query(
        "delete from migration.document_notes where container = $1 and document_id = any($2)",
    )
    .bind(D::CONTAINER)
    .bind(&ids)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    let notes: Vec<(&str, &DocumentNote)> = docs
        .iter()
        .flat_map(|d| {
            d.notes()
                .iter()
                .map(|n| (d.version().document_id.as_str(), n))
        })
        .chain(extra.iter().map(|n| (n.document_id.as_str(), &n.note)))
        .collect();
    if notes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into migration.document_notes (container, document_id, code, subject, detail, original)
         select $1, d, c, s, x, o
         from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[]) as n(d, c, s, x, o)
         on conflict (container, document_id, code, subject) do update
             set detail = excluded.detail, original = excluded.original",
    )
    .bind(D::CONTAINER)
    .bind(notes.iter().map(|(d, _)| (*d).to_owned()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.code.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.subject.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.detail.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.original.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

/// The table holding the main row of a container's documents (the others cascade from it).
fn main_table(container: &str) -> Result<&'static str> {
    match container {
        "Accounts" => Ok("accounts"),
        "UserProfiles" => Ok("user_profiles"),
        "PendingSignups" => Ok("pending_signups"),
        _ => Err(RepoError::Store(format!(
            "container `{container}` is not part of the user domain"
        ))),
    }
}

/// What applying a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The tombstone is recorded; `removed` says whether a row was there to delete.
    Deleted { removed: bool },
    /// A newer version of the document is already recorded (it was written again after this
    /// delete): nothing changed.
    Superseded,
}

/// Applies a delete that Cosmos has taken: records a tombstone version for the document
/// (`source_ts` = the `_ts` of the version that was deleted, or when the delete was seen) and
/// deletes its main row, whose
/// dependants cascade (an account's profiles are detached). A tombstone is a version like any
/// other: a late copy of the document from before the delete is refused by the same guard as a
/// stale write, and a delete older than the recorded version changes nothing.
///
/// Runs as a copy from Cosmos (`mystira.keep_source_timestamps`), so no outbox row is written:
/// the delete came from Cosmos and must not echo back to it.
pub async fn delete_document(
    pool: &PgPool,
    container: &str,
    document_id: &str,
    key: Uuid,
    source_ts: i64,
) -> Result<DeleteOutcome> {
    let table = main_table(container)?;
    let map = |e| map_sqlx_error(table, e);
    let mut tx = begin_copy(pool, table).await?;
    let claimed: Option<i32> = sqlx::query_scalar(
        "insert into migration.document_versions as v
             (container, document_id, key, source_ts, source_etag, deleted)
         values ($1, $2, $3, $4, null, true)
         on conflict (container, document_id) do update set
             key = excluded.key, source_ts = excluded.source_ts, source_etag = null,
             deleted = true, written_at = now()
         where v.source_ts <= excluded.source_ts
         returning 1",
    )
    .bind(container)
    .bind(document_id)
    .bind(key)
    .bind(source_ts)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map)?;
    if claimed.is_none() {
        return Ok(DeleteOutcome::Superseded);
    }
    // `table` is one of three constants, never input
    let removed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {table} where id = $1"
    )))
    .bind(key)
    .execute(&mut *tx)
    .await
    .map_err(map)?
    .rows_affected()
        > 0;
    sqlx::query("delete from migration.document_notes where container = $1 and document_id = $2")
        .bind(container)
        .bind(document_id)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    tx.commit().await.map_err(map)?;
    Ok(DeleteOutcome::Deleted { removed })
}
