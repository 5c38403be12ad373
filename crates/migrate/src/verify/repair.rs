//! Repair: make PostgreSQL match the source again for every drifted record, then verify
//! again.
//!
//! Drifted documents (missing, changed or stale rows; documents that cannot be mapped and
//! are not in quarantine) are re-copied through the backfill's own path (mapping, the
//! idempotent bulk writer, quarantine), with the version guard lifted for exactly those
//! documents: their `migration.document_versions` rows are deleted first, so the writer
//! treats them as new. Rows the source no longer has are deleted only with `delete_extra`
//! (an extra row may be a write PostgreSQL received that the source has not). A copy newer
//! than the source (`ahead`) is never moved back: re-export the source instead. Repair runs
//! in rounds (a re-copied account lets its profiles attach, which the next round copies)
//! until the verification is clean, nothing repairable is left, or `max_rounds` is reached.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::PgPool;

use super::{DriftKind, Entity, VerifyError, VerifyOptions, VerifyReport, run_verify, sql};
use mystira_copy::apply::{Retries, write_page};
use mystira_copy::source::{DocumentSource, SourceDocument, read_page_of_ids};
use mystira_copy::{CONTAINERS, ContainerCounts};

/// How repair runs.
#[derive(Debug, Clone, Serialize)]
pub struct RepairOptions {
    /// Delete rows PostgreSQL has and the source does not.
    pub delete_extra: bool,
    /// Repair-and-verify rounds at most.
    pub max_rounds: u32,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            delete_extra: false,
            max_rounds: 3,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairRound {
    /// Documents re-copied, by container, with what the writer made of them.
    pub recopied: BTreeMap<String, ContainerCounts>,
    /// Rows deleted because the source does not have them, by table.
    pub deleted: BTreeMap<String, u64>,
    /// Drift items left alone (extra rows without `delete_extra`, copies ahead of the source).
    pub left_alone: u64,
}

/// The verification before, each round, and the verification after.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub before: VerifyReport,
    pub rounds: Vec<RepairRound>,
    pub after: VerifyReport,
}

impl RepairReport {
    /// Drift items fixed: drift before minus drift after.
    pub fn fixed(&self) -> usize {
        self.before
            .drift_count()
            .saturating_sub(self.after.drift_count())
    }

    pub fn summary(&self, max_items: usize) -> String {
        let mut out = format!("before repair:\n{}", self.before.summary(max_items));
        for (i, r) in self.rounds.iter().enumerate() {
            let recopied: u64 = r.recopied.values().map(|c| c.read).sum();
            let deleted: u64 = r.deleted.values().sum();
            out.push_str(&format!(
                "repair round {}: {recopied} documents re-copied, {deleted} rows deleted, {} items left alone\n",
                i + 1,
                r.left_alone
            ));
        }
        out.push_str(&format!(
            "fixed {} drift items\nafter repair:\n",
            self.fixed()
        ));
        out.push_str(&self.after.summary(max_items));
        out
    }
}

/// What a round will do.
#[derive(Default)]
struct Plan {
    recopy: BTreeMap<&'static str, BTreeSet<String>>,
    delete: Vec<(Entity, String, Option<String>)>,
    left_alone: u64,
}

fn plan(report: &VerifyReport, opts: &RepairOptions) -> Plan {
    let mut p = Plan::default();
    for item in &report.items {
        let container = item.entity.container();
        let recopy = match item.kind {
            DriftKind::Missing | DriftKind::Changed | DriftKind::Stale | DriftKind::Unmigrated => {
                true
            }
            DriftKind::Extra if opts.delete_extra => {
                if !item.source_has_document {
                    if let Some(key) = &item.key {
                        p.delete
                            .push((item.entity, key.clone(), item.cosmos_id.clone()));
                    }
                    continue;
                }
                // the document is in the source without this row: re-copying it removes it
                true
            }
            DriftKind::Extra | DriftKind::Ahead => {
                p.left_alone += 1;
                false
            }
            // the loser of a key nothing records: re-copying it lets the writer record it
            DriftKind::SupersededNotRecorded => true,
            // a mapping difference: a re-copy through the same mapping reproduces it
            DriftKind::RoundTrip => {
                p.left_alone += 1;
                false
            }
            // still being written: the write in flight delivers it, a re-copy would race it
            DriftKind::Changing => {
                p.left_alone += 1;
                false
            }
            DriftKind::Quarantined | DriftKind::SupersededDuplicate => false,
        };
        if recopy && let Some(id) = &item.cosmos_id {
            p.recopy.entry(container).or_default().insert(id.clone());
        }
    }
    p
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.recopy.is_empty() && self.delete.is_empty()
    }
}

