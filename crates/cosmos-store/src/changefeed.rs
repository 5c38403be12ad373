//! Reading a container's change feed, one feed range at a time, in pages of raw documents,
//! with a [`ChangeFeedToken`] after every page that can be checkpointed (as a JSON string) and
//! passed back, in this or another process, to continue right after that page.
//!
//! - [`Container::feed_ranges`]: the container's feed ranges as [`FeedRangeKey`]s (stable
//!   strings: the SDK's serialised `FeedRange`, base64 JSON of its bounds), one per physical
//!   partition; each can be read (and leased) independently.
//! - [`Container::change_feed`]: a [`ChangeFeed`] over one range, from a saved token or from
//!   the beginning / now. [`ChangeFeed::next_page`] sends one request and returns a
//!   [`ChangeFeedPage`]; an empty page means the range is caught up (the service answered
//!   304 Not Modified). The feed never ends: poll again later.
//!
//! Modes ([`FeedMode`]): latest-version (every account; each changed document once, at its
//! latest version, no deletes) and all-versions-and-deletes (needs continuous backup on the
//! account and a change-feed retention policy on the container; every version and every
//! delete; it cannot start from the beginning). A token remembers its mode: resuming it in the
//! other mode is rejected by the SDK.
//!
//! Delivery is at least once: a caller that applies a page and then saves its token may, after
//! a crash between the two, read that page again. Transient failures (429, 503, transport) are
//! retried under the store's [`crate::RetryPolicy`] by re-opening the feed from the last
//! page's token, so a retry neither repeats nor skips a page.
//!
//! What the SDK sends (azure_data_cosmos_driver 1.0, `CosmosOperation::change_feed`,
//! `with_change_feed_start`, `OperationOverrides::apply_headers`,
//! `Request::handle_change_feed_response`): `GET .../docs` with `A-IM: Incremental Feed` (or
//! `Full-Fidelity Feed`) and `x-ms-cosmos-changefeed-wire-format-version`; the start as no
//! header (beginning), `If-None-Match: *` (now) or `If-Modified-Since`; the continuation is the
//! response's `etag`, sent back as `If-None-Match`; page size as `x-ms-max-item-count`. Items
//! come wrapped as `{"current": doc, "metadata": ...}` (the SDK's `ChangeFeedItem`).
//!
//! Documents keep `_ts`/`_etag` (what the version guard downstream needs); the change-feed-only
//! system property `_lsn` is removed, so a document reads as a point read or query returns it.
//! Nothing here logs ids, partition keys or document content.

