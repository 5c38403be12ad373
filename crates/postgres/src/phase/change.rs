//! Changing the phase: the domain-wide phase or one account's override, in one transaction
//! that takes the phase lock, asks the gate, writes, clears the overrides a domain move leaves
//! on the wrong side, and writes the audit rows.

use mystira_domain::RepoError;
use mystira_domain::phase::{Phase, left_on_wrong_side};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::gate::{ChangeKind, GateRequest, Move, PhaseGate};
use super::history::{TRANSITION_COLUMNS, Transition, TransitionRow, transition_of};
use super::parse_stored;
use crate::error::map_sqlx_error;

/// Who asks for a change and why: what the audit row records.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRequest<'a> {
    /// The OS user or token subject making the change.
    pub actor: &'a str,
    pub reason: &'a str,
    /// Go through even if the gate refuses; the audit row then says `forced`.
    pub force: bool,
}

/// How a change is carried out, beyond who asks and why ([`ChangeFlags::default`]: clear the
/// overrides a domain move leaves on the wrong side, write, no confirmation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeFlags {
    /// A domain move keeps the overrides it leaves on the wrong side (its audit row lists them
    /// as kept) instead of clearing them.
    pub keep_overrides: bool,
    /// Decide everything (under the lock, on the same facts), then write nothing:
    /// [`ChangeOutcome::DryRun`].
    pub dry_run: bool,
    /// A change that would move the domain or an account out of `postgres-only` stops before
    /// writing with [`ChangeOutcome::NeedsConfirmation`] (the caller asks a person, then
    /// repeats the change without this flag).
    pub require_confirmation: bool,
}

/// What a domain move does to an override it leaves on the wrong side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideAction {
    /// Removed with the move: the account follows the domain (its own audit row).
    Cleared,
    /// Left in place (`keep_overrides`): listed in the domain's audit row.
    Kept,
}

/// An override a domain move leaves on the wrong side, and what the move does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AffectedOverride {
    pub account_id: Uuid,
    /// The override's phase (before the move).
    pub phase: Phase,
    pub action: OverrideAction,
}

/// What a change did.
#[derive(Debug)]
pub enum ChangeOutcome<U> {
    /// Written and audited. `overridden` is what the gate refused and `force` went past
    /// (empty unless the transition is `forced`); `overrides` what a domain move did to the
    /// overrides it left on the wrong side.
    Applied {
        transition: Transition,
        overridden: Vec<U>,
        overrides: Vec<AffectedOverride>,
    },
    /// Already in that phase: nothing written, no audit row.
    Unchanged { phase: Phase },
    /// The gate refused and `force` was not given: nothing written.
    Refused {
        from: Phase,
        to: Phase,
        unmet: Vec<U>,
        overrides: Vec<AffectedOverride>,
    },
    /// [`clear_override`] of an account that has no override: nothing written.
    NoOverride { domain_phase: Phase },
    /// [`ChangeFlags::dry_run`]: what the change would do; nothing written. It would be applied
    /// when `unmet` is empty or `force` was given.
    DryRun {
        from: Phase,
        to: Phase,
        unmet: Vec<U>,
        overrides: Vec<AffectedOverride>,
        /// Whether it would stop for a confirmation ([`ChangeFlags::require_confirmation`]).
        needs_confirmation: bool,
    },
    /// [`ChangeFlags::require_confirmation`]: the gate let the change through (or `force`
    /// went past it), but it leaves `postgres-only`: nothing written.
    NeedsConfirmation {
        from: Phase,
        to: Phase,
        unmet: Vec<U>,
        overrides: Vec<AffectedOverride>,
    },
}

enum Target {
    Domain(Phase),
    Override(Uuid, Phase),
    Clear(Uuid),
}

/// Sets the domain-wide phase, if `gate` allows it (or `request.force`), clearing the
/// overrides it leaves on the wrong side.
pub async fn set_phase<G: PhaseGate>(
    pool: &PgPool,
    to: Phase,
    request: ChangeRequest<'_>,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    change(
        pool,
        Target::Domain(to),
        request,
        ChangeFlags::default(),
        gate,
    )
    .await
}

/// [`set_phase`] with [`ChangeFlags`].
pub async fn set_phase_with<G: PhaseGate>(
    pool: &PgPool,
    to: Phase,
    request: ChangeRequest<'_>,
    flags: ChangeFlags,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    change(pool, Target::Domain(to), request, flags, gate).await
}

