//! Retrying quarantined documents after the data or the code was fixed: each open entry's
//! stored document goes through the same mapping and writer as the backfill. A document that
//! now passes lands and its entry is resolved; one that still fails stays, with its new reason.

use mystira_domain::RepoError;
use serde::Serialize;
use sqlx::PgPool;

use crate::apply::{Retries, write_page};
use crate::containers::ContainerCounts;
use crate::source::SourceDocument;
use mystira_postgres::bookkeeping;

/// What a retry did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RetryReport {
    pub retried: u64,
    /// Now in PostgreSQL (entry resolved).
    pub resolved: u64,
    /// Still failing (entry updated with the current reason).
    pub still_quarantined: u64,
    /// Lines of export files that were not JSON: there is no document to retry; fix the file
    /// and migrate it again.
    pub not_retryable: u64,
}

/// Retries every open entry (of one container / reason, if given).
pub async fn retry_quarantined(
    pool: &PgPool,
    container: Option<&str>,
    reason_code: Option<&str>,
) -> Result<RetryReport, RepoError> {
    const PAGE: i64 = 500;
    let mut report = RetryReport::default();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = bookkeeping::open_quarantined_documents(
            pool,
            container,
            reason_code,
            after.as_ref().map(|(c, d)| (c.as_str(), d.as_str())),
            PAGE,
        )
        .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.0.clone(), last.1.clone()));
        // one container at a time: the writer works per container
        let mut by_container: std::collections::BTreeMap<String, Vec<SourceDocument>> =
            std::collections::BTreeMap::new();
        for (c, _, document) in page {
            if document.get("malformed_line").is_some() {
                report.not_retryable += 1;
                continue;
            }
            by_container
                .entry(c)
                .or_default()
                .push(SourceDocument::Document(document));
        }
        for (c, docs) in by_container {
            let mut counts = ContainerCounts::default();
            write_page(pool, &c, docs, &mut counts, Retries::Backoff).await?;
            report.retried += counts.read;
            report.resolved += counts.written + counts.unchanged;
            report.still_quarantined += counts.quarantined;
        }
    }
    Ok(report)
}
