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
//! ([`WriteOutcome::HeldBack`]), since PostgreSQL is then the newer side; and a document deleted
//! in Cosmos keeps a tombstone version ([`delete_document`]) that only a strictly newer write
//! can pass. A held-back copy is not an `unchanged` one: the router must not acknowledge a
//! phase-1 write whose copy was held back (docs/dual-write.md, "Who wins an aggregate").
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
    /// Not written, although its version is newer than the stored copy's: its aggregate has a
    /// pending outbox row, a PostgreSQL change Cosmos has not taken yet, which this copy would
    /// overwrite. Callers that only copy (backfill, replication) count it as unchanged; the
    /// router's phase-1 copy must not acknowledge its write (the relay will put PostgreSQL's
    /// state over the document this copy came from).
    HeldBack,
    /// Not written: the document breaks a constraint. Quarantine it.
    Failed(RepoError),
    /// Not written: another document of the container maps to the same row and is newer (see
    /// [`SUPERSEDED_DUPLICATE`]). Quarantine it with that reason; `by` is the other's id.
    Superseded { by: String },
    /// Not written: another document of the container claims the same identity (an
    /// account's `auth0_user_id`) and keeps it (see [`DUPLICATE_AUTH0_USER_ID`]). Quarantine
    /// it with that reason; `by` is the keeper's document id, `None` when the keeper is a row
    /// PostgreSQL holds no source version for (written by the service, never displaced).
    IdentityTaken { by: Option<String> },
}

/// The quarantine reason of a document that lost its row to another document of the same key.
///
/// Two documents of one container can map to one key: EF Core 8 wrote `"id": "Account|<guid>"`,
/// EF Core 9 writes `"id": "<guid>"`, and a GUID can be spelled in two letter cases. Only one of
/// them can own the row, and which one must not depend on the order they arrive in: the owner
/// is the greatest by (`_ts`, id is the key's canonical text, id), i.e. the newest, and on a tie
/// the one in EF Core 9's form. The others are kept in the quarantine with this reason: with
/// their raw document when they arrive after the owner, or, when they had been written first
/// and are displaced, with a snapshot of the values they had in PostgreSQL (their raw document
/// is not at hand then; the source still has it).
pub const SUPERSEDED_DUPLICATE: &str = "superseded_duplicate";

/// The quarantine reason of an account document that lost its login to another account.
///
/// `accounts.auth0_user_id` is unique, and real data has two account documents (of different
/// ids) with one Auth0 subject: a sign-up retried after a timeout, an account re-created by
/// support. Only one can keep the login, and which one must not depend on the order the
/// documents arrive in (workers, batch boundaries, resumes): the keeper is the greatest by
/// (`_ts`, document id), i.e. the newest, and on a tie the greater id. A row PostgreSQL holds no
/// source version for (written by the service, or changed in PostgreSQL and not yet taken by
/// Cosmos) is never displaced by a copy: the copy loses. The others are kept in the quarantine
/// with this reason: with their raw document when they arrive after the keeper, or, when they
/// had landed first and are displaced, with a snapshot of what PostgreSQL held for them (under
/// `displaced_copy_from_postgresql`). Their version record stays, so an older copy of a loser
/// cannot land later and take its place; their profiles are detached with a `missing_account`
/// note, as if the account had never landed, so they attach again if it does.
pub const DUPLICATE_AUTH0_USER_ID: &str = "duplicate_auth0_user_id";

/// The rank deciding which of several documents of one key owns the row (the greatest).
fn owner_rank(ts: i64, document_id: &str, key: Uuid) -> (i64, bool, &str) {
    (ts, document_id == key.hyphenated().to_string(), document_id)
}

