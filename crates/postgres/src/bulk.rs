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
        "insert into migration.document_notes (container, document_id, code, subject, detail)
         select $1, d, c, s, x from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[]) as n(d, c, s, x)
         on conflict (container, document_id, code, subject) do update set detail = excluded.detail",
    )
    .bind(D::CONTAINER)
    .bind(notes.iter().map(|(d, _)| (*d).to_owned()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.code.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.subject.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.detail.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

#[async_trait]
impl BulkDocument for AccountDocument {
    const CONTAINER: &'static str = "Accounts";
    document_accessors!(account);

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
        for d in docs {
            d.account.validate()?;
        }
        let map = |e| map_sqlx_error("accounts", e);
        let accounts: Vec<&Account> = docs.iter().map(|d| &d.account).collect();
        let settings = accounts
            .iter()
            .map(|a| serde_json::to_value(&a.settings).map_err(|e| RepoError::Store(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "insert into accounts
                 (id, cosmos_id, auth0_user_id, email, display_name, role, settings, created_at, last_login_at)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::jsonb[], $8::timestamptz[], $9::timestamptz[])
             on conflict (id) do update set
                 cosmos_id = excluded.cosmos_id, auth0_user_id = excluded.auth0_user_id,
                 email = excluded.email, display_name = excluded.display_name,
                 role = excluded.role, settings = excluded.settings,
                 created_at = excluded.created_at, last_login_at = excluded.last_login_at",
        )
        .bind(column(&accounts, |a| a.id))
        .bind(column(&accounts, |a| a.cosmos_id.clone()))
        .bind(column(&accounts, |a| a.auth0_user_id.clone()))
        .bind(column(&accounts, |a| a.email.as_str().to_owned()))
        .bind(column(&accounts, |a| a.display_name.clone()))
        .bind(column(&accounts, |a| a.role.as_str().to_owned()))
        .bind(settings)
        .bind(column(&accounts, |a| a.created_at))
        .bind(column(&accounts, |a| a.last_login_at))
        .execute(&mut *conn)
        .await
        .map_err(map)?;

        let account_ids: Vec<Uuid> = accounts.iter().map(|a| a.id).collect();
        write_subscriptions(
            conn,
            &account_ids,
            docs.iter().filter_map(|d| d.subscription.as_ref()),
        )
        .await?;
        write_completed_scenarios(
            conn,
            &account_ids,
            docs.iter().flat_map(|d| &d.completed_scenarios),
        )
        .await?;
        attach_waiting_profiles(conn, &account_ids).await?;
        Ok(Vec::new())
    }
}

/// Attaches the profiles that landed detached because their account was not in PostgreSQL
/// yet (a `missing_account` note naming one of `account_ids`), and drops those notes. Without
/// this, the result would depend on the order documents arrive in: a profile copied before its
/// account (a journal replayed late, a change-feed page of profiles read first) would stay
/// detached until its own document changed again.
async fn attach_waiting_profiles(conn: &mut PgConnection, account_ids: &[Uuid]) -> Result<()> {
    let map = |e| map_sqlx_error("user_profiles", e);
    sqlx::query(
        "with waiting as (
             select n.document_id, v.key as profile_key,
                    (n.detail->>'account_key')::uuid as account_key
             from migration.document_notes n
             join migration.document_versions v
               on v.container = n.container and v.document_id = n.document_id
             where n.container = 'UserProfiles' and n.code = 'missing_account'
               and (n.detail->>'account_key')::uuid = any($1)
         ), attached as (
             update user_profiles p set account_id = w.account_key
             from waiting w
             where p.id = w.profile_key and p.account_id is null
             returning w.document_id
         )
         delete from migration.document_notes d using attached a
         where d.container = 'UserProfiles' and d.document_id = a.document_id
           and d.code = 'missing_account'",
    )
    .bind(account_ids)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

/// Replaces the subscriptions of `account_ids` with `subs` (an account without one loses it).
async fn write_subscriptions<'a>(
    conn: &mut PgConnection,
    account_ids: &[Uuid],
    subs: impl Iterator<Item = &'a Subscription>,
) -> Result<()> {
    let map = |e| map_sqlx_error("subscriptions", e);
    let subs: Vec<&Subscription> = subs.collect();
    for s in &subs {
        s.validate()?;
    }
    sqlx::query(
        "delete from subscriptions where account_id = any($1) and not (account_id = any($2))",
    )
    .bind(account_ids)
    .bind(column(&subs, |s| s.account_id))
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    if subs.is_empty() {
        return Ok(());
    }
    let scenarios: Vec<serde_json::Value> = subs
        .iter()
        .map(|s| serde_json::json!(s.purchased_scenarios))
        .collect();
    sqlx::query(
        "insert into subscriptions
             (id, cosmos_id, account_id, type, product_id, tier, is_active, valid_until, start_date,
              end_date, purchase_token, last_verified, purchased_scenarios, created_at, updated_at)
         select id, cosmos_id, account_id, type::subscription_type, product_id, tier, is_active,
                valid_until, start_date, end_date, purchase_token, last_verified,
                array(select jsonb_array_elements_text(scenarios)), created_at, updated_at
         from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                     $7::bool[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                     $11::text[], $12::timestamptz[], $13::jsonb[], $14::timestamptz[],
                     $15::timestamptz[])
              as s(id, cosmos_id, account_id, type, product_id, tier, is_active, valid_until,
                   start_date, end_date, purchase_token, last_verified, scenarios, created_at,
                   updated_at)
         on conflict (account_id) do update set
             id = excluded.id, cosmos_id = excluded.cosmos_id, type = excluded.type,
             product_id = excluded.product_id, tier = excluded.tier,
             is_active = excluded.is_active, valid_until = excluded.valid_until,
             start_date = excluded.start_date, end_date = excluded.end_date,
             purchase_token = excluded.purchase_token, last_verified = excluded.last_verified,
             purchased_scenarios = excluded.purchased_scenarios,
             created_at = excluded.created_at, updated_at = excluded.updated_at",
    )
    .bind(column(&subs, |s| s.id))
    .bind(column(&subs, |s| s.cosmos_id.clone()))
    .bind(column(&subs, |s| s.account_id))
    .bind(column(&subs, |s| s.subscription_type.as_str().to_owned()))
    .bind(column(&subs, |s| s.product_id.clone()))
    .bind(column(&subs, |s| s.tier.clone()))
    .bind(column(&subs, |s| s.is_active))
    .bind(column(&subs, |s| s.valid_until))
    .bind(column(&subs, |s| s.start_date))
    .bind(column(&subs, |s| s.end_date))
    .bind(column(&subs, |s| {
        s.purchase_token.as_ref().map(|t| t.expose().clone())
    }))
    .bind(column(&subs, |s| s.last_verified))
    .bind(scenarios)
    .bind(column(&subs, |s| s.created_at))
    .bind(column(&subs, |s| s.updated_at))
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

/// Makes the completed scenarios of `account_ids` exactly `rows`. A scenario already recorded
/// keeps its first `completed_at`: the source has no completion time, so the first copy's
/// derived time is the best there is, and keeping it makes re-runs change nothing.
async fn write_completed_scenarios<'a>(
    conn: &mut PgConnection,
    account_ids: &[Uuid],
    rows: impl Iterator<Item = &'a CompletedScenario>,
) -> Result<()> {
    let map = |e| map_sqlx_error("completed_scenarios", e);
    let rows: Vec<&CompletedScenario> = rows.collect();
    for r in &rows {
        r.validate()?;
    }
    let owners: Vec<Uuid> = rows.iter().map(|r| r.account_id).collect();
    let scenario_ids: Vec<String> = rows.iter().map(|r| r.scenario_id.clone()).collect();
    sqlx::query(
        "delete from completed_scenarios c
         where c.account_id = any($1)
           and not exists (select 1 from unnest($2::uuid[], $3::text[]) as n(a, s)
                           where n.a = c.account_id and n.s = c.scenario_id)",
    )
    .bind(account_ids)
    .bind(&owners)
    .bind(&scenario_ids)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into completed_scenarios (id, account_id, scenario_id, completed_at)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])
         on conflict (account_id, scenario_id) do nothing",
    )
    .bind(column(&rows, |r| r.id))
    .bind(&owners)
    .bind(&scenario_ids)
    .bind(column(&rows, |r| r.completed_at))
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

