//! Applying Cosmos documents to PostgreSQL: the one path by which a document as Cosmos stores
//! it (with `_ts` and `_etag`) reaches the domain tables. The backfill, quarantine retry,
//! verify's repair, the dual-write router (phase 1), the retry-journal replay and the
//! replicator all use it, so every copy is decoded by the same codec, mapped the same way,
//! guarded by the same source version (an older copy never overwrites newer data) and
//! quarantined for the same reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use mystira_domain::RepoError;

use mystira_postgres::bookkeeping::{self, QuarantinedDocument};
use mystira_postgres::bulk::{
    self, AccountDocument, BulkDocument, ProfileDocument, SignupDocument, WriteOutcome,
};
use mystira_postgres::journal::{JournalOp, JournalRecord};
use sqlx::PgPool;

use crate::containers::ContainerCounts;
use crate::mapping::{Mapped, content_locator, map_document_with};
use crate::source::SourceDocument;

/// Whether a transient PostgreSQL failure is retried here or returned at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// Up to six attempts with exponential back-off (about 6 s in all): jobs that can wait.
    Backoff,
    /// None: the caller has a durable place to put the document instead (the router's retry
    /// journal), and a request must not wait seconds for a database that is down.
    None,
}

/// A page decoded and mapped: the documents of each kind, their raw documents (kept only until
/// the write says whether they need the quarantine), and what cannot be migrated.
#[derive(Debug, Default)]
pub struct MappedPage {
    pub accounts: Vec<AccountDocument>,
    pub profiles: Vec<ProfileDocument>,
    pub signups: Vec<SignupDocument>,
    pub raw_by_id: BTreeMap<String, serde_json::Value>,
    pub rejected: Vec<Rejected>,
}

/// A document (or line) that cannot be migrated, with its quarantine reason.
#[derive(Debug)]
pub struct Rejected {
    /// Its id, or where it is when it has none.
    pub document_id: String,
    pub code: &'static str,
    pub message: String,
    pub document: serde_json::Value,
    pub ts: Option<i64>,
}

impl Rejected {
    pub fn entry<'a>(&'a self, container: &'a str) -> QuarantinedDocument<'a> {
        QuarantinedDocument {
            container,
            document_id: &self.document_id,
            reason_code: self.code,
            message: &self.message,
            document: &self.document,
            source_ts: self.ts,
        }
    }
}

/// Decodes and maps a page (the same code for every path), counting each document read.
pub fn map_page(
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
) -> MappedPage {
    let mut page = MappedPage::default();
    for doc in documents {
        counts.read += 1;
        let raw = match doc {
            SourceDocument::Document(v) => v,
            SourceDocument::Malformed {
                locator,
                message,
                raw,
            } => {
                page.rejected.push(Rejected {
                    document_id: locator,
                    code: "malformed_line",
                    message,
                    document: serde_json::json!({ "malformed_line": raw }),
                    ts: None,
                });
                continue;
            }
        };
        // a document without a usable id is named by a hash of its content, computed only
        // for such a document (it serialises the whole document)
        let id = match map_document_with(container, &raw, || content_locator(container, &raw)) {
            Mapped::Account(d) => {
                let id = d.version.document_id.clone();
                page.accounts.push(*d);
                id
            }
            Mapped::Profile(d) => {
                let id = d.version.document_id.clone();
                page.profiles.push(*d);
                id
            }
            Mapped::Signup(d) => {
                let id = d.version.document_id.clone();
                page.signups.push(*d);
                id
            }
            Mapped::Reject {
                document_id,
                code,
                message,
                ts,
            } => {
                page.rejected.push(Rejected {
                    document_id,
                    code,
                    message,
                    document: raw,
                    ts,
                });
                continue;
            }
        };
        page.raw_by_id.insert(id, raw);
    }
    page
}