/// Puts one account in its own phase (a canary), if `gate` allows moving the account from
/// the phase it runs in now (its override, or the domain phase) to `to`.
pub async fn set_override<G: PhaseGate>(
    pool: &PgPool,
    account: Uuid,
    to: Phase,
    request: ChangeRequest<'_>,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    set_override_with(pool, account, to, request, ChangeFlags::default(), gate).await
}

/// [`set_override`] with [`ChangeFlags`] (`keep_overrides` means nothing here).
pub async fn set_override_with<G: PhaseGate>(
    pool: &PgPool,
    account: Uuid,
    to: Phase,
    request: ChangeRequest<'_>,
    flags: ChangeFlags,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    change(pool, Target::Override(account, to), request, flags, gate).await
}

/// Returns an account to the domain phase, if `gate` allows moving it from its override's
/// phase to the domain phase. The audit row goes from the override's phase to the domain's.
pub async fn clear_override<G: PhaseGate>(
    pool: &PgPool,
    account: Uuid,
    request: ChangeRequest<'_>,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    clear_override_with(pool, account, request, ChangeFlags::default(), gate).await
}

/// [`clear_override`] with [`ChangeFlags`] (`keep_overrides` means nothing here).
pub async fn clear_override_with<G: PhaseGate>(
    pool: &PgPool,
    account: Uuid,
    request: ChangeRequest<'_>,
    flags: ChangeFlags,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    change(pool, Target::Clear(account), request, flags, gate).await
}

