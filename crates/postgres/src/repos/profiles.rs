//! [`ProfileRepository`] on table `user_profiles`. `preferred_themes` is a JSONB array of
//! strings; `updated_at` is maintained by the `update_user_profiles_updated_at` trigger.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use mystira_domain::ports::{ProfileRepository, RepoResult};
use mystira_domain::{AgeGroup, RepoError, Secret, UserProfile};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Executor, PgPool, Postgres};
use uuid::Uuid;

use super::{column_error, fetch_all, fetch_optional, touched_any};
use crate::map_sqlx_error;

const TABLE: &str = "user_profiles";

/// `select <the columns of a [`ProfileRow`]> from user_profiles <rest>` as a query, built with
/// `concat!` so every statement stays a `&'static str`.
macro_rules! select_profiles {
    ($rest:literal) => {
        sqlx::query_as::<_, ProfileRow>(concat!(
            "select id, cosmos_id, account_id, name, age_group, date_of_birth, is_guest, \
             is_npc, pronouns, bio, avatar_media_id, selected_avatar_media_id, preferred_themes, \
             has_completed_onboarding, created_at, updated_at from user_profiles ",
            $rest
        ))
    };
}

/// User profiles in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgProfileRepository {
    pool: PgPool,
}

impl PgProfileRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: Uuid,
    cosmos_id: Option<String>,
    account_id: Option<Uuid>,
    name: String,
    age_group: String,
    date_of_birth: Option<NaiveDate>,
    is_guest: bool,
    is_npc: bool,
    pronouns: Option<String>,
    bio: Option<String>,
    avatar_media_id: Option<String>,
    selected_avatar_media_id: Option<String>,
    preferred_themes: serde_json::Value,
    has_completed_onboarding: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ProfileRow> for UserProfile {
    type Error = RepoError;

    fn try_from(row: ProfileRow) -> Result<Self, Self::Error> {
        let age_group =
            AgeGroup::parse(&row.age_group).map_err(|e| column_error(TABLE, "age_group", e))?;
        // serde_json's message can quote the offending value, so only the column is named
        let preferred_themes: Vec<String> = serde_json::from_value(row.preferred_themes)
            .map_err(|_| column_error(TABLE, "preferred_themes", "not an array of strings"))?;
        Ok(UserProfile {
            id: row.id,
            cosmos_id: row.cosmos_id,
            account_id: row.account_id,
            name: row.name,
            age_group,
            date_of_birth: row.date_of_birth.map(Secret::new),
            is_guest: row.is_guest,
            is_npc: row.is_npc,
            pronouns: row.pronouns,
            bio: row.bio,
            avatar_media_id: row.avatar_media_id,
            selected_avatar_media_id: row.selected_avatar_media_id,
            preferred_themes,
            has_completed_onboarding: row.has_completed_onboarding,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Binds `$1` to `$14`, the columns [`insert_profile`] and [`update_profile`] both write, in
/// the order both statements number them.
fn bind_shared<'q>(
    query: Query<'q, Postgres, PgArguments>,
    profile: &'q UserProfile,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(profile.id)
        .bind(profile.cosmos_id.as_deref())
        .bind(profile.account_id)
        .bind(&profile.name)
        .bind(profile.age_group.as_str())
        .bind(profile.date_of_birth.as_ref().map(|d| *d.expose()))
        .bind(profile.is_guest)
        .bind(profile.is_npc)
        .bind(profile.pronouns.as_deref())
        .bind(profile.bio.as_deref())
        .bind(profile.avatar_media_id.as_deref())
        .bind(profile.selected_avatar_media_id.as_deref())
        .bind(Json(&profile.preferred_themes))
        .bind(profile.has_completed_onboarding)
}

/// Inserts `profile`, validated first, with its timestamps as given.
pub async fn insert_profile<'c, E>(exec: E, profile: &UserProfile) -> RepoResult<()>
where
    E: Executor<'c, Database = Postgres>,
{
    profile.validate()?;
    bind_shared(
        sqlx::query(
            "insert into user_profiles (id, cosmos_id, account_id, name, age_group, \
             date_of_birth, is_guest, is_npc, pronouns, bio, avatar_media_id, \
             selected_avatar_media_id, preferred_themes, has_completed_onboarding, created_at, \
             updated_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        ),
        profile,
    )
    .bind(profile.created_at)
    .bind(profile.updated_at)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    Ok(())
}

/// Replaces every column but `id` and `created_at`. `updated_at` is written as given, and the
/// trigger replaces it with the time of the write unless the transaction set
/// `mystira.keep_source_timestamps` (as the backfill does). Returns whether the profile existed.
pub async fn update_profile<'c, E>(exec: E, profile: &UserProfile) -> RepoResult<bool>
where
    E: Executor<'c, Database = Postgres>,
{
    profile.validate()?;
    let query = bind_shared(
        sqlx::query(
            "update user_profiles set cosmos_id = $2, account_id = $3, name = $4, age_group = $5, \
             date_of_birth = $6, is_guest = $7, is_npc = $8, pronouns = $9, bio = $10, \
             avatar_media_id = $11, selected_avatar_media_id = $12, preferred_themes = $13, \
             has_completed_onboarding = $14, updated_at = $15 where id = $1",
        ),
        profile,
    )
    .bind(profile.updated_at);
    touched_any(exec, TABLE, query).await
}

/// The profile with key `id`, on any executor.
pub async fn get_profile<'c, E>(exec: E, id: Uuid) -> RepoResult<Option<UserProfile>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    fetch_optional(exec, TABLE, select_profiles!("where id = $1").bind(id)).await
}

#[async_trait]
impl ProfileRepository for PgProfileRepository {
    async fn create(&self, profile: &UserProfile) -> RepoResult<()> {
        insert_profile(&self.pool, profile).await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<UserProfile>> {
        get_profile(&self.pool, id).await
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<UserProfile>> {
        fetch_all(
            &self.pool,
            TABLE,
            select_profiles!("where account_id = $1 order by created_at, id").bind(account_id),
        )
        .await
    }

    async fn update(&self, profile: &UserProfile) -> RepoResult<bool> {
        update_profile(&self.pool, profile).await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        // user_badges cascade
        touched_any(
            &self.pool,
            TABLE,
            sqlx::query("delete from user_profiles where id = $1").bind(id),
        )
        .await
    }

    async fn mark_onboarded(&self, id: Uuid) -> RepoResult<bool> {
        touched_any(
            &self.pool,
            TABLE,
            sqlx::query("update user_profiles set has_completed_onboarding = true where id = $1")
                .bind(id),
        )
        .await
    }
}
