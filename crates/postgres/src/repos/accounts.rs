//! [`AccountRepository`] on table `accounts`. Settings are stored as JSONB in the shape
//! [`AccountSettings`] serializes to (PascalCase keys, unknown keys kept).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::ports::{AccountRepository, Page, PageRequest, RepoResult};
use mystira_domain::{Account, AccountSettings, Email, RepoError, Role};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Executor, PgPool, Postgres};
use uuid::Uuid;

use super::{column_error, fetch_all, fetch_limit, fetch_optional, into_page, touched_any};
use crate::map_sqlx_error;

const TABLE: &str = "accounts";

/// `select <the columns of an [`AccountRow`]> from accounts <rest>` as a query, built with
/// `concat!` so every statement stays a `&'static str`.
macro_rules! select_accounts {
    ($rest:literal) => {
        sqlx::query_as::<_, AccountRow>(concat!(
            "select id, cosmos_id, auth0_user_id, email, display_name, role, settings, \
             created_at, last_login_at from accounts ",
            $rest
        ))
    };
}

/// Accounts in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgAccountRepository {
    pool: PgPool,
}

impl PgAccountRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    id: Uuid,
    cosmos_id: Option<String>,
    auth0_user_id: Option<String>,
    email: String,
    display_name: String,
    role: String,
    settings: serde_json::Value,
    created_at: DateTime<Utc>,
    last_login_at: DateTime<Utc>,
}

impl TryFrom<AccountRow> for Account {
    type Error = RepoError;

    fn try_from(row: AccountRow) -> Result<Self, Self::Error> {
        let email = Email::parse(&row.email).map_err(|e| column_error(TABLE, "email", e))?;
        let role = Role::parse(&row.role).map_err(|e| column_error(TABLE, "role", e))?;
        // serde_json's message can quote the offending value, so only the column is named
        let settings: AccountSettings = serde_json::from_value(row.settings)
            .map_err(|_| column_error(TABLE, "settings", "not an account settings object"))?;
        Ok(Account {
            id: row.id,
            cosmos_id: row.cosmos_id,
            auth0_user_id: row.auth0_user_id,
            email,
            display_name: row.display_name,
            role,
            settings,
            created_at: row.created_at,
            last_login_at: row.last_login_at,
        })
    }
}

fn settings_json(settings: &AccountSettings) -> RepoResult<serde_json::Value> {
    serde_json::to_value(settings)
        .map_err(|_| RepoError::Store("account settings could not be serialized".into()))
}

/// Binds `$1` to `$7`, the columns [`insert_account`] and [`update_account`] both write, in
/// the order both statements number them.
fn bind_shared<'q>(
    query: Query<'q, Postgres, PgArguments>,
    account: &'q Account,
) -> RepoResult<Query<'q, Postgres, PgArguments>> {
    Ok(query
        .bind(account.id)
        .bind(account.cosmos_id.as_deref())
        .bind(account.auth0_user_id.as_deref())
        .bind(account.email.as_str())
        .bind(&account.display_name)
        .bind(account.role.as_str())
        .bind(settings_json(&account.settings)?))
}

/// Inserts `account`, validated first. An empty auth0 id is stored as NULL: Cosmos uses `""` for
/// "none", and two empty strings would collide on the unique constraint.
pub async fn insert_account<'c, E>(exec: E, account: &Account) -> RepoResult<()>
where
    E: Executor<'c, Database = Postgres>,
{
    account.validate()?;
    bind_shared(
        sqlx::query(
            "insert into accounts (id, cosmos_id, auth0_user_id, email, display_name, role, \
             settings, created_at, last_login_at) \
             values ($1, $2, nullif($3, ''), $4, $5, $6, $7, $8, $9)",
        ),
        account,
    )?
    .bind(account.created_at)
    .bind(account.last_login_at)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    Ok(())
}

/// Replaces every column of the account but `id` and `created_at`. Returns whether it existed.
pub async fn update_account<'c, E>(exec: E, account: &Account) -> RepoResult<bool>
where
    E: Executor<'c, Database = Postgres>,
{
    account.validate()?;
    let query = bind_shared(
        sqlx::query(
            "update accounts set cosmos_id = $2, auth0_user_id = nullif($3, ''), email = $4, \
             display_name = $5, role = $6, settings = $7, last_login_at = $8 where id = $1",
        ),
        account,
    )?
    .bind(account.last_login_at);
    touched_any(exec, TABLE, query).await
}

/// The account with key `id`, on any executor (a pool, or a transaction's connection).
pub async fn get_account<'c, E>(exec: E, id: Uuid) -> RepoResult<Option<Account>>
where
    E: Executor<'c, Database = Postgres>,
{
    fetch_optional(exec, TABLE, select_accounts!("where id = $1").bind(id)).await
}

#[async_trait]
impl AccountRepository for PgAccountRepository {
    async fn create(&self, account: &Account) -> RepoResult<()> {
        insert_account(&self.pool, account).await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<Account>> {
        get_account(&self.pool, id).await
    }

    async fn get_by_cosmos_id(&self, cosmos_id: &str) -> RepoResult<Option<Account>> {
        // The key is a pure function of the Cosmos id, so the lookup goes through the primary
        // key; the second condition tells apart ids that map to the same key but are spelled
        // differently (an upper-case GUID is stored with its spelling in cosmos_id).
        fetch_optional(
            &self.pool,
            TABLE,
            select_accounts!(
                "where id = mystira_key_for_cosmos_id($1) \
                 and coalesce(cosmos_id, id::text) = $1"
            )
            .bind(cosmos_id),
        )
        .await
    }

    async fn get_by_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Option<Account>> {
        fetch_optional(
            &self.pool,
            TABLE,
            select_accounts!("where auth0_user_id = $1").bind(auth0_user_id),
        )
        .await
    }

    async fn find_by_email(&self, email: &Email) -> RepoResult<Vec<Account>> {
        // lower(email) matches idx_accounts_email_lower
        fetch_all(
            &self.pool,
            TABLE,
            select_accounts!("where lower(email) = lower($1) order by created_at, id")
                .bind(email.as_str()),
        )
        .await
    }

    async fn update(&self, account: &Account) -> RepoResult<bool> {
        update_account(&self.pool, account).await
    }

    async fn record_login(&self, id: Uuid, at: DateTime<Utc>) -> RepoResult<bool> {
        touched_any(
            &self.pool,
            TABLE,
            sqlx::query("update accounts set last_login_at = $2 where id = $1")
                .bind(id)
                .bind(at),
        )
        .await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        // the foreign keys do the rest: subscriptions and completed_scenarios cascade,
        // user_profiles.account_id is set to null
        touched_any(
            &self.pool,
            TABLE,
            sqlx::query("delete from accounts where id = $1").bind(id),
        )
        .await
    }

    async fn list(&self, page: PageRequest) -> RepoResult<Page<Account>> {
        let rows = fetch_all(
            &self.pool,
            TABLE,
            select_accounts!("where ($1::uuid is null or id > $1) order by id limit $2")
                .bind(page.after)
                .bind(fetch_limit(page)),
        )
        .await?;
        Ok(into_page(rows, page, |a| a.id))
    }
}