/// What a batch did: one outcome per input document, in order, and the documents written
/// earlier that a newer document of the same key displaced in this batch.
#[derive(Debug)]
pub struct BatchOutcome {
    pub outcomes: Vec<WriteOutcome>,
    /// Ids of documents moved from the tables to the quarantine (`superseded_duplicate`).
    pub displaced: Vec<String>,
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
    /// Checks every row of the document against the schema's rules, before anything is
    /// written (the upsert path and the initial load alike).
    fn validate(&self) -> Result<()>;
    /// Writes the (already version-checked and validated) documents inside `conn`'s
    /// transaction.
    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>>;
    /// A query of one jsonb value (`$1` = the key): the rows of the document as PostgreSQL
    /// holds them, kept in the quarantine when a newer document of the key displaces them.
    const SNAPSHOT_SQL: &'static str;
    /// The unique value other than the key that documents of this kind compete for, if any.
    const IDENTITY: Option<Identity> = None;
    /// This document's claim on [`Self::IDENTITY`].
    fn identity(&self) -> Option<&str> {
        None
    }
}

/// A unique value documents of one kind compete for besides their key (an account's login).
/// Who keeps it is decided by [`DUPLICATE_AUTH0_USER_ID`]'s rule, before any row is written.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The column holding it, naming it in lock names and messages.
    pub column: &'static str,
    /// The quarantine reason of a document that loses it.
    pub reason_code: &'static str,
    /// The rows holding any of `$1` (`text[]`): `identity`, `key`, and the `document_id` and
    /// `source_ts` of their source version, both null when there is none or PostgreSQL holds a
    /// change Cosmos has not taken yet (such a row is never displaced by a copy).
    pub holders_sql: &'static str,
    /// Clears the value on the rows of `$1` (`uuid[]`) that are about to be rewritten, so
    /// that another row of the same batch can take it within one statement.
    pub release_sql: &'static str,
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
mod delete;
pub mod embedded;
mod identity;
mod notes;
mod profiles;
mod signups;

use delete::remove_main_row;
pub use delete::{DeleteOutcome, delete_document};
use notes::delete_notes;
pub(crate) use notes::{insert_notes, replace_notes};

/// A transaction that copies source values: `mystira.keep_source_timestamps` makes the
/// `updated_at` trigger keep the source's timestamps and the outbox trigger stay silent (a copy
/// from Cosmos must not echo back to Cosmos).
///
/// JIT is off inside it: its statements touch a batch's rows by key, and JIT compiles a plan
/// whose estimated cost passes `jit_above_cost` (the estimate grows with the tables, not with
/// the batch), which took about 250 ms of a 300 ms per-batch lookup at a million badges
/// (measured on PostgreSQL 15, issue 33), and it would add the same to a phase-1 call.
///
/// Every statement is planned for its own parameters (`plan_cache_mode = force_custom_plan`):
/// a pooled connection otherwise switches a prepared statement to a generic plan after five
/// runs, made once for the tables as they were then (nearly empty, early in an upsert run) and
/// kept until an `ANALYZE` of one of them, which a table autovacuum has not reached never gets:
/// a sequential scan per batch of a table that grew to millions of rows (issue 33). Planning
/// each statement costs well under a millisecond.
async fn begin_copy(
    pool: &PgPool,
    entity: &'static str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let map = |e| map_sqlx_error(entity, e);
    let mut tx = pool.begin().await.map_err(map)?;
    sqlx::query(
        "select set_config('mystira.keep_source_timestamps', 'on', true),
                set_config('jit', 'off', true),
                set_config('plan_cache_mode', 'force_custom_plan', true)",
    )
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    Ok(tx)
}