#[async_trait]
impl BulkDocument for ProfileDocument {
    const CONTAINER: &'static str = "UserProfiles";
    document_accessors!(profile);

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
        let map = |e| map_sqlx_error("user_profiles", e);
        for d in docs {
            d.profile.validate()?;
        }
        // A profile whose account does not exist lands detached; the reference it had is kept
        // in a note so an operator can see and repair it.
        let referenced: Vec<Uuid> = docs.iter().filter_map(|d| d.profile.account_id).collect();
        let existing: HashSet<Uuid> =
            sqlx::query_scalar("select id from accounts where id = any($1)")
                .bind(&referenced)
                .fetch_all(&mut *conn)
                .await
                .map_err(map)?
                .into_iter()
                .collect();
        let mut notes = Vec::new();
        let account_ids: Vec<Option<Uuid>> = docs
            .iter()
            .map(|d| match d.profile.account_id {
                Some(a) if existing.contains(&a) => Some(a),
                Some(a) => {
                    notes.push(NotesFor {
                        document_id: d.version.document_id.clone(),
                        note: DocumentNote {
                            code: "missing_account".into(),
                            subject: "AccountId".into(),
                            detail: serde_json::json!({
                                "account_ref": d.account_ref.clone().unwrap_or_else(|| a.to_string()),
                                "account_key": a,
                            }),
                        },
                    });
                    None
                }
                None => None,
            })
            .collect();
        let profiles: Vec<&UserProfile> = docs.iter().map(|d| &d.profile).collect();
        sqlx::query(
            "insert into user_profiles
                 (id, cosmos_id, account_id, name, age_group, date_of_birth, is_guest, is_npc,
                  pronouns, bio, avatar_media_id, selected_avatar_media_id, preferred_themes,
                  has_completed_onboarding, created_at, updated_at)
             select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                                  $6::date[], $7::bool[], $8::bool[], $9::text[], $10::text[],
                                  $11::text[], $12::text[], $13::jsonb[], $14::bool[],
                                  $15::timestamptz[], $16::timestamptz[])
             on conflict (id) do update set
                 cosmos_id = excluded.cosmos_id, account_id = excluded.account_id,
                 name = excluded.name, age_group = excluded.age_group,
                 date_of_birth = excluded.date_of_birth, is_guest = excluded.is_guest,
                 is_npc = excluded.is_npc, pronouns = excluded.pronouns, bio = excluded.bio,
                 avatar_media_id = excluded.avatar_media_id,
                 selected_avatar_media_id = excluded.selected_avatar_media_id,
                 preferred_themes = excluded.preferred_themes,
                 has_completed_onboarding = excluded.has_completed_onboarding,
                 created_at = excluded.created_at, updated_at = excluded.updated_at",
        )
        .bind(column(&profiles, |p| p.id))
        .bind(column(&profiles, |p| p.cosmos_id.clone()))
        .bind(account_ids)
        .bind(column(&profiles, |p| p.name.clone()))
        .bind(column(&profiles, |p| p.age_group.as_str().to_owned()))
        .bind(column(&profiles, |p| {
            p.date_of_birth.as_ref().map(|d| *d.expose())
        }))
        .bind(column(&profiles, |p| p.is_guest))
        .bind(column(&profiles, |p| p.is_npc))
        .bind(column(&profiles, |p| p.pronouns.clone()))
        .bind(column(&profiles, |p| p.bio.clone()))
        .bind(column(&profiles, |p| p.avatar_media_id.clone()))
        .bind(column(&profiles, |p| p.selected_avatar_media_id.clone()))
        .bind(column(&profiles, |p| serde_json::json!(p.preferred_themes)))
        .bind(column(&profiles, |p| p.has_completed_onboarding))
        .bind(column(&profiles, |p| p.created_at))
        .bind(column(&profiles, |p| p.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(map)?;

        let profile_ids: Vec<Uuid> = profiles.iter().map(|p| p.id).collect();
        write_badges(conn, &profile_ids, docs.iter().flat_map(|d| &d.badges)).await?;
        Ok(notes)
    }
}

