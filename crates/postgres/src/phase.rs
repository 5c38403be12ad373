//! The migration phase in PostgreSQL (`migration.phase_state`, one row, and
//! `migration.phase_overrides`, per canary account): which store is written first and which is
//! read. Every change fires `pg_notify('mystira_phase', ...)` (a trigger), which running
//! processes LISTEN for.
//!
//! # Changing the phase
//! [`set_phase`], [`set_override`] and [`clear_override`] each run in one transaction that
//! first locks the single `phase_state` row (`select ... for update`), so every phase change,
//! domain-wide or per account, is serialized: two concurrent changes never both read the same
//! "from" phase, and every change leaves exactly one `phase_transitions` row. The caller's
//! [`PhaseGate`] is evaluated inside that transaction, after the lock, so the facts it reads
//! (job runs, journal, outbox) are read after every earlier change committed. What a gate
//! requires is the caller's business (`mystira-migrate` holds the rules); this module only
//! guarantees lock, gate, write and audit happen atomically.
//!
//! # Overrides a domain move leaves on the wrong side
//! A domain move from `from` to `to` leaves an override on the wrong side when it is behind the
//! new domain phase after a forward move, or ahead of it after a backward one
//! ([`left_on_wrong_side`]). The move clears those overrides in the same transaction (each
//! account gets its own audit row, and the gate is asked about each account's move too), or
//! with [`ChangeFlags::keep_overrides`] keeps them; the domain's audit row lists them either
//! way (`overrides_cleared`, `overrides_kept`).
//!
//! # Gate facts
//! [`latest_run`], [`verify_facts`], [`verify_facts_for`], [`left_postgres_only_at`],
//! [`account_exists`], [`retry_journal_len`] and [`outbox_backlog`] read what the gates decide
//! on; they are generic over the executor so a gate reads them inside the locked transaction.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::{Phase, left_on_wrong_side};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::map_sqlx_error;

/// The channel every phase change is notified on.
pub const PHASE_CHANNEL: &str = "mystira_phase";

/// The domain-wide phase and who set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseState {
    pub phase: Phase,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    pub reason: String,
}

fn parse_stored(name: &str) -> Result<Phase, RepoError> {
    name.parse()
        .map_err(|_| RepoError::Store("migration.phase_state holds an unknown phase".to_owned()))
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

type TransitionRow = (
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

const TRANSITION_COLUMNS: &str = "id, from_phase, to_phase, changed_at, changed_by, reason, \
                                  forced, account_id, overrides_kept, overrides_cleared";

fn transition_of(row: TransitionRow) -> Result<Transition, RepoError> {
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

/// What kind of change a gate is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The domain-wide phase.
    Domain,
    /// One account's override is set.
    Override,
    /// One account's override is removed (the account returns to the domain phase).
    Clear,
}

/// One phase move: the domain's (`account: None`) or one account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Move {
    pub account: Option<Uuid>,
    pub from: Phase,
    pub to: Phase,
}

/// What a gate decides on: the requested move, and for a domain move the accounts whose
/// overrides it clears (each of them moves from its override's phase to the new domain phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    pub kind: ChangeKind,
    pub change: Move,
    pub cleared: Vec<Move>,
}

impl GateRequest {
    /// The requested move, then every cleared override's.
    pub fn moves(&self) -> impl Iterator<Item = &Move> {
        std::iter::once(&self.change).chain(self.cleared.iter())
    }
}

/// Decides whether a phase change may happen. Evaluated inside the transaction that holds the
/// phase lock, on its connection, so what it reads cannot be changed by another phase change
/// before the decision is written.
#[async_trait]
pub trait PhaseGate: Send + Sync {
    /// One condition the change does not meet.
    type Unmet: Send;

    /// Every condition that `request` does not meet (empty: the change may happen).
    async fn unmet(
        &self,
        conn: &mut PgConnection,
        request: &GateRequest,
    ) -> Result<Vec<Self::Unmet>, RepoError>;
}

/// A gate that lets every change through (tools and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ungated;

#[async_trait]
impl PhaseGate for Ungated {
    type Unmet = std::convert::Infallible;

    async fn unmet(
        &self,
        _conn: &mut PgConnection,
        _request: &GateRequest,
    ) -> Result<Vec<Self::Unmet>, RepoError> {
        Ok(Vec::new())
    }
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

/// A job run of `migration.runs`, as the gates see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub id: Uuid,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The most recently started run of `job`.
pub async fn latest_run<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
) -> Result<Option<RunSummary>, RepoError> {
    type RunRow = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);
    let row: Option<RunRow> = sqlx::query_as(
        "select id, status, started_at, finished_at from migration.runs
         where job = $1 order by started_at desc, id desc limit 1",
    )
    .bind(job)
    .fetch_optional(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))?;
    Ok(row.map(|(id, status, started_at, finished_at)| RunSummary {
        id,
        status,
        started_at,
        finished_at,
    }))
}

/// A run of `migration.runs` with what it recorded: its counts (and, for verify, its outcome)
/// and its scope (what it covered, how it was configured; never a secret or a personal value).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RunRecord {
    pub id: Uuid,
    pub source: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: serde_json::Value,
    pub scope: serde_json::Value,
}

