//! Phase control: the gates a phase change must pass, changing the phase (domain-wide or for
//! one canary account) through them, and [`PhaseWatcher`], which every running process uses
//! to know the phase within 2 seconds of a change.
//!
//! # Gates
//! A forward move must meet the gate of every step it passes (0→3 meets 0→1, 1→2 and 2→3):
//! - into `dual-write-cosmos-read` (0→1): the latest backfill run succeeded;
//! - into `dual-write-postgres-read` (1→2): a clean Cosmos-to-PostgreSQL verify of the whole
//!   key space finished less than `max_verify_age` ago (and no verify of that direction found
//!   drift since), and the retry journal is empty (every phase-1 write reached PostgreSQL);
//! - into `postgres-only` (2→3): the outbox is empty (every PostgreSQL write reached Cosmos),
//!   the same recent clean Cosmos-to-PostgreSQL verify, and a recent clean
//!   PostgreSQL-to-Cosmos one (Cosmos, archived from now on, holds what PostgreSQL holds).
//!
//! A backward move needs no backfill and no verify, except where it leaves PostgreSQL-primary
//! (phase 2 or 3) for a Cosmos-primary phase (1 or 0):
//! - the outbox must be empty: those writes exist only in PostgreSQL until the relay delivers
//!   them (`wait_drain` waits, bounded, for the relay to empty it first);
//! - out of `postgres-only` the move must go through `dual-write-postgres-read`: phase 3 writes
//!   PostgreSQL alone, and while it does no verify can prove Cosmos caught up;
//! - from `dual-write-postgres-read`, once anything has been in `postgres-only`: a clean
//!   PostgreSQL-to-Cosmos verify of the whole key space that started at least
//!   [`POSTGRES_ONLY_SETTLE`] after phase 3 was last left (by the domain or any account), and
//!   no drift found since. Phase-3 writes reach Cosmos only through `verify --direction
//!   pg-to-cosmos --repair`; that verify is what proves they did.
//!
//! A canary override is gated the same way, from the phase the account runs in now, and must
//! name an account PostgreSQL holds. A domain move that leaves overrides on the wrong side
//! (behind it going forward, ahead of it going back) clears them (each such account's own move
//! passes the gates too) unless `keep_overrides`; both are audited. The journal and outbox are
//! counted domain-wide, also for an override: conservative, since a canary's writes cannot be
//! told apart from the rest's in either table.
//!
//! `force` goes past a refusing gate; the audit row then says `forced`. The gate is evaluated
//! inside the transaction holding the phase lock (see `mystira_postgres::phase`), so two
//! operators changing the phase at once are serialized and each decision is taken on facts
//! read after the other's change committed. `dry_run` decides the same way and writes nothing.
//!
//! # Watching
//! [`PhaseWatcher::start`] loads the phase and the overrides, then keeps them current from a
//! background task: it LISTENs on [`PHASE_CHANNEL`] (a trigger notifies on every change) and
//! also re-reads every `poll` (default 1 s), so a change is seen within about one `poll` even
//! when notifications are lost (a dropped listener connection, a proxy that does not forward
//! them). While PostgreSQL is unreachable it keeps the last known phase, logs one warning and
//! keeps trying.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::{Phase, left_on_wrong_side};
use mystira_postgres::phase::{
    self as store, ChangeFlags, ChangeKind, ChangeOutcome, ChangeRequest, GateRequest, Move,
    OutboxBacklog, PhaseGate, Transition,
};
use serde::Serialize;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

pub use mystira_postgres::phase::{
    AffectedOverride, OverrideAction, PHASE_CHANNEL, PhaseOverride, PhaseState, VerifyDirection,
};

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

/// One unmet condition of a gate. [`Condition::code`] is stable (for scripts); the
/// `Display` text is a sentence for people that says what to do, naming the command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// No backfill run is recorded.
    BackfillNeverRun,
    /// The latest backfill run did not succeed (it is running, failed or was interrupted).
    BackfillNotCompleted {
        status: String,
        started_at: DateTime<Utc>,
    },
    /// No clean verify of the whole key space is recorded in this direction.
    VerifyMissing { direction: VerifyDirection },
    /// The latest clean verify of this direction is older than the maximum age.
    VerifyTooOld {
        direction: VerifyDirection,
        finished_at: DateTime<Utc>,
        age: Duration,
        max_age: Duration,
    },
    /// A verify of this direction that finished after the latest clean one found drift.
    /// `repair` is the direction whose `--repair` fixes it: from the primary store of the
    /// phase the move starts in.
    DriftSinceVerify {
        direction: VerifyDirection,
        clean_at: DateTime<Utc>,
        drift_at: DateTime<Utc>,
        repair: VerifyDirection,
    },
    /// Phase-1 writes that have not reached PostgreSQL yet.
    RetryJournalNotEmpty { rows: i64 },
    /// PostgreSQL writes that have not reached Cosmos yet.
    OutboxNotEmpty {
        rows: i64,
        oldest_age: Option<Duration>,
    },
    /// A move from `postgres-only` straight to a Cosmos-primary phase (`account`: a canary's,
    /// `None`: the domain's). `domain_move`: the account's override would be cleared by a
    /// domain move.
    SkipsDualWritePostgresRead {
        account: Option<Uuid>,
        to: Phase,
        domain_move: bool,
    },
    /// Leaving PostgreSQL-primary for Cosmos-primary after phase 3 was left at `left_at`, with
    /// no clean PostgreSQL-to-Cosmos verify of the whole key space started at or after
    /// `verify_after` (`left_at` + [`POSTGRES_ONLY_SETTLE`]).
    UnverifiedSincePostgresOnly {
        left_at: DateTime<Utc>,
        verify_after: DateTime<Utc>,
        /// When the newest clean one (of any time) started.
        latest_clean_started: Option<DateTime<Utc>>,
    },
    /// An override for an account PostgreSQL does not hold.
    AccountNotFound { account: Uuid },
    /// A continuous `replicate` ran (it beat within the last day) and died: none beats now,
    /// and the newest stopped beating `silent_for` ago without saying it stopped. The phase
    /// being left needs one: writes that reach Cosmos without the router are otherwise missed.
    ReplicatorDead {
        worker: String,
        silent_for: Duration,
    },
}