/// Makes the badges of `profile_ids` exactly `badges`. Earliest first, so that if a duplicate
/// configuration slipped through, the earliest badge is the one kept.
async fn write_badges<'a>(
    conn: &mut PgConnection,
    profile_ids: &[Uuid],
    badges: impl Iterator<Item = &'a UserBadge>,
) -> Result<()> {
    let map = |e| map_sqlx_error("user_badges", e);
    let mut badges: Vec<&UserBadge> = badges.collect();
    for b in &badges {
        b.validate()?;
    }
    badges.sort_by_key(|b| b.earned_at);
    sqlx::query("delete from user_badges where user_profile_id = any($1)")
        .bind(profile_ids)
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    if badges.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into user_badges
             (id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name,
              badge_message, axis, trigger_value, threshold, earned_at, game_session_id,
              scenario_id, image_id)
         select id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name,
                badge_message, axis, trigger_value, threshold, earned_at, game_session_id,
                scenario_id, image_id
         from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::real[], $10::real[],
                              $11::timestamptz[], $12::text[], $13::text[], $14::text[])
              with ordinality as b(id, cosmos_id, user_profile_id, badge_configuration_id,
                                   badge_id, badge_name, badge_message, axis, trigger_value,
                                   threshold, earned_at, game_session_id, scenario_id, image_id, n)
         order by n
         on conflict (user_profile_id, badge_configuration_id) do nothing",
    )
    .bind(column(&badges, |b| b.id))
    .bind(column(&badges, |b| b.cosmos_id.clone()))
    .bind(column(&badges, |b| b.user_profile_id))
    .bind(column(&badges, |b| b.badge_configuration_id.clone()))
    .bind(column(&badges, |b| b.badge_id.clone()))
    .bind(column(&badges, |b| b.badge_name.clone()))
    .bind(column(&badges, |b| b.badge_message.clone()))
    .bind(column(&badges, |b| b.axis.clone()))
    .bind(column(&badges, |b| b.trigger_value))
    .bind(column(&badges, |b| b.threshold))
    .bind(column(&badges, |b| b.earned_at))
    .bind(column(&badges, |b| b.game_session_id.clone()))
    .bind(column(&badges, |b| b.scenario_id.clone()))
    .bind(column(&badges, |b| b.image_id.clone()))
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}

