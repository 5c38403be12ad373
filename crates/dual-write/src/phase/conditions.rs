//! What an unmet gate says: [`Condition`], with its stable code (for scripts), the check it
//! fails, a sentence for people that names the command to run, and its JSON form.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_domain::phase::Phase;
use serde::Serialize;
use uuid::Uuid;

use super::VerifyDirection;
use super::durations::{at, format_duration};
use super::gates::Check;

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
    /// `verify_after` (`left_at` + [`POSTGRES_ONLY_SETTLE`](super::POSTGRES_ONLY_SETTLE)).
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

fn direction_words(direction: VerifyDirection) -> &'static str {
    match direction {
        VerifyDirection::CosmosToPg => "Cosmos-to-PostgreSQL",
        VerifyDirection::PgToCosmos => "PostgreSQL-to-Cosmos",
    }
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

    /// The check ([`GateCheck::check`](super::GateCheck::check)) this condition is a failure of.
    pub fn check(&self) -> &'static str {
        self.check_kind().name()
    }

    pub(super) fn check_kind(&self) -> Check {
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
    pub(super) fn account(&self) -> Option<Uuid> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
