//! The admin endpoints (Admin and SuperAdmin only): the migration's phase, its backlogs and
//! last runs, the quarantine, and the sign-up clean-up. **Planned:** setting the phase over
//! HTTP (with the CLI's gates and audit; `mystira-users phase set` does it today).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::repo;
use super::wire::{MigrationState, QuarantineOut, Removed};
use crate::auth::Caller;
use crate::{AppState, Problem};

/// What `mystira-users phase show` reports.
#[utoipa::path(get, path = "/v1/admin/phase", tag = "admin",
    responses((status = 200, description = "the phase, its overrides and gates", body = Object), (status = 403)),
    security(("bearer" = [])))]
pub async fn phase(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require_admin()?;
    let status =
        mystira_migrate::phase::status(&state.pool, &mystira_migrate::phase::GateConfig::default())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "admin phase: cannot read the phase");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the phase cannot be read from PostgreSQL",
                )
            })?;
    Ok(Json(serde_json::to_value(status).unwrap_or(Value::Null)))
}

/// Deletes sign-ups that expired more than a day ago, and rate-limit windows that ended more
/// than a day ago.
#[utoipa::path(delete, path = "/v1/admin/signups/expired", tag = "admin",
    responses((status = 200, body = Removed), (status = 403)),
    security(("bearer" = [])))]
pub async fn cleanup_signups(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Removed>, Problem> {
    caller.require_admin()?;
    let removed = state.domain.signups.cleanup_expired().await.map_err(repo)?;
    mystira_postgres::rate_limits::sweep(&state.pool)
        .await
        .map_err(repo)?;
    Ok(Json(Removed { removed }))
}

/// The retry journal's and the outbox's depth, the newest backfill and verify runs and what
/// the verify runs say (the figures the phase gates read).
#[utoipa::path(get, path = "/v1/admin/migration", tag = "admin",
    responses((status = 200, body = MigrationState), (status = 403)),
    security(("bearer" = [])))]
pub async fn migration(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<MigrationState>, Problem> {
    caller.require_admin()?;
    let pool = &state.pool;
    let journal = mystira_postgres::journal::depth(pool).await.map_err(repo)?;
    let outbox = mystira_postgres::outbox::depth(pool).await.map_err(repo)?;
    let backfill = mystira_postgres::phase::latest_run(pool, "backfill")
        .await
        .map_err(repo)?;
    let verify = mystira_postgres::phase::latest_run(pool, "verify")
        .await
        .map_err(repo)?;
    let facts = mystira_postgres::phase::verify_facts(pool)
        .await
        .map_err(repo)?;
    Ok(Json(MigrationState {
        retry_journal_entries: journal.entries,
        retry_journal_oldest: journal.oldest,
        outbox_rows: outbox.rows,
        outbox_aggregates: outbox.aggregates,
        outbox_oldest: outbox.oldest,
        latest_backfill: backfill.map(Into::into),
        latest_verify: verify.map(Into::into),
        latest_clean_verify: facts.latest_clean,
        latest_drift: facts.latest_drift,
    }))
}

/// Open quarantine entries, oldest first, at most 500, without their documents (`mystira-users
/// quarantine show` prints one). Filters: `?container=Accounts&reason=invalid_email`.
#[utoipa::path(get, path = "/v1/admin/quarantine", tag = "admin",
    params(("container" = Option<String>, Query, description = "one container"),
        ("reason" = Option<String>, Query, description = "one reason code")),
    responses((status = 200, body = Vec<QuarantineOut>), (status = 403)),
    security(("bearer" = [])))]
pub async fn quarantine(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<QuarantineOut>>, Problem> {
    caller.require_admin()?;
    let (mut container, mut reason) = (None, None);
    for pair in query.as_deref().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("container", v)) if !v.is_empty() => container = Some(v.to_owned()),
            Some(("reason", v)) if !v.is_empty() => reason = Some(v.to_owned()),
            _ => {}
        }
    }
    let entries = mystira_postgres::bookkeeping::list_quarantine(
        &state.pool,
        container.as_deref(),
        reason.as_deref(),
        false,
        500,
    )
    .await
    .map_err(repo)?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}
