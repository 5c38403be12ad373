//! Reading the source for verification: every document streamed page by page, mapped through
//! the backfill's own mapping, checked against the quarantine, and turned into the rows it
//! should have produced in PostgreSQL.

use std::collections::{HashMap, HashSet};

use futures::{Stream, TryStreamExt as _};
use mystira_cosmos_codec::codec::{self, Container};
use sqlx::PgPool;
use uuid::Uuid;

use super::VerifyError;
use super::tables::{self, SourceRow};
use mystira_copy::mapping::{Mapped, map_document_hinted};
use mystira_copy::source::{DocumentSource, SourceDocument, SourceError, UnparsedPage};

/// A container read page by page from its beginning.
pub(crate) struct Pages<'a> {
    source: &'a dyn DocumentSource,
    container: &'a str,
    size: usize,
    position: Option<serde_json::Value>,
    done: bool,
}

impl<'a> Pages<'a> {
    pub(crate) fn new(source: &'a dyn DocumentSource, container: &'a str, size: usize) -> Self {
        Self {
            source,
            container,
            size: size.max(1),
            position: None,
            done: false,
        }
    }

    /// The next page, possibly not parsed yet: the reader reads one page at a time, and
    /// parsing is left to the threads that map pages, so it does not hold the next read up.
    pub(crate) async fn next(&mut self) -> Result<Option<UnparsedPage>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .source
            .read_page_unparsed(self.container, self.position.as_ref(), self.size)
            .await?;
        match &page.next {
            Some(next) => self.position = Some(next.clone()),
            None => self.done = true,
        }
        Ok(Some(page))
    }
}

/// What became of a source document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocState {
    /// Mapped, and should be in PostgreSQL.
    Mapped,
    /// In `migration.quarantine` (open) for this version or a newer one.
    Quarantined { reason: String },
    /// Cannot be mapped, and not in quarantine: the backfill has not seen this version.
    Unmigrated { code: String },
}

/// One source document as verification sees it.
#[derive(Debug)]
pub(crate) struct ReadDoc {
    pub container: &'static str,
    pub document_id: String,
    /// The PostgreSQL key of the document (unknown for a line that is not a document).
    pub document_key: Option<Uuid>,
    pub ts: i64,
    pub state: DocState,
    /// Whether the mapping produced a document (so the writer ranks it among the documents of
    /// its key), whatever became of it then: true for mapped and quarantined documents that
    /// decoded, false for rejected ones.
    pub contender: bool,
    /// The rows it should have produced (only when [`DocState::Mapped`]).
    pub rows: Vec<SourceRow>,
    /// The document as the source holds it (`Null` for a line that is not a document), for
    /// the round trip.
    pub raw: serde_json::Value,
}

/// Which documents a pass keeps, by key (a cheap test made before mapping, on the thread
/// that maps).
pub(crate) type Wanted = std::sync::Arc<dyn Fn(Uuid) -> bool + Send + Sync>;

/// What a pass needs of each [`ReadDoc`] besides its identity, state and rows' hashes. What it
/// does not need is dropped on the thread that mapped the page, not on the one that hands the
/// documents over in order (freeing a page's documents costs about as much as reading them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    /// The rows' canonical values ([`SourceRow::values`]), for a field-level diff.
    pub values: bool,
    /// The document as the source holds it ([`ReadDoc::raw`]), for the round trip.
    pub raw: bool,
}

impl Keep {
    /// Hashes only (the aggregates, the duplicates' second read).
    pub(crate) const HASHES: Keep = Keep {
        values: false,
        raw: false,
    };
}

impl ReadDoc {
    pub(crate) fn bucket(&self) -> Option<u8> {
        self.document_key.map(|k| k.as_bytes()[0])
    }
}

fn sql(e: sqlx::Error) -> VerifyError {
    VerifyError::Store(mystira_postgres::map_sqlx_error("verify", e))
}

