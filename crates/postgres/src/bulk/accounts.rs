//! Writing `Accounts` documents: the account, its subscription and its completed scenarios.

use async_trait::async_trait;
use mystira_domain::{Account, CompletedScenario, Subscription};
use sqlx::PgConnection;
use uuid::Uuid;

use super::embedded::{self, EmbeddedTable, Incoming};
use super::{
    AccountDocument, BulkDocument, DUPLICATE_AUTH0_USER_ID, DocumentNote, Identity, NotesFor,
    Result, SourceVersion, column,
};
use crate::error::map_sqlx_error;
use mystira_domain::RepoError;

#[async_trait]
impl BulkDocument for AccountDocument {
    const CONTAINER: &'static str = "Accounts";
    document_accessors!(account);
    const SNAPSHOT_SQL: &'static str = "select jsonb_build_object(
             'account', to_jsonb(a),
             'subscription', (select to_jsonb(s) from subscriptions s where s.account_id = a.id),
             'completed_scenarios', coalesce((select jsonb_agg(to_jsonb(c) order by c.scenario_id)
                                              from completed_scenarios c where c.account_id = a.id), '[]'))
         from accounts a where a.id = $1";
    const IDENTITY: Option<Identity> = Some(Identity {
        column: "auth0_user_id",
        reason_code: DUPLICATE_AUTH0_USER_ID,
        holders_sql: "select a.auth0_user_id as identity, a.id as key, v.document_id, v.source_ts
             from accounts a
             left join lateral (
                 select document_id, source_ts from migration.document_versions v
                 where v.container = 'Accounts' and v.key = a.id and not v.deleted
                   and not exists (select 1 from migration.outbox o
                                   where o.container = 'Accounts' and o.key = a.id)
                 order by source_ts desc, document_id desc limit 1
             ) v on true
             where a.auth0_user_id = any($1)",
        release_sql: "update accounts set auth0_user_id = null where id = any($1)",
    });

    fn identity(&self) -> Option<&str> {
        self.account.auth0_user_id.as_deref()
    }

    fn validate(&self) -> Result<()> {
        self.account.validate()?;
        if let Some(s) = &self.subscription {
            s.validate()?;
        }
        for c in &self.completed_scenarios {
            c.validate()?;
        }
        Ok(())
    }

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
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
        let notes = write_subscriptions(conn, &account_ids, docs).await?;
        write_completed_scenarios(
            conn,
            &account_ids,
            docs.iter().flat_map(|d| &d.completed_scenarios),
        )
        .await?;
        attach_waiting_profiles(conn, &account_ids).await?;
        Ok(notes)
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
             -- one index lookup per note found: a join could be planned as a hash of every
             -- profile's version, per call (the limit keeps the planner from flattening it)
             cross join lateral (
                 select v.key from migration.document_versions v
                 where v.container = n.container and v.document_id = n.document_id
                 limit 1
             ) v
             -- the predicate and expression of idx_document_notes_missing_account, so the
             -- lookup costs in proportion to the accounts, not to the notes (a merge join on
             -- the primary key read all 300,000 notes of a test table: 100 ms, not 0.2 ms)
             where n.container = 'UserProfiles' and n.code = 'missing_account'
               and n.detail->>'account_key' = any($1::uuid[]::text[])
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

/// Before the account `key` is removed (its profiles' `account_id` is then set null): gives each
/// of its copied profiles the `missing_account` note a profile gets when it lands before its
/// account, so the result is the same whichever came first, and [`attach_waiting_profiles`]
/// attaches them again when the account lands again.
pub(super) async fn note_profiles_to_detach(conn: &mut PgConnection, key: Uuid) -> Result<()> {
    sqlx::query(
        "insert into migration.document_notes (container, document_id, code, subject, detail, original)
         select 'UserProfiles', v.document_id, 'missing_account', 'AccountId',
                jsonb_build_object('account_ref', $1::text, 'account_key', $1::text),
                to_jsonb($1::text)
         from user_profiles p
         -- one probe of the versions' key index per profile (`offset 0`: never a join that may
         -- hash every profile's version, issue 33)
         cross join lateral (
             select v.document_id from migration.document_versions v
             where v.container = 'UserProfiles' and v.key = p.id and not v.deleted
             offset 0) as v
         where p.account_id = $1
         on conflict (container, document_id, code, subject) do update
             set detail = excluded.detail, original = excluded.original",
    )
    .bind(key)
    .execute(&mut *conn)
    .await
    .map_err(|e| map_sqlx_error("document_notes", e))?;
    Ok(())
}

/// Replaces the subscriptions of `account_ids` with those of `docs` (an account without one
/// loses it). Their ids are decided by [`embedded::resolve`]: a `Subscription.Id` another
/// account's document also carries is kept by one of them only. Returns the collision notes of
/// `docs`.
async fn write_subscriptions(
    conn: &mut PgConnection,
    account_ids: &[Uuid],
    docs: &[&AccountDocument],
) -> Result<Vec<NotesFor>> {
    let map = |e| map_sqlx_error("subscriptions", e);
    let owned: Vec<(&AccountDocument, &Subscription)> = docs
        .iter()
        .filter_map(|d| d.subscription.as_ref().map(|s| (*d, s)))
        .collect();
    let incoming: Vec<Incoming> = owned
        .iter()
        .map(|(d, s)| Incoming {
            natural: s.id,
            original: s
                .cosmos_id
                .clone()
                .unwrap_or_else(|| s.id.hyphenated().to_string()),
            owner: s.account_id,
            owner_document: d.version.document_id.clone(),
            sub_key: String::new(),
            rank_at: s.created_at,
        })
        .collect();
    let (assigned, notes) = embedded::resolve(
        conn,
        EmbeddedTable::Subscriptions,
        account_ids,
        &[],
        &incoming,
    )
    .await?;
    // delete and insert rather than upsert by account: within one upsert statement, an account
    // taking over an id another account of the batch is giving up could meet it still in place
    sqlx::query("delete from subscriptions where account_id = any($1)")
        .bind(account_ids)
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    if owned.is_empty() {
        return Ok(notes);
    }
    let subs: Vec<Subscription> = owned
        .iter()
        .zip(&assigned)
        .map(|((_, s), a)| {
            let mut s = (*s).clone();
            s.id = a.id;
            if let Some(original) = &a.cosmos_id_override {
                s.cosmos_id = Some(original.clone());
            }
            s
        })
        .collect();
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
                   updated_at)",
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
    Ok(notes)
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
    let owners: Vec<Uuid> = rows.iter().map(|r| r.account_id).collect();
    let scenario_ids: Vec<String> = rows.iter().map(|r| r.scenario_id.clone()).collect();
    sqlx::query(
        // by key whatever the statistics: one descent per account of the unique index that
        // leads with `account_id`, the rows deleted by their primary keys (see
        // `profiles::write_badges`)
        "delete from completed_scenarios
         where id = any(array(
             select c.id from unnest($1::uuid[]) as k(id)
             cross join lateral (select id, scenario_id from completed_scenarios
                                 where account_id = k.id offset 0) as c
             where not exists (select 1 from unnest($2::uuid[], $3::text[]) as n(a, s)
                               where n.a = k.id and n.s = c.scenario_id)))",
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
