//! Reading the phase: the domain-wide phase (`migration.phase_state`), the canary accounts'
//! overrides (`migration.phase_overrides`), and both at once as one consistent snapshot.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::parse_stored;
use crate::error::map_sqlx_error;

/// The domain-wide phase and who set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseState {
    pub phase: Phase,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    pub reason: String,
}

/// The domain-wide phase.
pub async fn current<'e>(exec: impl PgExecutor<'e>) -> Result<PhaseState, RepoError> {
    let (phase, changed_at, changed_by, reason): (String, DateTime<Utc>, String, String) =
        sqlx::query_as("select phase, changed_at, changed_by, reason from migration.phase_state")
            .fetch_one(exec)
            .await
            .map_err(|e| map_sqlx_error("phase_state", e))?;
    Ok(PhaseState {
        phase: parse_stored(&phase)?,
        changed_at,
        changed_by,
        reason,
    })
}

/// Every canary account's own phase.
pub async fn overrides<'e>(exec: impl PgExecutor<'e>) -> Result<HashMap<Uuid, Phase>, RepoError> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select account_id, phase from migration.phase_overrides")
            .fetch_all(exec)
            .await
            .map_err(|e| map_sqlx_error("phase_overrides", e))?;
    rows.into_iter()
        .map(|(id, p)| Ok((id, parse_stored(&p)?)))
        .collect()
}

/// The domain phase and every override, read by one statement (a consistent snapshot: a
/// change committed between two separate reads could otherwise mix old and new).
pub async fn load_all<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<(PhaseState, HashMap<Uuid, Phase>), RepoError> {
    let (phase, changed_at, changed_by, reason, overrides): (
        String,
        DateTime<Utc>,
        String,
        String,
        sqlx::types::Json<HashMap<Uuid, String>>,
    ) = sqlx::query_as(
        "select s.phase, s.changed_at, s.changed_by, s.reason,
                coalesce((select json_object_agg(o.account_id, o.phase)
                          from migration.phase_overrides o), '{}'::json)
         from migration.phase_state s",
    )
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error("phase_state", e))?;
    let overrides = overrides
        .0
        .into_iter()
        .map(|(id, p)| Ok((id, parse_stored(&p)?)))
        .collect::<Result<_, RepoError>>()?;
    Ok((
        PhaseState {
            phase: parse_stored(&phase)?,
            changed_at,
            changed_by,
            reason,
        },
        overrides,
    ))
}

/// One canary account's override and who set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseOverride {
    pub account_id: Uuid,
    pub phase: Phase,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    pub reason: String,
}

/// Every override with who set it, oldest first.
pub async fn override_details<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Vec<PhaseOverride>, RepoError> {
    let rows: Vec<(Uuid, String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "select account_id, phase, changed_at, changed_by, reason
         from migration.phase_overrides order by changed_at, account_id",
    )
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("phase_overrides", e))?;
    rows.into_iter()
        .map(|(account_id, phase, changed_at, changed_by, reason)| {
            Ok(PhaseOverride {
                account_id,
                phase: parse_stored(&phase)?,
                changed_at,
                changed_by,
                reason,
            })
        })
        .collect()
}
