//! Rechecks against a live source: is a difference the descent found drift, or a write that
//! was in flight while verify read the two sides?
//!
//! # Why
//! Against a live Cosmos database the app keeps writing while verify runs. The descent reads
//! the source (a whole chunk of buckets) and only then PostgreSQL's rows of those buckets: a
//! document written in between (the dual write reaches both stores) is seen at its old version
//! in the source and its new one in PostgreSQL, and reported `ahead`; a write that has reached
//! one store and not yet the other shows as `stale` or `changed`. None of that is drift, but
//! under load some of it is in every run, so a gate that needs a clean verify never passes.
//!
//! # How
//! After the descent, when the source is live ([`DocumentSource::is_live`]; export files do
//! not change, so they are never rechecked) and `recheck_rounds > 0`, every document with a
//! difference the descent classified (`missing`, `extra`, `changed`, `stale`, `ahead`) is
//! read again: from the source by its id ([`DocumentSource::read_documents_by_id`], a few at
//! a time), mapped exactly as the descent maps it, and compared with its rows read afresh from
//! PostgreSQL (the key range of that one document) by the descent's own comparison
//! ([`super::Verifier::compare_range`]). Rounds run one after the other, with a pause of
//! `recheck_pause_ms` before each round after the first, and only for the documents that still
//! differ:
//! - a document that compares equal in some round was in flight: its items are dropped and
//!   counted in [`RecheckSummary::cleared_items`];
//! - a document that still differs after the last round is drift, reported as the last round
//!   classified it (for a document nobody writes, exactly what the descent reported);
//! - unless it changed between every two rounds (the hashes of its source rows or of
//!   PostgreSQL's rows differ each time; so only with 2 rounds or more): then its items are
//!   reported as [`DriftKind::Changing`] with the reason [`CHANGING_REASON`] and the class the
//!   last round gave it. `changing` is drift: a document written faster than verify can
//!   compare it cannot be shown equal, so a gate does not pass on it; a later run (or more
//!   rounds, or a longer pause) usually finds it settled.
//!
//! At most `recheck_max_documents` documents are rechecked (in key order); the differences of
//! any further documents are reported as the descent found them and counted in
//! [`RecheckSummary::not_rechecked`]. A document that cannot be rechecked as one document (its
//! id is in several documents of its key, its key has a superseded duplicate, it does not map
//! now) keeps what the descent found.
//!
//! # A quiet source
//! Nothing changes between the descent and the rechecks, so every recheck classifies a
//! document exactly as the descent did (same mapping, same comparison): the items, and so the
//! report's outcome and counts, are those of a run without rechecks; only [`RecheckSummary`]
//! says the rechecks happened (and took `recheck_pause_ms` per extra round).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use uuid::Uuid;

use super::canonical::RowHash;
use super::read::{self, Keep};
use super::tables::Entity;
use super::{DriftItem, DriftKind, KeptDoc, KeptRow, Verifier, VerifyError};
use mystira_copy::source::SourcePage;

/// The reason given with a [`DriftKind::Changing`] item: what follows the colon is the class
/// the last recheck gave it.
pub const CHANGING_REASON: &str = "still being written";

/// Documents rechecked at once (each one query to the source and a few to PostgreSQL).
const CONCURRENCY: usize = 8;

/// What the rechecks of a run found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecheckSummary {
    /// Documents with differences that were rechecked.
    pub documents: u64,
    /// Rounds run (0: no recheck: the source is not live, rechecks are off, or nothing
    /// differed).
    pub rounds: u32,
    /// Items of the descent that a recheck found equal (writes in flight): not reported.
    pub cleared_items: u64,
    /// Documents those items belonged to.
    pub cleared_documents: u64,
    /// Documents still differing and changing at every round (reported `changing`).
    pub changing_documents: u64,
    /// Documents with differences beyond `recheck_max_documents`: reported as found.
    pub not_rechecked: u64,
}