async fn change<G: PhaseGate>(
    pool: &PgPool,
    target: Target,
    request: ChangeRequest<'_>,
    flags: ChangeFlags,
    gate: &G,
) -> Result<ChangeOutcome<G::Unmet>, RepoError> {
    let sql = |e| map_sqlx_error("phase_state", e);
    let overrides_sql = |e| map_sqlx_error("phase_overrides", e);
    let mut tx = pool.begin().await.map_err(sql)?;
    // every change (domain or override) takes this one lock: changes are serialized
    let domain: String = sqlx::query_scalar("select phase from migration.phase_state for update")
        .fetch_one(&mut *tx)
        .await
        .map_err(sql)?;
    let domain = parse_stored(&domain)?;
    let leaves_cosmos_only = match target {
        Target::Domain(to) | Target::Override(_, to) => to != Phase::CosmosOnly,
        Target::Clear(_) => domain != Phase::CosmosOnly,
    };
    if leaves_cosmos_only
        && let Some(stage) = crate::initial_load::stage(&mut *tx).await?
        && stage != crate::initial_load::Stage::Redoing
    {
        // not a gate `force` can pass: the tables have no keys, the service must not write
        return Err(RepoError::Unavailable(format!(
            "an initial load is under way (stage {}): the domain tables are loaded without \
             their keys, so no phase other than cosmos-only can start until `migrate` has \
             built them again",
            stage.name()
        )));
    }
    let account = match target {
        Target::Domain(_) => None,
        Target::Override(a, _) | Target::Clear(a) => Some(a),
    };
    let current_override = match account {
        None => None,
        Some(a) => {
            let found: Option<String> = sqlx::query_scalar(
                "select phase from migration.phase_overrides where account_id = $1 for update",
            )
            .bind(a)
            .fetch_optional(&mut *tx)
            .await
            .map_err(overrides_sql)?;
            found.as_deref().map(parse_stored).transpose()?
        }
    };
    let (from, to) = match target {
        Target::Domain(to) => (domain, to),
        Target::Override(_, to) => (current_override.unwrap_or(domain), to),
        Target::Clear(_) => match current_override {
            Some(p) => (p, domain),
            None => {
                return Ok(ChangeOutcome::NoOverride {
                    domain_phase: domain,
                });
            }
        },
    };
    // an override equal to the domain phase is still worth writing (it pins the account), so
    // only an override that already holds `to` is unchanged
    let unchanged = match target {
        Target::Domain(_) => from == to,
        Target::Override(..) => current_override == Some(to),
        Target::Clear(_) => false,
    };
    if unchanged {
        return Ok(ChangeOutcome::Unchanged { phase: to });
    }
    // the overrides a domain move leaves on the wrong side (locked: set and clear of one of
    // them wait for the phase lock anyway, this keeps the rows as read)
    let mut affected = Vec::new();
    if let Target::Domain(to) = target {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "select account_id, phase from migration.phase_overrides
             order by account_id for update",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(overrides_sql)?;
        for (account_id, phase) in rows {
            let phase = parse_stored(&phase)?;
            if left_on_wrong_side(from, to, phase) {
                affected.push(AffectedOverride {
                    account_id,
                    phase,
                    action: if flags.keep_overrides {
                        OverrideAction::Kept
                    } else {
                        OverrideAction::Cleared
                    },
                });
            }
        }
    }
    let cleared: Vec<Move> = affected
        .iter()
        .filter(|o| o.action == OverrideAction::Cleared)
        .map(|o| Move {
            account: Some(o.account_id),
            from: o.phase,
            to,
        })
        .collect();
    let kind = match target {
        Target::Domain(_) => ChangeKind::Domain,
        Target::Override(..) => ChangeKind::Override,
        Target::Clear(_) => ChangeKind::Clear,
    };
    let gate_request = GateRequest {
        kind,
        change: Move { account, from, to },
        cleared,
    };
    // also asked about an override that pins an account in the phase it runs in (`from ==
    // to`): the gate may care about the account itself
    let unmet = gate.unmet(&mut tx, &gate_request).await?;
    let leaves_postgres_only = gate_request
        .moves()
        .any(|m| m.from == Phase::PostgresOnly && m.to != Phase::PostgresOnly);
    let would_apply = unmet.is_empty() || request.force;
    if flags.dry_run {
        tx.rollback().await.map_err(sql)?;
        return Ok(ChangeOutcome::DryRun {
            from,
            to,
            unmet,
            overrides: affected,
            needs_confirmation: would_apply && leaves_postgres_only && flags.require_confirmation,
        });
    }
    if !would_apply {
        tx.rollback().await.map_err(sql)?;
        return Ok(ChangeOutcome::Refused {
            from,
            to,
            unmet,
            overrides: affected,
        });
    }
    if leaves_postgres_only && flags.require_confirmation {
        tx.rollback().await.map_err(sql)?;
        return Ok(ChangeOutcome::NeedsConfirmation {
            from,
            to,
            unmet,
            overrides: affected,
        });
    }
    let forced = !unmet.is_empty();
    match target {
        Target::Domain(to) => {
            sqlx::query(
                "update migration.phase_state
                 set phase = $1, changed_at = now(), changed_by = $2, reason = $3",
            )
            .bind(to.name())
            .bind(request.actor)
            .bind(request.reason)
            .execute(&mut *tx)
            .await
            .map_err(sql)?;
        }
        Target::Override(a, to) => {
            sqlx::query(
                "insert into migration.phase_overrides (account_id, phase, changed_by, reason)
                 values ($1, $2, $3, $4)
                 on conflict (account_id) do update
                 set phase = excluded.phase, changed_at = now(),
                     changed_by = excluded.changed_by, reason = excluded.reason",
            )
            .bind(a)
            .bind(to.name())
            .bind(request.actor)
            .bind(request.reason)
            .execute(&mut *tx)
            .await
            .map_err(overrides_sql)?;
        }
        Target::Clear(a) => {
            sqlx::query("delete from migration.phase_overrides where account_id = $1")
                .bind(a)
                .execute(&mut *tx)
                .await
                .map_err(overrides_sql)?;
        }
    }
    let ids = |action| -> Vec<Uuid> {
        affected
            .iter()
            .filter(|o| o.action == action)
            .map(|o| o.account_id)
            .collect()
    };
    let (kept, cleared) = (ids(OverrideAction::Kept), ids(OverrideAction::Cleared));
    let row: TransitionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into migration.phase_transitions
             (from_phase, to_phase, changed_by, reason, forced, account_id, overrides_kept,
              overrides_cleared)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning {TRANSITION_COLUMNS}"
    )))
    .bind(from.name())
    .bind(to.name())
    .bind(request.actor)
    .bind(request.reason)
    .bind(forced)
    .bind(account)
    .bind(&kept)
    .bind(&cleared)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| map_sqlx_error("phase_transitions", e))?;
    if !cleared.is_empty() {
        // each cleared account moved too: its own audit row, from its override's phase
        sqlx::query("delete from migration.phase_overrides where account_id = any($1)")
            .bind(&cleared)
            .execute(&mut *tx)
            .await
            .map_err(overrides_sql)?;
        let reason = format!(
            "override cleared by the domain move to {to}: {}",
            request.reason
        );
        for o in affected
            .iter()
            .filter(|o| o.action == OverrideAction::Cleared)
        {
            sqlx::query(
                "insert into migration.phase_transitions
                     (from_phase, to_phase, changed_by, reason, forced, account_id)
                 values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(o.phase.name())
            .bind(to.name())
            .bind(request.actor)
            .bind(&reason)
            .bind(forced)
            .bind(o.account_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx_error("phase_transitions", e))?;
        }
    }
    tx.commit().await.map_err(sql)?;
    Ok(ChangeOutcome::Applied {
        transition: transition_of(row)?,
        overridden: unmet,
        overrides: affected,
    })
}
