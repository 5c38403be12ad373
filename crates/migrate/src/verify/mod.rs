//! Verification: does PostgreSQL hold exactly what the source (export files or live Cosmos)
//! holds, per entity? And repair of what it does not (see [`repair`]).
//!
//! # How it compares (data-diff style, streaming, bounded memory)
//! The key space is split into 256 buckets by the first byte of the *document* key (every
//! row is bucketed by the document it came from, so one document's rows share a bucket).
//!
//! 1. **Source pass.** Every source document is read once, page by page, mapped through the
//!    backfill's own mapping ([`mystira_copy::mapping::map_document`]) and checked against the
//!    quarantine; each row it should have produced is written as canonical text
//!    ([`canonical`]), hashed (md5), and added to its (entity, bucket) aggregate: a count and
//!    the sums of the hash halves. 6 × 256 aggregates: nothing else is kept.
//! 2. **PostgreSQL aggregates.** One query per table computes the same aggregates inside
//!    PostgreSQL from the same column list (the canonical text is built by SQL that agrees
//!    byte for byte with the Rust side; each column's text is computed once per row, see
//!    [`canonical::aggregate_sql`]). The six queries run at once, each on its own connection,
//!    *while* the source pass runs: the two sides are independent until they are compared.
//! 3. **Descent.** Only (entity, bucket) pairs whose aggregates differ are examined: the
//!    source is read again keeping just the documents of those buckets (at most
//!    `max_buckets_per_pass` buckets per pass, which bounds memory), PostgreSQL returns those
//!    buckets' (key, hash) through a key-range predicate its indexes serve, and the
//!    differences are classified. Only rows whose hashes differ have their values fetched,
//!    for a field-level diff.
//! 4. **Recheck** (live source only). A live source is written while it is read: a document
//!    written between the descent's read of the source and its read of PostgreSQL looks like
//!    drift. Each document the descent found differing is read again from both sides, a few
//!    rounds, and only what still differs is reported ([`recheck`]; a document that changed at
//!    every round is [`DriftKind::Changing`]).
//!
//! # Parallelism, and why the report does not depend on it
//! A clean verification is the two aggregate passes, run side by side (`tokio::try_join!`):
//! PostgreSQL's six queries on separate connections, and the source pass. The source pass is
//! itself a pipeline ([`read::doc_pages`]): the next page is read (and parsed) while up to
//! [`read::PAGES_IN_FLIGHT`] earlier pages are mapped, turned into rows and hashed on tokio's
//! blocking threads, with their quarantine and account look-ups in between; what a pass does
//! not need of a document (its raw JSON, its rows' values) is dropped there too. Pages are
//! handed over **in source order**, so everything that follows (the aggregates, the duplicate
//! candidates, the items and their order) is exactly what a one-page-at-a-time read gives;
//! memory stays bounded by the pages in flight. The descent, the duplicates' second read and
//! the round trip read the source through the same pipeline. Nothing is compared row by row
//! where the aggregates agree.
//!
//! # What is drift
//! [`DriftKind`]: a row missing in PostgreSQL, an extra row, a changed row (with the names of
//! the fields that differ), a stale copy (PostgreSQL's `_ts`/`_etag` of the document is older
//! than the source's: the document changed in the source after the copy; or the document's
//! newest version is in the quarantine while PostgreSQL holds an older copy of its key,
//! reason [`NEWER_VERSION_QUARANTINED`]), a copy newer than the source (`ahead`: usually an old
//! export), a document that cannot be mapped and is not in quarantine, a superseded document
//! nothing records (`superseded_not_recorded`), and with `round_trip` a field the encoders
//! write back differently ([`round_trip`]); towards Cosmos (`pg-to-cosmos`), also an
//! app-written property no row holds that the document no longer holds as the last copy
//! recorded it (a `changed` item with reason [`remainder::LOST_REASON`], see [`remainder`]).
//! A quarantined document is reported as such and is
//! not drift: it is accounted for, in `migration.quarantine`; nor is a document superseded by
//! a newer one of its key that the quarantine records (`superseded_duplicate`, its own class).
//! Values are only reported with `show_values` (they are personal data); field names always
//! are.
//!
//! # Two documents of one key, one id in two documents
//! Source documents are grouped by key and only the winner by the bulk writer's rule is
//! compared with PostgreSQL (see [`duplicates`]). Embedded rows are keyed by their owner, not
//! by their embedded id (a subscription by its account, a badge by profile and badge
//! configuration), and a row whose id is a derived key counts as carrying the document's id
//! when its `cosmos_id` maps to that id and its document has the writer's
//! `embedded_id_collision` note ([`tables`]).
//!
//! # Splitting the work
//! `first_bucket..=last_bucket` restricts a run to a slice of the key space: workers can each
//! take a slice (each reads the whole source but keeps only its slice), and a slice that was
//! interrupted is simply run again (verification writes nothing but its run record). The
//! reports of the slices add up (counts are per bucket). Documents whose key is unknown (lines
//! that are not documents) belong to the slice holding bucket 0.
//!
//! # Known limits
//! `completed_scenarios.completed_at` is not compared (Cosmos has no completion time; the copy
//! keeps the first derived one). A document id twice in the source (a source read twice) is
//! counted once, but the field-level comparison of its rows takes the copy read last.
//! Repair cannot re-copy a document that has no `id` (it is named by its position in the
//! source, which a repair pass does not reproduce).

