//! [`SubscriptionRepository`] on table `subscriptions` (one per account). The `type` column is
//! the PostgreSQL enum `subscription_type`: written as text with a cast, read back as text.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::ports::{Page, PageRequest, RepoResult, SubscriptionRepository};
use mystira_domain::{RepoError, Secret, Subscription, SubscriptionType};
use sqlx::{Executor, PgPool, Postgres};
use uuid::Uuid;

use super::{column_error, fetch_all, fetch_limit, fetch_optional, into_page};
use crate::map_sqlx_error;

const TABLE: &str = "subscriptions";

/// The columns of a [`SubscriptionRow`], as a macro so statements stay `&'static str`.
macro_rules! subscription_columns {
    () => {
        "id, cosmos_id, account_id, type::text as type, product_id, tier, is_active, \
         valid_until, start_date, end_date, purchase_token, last_verified, purchased_scenarios, \
         created_at, updated_at"
    };
}

/// `select <the columns of a [`SubscriptionRow`]> from subscriptions <rest>` as a query.
macro_rules! select_subscriptions {
    ($rest:literal) => {
        sqlx::query_as::<_, SubscriptionRow>(concat!(
            "select ",
            subscription_columns!(),
            " from subscriptions ",
            $rest
        ))
    };
}

/// Subscriptions in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSubscriptionRepository {
    pool: PgPool,
}

impl PgSubscriptionRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: Uuid,
    cosmos_id: Option<String>,
    account_id: Uuid,
    #[sqlx(rename = "type")]
    subscription_type: String,
    product_id: Option<String>,
    tier: String,
    is_active: bool,
    valid_until: Option<DateTime<Utc>>,
    start_date: Option<DateTime<Utc>>,
    end_date: Option<DateTime<Utc>>,
    purchase_token: Option<String>,
    last_verified: Option<DateTime<Utc>>,
    purchased_scenarios: Option<Vec<String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = RepoError;

    fn try_from(row: SubscriptionRow) -> Result<Self, Self::Error> {
        let subscription_type = SubscriptionType::parse(&row.subscription_type)
            .map_err(|e| column_error(TABLE, "type", e))?;
        Ok(Subscription {
            id: row.id,
            cosmos_id: row.cosmos_id,
            account_id: row.account_id,
            subscription_type,
            product_id: row.product_id,
            tier: row.tier,
            is_active: row.is_active,
            valid_until: row.valid_until,
            start_date: row.start_date,
            end_date: row.end_date,
            purchase_token: row.purchase_token.map(Secret::new),
            last_verified: row.last_verified,
            // the column is nullable; NULL and '{}' both mean none bought
            purchased_scenarios: row.purchased_scenarios.unwrap_or_default(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Creates or replaces the account's subscription and returns the stored row. On an existing
/// subscription the row keeps its `id`, `cosmos_id` (which belongs to that id) and `created_at`;
/// `updated_at` is then set by the trigger unless the transaction set
/// `mystira.keep_source_timestamps`, in which case the given value is kept.
pub async fn upsert_subscription<'c, E>(exec: E, sub: &Subscription) -> RepoResult<Subscription>
where
    E: Executor<'c, Database = Postgres>,
{
    sub.validate()?;
    let row: SubscriptionRow = sqlx::query_as(concat!(
        "insert into subscriptions (id, cosmos_id, account_id, type, product_id, tier, \
         is_active, valid_until, start_date, end_date, purchase_token, last_verified, \
         purchased_scenarios, created_at, updated_at) \
         values ($1, $2, $3, $4::subscription_type, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15) \
         on conflict (account_id) do update set type = excluded.type, \
         product_id = excluded.product_id, tier = excluded.tier, \
         is_active = excluded.is_active, valid_until = excluded.valid_until, \
         start_date = excluded.start_date, end_date = excluded.end_date, \
         purchase_token = excluded.purchase_token, last_verified = excluded.last_verified, \
         purchased_scenarios = excluded.purchased_scenarios, updated_at = excluded.updated_at \
         returning ",
        subscription_columns!()
    ))
    .bind(sub.id)
    .bind(sub.cosmos_id.as_deref())
    .bind(sub.account_id)
    .bind(sub.subscription_type.as_str())
    .bind(sub.product_id.as_deref())
    .bind(&sub.tier)
    .bind(sub.is_active)
    .bind(sub.valid_until)
    .bind(sub.start_date)
    .bind(sub.end_date)
    .bind(sub.purchase_token.as_ref().map(|t| t.expose().as_str()))
    .bind(sub.last_verified)
    .bind(&sub.purchased_scenarios)
    .bind(sub.created_at)
    .bind(sub.updated_at)
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    row.try_into()
}

/// The account's subscription, on any executor.
pub async fn subscription_for_account<'c, E>(
    exec: E,
    account_id: Uuid,
) -> RepoResult<Option<Subscription>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    fetch_optional(
        exec,
        TABLE,
        select_subscriptions!("where account_id = $1").bind(account_id),
    )
    .await
}

#[async_trait]
impl SubscriptionRepository for PgSubscriptionRepository {
    async fn get_for_account(&self, account_id: Uuid) -> RepoResult<Option<Subscription>> {
        subscription_for_account(&self.pool, account_id).await
    }

    async fn upsert_for_account(&self, subscription: &Subscription) -> RepoResult<Subscription> {
        upsert_subscription(&self.pool, subscription).await
    }

    async fn list_active(
        &self,
        now: DateTime<Utc>,
        page: PageRequest,
    ) -> RepoResult<Page<Subscription>> {
        // the rule of the active_subscriptions view, at `now` instead of the server's clock
        let rows = fetch_all(
            &self.pool,
            TABLE,
            select_subscriptions!(
                "where is_active and (valid_until is null or valid_until > $1) \
             and ($2::uuid is null or id > $2) order by id limit $3"
            )
            .bind(now)
            .bind(page.after)
            .bind(fetch_limit(page)),
        )
        .await?;
        Ok(into_page(rows, page, |s| s.id))
    }
}
