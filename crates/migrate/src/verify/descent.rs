//! The descent: the (entity, bucket) pairs whose aggregates differ are read again from the
//! source (keeping only those buckets' documents) and from PostgreSQL (through a key-range
//! predicate), and their rows are compared and the differences classified (missing, extra,
//! changed, stale, ahead). A recheck compares one document's range the same way.

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use uuid::Uuid;

use super::canonical::RowHash;
use super::pg_aggregates::hash_joined;
use super::read::{DocState, Keep, Wanted};
use super::tables::{self, Entity, SourceRow};
use super::{DriftItem, DriftKind, FieldValues, Verifier, VerifyError, sql};

/// A source row kept during descent.
pub(super) struct KeptRow {
    pub(super) document_id: String,
    pub(super) document_key: Uuid,
    pub(super) values: Vec<Option<String>>,
    pub(super) hash: RowHash,
}

impl KeptRow {
    /// The source row `row` of the document `document_id` (key `document_key`), keyed by the
    /// row's key.
    pub(super) fn keyed(row: SourceRow, document_id: &str, document_key: Uuid) -> (String, Self) {
        let kept = Self {
            document_id: document_id.to_owned(),
            document_key,
            values: row.values,
            hash: row.hash,
        };
        (row.key, kept)
    }
}

/// A source document kept during descent (to classify PostgreSQL's rows of it): what became
/// of it ([`DocState`] without the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeptDoc {
    Mapped,
    /// In the quarantine: PostgreSQL's rows of its key are an older copy (of it, or of a
    /// document it superseded), which the app would read instead of the newest version.
    Quarantined,
    /// Not mapped and not in quarantine: reported as unmigrated (drift) already.
    Unmigrated,
}

impl KeptDoc {
    pub(super) fn of(state: &DocState) -> Self {
        match state {
            DocState::Mapped => Self::Mapped,
            DocState::Quarantined { .. } => Self::Quarantined,
            DocState::Unmigrated { .. } => Self::Unmigrated,
        }
    }
}

/// The reason given with a stale copy whose document's newest version is in the quarantine.
pub const NEWER_VERSION_QUARANTINED: &str = "newer version quarantined";

/// Whether PostgreSQL's copy of a document is at the source's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VersionStatus {
    Current,
    Stale,
    Ahead,
}

impl Verifier<'_> {
    /// Examines the differing (entity, bucket) pairs of `chunk`'s buckets.
    pub(super) async fn descend(
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
            docs.insert(key, KeptDoc::of(&doc.state));
            for row in doc.rows {
                let entity = row.entity;
                if differing.contains(&(entity, b)) {
                    let (row_key, kept) = KeptRow::keyed(row, &doc.document_id, key);
                    rows.entry((entity, b)).or_default().insert(row_key, kept);
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
    pub(super) async fn compare_range(
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
        let pg: Vec<(String, Uuid, Option<String>, RowHash)> = {
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
            out.pg_hashes.push(hash);
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
                            reason,
                            source_has_document: doc.is_some(),
                            ..DriftItem::new(entity, kind, Some(key), pg_document_id)
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
                        fields,
                        values: self.opts.show_values.then_some(values),
                        ..DriftItem::new(entity, kind, Some(key), Some(s.document_id))
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
                DriftItem::new(entity, kind, Some(key), Some(s.document_id)),
            ));
        }
        Ok(out)
    }
}

/// What [`Verifier::compare_range`] found: the differences (with their document's key), the
/// rows that matched, and the hashes of PostgreSQL's rows it read (a recheck's fingerprint).
#[derive(Default)]
pub(super) struct Compared {
    pub(super) items: Vec<(Uuid, DriftItem)>,
    pub(super) matched: u64,
    pub(super) pg_hashes: Vec<RowHash>,
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
