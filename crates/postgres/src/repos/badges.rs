//! [`BadgeRepository`] on table `user_badges`: one badge per (profile, badge configuration),
//! awarded idempotently also under concurrency. `trigger_value` and `threshold` are REAL (f32).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::UserBadge;
use mystira_domain::ports::{AwardOutcome, BadgeRepository, RepoResult};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Stored, insert_or_fetch};
use crate::map_sqlx_error;

const TABLE: &str = "user_badges";

/// The columns of a [`BadgeRow`], as a macro so statements stay `&'static str`.
macro_rules! badge_columns {
    () => {
        "id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name, \
         badge_message, axis, trigger_value, threshold, earned_at, game_session_id, scenario_id, \
         image_id"
    };
}

/// Badges in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgBadgeRepository {
    pool: PgPool,
}

impl PgBadgeRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Every column maps to the entity as is (no validated types), so the row is the entity.
#[derive(sqlx::FromRow)]
struct BadgeRow {
    id: Uuid,
    cosmos_id: Option<String>,
    user_profile_id: Uuid,
    badge_configuration_id: String,
    badge_id: Option<String>,
    badge_name: String,
    badge_message: String,
    axis: String,
    trigger_value: f32,
    threshold: f32,
    earned_at: DateTime<Utc>,
    game_session_id: Option<String>,
    scenario_id: Option<String>,
    image_id: String,
}

impl From<BadgeRow> for UserBadge {
    fn from(row: BadgeRow) -> Self {
        UserBadge {
            id: row.id,
            cosmos_id: row.cosmos_id,
            user_profile_id: row.user_profile_id,
            badge_configuration_id: row.badge_configuration_id,
            badge_id: row.badge_id,
            badge_name: row.badge_name,
            badge_message: row.badge_message,
            axis: row.axis,
            trigger_value: row.trigger_value,
            threshold: row.threshold,
            earned_at: row.earned_at,
            game_session_id: row.game_session_id,
            scenario_id: row.scenario_id,
            image_id: row.image_id,
        }
    }
}

/// Inserts `badge` unless the profile already holds one of its configuration, in which case
/// that earlier badge is returned unchanged.
async fn award(pool: &PgPool, badge: &UserBadge) -> RepoResult<AwardOutcome> {
    badge.validate()?;
    let stored = insert_or_fetch(
        TABLE,
        move || {
            Box::pin(async move {
                sqlx::query_as::<_, BadgeRow>(concat!(
                "insert into user_badges (id, cosmos_id, user_profile_id, badge_configuration_id, \
                 badge_id, badge_name, badge_message, axis, trigger_value, threshold, earned_at, \
                 game_session_id, scenario_id, image_id) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 on conflict (user_profile_id, badge_configuration_id) do nothing returning ",
                badge_columns!()
            ))
            .bind(badge.id)
            .bind(badge.cosmos_id.as_deref())
            .bind(badge.user_profile_id)
            .bind(&badge.badge_configuration_id)
            .bind(badge.badge_id.as_deref())
            .bind(&badge.badge_name)
            .bind(&badge.badge_message)
            .bind(&badge.axis)
            .bind(badge.trigger_value)
            .bind(badge.threshold)
            .bind(badge.earned_at)
            .bind(badge.game_session_id.as_deref())
            .bind(badge.scenario_id.as_deref())
            .bind(&badge.image_id)
            .fetch_optional(pool)
            .await
            })
        },
        move || {
            Box::pin(async move {
                sqlx::query_as::<_, BadgeRow>(concat!(
                    "select ",
                    badge_columns!(),
                    " from user_badges where user_profile_id = $1 and badge_configuration_id = $2"
                ))
                .bind(badge.user_profile_id)
                .bind(&badge.badge_configuration_id)
                .fetch_optional(pool)
                .await
            })
        },
    )
    .await?;
    Ok(match stored {
        Stored::Inserted(row) => AwardOutcome::Awarded(row.into()),
        Stored::Existing(row) => AwardOutcome::AlreadyHeld(row.into()),
    })
}

/// The profile's badges, earliest first, on any executor.
pub async fn badges_of_profile<'c, E>(exec: E, profile_id: Uuid) -> RepoResult<Vec<UserBadge>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let rows = sqlx::query_as::<_, BadgeRow>(concat!(
        "select ",
        badge_columns!(),
        " from user_badges where user_profile_id = $1 order by earned_at, id"
    ))
    .bind(profile_id)
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    Ok(rows.into_iter().map(UserBadge::from).collect())
}

#[async_trait]
impl BadgeRepository for PgBadgeRepository {
    async fn award(&self, badge: &UserBadge) -> RepoResult<AwardOutcome> {
        award(&self.pool, badge).await
    }

    async fn list_by_profile(&self, profile_id: Uuid) -> RepoResult<Vec<UserBadge>> {
        badges_of_profile(&self.pool, profile_id).await
    }
}