/// The test seams [`super::VerifyOptions::after_descent_read`] (awaited after each descent
/// pass has read the source and before PostgreSQL's side is read) and
/// [`super::VerifyOptions::before_recheck_round`]: an async callback. The default does nothing.
#[derive(Clone, Default)]
pub struct DescentHook(Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>);

impl DescentHook {
    pub fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Some(Arc::new(move || Box::pin(hook()))))
    }

    pub(super) async fn call(&self) {
        if let Some(hook) = &self.0 {
            hook().await;
        }
    }
}

impl std::fmt::Debug for DescentHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "DescentHook(set)"
        } else {
            "DescentHook(none)"
        })
    }
}

/// A document to recheck.
struct Pending {
    container: &'static str,
    key: Uuid,
    id: String,
    /// Indexes in `Verifier::items` of the descent's items of this document.
    items: Vec<usize>,
    /// The last round's items, and its fingerprint.
    last: Option<(Vec<DriftItem>, Fingerprint)>,
    /// Rounds that found it differing.
    differing_rounds: u32,
    /// Whether every round so far saw the document differently from the round before.
    changed_every_round: bool,
}

/// The hashes of a document's source rows and of PostgreSQL's rows of it.
type Fingerprint = (Vec<RowHash>, Vec<RowHash>);

/// One recheck of one document: `None` when it cannot be rechecked as one document.
type Round = Option<(Vec<DriftItem>, Fingerprint)>;

fn order(items: &mut [DriftItem]) {
    items.sort_by(|a, b| {
        (a.kind, a.entity, &a.key, &a.cosmos_id).cmp(&(b.kind, b.entity, &b.key, &b.cosmos_id))
    });
}

