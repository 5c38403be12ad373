//! Phase control: the gates a phase change must pass, changing the phase (domain-wide or for
//! one canary account) through them, and [`PhaseWatcher`], which every running process uses
//! to know the phase within 2 seconds of a change.
//!
//! # Gates
//! A forward move must meet the gate of every step it passes (0→3 meets 0→1, 1→2 and 2→3):
//! - into `dual-write-cosmos-read` (0→1): the latest backfill run succeeded;
//! - into `dual-write-postgres-read` (1→2): a clean verify of the whole key space finished
//!   less than `max_verify_age` ago (and no verify found drift since), and the retry journal
//!   is empty (every phase-1 write reached PostgreSQL);
//! - into `postgres-only` (2→3): the outbox is empty (every PostgreSQL write reached Cosmos)
//!   and the same recent clean verify.
//!
//! A backward move needs no verify, but leaving PostgreSQL-primary (phase 2 or 3) for a
//! Cosmos-primary phase (1 or 0) while the outbox holds rows is refused: those writes exist
//! only in PostgreSQL until the relay delivers them, and the Cosmos-primary phases would read
//! Cosmos without them. `wait_drain` waits (bounded) for the relay to empty the outbox first.
//! A canary override is gated the same way, from the phase the account runs in now. The
//! journal and outbox are counted domain-wide, also for an override: conservative, since a
//! canary's writes cannot be told apart from the rest's in either table.
//!
//! `force` goes past a refusing gate; the audit row then says `forced`. The gate is evaluated
//! inside the transaction holding the phase lock (see `mystira_postgres::phase`), so two
//! operators changing the phase at once are serialized and each decision is taken on facts
//! read after the other's change committed.
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
use mystira_postgres::phase::{
    self as store, ChangeOutcome, ChangeRequest, OutboxBacklog, PhaseGate, Transition,
};
use serde::Serialize;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

pub use mystira_postgres::phase::{PHASE_CHANNEL, Phase, PhaseOverride, PhaseState};

/// The `migration.runs` job name of backfill runs.
const BACKFILL_JOB: &str = "backfill";

/// The default of [`GateConfig::max_verify_age`]: 24 hours.
pub const DEFAULT_MAX_VERIFY_AGE: Duration = Duration::from_secs(24 * 3600);

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
/// `Display` text is a sentence for people that says what to do.
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
    /// No clean verify of the whole key space is recorded.
    VerifyMissing,
    /// The latest clean verify is older than the maximum age.
    VerifyTooOld {
        finished_at: DateTime<Utc>,
        age: Duration,
        max_age: Duration,
    },
    /// A verify that finished after the latest clean one found drift.
    DriftSinceVerify {
        clean_at: DateTime<Utc>,
        drift_at: DateTime<Utc>,
    },
    /// Phase-1 writes that have not reached PostgreSQL yet.
    RetryJournalNotEmpty { rows: i64 },
    /// PostgreSQL writes that have not reached Cosmos yet.
    OutboxNotEmpty {
        rows: i64,
        oldest_age: Option<Duration>,
    },
}

