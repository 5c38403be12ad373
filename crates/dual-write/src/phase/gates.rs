//! The gates a phase change must pass: which checks a move needs (those of every step it
//! passes; [`needs_empty_outbox`] asks about one), how each is evaluated on the facts
//! PostgreSQL holds (inside the transaction holding the phase lock), and which checks a
//! decided change was held to.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use mystira_postgres::phase::{
    self as store, ChangeKind, GateRequest, Move, OutboxBacklog, PhaseGate,
};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::VerifyDirection;
use super::conditions::Condition;

/// The `migration.runs` job name of backfill runs.
const BACKFILL_JOB: &str = "backfill";

/// The default of [`GateConfig::max_verify_age`]: 24 hours.
pub const DEFAULT_MAX_VERIFY_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long after phase 3 was left a PostgreSQL-to-Cosmos verify must start to prove that
/// Cosmos holds every phase-3 write: every process sees a phase change within 2 s, and a call
/// that read the phase just before the change may still be writing; 10 s covers both.
pub const POSTGRES_ONLY_SETTLE: Duration = Duration::from_secs(10);

/// How strict the gates are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// A clean verify older than this does not open 1→2 or 2→3.
    pub max_verify_age: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_verify_age: DEFAULT_MAX_VERIFY_AGE,
        }
    }
}

/// The direction a move that starts in `from` repairs drift in: from its primary store.
fn repair_direction(from: Phase) -> VerifyDirection {
    if from.postgres_is_primary() {
        VerifyDirection::PgToCosmos
    } else {
        VerifyDirection::CosmosToPg
    }
}

/// What a gate looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Backfill,
    Verify(VerifyDirection),
    RetryJournal,
    Outbox,
    /// Out of `postgres-only` only into `dual-write-postgres-read` (per account).
    ThroughPhase2,
    /// Into a Cosmos-primary phase only with a PostgreSQL-to-Cosmos verify since phase 3.
    VerifiedSincePostgresOnly,
    /// An override names an account PostgreSQL holds.
    AccountExists,
    /// Leaving a dual-write phase forward: a continuous replicator that ran has not died.
    ReplicatorLive,
}

impl Check {
    /// The stable name of the check ([`GateCheck::check`]).
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Backfill => "backfill",
            Self::Verify(VerifyDirection::CosmosToPg) => "verify_cosmos_to_pg",
            Self::Verify(VerifyDirection::PgToCosmos) => "verify_pg_to_cosmos",
            Self::RetryJournal => "retry_journal",
            Self::Outbox => "outbox",
            Self::ThroughPhase2 => "through_phase_2",
            Self::VerifiedSincePostgresOnly => "pg_to_cosmos_since_phase_3",
            Self::AccountExists => "account_exists",
            Self::ReplicatorLive => "replicator_live",
        }
    }

    /// Whether the check is about one account (else the domain-wide facts, read once).
    fn per_account(self) -> bool {
        matches!(self, Self::ThroughPhase2 | Self::AccountExists)
    }
}

/// The checks moving `from` to `to` must pass, each once, in the order of the steps.
fn checks(from: Phase, to: Phase) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |c: Check| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    if to > from {
        // the dual-write phases need the replicator for writes that bypass the router: a
        // forward move out of one waits until a dead replicator is replaced
        if matches!(
            from,
            Phase::DualWriteCosmosRead | Phase::DualWritePostgresRead
        ) {
            add(Check::ReplicatorLive);
        }
        for step in Phase::ALL.into_iter().filter(|p| *p > from && *p <= to) {
            match step {
                Phase::CosmosOnly => {}
                Phase::DualWriteCosmosRead => add(Check::Backfill),
                Phase::DualWritePostgresRead => {
                    add(Check::Verify(VerifyDirection::CosmosToPg));
                    add(Check::RetryJournal);
                }
                Phase::PostgresOnly => {
                    add(Check::Outbox);
                    add(Check::Verify(VerifyDirection::CosmosToPg));
                    add(Check::Verify(VerifyDirection::PgToCosmos));
                }
            }
        }
    } else if from.postgres_is_primary() && !to.postgres_is_primary() {
        if from == Phase::PostgresOnly {
            // phase 3 wrote PostgreSQL alone: nothing can prove Cosmos caught up while it does
            add(Check::ThroughPhase2);
        } else {
            add(Check::VerifiedSincePostgresOnly);
        }
        // the outbox's writes are only in PostgreSQL; a Cosmos-primary phase would miss them
        add(Check::Outbox);
    }
    out
}

/// Whether moving `from` to `to` requires an empty outbox (what `wait_drain` waits for).
pub fn needs_empty_outbox(from: Phase, to: Phase) -> bool {
    checks(from, to).contains(&Check::Outbox)
}

