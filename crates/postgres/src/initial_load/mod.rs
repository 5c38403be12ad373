//! The initial-load path: a first `migrate` into empty tables loads the way pg_restore does.
//!
//! 1. **Strip** ([`begin`]): the domain tables' keys, indexes, foreign keys and triggers are
//!    dropped, and their definitions recorded in `migration.load_state` in the same commit.
//!    Checks and NOT NULL stay. Every other writer of the domain tables waits from then on
//!    ([`guard_writers`]: the bulk writer returns a retryable error naming the load).
//! 2. **Copy** ([`copy_documents`]): each page's documents, decoded and mapped by the same code
//!    as the upsert path, go by binary `COPY` into the bare tables, with their versions and
//!    notes, inside the caller's transaction (which also commits the range's checkpoint).
//! 3. **Set aside** ([`set_aside`]): one set-based query per unique key finds every document
//!    that shares a key or unique value with another (two documents of one row, a shared
//!    embedded id, one login for two accounts, a duplicate `cosmos_id`). Their rows are taken
//!    out, and they are listed in `migration.load_redo`. A profile whose account did not land
//!    or was set aside stays, detached with the `missing_account` note the upsert path gives
//!    it (the account attaches it again if it lands). What is left can hold every key.
//! 4. **Rebuild** ([`rebuild`]): the indexes in parallel, then the keys, the foreign keys and
//!    the triggers; the catalog must come back to what it was, or the load fails.
//! 5. **Redo** (the caller): the documents set aside go through the upsert path, whose written
//!    rules (owner rank, embedded-id rank, login rule, detached profiles) decide them; then
//!    [`finish`] clears the state.
//!
//! Why this reaches the upsert path's result: the documents that COPY leaves in place compete
//! with no other document for anything (any shared value put both in the redo list), so the
//! upsert path would have written exactly their rows, in any order; the upsert path's result
//! does not depend on order, so applying the others after them gives its result over all.

mod copy_rows;
mod encode;
pub mod schema;

use mystira_domain::RepoError;
use sqlx::{PgConnection, PgPool};

use crate::bulk::{BulkDocument, SourceVersion, insert_notes};
use crate::error::map_sqlx_error;
use copy_rows::CopyRows;
use schema::StrippedSchema;

type Result<T> = std::result::Result<T, RepoError>;

/// The advisory lock between the initial load's strip (exclusive) and every other writer of
/// the domain tables (shared, per transaction).
const LOAD_LOCK: i64 = 0x6d79_7374_6c6f_6164; // "mystload"

/// The quarantine-like reason a document read twice in one load is set aside with.
pub const READ_TWICE: &str = "document_read_twice";
/// The reason of a page whose COPY failed on the database (a check the codec did not catch):
/// all its documents go through the upsert path, which isolates the bad one.
pub const PAGE_REFUSED: &str = "copy_refused";

/// Where an initial load stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The schema is stripped and ranges are being copied.
    Loading,
    /// The documents to redo are chosen; the schema is being built again.
    Rebuilding,
    /// The schema is whole; the documents set aside are being applied.
    Redoing,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Rebuilding => "rebuilding",
            Self::Redoing => "redoing",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "loading" => Ok(Self::Loading),
            "rebuilding" => Ok(Self::Rebuilding),
            "redoing" => Ok(Self::Redoing),
            other => Err(RepoError::Store(format!(
                "migration.load_state holds an unknown stage `{other}`"
            ))),
        }
    }
}

fn map(e: sqlx::Error) -> RepoError {
    map_sqlx_error("load_state", e)
}

/// The stage of the initial load under way, if any.
pub async fn stage<'e>(exec: impl sqlx::PgExecutor<'e>) -> Result<Option<Stage>> {
    let stage: Option<String> = sqlx::query_scalar("select stage from migration.load_state")
        .fetch_optional(exec)
        .await
        .map_err(map)?;
    stage.as_deref().map(Stage::parse).transpose()
}