impl Condition {
    /// The stable code of this condition, for JSON output and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BackfillNeverRun => "backfill_never_run",
            Self::BackfillNotCompleted { .. } => "backfill_not_completed",
            Self::VerifyMissing => "verify_missing",
            Self::VerifyTooOld { .. } => "verify_too_old",
            Self::DriftSinceVerify { .. } => "verify_drift_since_clean",
            Self::RetryJournalNotEmpty { .. } => "retry_journal_not_empty",
            Self::OutboxNotEmpty { .. } => "outbox_not_empty",
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
                    started_at.format("%Y-%m-%d %H:%M:%S UTC")
                )
            }
            Self::VerifyMissing => f.write_str(
                "No clean verify of the whole key space has been recorded: run \
                 `mystira-users verify` (without --buckets).",
            ),
            Self::VerifyTooOld { age, max_age, .. } => write!(
                f,
                "The latest clean verify finished {} ago, more than the maximum age of {}: \
                 run `mystira-users verify` again (or raise --max-verify-age).",
                format_duration(*age),
                format_duration(*max_age)
            ),
            Self::DriftSinceVerify { drift_at, .. } => write!(
                f,
                "A verify that finished at {}, after the latest clean one, found drift: \
                 repair it (`mystira-users verify --repair`) and verify again.",
                drift_at.format("%Y-%m-%d %H:%M:%S UTC")
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
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let detail = match self {
            Self::BackfillNeverRun | Self::VerifyMissing => serde_json::json!({}),
            Self::BackfillNotCompleted { status, started_at } => {
                serde_json::json!({ "status": status, "started_at": started_at })
            }
            Self::VerifyTooOld {
                finished_at,
                age,
                max_age,
            } => serde_json::json!({
                "finished_at": finished_at,
                "age_seconds": age.as_secs(),
                "max_age_seconds": max_age.as_secs(),
            }),
            Self::DriftSinceVerify { clean_at, drift_at } => {
                serde_json::json!({ "clean_at": clean_at, "drift_at": drift_at })
            }
            Self::RetryJournalNotEmpty { rows } => serde_json::json!({ "rows": rows }),
            Self::OutboxNotEmpty { rows, oldest_age } => serde_json::json!({
                "rows": rows,
                "oldest_age_seconds": oldest_age.map(|a| a.as_secs()),
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
    Verify,
    RetryJournal,
    Outbox,
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
        for step in Phase::ALL.into_iter().filter(|p| *p > from && *p <= to) {
            match step {
                Phase::CosmosOnly => {}
                Phase::DualWriteCosmosRead => add(Check::Backfill),
                Phase::DualWritePostgresRead => {
                    add(Check::Verify);
                    add(Check::RetryJournal);
                }
                Phase::PostgresOnly => {
                    add(Check::Outbox);
                    add(Check::Verify);
                }
            }
        }
    } else if from.postgres_is_primary() && !to.postgres_is_primary() {
        // the outbox's writes are only in PostgreSQL; a Cosmos-primary phase would miss them
        add(Check::Outbox);
    }
    out
}

/// Whether moving `from` to `to` requires an empty outbox (what `wait_drain` waits for).
pub fn needs_empty_outbox(from: Phase, to: Phase) -> bool {
    checks(from, to).contains(&Check::Outbox)
}

/// Every condition that moving `from` to `to` does not meet (empty: the move may happen).
/// Reads on `conn`: pass the connection of the transaction holding the phase lock to decide,
/// or any connection to report.
pub async fn unmet_conditions(
    conn: &mut PgConnection,
    from: Phase,
    to: Phase,
    config: &GateConfig,
) -> Result<Vec<Condition>, RepoError> {
    let checks = checks(from, to);
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    // the database's clock, not this machine's: the run times were written by it
    let now: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("phase_state", e))?;
    let age_of = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    let mut unmet = Vec::new();
    for check in checks {
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
            Check::Verify => {
                let facts = store::verify_facts(&mut *conn).await?;
                match facts.latest_clean {
                    None => unmet.push(Condition::VerifyMissing),
                    Some(clean_at) => {
                        let age = age_of(clean_at);
                        if age >= config.max_verify_age {
                            unmet.push(Condition::VerifyTooOld {
                                finished_at: clean_at,
                                age,
                                max_age: config.max_verify_age,
                            });
                        }
                        if let Some(drift_at) = facts.latest_drift.filter(|d| *d > clean_at) {
                            unmet.push(Condition::DriftSinceVerify { clean_at, drift_at });
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
        }
    }
    Ok(unmet)
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
        from: Phase,
        to: Phase,
        _account: Option<Uuid>,
    ) -> Result<Vec<Condition>, RepoError> {
        unmet_conditions(conn, from, to, &self.0).await
    }
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
    /// Whether a refusing gate was forced past.
    pub forced: bool,
    /// Refused: every unmet condition. Applied with `forced`: the conditions forced past.
    pub unmet: Vec<Condition>,
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
        };
        for c in &self.unmet {
            out.push_str(&format!("  - [{}] {c}\n", c.code()));
        }
        if self.result == DecisionKind::Refused {
            out.push_str("  (--force goes past the gate; the audit row then says forced)\n");
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

/// Moves the domain (`account: None`) or one canary account to `to`, through the gates.
pub async fn set_phase(
    pool: &PgPool,
    to: Phase,
    account: Option<Uuid>,
    options: &ChangeOptions,
) -> Result<Decision, PhaseError> {
    validate(options)?;
    let drain_wait = wait_for_drain(pool, account, Some(to), options).await?;
    let request = request_of(options);
    let gates = Gates(options.gates);
    let outcome = match account {
        None => store::set_phase(pool, to, request, &gates).await?,
        Some(a) => store::set_override(pool, a, to, request, &gates).await?,
    };
    Ok(decision(outcome, account, drain_wait))
}

/// Returns a canary account to the domain phase, through the gates (from the override's
/// phase to the domain's).
pub async fn clear_override(
    pool: &PgPool,
    account: Uuid,
    options: &ChangeOptions,
) -> Result<Decision, PhaseError> {
    validate(options)?;
    let drain_wait = wait_for_drain(pool, Some(account), None, options).await?;
    let outcome =
        store::clear_override(pool, account, request_of(options), &Gates(options.gates)).await?;
    Ok(decision(outcome, Some(account), drain_wait))
}

fn request_of(options: &ChangeOptions) -> ChangeRequest<'_> {
    ChangeRequest {
        actor: options.actor.trim(),
        reason: options.reason.trim(),
        force: options.force,
    }
}

fn decision(
    outcome: ChangeOutcome<Condition>,
    account: Option<Uuid>,
    drain_wait: Option<DrainWait>,
) -> Decision {
    let base = |result, from, to| Decision {
        result,
        account,
        from,
        to,
        forced: false,
        unmet: Vec::new(),
        transition: None,
        drain_wait,
    };
    match outcome {
        ChangeOutcome::Applied {
            transition,
            overridden,
        } => Decision {
            result: DecisionKind::Applied,
            account,
            from: transition.from_phase,
            to: transition.to_phase,
            forced: transition.forced,
            unmet: overridden,
            transition: Some(transition),
            drain_wait,
        },
        ChangeOutcome::Unchanged { phase } => base(DecisionKind::Unchanged, phase, phase),
        ChangeOutcome::Refused { from, to, unmet } => Decision {
            unmet,
            ..base(DecisionKind::Refused, from, to)
        },
        ChangeOutcome::NoOverride { domain_phase } => {
            base(DecisionKind::NoOverride, domain_phase, domain_phase)
        }
    }
}

/// How often waiting for the drain looks at the outbox.
const DRAIN_POLL: Duration = Duration::from_millis(200);

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
    if !needs_empty_outbox(from, to) {
        return Ok(None);
    }
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    loop {
        let drained = store::outbox_backlog(pool).await?.rows == 0;
        let now = tokio::time::Instant::now();
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

/// Everything `phase show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub domain: PhaseState,
    pub overrides: Vec<PhaseOverride>,
    /// The next forward phase, if any, and what its gate still needs (empty: open).
    pub next: Option<Phase>,
    pub next_unmet: Vec<Condition>,
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
            d.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
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
                out.push_str(&format!(
                    "  {} {} (set {} by {}: {})\n",
                    o.account_id,
                    o.phase,
                    o.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    o.changed_by,
                    o.reason
                ));
            }
        }
        match self.next {
            None => out.push_str("next: none (the last phase)\n"),
            Some(next) if self.next_unmet.is_empty() => {
                out.push_str(&format!("next: {next}: the gate is open\n"));
            }
            Some(next) => {
                out.push_str(&format!("next: {next}: the gate needs:\n"));
                for c in &self.next_unmet {
                    out.push_str(&format!("  - [{}] {c}\n", c.code()));
                }
            }
        }
        out
    }
}

