//! The admin endpoints (Admin and SuperAdmin only): the migration's phase (shown, set and
//! cleared through the same gates and audit trail as `mystira-users phase`, the token's subject
//! recorded as the actor), its history, the retry journal, the outbox, the latest runs, the
//! quarantine, and the sign-up clean-up. Nothing here returns a document's values.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use mystira_dual_write::phase::{self, ChangeOptions, Decision, DecisionKind, PhaseError};
use serde_json::Value;

use super::wire::{
    JournalEntryOut, MigrationState, OutboxAggregateOut, OverrideClear, PhaseChange, QuarantineOut,
    Removed, RunRecordOut, TransitionOut,
};
use super::{Body, parse_id, repo};
use crate::auth::Caller;
use crate::{AppState, Problem};

/// What `mystira-users phase show` reports.
#[utoipa::path(get, path = "/v1/admin/phase", tag = "admin",
    responses((status = 200, description = "the phase, its overrides and gates", body = Object), (status = 403)),
    security(("bearer" = [])))]
pub async fn phase(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require_admin()?;
    let status = phase::status(&state.pool, &state.gates)
        .await
        .map_err(phase_problem)?;
    Ok(Json(serde_json::to_value(status).unwrap_or(Value::Null)))
}

/// The migration at a glance, as `mystira-users status --json` prints it: the phase, its
/// overrides and the next gate, the retry journal table (`journal.files` is `null`: local
/// journal files belong to the machine that holds them), the outbox, replication lag, the
/// newest verify and backfill runs, the open quarantine by reason, and `attention`.
#[utoipa::path(get, path = "/v1/admin/status", tag = "admin",
    responses((status = 200, description = "the migration's status", body = Object), (status = 403)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require_admin()?;
    let report = mystira_dual_write::status::collect(&state.pool, &state.gates, None)
        .await
        .map_err(|e| match e {
            mystira_dual_write::status::StatusError::Phase(e) => phase_problem(e),
            mystira_dual_write::status::StatusError::Store(e) => repo(e),
            // no journal files are read here; anything else is the store's
            other => {
                tracing::warn!(error = %other, "admin status: reading the status failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the status cannot be read from PostgreSQL",
                )
            }
        })?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

/// The longest an HTTP caller may ask a phase change to wait for the outbox to drain (a
/// longer wait belongs to `mystira-users phase set --wait-drain`, not to a request).
const MAX_WAIT_DRAIN: Duration = Duration::from_secs(5);

/// Moves the domain, or one canary account, to another phase: the gates and the audit of
/// `mystira-users phase set`, the caller's subject as the actor (`api:<sub>`). 200 when
/// applied or already there; 409 `gate_refused` naming every unmet condition (nothing
/// written; `force` goes past it and the audit row says forced).
#[utoipa::path(put, path = "/v1/admin/phase", tag = "admin", request_body = PhaseChange,
    responses((status = 200, description = "applied, or already in that phase", body = Object),
        (status = 409, description = "a gate refused: `unmet` lists its conditions"),
        (status = 422, description = "no reason, an unknown phase, a wait over 5 s"),
        (status = 403)),
    security(("bearer" = [])))]
pub async fn set_phase(
    State(state): State<AppState>,
    caller: Caller,
    Body(change): Body<PhaseChange>,
) -> Result<Json<Decision>, Problem> {
    caller.require_admin()?;
    let to = change.phase()?;
    let mut options = change_options(
        &state,
        &caller,
        &change.reason,
        change.force,
        change.wait_drain_seconds,
    )?;
    options.keep_overrides = change.keep_overrides;
    let decision = phase::set_phase(&state.pool, to, change.account, &options)
        .await
        .map_err(phase_problem)?;
    decided(&caller, decision)
}

/// Returns a canary account to the domain phase, through the same gates (`mystira-users phase
/// clear`). 200 when cleared or when it had no override; 409 `gate_refused` as above.
#[utoipa::path(post, path = "/v1/admin/phase/overrides/{account}/clear", tag = "admin",
    params(("account" = uuid::Uuid, Path, description = "the canary account")),
    request_body = OverrideClear,
    responses((status = 200, description = "cleared, or it had no override", body = Object),
        (status = 409, description = "a gate refused: `unmet` lists its conditions"),
        (status = 403)),
    security(("bearer" = [])))]
pub async fn clear_override(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    Body(clear): Body<OverrideClear>,
) -> Result<Json<Decision>, Problem> {
    caller.require_admin()?;
    let account = parse_id("account id", &account)?;
    let options = change_options(
        &state,
        &caller,
        &clear.reason,
        clear.force,
        clear.wait_drain_seconds,
    )?;
    let decision = phase::clear_override(&state.pool, account, &options)
        .await
        .map_err(phase_problem)?;
    decided(&caller, decision)
}

/// The latest phase changes, newest first (`?limit=`, at most 500, default 50).
#[utoipa::path(get, path = "/v1/admin/phase/history", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "at most this many (1-500)")),
    responses((status = 200, description = "phase changes, newest first", body = Vec<TransitionOut>), (status = 400, description = "a limit out of range"), (status = 403)),
    security(("bearer" = [])))]
pub async fn phase_history(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<TransitionOut>>, Problem> {
    caller.require_admin()?;
    let limit = limit(query.as_deref())?;
    let transitions = phase::history(&state.pool, limit)
        .await
        .map_err(phase_problem)?;
    Ok(Json(transitions.into_iter().map(Into::into).collect()))
}

/// The retry journal's oldest entries (phase-1 writes PostgreSQL has not taken yet): where
/// each is from and how its replays went, never its document (`?limit=`, default 50).
#[utoipa::path(get, path = "/v1/admin/journal", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "at most this many (1-500)")),
    responses((status = 200, body = Vec<JournalEntryOut>), (status = 400, description = "a limit out of range"), (status = 403)),
    security(("bearer" = [])))]