/// Verifies, repairs what drifted, and verifies again (every verification is recorded as a
/// `verify` run).
pub async fn repair(
    pool: &PgPool,
    source: &dyn DocumentSource,
    verify_opts: &VerifyOptions,
    opts: &RepairOptions,
) -> Result<RepairReport, VerifyError> {
    let before = run_verify(pool, source, verify_opts).await?;
    let mut current = before.clone();
    let mut rounds = Vec::new();
    while rounds.len() < opts.max_rounds as usize && current.drift_count() > 0 {
        let plan = plan(&current, opts);
        if plan.is_empty() {
            break;
        }
        let mut round = RepairRound {
            left_alone: plan.left_alone,
            ..RepairRound::default()
        };
        delete_extra(pool, &plan.delete, &mut round).await?;
        recopy(
            pool,
            source,
            verify_opts.page_size,
            &plan.recopy,
            &mut round,
        )
        .await?;
        rounds.push(round);
        current = run_verify(pool, source, verify_opts).await?;
    }
    Ok(RepairReport {
        before,
        rounds,
        after: current,
    })
}

async fn delete_extra(
    pool: &PgPool,
    rows: &[(Entity, String, Option<String>)],
    round: &mut RepairRound,
) -> Result<(), VerifyError> {
    // embedded rows first: deleting a document row cascades to them anyway
    let mut ordered: Vec<&(Entity, String, Option<String>)> = rows.iter().collect();
    ordered.sort_by_key(|(e, _, _)| e.is_document());
    for (entity, key, cosmos_id) in ordered {
        let mut tx = pool.begin().await.map_err(sql)?;
        // the table's own key (an embedded row's is not its id: see `tables`)
        let deleted = sqlx::query(sqlx::AssertSqlSafe(
            super::tables::table(*entity).delete_sql(*entity),
        ))
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(sql)?
        .rows_affected();
        if entity.is_document()
            && let Some(doc) = cosmos_id
        {
            // the copy's bookkeeping goes with it, so a later copy is not judged against it
            for table in ["migration.document_versions", "migration.document_notes"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "delete from {table} where container = $1 and document_id = $2"
                )))
                .bind(entity.container())
                .bind(doc)
                .execute(&mut *tx)
                .await
                .map_err(sql)?;
            }
        }
        tx.commit().await.map_err(sql)?;
        *round.deleted.entry(entity.table().to_owned()).or_default() += deleted;
    }
    Ok(())
}

/// Re-reads the source and re-copies the documents named in `ids`, container by container in
/// the backfill's order.
async fn recopy(
    pool: &PgPool,
    source: &dyn DocumentSource,
    page_size: usize,
    ids: &BTreeMap<&'static str, BTreeSet<String>>,
    round: &mut RepairRound,
) -> Result<(), VerifyError> {
    for container in CONTAINERS {
        let Some(wanted) = ids.get(container) else {
            continue;
        };
        if !source.has_container(container).await? {
            continue;
        }
        let counts = round.recopied.entry(container.to_owned()).or_default();
        let wanted_ids = std::sync::Arc::new(wanted.clone());
        let mut position: Option<serde_json::Value> = None;
        loop {
            let page =
                read_page_of_ids(source, container, position.as_ref(), page_size, &wanted_ids)
                    .await?;
            let last = page.next.is_none();
            position = page.next;
            let batch: Vec<SourceDocument> = page
                .documents
                .into_iter()
                .filter(|d| {
                    let id = match d {
                        SourceDocument::Document(v) => v.get("id").and_then(|i| i.as_str()),
                        SourceDocument::Malformed { locator, .. } => Some(locator.as_str()),
                    };
                    id.is_some_and(|id| wanted.contains(id))
                })
                .collect();
            if !batch.is_empty() {
                recopy_batch(pool, container, batch, counts).await?;
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}

/// Re-copies `batch` (documents of `container` read again from the source) with the version
/// guard lifted for exactly these documents.
async fn recopy_batch(
    pool: &PgPool,
    container: &str,
    batch: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
) -> Result<(), VerifyError> {
    let batch_ids: Vec<String> = batch
        .iter()
        .filter_map(|d| match d {
            SourceDocument::Document(v) => v.get("id").and_then(|i| i.as_str()).map(str::to_owned),
            SourceDocument::Malformed { .. } => None,
        })
        .collect();
    // lift the version guard for exactly these documents; a repair from the source
    // also discards PostgreSQL changes of them that Cosmos has not taken (their outbox
    // rows), which would otherwise hold the copy back: the source is the reference here
    let keys: Vec<uuid::Uuid> = batch
        .iter()
        .filter_map(|d| match d {
            SourceDocument::Document(v) => {
                mystira_cosmos_codec::codec::Container::from_name(container)
                    .and_then(|c| mystira_cosmos_codec::codec::document_ref(c, v))
                    .map(|r| r.key)
            }
            SourceDocument::Malformed { .. } => None,
        })
        .collect();
    sqlx::query(
        "delete from migration.document_versions where container = $1 and document_id = any($2)",
    )
    .bind(container)
    .bind(&batch_ids)
    .execute(pool)
    .await
    .map_err(sql)?;
    sqlx::query("delete from migration.outbox where container = $1 and key = any($2)")
        .bind(container)
        .bind(&keys)
        .execute(pool)
        .await
        .map_err(sql)?;
    write_page(pool, container, batch, counts, Retries::Backoff).await?;
    Ok(())
}