pub mod canonical;
mod duplicates;
mod read;
mod recheck;
pub mod remainder;
pub mod repair;
mod round_trip;
pub mod tables;
pub mod towards_cosmos;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use mystira_domain::RepoError;
use mystira_postgres::bookkeeping;
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use canonical::Aggregate;
use futures::TryStreamExt as _;
use mystira_copy::CONTAINERS;
use mystira_copy::source::{DocumentSource, SourceError};
use read::{DocState, Keep, ReadDoc, Wanted};
pub use recheck::{CHANGING_REASON, DescentHook, RecheckSummary};
pub use repair::{RepairOptions, RepairReport, RepairRound, repair};
pub use tables::Entity;

/// The `migration.runs` job name of verification runs.
pub const JOB: &str = "verify";

/// How verification runs.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOptions {
    /// Report values (source and PostgreSQL) of differing fields. Personal data: off by default.
    pub show_values: bool,
    /// Documents per source page.
    pub page_size: usize,
    /// The slice of the key space to verify (buckets = first byte of the document key).
    pub first_bucket: u8,
    pub last_bucket: u8,
    /// At most this many differing buckets are held in memory per descent pass.
    pub max_buckets_per_pass: usize,
    /// Also encode every PostgreSQL aggregate back into the app's document shape and compare
    /// it field by field with its source document (see [`round_trip`]).
    #[serde(default)]
    pub round_trip: bool,
    /// Which way this run compares, recorded in its run's `scope` (the phase gates tell the
    /// directions apart by it). [`towards_cosmos`] sets `pg-to-cosmos` itself.
    #[serde(default)]
    pub direction: mystira_postgres::phase::VerifyDirection,
    /// Against a live source, how many times a document found differing is read again (from
    /// the source and from PostgreSQL) before it is reported (see [`recheck`]); 0 disables.
    pub recheck_rounds: u32,
    /// The pause before each recheck round after the first, in milliseconds.
    pub recheck_pause_ms: u64,
    /// At most this many documents are rechecked; the drift of any further ones is reported
    /// as the descent found it (and counted in [`RecheckSummary::not_rechecked`]).
    pub recheck_max_documents: usize,
    /// Test seam, unset in production: awaited after each descent pass has read the source and
    /// before PostgreSQL's side of it is read.
    #[serde(skip)]
    pub after_descent_read: DescentHook,
    /// Test seam, unset in production: awaited before each recheck round.
    #[serde(skip)]
    pub before_recheck_round: DescentHook,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            show_values: false,
            page_size: 1000,
            first_bucket: 0,
            last_bucket: 255,
            max_buckets_per_pass: 64,
            round_trip: false,
            direction: mystira_postgres::phase::VerifyDirection::CosmosToPg,
            recheck_rounds: 3,
            recheck_pause_ms: 200,
            recheck_max_documents: 1000,
            after_descent_read: DescentHook::default(),
            before_recheck_round: DescentHook::default(),
        }
    }
}

/// The overall result; the CLI maps it to its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Clean,
    Drift,
    CouldNotVerify,
}

impl Outcome {
    /// 0 clean, 1 drift found, 2 could not verify.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Clean => 0,
            Self::Drift => 1,
            Self::CouldNotVerify => 2,
        }
    }

    pub fn of(result: &Result<VerifyReport, VerifyError>) -> Self {
        result.as_ref().map_or(Self::CouldNotVerify, |r| r.outcome)
    }
}

/// What kind of difference a [`DriftItem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// In the source, not in PostgreSQL.
    Missing,
    /// In PostgreSQL, not in the source.
    Extra,
    /// In both, with different values (PostgreSQL was changed, or the copy went wrong).
    Changed,
    /// PostgreSQL's copy is older than the source document: it changed after the copy.
    Stale,
    /// PostgreSQL's copy is newer than the source document (an old export?).
    Ahead,
    /// Not migrated on purpose: in `migration.quarantine`. Not drift.
    Quarantined,
    /// Cannot be mapped, and not in quarantine: the backfill has not seen this version.
    Unmigrated,
    /// Another source document of the same key is the newer one and owns the row; this one is
    /// in `migration.quarantine` (`superseded_duplicate`). Not drift, and not clean either: its
    /// own class, reported with the document's id.
    SupersededDuplicate,
    /// Like [`Self::SupersededDuplicate`], but the losing document is not in the quarantine:
    /// nothing records it.
    SupersededNotRecorded,
    /// The document encoded back from PostgreSQL differs from the source document at a field
    /// path that no note and no documented normalisation excuses (`verify --round-trip`).
    RoundTrip,
    /// Against a live source: the document still differed at every recheck and changed between
    /// every two of them (it is being written). Drift: a gate cannot call it equal; a later run
    /// usually finds it settled (see [`recheck`]).
    Changing,
}