/// The command that verifies in `direction`.
fn verify_command(direction: VerifyDirection) -> &'static str {
    match direction {
        VerifyDirection::CosmosToPg => "mystira-users verify",
        VerifyDirection::PgToCosmos => "mystira-users verify --direction pg-to-cosmos",
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

fn direction_words(direction: VerifyDirection) -> &'static str {
    match direction {
        VerifyDirection::CosmosToPg => "Cosmos-to-PostgreSQL",
        VerifyDirection::PgToCosmos => "PostgreSQL-to-Cosmos",
    }
}

fn at(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl Condition {
    /// The stable code of this condition, for JSON output and scripts.
    pub fn code(&self) -> &'static str {
        use VerifyDirection::{CosmosToPg, PgToCosmos};
        match self {
            Self::BackfillNeverRun => "backfill_never_run",
            Self::BackfillNotCompleted { .. } => "backfill_not_completed",
            Self::VerifyMissing {
                direction: CosmosToPg,
            } => "verify_missing",
            Self::VerifyMissing {
                direction: PgToCosmos,
            } => "verify_pg_to_cosmos_missing",
            Self::VerifyTooOld {
                direction: CosmosToPg,
                ..
            } => "verify_too_old",
            Self::VerifyTooOld {
                direction: PgToCosmos,
                ..
            } => "verify_pg_to_cosmos_too_old",
            Self::DriftSinceVerify {
                direction: CosmosToPg,
                ..
            } => "verify_drift_since_clean",
            Self::DriftSinceVerify {
                direction: PgToCosmos,
                ..
            } => "verify_pg_to_cosmos_drift_since_clean",
            Self::RetryJournalNotEmpty { .. } => "retry_journal_not_empty",
            Self::OutboxNotEmpty { .. } => "outbox_not_empty",
            Self::SkipsDualWritePostgresRead { .. } => "postgres_only_exit_skips_phase_2",
            Self::UnverifiedSincePostgresOnly { .. } => "pg_to_cosmos_unverified_since_phase_3",
            Self::AccountNotFound { .. } => "account_not_found",
            Self::ReplicatorDead { .. } => "replicator_dead",
        }
    }

    /// The check ([`GateCheck::check`]) this condition is a failure of.
    pub fn check(&self) -> &'static str {
        self.check_kind().name()
    }

    fn check_kind(&self) -> Check {
        match self {
            Self::BackfillNeverRun | Self::BackfillNotCompleted { .. } => Check::Backfill,
            Self::VerifyMissing { direction }
            | Self::VerifyTooOld { direction, .. }
            | Self::DriftSinceVerify { direction, .. } => Check::Verify(*direction),
            Self::RetryJournalNotEmpty { .. } => Check::RetryJournal,
            Self::OutboxNotEmpty { .. } => Check::Outbox,
            Self::SkipsDualWritePostgresRead { .. } => Check::ThroughPhase2,
            Self::UnverifiedSincePostgresOnly { .. } => Check::VerifiedSincePostgresOnly,
            Self::AccountNotFound { .. } => Check::AccountExists,
            Self::ReplicatorDead { .. } => Check::ReplicatorLive,
        }
    }

    /// The account a condition is about (`None`: the domain's facts).
    fn account(&self) -> Option<Uuid> {
        match self {
            Self::SkipsDualWritePostgresRead { account, .. } => *account,
            Self::AccountNotFound { account } => Some(*account),
            _ => None,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BackfillNeverRun => f.write_str(
                "No backfill has been run: run `mystira-users migrate` until it completes.",
            ),
            Self::BackfillNotCompleted { status, started_at } => {
                let state = if status == "running" {
                    "is still running".to_owned()
                } else {
                    format!("ended {status}")
                };
                write!(
                    f,
                    "The latest backfill run (started {}) {state}: run `mystira-users migrate` \
                     until it completes.",
                    at(started_at)
                )
            }
            Self::VerifyMissing { direction } => write!(
                f,
                "No clean {} verify of the whole key space has been recorded: run `{}` \
                 (without --buckets).",
                direction_words(*direction),
                verify_command(*direction)
            ),
            Self::VerifyTooOld {
                direction,
                age,
                max_age,
                ..
            } => write!(
                f,
                "The latest clean {} verify finished {} ago, more than the maximum age of {}: \
                 run `{}` again (or raise --max-verify-age).",
                direction_words(*direction),
                format_duration(*age),
                format_duration(*max_age),
                verify_command(*direction)
            ),
            Self::DriftSinceVerify {
                direction,
                drift_at,
                repair,
                ..
            } => write!(
                f,
                "A {} verify that finished at {}, after the latest clean one, found drift: \
                 repair it (`{} --repair`), then run `{}` until it is clean.",
                direction_words(*direction),
                at(drift_at),
                verify_command(*repair),
                verify_command(*direction)
            ),
            Self::RetryJournalNotEmpty { rows } => write!(
                f,
                "The retry journal holds {rows} write(s) that have not reached PostgreSQL yet: \
                 wait for the journal replay to drain it."
            ),
            Self::OutboxNotEmpty { rows, oldest_age } => {
                write!(
                    f,
                    "The outbox holds {rows} write(s) not yet delivered to Cosmos"
                )?;
                if let Some(age) = oldest_age {
                    write!(f, ", the oldest enqueued {} ago", format_duration(*age))?;
                }
                f.write_str(
                    ": wait for the outbox relay to drain it (or use --wait-drain SECONDS).",
                )
            }
            Self::SkipsDualWritePostgresRead {
                account,
                to,
                domain_move,
            } => {
                let (subject, flag) = match account {
                    Some(a) => (format!("Account {a}"), format!(" --account {a}")),
                    None => ("The domain".to_owned(), String::new()),
                };
                write!(
                    f,
                    "{subject} is in postgres-only, which writes PostgreSQL alone; {to} reads \
                     Cosmos, which lacks the phase-3 writes until a repair delivers them, and \
                     no verify can prove it caught up while phase-3 writes go on: go back \
                     through dual-write-postgres-read first (`mystira-users phase set \
                     dual-write-postgres-read{flag} --reason TEXT`), run `mystira-users verify \
                     --direction pg-to-cosmos --repair` until it is clean, then move to {to}."
                )?;
                if *domain_move {
                    f.write_str(
                        " (Or keep the override with --keep-overrides: the domain move then \
                         leaves it where it is.)",
                    )?;
                }
                Ok(())
            }
            Self::UnverifiedSincePostgresOnly {
                left_at,
                verify_after,
                latest_clean_started,
            } => {
                write!(
                    f,
                    "Phase 3 (postgres-only) was left at {}, and its writes reach Cosmos only \
                     through a repair; no clean PostgreSQL-to-Cosmos verify of the whole key \
                     space has started since {}",
                    at(left_at),
                    at(verify_after)
                )?;
                if let Some(started) = latest_clean_started {
                    write!(f, " (the latest started {})", at(started))?;
                }
                f.write_str(
                    ": run `mystira-users verify --direction pg-to-cosmos --repair` (it \
                     delivers what Cosmos lacks and verifies again) until it is clean, then move \
                     again.",
                )
            }
            Self::AccountNotFound { account } => write!(
                f,
                "PostgreSQL holds no account {account}: an override for it would pin nothing. \
                 Check the id (`--force` sets it anyway, e.g. for an account Cosmos holds that \
                 has not been copied yet)."
            ),
            Self::ReplicatorDead { worker, silent_for } => write!(
                f,
                "The replicator {worker} stopped beating {} ago without stopping cleanly, and \
                 no other `replicate` beats: writes that reach Cosmos without the router are \
                 not being copied. Start `mystira-users replicate` again (it resumes from its \
                 checkpoints), check `mystira-users status`, then move again.",
                format_duration(*silent_for)
            ),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::json!({
            "code": self.code(),
            "check": self.check(),
            "message": self.to_string(),
        });
        let detail = match self {
            Self::BackfillNeverRun => serde_json::json!({}),
            Self::VerifyMissing { direction } => serde_json::json!({ "direction": direction }),
            Self::BackfillNotCompleted { status, started_at } => {
                serde_json::json!({ "status": status, "started_at": started_at })
            }
            Self::VerifyTooOld {
                direction,
                finished_at,
                age,
                max_age,
            } => serde_json::json!({
                "direction": direction,
                "finished_at": finished_at,
                "age_seconds": age.as_secs(),
                "max_age_seconds": max_age.as_secs(),
            }),
            Self::DriftSinceVerify {
                direction,
                clean_at,
                drift_at,
                repair,
            } => serde_json::json!({
                "direction": direction,
                "clean_at": clean_at,
                "drift_at": drift_at,
                "repair_direction": repair,
            }),
            Self::RetryJournalNotEmpty { rows } => serde_json::json!({ "rows": rows }),
            Self::OutboxNotEmpty { rows, oldest_age } => serde_json::json!({
                "rows": rows,
                "oldest_age_seconds": oldest_age.map(|a| a.as_secs()),
            }),
            Self::SkipsDualWritePostgresRead { account, to, .. } => {
                serde_json::json!({ "account": account, "to": to })
            }
            Self::UnverifiedSincePostgresOnly {
                left_at,
                verify_after,
                latest_clean_started,
            } => serde_json::json!({
                "left_at": left_at,
                "verify_after": verify_after,
                "latest_clean_started": latest_clean_started,
            }),
            Self::AccountNotFound { account } => serde_json::json!({ "account": account }),
            Self::ReplicatorDead { worker, silent_for } => serde_json::json!({
                "worker": worker,
                "silent_for_seconds": silent_for.as_secs(),
            }),
        };
        if let (Some(map), serde_json::Value::Object(extra)) = (value.as_object_mut(), detail) {
            map.extend(extra);
        }
        value.serialize(serializer)
    }
}