/// Reads the phase, the overrides and the gate status of the next forward step.
pub async fn status(pool: &PgPool, gates: &GateConfig) -> Result<PhaseStatus, PhaseError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| PhaseError::Store(mystira_postgres::map_sqlx_error("phase_state", e)))?;
    let domain = store::current(&mut *conn).await?;
    let overrides = store::override_details(&mut *conn).await?;
    let next = Phase::ALL.into_iter().find(|p| *p > domain.phase);
    let next_unmet = match next {
        Some(next) => unmet_conditions(&mut conn, domain.phase, next, gates).await?,
        None => Vec::new(),
    };
    Ok(PhaseStatus {
        next,
        next_unmet,
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
        assert_eq!(checks(CosmosOnly, DualWriteCosmosRead), [Check::Backfill]);
        assert_eq!(
            checks(DualWriteCosmosRead, DualWritePostgresRead),
            [Check::Verify, Check::RetryJournal]
        );
        assert_eq!(
            checks(DualWritePostgresRead, PostgresOnly),
            [Check::Outbox, Check::Verify]
        );
        assert_eq!(
            checks(CosmosOnly, PostgresOnly),
            [
                Check::Backfill,
                Check::Verify,
                Check::RetryJournal,
                Check::Outbox
            ]
        );
    }

    #[test]
    fn backward_moves_only_check_the_outbox_when_leaving_postgres_primary() {
        use Phase::*;
        assert!(checks(DualWriteCosmosRead, CosmosOnly).is_empty());
        assert!(checks(PostgresOnly, DualWritePostgresRead).is_empty());
        assert_eq!(
            checks(DualWritePostgresRead, DualWriteCosmosRead),
            [Check::Outbox]
        );
        assert_eq!(checks(PostgresOnly, CosmosOnly), [Check::Outbox]);
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
