//! One view of the migration for an operator: the phase and its overrides with the gate of the
//! next move, the retry journal (the table, and this machine's local files), the outbox,
//! replication lag, the newest verify and backfill runs and the open quarantine, plus the list
//! of what needs attention now. `mystira-users status` prints it; `GET /v1/admin/status`
//! serves the same report (without local files: those belong to the machine that has them).
//!
//! Read-only, and every figure comes from one query of an index or a small table, so it is
//! cheap enough to run between every step of a drill. Ids, counts and times only: never a
//! value of a document. The figures are one [`MigrationState`] snapshot, which the service's
//! `/metrics` and `GET /v1/admin/migration` and `loadgen` read too.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_domain::phase::Phase;
use mystira_postgres::heartbeats::{self, WorkerHeartbeat};
use mystira_postgres::phase::{self as store, RunSummary, VerifyFacts};
use mystira_postgres::{journal as journal_table, leases, outbox};
use serde::Serialize;
use sqlx::PgPool;

use crate::journal::{FileDepth, FileJournal};
use crate::phase::{GateConfig, PhaseError, PhaseStatus};

/// How old the oldest journal entry or outbox row may be before it needs attention: a router
/// or relay that works empties them within seconds.
pub const BACKLOG_ATTENTION_AGE: Duration = Duration::from_secs(60);

/// How far replication may lag (since it was last caught up) before it needs attention.
pub const REPLICATION_ATTENTION_LAG: Duration = Duration::from_secs(300);

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When the report was read (PostgreSQL's clock).
    pub read_at: DateTime<Utc>,
    /// The phase, its overrides and the gate of the next forward move (as `phase show`).
    pub phase: PhaseStatus,
    pub journal: JournalStatus,
    pub outbox: outbox::Depth,
    /// Per container: seconds since its least recently caught-up replication range caught up,
    /// `null` while a range never has. Empty when replication never ran.
    pub replication_lag_seconds: BTreeMap<String, Option<f64>>,
    /// Every `replicate` and `relay` process heard of in the last day, with its last beat.
    pub workers: Vec<WorkerHeartbeat>,
    pub verify: VerifyStatus,
    pub latest_backfill: Option<RunSummary>,
    /// Open quarantine entries by container and reason.
    pub quarantine: BTreeMap<String, BTreeMap<String, i64>>,
    /// What needs an operator now, most important first; empty when all is well.
    pub attention: Vec<Attention>,
}

/// The retry journal of phase 1: the table, and the local files of this machine.
#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    pub table: journal_table::Depth,
    /// `None` when no journal directory was given (the service's view).
    pub files: Option<LocalFiles>,
}

/// This machine's local journal files.
#[derive(Debug, Clone, Serialize)]
pub struct LocalFiles {
    pub dir: String,
    #[serde(flatten)]
    pub depth: FileDepth,
}

/// The newest verify runs.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyStatus {
    pub latest: Option<RunSummary>,
    #[serde(flatten)]
    pub facts: VerifyFacts,
}

/// One thing that needs an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attention {
    /// Stable, for scripts: `journal_backlog`, `journal_files`, `journal_files_damaged`,
    /// `outbox_backlog`, `replication_lag`, `replication_never_caught_up`, `no_replicator`,
    /// `worker_silent`, `worker_retrying`, `verify_drift`.
    /// Open quarantine is reported, not listed here: it is the sign-off sheet's business
    /// (`report`), not an operational fault.
    pub code: &'static str,
    pub message: String,
}