/// What a gate looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
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
    fn name(self) -> &'static str {
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
async fn evaluate(
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
struct Gates(GateConfig);

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

fn gate_checks(request: &GateRequest, unmet: &[Condition]) -> Vec<GateCheck> {
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
    /// move ends in [`DecisionKind::NeedsConfirmation`] and writes nothing.
    pub confirmed: bool,
}

/// What a change request ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Written and audited.
    Applied,
    /// Already in that phase: nothing written.
    Unchanged,
    /// A gate refused: nothing written.
    Refused,
    /// `clear` of an account with no override: nothing written.
    NoOverride,
    /// A dry run of a change that would be applied (`forced` when only `--force` lets it).
    WouldApply,
    /// A dry run of a change a gate would refuse.
    WouldRefuse,
    /// A move out of `postgres-only` that was not confirmed: nothing written.
    NeedsConfirmation,
}

/// How waiting for the outbox went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DrainWait {
    pub waited_seconds: f64,
    /// Whether the outbox was empty when the wait ended.
    pub drained: bool,
}

/// The result of [`set_phase`] or [`clear_override`].
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub result: DecisionKind,
    /// The canary account, or `None` for the domain-wide phase.
    pub account: Option<Uuid>,
    pub from: Phase,
    pub to: Phase,
    /// Whether a refusing gate was (or, in a dry run, would be) forced past.
    pub forced: bool,
    /// Refused: every unmet condition. Applied with `forced`: the conditions forced past.
    pub unmet: Vec<Condition>,
    /// Every check the change was held to and whether it passed (empty when nothing was
    /// decided: unchanged, no override).
    pub gates: Vec<GateCheck>,
    /// A domain move: the overrides it leaves on the wrong side, and whether they are
    /// (or would be) cleared or kept.
    pub overrides: Vec<AffectedOverride>,
    /// Whether the change leaves `postgres-only` and so needs a typed confirmation (or
    /// `--yes`).
    pub confirmation_required: bool,
    pub dry_run: bool,
    /// The audit row, when applied.
    pub transition: Option<Transition>,
    pub drain_wait: Option<DrainWait>,
}