/// Why an initial load cannot start now, or `None` when it can: it needs the domain tables,
/// the versions, notes and outbox all empty, and the phase `cosmos-only` (nothing but the
/// backfill writes the domain then).
pub async fn why_not_eligible<'e>(exec: impl sqlx::PgExecutor<'e>) -> Result<Option<String>> {
    let reason: Option<String> = sqlx::query_scalar(
        "select case
             when exists (select 1 from migration.load_state) then 'an initial load is already under way'
             when (select phase from migration.phase_state) <> 'cosmos-only'
                 then 'the phase is not cosmos-only (the service writes the domain tables)'
             when exists (select 1 from accounts) then 'accounts holds rows'
             when exists (select 1 from subscriptions) then 'subscriptions holds rows'
             when exists (select 1 from completed_scenarios) then 'completed_scenarios holds rows'
             when exists (select 1 from user_profiles) then 'user_profiles holds rows'
             when exists (select 1 from user_badges) then 'user_badges holds rows'
             when exists (select 1 from pending_signups) then 'pending_signups holds rows'
             when exists (select 1 from migration.document_versions)
                 then 'migration.document_versions holds versions of an earlier copy'
             when exists (select 1 from migration.document_notes)
                 then 'migration.document_notes holds notes of an earlier copy'
             when exists (select 1 from migration.outbox) then 'migration.outbox holds changes for Cosmos'
         end",
    )
    .fetch_one(exec)
    .await
    .map_err(map)?;
    Ok(reason)
}