impl Verifier<'_> {
    /// Rechecks the descent's differences against a live source (see the module docs).
    pub(super) async fn recheck(&mut self) -> Result<(), VerifyError> {
        let rounds = self.opts.recheck_rounds;
        if rounds == 0 || self.item_docs.is_empty() || !self.source.is_live() {
            return Ok(());
        }
        let mut by_doc: BTreeMap<(&'static str, Uuid), Vec<usize>> = BTreeMap::new();
        for &(index, key) in &self.item_docs {
            let item = &self.items[index];
            if matches!(
                item.kind,
                DriftKind::Missing
                    | DriftKind::Extra
                    | DriftKind::Changed
                    | DriftKind::Stale
                    | DriftKind::Ahead
            ) {
                by_doc
                    .entry((item.entity.container(), key))
                    .or_default()
                    .push(index);
            }
        }
        let mut pending: Vec<Pending> = Vec::new();
        for ((container, key), items) in by_doc {
            // one document id for all its items (else PostgreSQL's rows of the key come from
            // another document than the source's: a read by one id cannot settle it)
            let mut ids = items.iter().map(|&i| self.items[i].cosmos_id.as_deref());
            let Some(Some(id)) = ids.next() else { continue };
            if ids.any(|other| other != Some(id)) {
                continue;
            }
            if pending.len() >= self.opts.recheck_max_documents {
                self.recheck.not_rechecked += 1;
                continue;
            }
            pending.push(Pending {
                container,
                key,
                id: id.to_owned(),
                items,
                last: None,
                differing_rounds: 0,
                changed_every_round: true,
            });
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.recheck.documents = pending.len() as u64;
        let mut remove: Vec<usize> = Vec::new();
        let mut settled: Vec<Pending> = Vec::new();
        for round in 0..rounds {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(self.opts.recheck_pause_ms)).await;
            }
            self.recheck.rounds = round + 1;
            self.opts.before_recheck_round.call().await;
            let this: &Self = self;
            let results: Vec<Round> = futures::stream::iter(pending.iter())
                .map(|p| this.recheck_one(p.container, p.key, &p.id))
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            let mut still = Vec::new();
            for (mut p, result) in pending.into_iter().zip(results) {
                match result {
                    // cannot be rechecked: what was found last stands
                    None => settled.push(p),
                    Some((items, _)) if items.is_empty() => {
                        self.recheck.cleared_items += p.items.len() as u64;
                        self.recheck.cleared_documents += 1;
                        remove.extend(&p.items);
                    }
                    Some((items, fingerprint)) => {
                        if let Some((_, before)) = &p.last
                            && *before == fingerprint
                        {
                            p.changed_every_round = false;
                        }
                        p.last = Some((items, fingerprint));
                        p.differing_rounds += 1;
                        still.push(p);
                    }
                }
            }
            pending = still;
        }
        tracing::debug!(
            documents = self.recheck.documents,
            cleared = self.recheck.cleared_documents,
            differing = pending.len() + settled.len(),
            "verify: recheck done"
        );
        // what still differs replaces what the descent found
        let mut added: Vec<DriftItem> = Vec::new();
        for p in pending.into_iter().chain(settled) {
            let Some((mut items, _)) = p.last else {
                continue;
            };
            remove.extend(&p.items);
            if p.changed_every_round && p.differing_rounds >= 2 {
                self.recheck.changing_documents += 1;
                for item in &mut items {
                    item.reason = Some(format!("{CHANGING_REASON}: {}", item.kind.label()));
                    item.kind = DriftKind::Changing;
                }
            }
            order(&mut items);
            added.extend(items);
        }
        let remove: std::collections::HashSet<usize> = remove.into_iter().collect();
        let mut index = 0;
        self.items.retain(|_| {
            index += 1;
            !remove.contains(&(index - 1))
        });
        self.item_docs.clear();
        self.items.extend(added);
        Ok(())
    }

    /// Reads document `id` of `container` (key `key`) from the source and its rows from
    /// PostgreSQL, and classifies the differences as the descent does.
    async fn recheck_one(
        &self,
        container: &'static str,
        key: Uuid,
        id: &str,
    ) -> Result<Round, VerifyError> {
        let documents = self.source.read_documents_by_id(container, id).await?;
        let page = SourcePage {
            documents,
            next: None,
        };
        let keep = Keep {
            values: true,
            raw: false,
        };
        let read = read::read_docs(self.pool, container, page.into(), None, keep).await?;
        let mut of_key = read.into_iter().filter(|d| d.document_key == Some(key));
        let doc = of_key.next();
        if of_key.next().is_some() {
            return Ok(None);
        }
        let mut docs: HashMap<Uuid, KeptDoc> = HashMap::new();
        let mut rows: HashMap<Entity, HashMap<String, KeptRow>> = HashMap::new();
        let mut source_hashes = Vec::new();
        if let Some(doc) = doc {
            if self.is_loser(&doc) {
                return Ok(None);
            }
            let kept = KeptDoc::of(&doc.state);
            if kept == KeptDoc::Unmigrated {
                // reported from the source pass, not by the descent: leave it as found
                return Ok(None);
            }
            docs.insert(key, kept);
            for row in doc.rows {
                source_hashes.push(row.hash);
                let entity = row.entity;
                let (row_key, kept) = KeptRow::keyed(row, &doc.document_id, key);
                rows.entry(entity).or_default().insert(row_key, kept);
            }
        }
        let (lo, hi) = (key, (key.as_u128().checked_add(1)).map(Uuid::from_u128));
        let mut status = HashMap::new();
        let mut items = Vec::new();
        let mut pg_hashes = Vec::new();
        for entity in Entity::ALL {
            let src = rows.remove(&entity).unwrap_or_default();
            let compared = self
                .compare_range(entity, lo, hi, src, &docs, &mut status)
                .await?;
            items.extend(compared.items.into_iter().map(|(_, item)| item));
            pg_hashes.extend(compared.pg_hashes);
        }
        order(&mut items);
        source_hashes.sort_unstable();
        pg_hashes.sort_unstable();
        Ok(Some((items, (source_hashes, pg_hashes))))
    }
}