impl DriftKind {
    pub fn is_drift(self) -> bool {
        !matches!(self, Self::Quarantined | Self::SupersededDuplicate)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Changed => "changed",
            Self::Stale => "stale",
            Self::Ahead => "ahead",
            Self::Quarantined => "quarantined",
            Self::Unmigrated => "unmigrated",
            Self::SupersededDuplicate => "superseded_duplicate",
            Self::SupersededNotRecorded => "superseded_not_recorded",
            Self::RoundTrip => "round_trip",
            Self::Changing => "changing",
        }
    }
}

/// A field's values on both sides (only with `show_values`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldValues {
    pub field: String,
    pub source: Option<String>,
    pub postgres: Option<String>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftItem {
    pub entity: Entity,
    pub kind: DriftKind,
    /// The row's key (`id`), when known.
    pub key: Option<String>,
    /// The Cosmos id of the document the row belongs to.
    pub cosmos_id: Option<String>,
    /// The fields that differ (changed, stale, ahead).
    pub fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<FieldValues>>,
    /// The quarantine reason or the mapping's rejection code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the source has the row's document (for extra rows: a row the document no
    /// longer has, rather than a document the source no longer has).
    pub source_has_document: bool,
}

/// Per-entity counts. `source` = rows the source's mapped, not quarantined documents imply;
/// `quarantined` and `unmigrated` count documents, on their container's document entity
/// (`accounts`, `user_profiles`, `pending_signups`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntityCounts {
    pub source: u64,
    pub postgres: u64,
    pub matched: u64,
    pub missing: u64,
    pub extra: u64,
    pub changed: u64,
    pub stale: u64,
    pub ahead: u64,
    pub quarantined: u64,
    pub unmigrated: u64,
    /// Source documents another document of their key supersedes, in the quarantine.
    pub superseded: u64,
    /// ... and not in the quarantine (drift).
    pub superseded_not_recorded: u64,
    /// Field paths whose round trip differs (only with `round_trip`).
    pub round_trip: u64,
    /// Rows of documents still being written at every recheck (live source).
    pub changing: u64,
}

/// The result of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The `migration.runs` row, when the run was recorded ([`run_verify`]).
    pub run_id: Option<Uuid>,
    pub source: String,
    pub outcome: Outcome,
    pub first_bucket: u8,
    pub last_bucket: u8,
    pub entities: BTreeMap<Entity, EntityCounts>,
    pub items: Vec<DriftItem>,
    /// (entity, bucket) pairs whose aggregates differed and were descended into.
    pub differing_buckets: u64,
    /// Times the source was read (1 + descent passes).
    pub source_passes: u32,
    /// What the rechecks of a live source found (all zero for export files).
    pub recheck: RecheckSummary,
    pub elapsed_seconds: f64,
}

impl VerifyReport {
    /// The drift items (everything but quarantined documents).
    pub fn drift(&self) -> impl Iterator<Item = &DriftItem> {
        self.items.iter().filter(|i| i.kind.is_drift())
    }

    pub fn drift_count(&self) -> usize {
        self.drift().count()
    }

    /// What is recorded in `migration.runs.counts`.
    pub fn counts_json(&self) -> serde_json::Value {
        serde_json::json!({
            "outcome": self.outcome,
            "entities": self.entities,
            "drift": self.drift_count(),
            "quarantined": self.items.iter().filter(|i| i.kind == DriftKind::Quarantined).count(),
            "superseded": self.items.iter().filter(|i| i.kind == DriftKind::SupersededDuplicate).count(),
            "differing_buckets": self.differing_buckets,
            "source_passes": self.source_passes,
            "recheck": self.recheck,
            "elapsed_seconds": self.elapsed_seconds,
        })
    }