pub async fn journal(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<JournalEntryOut>>, Problem> {
    caller.require_admin()?;
    let limit = limit(query.as_deref())?;
    let entries = mystira_postgres::journal::oldest(&state.pool, limit)
        .await
        .map_err(repo)?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

/// The aggregates waiting longest in the outbox (PostgreSQL changes Cosmos has not taken yet),
/// with their row count and the failure class of their last attempt (`?limit=`, default 50).
#[utoipa::path(get, path = "/v1/admin/outbox", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "at most this many (1-500)")),
    responses((status = 200, body = Vec<OutboxAggregateOut>), (status = 400, description = "a limit out of range"), (status = 403)),
    security(("bearer" = [])))]
pub async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<OutboxAggregateOut>>, Problem> {
    caller.require_admin()?;
    let limit = limit(query.as_deref())?;
    let aggregates = mystira_postgres::outbox::oldest_aggregates(&state.pool, limit)
        .await
        .map_err(repo)?;
    Ok(Json(aggregates.into_iter().map(Into::into).collect()))
}

/// The newest runs of one job (`verify` by default; `?job=backfill`, `replicate`...), with
/// their counts, outcome and scope (`?limit=`, default 50).
#[utoipa::path(get, path = "/v1/admin/runs", tag = "admin",
    params(("job" = Option<String>, Query, description = "the job (default verify)"),
        ("limit" = Option<i64>, Query, description = "at most this many (1-500)")),
    responses((status = 200, body = Vec<RunRecordOut>), (status = 400, description = "a limit out of range"), (status = 403)),
    security(("bearer" = [])))]
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<RunRecordOut>>, Problem> {
    caller.require_admin()?;
    let limit = limit(query.as_deref())?;
    let job = query_value(query.as_deref(), "job").unwrap_or_else(|| "verify".to_owned());
    let runs = mystira_postgres::phase::recent_runs(&state.pool, &job, limit)
        .await
        .map_err(repo)?;
    Ok(Json(runs.into_iter().map(Into::into).collect()))
}

fn change_options(
    state: &AppState,
    caller: &Caller,
    reason: &str,
    force: bool,
    wait_drain_seconds: Option<u64>,
) -> Result<ChangeOptions, Problem> {
    super::wire::check_reason(reason)?;
    let wait_drain = wait_drain_seconds.map(Duration::from_secs);
    if wait_drain.is_some_and(|w| w > MAX_WAIT_DRAIN) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "wait_drain_seconds: at most 5 over HTTP (`mystira-users phase set --wait-drain` \
             waits longer)",
        )
        .with("field", "wait_drain_seconds"));
    }
    Ok(ChangeOptions {
        // the audit row names the token's subject, marked as coming through the API
        actor: format!("api:{}", caller.user_id),
        reason: reason.to_owned(),
        force,
        gates: state.gates,
        wait_drain,
        // the domain move clears the overrides it leaves on the wrong side (audited), unless
        // the request says to keep them
        keep_overrides: false,
        dry_run: false,
        // an explicit PUT is the confirmation (the typed one is the command line's)
        confirmed: true,
    })
}

/// 200 with the decision, or 409 when a gate refused.
fn decided(caller: &Caller, decision: Decision) -> Result<Json<Decision>, Problem> {
    if decision.result == DecisionKind::Refused {
        let unmet: Vec<Value> = decision
            .unmet
            .iter()
            .map(|c| serde_json::json!({ "code": c.code(), "detail": c.to_string() }))
            .collect();
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "gate_refused",
            format!(
                "{} stays in {}: the gate into {} is closed (`force` goes past it, audited)",
                decision
                    .account
                    .map_or_else(|| "the domain".to_owned(), |a| format!("account {a}")),
                decision.from,
                decision.to
            ),
        )
        .with("unmet", unmet));
    }
    if decision.result == DecisionKind::Applied {
        tracing::info!(
            actor = %caller.user_id,
            from = decision.from.name(),
            to = decision.to.name(),
            account = ?decision.account,
            forced = decision.forced,
            "phase changed over the API"
        );
    }
    Ok(Json(decision))
}

fn phase_problem(e: PhaseError) -> Problem {
    match e {
        PhaseError::Invalid(message) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
        }
        PhaseError::Store(e) => repo(e),
        other => {
            tracing::warn!(error = %other, "admin phase: the phase store failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the phase cannot be read or written in PostgreSQL",
            )
        }
    }
}

/// One value of a query string (the admin filters are plain names: no decoding needed).
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, v)| *k == key && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// `?limit=`: 1 to 500, 50 when absent.
fn limit(query: Option<&str>) -> Result<i64, Problem> {
    match query_value(query, "limit") {
        None => Ok(50),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "limit: a whole number from 1 to 500",
                )
                .with("field", "limit")
            }),
    }
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
    mystira_postgres::signup_throttle::sweep(&state.pool)
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
    let s = mystira_dual_write::status::MigrationState::read(&state.pool)
        .await
        .map_err(repo)?;
    Ok(Json(MigrationState {
        retry_journal_entries: s.journal.entries,
        retry_journal_oldest: s.journal.oldest,
        outbox_rows: s.outbox.rows,
        outbox_aggregates: s.outbox.aggregates,
        outbox_oldest: s.outbox.oldest,
        latest_backfill: s.latest_backfill.map(Into::into),
        latest_verify: s.latest_verify.map(Into::into),
        latest_clean_verify: s.verify.latest_clean,
        latest_drift: s.verify.latest_drift,
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
    let container = query_value(query.as_deref(), "container");
    let reason = query_value(query.as_deref(), "reason");
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