impl StatusReport {
    /// Several lines for people.
    pub fn summary(&self) -> String {
        let mut out = self.phase.summary();
        let j = &self.journal.table;
        out.push_str(&format!(
            "retry journal table: {} entr{}{}\n",
            j.entries,
            if j.entries == 1 { "y" } else { "ies" },
            since(j.oldest)
        ));
        match &self.journal.files {
            Some(f) => out.push_str(&format!(
                "local journal files ({}): {} record(s) in {} file(s), {} damaged\n",
                f.dir, f.depth.records, f.depth.files, f.depth.damaged_files
            )),
            None => out.push_str("local journal files: not looked at\n"),
        }
        out.push_str(&format!(
            "outbox: {} row(s) for {} aggregate(s){}\n",
            self.outbox.rows,
            self.outbox.aggregates,
            since(self.outbox.oldest)
        ));
        if self.replication_lag_seconds.is_empty() {
            out.push_str("replication: never ran\n");
        }
        for (container, lag) in &self.replication_lag_seconds {
            match lag {
                Some(s) => out.push_str(&format!(
                    "replication {container}: caught up {s:.0} s ago\n"
                )),
                None => out.push_str(&format!("replication {container}: not caught up yet\n")),
            }
        }
        if self.workers.is_empty() {
            out.push_str("workers: none heard of in the last day\n");
        }
        for w in &self.workers {
            out.push_str(&format!(
                "worker {} ({}): {}, last beat {:.0} s ago{}\n",
                w.worker,
                w.mode.as_deref().unwrap_or(&w.kind),
                w.state,
                w.age_seconds,
                w.last_error_class
                    .as_deref()
                    .map_or(String::new(), |c| format!(", last error {c}"))
            ));
        }
        let v = &self.verify;
        out.push_str(&format!(
            "verify: latest {}; latest clean {}; latest drift {}\n",
            v.latest.as_ref().map_or("none".to_owned(), |r| format!(
                "{} ({})",
                r.status,
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            )),
            at(v.facts.latest_clean),
            at(v.facts.latest_drift),
        ));
        out.push_str(&format!(
            "backfill: {}\n",
            self.latest_backfill
                .as_ref()
                .map_or("never ran".to_owned(), |r| format!(
                    "{} ({})",
                    r.status,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
                ))
        ));
        let open: i64 = self.quarantine.values().flat_map(|r| r.values()).sum();
        out.push_str(&format!("quarantine: {open} open\n"));
        if self.attention.is_empty() {
            out.push_str("attention: nothing\n");
        } else {
            out.push_str("attention:\n");
            for a in &self.attention {
                out.push_str(&format!("  - [{}] {}\n", a.code, a.message));
            }
        }
        out
    }
}