    /// A human summary: the per-entity table and up to `max_items` drift items.
    pub fn summary(&self, max_items: usize) -> String {
        let mut out = String::new();
        let verdict = match self.outcome {
            Outcome::Clean => "CLEAN".to_owned(),
            Outcome::Drift => format!("DRIFT ({} items)", self.drift_count()),
            Outcome::CouldNotVerify => "COULD NOT VERIFY".to_owned(),
        };
        let _ = writeln!(
            out,
            "verify {}: {verdict} in {:.2} s",
            self.source, self.elapsed_seconds
        );
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>6} {:>6} {:>12} {:>11} {:>11} {:>11}",
            "entity",
            "source",
            "postgres",
            "matched",
            "missing",
            "extra",
            "changed",
            "stale",
            "ahead",
            "quarantined",
            "unmigrated",
            "superseded",
            "round_trip"
        );
        for (entity, c) in &self.entities {
            let _ = writeln!(
                out,
                "{:<20} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>6} {:>6} {:>12} {:>11} {:>11} {:>11}",
                entity.table(),
                c.source,
                c.postgres,
                c.matched,
                c.missing,
                c.extra,
                c.changed,
                c.stale,
                c.ahead,
                c.quarantined,
                c.unmigrated,
                c.superseded + c.superseded_not_recorded,
                c.round_trip
            );
        }
        if self.recheck.documents > 0 || self.recheck.not_rechecked > 0 {
            let r = &self.recheck;
            let _ = writeln!(
                out,
                "recheck: {} documents in {} rounds, {} items cleared ({} documents), {} documents still changing, {} not rechecked (over the limit)",
                r.documents,
                r.rounds,
                r.cleared_items,
                r.cleared_documents,
                r.changing_documents,
                r.not_rechecked
            );
        }
        let drift: Vec<&DriftItem> = self.drift().collect();
        for item in drift.iter().take(max_items) {
            let _ = write!(
                out,
                "  {:<10} {:<20} key={} cosmos_id={}",
                item.kind.label(),
                item.entity.table(),
                item.key.as_deref().unwrap_or("-"),
                item.cosmos_id.as_deref().unwrap_or("-"),
            );
            if !item.fields.is_empty() {
                let _ = write!(out, " fields={}", item.fields.join(","));
            }
            if let Some(reason) = &item.reason {
                let _ = write!(out, " reason={reason}");
            }
            let _ = writeln!(out);
            for v in item.values.iter().flatten() {
                let show = |s: &Option<String>| {
                    s.as_deref().map_or("null".to_owned(), |s| format!("{s:?}"))
                };
                let _ = writeln!(
                    out,
                    "      {}: source {} / postgres {}",
                    v.field,
                    show(&v.source),
                    show(&v.postgres)
                );
            }
        }
        if drift.len() > max_items {
            let _ = writeln!(
                out,
                "  ... and {} more (use --json for all)",
                drift.len() - max_items
            );
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("postgresql: {0}")]
    Store(#[from] RepoError),
    #[error("invalid verify options: {0}")]
    Options(&'static str),
}

fn sql(e: sqlx::Error) -> VerifyError {
    VerifyError::Store(mystira_postgres::map_sqlx_error("verify", e))
}

/// Verifies and records the run in `migration.runs` (job `verify`; `counts` holds the
/// outcome and per-entity counts, `scope` the options).
pub async fn run_verify(
    pool: &PgPool,
    source: &dyn DocumentSource,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let scope = serde_json::to_value(opts).unwrap_or_default();
    let run_id = bookkeeping::start_run(pool, JOB, &source.describe(), &scope).await?;
    let result = verify(pool, source, opts).await;
    match &result {
        Ok(report) => {
            let status = if report.outcome == Outcome::Clean {
                "succeeded"
            } else {
                "failed"
            };
            bookkeeping::finish_run(pool, run_id, status, &report.counts_json()).await?;
        }
        Err(e) => {
            let counts =
                serde_json::json!({ "outcome": Outcome::CouldNotVerify, "error": e.to_string() });
            bookkeeping::finish_run(pool, run_id, "interrupted", &counts).await?;
        }
    }
    result.map(|mut r| {
        r.run_id = Some(run_id);
        r
    })
}

/// Verifies without recording a run.
pub async fn verify(
    pool: &PgPool,
    source: &dyn DocumentSource,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    if opts.first_bucket > opts.last_bucket {
        return Err(VerifyError::Options("first_bucket is after last_bucket"));
    }
    let started = Instant::now();
    let mut v = Verifier {
        pool,
        source,
        opts,
        counts: Entity::ALL
            .iter()
            .map(|e| (*e, EntityCounts::default()))
            .collect(),
        items: Vec::new(),
        passes: 0,
        losers: HashSet::new(),
        item_docs: Vec::new(),
        recheck: RecheckSummary::default(),
    };
    // The two sides are independent: PostgreSQL aggregates its tables (one query per table,
    // all at once, on separate connections) while the source is read and hashed.
    let source_side = async {
        let started = Instant::now();
        let (mut source_aggs, candidates) = v.source_pass().await?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            candidates = candidates.len(),
            "verify: source pass done"
        );
        if !candidates.is_empty() {
            v.resolve_duplicates(&candidates, &mut source_aggs).await?;
        }
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "verify: source aggregates done"
        );
        Ok::<_, VerifyError>(source_aggs)
    };
    let pg_side = futures::future::try_join_all(
        Entity::ALL.map(|entity| pg_aggregates(pool, entity, opts.first_bucket, opts.last_bucket)),
    );
    let (source_aggs, mut pg_aggs) = tokio::try_join!(source_side, pg_side)?;
    let mut differing: Vec<(Entity, u8)> = Vec::new();
    for (entity, pg) in Entity::ALL.into_iter().zip(pg_aggs.drain(..)) {
        let counts = v.counts.entry(entity).or_default();
        for b in opts.first_bucket..=opts.last_bucket {
            let src = source_aggs.get(&(entity, b)).copied().unwrap_or_default();
            let dst = pg.get(&b).copied().unwrap_or_default();
            counts.source += src.count;
            counts.postgres += dst.count;
            if src == dst {
                counts.matched += src.count;
            } else {
                differing.push((entity, b));
            }
        }
    }
    let mut buckets: Vec<u8> = differing.iter().map(|(_, b)| *b).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let differing_set: HashSet<(Entity, u8)> = differing.iter().copied().collect();
    for chunk in buckets.chunks(opts.max_buckets_per_pass.max(1)) {
        v.descend(chunk, &differing_set).await?;
    }
    // a live source may have been written between its read and PostgreSQL's
    v.recheck().await?;
    if opts.round_trip {
        v.round_trip().await?;
    }
    // what no row holds: the app's properties the last copy recorded (see [`remainder`])
    if opts.direction == mystira_postgres::phase::VerifyDirection::PgToCosmos {
        v.remainder().await?;
    }

    let Verifier {
        mut counts,
        mut items,
        passes,
        recheck,
        ..
    } = v;
    for item in &items {
        let c = counts.entry(item.entity).or_default();
        match item.kind {
            DriftKind::Missing => c.missing += 1,
            DriftKind::Extra => c.extra += 1,
            DriftKind::Changed => c.changed += 1,
            DriftKind::Stale => c.stale += 1,
            DriftKind::Ahead => c.ahead += 1,
            DriftKind::Unmigrated => c.unmigrated += 1,
            DriftKind::SupersededDuplicate => c.superseded += 1,
            DriftKind::SupersededNotRecorded => c.superseded_not_recorded += 1,
            DriftKind::RoundTrip => c.round_trip += 1,
            DriftKind::Changing => c.changing += 1,
            // counted per row while reading
            DriftKind::Quarantined => {}
        }
    }
    items.sort_by(|a, b| {
        (a.kind, a.entity, &a.key, &a.cosmos_id).cmp(&(b.kind, b.entity, &b.key, &b.cosmos_id))
    });
    let outcome = if items.iter().any(|i| i.kind.is_drift()) {
        Outcome::Drift
    } else {
        Outcome::Clean
    };
    Ok(VerifyReport {
        run_id: None,
        source: source.describe(),
        outcome,
        first_bucket: opts.first_bucket,
        last_bucket: opts.last_bucket,
        entities: counts,
        items,
        differing_buckets: differing.len() as u64,
        source_passes: passes,
        recheck,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// A source row kept during descent.
struct KeptRow {
    document_id: String,
    document_key: Uuid,
    values: Vec<Option<String>>,
    hash: String,
}

/// A source document kept during descent (to classify PostgreSQL's rows of it): what became
/// of it ([`DocState`] without the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptDoc {
    Mapped,
    /// In the quarantine: PostgreSQL's rows of its key are an older copy (of it, or of a
    /// document it superseded), which the app would read instead of the newest version.
    Quarantined,
    /// Not mapped and not in quarantine: reported as unmigrated (drift) already.
    Unmigrated,
}

/// The reason given with a stale copy whose document's newest version is in the quarantine.
pub const NEWER_VERSION_QUARANTINED: &str = "newer version quarantined";

/// Whether PostgreSQL's copy of a document is at the source's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionStatus {
    Current,
    Stale,
    Ahead,
}

