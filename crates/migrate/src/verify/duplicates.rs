//! Two source documents of one container that map to one key (EF Core 8's `"id":
//! "Account|<guid>"` and EF Core 9's `"id": "<guid>"`, or one GUID in two letter cases): only
//! one can own the row. The bulk writer's rule decides which (the greatest by `_ts`, then
//! whether the id is the key's canonical lower-case text, then the id: see
//! `mystira_postgres::bulk::SUPERSEDED_DUPLICATE`), and verification applies the same rule to
//! the source: the winner is compared with PostgreSQL, each loser is reported on its own,
//! `superseded_duplicate` when the quarantine records it and `superseded_not_recorded` (drift)
//! when nothing does.
//!
//! Finding them without holding every key in memory: the first pass sets two bits per key in a
//! fixed bitmap ([`SeenKeys`], 8 MiB); a key whose bits were all set already is a *candidate*
//! (a real duplicate, or rarely a false positive). Only when there are candidates does a second
//! pass read their documents again, resolve each key with two or more documents, and take the
//! losers' rows back out of the first pass's aggregates (they are sums, so a row subtracts
//! exactly). A false positive costs a little reading, never a wrong result: its key has one
//! document, and nothing changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use uuid::Uuid;

use super::canonical::Aggregate;
use super::read::{DocState, Keep, ReadDoc};
use super::{DriftItem, DriftKind, Entity, Verifier, VerifyError};

/// Keys that may have more than one document: (container, key).
pub(crate) type Candidates = HashSet<(&'static str, Uuid)>;

/// log2 of the bitmap's size in bits: 2^26 bits = 8 MiB, about 0.1 % false candidates at a
/// million documents.
const BITS_LOG2: u32 = 26;

/// A two-hash bitmap of the keys seen so far.
pub(crate) struct SeenKeys {
    bits: Vec<u64>,
}

impl SeenKeys {
    pub(crate) fn new() -> Self {
        Self {
            bits: vec![0; 1 << (BITS_LOG2 - 6)],
        }
    }

    /// Records a key; true when it may have been seen before.
    pub(crate) fn insert(&mut self, container: &str, key: Uuid) -> bool {
        let mut h = DefaultHasher::new();
        (container, key).hash(&mut h);
        let hash = h.finish();
        let mask = (1u64 << BITS_LOG2) - 1;
        let mut seen = true;
        for bit in [hash & mask, (hash >> 32) & mask] {
            let (word, offset) = ((bit >> 6) as usize, bit & 63);
            seen &= self.bits[word] & (1 << offset) != 0;
            self.bits[word] |= 1 << offset;
        }
        seen
    }
}

/// The writer's rank of a document among the documents of its key (the greatest owns the
/// row). Must agree with `owner_rank` in `mystira_postgres::bulk`.
pub(crate) fn owner_rank(ts: i64, document_id: &str, key: Uuid) -> (i64, bool, &str) {
    (ts, document_id == key.hyphenated().to_string(), document_id)
}

/// A document of a candidate key, as the first pass counted it.
struct Contender {
    document_id: String,
    ts: i64,
    state: DocState,
    /// (entity, bucket, row hash) of the rows the first pass added (when mapped).
    rows: Vec<(Entity, u8, String)>,
}

impl Verifier<'_> {
    /// Reads the candidates' documents again, and for every key with two or more: keeps the
    /// winner, reports each loser and takes what the first pass counted for it back out.
    pub(super) async fn resolve_duplicates(
        &mut self,
        candidates: &Candidates,
        aggs: &mut HashMap<(Entity, u8), Aggregate>,
    ) -> Result<(), VerifyError> {
        let keys: HashSet<Uuid> = candidates.iter().map(|(_, k)| *k).collect();
        let wanted: super::read::Wanted = std::sync::Arc::new(move |k: Uuid| keys.contains(&k));
        let mut groups: BTreeMap<(&'static str, Uuid), Vec<Contender>> = BTreeMap::new();
        self.each_doc(Some(wanted), Keep::HASHES, |v, doc: ReadDoc| {
            let Some(key) = doc.document_key else { return };
            if !doc.contender
                || !v.in_slice(doc.bucket())
                || !candidates.contains(&(doc.container, key))
            {
                return;
            }
            groups
                .entry((doc.container, key))
                .or_default()
                .push(Contender {
                    rows: doc
                        .rows
                        .iter()
                        .map(|r| (r.entity, r.bucket(), r.hash.clone()))
                        .collect(),
                    document_id: doc.document_id,
                    ts: doc.ts,
                    state: doc.state,
                });
        })
        .await?;

        for ((container, key), docs) in groups {
            if docs.len() < 2 {
                continue;
            }
            // the first of the greatest, so that a second copy of the winner's own id (a
            // source read twice) is set aside like any other
            let mut best = 0;
            for (i, d) in docs.iter().enumerate() {
                let b = &docs[best];
                if owner_rank(d.ts, &d.document_id, key) > owner_rank(b.ts, &b.document_id, key) {
                    best = i;
                }
            }
            let winner = docs[best].document_id.clone();
            let main = Entity::of_container(container).unwrap_or(Entity::Accounts);
            for (i, d) in docs.into_iter().enumerate() {
                if i == best {
                    continue;
                }
                let same_document = d.document_id == winner;
                // undo what the first pass counted for it
                let kind = match d.state {
                    DocState::Mapped => {
                        for (entity, bucket, hash) in &d.rows {
                            aggs.entry((*entity, *bucket)).or_default().sub(hash);
                        }
                        (DriftKind::SupersededNotRecorded, None)
                    }
                    DocState::Quarantined { reason } => {
                        if let Some(i) = self.items.iter().position(|i| {
                            i.kind == DriftKind::Quarantined
                                && i.entity == main
                                && i.cosmos_id.as_deref() == Some(d.document_id.as_str())
                        }) {
                            self.items.swap_remove(i);
                            let c = self.counts.entry(main).or_default();
                            c.quarantined = c.quarantined.saturating_sub(1);
                        }
                        (DriftKind::SupersededDuplicate, Some(reason))
                    }
                    // not a contender: filtered out above
                    DocState::Unmigrated { .. } => continue,
                };
                if same_document {
                    // another copy of the winner: counted once, as the writer writes it once
                    continue;
                }
                self.items.push(DriftItem {
                    reason: kind.1.or_else(|| Some(format!("superseded by `{winner}`"))),
                    ..DriftItem::new(
                        main,
                        kind.0,
                        Some(key.to_string()),
                        Some(d.document_id.clone()),
                    )
                });
                self.losers.insert((container, d.document_id));
            }
        }
        Ok(())
    }
}