impl Decision {
    /// A sentence (or a few lines) for people.
    pub fn summary(&self) -> String {
        let subject = match self.account {
            Some(a) => format!("account {a}"),
            None => "the domain".to_owned(),
        };
        let mut out = match self.result {
            DecisionKind::Applied if self.forced => format!(
                "FORCED: {subject} moved from {} to {} past {} unmet condition(s):\n",
                self.from,
                self.to,
                self.unmet.len()
            ),
            DecisionKind::Applied => {
                format!("{subject} moved from {} to {}\n", self.from, self.to)
            }
            DecisionKind::Unchanged => format!("{subject} is already in {}\n", self.to),
            DecisionKind::Refused => format!(
                "REFUSED: {subject} stays in {}; moving to {} needs:\n",
                self.from, self.to
            ),
            DecisionKind::NoOverride => format!(
                "{subject} has no override (it runs in the domain phase, {})\n",
                self.to
            ),
            DecisionKind::WouldApply if self.forced => format!(
                "DRY RUN: {subject} would move from {} to {}, FORCED past {} unmet \
                 condition(s):\n",
                self.from,
                self.to,
                self.unmet.len()
            ),
            DecisionKind::WouldApply => format!(
                "DRY RUN: {subject} would move from {} to {}\n",
                self.from, self.to
            ),
            DecisionKind::WouldRefuse => format!(
                "DRY RUN: REFUSED: {subject} would stay in {}; moving to {} needs:\n",
                self.from, self.to
            ),
            DecisionKind::NeedsConfirmation => format!(
                "NOT CONFIRMED: {subject} stays in {}: moving out of postgres-only to {} needs \
                 a typed confirmation (in a terminal) or --yes\n",
                self.from, self.to
            ),
        };
        for c in &self.unmet {
            out.push_str(&format!("  - [{}] {c}\n", c.code()));
        }
        if matches!(
            self.result,
            DecisionKind::Refused | DecisionKind::WouldRefuse
        ) {
            out.push_str("  (--force goes past the gate; the audit row then says forced)\n");
        }
        if self.dry_run && !self.gates.is_empty() {
            out.push_str("gates:\n");
            for g in &self.gates {
                let about = g
                    .account
                    .map(|a| format!(" (account {a})"))
                    .unwrap_or_default();
                let state = if g.passed { "pass" } else { "FAIL" };
                out.push_str(&format!("  {state}  {}{about}\n", g.check));
            }
        }
        if !self.overrides.is_empty() {
            let done = matches!(self.result, DecisionKind::Applied);
            out.push_str(&format!(
                "overrides left on the wrong side by the move to {}:\n",
                self.to
            ));
            for o in &self.overrides {
                let action = match (o.action, done) {
                    (OverrideAction::Cleared, true) => {
                        format!(
                            "cleared (the account moved from {} to {})",
                            o.phase, self.to
                        )
                    }
                    (OverrideAction::Cleared, false) => format!(
                        "cleared by the move (the account moves from {} to {}; \
                         --keep-overrides keeps it)",
                        o.phase, self.to
                    ),
                    (OverrideAction::Kept, _) => {
                        format!("kept in {} (--keep-overrides)", o.phase)
                    }
                };
                out.push_str(&format!("  {} in {}: {action}\n", o.account_id, o.phase));
            }
        }
        if self.dry_run && self.confirmation_required {
            out.push_str(
                "the move leaves postgres-only: it asks for a typed confirmation (or --yes)\n",
            );
        }
        out
    }
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

/// The gate request a decided change was held to (rebuilt from what the store reports).
fn gate_request_of(
    kind: ChangeKind,
    account: Option<Uuid>,
    from: Phase,
    to: Phase,
    overrides: &[AffectedOverride],
) -> GateRequest {
    GateRequest {
        kind,
        change: Move { account, from, to },
        cleared: overrides
            .iter()
            .filter(|o| o.action == OverrideAction::Cleared)
            .map(|o| Move {
                account: Some(o.account_id),
                from: o.phase,
                to,
            })
            .collect(),
    }
}

fn leaves_postgres_only(request: &GateRequest) -> bool {
    request
        .moves()
        .any(|m| m.from == Phase::PostgresOnly && m.to != Phase::PostgresOnly)
}

fn decision(
    outcome: ChangeOutcome<Condition>,
    kind: ChangeKind,
    account: Option<Uuid>,
    options: &ChangeOptions,
    drain_wait: Option<DrainWait>,
) -> Decision {
    let base = |result, from, to| Decision {
        result,
        account,
        from,
        to,
        forced: false,
        unmet: Vec::new(),
        gates: Vec::new(),
        overrides: Vec::new(),
        confirmation_required: false,
        dry_run: options.dry_run,
        transition: None,
        drain_wait,
    };
    let decided = |result, from, to, unmet: Vec<Condition>, overrides: Vec<AffectedOverride>| {
        let request = gate_request_of(kind, account, from, to, &overrides);
        Decision {
            forced: options.force && !unmet.is_empty(),
            gates: gate_checks(&request, &unmet),
            confirmation_required: leaves_postgres_only(&request),
            unmet,
            overrides,
            ..base(result, from, to)
        }
    };
    match outcome {
        ChangeOutcome::Applied {
            transition,
            overridden,
            overrides,
        } => {
            let (from, to) = (transition.from_phase, transition.to_phase);
            Decision {
                forced: transition.forced,
                transition: Some(transition),
                ..decided(DecisionKind::Applied, from, to, overridden, overrides)
            }
        }
        ChangeOutcome::Unchanged { phase } => base(DecisionKind::Unchanged, phase, phase),
        ChangeOutcome::Refused {
            from,
            to,
            unmet,
            overrides,
        } => Decision {
            forced: false,
            ..decided(DecisionKind::Refused, from, to, unmet, overrides)
        },
        ChangeOutcome::NoOverride { domain_phase } => {
            base(DecisionKind::NoOverride, domain_phase, domain_phase)
        }
        ChangeOutcome::DryRun {
            from,
            to,
            unmet,
            overrides,
            ..
        } => {
            let result = if unmet.is_empty() || options.force {
                DecisionKind::WouldApply
            } else {
                DecisionKind::WouldRefuse
            };
            decided(result, from, to, unmet, overrides)
        }
        ChangeOutcome::NeedsConfirmation {
            from,
            to,
            unmet,
            overrides,
        } => decided(DecisionKind::NeedsConfirmation, from, to, unmet, overrides),
    }
}

/// How often waiting for the drain looks at the outbox.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// How often a `--wait-drain` wait says how many outbox rows are left.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Waits (at most `options.wait_drain`) for the outbox to empty when the move needs it. The
/// wait happens before the phase lock is taken: holding the lock while waiting would block
/// every other phase change for as long. The gate decides afterwards, on fresh facts.
async fn wait_for_drain(
    pool: &PgPool,
    account: Option<Uuid>,
    to: Option<Phase>,
    options: &ChangeOptions,
) -> Result<Option<DrainWait>, PhaseError> {
    let Some(limit) = options.wait_drain else {
        return Ok(None);
    };
    let (state, overrides) = store::load_all(pool).await?;
    let from = account
        .and_then(|a| overrides.get(&a).copied())
        .unwrap_or(state.phase);
    let to = to.unwrap_or(state.phase);
    // a domain move also moves the overrides it clears
    let cleared_need_it = account.is_none()
        && !options.keep_overrides
        && overrides
            .values()
            .any(|o| left_on_wrong_side(from, to, *o) && needs_empty_outbox(*o, to));
    if !needs_empty_outbox(from, to) && !cleared_need_it {
        return Ok(None);
    }
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    // an operator watching a wait of minutes sees it move (it printed nothing: issue 34)
    let mut next_report = started;
    loop {
        let backlog = store::outbox_backlog(pool).await?;
        let drained = backlog.rows == 0;
        let now = tokio::time::Instant::now();
        if !drained && now >= next_report {
            tracing::info!(
                outbox_rows = backlog.rows,
                waited_seconds = (now - started).as_secs(),
                left_seconds = deadline.saturating_duration_since(now).as_secs(),
                "waiting for the outbox to drain"
            );
            next_report = now + DRAIN_REPORT_EVERY;
        }
        if drained || now >= deadline {
            if !drained {
                tracing::info!(
                    waited_seconds = limit.as_secs_f64(),
                    "the outbox did not drain in time"
                );
            }
            return Ok(Some(DrainWait {
                waited_seconds: (now - started).as_secs_f64(),
                drained,
            }));
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
}

/// Where an override stands against the domain phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverridePosition {
    /// In a later phase than the domain (a canary of what comes next).
    Ahead,
    /// In an earlier phase than the domain.
    Behind,
    /// In the domain's phase (it pins the account there).
    Same,
}

/// What a domain move would do to an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideEffect {
    /// It stays where it is, on the right side of the domain.
    Stays,
    /// The domain reaches the override's phase: it then pins the account there.
    Pins,
    /// The move leaves it on the wrong side: cleared with the move (the account moves too,
    /// through the gates), or kept with `--keep-overrides`; audited either way.
    WrongSide,
}

/// What one domain move would mean for an override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideOutlook {
    /// The domain move's target.
    pub to: Phase,
    pub effect: OverrideEffect,
    /// A sentence for people.
    pub meaning: String,
}