struct Verifier<'a> {
    pool: &'a PgPool,
    source: &'a dyn DocumentSource,
    opts: &'a VerifyOptions,
    counts: BTreeMap<Entity, EntityCounts>,
    items: Vec<DriftItem>,
    passes: u32,
    /// (container, document id) of the source documents another document of their key
    /// supersedes (see [`duplicates`]): only the winner of a key is compared with PostgreSQL.
    losers: HashSet<(&'static str, String)>,
    /// The document key of each item the descent reported (by index in `items`): what a
    /// recheck reads again.
    item_docs: Vec<(usize, Uuid)>,
    recheck: RecheckSummary,
}

impl Verifier<'_> {
    fn is_loser(&self, doc: &ReadDoc) -> bool {
        !self.losers.is_empty()
            && self
                .losers
                .contains(&(doc.container, doc.document_id.clone()))
    }

    fn in_slice(&self, bucket: Option<u8>) -> bool {
        let b = bucket.unwrap_or(0);
        (self.opts.first_bucket..=self.opts.last_bucket).contains(&b)
    }

    /// Reads every container once, calling `each` with every document (of the `wanted`
    /// buckets only, when given).
    async fn each_doc(
        &mut self,
        wanted: Option<Wanted>,
        keep: Keep,
        mut each: impl FnMut(&mut Self, ReadDoc),
    ) -> Result<(), VerifyError> {
        self.passes += 1;
        let (pool, source) = (self.pool, self.source);
        for container in CONTAINERS {
            if !source.has_container(container).await? {
                continue;
            }
            // pages are mapped in parallel, and handed to `each` in source order
            let mut pages = std::pin::pin!(read::doc_pages(
                pool,
                source,
                container,
                self.opts.page_size,
                wanted.clone(),
                keep
            ));
            while let Some(docs) = pages.try_next().await? {
                for doc in docs {
                    each(self, doc);
                }
            }
        }
        Ok(())
    }

    /// The first pass: per (entity, bucket) aggregates of the rows the source implies; the
    /// quarantined and unmapped documents are reported here. Also returns the keys that may
    /// have several documents (see [`duplicates`]).
    async fn source_pass(
        &mut self,
    ) -> Result<(HashMap<(Entity, u8), Aggregate>, duplicates::Candidates), VerifyError> {
        let mut aggs: HashMap<(Entity, u8), Aggregate> = HashMap::new();
        let mut seen = duplicates::SeenKeys::new();
        let mut candidates = duplicates::Candidates::default();
        self.each_doc(None, Keep::HASHES, |v, doc| {
            if !v.in_slice(doc.bucket()) {
                return;
            }
            if doc.contender
                && let Some(key) = doc.document_key
                && seen.insert(doc.container, key)
            {
                candidates.insert((doc.container, key));
            }
            let main = Entity::of_container(doc.container).unwrap_or(Entity::Accounts);
            let (kind, reason) = match doc.state {
                DocState::Mapped => {
                    for row in &doc.rows {
                        aggs.entry((row.entity, row.bucket()))
                            .or_default()
                            .add(&row.hash);
                    }
                    return;
                }
                DocState::Quarantined { reason } => (DriftKind::Quarantined, reason),
                DocState::Unmigrated { code } => (DriftKind::Unmigrated, code),
            };
            if kind == DriftKind::Quarantined {
                v.counts.entry(main).or_default().quarantined += 1;
            }
            v.items.push(DriftItem {
                entity: main,
                kind,
                key: doc.document_key.map(|k| k.to_string()),
                cosmos_id: Some(doc.document_id),
                fields: Vec::new(),
                values: None,
                reason: Some(reason),
                source_has_document: true,
            });
        })
        .await?;
        Ok((aggs, candidates))
    }

    /// Examines the differing (entity, bucket) pairs of `chunk`'s buckets.
    async fn descend(
        &mut self,
        chunk: &[u8],
        differing: &HashSet<(Entity, u8)>,
    ) -> Result<(), VerifyError> {
        let wanted: HashSet<u8> = chunk.iter().copied().collect();
        let in_chunk: Wanted = {
            let wanted = wanted.clone();
            std::sync::Arc::new(move |k: Uuid| wanted.contains(&k.as_bytes()[0]))
        };
        let mut rows: HashMap<(Entity, u8), HashMap<String, KeptRow>> = HashMap::new();
        let mut docs: HashMap<Uuid, KeptDoc> = HashMap::new();
        let keep = Keep {
            values: true,
            raw: false,
        };
        self.each_doc(Some(in_chunk), keep, |v, doc| {
            let (Some(key), Some(b)) = (doc.document_key, doc.bucket()) else {
                return;
            };
            if !wanted.contains(&b) || v.is_loser(&doc) {
                return;
            }
            docs.insert(
                key,
                match doc.state {
                    DocState::Mapped => KeptDoc::Mapped,
                    DocState::Quarantined { .. } => KeptDoc::Quarantined,
                    DocState::Unmigrated { .. } => KeptDoc::Unmigrated,
                },
            );
            for row in doc.rows {
                if differing.contains(&(row.entity, b)) {
                    rows.entry((row.entity, b)).or_default().insert(
                        row.key,
                        KeptRow {
                            document_id: doc.document_id.clone(),
                            document_key: key,
                            values: row.values,
                            hash: row.hash,
                        },
                    );
                }
            }
        })
        .await?;
        self.opts.after_descent_read.call().await;

        let mut status: HashMap<Uuid, VersionStatus> = HashMap::new();
        for entity in Entity::ALL {
            for &b in chunk {
                if !differing.contains(&(entity, b)) {
                    continue;
                }
                let src = rows.remove(&(entity, b)).unwrap_or_default();
                self.compare_bucket(entity, b, src, &docs, &mut status)
                    .await?;
            }
        }
        Ok(())
    }

    async fn compare_bucket(
        &mut self,
        entity: Entity,
        bucket: u8,
        src: HashMap<String, KeptRow>,
        docs: &HashMap<Uuid, KeptDoc>,
        status: &mut HashMap<Uuid, VersionStatus>,
    ) -> Result<(), VerifyError> {
        let (lo, hi) = bucket_bounds(bucket);
        let compared = self
            .compare_range(entity, lo, hi, src, docs, status)
            .await?;
        self.counts.entry(entity).or_default().matched += compared.matched;
        for (document_key, item) in compared.items {
            self.item_docs.push((self.items.len(), document_key));
            self.items.push(item);
        }
        Ok(())
    }

    /// Compares the source's rows `src` of `entity` with PostgreSQL's rows whose document key
    /// is in `[lo, hi)` (a bucket, or one document for a recheck) and classifies the
    /// differences, each with its document's key.
    async fn compare_range(
        &self,
        entity: Entity,
        lo: Uuid,
        hi: Option<Uuid>,
        mut src: HashMap<String, KeptRow>,
        docs: &HashMap<Uuid, KeptDoc>,
        status: &mut HashMap<Uuid, VersionStatus>,
    ) -> Result<Compared, VerifyError> {
        let table = tables::table(entity);
        let mut out = Compared::default();
        let pg: Vec<(String, Uuid, Option<String>, String)> = {
            let q =
                sqlx::query_as(sqlx::AssertSqlSafe(table.bucket_rows_sql(hi.is_none()))).bind(lo);
            let q = match hi {
                Some(hi) => q.bind(hi),
                None => q,
            };
            let mut tx = hash_joined(self.pool).await?;
            let rows = q.fetch_all(&mut *tx).await.map_err(sql)?;
            tx.commit().await.map_err(sql)?;
            rows
        };
        let mut changed: Vec<String> = Vec::new();
        let mut matched = 0u64;
        for (key, document_key, pg_document_id, hash) in pg {
            out.pg_hashes.push(hash.clone());
            match src.get(&key) {
                Some(s) if s.hash == hash => {
                    matched += 1;
                    src.remove(&key);
                }
                Some(_) => changed.push(key),
                None => {
                    let doc = docs.get(&document_key).copied();
                    let (kind, reason) = match doc {
                        // an unmapped document's earlier copy: reported with it, as drift
                        Some(KeptDoc::Unmigrated) => continue,
                        // the newest version is in the quarantine and the app would read an
                        // older one: never clean
                        Some(KeptDoc::Quarantined) => {
                            (DriftKind::Stale, Some(NEWER_VERSION_QUARANTINED.to_owned()))
                        }
                        _ => match status.get(&document_key) {
                            Some(VersionStatus::Stale) => (DriftKind::Stale, None),
                            Some(VersionStatus::Ahead) => (DriftKind::Ahead, None),
                            _ => (DriftKind::Extra, None),
                        },
                    };
                    out.items.push((
                        document_key,
                        DriftItem {
                            entity,
                            kind,
                            key: Some(key),
                            cosmos_id: pg_document_id,
                            fields: Vec::new(),
                            values: None,
                            reason,
                            source_has_document: doc.is_some(),
                        },
                    ));
                }
            }
        }
        out.matched = matched;

        if !changed.is_empty() {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(table.values_sql(hi.is_none()))).bind(lo);
            if let Some(hi) = hi {
                q = q.bind(hi);
            }
            let pg_rows = q.bind(&changed).fetch_all(self.pool).await.map_err(sql)?;
            for row in pg_rows {
                let key: String = row.try_get(0).map_err(sql)?;
                let Some(s) = src.remove(&key) else { continue };
                let mut pg_values = Vec::with_capacity(table.columns.len());
                for i in 0..table.columns.len() {
                    pg_values.push(row.try_get::<Option<String>, _>(i + 1).map_err(sql)?);
                }
                let n = table.columns.len();
                if entity.is_document() {
                    let st = version_status(
                        (&s.values[n - 2], &s.values[n - 1]),
                        (&pg_values[n - 2], &pg_values[n - 1]),
                    );
                    status.insert(s.document_key, st);
                }
                let mut fields = Vec::new();
                let mut values = Vec::new();
                for (i, c) in table.columns.iter().enumerate() {
                    if s.values[i] != pg_values[i] {
                        fields.push(c.name.to_owned());
                        values.push(FieldValues {
                            field: c.name.to_owned(),
                            source: s.values[i].as_deref().map(|v| c.kind.display(v)),
                            postgres: pg_values[i].as_deref().map(|v| c.kind.display(v)),
                        });
                    }
                }
                let kind = match status.get(&s.document_key) {
                    Some(VersionStatus::Stale) => DriftKind::Stale,
                    Some(VersionStatus::Ahead) => DriftKind::Ahead,
                    _ => DriftKind::Changed,
                };
                out.items.push((
                    s.document_key,
                    DriftItem {
                        entity,
                        kind,
                        key: Some(key),
                        cosmos_id: Some(s.document_id),
                        fields,
                        values: self.opts.show_values.then_some(values),
                        reason: None,
                        source_has_document: true,
                    },
                ));
            }
        }

        // what is left of the source's rows is not in PostgreSQL
        for (key, s) in src {
            let kind = match status.get(&s.document_key) {
                Some(VersionStatus::Stale) => DriftKind::Stale,
                _ => DriftKind::Missing,
            };
            out.items.push((
                s.document_key,
                DriftItem {
                    entity,
                    kind,
                    key: Some(key),
                    cosmos_id: Some(s.document_id),
                    fields: Vec::new(),
                    values: None,
                    reason: None,
                    source_has_document: true,
                },
            ));
        }
        Ok(out)
    }
}

