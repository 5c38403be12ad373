//! The result of a verification: its outcome, the drift items and their kinds, the per-entity
//! counts, and the human summary the CLI prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use super::VerifyError;
use super::recheck::RecheckSummary;
use super::tables::Entity;

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

    pub(super) fn label(self) -> &'static str {
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

impl DriftItem {
    /// An item of `entity`'s row `key` of the source document `cosmos_id`, with no field names,
    /// values or reason: the caller adds what its kind carries (struct update syntax).
    pub(super) fn new(
        entity: Entity,
        kind: DriftKind,
        key: Option<String>,
        cosmos_id: Option<String>,
    ) -> Self {
        Self {
            entity,
            kind,
            key,
            cosmos_id,
            fields: Vec::new(),
            values: None,
            reason: None,
            source_has_document: true,
        }
    }
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