/// [`map_page`] on the blocking pool. Decoding is the client's CPU work; the workers of a
/// process are futures of one task, so decoding on the runtime would run one page at a time
/// and leave the connection idle meanwhile. Off the runtime, one worker's page decodes while
/// another's is written.
pub async fn map_page_apart(
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
) -> MappedPage {
    let container = container.to_owned();
    let (page, read) = tokio::task::spawn_blocking(move || {
        let mut read = ContainerCounts::default();
        let page = map_page(&container, documents, &mut read);
        (page, read)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    counts.add(&read);
    page
}

/// Drops a page's documents on the blocking pool: freeing a page of JSON trees is a
/// noticeable share of the client's CPU, and nothing waits for it.
pub fn drop_apart(page: MappedPage) {
    tokio::task::spawn_blocking(move || drop(page));
}

/// Maps and writes one page; quarantines what cannot be migrated. A document held back by a
/// pending outbox row ([`WriteOutcome::HeldBack`]) is counted unchanged: for a job that copies,
/// PostgreSQL's undelivered change is the newer side (see [`write_page_held_back`]).
pub async fn write_page(
    pool: &PgPool,
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
    retries: Retries,
) -> Result<(), RepoError> {
    write_page_held_back(pool, container, documents, counts, retries)
        .await
        .map(|_| ())
}

/// [`write_page`], returning the ids of the documents the outbox rule held back: newer than
/// PostgreSQL's copy, but their aggregate has a PostgreSQL change Cosmos has not taken yet.
/// The router's phase-1 copy needs them: it must not acknowledge such a write.
pub async fn write_page_held_back(
    pool: &PgPool,
    container: &str,
    documents: Vec<SourceDocument>,
    counts: &mut ContainerCounts,
    retries: Retries,
) -> Result<Vec<String>, RepoError> {
    let page = map_page_apart(container, documents, counts).await;
    for r in &page.rejected {
        quarantine(
            pool,
            retries,
            container,
            &r.document_id,
            r.code,
            &r.message,
            &r.document,
            r.ts,
        )
        .await?;
        counts.quarantined += 1;
    }
    let raw = &page.raw_by_id;
    let mut held_back = Vec::new();
    let held = &mut held_back;
    write_kind(pool, retries, container, &page.accounts, raw, counts, held).await?;
    write_kind(pool, retries, container, &page.profiles, raw, counts, held).await?;
    write_kind(pool, retries, container, &page.signups, raw, counts, held).await?;
    drop_apart(page);
    Ok(held_back)
}

async fn write_kind<D: BulkDocument>(
    pool: &PgPool,
    retries: Retries,
    container: &str,
    docs: &[D],
    raw_by_id: &BTreeMap<String, serde_json::Value>,
    counts: &mut ContainerCounts,
    held_back: &mut Vec<String>,
) -> Result<(), RepoError> {
    if docs.is_empty() {
        return Ok(());
    }
    let batch = with_retry(retries, || bulk::write_batch(pool, docs)).await?;
    counts.superseded += batch.displaced.len() as u64;
    for (doc, outcome) in docs.iter().zip(batch.outcomes) {
        let (code, message) = match outcome {
            WriteOutcome::Written => {
                counts.written += 1;
                continue;
            }
            WriteOutcome::Unchanged => {
                counts.unchanged += 1;
                continue;
            }
            WriteOutcome::HeldBack => {
                counts.unchanged += 1;
                held_back.push(doc.version().document_id.clone());
                continue;
            }
            WriteOutcome::Superseded { by } => (
                bulk::SUPERSEDED_DUPLICATE,
                format!(
                    "superseded by document `{by}`, a newer document of the same row \
                     (the newest by _ts owns it; on a tie, the one in EF Core 9's id form)"
                ),
            ),
            WriteOutcome::IdentityTaken { by: Some(keeper) } => (
                bulk::DUPLICATE_AUTH0_USER_ID,
                format!(
                    "its auth0_user_id is also claimed by account document `{keeper}`, which \
                     keeps it (the newest by _ts keeps a login; on a tie, the greater document \
                     id)"
                ),
            ),
            WriteOutcome::IdentityTaken { by: None } => (
                bulk::DUPLICATE_AUTH0_USER_ID,
                "its auth0_user_id is held by an account PostgreSQL holds no source version \
                 for (written by the service, or changed there and not yet in Cosmos), which a \
                 copy never displaces"
                    .to_owned(),
            ),
            WriteOutcome::Failed(e) => (failure_code(&e), e.to_string()),
        };
        let id = &doc.version().document_id;
        let raw = raw_by_id.get(id).cloned().unwrap_or_default();
        quarantine(
            pool,
            retries,
            container,
            id,
            code,
            &message,
            &raw,
            Some(doc.version().ts),
        )
        .await?;
        counts.quarantined += 1;
    }
    Ok(())
}

/// What copying one write that Cosmos took did (the router's phase-1 copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Written, already there, or on record in the quarantine: PostgreSQL has dealt with it.
    Landed,
    /// Held back by a pending outbox row of its aggregate ([`WriteOutcome::HeldBack`]).
    HeldBack,
}

/// Copies one write Cosmos took (a document, or a delete) into PostgreSQL, saying whether the
/// outbox rule held it back. A delete is never held back: it removes the rows, and a pending
/// outbox row then delivers the removal.
pub async fn copy_record(pool: &PgPool, record: &JournalRecord) -> Result<Copied, RepoError> {
    let document = match &record.op {
        JournalOp::Upsert { document } => document,
        JournalOp::Delete { key, source_ts } => {
            bulk::delete_document(
                pool,
                &record.container,
                &record.document_id,
                *key,
                *source_ts,
            )
            .await?;
            return Ok(Copied::Landed);
        }
    };
    let mut counts = ContainerCounts::default();
    let held_back = write_page_held_back(
        pool,
        &record.container,
        vec![SourceDocument::Document(document.clone())],
        &mut counts,
        Retries::None,
    )
    .await?;
    Ok(if held_back.is_empty() {
        Copied::Landed
    } else {
        Copied::HeldBack
    })
}

pub fn failure_code(e: &RepoError) -> &'static str {
    use mystira_domain::error::ConflictKind;
    match e {
        RepoError::Invalid(v) => v.code(),
        RepoError::Conflict { kind, .. } => match kind {
            ConflictKind::DuplicateAuth0UserId => bulk::DUPLICATE_AUTH0_USER_ID,
            ConflictKind::DuplicateId => "duplicate_id",
            ConflictKind::MissingReference => "missing_reference",
            _ => "conflict",
        },
        _ => "store_error",
    }
}

#[allow(clippy::too_many_arguments)]
async fn quarantine(
    pool: &PgPool,
    retries: Retries,
    container: &str,
    document_id: &str,
    reason_code: &str,
    message: &str,
    document: &serde_json::Value,
    source_ts: Option<i64>,
) -> Result<(), RepoError> {
    let entry = QuarantinedDocument {
        container,
        document_id,
        reason_code,
        message,
        document,
        source_ts,
    };
    with_retry(retries, || bookkeeping::quarantine(pool, &entry)).await?;
    tracing::debug!(container, reason_code, "document quarantined");
    Ok(())
}

/// Retries a store call that failed transiently, with exponential back-off, a bounded number
/// of times.
pub async fn with_retry<T, F, Fut>(retries: Retries, mut call: F) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RepoError>>,
{
    let attempts: u32 = match retries {
        Retries::Backoff => 6,
        Retries::None => 1,
    };
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match call().await {
            Err(e) if e.is_retryable() && attempt < attempts => {
                tracing::warn!(attempt, error = %e, "transient store error, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}