/// What [`Verifier::compare_range`] found: the differences (with their document's key), the
/// rows that matched, and the hashes of PostgreSQL's rows it read (a recheck's fingerprint).
#[derive(Default)]
struct Compared {
    items: Vec<(Uuid, DriftItem)>,
    matched: u64,
    pg_hashes: Vec<String>,
}

/// Compares (`_ts`, `_etag`) of the source and of PostgreSQL's copy.
fn version_status(
    src: (&Option<String>, &Option<String>),
    pg: (&Option<String>, &Option<String>),
) -> VersionStatus {
    let ts = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
    match (ts(src.0), ts(pg.0)) {
        (_, None) => VersionStatus::Stale,
        (Some(s), Some(p)) if p < s => VersionStatus::Stale,
        (Some(s), Some(p)) if p > s => VersionStatus::Ahead,
        _ if src.1 != pg.1 => VersionStatus::Stale,
        _ => VersionStatus::Current,
    }
}

/// The uuid range of a bucket: `[lo, hi)`, `hi = None` for the last bucket.
fn bucket_bounds(bucket: u8) -> (Uuid, Option<Uuid>) {
    let at = |b: u8| {
        let mut bytes = [0u8; 16];
        bytes[0] = b;
        Uuid::from_bytes(bytes)
    };
    (at(bucket), bucket.checked_add(1).map(at))
}