#[async_trait]
impl BulkDocument for SignupDocument {
    const CONTAINER: &'static str = "PendingSignups";
    document_accessors!(signup);

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
        let signups: Vec<&PendingSignup> = docs.iter().map(|d| &d.signup).collect();
        for s in &signups {
            s.validate()?;
        }
        sqlx::query(
            "insert into pending_signups
                 (id, cosmos_id, email, display_name, code, created_at, expires_at, is_used,
                  is_signin, failed_attempts)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[], $8::bool[], $9::bool[],
                                  $10::int4[])
             on conflict (id) do update set
                 cosmos_id = excluded.cosmos_id, email = excluded.email,
                 display_name = excluded.display_name, code = excluded.code,
                 created_at = excluded.created_at, expires_at = excluded.expires_at,
                 is_used = excluded.is_used, is_signin = excluded.is_signin,
                 failed_attempts = excluded.failed_attempts",
        )
        .bind(column(&signups, |s| s.id))
        .bind(column(&signups, |s| s.cosmos_id.clone()))
        .bind(column(&signups, |s| s.email.as_str().to_owned()))
        .bind(column(&signups, |s| s.display_name.clone()))
        .bind(column(&signups, |s| s.code.as_str().to_owned()))
        .bind(column(&signups, |s| s.created_at))
        .bind(column(&signups, |s| s.expires_at))
        .bind(column(&signups, |s| s.is_used))
        .bind(column(&signups, |s| s.is_signin))
        .bind(column(&signups, |s| s.failed_attempts))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx_error("pending_signups", e))?;
        Ok(Vec::new())
    }
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