/// Every check `request` must pass, each domain-wide one once, with the account a per-account
/// one is about.
fn planned_checks(request: &GateRequest) -> Vec<(Check, Option<Uuid>)> {
    let mut out: Vec<(Check, Option<Uuid>)> = Vec::new();
    for m in request.moves() {
        for check in checks(m.from, m.to) {
            let key = (check, check.per_account().then_some(m.account).flatten());
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    if request.kind == ChangeKind::Override
        && let Some(account) = request.change.account
    {
        out.push((Check::AccountExists, Some(account)));
    }
    out
}

/// Every condition that `request` does not meet (empty: the change may happen). Reads on
/// `conn`: pass the connection of the transaction holding the phase lock to decide, or any
/// connection to report.
pub(super) async fn evaluate(
    conn: &mut PgConnection,
    request: &GateRequest,
    config: &GateConfig,
) -> Result<Vec<Condition>, RepoError> {
    let planned = planned_checks(request);
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    // the database's clock, not this machine's: the run times were written by it
    let now: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("phase_state", e))?;
    let age_of = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    let repair = repair_direction(request.change.from);
    let mut unmet = Vec::new();
    for (check, account) in planned {
        match check {
            Check::Backfill => match store::latest_run(&mut *conn, BACKFILL_JOB).await? {
                None => unmet.push(Condition::BackfillNeverRun),
                Some(run) if run.status != "succeeded" => {
                    unmet.push(Condition::BackfillNotCompleted {
                        status: run.status,
                        started_at: run.started_at,
                    });
                }
                Some(_) => {}
            },
            Check::Verify(direction) => {
                let facts = store::verify_facts_for(&mut *conn, direction, None).await?;
                match facts.latest_clean {
                    None => unmet.push(Condition::VerifyMissing { direction }),
                    Some(clean_at) => {
                        let age = age_of(clean_at);
                        if age >= config.max_verify_age {
                            unmet.push(Condition::VerifyTooOld {
                                direction,
                                finished_at: clean_at,
                                age,
                                max_age: config.max_verify_age,
                            });
                        }
                        if let Some(drift_at) = facts.latest_drift.filter(|d| *d > clean_at) {
                            unmet.push(Condition::DriftSinceVerify {
                                direction,
                                clean_at,
                                drift_at,
                                repair,
                            });
                        }
                    }
                }
            }
            Check::RetryJournal => {
                let rows = store::retry_journal_len(&mut *conn).await?;
                if rows > 0 {
                    unmet.push(Condition::RetryJournalNotEmpty { rows });
                }
            }
            Check::Outbox => {
                let OutboxBacklog { rows, oldest } = store::outbox_backlog(&mut *conn).await?;
                if rows > 0 {
                    unmet.push(Condition::OutboxNotEmpty {
                        rows,
                        oldest_age: oldest.map(age_of),
                    });
                }
            }
            Check::ThroughPhase2 => unmet.push(Condition::SkipsDualWritePostgresRead {
                account,
                to: request.change.to,
                domain_move: request.kind == ChangeKind::Domain && account.is_some(),
            }),
            Check::VerifiedSincePostgresOnly => {
                let Some(left_at) = store::left_postgres_only_at(&mut *conn).await? else {
                    // never in phase 3: every PostgreSQL write went through the outbox
                    continue;
                };
                let settle = chrono::Duration::from_std(POSTGRES_ONLY_SETTLE)
                    .unwrap_or(chrono::Duration::MAX);
                let verify_after = left_at + settle;
                let since = store::verify_facts_for(
                    &mut *conn,
                    VerifyDirection::PgToCosmos,
                    Some(verify_after),
                )
                .await?;
                match since.latest_clean {
                    None => {
                        let any =
                            store::verify_facts_for(&mut *conn, VerifyDirection::PgToCosmos, None)
                                .await?;
                        unmet.push(Condition::UnverifiedSincePostgresOnly {
                            left_at,
                            verify_after,
                            latest_clean_started: any.latest_clean_started,
                        });
                    }
                    Some(clean_at) => {
                        if let Some(drift_at) = since.latest_drift.filter(|d| *d > clean_at) {
                            unmet.push(Condition::DriftSinceVerify {
                                direction: VerifyDirection::PgToCosmos,
                                clean_at,
                                drift_at,
                                repair: VerifyDirection::PgToCosmos,
                            });
                        }
                    }
                }
            }
            Check::AccountExists => {
                if let Some(account) = account
                    && !store::account_exists(&mut *conn, account).await?
                {
                    unmet.push(Condition::AccountNotFound { account });
                }
            }
            Check::ReplicatorLive => {
                if let Some(dead) = dead_replicator(&mut *conn).await? {
                    unmet.push(dead);
                }
            }
        }
    }
    Ok(unmet)
}

/// [`Condition::ReplicatorDead`] when a continuous replicator beat within the last day, none
/// is live now, and the newest one fell silent without stopping. A replicator never started (or
/// stopped cleanly by its operator) blocks nothing here; `status` reports it (`no_replicator`).
async fn dead_replicator(conn: &mut PgConnection) -> Result<Option<Condition>, RepoError> {
    use mystira_postgres::heartbeats::{self, STALE_AFTER, WorkerKind, WorkerState};
    let workers = heartbeats::list(&mut *conn).await?;
    let replicators: Vec<_> = workers
        .iter()
        .filter(|w| w.kind == WorkerKind::Replicate.as_str())
        .collect();
    if replicators.iter().any(|w| w.is_live(STALE_AFTER)) {
        return Ok(None);
    }
    // newest beat first (`list` orders by kind, then beat)
    Ok(replicators
        .into_iter()
        .find(|w| w.state != WorkerState::Stopped.as_str())
        .map(|w| Condition::ReplicatorDead {
            worker: w.worker.clone(),
            silent_for: Duration::from_secs_f64(w.age_seconds.max(0.0)),
        }))
}

/// Every condition that moving the domain from `from` to `to` (clearing no override) does not
/// meet. Reads on `conn`.
pub async fn unmet_conditions(
    conn: &mut PgConnection,
    from: Phase,
    to: Phase,
    config: &GateConfig,
) -> Result<Vec<Condition>, RepoError> {
    let request = GateRequest {
        kind: ChangeKind::Domain,
        change: Move {
            account: None,
            from,
            to,
        },
        cleared: Vec::new(),
    };
    evaluate(conn, &request, config).await
}

/// The gates of this module, as `mystira_postgres::phase` evaluates them inside its lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gates(pub(super) GateConfig);

#[async_trait]
impl PhaseGate for Gates {
    type Unmet = Condition;

    async fn unmet(
        &self,
        conn: &mut PgConnection,
        request: &GateRequest,
    ) -> Result<Vec<Condition>, RepoError> {
        evaluate(conn, request, &self.0).await
    }
}

/// One check a change was held to, and whether it passed (`phase set --dry-run` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateCheck {
    /// Stable: `backfill`, `verify_cosmos_to_pg`, `verify_pg_to_cosmos`, `retry_journal`,
    /// `outbox`, `through_phase_2`, `pg_to_cosmos_since_phase_3`, `account_exists`,
    /// `replicator_live`.
    pub check: &'static str,
    /// The account a per-account check is about.
    pub account: Option<Uuid>,
    pub passed: bool,
}