fn outlook(domain: Phase, to: Phase, o: Phase) -> OverrideOutlook {
    let (effect, meaning) = if left_on_wrong_side(domain, to, o) {
        let side = if to > domain { "behind" } else { "ahead" };
        (
            OverrideEffect::WrongSide,
            format!(
                "left {side} by the move to {to}: cleared with it (the account moves from {o} \
                 to {to}, through the same gates), or kept with --keep-overrides"
            ),
        )
    } else if o == to {
        (
            OverrideEffect::Pins,
            format!("the move to {to} reaches it: it then pins the account in {to}"),
        )
    } else {
        let side = if o > to { "ahead of" } else { "behind" };
        (
            OverrideEffect::Stays,
            format!("stays {side} the domain in {o}"),
        )
    };
    OverrideOutlook {
        to,
        effect,
        meaning,
    }
}

/// An override, as `phase show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct OverrideStatus {
    #[serde(flatten)]
    pub details: PhaseOverride,
    /// Whether PostgreSQL holds the account.
    pub account_exists: bool,
    pub position: OverridePosition,
    /// What the next forward domain move (`next`) would mean for it.
    pub on_next: Option<OverrideOutlook>,
    /// What a domain rollback of one step would mean for it.
    pub on_rollback: Option<OverrideOutlook>,
}