/// Writes a batch and returns one outcome per input document, in order. `Err` only for a
/// failure that says nothing about the documents (the database went away): retry the batch.
pub async fn write_batch<D: BulkDocument>(pool: &PgPool, docs: &[D]) -> Result<BatchOutcome> {
    let newest = newest_per_document(docs);
    let mut outcomes: Vec<WriteOutcome> = docs.iter().map(|_| WriteOutcome::Unchanged).collect();
    // and two documents of one key: only the owner goes on (see SUPERSEDED_DUPLICATE)
    let mut owner_of_key: HashMap<Uuid, usize> = HashMap::new();
    let rank = |j: usize| {
        let v = docs[j].version();
        owner_rank(v.ts, &v.document_id, docs[j].key())
    };
    for &i in newest.values() {
        owner_of_key
            .entry(docs[i].key())
            .and_modify(|j| {
                if rank(i) > rank(*j) {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    for &i in newest.values() {
        let owner = owner_of_key[&docs[i].key()];
        if owner != i {
            outcomes[i] = superseded(&docs[owner]);
        }
    }
    let chosen: Vec<usize> = {
        let mut c: Vec<usize> = owner_of_key.into_values().collect();
        c.sort_unstable();
        c
    };
    let refs: Vec<&D> = chosen.iter().map(|&i| &docs[i]).collect();

    let mut displaced = Vec::new();
    match write_in_transaction(pool, &refs).await {
        Ok(written) => {
            for (&i, outcome) in chosen.iter().zip(written.outcomes) {
                outcomes[i] = outcome;
            }
            displaced = written.displaced;
        }
        Err(e) if e.is_retryable() => return Err(e),
        Err(_) => {
            // isolate the documents that break a constraint
            for &i in &chosen {
                outcomes[i] = match write_in_transaction(pool, &[&docs[i]]).await {
                    Ok(mut one) => {
                        displaced.append(&mut one.displaced);
                        one.outcomes.pop().unwrap_or(WriteOutcome::Unchanged)
                    }
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => WriteOutcome::Failed(e),
                };
            }
        }
    }
    Ok(BatchOutcome {
        outcomes,
        displaced,
    })
}

/// Within one batch a document id may appear twice (a source read twice across a resume):
/// the index of the newest copy of each id (by `_ts`, then `_etag`); the others are reported
/// unchanged.
pub(crate) fn newest_per_document<D: BulkDocument>(docs: &[D]) -> HashMap<&str, usize> {
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
    newest
}

fn superseded<D: BulkDocument>(owner: &D) -> WriteOutcome {
    WriteOutcome::Superseded {
        by: owner.version().document_id.clone(),
    }
}

/// Another document of the same key, recorded as written.
#[derive(sqlx::FromRow)]
struct Rival {
    incoming: String,
    document_id: String,
    source_ts: i64,
}

/// One transaction: lock the documents' keys, set aside those a stored document of the same
/// key supersedes, claim versions, displace the stored documents a fresh one supersedes, write
/// the fresh documents' rows, replace their notes, and resolve their quarantine entries.
/// Returns one outcome per document (no `Failed`: a constraint failure fails the transaction).
async fn write_in_transaction<D: BulkDocument>(pool: &PgPool, docs: &[&D]) -> Result<BatchOutcome> {
    let map = |e| map_sqlx_error(D::CONTAINER, e);
    let mut tx = begin_copy(pool, D::CONTAINER).await?;
    crate::initial_load::guard_writers(&mut tx).await?;

    // Two processes copying two documents of one key at once would each see no rival and both
    // write: one lock per key, taken in key order so two batches cannot deadlock on them.
    let mut keys: Vec<Uuid> = docs.iter().map(|d| d.key()).collect();
    keys.sort_unstable();
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended('document:' || $1 || ':' || k::text, 0))
         from unnest($2::uuid[]) as k order by k",
    )
    .bind(D::CONTAINER)
    .bind(&keys)
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    // One descent of the versions' key index per document (a lateral subquery the planner
    // may not flatten, `offset 0`): joined with the batch's keys, and planned for 1,000 of them
    // (`force_custom_plan`, see `begin_copy`), the lookup was a hash of every version of the
    // container per batch, 38 ms instead of 6.5 ms at 100,000 accounts (issue 33).
    let rivals: Vec<Rival> = sqlx::query_as(
        "select x.d as incoming, r.document_id, r.source_ts
         from unnest($2::text[], $3::uuid[]) as x(d, k)
         cross join lateral (
             select r.document_id, r.source_ts from migration.document_versions r
             where r.container = $1 and r.key = x.k and r.document_id <> x.d and not r.deleted
             offset 0) as r",
    )
    .bind(D::CONTAINER)
    .bind(column(docs, |d| d.version().document_id.clone()))
    .bind(column(docs, |d| d.key()))
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?;
    let mut beaten_by: HashMap<&str, &Rival> = HashMap::new();
    let mut would_displace: HashMap<&str, Vec<&Rival>> = HashMap::new();
    for d in docs {
        let (v, key) = (d.version(), d.key());
        let own = owner_rank(v.ts, &v.document_id, key);
        for r in rivals.iter().filter(|r| r.incoming == v.document_id) {
            let theirs = owner_rank(r.source_ts, &r.document_id, key);
            if theirs > own {
                // named after the greatest rival, whatever order the rows came in
                let best = beaten_by.entry(v.document_id.as_str()).or_insert(r);
                if theirs > owner_rank(best.source_ts, &best.document_id, key) {
                    *best = r;
                }
            } else {
                would_displace
                    .entry(v.document_id.as_str())
                    .or_default()
                    .push(r);
            }
        }
    }
    let contenders: Vec<&D> = docs
        .iter()
        .copied()
        .filter(|d| !beaten_by.contains_key(d.version().document_id.as_str()))
        .collect();

    let fresh: HashSet<String> = sqlx::query_scalar(
        "insert into migration.document_versions as v
             (container, document_id, key, source_ts, source_etag)
         select $1, d, k, t, e from unnest($2::text[], $3::uuid[], $4::int8[], $5::text[]) as x(d, k, t, e)
         -- PostgreSQL holds a change of this document that Cosmos has not taken yet (an outbox
         -- row): PostgreSQL is the newer side, and a copy from Cosmos must not overwrite it.
         -- One probe of the outbox's aggregate index per document (`offset 0` keeps the
         -- `not exists` from becoming an anti-join, which may hash the whole outbox)
         where not exists (select 1 from migration.outbox o
                           where o.container = $1 and o.key = x.k offset 0)
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
    .bind(column(&contenders, |d| d.version().document_id.clone()))
    .bind(column(&contenders, |d| d.key()))
    .bind(column(&contenders, |d| d.version().ts))
    .bind(column(&contenders, |d| d.version().etag.clone()))
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?
    .into_iter()
    .collect();

    let held_back = held_back_by_outbox(&mut tx, &contenders, &fresh).await?;

    // who keeps a unique value several documents claim; decided before anything is written
    let identities = identity::plan(&mut tx, &contenders, &fresh).await?;
    let mut displaced = Vec::new();
    // a fresh document displaces the other documents of its key even when it loses its
    // identity: its version is the key's newest, and its rows go with the identity below
    for d in contenders
        .iter()
        .filter(|d| fresh.contains(&d.version().document_id))
    {
        for r in would_displace
            .get(d.version().document_id.as_str())
            .into_iter()
            .flatten()
        {
            displace::<D>(&mut tx, r, d).await?;
            displaced.push(r.document_id.clone());
        }
    }
    displaced.extend(identities.apply::<D>(&mut tx).await?);
    let to_write: Vec<&D> = contenders
        .iter()
        .copied()
        .filter(|d| {
            let id = d.version().document_id.as_str();
            (fresh.contains(id) && !identities.losers.contains_key(id))
                || identities.reinstated.contains(id)
        })
        .collect();
    if !to_write.is_empty() {
        for d in &to_write {
            d.validate()?;
        }
        let extra = D::write_rows(&mut tx, &to_write).await?;
        replace_notes::<D>(&mut tx, &to_write, &extra).await?;
    }
    let landed: Vec<String> = contenders
        .iter()
        .map(|d| d.version().document_id.clone())
        .filter(|id| !identities.losers.contains_key(id))
        .collect();
    crate::bookkeeping::resolve_quarantined(&mut *tx, D::CONTAINER, &landed).await?;
    tx.commit().await.map_err(map)?;
    let outcomes = docs
        .iter()
        .map(|d| {
            let id = d.version().document_id.as_str();
            match (beaten_by.get(id), identities.losers.get(id)) {
                (Some(r), _) => WriteOutcome::Superseded {
                    by: r.document_id.clone(),
                },
                (None, Some(loser)) => WriteOutcome::IdentityTaken {
                    by: loser.keeper.clone(),
                },
                (None, None) if fresh.contains(id) || identities.reinstated.contains(id) => {
                    WriteOutcome::Written
                }
                (None, None) if held_back.contains(id) => WriteOutcome::HeldBack,
                (None, None) => WriteOutcome::Unchanged,
            }
        })
        .collect();
    Ok(BatchOutcome {
        outcomes,
        displaced,
    })
}

/// The documents among `contenders` that the version guard would have let through but the
/// outbox rule held back (their aggregate has a pending outbox row). Only the documents that
/// did not claim their version are looked at, so a batch that wrote everything (the usual case)
/// costs no statement.
async fn held_back_by_outbox<D: BulkDocument>(
    conn: &mut PgConnection,
    contenders: &[&D],
    fresh: &HashSet<String>,
) -> Result<HashSet<String>> {
    let stale: Vec<&D> = contenders
        .iter()
        .copied()
        .filter(|d| !fresh.contains(&d.version().document_id))
        .collect();
    if stale.is_empty() {
        return Ok(HashSet::new());
    }
    // one index probe per document in each check (`offset 0`: never a semi- or anti-join
    // that may hash the whole table; see `write_in_transaction`)
    let held: Vec<String> = sqlx::query_scalar(
        "select x.d from unnest($2::text[], $3::uuid[], $4::int8[], $5::text[]) as x(d, k, t, e)
         where exists (select 1 from migration.outbox o
                       where o.container = $1 and o.key = x.k offset 0)
           -- the guard's own rule (see the claim in write_in_transaction), negated: no stored
           -- version stops this one
           and not exists (
               select 1 from migration.document_versions v
               where v.container = $1 and v.document_id = x.d
                 and not (v.source_ts < x.t
                          or (v.source_ts = x.t and not v.deleted
                              and v.source_etag is distinct from x.e))
               offset 0)",
    )
    .bind(D::CONTAINER)
    .bind(column(&stale, |d| d.version().document_id.clone()))
    .bind(column(&stale, |d| d.key()))
    .bind(column(&stale, |d| d.version().ts))
    .bind(column(&stale, |d| d.version().etag.clone()))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| map_sqlx_error(D::CONTAINER, e))?;
    Ok(held.into_iter().collect())
}

/// Moves a stored document that `owner` supersedes out of the tables' record: its rows as they
/// are go to the quarantine (`owner` overwrites them next), and its version and notes go, so
/// that it is no longer an owner of the key. A later copy of it meets `owner` as its rival.
async fn displace<D: BulkDocument>(
    conn: &mut PgConnection,
    rival: &Rival,
    owner: &D,
) -> Result<()> {
    let message = format!(
        "superseded by document `{}`, a newer document of the same row; kept here is what \
         PostgreSQL held for this document (its raw document is still in the source)",
        owner.version().document_id
    );
    quarantine_snapshot::<D>(
        conn,
        owner.key(),
        &SnapshotEntry {
            document_id: &rival.document_id,
            source_ts: rival.source_ts,
            reason_code: SUPERSEDED_DUPLICATE,
            message: &message,
            field: "superseded_copy_from_postgresql",
        },
    )
    .await?;
    let map = |e| map_sqlx_error("document_versions", e);
    sqlx::query(
        "delete from migration.document_versions where container = $1 and document_id = $2",
    )
    .bind(D::CONTAINER)
    .bind(&rival.document_id)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    delete_notes(conn, D::CONTAINER, &rival.document_id).await
}

/// A quarantine entry that holds what PostgreSQL has for a document instead of its raw
/// document (which is not at hand when a stored document is displaced; the source still has
/// it), under `field`.
struct SnapshotEntry<'a> {
    document_id: &'a str,
    source_ts: i64,
    reason_code: &'a str,
    message: &'a str,
    field: &'a str,
}

async fn quarantine_snapshot<D: BulkDocument>(
    conn: &mut PgConnection,
    key: Uuid,
    entry: &SnapshotEntry<'_>,
) -> Result<()> {
    let snapshot: Option<serde_json::Value> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(D::SNAPSHOT_SQL))
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| map_sqlx_error("quarantine", e))?;
    let mut document = serde_json::Map::new();
    document.insert(
        entry.field.to_owned(),
        snapshot.unwrap_or(serde_json::Value::Null),
    );
    crate::bookkeeping::quarantine(
        &mut *conn,
        &crate::bookkeeping::QuarantinedDocument {
            container: D::CONTAINER,
            document_id: entry.document_id,
            reason_code: entry.reason_code,
            message: entry.message,
            document: &serde_json::Value::Object(document),
            source_ts: Some(entry.source_ts),
        },
    )
    .await
}
