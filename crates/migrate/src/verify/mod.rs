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
//!    ([`canonical`]), hashed (PostgreSQL's 64-bit `hashtextextended`, ported), and added to
//!    its (entity, bucket) aggregate: a count and the sum of the hashes. 6 × 256 aggregates:
//!    nothing else is kept.
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
mod descent;
mod duplicates;
mod pg_aggregates;
mod read;
mod recheck;
pub mod remainder;
pub mod repair;
mod report;
mod round_trip;
pub mod tables;
pub mod towards_cosmos;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use mystira_domain::RepoError;
use mystira_postgres::bookkeeping;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use canonical::Aggregate;
pub use descent::NEWER_VERSION_QUARANTINED;
use descent::{KeptDoc, KeptRow};
use futures::TryStreamExt as _;
use mystira_copy::CONTAINERS;
use mystira_copy::source::{DocumentSource, SourceError};
#[doc(hidden)]
pub use pg_aggregates::explain_pg_aggregates;
use pg_aggregates::pg_aggregates;
use read::{DocState, Keep, ReadDoc, Wanted};
pub use recheck::{CHANGING_REASON, DescentHook, RecheckSummary};
pub use repair::{RepairOptions, RepairReport, RepairRound, repair};
pub use report::{DriftItem, DriftKind, EntityCounts, FieldValues, Outcome, VerifyReport};
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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("postgresql: {0}")]
    Store(#[from] RepoError),
    #[error("invalid verify options: {0}")]
    Options(&'static str),
    /// The server's `hashtextextended` is not the one verify computes on its side (see
    /// [`canonical::pg_hash`]): every row would compare as changed.
    #[error(
        "this PostgreSQL server hashes text differently from verify (a big-endian server?), \
         so rows cannot be compared by their hashes"
    )]
    ServerHashDiffers,
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
    if !canonical::hash_agrees(pool).await.map_err(sql)? {
        return Err(VerifyError::ServerHashDiffers);
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
        let mut seen = duplicates::SeenKeys::default();
        self.each_doc(None, Keep::HASHES, |v, doc| {
            if !v.in_slice(doc.bucket()) {
                return;
            }
            if doc.contender
                && let Some(key) = doc.document_key
            {
                seen.insert(doc.container, key);
            }
            let main = Entity::of_container(doc.container).unwrap_or(Entity::Accounts);
            let (kind, reason) = match doc.state {
                DocState::Mapped => {
                    for row in &doc.rows {
                        aggs.entry((row.entity, row.bucket()))
                            .or_default()
                            .add(row.hash);
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
                reason: Some(reason),
                ..DriftItem::new(
                    main,
                    kind,
                    doc.document_key.map(|k| k.to_string()),
                    Some(doc.document_id),
                )
            });
        })
        .await?;
        Ok((aggs, seen.candidates()))
    }
}