/// Strips the schema and records it, in one transaction, if the database is still eligible
/// (checked again under the lock). Returns why not otherwise.
pub async fn begin(pool: &PgPool) -> Result<Option<String>> {
    let mut tx = pool.begin().await.map_err(map)?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(LOAD_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    // a phase change waits for this transaction (and then sees the load and refuses), or
    // this one sees the phase it set
    sqlx::query("select 1 from migration.phase_state for share")
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    if let Some(reason) = why_not_eligible(&mut *tx).await? {
        return Ok(Some(reason));
    }
    // the keys' columns first: stripping drops them from the catalog
    let unique_keys = schema::unique_keys(&mut tx).await.map_err(map)?;
    let stripped = schema::strip_tables_in(&mut tx, stripped_tables())
        .await
        .map_err(map)?;
    let record = serde_json::json!({ "schema": stripped, "unique_keys": unique_keys });
    sqlx::query("insert into migration.load_state (stage, stripped) values ('loading', $1)")
        .bind(record)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    tx.commit().await.map_err(map)?;
    Ok(None)
}

/// The tables the load strips: the domain tables, and the version records, whose two keys on
/// text cost more per row than any domain table's (0.9 s of server time for 71,475 versions at
/// 20,000 accounts, against 0.6 s for the COPY of 247,412 badges). A document id read twice
/// is then found set-based, with the other competitors, in [`set_aside`].
fn stripped_tables() -> Vec<String> {
    schema::DOMAIN_TABLES
        .iter()
        .map(|t| (*t).to_owned())
        .chain(["migration.document_versions".to_owned()])
        .collect()
}

/// Called by every other writer of the domain tables inside its transaction: waits for a strip
/// in progress, then refuses (retryably) while the tables are stripped.
pub(crate) async fn guard_writers(conn: &mut PgConnection) -> Result<()> {
    let stage: Option<String> = sqlx::query_scalar(
        "select (select stage from migration.load_state)
         from (select pg_advisory_xact_lock_shared($1)) as locked",
    )
    .bind(LOAD_LOCK)
    .fetch_one(&mut *conn)
    .await
    .map_err(map)?;
    match stage.as_deref() {
        Some(s @ ("loading" | "rebuilding")) => Err(RepoError::Unavailable(format!(
            "an initial load is under way (stage {s}): the domain tables are loaded without \
             their keys, and other writes wait until `migrate` has built them again"
        ))),
        _ => Ok(()),
    }
}

/// A document kind the initial load can COPY.
pub trait CopyDocument: BulkDocument {
    /// The tables its rows go to, each with the columns its COPY sends, in order.
    const TABLES: &'static [(&'static str, &'static str)];
    /// Adds the document's rows to `page`, with the values the upsert path writes.
    fn encode(&self, page: &mut PageRows);
    /// A profile's `AccountId` as its document spells it, when that is not the key's canonical
    /// text (kept for the note of a profile whose account does not land).
    fn account_ref_to_keep(&self) -> Option<&str> {
        None
    }
}

/// The rows of one page, one COPY input per table.
#[derive(Debug)]
pub struct PageRows {
    tables: Vec<(&'static str, &'static str, CopyRows)>,
}

impl PageRows {
    fn new(tables: &[(&'static str, &'static str)]) -> Self {
        Self {
            tables: tables
                .iter()
                .map(|(t, cols)| (*t, *cols, CopyRows::new()))
                .collect(),
        }
    }

    fn table(&mut self, name: &str) -> &mut CopyRows {
        let i = self
            .tables
            .iter()
            .position(|(t, _, _)| *t == name)
            .unwrap_or_default();
        &mut self.tables[i].2
    }
}

/// Encodes `docs` into one page's COPY inputs and returns their size in bytes, with no database:
/// the client-side encode cost alone, for the decode-floor benchmark
/// (`crates/cli/examples/decode_floor.rs`).
pub fn encoded_size<D: CopyDocument>(docs: &[D]) -> usize {
    let mut page = PageRows::new(D::TABLES);
    for d in docs {
        d.encode(&mut page);
    }
    page.tables
        .into_iter()
        .map(|(_, _, rows)| rows.finish().len())
        .sum()
}

/// What the initial load did with one document of a page.
#[derive(Debug)]
pub enum CopyOutcome {
    Copied,
    /// A second copy of the same document id in this page: the newer one is copied.
    Unchanged,
    /// The rows break a rule of the schema. Quarantine it, as the upsert path would.
    Failed(RepoError),
}

/// Copies `docs` into the stripped tables inside the caller's transaction `conn` (which then
/// commits the range's checkpoint with them). One outcome per document, in order. An `Err`
/// from the database aborts the transaction: the caller rolls back and defers the page.
pub async fn copy_documents<D: CopyDocument>(
    conn: &mut PgConnection,
    docs: &[D],
) -> Result<Vec<CopyOutcome>> {
    let mut outcomes: Vec<CopyOutcome> = docs.iter().map(|_| CopyOutcome::Unchanged).collect();
    // the newest copy of a document id read twice in one page, as the upsert path keeps it
    let newest = crate::bulk::newest_per_document(docs);
    let mut chosen: Vec<usize> = Vec::new();
    for i in newest.into_values() {
        match docs[i].validate() {
            Ok(()) => chosen.push(i),
            Err(e) => outcomes[i] = CopyOutcome::Failed(e),
        }
    }
    chosen.sort_unstable();
    // no key on the versions while loading (`stripped_tables`): a document id read in an
    // earlier page gets a second version row here, and `set_aside` lists it for the upsert pass
    let versions: Vec<&SourceVersion> = chosen.iter().map(|&i| docs[i].version()).collect();
    sqlx::query(
        "insert into migration.document_versions (container, document_id, key, source_ts, source_etag)
         select $1, d, k, t, e from unnest($2::text[], $3::uuid[], $4::int8[], $5::text[]) as x(d, k, t, e)",
    )
    .bind(D::CONTAINER)
    .bind(versions.iter().map(|v| v.document_id.clone()).collect::<Vec<_>>())
    .bind(chosen.iter().map(|&i| docs[i].key()).collect::<Vec<_>>())
    .bind(versions.iter().map(|v| v.ts).collect::<Vec<_>>())
    .bind(versions.iter().map(|v| v.etag.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    let mut copied: Vec<&D> = Vec::with_capacity(chosen.len());
    for &i in &chosen {
        copied.push(&docs[i]);
        outcomes[i] = CopyOutcome::Copied;
    }
    let mut page = PageRows::new(D::TABLES);
    for d in &copied {
        d.encode(&mut page);
    }
    for (table, columns, rows) in page.tables {
        if rows.rows() == 0 {
            continue;
        }
        let mut copy = conn
            .copy_in_raw(&format!(
                "copy {table} ({columns}) from stdin (format binary)"
            ))
            .await
            .map_err(|e| map_sqlx_error(table, e))?;
        copy.send(rows.finish())
            .await
            .map_err(|e| map_sqlx_error(table, e))?;
        copy.finish().await.map_err(|e| map_sqlx_error(table, e))?;
    }
    // no earlier notes to replace: notes were empty when the load began. A document id copied
    // in an earlier page too keeps that copy's notes beside these (merged on the key), and
    // `set_aside` removes both with the document's rows before the upsert pass writes it
    insert_notes::<D>(&mut *conn, &copied, &[]).await?;
    let refs: Vec<(String, String)> = copied
        .iter()
        .filter_map(|d| {
            d.account_ref_to_keep()
                .map(|r| (d.version().document_id.clone(), r.to_owned()))
        })
        .collect();
    if !refs.is_empty() {
        sqlx::query(
            "insert into migration.load_refs (document_id, account_ref)
             select * from unnest($1::text[], $2::text[])
             on conflict (document_id) do update set account_ref = excluded.account_ref",
        )
        .bind(refs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
        .bind(refs.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    }
    let landed: Vec<String> = copied
        .iter()
        .map(|d| d.version().document_id.clone())
        .collect();
    crate::bookkeeping::resolve_quarantined(&mut *conn, D::CONTAINER, &landed).await?;
    Ok(outcomes)
}

/// Lists documents for the upsert pass after the rebuild (their raw documents are read from
/// the source again then).
pub async fn defer<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    container: &str,
    document_ids: &[String],
    reason: &str,
) -> Result<()> {
    if document_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into migration.load_redo (container, document_id, reason)
         select $1, unnest($2::text[]), $3 on conflict do nothing",
    )
    .bind(container)
    .bind(document_ids)
    .bind(reason)
    .execute(exec)
    .await
    .map_err(map)?;
    Ok(())
}

/// The table whose rows a document owns, the column naming the owner's key, and the owner's
/// container, for every domain table.
const OWNERS: [(&str, &str, &str); 6] = [
    ("accounts", "id", "Accounts"),
    ("subscriptions", "account_id", "Accounts"),
    ("completed_scenarios", "account_id", "Accounts"),
    ("user_profiles", "id", "UserProfiles"),
    ("user_badges", "user_profile_id", "UserProfiles"),
    ("pending_signups", "id", "PendingSignups"),
];

/// What [`set_aside`] found: documents to redo, by container.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SetAside {
    pub documents: std::collections::BTreeMap<String, u64>,
    /// Of those, how many copies had been made (their rows were taken out): a document id
    /// copied in two pages counts twice, as the copy counted it `written` twice.
    pub copied: std::collections::BTreeMap<String, u64>,
    /// By the constraint or rule that set them aside (`<container> <reason>`).
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// Profiles left in place but detached (with their `missing_account` note) because their
    /// account did not land or was set aside (it attaches them again if it lands).
    #[serde(default)]
    pub detached_profiles: u64,
}

/// Chooses every document that competes with another for a key or unique value, or points at
/// an account that is not there, takes their rows out, and moves the load to `rebuilding`; one
/// transaction. Does nothing unless the stage is `loading`.
pub async fn set_aside(pool: &PgPool) -> Result<SetAside> {
    let mut tx = pool.begin().await.map_err(map)?;
    let row: Option<(String, serde_json::Value)> =
        sqlx::query_as("select stage, stripped from migration.load_state for update")
            .fetch_optional(&mut *tx)
            .await
            .map_err(map)?;
    let Some((stage, stripped)) = row else {
        return Ok(SetAside::default());
    };
    if Stage::parse(&stage)? != Stage::Loading {
        // chosen before a kill: what was found then
        return serde_json::from_value(stripped["set_aside"].clone())
            .map_err(|e| RepoError::Store(format!("migration.load_state: {e}")));
    }
    // the tables were filled by COPY a moment ago and have no statistics yet: the planner
    // takes them for nearly empty and would join them row by row (a probe ran for minutes at
    // 100,000 accounts). Every statement below reads whole tables, so hash joins are right
    // whatever the sizes; forbidding nested loops costs nothing where statistics exist and
    // leaves the ANALYZE to the end of the rebuild, in parallel sessions (`rebuild`).
    sqlx::query("set local enable_nestloop = off")
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    let keys: Vec<schema::UniqueKey> = serde_json::from_value(stripped["unique_keys"].clone())
        .map_err(|e| RepoError::Store(format!("migration.load_state: {e}")))?;
    // a document id copied twice (an export line repeated in another page, a live document
    // written during the run and read by a first pass and the final pass): the versions have
    // no key while loading
    sqlx::query(
        "insert into migration.load_redo (container, document_id, reason)
         select container, document_id, $1 from migration.document_versions
         group by container, document_id having count(*) > 1
         on conflict do nothing",
    )
    .bind(READ_TWICE)
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    for key in &keys {
        let Some((table, owner, container)) =
            OWNERS.iter().find(|(t, _, _)| *t == key.table.as_str())
        else {
            return Err(RepoError::Store(format!(
                "the unique key `{}` is on `{}`, which the initial load does not know",
                key.name, key.table
            )));
        };
        let cols = key.columns.join(", ");
        let not_null = key
            .columns
            .iter()
            .map(|c| format!("{c} is not null"))
            .collect::<Vec<_>>()
            .join(" and ");
        // names come from the catalog (constraint columns), never from input
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into migration.load_redo (container, document_id, reason)
             select distinct $1, v.document_id, $2
             from {table} t
             join migration.document_versions v on v.container = $1 and v.key = t.{owner}
             where ({cols}) in (select {cols} from {table} where {not_null}
                                group by {cols} having count(*) > 1)
             on conflict do nothing"
        )))
        .bind(container)
        .bind(&key.name)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    }
    // every document of a key one of them is set aside for goes with it
    same_key(&mut tx).await?;
    let detached = detach_orphans(&mut tx).await?;
    let mut found = SetAside {
        detached_profiles: detached,
        ..SetAside::default()
    };
    let per_container: Vec<(String, i64, i64)> = sqlx::query_as(
        "select r.container, count(distinct r.document_id), count(v.document_id)
         from migration.load_redo r
         left join migration.document_versions v
           on v.container = r.container and v.document_id = r.document_id
         group by r.container",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?;
    for (container, n, copied) in per_container {
        found
            .documents
            .insert(container.clone(), u64::try_from(n).unwrap_or(0));
        found
            .copied
            .insert(container, u64::try_from(copied).unwrap_or(0));
    }
    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "select container || ' ' || reason, count(*) from migration.load_redo group by 1",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?;
    found.reasons = reasons
        .into_iter()
        .map(|(r, n)| (r, u64::try_from(n).unwrap_or(0)))
        .collect();
    for (table, owner, container) in OWNERS.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "delete from {table} t using migration.load_redo r, migration.document_versions v
             where r.container = $1 and v.container = r.container
               and v.document_id = r.document_id and t.{owner} = v.key"
        )))
        .bind(container)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_sqlx_error(table, e))?;
    }
    sqlx::query(
        "delete from migration.document_notes n using migration.load_redo r
         where n.container = r.container and n.document_id = r.document_id",
    )
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    sqlx::query(
        "delete from migration.document_versions v using migration.load_redo r
         where v.container = r.container and v.document_id = r.document_id",
    )
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    set_stage(&mut tx, Stage::Rebuilding).await?;
    sqlx::query("update migration.load_state set stripped = stripped || jsonb_build_object('set_aside', $1::jsonb)")
        .bind(serde_json::to_value(&found).unwrap_or_default())
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    tx.commit().await.map_err(map)?;
    Ok(found)
}

