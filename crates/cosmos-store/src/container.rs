//! [`Container`]: point operations (read, create, upsert, replace with `If-Match`, delete) and
//! paged queries on one container, each under the store's retry policy.
//!
//! Partition-key values are passed as the SDK's [`PartitionKey`] (`"value".into()`,
//! `PartitionKey::NULL`, ...). They may be personal data (`PendingSignups` is partitioned by
//! email), so they never appear in errors or logs; neither do item ids.

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::models::ItemResponse;
use azure_data_cosmos::options::{
    ContentResponseOnWrite, ItemWriteOptions, OperationOptions, Precondition,
};
use azure_data_cosmos::{CosmosError, PartitionKey, Query};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::changefeed::FeedRangeKey;
use crate::config::RetryPolicy;
use crate::error::{Error, ErrorKind, Result};
use crate::pages::{Pages, ResumeToken};
use crate::retry::with_retry;

/// A document with the `_etag` it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    /// The ETag header of the response (`None` only if the service sent none).
    pub etag: Option<String>,
}

/// What a write that asked for content answered: the new ETag and the document as stored
/// (`None` when the service sent no body).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub etag: Option<String>,
    pub document: Option<serde_json::Value>,
}

/// A query text with named parameters (`@since`), bound as values, never spliced into the text.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    text: String,
    params: Vec<(String, serde_json::Value)>,
    partition: Option<PartitionKey>,
    feed_range: Option<FeedRangeKey>,
}

impl QuerySpec {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            params: Vec::new(),
            partition: None,
            feed_range: None,
        }
    }

    /// Binds `@name` (include the `@`).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Restricts the query to one logical partition (default: the whole container).
    pub fn in_partition(mut self, partition: impl Into<PartitionKey>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Restricts the query to one feed range (from [`Container::feed_ranges`]), so that
    /// several readers can each read a part of the container.
    pub fn in_feed_range(mut self, range: FeedRangeKey) -> Self {
        self.feed_range = Some(range);
        self
    }

    pub(crate) fn to_sdk(&self) -> Result<(Query, FeedScope)> {
        let mut query = Query::from(self.text.clone());
        for (name, value) in &self.params {
            query = query.with_parameter(name.clone(), value).map_err(|e| {
                Error::new(
                    ErrorKind::Serialization,
                    "query",
                    format!("parameter {name} cannot be serialised"),
                )
                .with_source(e)
            })?;
        }
        let scope = match (&self.partition, &self.feed_range) {
            (Some(pk), _) => FeedScope::partition(pk.clone()),
            (None, Some(range)) => FeedScope::range(range.to_sdk("query")?),
            (None, None) => FeedScope::full_container(),
        };
        Ok((query, scope))
    }
}

/// One open container of a [`crate::CosmosStore`].
#[derive(Clone)]
pub struct Container {
    client: ContainerClient,
    target: String,
    retry: RetryPolicy,
    page_size: u32,
    partition_key_paths: Vec<String>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("target", &self.target)
            .field("partition_key_paths", &self.partition_key_paths)
            .finish_non_exhaustive()
    }
}

impl Container {
    pub(crate) async fn open(
        client: ContainerClient,
        target: String,
        retry: RetryPolicy,
        page_size: u32,
    ) -> Result<Self> {
        let (client_ref, target_ref) = (&client, target.as_str());
        let properties = with_retry(&retry, || async move {
            client_ref
                .read(None)
                .await
                .and_then(|r| r.into_model())
                .map_err(|e| Error::from_sdk("read container", target_ref, e))
        })
        .await?;
        let partition_key_paths = properties
            .partition_key
            .paths()
            .iter()
            .map(|p| p.to_string())
            .collect();
        Ok(Self {
            client,
            target,
            retry,
            page_size,
            partition_key_paths,
        })
    }

    /// `database/container`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The SDK client, message target, retry policy and page size, for the change-feed reader
    /// (`crate::changefeed`), which lives in its own module.
    pub(crate) fn parts(&self) -> (&ContainerClient, &str, &RetryPolicy, u32) {
        (&self.client, &self.target, &self.retry, self.page_size)
    }

    /// The container's partition-key paths as the service reports them (e.g. `["/email"]`).
    pub fn partition_key_paths(&self) -> &[String] {
        &self.partition_key_paths
    }