pub(super) fn gate_checks(request: &GateRequest, unmet: &[Condition]) -> Vec<GateCheck> {
    planned_checks(request)
        .into_iter()
        .map(|(check, account)| GateCheck {
            check: check.name(),
            account,
            passed: !unmet
                .iter()
                .any(|c| c.check_kind() == check && c.account() == account),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_jumps_meet_the_gate_of_every_step() {
        use Phase::*;
        let c2p = Check::Verify(VerifyDirection::CosmosToPg);
        let p2c = Check::Verify(VerifyDirection::PgToCosmos);
        assert_eq!(checks(CosmosOnly, DualWriteCosmosRead), [Check::Backfill]);
        // leaving a dual-write phase forward also needs its replicator alive (not dead)
        assert_eq!(
            checks(DualWriteCosmosRead, DualWritePostgresRead),
            [Check::ReplicatorLive, c2p, Check::RetryJournal]
        );
        assert_eq!(
            checks(DualWritePostgresRead, PostgresOnly),
            [Check::ReplicatorLive, Check::Outbox, c2p, p2c]
        );
        assert_eq!(
            checks(CosmosOnly, PostgresOnly),
            [
                Check::Backfill,
                c2p,
                Check::RetryJournal,
                Check::Outbox,
                p2c
            ]
        );
    }

    #[test]
    fn backward_moves_are_gated_only_when_leaving_postgres_primary() {
        use Phase::*;
        assert!(checks(DualWriteCosmosRead, CosmosOnly).is_empty());
        assert!(checks(PostgresOnly, DualWritePostgresRead).is_empty());
        assert_eq!(
            checks(DualWritePostgresRead, DualWriteCosmosRead),
            [Check::VerifiedSincePostgresOnly, Check::Outbox]
        );
        assert_eq!(
            checks(PostgresOnly, CosmosOnly),
            [Check::ThroughPhase2, Check::Outbox]
        );
        assert!(needs_empty_outbox(PostgresOnly, DualWriteCosmosRead));
    }
}