/// Everything `phase show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub domain: PhaseState,
    pub overrides: Vec<OverrideStatus>,
    /// The next forward phase, if any, and what its gate still needs (empty: open), counting
    /// the moves of the overrides it would clear.
    pub next: Option<Phase>,
    pub next_unmet: Vec<Condition>,
    /// The phase one step back, if any, and what its gate still needs, the same way.
    pub rollback: Option<Phase>,
    pub rollback_unmet: Vec<Condition>,
    pub retry_journal_rows: i64,
    pub outbox: OutboxBacklog,
}

impl PhaseStatus {
    /// Several lines for people.
    pub fn summary(&self) -> String {
        let d = &self.domain;
        let mut out = format!(
            "phase: {} ({})\n  set {} by {}: {}\n",
            d.phase,
            d.phase.number(),
            at(&d.changed_at),
            d.changed_by,
            d.reason
        );
        out.push_str(&format!(
            "retry journal: {} row(s); outbox: {} row(s)\n",
            self.retry_journal_rows, self.outbox.rows
        ));
        if self.overrides.is_empty() {
            out.push_str("overrides: none\n");
        } else {
            out.push_str(&format!("overrides: {}\n", self.overrides.len()));
            for o in &self.overrides {
                let details = &o.details;
                let missing = if o.account_exists {
                    ""
                } else {
                    " [no such account in PostgreSQL]"
                };
                out.push_str(&format!(
                    "  {} {} (set {} by {}: {}){missing}\n",
                    details.account_id,
                    details.phase,
                    at(&details.changed_at),
                    details.changed_by,
                    details.reason
                ));
                for (label, outlook) in [("next", &o.on_next), ("rollback", &o.on_rollback)] {
                    if let Some(outlook) = outlook {
                        out.push_str(&format!("    on {label}: {}\n", outlook.meaning));
                    }
                }
            }
        }
        let mut gate = |label: &str, to: Option<Phase>, unmet: &[Condition]| match to {
            None => out.push_str(&format!("{label}: none\n")),
            Some(to) if unmet.is_empty() => {
                out.push_str(&format!("{label}: {to}: the gate is open\n"));
            }
            Some(to) => {
                out.push_str(&format!("{label}: {to}: the gate needs:\n"));
                for c in unmet {
                    out.push_str(&format!("  - [{}] {c}\n", c.code()));
                }
            }
        };
        gate("next", self.next, &self.next_unmet);
        gate("rollback", self.rollback, &self.rollback_unmet);
        out
    }
}

