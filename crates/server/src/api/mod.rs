//! The domain API, `/v1/...`: accounts, their subscription, profiles, badges, completed
//! scenarios and sign-ups over the [`Domain`](crate::Domain) ports, and the admin endpoints.
//!
//! Every body is validated by the domain's value types ([`wire`] turns a request into an
//! entity through the same parsers the backfill uses) before a store is called; every error
//! is `application/problem+json` with a stable `code` and never quotes a stored or submitted
//! value. Who may do what is [`access`]'s to say.

pub(crate) mod access;
mod accounts;
pub(crate) mod admin;
mod body;
pub mod openapi;
mod profiles;
pub mod signups;
pub mod wire;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use mystira_domain::error::ConflictKind;
use mystira_domain::{RepoError, ValidationError};
use uuid::Uuid;

use crate::{AppState, Problem};

pub(crate) use body::Body;

/// The `/v1` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(accounts::me))
        .route("/v1/accounts", post(accounts::create))
        .route("/v1/accounts/search", post(accounts::find_by_email))
        .route(
            "/v1/accounts/{id}",
            get(accounts::get)
                .patch(accounts::update)
                .delete(accounts::delete),
        )
        .route(
            "/v1/external-users/{external_user_id}/account",
            get(accounts::by_external_id),
        )
        .route("/v1/accounts/{id}/login", post(accounts::record_login))
        .route(
            "/v1/accounts/{id}/subscription",
            get(accounts::subscription).put(accounts::set_subscription),
        )
        .route(
            "/v1/accounts/{id}/completed-scenarios",
            get(accounts::completed).post(accounts::complete),
        )
        .route(
            "/v1/accounts/{id}/profiles",
            get(profiles::list).post(profiles::create),
        )
        .route(
            "/v1/profiles/{id}",
            get(profiles::get)
                .patch(profiles::update)
                .delete(profiles::delete),
        )
        .route("/v1/profiles/{id}/onboarded", post(profiles::onboarded))
        .route(
            "/v1/profiles/{id}/badges",
            get(profiles::badges).post(profiles::award),
        )
        .route("/v1/signups", post(signups::request))
        .route("/v1/signups/verify", post(signups::verify))
        .route("/v1/admin/phase", get(admin::phase).put(admin::set_phase))
        .route(
            "/v1/admin/phase/overrides/{account}/clear",
            post(admin::clear_override),
        )
        .route("/v1/admin/phase/history", get(admin::phase_history))
        .route("/v1/admin/journal", get(admin::journal))
        .route("/v1/admin/outbox", get(admin::outbox))
        .route("/v1/admin/runs", get(admin::runs))
        .route("/v1/admin/migration", get(admin::migration))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/quarantine", get(admin::quarantine))
        .route("/v1/admin/signups/expired", delete(admin::cleanup_signups))
}

/// A path segment that must be a UUID.
pub(crate) fn parse_id(what: &'static str, raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}: its id is not a UUID"),
        )
    })
}

pub(crate) fn not_found(what: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such {what}"),
    )
}

/// The answer to a write that names one row: 204 when the store found it, else 404 (a row
/// deleted between the lookup and the write, by another request).
pub(crate) fn no_content_if(found: bool, what: &str) -> Result<StatusCode, Problem> {
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(what))
    }
}

/// A value the domain refuses: 422 with the rule's code and field (never the value).
pub(crate) fn invalid(e: &ValidationError) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()).with("field", e.field())
}

/// A store's error as a problem. Repository errors carry no values (their contract), so the
/// detail can name the constraint; a failure of the store itself is logged and reported
/// without its text.
pub(crate) fn repo(e: RepoError) -> Problem {
    match e {
        RepoError::Invalid(v) => invalid(&v),
        RepoError::Conflict { kind, .. } => {
            let code = match kind {
                ConflictKind::DuplicateId => "duplicate_id",
                ConflictKind::DuplicateAuth0UserId => "duplicate_external_user_id",
                ConflictKind::DuplicateSubscription => "duplicate_subscription",
                ConflictKind::DuplicateBadge => "duplicate_badge",
                ConflictKind::DuplicateCompletedScenario => "duplicate_completed_scenario",
                ConflictKind::MissingReference => "missing_reference",
                _ => "conflict",
            };
            Problem::new(StatusCode::CONFLICT, code, kind.to_string())
        }
        RepoError::Unavailable(message) => {
            tracing::warn!(%message, "a store is unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "a store did not answer; nothing is known about the outcome, and the call may \
                 be retried",
            )
            .retry_after(1)
        }
        other => {
            tracing::error!(error = %other, "a store failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "a store failed; the failure is logged",
            )
        }
    }
}
