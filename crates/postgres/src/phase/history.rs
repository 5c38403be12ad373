//! The audit of phase changes (`migration.phase_transitions`): one row per change, read back
//! newest first.

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::parse_stored;
use crate::error::map_sqlx_error;

/// One row of `migration.phase_transitions`: the audit of a phase change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub id: i64,
    pub from_phase: Phase,
    pub to_phase: Phase,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    pub reason: String,
    /// Whether the change went through although its gate refused it (`--force`).
    pub forced: bool,
    /// The canary account the change was about; `None` for the domain-wide phase.
    pub account_id: Option<Uuid>,
    /// A domain move: the overrides it left on the wrong side and kept (`--keep-overrides`).
    pub overrides_kept: Vec<Uuid>,
    /// A domain move: the overrides it left on the wrong side and cleared (each also has a
    /// transition row of its own).
    pub overrides_cleared: Vec<Uuid>,
}

pub(super) type TransitionRow = (
    i64,
    String,
    String,
    DateTime<Utc>,
    String,
    String,
    bool,
    Option<Uuid>,
    Vec<Uuid>,
    Vec<Uuid>,
);

pub(super) const TRANSITION_COLUMNS: &str = "id, from_phase, to_phase, changed_at, changed_by, \
                                             reason, forced, account_id, overrides_kept, \
                                             overrides_cleared";

pub(super) fn transition_of(row: TransitionRow) -> Result<Transition, RepoError> {
    let (
        id,
        from,
        to,
        changed_at,
        changed_by,
        reason,
        forced,
        account_id,
        overrides_kept,
        overrides_cleared,
    ) = row;
    Ok(Transition {
        id,
        from_phase: parse_stored(&from)?,
        to_phase: parse_stored(&to)?,
        changed_at,
        changed_by,
        reason,
        forced,
        account_id,
        overrides_kept,
        overrides_cleared,
    })
}

/// The newest `limit` transitions, newest first.
pub async fn history<'e>(
    exec: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<Transition>, RepoError> {
    let rows: Vec<TransitionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {TRANSITION_COLUMNS} from migration.phase_transitions order by id desc limit $1"
    )))
    .bind(limit.max(0))
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("phase_transitions", e))?;
    rows.into_iter().map(transition_of).collect()
}