/// Pages a pass keeps in flight besides the one being read: each is decoded, mapped and hashed
/// on a blocking thread (so every core works), its quarantine and account look-ups overlap
/// the others', and they are handed over strictly in source order. Memory: this many pages.
pub(crate) const PAGES_IN_FLIGHT: usize = 3;

/// Every page of `container`, read in order, as [`ReadDoc`]s (see [`read_docs`]), in source
/// order, with up to [`PAGES_IN_FLIGHT`] pages mapped concurrently while the next is read. The
/// result is the same as reading and mapping one page after the other: only the work overlaps.
pub(crate) fn doc_pages<'a>(
    pool: &'a PgPool,
    source: &'a dyn DocumentSource,
    container: &'static str,
    page_size: usize,
    wanted: Option<Wanted>,
    keep: Keep,
) -> impl Stream<Item = Result<Vec<ReadDoc>, VerifyError>> + Send + 'a {
    let pages = Pages::new(source, container, page_size);
    futures::stream::try_unfold(pages, |mut pages| async move {
        let page = pages.next().await.map_err(VerifyError::Source)?;
        Ok::<_, VerifyError>(page.map(|docs| (docs, pages)))
    })
    .map_ok(move |page| read_docs(pool, container, page, wanted.clone(), keep))
    .try_buffered(PAGES_IN_FLIGHT)
}

/// Runs CPU-bound work on a blocking thread (a panic there is a panic here).
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // the runtime is shutting down: nothing will wait for this result
            Err(e) => panic!("verification work was cancelled: {e}"),
        },
    }
}

/// Parses and maps one page of `container` (one of [`mystira_copy::CONTAINERS`]). With
/// `wanted`, only documents whose key it accepts are mapped (the key is read from the id alone,
/// far cheaper than mapping): the descent's passes skip the rest of the source. Parsing,
/// mapping, the rows and their hashes are computed on blocking threads; the page's quarantine
/// entries and the accounts its profiles reference are asked of PostgreSQL in between.
pub(crate) async fn read_docs(
    pool: &PgPool,
    container: &'static str,
    page: UnparsedPage,
    wanted: Option<Wanted>,
    keep: Keep,
) -> Result<Vec<ReadDoc>, VerifyError> {
    let (mut out, mapped) = off_thread(move || {
        let kind = Container::from_name(container);
        // A line whose key can be read from its text alone, and is not wanted, is not parsed:
        // the duplicates' pass wants a handful of keys of the whole source.
        let unwanted = |text: &[u8]| match (&wanted, kind) {
            (Some(wanted), Some(kind)) => {
                codec::document_key_of_json(kind, text).is_some_and(|key| !wanted(key))
            }
            _ => false,
        };
        // parsed one at a time and mapped at once, while the parse is still in the cache
        let docs = page
            .into_documents(unwanted)
            .filter(|(doc, _)| match (doc, &wanted) {
                (SourceDocument::Document(raw), Some(wanted)) => kind
                    .and_then(|k| codec::document_ref(k, raw))
                    .is_none_or(|r| wanted(r.key)),
                _ => true,
            });
        map_page(container, docs, keep.raw)
    })
    .await;

    // Open quarantine entries of this page. An entry for an older version than the source's
    // does not cover it: the document changed since, and the change has not been copied.
    // Read by key, one probe each, whatever the statistics (see
    // `bookkeeping::resolve_quarantined`).
    let ids: Vec<String> = out.iter().map(|d| d.document_id.clone()).collect();
    let quarantined: HashMap<String, (String, Option<i64>)> =
        mystira_postgres::bookkeeping::open_entries(pool, container, &ids)
            .await?
            .into_iter()
            .map(|(id, reason, ts)| (id, (reason, ts)))
            .collect();
    for doc in &mut out {
        if let Some((reason, q_ts)) = quarantined.get(&doc.document_id)
            && q_ts.is_none_or(|q| doc.ts <= q)
        {
            doc.state = DocState::Quarantined {
                reason: reason.clone(),
            };
        }
    }

    // The writer attaches a profile only to an account that exists: ask the same question.
    let referenced: Vec<Uuid> = out
        .iter()
        .zip(&mapped)
        .filter(|(d, _)| d.state == DocState::Mapped)
        .filter_map(|(_, m)| match m {
            Some(Mapped::Profile(p)) => p.profile.account_id,
            _ => None,
        })
        .collect();
    let existing: HashSet<Uuid> = if referenced.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar("select id from accounts where id = any($1)")
            .bind(&referenced)
            .fetch_all(pool)
            .await
            .map_err(sql)?
            .into_iter()
            .collect()
    };

    Ok(off_thread(move || {
        for (doc, m) in out.iter_mut().zip(mapped) {
            if doc.state != DocState::Mapped {
                continue;
            }
            doc.rows = match m {
                Some(Mapped::Account(d)) => tables::account_rows(&d),
                Some(Mapped::Profile(d)) => {
                    let attached = d.profile.account_id.is_some_and(|a| existing.contains(&a));
                    tables::profile_rows(&d, attached)
                }
                Some(Mapped::Signup(d)) => tables::signup_rows(&d),
                _ => Vec::new(),
            };
            if !keep.values {
                for row in &mut doc.rows {
                    row.values = Vec::new();
                }
            }
        }
        out
    })
    .await)
}