fn at(t: Option<DateTime<Utc>>) -> String {
    t.map_or("never".to_owned(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

fn since(oldest: Option<DateTime<Utc>>) -> String {
    oldest.map_or(String::new(), |t| {
        format!(", oldest {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
    })
}

/// Errors reading the status (PostgreSQL unreachable, a journal directory unreadable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    #[error(transparent)]
    Phase(#[from] PhaseError),
    #[error("postgresql: {0}")]
    Store(#[from] mystira_domain::RepoError),
    #[error(transparent)]
    Files(#[from] crate::journal::FileJournalError),
}

/// Reads the status. `files`: this machine's journal files, when the caller has them.
pub async fn collect(
    pool: &PgPool,
    gates: &GateConfig,
    files: Option<&FileJournal>,
) -> Result<StatusReport, StatusError> {
    let phase = crate::phase::status(pool, gates).await?;
    let state = MigrationState::read(pool).await?;
    let files = match files {
        Some(f) => Some(LocalFiles {
            dir: f.dir().display().to_string(),
            depth: f.pending()?,
        }),
        None => None,
    };
    let mut report = StatusReport {
        read_at: state.read_at,
        journal: JournalStatus {
            table: state.journal,
            files,
        },
        outbox: state.outbox,
        replication_lag_seconds: state.replication_lag_seconds.into_iter().collect(),
        workers: state.workers,
        verify: VerifyStatus {
            latest: state.latest_verify,
            facts: state.verify,
        },
        latest_backfill: state.latest_backfill,
        quarantine: state.quarantine,
        attention: Vec::new(),
        phase,
    };
    report.attention = attention(&report);
    Ok(report)
}

/// One snapshot of the migration's shared state in PostgreSQL: the one read that `status`
/// and `GET /v1/admin/status` ([`collect`]), `GET /v1/admin/migration` and `/metrics` (the
/// service) and `loadgen`'s drain report from. The phase is not in it: the service reports its
/// phase watcher's, and [`collect`] the phase with its gates.
///
/// Read in one transaction, so every age is measured from the same [`read_at`](Self::read_at)
/// by the server's clock (not this host's), each figure by its own function of
/// `mystira_postgres`.
#[derive(Debug, Clone)]
pub struct MigrationState {
    /// When it was read (PostgreSQL's clock: the transaction's start).
    pub read_at: DateTime<Utc>,
    /// The retry journal table of phase 1.
    pub journal: journal_table::Depth,
    pub outbox: outbox::Depth,
    /// Per container, in container order: seconds since its least recently caught-up
    /// replication range caught up, `None` while a range never has. Empty when replication
    /// never ran.
    pub replication_lag_seconds: Vec<(String, Option<f64>)>,
    /// Per container probed at least once: how many of its replication ranges' last change
    /// feed probe disagreed.
    pub feed_disagreeing_ranges: Vec<(String, i64)>,
    /// Every `replicate` and `relay` process heard of in the last day, with its last beat.
    pub workers: Vec<WorkerHeartbeat>,
    /// Per kind of worker (every kind): seconds since the newest beat (`None`: none in the
    /// last day) and how many live ones wait out a store outage.
    pub worker_beats: Vec<(heartbeats::WorkerKind, Option<f64>, i64)>,
    /// The newest clean and drifted verify runs.
    pub verify: VerifyFacts,
    pub latest_verify: Option<RunSummary>,
    pub latest_backfill: Option<RunSummary>,
    /// The backfill job's work ranges.
    pub backfill_ranges: RangeProgress,
    /// Open quarantine entries by container and reason.
    pub quarantine: BTreeMap<String, BTreeMap<String, i64>>,
}

/// How far a job's work ranges are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeProgress {
    pub total: i64,
    pub done: i64,
}

impl MigrationState {
    /// Reads the snapshot. Every figure comes from an index or a small table.
    pub async fn read(pool: &PgPool) -> Result<Self, mystira_domain::RepoError> {
        let map = |e| mystira_postgres::map_sqlx_error("status", e);
        let mut tx = pool.begin().await.map_err(map)?;
        let read_at = mystira_postgres::server_now(&mut *tx).await.map_err(map)?;
        let journal = journal_table::depth(&mut *tx).await?;
        let outbox = outbox::depth(&mut *tx).await?;
        let replication_lag_seconds = leases::caught_up_lag(
            &mut *tx,
            &[crate::replicate::JOB, crate::replicate::WATERMARK_JOB],
        )
        .await?;
        let feed_disagreeing_ranges =
            mystira_postgres::feed_checks::disagreeing_ranges(&mut *tx, crate::replicate::JOB)
                .await?;
        let workers = heartbeats::list(&mut *tx).await?;
        let worker_beats = heartbeats::beat_ages(&mut *tx).await?;
        let verify = store::verify_facts(&mut *tx).await?;
        let latest_verify = store::latest_run(&mut *tx, "verify").await?;
        let latest_backfill = store::latest_run(&mut *tx, "backfill").await?;
        let (total, done) = leases::job_progress(&mut *tx, "backfill").await?;
        let mut quarantine: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (container, reason, n) in
            mystira_postgres::bookkeeping::open_quarantine_counts(&mut *tx).await?
        {
            quarantine.entry(container).or_default().insert(reason, n);
        }
        tx.commit().await.map_err(map)?;
        Ok(Self {
            read_at,
            journal,
            outbox,
            replication_lag_seconds,
            feed_disagreeing_ranges,
            workers,
            worker_beats,
            verify,
            latest_verify,
            latest_backfill,
            backfill_ranges: RangeProgress { total, done },
            quarantine,
        })
    }
}

/// What needs an operator, from the figures of a report.
pub fn attention(r: &StatusReport) -> Vec<Attention> {
    let mut out = Vec::new();
    let old = |t: Option<DateTime<Utc>>| {
        t.is_some_and(|t| (r.read_at - t).to_std().unwrap_or_default() > BACKLOG_ATTENTION_AGE)
    };
    let domain = r.phase.domain.phase;
    if old(r.journal.table.oldest) {
        out.push(Attention {
            code: "journal_backlog",
            message: format!(
                "{} retry journal entries wait, the oldest for more than {} s: is a router's \
                 background work or `journal replay` running? (`journal status`)",
                r.journal.table.entries,
                BACKLOG_ATTENTION_AGE.as_secs()
            ),
        });
    }
    if let Some(f) = &r.journal.files {
        if f.depth.damaged_files > 0 {
            out.push(Attention {
                code: "journal_files_damaged",
                message: format!(
                    "{} local journal file(s) in {} kept as damaged: their readable records \
                     were replayed; look at them (docs/dual-write.md)",
                    f.depth.damaged_files, f.dir
                ),
            });
        }
        if f.depth.records > 0 {
            out.push(Attention {
                code: "journal_files",
                message: format!(
                    "{} record(s) wait in local journal files in {}: run `journal replay` on \
                     this machine once PostgreSQL is reachable",
                    f.depth.records, f.dir
                ),
            });
        }
    }
    if old(r.outbox.oldest) {
        out.push(Attention {
            code: "outbox_backlog",
            message: format!(
                "{} outbox rows wait, the oldest for more than {} s: is a relay running, and \
                 is Cosmos reachable? (`relay --drain`)",
                r.outbox.rows,
                BACKLOG_ATTENTION_AGE.as_secs()
            ),
        });
    }
    // the replicator matters while Cosmos still takes writes the router may not see
    if matches!(
        domain,
        Phase::DualWriteCosmosRead | Phase::DualWritePostgresRead
    ) {
        let replicating = r.workers.iter().any(|w| {
            w.kind == heartbeats::WorkerKind::Replicate.as_str()
                && w.is_live(heartbeats::STALE_AFTER)
        });
        if !replicating {
            out.push(Attention {
                code: "no_replicator",
                message: format!(
                    "no `replicate` process has beaten in the last {} s; phase {} needs one \
                     for writes that reach Cosmos without the router",
                    heartbeats::STALE_AFTER.as_secs(),
                    domain
                ),
            });
        }
        for (container, lag) in &r.replication_lag_seconds {
            match lag {
                None => out.push(Attention {
                    code: "replication_never_caught_up",
                    message: format!(
                        "replication of {container} has a range that never caught up: is \
                         `replicate` running?"
                    ),
                }),
                Some(s) if *s > REPLICATION_ATTENTION_LAG.as_secs_f64() => out.push(Attention {
                    code: "replication_lag",
                    message: format!(
                        "replication of {container} last caught up {s:.0} s ago: is \
                         `replicate` running?"
                    ),
                }),
                Some(_) => {}
            }
        }
    }
    for w in &r.workers {
        let stopped = w.state == heartbeats::WorkerState::Stopped.as_str();
        // a killed worker's heartbeat stays behind (a restarted process beats under a new
        // name); once a live worker of its kind has taken over, its work is being done (the
        // leases are shared, as the replicator gate and the alerts count them: per kind), so
        // it is listed under `workers` but needs no attention
        let replaced = r
            .workers
            .iter()
            .any(|other| other.kind == w.kind && other.is_live(heartbeats::STALE_AFTER));
        if !stopped && !replaced && !w.is_live(heartbeats::STALE_AFTER) {
            out.push(Attention {
                code: "worker_silent",
                message: format!(
                    "{} has not beaten for {:.0} s without saying it stopped: it died or \
                     hangs; restart it (its leases are taken over once they expire)",
                    w.worker, w.age_seconds
                ),
            });
        } else if w.state == heartbeats::WorkerState::Retrying.as_str() {
            out.push(Attention {
                code: "worker_retrying",
                message: format!(
                    "{} is waiting out a store outage ({}) since {}",
                    w.worker,
                    w.last_error_class.as_deref().unwrap_or("unknown"),
                    at(w.retrying_since)
                ),
            });
        }
    }
    if let (Some(drift), clean) = (r.verify.facts.latest_drift, r.verify.facts.latest_clean)
        && clean.is_none_or(|c| drift > c)
    {
        out.push(Attention {
            code: "verify_drift",
            message: "the newest verify found drift and no clean verify came after it: \
                      `verify --repair`, then verify again"
                .to_owned(),
        });
    }
    out
}
