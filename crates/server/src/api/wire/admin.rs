//! The bodies of `/v1/admin`: the migration's state, its runs, the phase changes and their
//! history, the retry journal, the outbox, the quarantine and the sign-up clean-up.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How many rows a clean-up removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    pub removed: u64,
}

/// A job run (`migration.runs`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunOut {
    pub id: Uuid,
    /// `running`, `succeeded`, `failed`, `interrupted` or `abandoned`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<mystira_postgres::phase::RunSummary> for RunOut {
    fn from(r: mystira_postgres::phase::RunSummary) -> Self {
        Self {
            id: r.id,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// The migration's state, as the phase gates read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationState {
    pub retry_journal_entries: i64,
    pub retry_journal_oldest: Option<DateTime<Utc>>,
    pub outbox_rows: i64,
    pub outbox_aggregates: i64,
    pub outbox_oldest: Option<DateTime<Utc>>,
    pub latest_backfill: Option<RunOut>,
    pub latest_verify: Option<RunOut>,
    /// When the newest clean verify of the whole key space finished.
    pub latest_clean_verify: Option<DateTime<Utc>>,
    /// When the newest verify that found drift finished.
    pub latest_drift: Option<DateTime<Utc>>,
}

/// A quarantined document's entry (never the document: its values are personal data).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineOut {
    pub container: String,
    pub document_id: String,
    pub reason_code: String,
    /// What is wrong, naming fields and rules, never values.
    pub message: String,
    pub source_ts: Option<i64>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub attempts: i32,
}

impl From<mystira_postgres::bookkeeping::QuarantineEntry> for QuarantineOut {
    fn from(q: mystira_postgres::bookkeeping::QuarantineEntry) -> Self {
        Self {
            container: q.container,
            document_id: q.document_id,
            reason_code: q.reason_code,
            message: q.message,
            source_ts: q.source_ts,
            first_seen_at: q.first_seen_at,
            last_seen_at: q.last_seen_at,
            attempts: q.attempts,
        }
    }
}

/// A phase change (`PUT /v1/admin/phase`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseChange {
    /// `cosmos-only`, `dual-write-cosmos-read`, `dual-write-postgres-read`, `postgres-only`, or
    /// `0` to `3`.
    #[schema(min_length = 1, max_length = 40)]
    pub phase: String,
    /// Only this canary account (its own phase, overriding the domain's).
    pub account: Option<Uuid>,
    /// Why (recorded in the audit trail).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    /// Go past a refusing gate (the audit row says forced).
    #[serde(default)]
    pub force: bool,
    /// When the move needs an empty outbox, wait at most this long for the relay (at most 5).
    #[schema(maximum = 5)]
    pub wait_drain_seconds: Option<u64>,
    /// A domain move keeps the canary overrides it leaves on the wrong side (listed in the
    /// audit row) instead of clearing them (`phase set --keep-overrides`).
    #[serde(default)]
    pub keep_overrides: bool,
}

impl PhaseChange {
    pub fn phase(&self) -> Result<mystira_domain::phase::Phase, crate::Problem> {
        self.phase.trim().parse().map_err(|_| {
            crate::Problem::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "phase: one of cosmos-only, dual-write-cosmos-read, dual-write-postgres-read, \
                 postgres-only (or 0-3)",
            )
            .with("field", "phase")
        })
    }
}

/// A phase change's `reason` (the audit trail's): at most [`REASON_MAX`] characters (an empty
/// one is refused by the phase change itself, `invalid_body`).
pub fn check_reason(reason: &str) -> Result<(), crate::Problem> {
    mystira_domain::error::check_len("reason", reason, REASON_MAX)
        .map_err(|e| crate::api::invalid(&e))
}

/// The longest `reason` of a phase change, in characters.
pub const REASON_MAX: usize = 1_000;

/// Returning a canary account to the domain phase.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideClear {
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    #[serde(default)]
    pub force: bool,
    #[schema(maximum = 5)]
    pub wait_drain_seconds: Option<u64>,
}

/// A retry-journal entry, without the document it carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct JournalEntryOut {
    pub id: i64,
    pub container: String,
    pub document_id: String,
    pub key: Option<Uuid>,
    /// `upsert` or `delete`.
    pub op: String,
    /// `router`, or `file:<name>` for an entry moved from a local journal file.
    pub origin: String,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: i32,
    /// The failure class of the last replay, never a value.
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<mystira_postgres::journal::Waiting> for JournalEntryOut {
    fn from(w: mystira_postgres::journal::Waiting) -> Self {
        Self {
            id: w.id,
            container: w.container,
            document_id: w.document_id,
            key: w.key,
            op: w.op,
            origin: w.origin,
            enqueued_at: w.enqueued_at,
            attempts: w.attempts,
            last_error: w.last_error,
            next_attempt_at: w.next_attempt_at,
        }
    }
}

/// An aggregate waiting in the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxAggregateOut {
    pub container: String,
    pub key: Uuid,
    /// Changes waiting since its last delivery.
    pub rows: i64,
    pub oldest: DateTime<Utc>,
    pub attempts: i32,
    /// The failure class of its newest failed attempt, never a value.
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<mystira_postgres::outbox::WaitingAggregate> for OutboxAggregateOut {
    fn from(a: mystira_postgres::outbox::WaitingAggregate) -> Self {
        Self {
            container: a.container,
            key: a.key,
            rows: a.rows,
            oldest: a.oldest,
            attempts: a.attempts,
            last_error: a.last_error,
            next_attempt_at: a.next_attempt_at,
        }
    }
}

/// A job run with what it recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunRecordOut {
    pub id: Uuid,
    /// What it read (an export directory, a Cosmos account's endpoint and database).
    pub source: String,
    /// `running`, `succeeded`, `failed`, `interrupted` or `abandoned`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Its counts (verify: its `outcome` and what it compared).
    #[schema(value_type = Object)]
    pub counts: serde_json::Value,
    /// What it covered and how it was configured.
    #[schema(value_type = Object)]
    pub scope: serde_json::Value,
}

impl From<mystira_postgres::phase::RunRecord> for RunRecordOut {
    fn from(r: mystira_postgres::phase::RunRecord) -> Self {
        Self {
            id: r.id,
            source: r.source,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            counts: r.counts,
            scope: r.scope,
        }
    }
}

/// A phase change, as audited.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionOut {
    pub id: i64,
    pub from_phase: String,
    pub to_phase: String,
    pub changed_at: DateTime<Utc>,
    /// Who: an OS user, or `api:<sub>` for a change made over this API.
    pub changed_by: String,
    pub reason: String,
    /// Whether a refusing gate was forced past.
    pub forced: bool,
    /// The canary account, or null for the domain-wide phase.
    pub account_id: Option<Uuid>,
}

impl From<mystira_postgres::phase::Transition> for TransitionOut {
    fn from(t: mystira_postgres::phase::Transition) -> Self {
        Self {
            id: t.id,
            from_phase: t.from_phase.name().to_owned(),
            to_phase: t.to_phase.name().to_owned(),
            changed_at: t.changed_at,
            changed_by: t.changed_by,
            reason: t.reason,
            forced: t.forced,
            account_id: t.account_id,
        }
    }
}