/// The one foreign key between documents, a profile's account, set-based: a profile (not
/// itself set aside) whose account did not land, or was set aside, is detached with the
/// `missing_account` note the upsert path gives a profile that lands before its account. When
/// the account lands in the upsert pass, it attaches them again (`attach_waiting_profiles`),
/// as it does in the upsert path. Returns how many were detached.
///
/// The two ways a profile is orphaned are two branches of a `union`, an anti-join and a
/// semi-join, each of which can hash: written as one `or` of `not exists` and `exists`, the
/// check could not be made a join, and with `accounts` stripped of its key and too large for
/// the subplan's hash table (`work_mem`) the planner scanned `accounts` once per profile (a
/// million accounts: 1.9 million scans, issue 33).
async fn detach_orphans(conn: &mut PgConnection) -> Result<u64> {
    let detached = sqlx::query(DETACH_ORPHANS_SQL)
        .execute(&mut *conn)
        .await
        .map_err(map)?
        .rows_affected();
    Ok(detached)
}

const DETACH_ORPHANS_SQL: &str = "with candidates as materialized (
         -- the profiles left in place that name an account
         select p.id as key, v.document_id, p.account_id
         from user_profiles p
         join migration.document_versions v on v.container = 'UserProfiles' and v.key = p.id
         where p.account_id is not null
           and not exists (select 1 from migration.load_redo r
                           where r.container = 'UserProfiles' and r.document_id = v.document_id)
     ), orphans as (
         -- whose account did not land
         select c.key, c.document_id, c.account_id from candidates c
         where not exists (select 1 from accounts a where a.id = c.account_id)
         union
         -- or was set aside
         select c.key, c.document_id, c.account_id from candidates c
         where exists (select 1 from migration.document_versions av
                       join migration.load_redo r
                         on r.container = av.container and r.document_id = av.document_id
                       where av.container = 'Accounts' and av.key = c.account_id)
     ), noted as (
         insert into migration.document_notes
             (container, document_id, code, subject, detail, original)
         select 'UserProfiles', o.document_id, 'missing_account', 'AccountId',
                jsonb_build_object('account_ref', coalesce(f.account_ref, o.account_id::text),
                                   'account_key', o.account_id),
                to_jsonb(coalesce(f.account_ref, o.account_id::text))
         from orphans o left join migration.load_refs f on f.document_id = o.document_id
         on conflict (container, document_id, code, subject) do update
             set detail = excluded.detail, original = excluded.original
     )
     update user_profiles p set account_id = null from orphans o where p.id = o.key";

