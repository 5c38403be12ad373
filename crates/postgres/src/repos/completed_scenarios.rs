//! [`CompletedScenarioRepository`] on table `completed_scenarios`. The key of a completion is
//! derived from (account, scenario) with [`derived_key`], the same key the backfill gives the
//! bare scenario ids of a Cosmos account, so both paths agree on every row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::CompletedScenario;
use mystira_domain::ids::derived_key;
use mystira_domain::ports::{CompletedScenarioRepository, RepoResult};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Stored, insert_or_fetch};
use crate::map_sqlx_error;

const TABLE: &str = "completed_scenarios";

/// The kind passed to [`derived_key`] for completed scenarios.
pub const KEY_KIND: &str = "completed_scenario";

/// Completed scenarios in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgCompletedScenarioRepository {
    pool: PgPool,
}

impl PgCompletedScenarioRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The columns map to the entity one to one.
#[derive(sqlx::FromRow)]
struct CompletedScenarioRow {
    id: Uuid,
    account_id: Uuid,
    scenario_id: String,
    completed_at: DateTime<Utc>,
}

impl From<CompletedScenarioRow> for CompletedScenario {
    fn from(row: CompletedScenarioRow) -> Self {
        CompletedScenario {
            id: row.id,
            account_id: row.account_id,
            scenario_id: row.scenario_id,
            completed_at: row.completed_at,
        }
    }
}

/// The account's completed scenarios, earliest first, on any executor.
pub async fn completed_for_account<'c, E>(
    exec: E,
    account_id: Uuid,
) -> RepoResult<Vec<CompletedScenario>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let rows = sqlx::query_as::<_, CompletedScenarioRow>(
        "select id, account_id, scenario_id, completed_at from completed_scenarios \
         where account_id = $1 order by completed_at, id",
    )
    .bind(account_id)
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    Ok(rows.into_iter().map(CompletedScenario::from).collect())
}

#[async_trait]
impl CompletedScenarioRepository for PgCompletedScenarioRepository {
    async fn mark_completed(
        &self,
        account_id: Uuid,
        scenario_id: &str,
        at: DateTime<Utc>,
    ) -> RepoResult<CompletedScenario> {
        let completion = CompletedScenario {
            id: derived_key(KEY_KIND, account_id, scenario_id),
            account_id,
            scenario_id: scenario_id.to_owned(),
            completed_at: at,
        };
        completion.validate()?;
        let (pool, completion) = (&self.pool, &completion);
        let stored = insert_or_fetch(
            TABLE,
            move || {
                Box::pin(async move {
                    sqlx::query_as::<_, CompletedScenarioRow>(
                    "insert into completed_scenarios (id, account_id, scenario_id, completed_at) \
                     values ($1, $2, $3, $4) on conflict (account_id, scenario_id) do nothing \
                     returning id, account_id, scenario_id, completed_at",
                )
                .bind(completion.id)
                .bind(completion.account_id)
                .bind(&completion.scenario_id)
                .bind(completion.completed_at)
                .fetch_optional(pool)
                .await
                })
            },
            move || {
                Box::pin(async move {
                    sqlx::query_as::<_, CompletedScenarioRow>(
                        "select id, account_id, scenario_id, completed_at from completed_scenarios \
                     where account_id = $1 and scenario_id = $2",
                    )
                    .bind(completion.account_id)
                    .bind(&completion.scenario_id)
                    .fetch_optional(pool)
                    .await
                })
            },
        )
        .await?;
        // either way the first completion is what the caller gets
        let (Stored::Inserted(row) | Stored::Existing(row)) = stored;
        Ok(row.into())
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<CompletedScenario>> {
        completed_for_account(&self.pool, account_id).await
    }
}