use std::num::NonZeroU32;
use std::str::FromStr;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::{ChangeFeedPageIterator, ContinuationToken, FeedRange, FeedScope};
use azure_data_cosmos::models::{ChangeFeedItem, ChangeFeedOperationType};
use azure_data_cosmos::options::{
    ChangeFeedMode, ChangeFeedOptions, ChangeFeedStartFrom, MaxItemCountHint,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::RetryPolicy;
use crate::container::Container;
use crate::error::{Error, ErrorKind, Result};
use crate::retry::{Backoff, with_retry};

/// One feed range of a container, as a string that is safe to store (it holds partition-key
/// hash bounds, never a partition-key value) and parse back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeedRangeKey(String);

impl FeedRangeKey {
    /// The range covering the whole container.
    pub fn full() -> Self {
        Self(FeedRange::full().to_string())
    }

    /// Wraps a string previously obtained from [`FeedRangeKey::as_str`].
    pub fn from_string(key: String) -> Self {
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn to_sdk(&self, operation: &'static str) -> Result<FeedRange> {
        FeedRange::from_str(&self.0).map_err(|e| {
            Error::new(
                ErrorKind::InvalidRequest,
                operation,
                "the stored feed range is not a feed range",
            )
            .with_source(e)
        })
    }
}

impl std::fmt::Display for FeedRangeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An opaque position in one range's change feed, safe to persist (it holds the range and the
/// service's continuation, not document content). Store it as JSON (`serde_json::to_value`
/// gives a string) and pass it back through [`FeedStart::Token`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeFeedToken(String);

impl ChangeFeedToken {
    /// Wraps a token previously obtained from [`ChangeFeedToken::as_str`].
    pub fn from_string(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a feed starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedStart {
    /// Every document as it is now, then every later change (latest-version mode only).
    Beginning,
    /// Only changes made after the first request.
    Now,
    /// Documents changed at or after this time (latest-version mode only), then every later
    /// change.
    PointInTime(chrono::DateTime<chrono::Utc>),
    /// Right after the page that returned this token.
    Token(ChangeFeedToken),
}

/// Which change feed to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedMode {
    /// Each changed document once, at its latest version; deletes are not reported.
    #[default]
    LatestVersion,
    /// Every version and every delete, within the container's retention window (needs
    /// continuous backup on the account).
    AllVersionsAndDeletes,
}

/// A delete reported by an all-versions-and-deletes feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedDelete {
    /// The deleted document's id (from the change's metadata, else its previous image).
    pub id: Option<String>,
    /// Its partition-key value, as the service reports it.
    pub partition_key: Option<Value>,
    /// When the delete was committed (epoch seconds), when the service says.
    pub ts: Option<i64>,
}

/// One page of a range's change feed and where to continue after it.
#[derive(Debug)]
pub struct ChangeFeedPage {
    /// Created or replaced documents, raw as Cosmos stores them (with `_ts` and `_etag`).
    pub documents: Vec<Value>,
    /// Deletes (all-versions-and-deletes mode only; always empty in latest-version mode).
    pub deletes: Vec<FeedDelete>,
    token: ChangeFeedToken,
}

impl ChangeFeedPage {
    /// Checkpoint this after applying the page; resume with [`FeedStart::Token`].
    pub fn token(&self) -> &ChangeFeedToken {
        &self.token
    }

    /// No changes after the previous position: the range is caught up (304 Not Modified).
    pub fn is_caught_up(&self) -> bool {
        self.documents.is_empty() && self.deletes.is_empty()
    }
}

impl Container {
    /// The container's feed ranges (one per physical partition), for reading or leasing
    /// separately.
    pub async fn feed_ranges(&self) -> Result<Vec<FeedRangeKey>> {
        let (client, target, retry, _) = self.parts();
        let ranges = with_retry(retry, || async move {
            client
                .read_feed_ranges(None)
                .await
                .map_err(|e| Error::from_sdk("read feed ranges", target, e))
        })
        .await?;
        Ok(ranges
            .into_iter()
            .map(|r| FeedRangeKey(r.to_string()))
            .collect())
    }

    /// The change feed of `range` from `start`, in pages of the store's page size.
    pub fn change_feed(
        &self,
        range: &FeedRangeKey,
        start: FeedStart,
        mode: FeedMode,
    ) -> ChangeFeed {
        let (_, _, _, page_size) = self.parts();
        self.change_feed_with_page_size(range, start, mode, page_size)
    }

    /// [`Container::change_feed`] with an explicit page size.
    pub fn change_feed_with_page_size(
        &self,
        range: &FeedRangeKey,
        start: FeedStart,
        mode: FeedMode,
        page_size: u32,
    ) -> ChangeFeed {
        let (client, target, retry, _) = self.parts();
        let (initial, token) = match start {
            FeedStart::Beginning => (Ok(ChangeFeedStartFrom::Beginning), None),
            FeedStart::Now => (Ok(ChangeFeedStartFrom::Now), None),
            FeedStart::PointInTime(at) => (point_in_time(at), None),
            // the token carries its own start; the SDK ignores this one
            FeedStart::Token(t) => (Ok(ChangeFeedStartFrom::Beginning), Some(t)),
        };
        ChangeFeed {
            client: client.clone(),
            target: target.to_owned(),
            retry: retry.clone(),
            range: range.clone(),
            initial,
            mode,
            page_size: page_size.max(1),
            token,
            iter: None,
        }
    }
}

/// A range's change feed; call [`ChangeFeed::next_page`] repeatedly (it never ends).
pub struct ChangeFeed {
    client: ContainerClient,
    target: String,
    retry: RetryPolicy,
    range: FeedRangeKey,
    /// Where the feed starts without a token (an error: the start time is out of range).
    initial: Result<ChangeFeedStartFrom>,
    mode: FeedMode,
    page_size: u32,
    /// Where a (re)opened iterator starts: the caller's token, then each page's.
    token: Option<ChangeFeedToken>,
    iter: Option<ChangeFeedPageIterator<ChangeFeedItem<Value>>>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("target", &self.target)
            .field("mode", &self.mode)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl ChangeFeed {
    /// The next page (one request); empty when the range is caught up.
    pub async fn next_page(&mut self) -> Result<ChangeFeedPage> {
        let retry = self.retry.clone();
        let mut backoff = Backoff::new(&retry);
        loop {
            match self.fetch_once().await {
                Ok(page) => return Ok(page),
                Err(err) => backoff.after_failure(err).await?,
            }
        }
    }

    /// The token of the last page returned (or the one this feed started from).
    pub fn token(&self) -> Option<&ChangeFeedToken> {
        self.token.as_ref()
    }

    /// Opens the SDK's iterator from the last token. Works on clones, not on `&self`: the
    /// iterator is not `Sync`, so a `&ChangeFeed` held across an await would make
    /// [`ChangeFeed::next_page`] not `Send`.
    fn open(
        &self,
    ) -> impl Future<Output = Result<ChangeFeedPageIterator<ChangeFeedItem<Value>>>> + Send + 'static
    {
        const OP: &str = "open change feed";
        let client = self.client.clone();
        let target = self.target.clone();
        let initial = match &self.initial {
            Ok(start) => Ok(start.clone()),
            Err(_) => Err(Error::new(
                ErrorKind::InvalidRequest,
                OP,
                "the change feed start time is out of range",
            )),
        };
        let range = self.range.to_sdk("change feed");
        let size = NonZeroU32::new(self.page_size).unwrap_or(NonZeroU32::MIN);
        let mut options = ChangeFeedOptions::default()
            .with_max_item_count(MaxItemCountHint::Limit(size))
            .with_mode(match self.mode {
                FeedMode::LatestVersion => ChangeFeedMode::LatestVersion,
                FeedMode::AllVersionsAndDeletes => ChangeFeedMode::AllVersionsAndDeletes,
            });
        if let Some(token) = &self.token {
            options =
                options.with_continuation_token(ContinuationToken::from_string(token.0.clone()));
        }
        async move {
            client
                .query_change_feed::<Value>(FeedScope::range(range?), initial?, Some(options))
                .await
                .map_err(|e| Error::from_sdk(OP, &target, e))
        }
    }

    async fn fetch_once(&mut self) -> Result<ChangeFeedPage> {
        const OP: &str = "read change feed";
        if self.iter.is_none() {
            let opened = self.open().await?;
            self.iter = Some(opened);
        }
        let Some(iter) = self.iter.as_mut() else {
            unreachable!("opened above")
        };
        let page = match iter.next().await {
            Some(Ok(page)) => page,
            Some(Err(e)) => {
                // The SDK's iterator ends after an error: re-open from the last good token.
                self.iter = None;
                return Err(Error::from_sdk(OP, &self.target, e));
            }
            None => {
                self.iter = None;
                return Err(Error::new(
                    ErrorKind::Service,
                    OP,
                    "the change feed ended unexpectedly",
                ));
            }
        };
        let token = match iter.to_continuation_token() {
            Ok(t) => ChangeFeedToken(t.as_str().to_owned()),
            Err(e) => {
                // Without a token this page cannot be checkpointed: fetch it again.
                self.iter = None;
                return Err(Error::from_sdk(OP, &self.target, e));
            }
        };
        let mut documents = Vec::new();
        let mut deletes = Vec::new();
        for item in page.into_items() {
            if item.operation_type() == Some(ChangeFeedOperationType::Delete) {
                deletes.push(delete_of(&item));
            } else if let Some(current) = item.current() {
                documents.push(without_feed_properties(current.clone()));
            }
        }
        self.token = Some(token.clone());
        Ok(ChangeFeedPage {
            documents,
            deletes,
            token,
        })
    }
}

/// The SDK's point-in-time start (sent as `If-Modified-Since`, one-second resolution).
fn point_in_time(at: chrono::DateTime<chrono::Utc>) -> Result<ChangeFeedStartFrom> {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .map(ChangeFeedStartFrom::PointInTime)
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidRequest,
                "change feed",
                "the change feed start time is out of range",
            )
            .with_source(e)
        })
}