/// Adds to the redo list every document that shares a key with one listed.
async fn same_key(conn: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "insert into migration.load_redo (container, document_id, reason)
         select distinct o.container, o.document_id, 'same_key'
         from migration.load_redo r
         join migration.document_versions v
           on v.container = r.container and v.document_id = r.document_id
         join migration.document_versions o on o.container = v.container and o.key = v.key
         on conflict do nothing",
    )
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

async fn set_stage(conn: &mut PgConnection, stage: Stage) -> Result<()> {
    sqlx::query("update migration.load_state set stage = $1, updated_at = now()")
        .bind(stage.name())
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    Ok(())
}

/// Builds the stripped schema again (`streams` sessions at a time) and checks the catalog;
/// then the load is `redoing`. Does nothing unless the stage is `rebuilding`; a rebuild that a
/// kill interrupted is finished by calling this again.
pub async fn rebuild(pool: &PgPool, streams: usize) -> Result<()> {
    let row: Option<(String, serde_json::Value)> =
        sqlx::query_as("select stage, stripped from migration.load_state")
            .fetch_optional(pool)
            .await
            .map_err(map)?;
    let Some((stage, stripped)) = row else {
        return Ok(());
    };
    if Stage::parse(&stage)? != Stage::Rebuilding {
        return Ok(());
    }
    let stripped: StrippedSchema = serde_json::from_value(stripped["schema"].clone())
        .map_err(|e| RepoError::Store(format!("migration.load_state: {e}")))?;
    schema::rebuild_schema(pool, &stripped, streams)
        .await
        .map_err(|e| schema_error("rebuild", e))?;
    // the statistics the checks went without: the upsert pass, verify and the service must
    // not plan for empty tables (a verify right after a load ran 50 times slower without them)
    let mut tables: Vec<String> = schema::DOMAIN_TABLES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    tables.extend([
        "migration.document_versions".into(),
        "migration.document_notes".into(),
    ]);
    schema::analyze_tables(pool, tables, streams)
        .await
        .map_err(|e| schema_error("analyze", e))?;
    let mut tx = pool.begin().await.map_err(map)?;
    set_stage(&mut tx, Stage::Redoing).await?;
    tx.commit().await.map_err(map)?;
    Ok(())
}

fn schema_error(step: &'static str, e: schema::SchemaError) -> RepoError {
    match e {
        schema::SchemaError::Database(e) => map_sqlx_error(step, e),
        other => RepoError::Store(other.to_string()),
    }
}

/// The documents of `container` set aside for the upsert pass, in id order.
pub async fn redo_list(pool: &PgPool, container: &str) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "select document_id from migration.load_redo where container = $1 order by document_id",
    )
    .bind(container)
    .fetch_all(pool)
    .await
    .map_err(map)
}

/// Ends the load inside the caller's transaction (which records the upsert pass's counts).
pub async fn finish(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("delete from migration.load_refs")
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    sqlx::query("delete from migration.load_redo")
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    sqlx::query("delete from migration.load_state")
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    Ok(())
}