/// A read-only transaction for verify's reads of whole tables (or whole buckets) joined with
/// their version records. Statistics taken while a migration was still writing (autovacuum
/// analyzed `document_versions` when it held few profiles' versions, and `user_profiles` not
/// at all) led the planner to a nested loop that compared every profile with every profile's
/// version: one verify of 20,000 accounts took 170 s instead of 3 s. The join reads every
/// row of both sides, so a hash join is right whatever the sizes, and forbidding nested loops
/// costs nothing where the statistics are sound.
async fn hash_joined(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, VerifyError> {
    let mut tx = pool.begin().await.map_err(sql)?;
    sqlx::query("set local enable_nestloop = off")
        .execute(&mut *tx)
        .await
        .map_err(sql)?;
    Ok(tx)
}

async fn pg_aggregates(
    pool: &PgPool,
    entity: Entity,
    first: u8,
    last: u8,
) -> Result<HashMap<u8, Aggregate>, VerifyError> {
    let started = Instant::now();
    let mut tx = aggregate_tx(pool).await?;
    let rows: Vec<(i32, i64, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(tables::table(entity).aggregate_sql()))
            .bind(i32::from(first))
            .bind(i32::from(last))
            .fetch_all(&mut *tx)
            .await
            .map_err(sql)?;
    tx.commit().await.map_err(sql)?;
    tracing::debug!(
        %entity,
        seconds = started.elapsed().as_secs_f64(),
        "verify: postgresql aggregates done"
    );
    Ok(rows
        .into_iter()
        .map(|(b, count, hi, lo)| {
            let bucket = u8::try_from(b).unwrap_or(0);
            let agg = Aggregate {
                count: u64::try_from(count).unwrap_or(0),
                hi: hi.parse().unwrap_or(0),
                lo: lo.parse().unwrap_or(0),
            };
            (bucket, agg)
        })
        .collect())
}

/// The transaction the per-table aggregates run in ([`hash_joined`], and the settings below).
async fn aggregate_tx(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, VerifyError> {
    let mut tx = hash_joined(pool).await?;
    // No parallel workers: the source pass keeps the other cores busy, so workers add no
    // throughput, only the cost of handing every row to the leader (0.65 s of 5.1 s of server
    // CPU for 1.24 million badges). And a hash aggregate of the 256 buckets, not a sort of
    // every row: the bucket filter's estimate (half a percent of the rows) made the planner
    // sort, and the sort spilled to disk (57 MB at 100,000 accounts). docs/benchmarks.md,
    // "Verify at half a load".
    sqlx::raw_sql("set local max_parallel_workers_per_gather = 0; set local enable_sort = off")
        .execute(&mut *tx)
        .await
        .map_err(sql)?;
    Ok(tx)
}

/// The executed plan (`EXPLAIN (ANALYZE, FORMAT JSON)`) of each table's aggregate statement
/// over the whole key space, run exactly as [`verify`] runs it: for tests that hold the
/// statements to their shape (tests/verify_plans.rs).
#[doc(hidden)]
pub async fn explain_pg_aggregates(
    pool: &PgPool,
) -> Result<Vec<(Entity, serde_json::Value)>, VerifyError> {
    let mut plans = Vec::new();
    for entity in Entity::ALL {
        let mut tx = aggregate_tx(pool).await?;
        let explain = format!(
            "explain (analyze, format json) {}",
            tables::table(entity).aggregate_sql()
        );
        let (plan,): (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(explain))
            .bind(0_i32)
            .bind(255_i32)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql)?;
        tx.rollback().await.map_err(sql)?;
        plans.push((entity, plan));
    }
    Ok(plans)
}
