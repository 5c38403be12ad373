//! Two source documents of one container that map to one key (EF Core 8's `"id":
//! "Account|<guid>"` and EF Core 9's `"id": "<guid>"`, or one GUID in two letter cases): only
//! one can own the row. The bulk writer's rule decides which (the greatest by `_ts`, then
//! whether the id is the key's canonical lower-case text, then the id: see
//! `mystira_postgres::bulk::SUPERSEDED_DUPLICATE`), and verification applies the same rule to
//! the source: the winner is compared with PostgreSQL, each loser is reported on its own,
//! `superseded_duplicate` when the quarantine records it and `superseded_not_recorded` (drift)
//! when nothing does.
//!
//! Finding them: the first pass records a 64-bit fingerprint of every contender's key
//! ([`SeenKeys`], 8 bytes a document: 29 MB for the 3.6 million keyed documents of a million
//! accounts), and sorts them once at its end; a fingerprint recorded twice is a *candidate*.
//! Only when there are candidates does a second pass read their documents again, resolve each
//! key with two or more documents, and take the losers' rows back out of the first pass's
//! aggregates (they are sums, so a row subtracts exactly). Two keys share a fingerprint with a
//! probability of about n²/2⁶⁵ (3.5 × 10⁻⁵ at 36 million documents): a shared one costs a
//! little reading, never a wrong result, as the second pass groups by the key itself.
//!
//! It was a fixed 8 MiB bitmap with two bits a key until 2026-12-07. Constant memory, but at a
//! million accounts a key found its two bits already set by others about one time in 280:
//! 12,668 false candidates in a source with no duplicate at all, and a second read of the
//! whole source (15 s of a 181 s verify) to learn that. Memory that follows the data, 8 bytes
//! a document, buys a second pass that runs only for a real duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use uuid::Uuid;

use super::canonical::{Aggregate, RowHash};
use super::read::{DocState, Keep, ReadDoc};
use super::{DriftItem, DriftKind, Entity, Verifier, VerifyError};

/// Keys that may have more than one document: (container, fingerprint of the key).
pub(crate) type Candidates = HashSet<(&'static str, u64)>;

/// A key's fingerprint: 64 bits of a SipHash of its 128 (fixed keys, so the same in every
/// run). Keys can be structured (a key made from a non-GUID id, sequential GUIDs), so the bits
/// are mixed rather than folded.
pub(crate) fn fingerprint(key: Uuid) -> u64 {
    let mut h = DefaultHasher::new();
    key.as_u128().hash(&mut h);
    h.finish()
}

/// The fingerprints of the keys seen so far, per container, in the order seen.
#[derive(Default)]
pub(crate) struct SeenKeys {
    by_container: HashMap<&'static str, Vec<u64>>,
}

impl SeenKeys {
    /// Records a contender's key.
    pub(crate) fn insert(&mut self, container: &'static str, key: Uuid) {
        self.by_container
            .entry(container)
            .or_default()
            .push(fingerprint(key));
    }

    /// The fingerprints recorded more than once in a container.
    pub(crate) fn candidates(self) -> Candidates {
        let mut out = Candidates::default();
        for (container, mut prints) in self.by_container {
            prints.sort_unstable();
            for pair in prints.windows(2) {
                if pair[0] == pair[1] {
                    out.insert((container, pair[0]));
                }
            }
        }
        out
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
    rows: Vec<(Entity, u8, RowHash)>,
}

impl Verifier<'_> {
    /// Reads the candidates' documents again, and for every key with two or more: keeps the
    /// winner, reports each loser and takes what the first pass counted for it back out.
    pub(super) async fn resolve_duplicates(
        &mut self,
        candidates: &Candidates,
        aggs: &mut HashMap<(Entity, u8), Aggregate>,
    ) -> Result<(), VerifyError> {
        let prints: HashSet<u64> = candidates.iter().map(|(_, p)| *p).collect();
        let wanted: super::read::Wanted =
            std::sync::Arc::new(move |k: Uuid| prints.contains(&fingerprint(k)));
        let mut groups: BTreeMap<(&'static str, Uuid), Vec<Contender>> = BTreeMap::new();
        self.each_doc(Some(wanted), Keep::HASHES, |v, doc: ReadDoc| {
            let Some(key) = doc.document_key else { return };
            if !doc.contender
                || !v.in_slice(doc.bucket())
                || !candidates.contains(&(doc.container, fingerprint(key)))
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
                        .map(|r| (r.entity, r.bucket(), r.hash))
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
                            aggs.entry((*entity, *bucket)).or_default().sub(*hash);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_seen_twice_in_one_container_is_the_only_candidate() {
        let twice = Uuid::new_v4();
        let mut seen = SeenKeys::default();
        seen.insert("Accounts", twice);
        seen.insert("Accounts", Uuid::new_v4());
        seen.insert("UserProfiles", twice);
        seen.insert("Accounts", twice);
        let candidates = seen.candidates();
        assert_eq!(
            candidates,
            Candidates::from([("Accounts", fingerprint(twice))]),
            "the same key in two containers is two rows, not a duplicate"
        );
    }

    /// The bitmap this replaced gave some 290 false candidates at this many keys (expected:
    /// two bits each in 2^26), any one of them a reason to read the whole source again.
    #[test]
    fn distinct_keys_give_no_candidate_even_by_the_million() {
        let mut seen = SeenKeys::default();
        for i in 0..1_000_000_u128 {
            // structured keys, as sequential GUIDs are: one counter, the rest fixed
            seen.insert("UserProfiles", Uuid::from_u128(0x1234_5678_u128 << 96 | i));
        }
        assert!(seen.candidates().is_empty());
    }
}