fn delete_of(item: &ChangeFeedItem<Value>) -> FeedDelete {
    let metadata = item.metadata();
    let id = metadata
        .and_then(|m| m.id().map(str::to_owned))
        .or_else(|| {
            item.previous()
                .and_then(|p| p.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let ts = metadata
        .and_then(|m| m.conflict_resolution_timestamp())
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    FeedDelete {
        id,
        partition_key: metadata.and_then(|m| m.partition_key().cloned()),
        ts,
    }
}

/// Removes `_lsn`, which only change-feed copies of a document carry.
fn without_feed_properties(mut document: Value) -> Value {
    if let Some(map) = document.as_object_mut() {
        map.shift_remove("_lsn");
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_range_keys_round_trip_through_the_sdk() {
        let full = FeedRangeKey::full();
        let parsed = full.to_sdk("change feed").expect("parse");
        assert_eq!(parsed, FeedRange::full());
        assert_eq!(FeedRangeKey(parsed.to_string()), full);
    }

    #[test]
    fn tokens_are_stored_as_json_strings() {
        let token = ChangeFeedToken::from_string("c1.abc".into());
        let json = serde_json::to_value(&token).expect("serialise");
        assert_eq!(json, Value::String("c1.abc".into()));
        let back: ChangeFeedToken = serde_json::from_value(json).expect("parse");
        assert_eq!(back, token);
    }

    #[test]
    fn feed_only_properties_are_removed() {
        let doc = serde_json::json!({"id": "a", "_ts": 1, "_etag": "e", "_lsn": 7});
        assert_eq!(
            without_feed_properties(doc),
            serde_json::json!({"id": "a", "_ts": 1, "_etag": "e"})
        );
    }

    /// Callers run the reader on multi-threaded runtimes, so its future must be `Send`.
    #[allow(dead_code)]
    fn next_page_is_send(feed: &mut ChangeFeed) {
        fn send<T: Send>(_: T) {}
        send(feed.next_page());
    }
}