    /// Point read; a missing item is `Ok(None)`.
    pub async fn read<T: DeserializeOwned>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
    ) -> Result<Option<Versioned<T>>> {
        const OP: &str = "read item";
        let pk = partition.into();
        let result = self
            .point_op(OP, || self.client.read_item(pk.clone(), id, None))
            .await;
        match result {
            Ok(response) => {
                let etag = etag_of(&response);
                let value = response
                    .into_model()
                    .map_err(|e| Error::from_sdk(OP, &self.target, e))?;
                Ok(Some(Versioned { value, etag }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the item; an existing id fails with [`ErrorKind::Conflict`]. Returns the ETag.
    pub async fn create<T: Serialize + Sync>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
        item: &T,
    ) -> Result<Option<String>> {
        let pk = partition.into();
        self.write_op("create item", || {
            self.client.create_item(pk.clone(), id, item, None)
        })
        .await
    }

    /// Creates or overwrites the item. Returns the new ETag.
    pub async fn upsert<T: Serialize + Sync>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
        item: &T,
    ) -> Result<Option<String>> {
        let pk = partition.into();
        self.write_op("upsert item", || {
            self.client.upsert_item(pk.clone(), id, item, None)
        })
        .await
    }

    /// Replaces the item only if its current ETag is `etag`; otherwise fails with
    /// [`ErrorKind::PreconditionFailed`] (someone wrote in between: re-read and decide).
    /// A missing item fails with [`ErrorKind::NotFound`]. Returns the new ETag.
    pub async fn replace_if_match<T: Serialize + Sync>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
        item: &T,
        etag: &str,
    ) -> Result<Option<String>> {
        let pk = partition.into();
        self.write_op("replace item", || {
            let options =
                ItemWriteOptions::default().with_precondition(Precondition::if_match(etag));
            self.client
                .replace_item(pk.clone(), id, item, Some(options))
        })
        .await
    }

    /// [`Container::create`], answering with the document as the service stored it (with its
    /// `_ts` and `_etag`), so that the write can be copied elsewhere at exactly that version.
    pub async fn create_returning<T: Serialize + Sync>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
        item: &T,
    ) -> Result<Stored> {
        let pk = partition.into();
        self.stored_op("create item", || {
            self.client
                .create_item(pk.clone(), id, item, Some(returning(None)))
        })
        .await
    }

    /// [`Container::replace_if_match`], answering with the document as stored.
    pub async fn replace_if_match_returning<T: Serialize + Sync>(
        &self,
        partition: impl Into<PartitionKey>,
        id: &str,
        item: &T,
        etag: &str,
    ) -> Result<Stored> {
        let pk = partition.into();
        self.stored_op("replace item", || {
            self.client.replace_item(
                pk.clone(),
                id,
                item,
                Some(returning(Some(Precondition::if_match(etag)))),
            )
        })
        .await
    }

    /// Deletes the item. Returns `false` if it did not exist (deleting is idempotent).
    pub async fn delete(&self, partition: impl Into<PartitionKey>, id: &str) -> Result<bool> {
        let pk = partition.into();
        let result = self
            .point_op("delete item", || {
                self.client.delete_item(pk.clone(), id, None)
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One SDK call under the retry policy, its error named by `operation` and this
    /// container (never by the item id or partition key, which may be personal data).
    async fn point_op<R, F, Fut>(&self, operation: &'static str, call: F) -> Result<R>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<R, CosmosError>>,
    {
        with_retry(&self.retry, || async {
            call()
                .await
                .map_err(|e| Error::from_sdk(operation, &self.target, e))
        })
        .await
    }

    /// [`Self::point_op`] for a write, which answers with the item's new ETag.
    async fn write_op<F, Fut>(&self, operation: &'static str, call: F) -> Result<Option<String>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<ItemResponse, CosmosError>>,
    {
        self.point_op(operation, call).await.map(|r| etag_of(&r))
    }

    /// [`Self::write_op`] for a write that asked for the stored document back.
    async fn stored_op<F, Fut>(&self, operation: &'static str, call: F) -> Result<Stored>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<ItemResponse, CosmosError>>,
    {
        let response = self.point_op(operation, call).await?;
        let etag = etag_of(&response);
        // A service that ignores the request for content answers with an empty body.
        let document = response.into_model::<serde_json::Value>().ok();
        Ok(Stored { etag, document })
    }

    /// Runs a query in pages of the store's page size, starting at `resume` (a token saved from
    /// an earlier [`crate::Page::resume_token`]) or at the beginning.
    pub fn query<T: DeserializeOwned + Send + 'static>(
        &self,
        spec: QuerySpec,
        resume: Option<ResumeToken>,
    ) -> Pages<T> {
        self.query_with_page_size(spec, resume, self.page_size)
    }

    /// [`Container::query`] with an explicit page size.
    pub fn query_with_page_size<T: DeserializeOwned + Send + 'static>(
        &self,
        spec: QuerySpec,
        resume: Option<ResumeToken>,
        page_size: u32,
    ) -> Pages<T> {
        Pages::new(
            self.client.clone(),
            self.target.clone(),
            self.retry.clone(),
            spec,
            page_size.max(1),
            resume,
        )
    }

    /// Streams every document of the container (`select * from c`), resumable from `resume`.
    pub fn read_all<T: DeserializeOwned + Send + 'static>(
        &self,
        resume: Option<ResumeToken>,
    ) -> Pages<T> {
        self.query(QuerySpec::new("select * from c"), resume)
    }
}

/// Write options that ask for the stored document in the response.
fn returning(precondition: Option<Precondition>) -> ItemWriteOptions {
    let mut operation = OperationOptions::default();
    operation.content_response_on_write = Some(ContentResponseOnWrite::Enabled);
    let options = ItemWriteOptions::default().with_operation_options(operation);
    match precondition {
        Some(p) => options.with_precondition(p),
        None => options,
    }
}

fn etag_of(response: &ItemResponse) -> Option<String> {
    response.headers().etag().map(|e| e.to_string())
}
