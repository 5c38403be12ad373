//! The live Cosmos source: a database read through the SDK in pages with continuation tokens.
//! How a live container is split into ranges and read range by range is in
//! [`super::live_ranges`].

use async_trait::async_trait;

use super::{DocumentSource, RangePlan, SourceDocument, SourceError, SourcePage};

/// A live Cosmos database, read through the official SDK in pages with continuation tokens
/// (the position saved in the checkpoint is the token).
///
/// # Ranges of a live container
/// [`DocumentSource::plan_ranges`] splits a container first by its feed ranges (one per
/// physical partition, `read_feed_ranges`; a server that cannot answer that call, or answers
/// with none, is read as one feed range covering everything), and, where there are fewer feed
/// ranges than ranges asked for, each feed range further by `_ts` into intervals
/// `[..., b1)`, `[b1, b2)`, ..., `[bk, N]` between its oldest and newest `_ts` (`N`) at
/// planning. A range is read with `select * from c where <its _ts interval> order by c._ts` in
/// its feed range, resumed from the SDK's continuation token, which the service (and the test
/// server) resumes at a position in (`_ts`, `_rid`) order.
///
/// # The rule: every document once, none missed while the run goes
/// - Planning takes, per feed range, the position of its change feed *now* (`changes_after`),
///   and only then reads its newest `_ts` `N`. So every document is either unchanged since
///   that position, and then has a `_ts` of at most `N`, or changed after it, and then is in
///   the change feed after it.
/// - The intervals of a feed range cover every `_ts` up to `N` once, and a document's
///   position (`_ts`, `_rid`) is fixed while it is not written (`_rid` is fixed for its life):
///   the first passes read every unchanged document exactly once, whatever the number of
///   ranges, workers or pages.
/// - The last range of a feed range (planned without an end) then reads the **final pass**:
///   the feed range's change feed (latest version) from `changes_after` until it is caught
///   up. It starts only once every bounded range of the container is done (the backfill waits
///   for them, [`DocumentSource::awaits_bounded_ranges`]; bounded ranges are numbered first,
///   so they are taken first). Every document written after planning and before the final
///   pass catches up is read there, at that version or a newer one; writes after that point
///   are left to replication (`replicate`), as are deletes.
/// - So a document is read twice only when it was written during the run (or in the second
///   of planning) and a first pass read it too: its two reads are counted (`read`), the
///   version-guarded writes count an older or equal second copy `unchanged`, and the initial
///   load sets it aside for its upsert pass. A container nobody writes while it is copied is
///   read once, document by document.
/// - A server without a change feed (planning cannot take its position) gets the earlier
///   final pass: the last range has no upper `_ts` bound, and its final pass reads again every
///   document with `_ts` at or after `N` (`final_from`), which reads the documents of the
///   newest seconds twice. Ranges planned that way by an earlier version are read that way.
#[derive(Debug)]
pub struct CosmosSource {
    pub(super) store: mystira_cosmos_store::CosmosStore,
}

impl CosmosSource {
    pub fn new(store: mystira_cosmos_store::CosmosStore) -> Self {
        Self { store }
    }
}

pub(super) fn cosmos_err(e: mystira_cosmos_store::Error) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

#[async_trait]
impl DocumentSource for CosmosSource {
    fn describe(&self) -> String {
        format!("cosmos database {}", self.store.database_name())
    }

    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        match self.store.container(container).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == mystira_cosmos_store::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(cosmos_err(e)),
        }
    }

    async fn read_page(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let resume = match position {
            None => None,
            Some(serde_json::Value::String(t)) => {
                Some(mystira_cosmos_store::ResumeToken::from_string(t.clone()))
            }
            Some(_) => {
                return Err(SourceError::BadPosition {
                    container: container.to_owned(),
                    message: "a Cosmos position is a continuation token string".into(),
                });
            }
        };
        let spec = mystira_cosmos_store::QuerySpec::new("select * from c");
        let (documents, token) = self.query_page(container, spec, resume, max).await?;
        Ok(SourcePage {
            documents,
            next: token.map(serde_json::Value::String),
        })
    }

    fn is_live(&self) -> bool {
        true
    }

    async fn read_documents_by_id(
        &self,
        container: &str,
        id: &str,
    ) -> Result<Vec<SourceDocument>, SourceError> {
        // a query, not a point read: the partition key (an email for pending sign-ups) is not
        // known to the caller, and a document id may be in more than one partition
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let spec = mystira_cosmos_store::QuerySpec::new("select * from c where c.id = @id")
            .param("@id", id);
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, None, 10);
        let mut documents = Vec::new();
        while let Some(page) = pages.next_page().await.map_err(cosmos_err)? {
            documents.extend(page.items.into_iter().map(SourceDocument::Document));
        }
        Ok(documents)
    }

    async fn plan_ranges(&self, container: &str, n: usize) -> Result<Vec<RangePlan>, SourceError> {
        self.plan_live_ranges(container, n).await
    }

    fn awaits_bounded_ranges(
        &self,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
    ) -> bool {
        super::live_ranges::awaits_bounded_ranges(range, position)
    }

    async fn read_range_page(
        &self,
        container: &str,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        self.read_live_range_page(container, range, position, max)
            .await
    }
}

impl CosmosSource {
    /// The next non-empty page of `spec` from `resume` and the token after it, or no documents
    /// and `None` when the query is exhausted.
    pub(super) async fn query_page(
        &self,
        container: &str,
        spec: mystira_cosmos_store::QuerySpec,
        resume: Option<mystira_cosmos_store::ResumeToken>,
        max: usize,
    ) -> Result<(Vec<SourceDocument>, Option<String>), SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let size = u32::try_from(max).unwrap_or(u32::MAX);
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, resume, size);
        // Pages may come back empty before the end; read until one has documents or the query
        // is exhausted.
        loop {
            match pages.next_page().await.map_err(cosmos_err)? {
                None => return Ok((Vec::new(), None)),
                Some(page) if page.items.is_empty() => continue,
                Some(page) => {
                    let token = page.resume_token().as_str().to_owned();
                    let documents = page
                        .items
                        .into_iter()
                        .map(SourceDocument::Document)
                        .collect();
                    return Ok((documents, Some(token)));
                }
            }
        }
    }
}