/// Reads the phase, the overrides and the gate status of the next forward step and of a
/// rollback of one step.
pub async fn status(pool: &PgPool, gates: &GateConfig) -> Result<PhaseStatus, PhaseError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| PhaseError::Store(mystira_postgres::map_sqlx_error("phase_state", e)))?;
    let domain = store::current(&mut *conn).await?;
    let details = store::override_details(&mut *conn).await?;
    let here = domain.phase;
    let next = Phase::ALL.into_iter().find(|p| *p > here);
    let rollback = Phase::ALL.into_iter().rev().find(|p| *p < here);
    // the gate a domain move faces, clearing the overrides it leaves on the wrong side
    let request_to = |to: Phase| {
        let affected: Vec<AffectedOverride> = details
            .iter()
            .filter(|o| left_on_wrong_side(here, to, o.phase))
            .map(|o| AffectedOverride {
                account_id: o.account_id,
                phase: o.phase,
                action: OverrideAction::Cleared,
            })
            .collect();
        gate_request_of(ChangeKind::Domain, None, here, to, &affected)
    };
    let next_unmet = match next {
        Some(to) => evaluate(&mut conn, &request_to(to), gates).await?,
        None => Vec::new(),
    };
    let rollback_unmet = match rollback {
        Some(to) => evaluate(&mut conn, &request_to(to), gates).await?,
        None => Vec::new(),
    };
    let mut overrides = Vec::with_capacity(details.len());
    for o in details {
        let position = match o.phase.cmp(&here) {
            std::cmp::Ordering::Greater => OverridePosition::Ahead,
            std::cmp::Ordering::Less => OverridePosition::Behind,
            std::cmp::Ordering::Equal => OverridePosition::Same,
        };
        overrides.push(OverrideStatus {
            account_exists: store::account_exists(&mut *conn, o.account_id).await?,
            position,
            on_next: next.map(|to| outlook(here, to, o.phase)),
            on_rollback: rollback.map(|to| outlook(here, to, o.phase)),
            details: o,
        });
    }
    Ok(PhaseStatus {
        next,
        next_unmet,
        rollback,
        rollback_unmet,
        retry_journal_rows: store::retry_journal_len(&mut *conn).await?,
        outbox: store::outbox_backlog(&mut *conn).await?,
        overrides,
        domain,
    })
}

/// The newest `limit` transitions, newest first.
pub async fn history(pool: &PgPool, limit: i64) -> Result<Vec<Transition>, PhaseError> {
    Ok(store::history(pool, limit).await?)
}

/// `90s`, `15m`, `24h`, `2d`, or several together (`1h30m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration such as 24h, 90m or 3600s".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(
                    "expected a duration such as 24h, 90m or 3600s (units s, m, h, d)".to_owned(),
                );
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| "expected a number before each unit, e.g. 24h".to_owned())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or("the duration is too long")?;
        number.clear();
    }
    if !number.is_empty() {
        return Err("a number at the end has no unit (s, m, h or d)".to_owned());
    }
    Ok(Duration::from_secs(total))
}

/// `1d 2h`, `30h 5m`, `42s`: the two largest units.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m {seconds}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What a [`PhaseWatcher`] knows: the domain phase and every canary override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseSnapshot {
    pub domain: Phase,
    /// When the domain phase last changed (`None` for [`PhaseWatcher::fixed`]).
    pub domain_changed_at: Option<DateTime<Utc>>,
    pub overrides: HashMap<Uuid, Phase>,
}

impl PhaseSnapshot {
    /// The account's override when it has one, else the domain phase.
    pub fn phase_for(&self, account: Option<Uuid>) -> Phase {
        account
            .and_then(|a| self.overrides.get(&a).copied())
            .unwrap_or(self.domain)
    }
}

/// How a [`PhaseWatcher`] keeps current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatcherOptions {
    /// Re-read the phase this often, whatever the notifications do (the fallback).
    pub poll: Duration,
    /// LISTEN for change notifications (off: polling alone, e.g. behind a pooler in
    /// transaction mode, which does not forward notifications).
    pub listen: bool,
    /// A read of the phase that takes longer is abandoned (PostgreSQL unreachable).
    pub query_timeout: Duration,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            listen: true,
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// The `application_name` of the watcher's connections (seen in `pg_stat_activity`).
pub const WATCHER_APPLICATION_NAME: &str = "mystira-phase-watcher";

/// The phase every part of a process obeys, kept current from PostgreSQL (see the module
/// docs). Cheap to clone; the background task stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PhaseWatcher {
    inner: Arc<WatcherInner>,
}

