//! Changing the phase: [`set_phase`] (the domain's, or one canary account's) and
//! [`clear_override`], through the gates, with who asks, why and how ([`ChangeOptions`]); and
//! the audit they leave ([`history`]).

use std::time::Duration;

use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use mystira_postgres::phase::{self as store, ChangeFlags, ChangeKind, ChangeRequest, Transition};
use sqlx::PgPool;
use uuid::Uuid;

use super::decision::{Decision, decision};
use super::drain::wait_for_drain;
use super::gates::{GateConfig, Gates};

/// A phase change could not be attempted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhaseError {
    /// A required field of the request is missing.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("postgresql: {0}")]
    Store(#[from] RepoError),
}

/// Who changes the phase, why, and how.
#[derive(Debug, Clone)]
pub struct ChangeOptions {
    /// The OS user or token subject, recorded in the audit row.
    pub actor: String,
    /// Why, recorded in the audit row. Required.
    pub reason: String,
    /// Go past a refusing gate (audited as forced).
    pub force: bool,
    pub gates: GateConfig,
    /// When the move needs an empty outbox, wait at most this long for the relay to empty it
    /// before deciding.
    pub wait_drain: Option<Duration>,
    /// A domain move keeps the overrides it leaves on the wrong side (audited as kept) instead
    /// of clearing them.
    pub keep_overrides: bool,
    /// Decide and report, write nothing (no drain wait either).
    pub dry_run: bool,
    /// A person confirmed a move out of `postgres-only` (typed, or `--yes`). Without it such a
    /// move ends in [`DecisionKind::NeedsConfirmation`](super::DecisionKind::NeedsConfirmation)
    /// and writes nothing.
    pub confirmed: bool,
}

fn validate(options: &ChangeOptions) -> Result<(), PhaseError> {
    if options.reason.trim().is_empty() {
        return Err(PhaseError::Invalid(
            "A reason is required: say why the phase changes (--reason).",
        ));
    }
    if options.actor.trim().is_empty() {
        return Err(PhaseError::Invalid(
            "An actor is required: name who changes the phase (--actor).",
        ));
    }
    Ok(())
}

fn flags_of(options: &ChangeOptions) -> ChangeFlags {
    ChangeFlags {
        keep_overrides: options.keep_overrides,
        dry_run: options.dry_run,
        require_confirmation: !options.confirmed,
    }
}

/// Moves the domain (`account: None`) or one canary account to `to`, through the gates.
pub async fn set_phase(
    pool: &PgPool,
    to: Phase,
    account: Option<Uuid>,
    options: &ChangeOptions,
) -> Result<Decision, PhaseError> {
    validate(options)?;
    let drain_wait = if options.dry_run {
        None
    } else {
        wait_for_drain(pool, account, Some(to), options).await?
    };
    let request = request_of(options);
    let gates = Gates(options.gates);
    let flags = flags_of(options);
    let (kind, outcome) = match account {
        None => (
            ChangeKind::Domain,
            store::set_phase_with(pool, to, request, flags, &gates).await?,
        ),
        Some(a) => (
            ChangeKind::Override,
            store::set_override_with(pool, a, to, request, flags, &gates).await?,
        ),
    };
    Ok(decision(outcome, kind, account, options, drain_wait))
}

/// Returns a canary account to the domain phase, through the gates (from the override's
/// phase to the domain's).
pub async fn clear_override(
    pool: &PgPool,
    account: Uuid,
    options: &ChangeOptions,
) -> Result<Decision, PhaseError> {
    validate(options)?;
    let drain_wait = if options.dry_run {
        None
    } else {
        wait_for_drain(pool, Some(account), None, options).await?
    };
    let outcome = store::clear_override_with(
        pool,
        account,
        request_of(options),
        flags_of(options),
        &Gates(options.gates),
    )
    .await?;
    Ok(decision(
        outcome,
        ChangeKind::Clear,
        Some(account),
        options,
        drain_wait,
    ))
}

fn request_of(options: &ChangeOptions) -> ChangeRequest<'_> {
    ChangeRequest {
        actor: options.actor.trim(),
        reason: options.reason.trim(),
        force: options.force,
    }
}

/// The newest `limit` transitions, newest first.
pub async fn history(pool: &PgPool, limit: i64) -> Result<Vec<Transition>, PhaseError> {
    Ok(store::history(pool, limit).await?)
}