/// The mapping of one page's documents (CPU only), each with whether it may hold a NUL
/// character: each as a [`ReadDoc`] without rows yet, and what the mapping made of it.
fn map_page(
    container: &'static str,
    docs: impl Iterator<Item = (SourceDocument, bool)>,
    keep_raw: bool,
) -> (Vec<ReadDoc>, Vec<Option<Mapped>>) {
    let kind = Container::from_name(container);
    let mut out = Vec::with_capacity(docs.size_hint().0);
    let mut mapped = Vec::with_capacity(docs.size_hint().0);
    for (doc, may_hold_nul) in docs {
        let raw = match doc {
            SourceDocument::Malformed { locator, .. } => {
                out.push(ReadDoc {
                    container,
                    document_id: locator,
                    document_key: None,
                    ts: 0,
                    state: DocState::Unmigrated {
                        code: "malformed_line".into(),
                    },
                    contender: false,
                    rows: Vec::new(),
                    raw: serde_json::Value::Null,
                });
                mapped.push(None);
                continue;
            }
            SourceDocument::Document(raw) => raw,
        };
        // the backfill's name for a document without a usable id (only computed for one:
        // it hashes the whole document)
        let m = map_document_hinted(container, &raw, may_hold_nul, || {
            mystira_copy::mapping::content_locator(container, &raw)
        });
        let (document_id, document_key, ts, state) = match &m {
            Mapped::Account(d) => (
                d.version.document_id.clone(),
                Some(d.account.id),
                d.version.ts,
                DocState::Mapped,
            ),
            Mapped::Profile(d) => (
                d.version.document_id.clone(),
                Some(d.profile.id),
                d.version.ts,
                DocState::Mapped,
            ),
            Mapped::Signup(d) => (
                d.version.document_id.clone(),
                Some(d.signup.id),
                d.version.ts,
                DocState::Mapped,
            ),
            Mapped::Reject {
                document_id,
                code,
                ts,
                ..
            } => (
                document_id.clone(),
                kind.and_then(|k| codec::document_ref(k, &raw))
                    .map(|r| r.key),
                ts.unwrap_or(0),
                DocState::Unmigrated {
                    code: (*code).to_owned(),
                },
            ),
        };
        let contender = !matches!(m, Mapped::Reject { .. });
        out.push(ReadDoc {
            container,
            document_id,
            document_key,
            ts,
            state,
            contender,
            rows: Vec::new(),
            raw: if keep_raw {
                raw
            } else {
                serde_json::Value::Null
            },
        });
        mapped.push(Some(m));
    }
    (out, mapped)
}