#[derive(Debug)]
struct WatcherInner {
    rx: watch::Receiver<PhaseSnapshot>,
    /// Keeps a [`PhaseWatcher::fixed`] channel open (no task owns its sender).
    _fixed: Option<watch::Sender<PhaseSnapshot>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for WatcherInner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PhaseWatcher {
    /// Loads the phase and overrides (failing if PostgreSQL cannot be read now), then keeps
    /// them current: LISTEN/NOTIFY plus a re-read every `poll`.
    pub async fn start(pool: PgPool, poll: Duration) -> Result<PhaseWatcher, RepoError> {
        Self::start_with(
            pool,
            WatcherOptions {
                poll,
                ..WatcherOptions::default()
            },
        )
        .await
    }

    /// [`PhaseWatcher::start`] with every option.
    pub async fn start_with(
        pool: PgPool,
        options: WatcherOptions,
    ) -> Result<PhaseWatcher, RepoError> {
        // Own connections (one to read, one to listen) on the caller's database: a caller's
        // pool exhausted under load must not delay seeing a phase change.
        let connect = (*pool.connect_options())
            .clone()
            .application_name(WATCHER_APPLICATION_NAME);
        let own_pool = |timeout| {
            PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(timeout)
                .connect_lazy_with(connect.clone())
        };
        let reader = own_pool(options.query_timeout);
        let first = read_snapshot(&reader, options.query_timeout).await?;
        let (tx, rx) = watch::channel(first);
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        if options.listen {
            let listener_pool = own_pool(options.query_timeout);
            tasks.push(tokio::spawn(listen(listener_pool, wake.clone())).abort_handle());
        }
        tasks.push(tokio::spawn(refresh(reader, tx, wake, options)).abort_handle());
        Ok(PhaseWatcher {
            inner: Arc::new(WatcherInner {
                rx,
                _fixed: None,
                tasks,
            }),
        })
    }

    /// A watcher that always says `phase` (no task, no database): for tests and tools.
    pub fn fixed(phase: Phase) -> PhaseWatcher {
        let (tx, rx) = watch::channel(PhaseSnapshot {
            domain: phase,
            domain_changed_at: None,
            overrides: HashMap::new(),
        });
        PhaseWatcher {
            inner: Arc::new(WatcherInner {
                rx,
                _fixed: Some(tx),
                tasks: Vec::new(),
            }),
        }
    }

    /// The phase `account` runs in: its override when it has one, else the domain phase.
    pub fn phase_for(&self, account: Option<Uuid>) -> Phase {
        self.inner.rx.borrow().phase_for(account)
    }

    /// The domain-wide phase.
    pub fn domain_phase(&self) -> Phase {
        self.inner.rx.borrow().domain
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> PhaseSnapshot {
        self.inner.rx.borrow().clone()
    }

    /// A receiver that is told of every change (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<PhaseSnapshot> {
        self.inner.rx.clone()
    }
}

async fn read_snapshot(pool: &PgPool, timeout: Duration) -> Result<PhaseSnapshot, RepoError> {
    let (state, overrides) = tokio::time::timeout(timeout, store::load_all(pool))
        .await
        .map_err(|_| RepoError::Unavailable("reading the phase timed out".to_owned()))??;
    Ok(PhaseSnapshot {
        domain: state.phase,
        domain_changed_at: Some(state.changed_at),
        overrides,
    })
}

/// Re-reads the phase on every wake-up from the listener and every `poll`, publishing changes.
async fn refresh(
    pool: PgPool,
    tx: watch::Sender<PhaseSnapshot>,
    wake: Arc<Notify>,
    options: WatcherOptions,
) {
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the first tick is immediate: the snapshot was just read
    tick.tick().await;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        match read_snapshot(&pool, options.query_timeout).await {
            Ok(snapshot) => {
                if !reachable {
                    tracing::info!("phase watcher reads the phase again");
                    reachable = true;
                }
                tx.send_if_modified(|current| {
                    if *current == snapshot {
                        false
                    } else {
                        tracing::info!(
                            phase = %snapshot.domain,
                            overrides = snapshot.overrides.len(),
                            "phase changed"
                        );
                        *current = snapshot;
                        true
                    }
                });
            }
            Err(error) => {
                // once per outage: the poll would otherwise log every second
                if reachable {
                    tracing::warn!(%error, "phase watcher cannot read the phase; keeping the last known one");
                    reachable = false;
                }
            }
        }
    }
}

/// The first wait before reconnecting the listener, doubled up to [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// LISTENs on [`PHASE_CHANNEL`] and wakes [`refresh`] on every notification, reconnecting
/// whenever the connection is lost. Runs in its own task so that a `try_recv` is never
/// cancelled half-way (its cancel safety is not documented).
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    let mut healthy = true;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(PHASE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let error = match connected {
            Ok(mut listener) => {
                if !healthy {
                    tracing::info!("phase watcher listens for changes again");
                    healthy = true;
                }
                backoff = LISTEN_BACKOFF_MIN;
                // changes made while not listening were not notified
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // the connection was lost (and re-established): notifications missed
                        Ok(None) => wake.notify_one(),
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        if healthy {
            let error = mystira_postgres::map_sqlx_error("phase_state", error);
            tracing::warn!(%error, "phase watcher lost its listener; polling until it reconnects");
            healthy = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
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

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("24").is_ok());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            format_duration(Duration::from_secs(30 * 3600 + 300)),
            "1d 6h"
        );
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
    }

    #[test]
    fn conditions_serialize_with_their_code_and_sentence() {
        let c = Condition::OutboxNotEmpty {
            rows: 3,
            oldest_age: Some(Duration::from_secs(65)),
        };
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["code"], "outbox_not_empty");
        assert_eq!(v["check"], "outbox");
        assert_eq!(v["rows"], 3);
        assert_eq!(v["oldest_age_seconds"], 65);
        let message = v["message"].as_str().expect("message");
        assert!(
            message.contains("3 write(s)") && message.contains("1m 5s"),
            "{message}"
        );
    }

    #[test]
    fn a_fixed_watcher_answers_its_phase_for_every_account() {
        let w = PhaseWatcher::fixed(Phase::DualWriteCosmosRead);
        assert_eq!(w.domain_phase(), Phase::DualWriteCosmosRead);
        assert_eq!(w.phase_for(Some(Uuid::nil())), Phase::DualWriteCosmosRead);
        let rx = w.subscribe();
        drop(w);
        // the channel stays readable for subscribers
        assert_eq!(rx.borrow().domain, Phase::DualWriteCosmosRead);
    }
}
