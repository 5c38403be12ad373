//! Paged, resumable reads: [`Pages`] yields [`Page`]s of a query, and after each page exposes a
//! [`ResumeToken`] that a caller can store (e.g. as a checkpoint in PostgreSQL) and pass back
//! later, in this or another process, to continue right after that page.
//!
//! A transient failure in the middle of a stream is retried under the store's policy by
//! re-opening the query from the last page's token, so a retry never repeats or skips a page.
//! Memory is bounded by one page.

use std::num::NonZeroU32;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::{ContinuationToken, QueryPageIterator};
use azure_data_cosmos::options::{MaxItemCountHint, QueryOptions};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::RetryPolicy;
use crate::container::QuerySpec;
use crate::error::{Error, Result};
use crate::retry::Backoff;

/// An opaque position in a query's results, safe to persist as a string.
///
/// It encodes the query's partition ranges and server continuations, not document content;
/// it is only valid for the same query text, parameters and container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// Wraps a token previously obtained from [`ResumeToken::as_str`].
    pub fn from_string(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One page of results and where to resume after it.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    resume_token: ResumeToken,
}

impl<T> Page<T> {
    /// Pass this to [`crate::Container::query`] to continue after this page.
    pub fn resume_token(&self) -> &ResumeToken {
        &self.resume_token
    }
}

/// A paged query; call [`Pages::next_page`] until it returns `Ok(None)`.
pub struct Pages<T: Send> {
    client: ContainerClient,
    target: String,
    retry: RetryPolicy,
    spec: QuerySpec,
    page_size: u32,
    /// Where the next (re)opened iterator starts: the caller's token, then each page's.
    resume: Option<ResumeToken>,
    iter: Option<QueryPageIterator<T>>,
    done: bool,
}

impl<T: Send> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("target", &self.target)
            .field("page_size", &self.page_size)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> Pages<T> {
    pub(crate) fn new(
        client: ContainerClient,
        target: String,
        retry: RetryPolicy,
        spec: QuerySpec,
        page_size: u32,
        resume: Option<ResumeToken>,
    ) -> Self {
        Self {
            client,
            target,
            retry,
            spec,
            page_size,
            resume,
            iter: None,
            done: false,
        }
    }

    /// The next page, or `None` when the query is exhausted. Pages may be empty.
    pub async fn next_page(&mut self) -> Result<Option<Page<T>>> {
        if self.done {
            return Ok(None);
        }
        let retry = self.retry.clone();
        let mut backoff = Backoff::new(&retry);
        loop {
            match self.fetch_once().await {
                Ok(page) => return Ok(page),
                Err(err) => backoff.after_failure(err).await?,
            }
        }
    }

    /// The token of the last page returned (or the one this stream started from).
    pub fn resume_token(&self) -> Option<&ResumeToken> {
        self.resume.as_ref()
    }

    async fn fetch_once(&mut self) -> Result<Option<Page<T>>> {
        const OP: &str = "query";
        let iter = match &mut self.iter {
            Some(iter) => iter,
            None => {
                let (query, scope) = self.spec.to_sdk()?;
                let size = NonZeroU32::new(self.page_size).unwrap_or(NonZeroU32::MIN);
                let mut options =
                    QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(size));
                if let Some(token) = &self.resume {
                    options = options
                        .with_continuation_token(ContinuationToken::from_string(token.0.clone()));
                }
                let pages = self
                    .client
                    .query_items::<T>(query, scope, Some(options))
                    .await
                    .map_err(|e| Error::from_sdk(OP, &self.target, e))?
                    .into_pages();
                self.iter.insert(pages)
            }
        };
        match iter.next().await {
            None => {
                self.done = true;
                self.iter = None;
                Ok(None)
            }
            Some(Err(e)) => {
                // Drop the iterator: a retry re-opens the query from the last good page.
                self.iter = None;
                Err(Error::from_sdk(OP, &self.target, e))
            }
            Some(Ok(page)) => match iter.to_continuation_token() {
                Ok(token) => {
                    let resume_token = ResumeToken(token.as_str().to_owned());
                    self.resume = Some(resume_token.clone());
                    Ok(Some(Page {
                        items: page.into_items(),
                        resume_token,
                    }))
                }
                Err(e) => {
                    // Without a token this page cannot be checkpointed: fetch it again.
                    self.iter = None;
                    Err(Error::from_sdk(OP, &self.target, e))
                }
            },
        }
    }
}