/// The newest `limit` runs of `job`, newest first.
pub async fn recent_runs<'e>(
    exec: impl PgExecutor<'e>,
    job: &str,
    limit: i64,
) -> Result<Vec<RunRecord>, RepoError> {
    sqlx::query_as(
        "select id, source, status, started_at, finished_at, counts, scope from migration.runs
         where job = $1 order by started_at desc, id desc limit $2",
    )
    .bind(job)
    .bind(limit)
    .fetch_all(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))
}

/// Which way a verify compared, as its run records it (`scope.direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyDirection {
    /// PostgreSQL must hold what Cosmos holds (`verify`). A run recorded without a direction
    /// (before runs recorded one) counts as this one.
    #[default]
    CosmosToPg,
    /// Cosmos must hold what PostgreSQL holds (`verify --direction pg-to-cosmos`).
    PgToCosmos,
}

impl VerifyDirection {
    /// The name in `scope.direction` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::CosmosToPg => "cosmos-to-pg",
            Self::PgToCosmos => "pg-to-cosmos",
        }
    }
}

impl fmt::Display for VerifyDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the recorded verify runs (job `verify`) of one direction say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VerifyFacts {
    /// When the newest clean verify of the whole key space finished: status `succeeded`,
    /// outcome `clean`, buckets 0 to 255 (a slice proves nothing about the rest).
    pub latest_clean: Option<DateTime<Utc>>,
    /// When the newest such clean verify started.
    pub latest_clean_started: Option<DateTime<Utc>>,
    /// When the newest verify that found drift (status `failed`, any slice) finished.
    pub latest_drift: Option<DateTime<Utc>>,
}

/// Reads [`VerifyFacts`] of the Cosmos-to-PostgreSQL direction (`verify`). A verify that could
/// not compare (`interrupted`) says nothing either way and is ignored.
pub async fn verify_facts<'e>(exec: impl PgExecutor<'e>) -> Result<VerifyFacts, RepoError> {
    verify_facts_for(exec, VerifyDirection::CosmosToPg, None).await
}

/// Reads [`VerifyFacts`] of one direction; with `clean_started_since`, only clean runs that
/// started at or after that time count as clean (drift counts whenever it finished).
pub async fn verify_facts_for<'e>(
    exec: impl PgExecutor<'e>,
    direction: VerifyDirection,
    clean_started_since: Option<DateTime<Utc>>,
) -> Result<VerifyFacts, RepoError> {
    // `scope` holds the VerifyOptions (first_bucket, last_bucket, direction); a scope without
    // them is the default: the whole key space, Cosmos to PostgreSQL
    type FactsRow = (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let (latest_clean, latest_clean_started, latest_drift): FactsRow = sqlx::query_as(
        "select
             max(finished_at) filter (where whole and ($2::timestamptz is null or started_at >= $2)),
             max(started_at) filter (where whole and ($2::timestamptz is null or started_at >= $2)),
             max(finished_at) filter (where status = 'failed')
         from (
             select r.started_at, r.finished_at, r.status,
                    r.status = 'succeeded'
                    and r.counts->>'outcome' = 'clean'
                    and coalesce((r.scope->>'first_bucket')::int, 0) = 0
                    and coalesce((r.scope->>'last_bucket')::int, 255) = 255 as whole
             from migration.runs r
             where r.job = 'verify' and r.finished_at is not null
               and coalesce(r.scope->>'direction', 'cosmos-to-pg') = $1
         ) v",
    )
    .bind(direction.name())
    .bind(clean_started_since)
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error("runs", e))?;
    Ok(VerifyFacts {
        latest_clean,
        latest_clean_started,
        latest_drift,
    })
}

/// When the domain or any account last left `postgres-only` (the newest audit row from it),
/// if ever.
pub async fn left_postgres_only_at<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Option<DateTime<Utc>>, RepoError> {
    sqlx::query_scalar(
        "select max(changed_at) from migration.phase_transitions
         where from_phase = 'postgres-only' and to_phase <> 'postgres-only'",
    )
    .fetch_one(exec)
    .await
    .map_err(|e| map_sqlx_error("phase_transitions", e))
}

/// Whether PostgreSQL holds the account.
pub async fn account_exists<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<bool, RepoError> {
    sqlx::query_scalar("select exists (select 1 from accounts where id = $1)")
        .bind(id)
        .fetch_one(exec)
        .await
        .map_err(|e| map_sqlx_error("accounts", e))
}

/// Rows in `migration.retry_journal`: phase-1 writes PostgreSQL has not taken yet.
pub async fn retry_journal_len<'e>(exec: impl PgExecutor<'e>) -> Result<i64, RepoError> {
    sqlx::query_scalar("select count(*) from migration.retry_journal")
        .fetch_one(exec)
        .await
        .map_err(|e| map_sqlx_error("retry_journal", e))
}

/// What `migration.outbox` holds: PostgreSQL writes Cosmos has not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxBacklog {
    pub rows: i64,
    /// When the oldest row was enqueued.
    pub oldest: Option<DateTime<Utc>>,
}

/// Reads [`OutboxBacklog`].
pub async fn outbox_backlog<'e>(exec: impl PgExecutor<'e>) -> Result<OutboxBacklog, RepoError> {
    let (rows, oldest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("select count(*), min(enqueued_at) from migration.outbox")
            .fetch_one(exec)
            .await
            .map_err(|e| map_sqlx_error("outbox", e))?;
    Ok(OutboxBacklog { rows, oldest })
}
