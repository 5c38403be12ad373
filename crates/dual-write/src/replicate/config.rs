//! How a replication run is configured: the mode, where a range without a checkpoint starts,
//! the timings, and the test seam awaited after every page ([`PageHook`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mystira_copy::local_owner;
use mystira_cosmos_store::FeedMode;
use serde::Serialize;

use crate::heartbeat::{Health, OutageBackoff};

/// How changes are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// The change feed per feed range, cross-checked against `_ts` probes of the same range; a
    /// range whose feed disagrees with its probe (or cannot be read here) is read from the
    /// `_ts` watermark instead, for the rest of the run.
    #[default]
    Auto,
    /// Cosmos's change feed, per feed range, cross-checked against `_ts` probes: a
    /// disagreement is reported (log, report, exit code, metric), not worked around.
    ChangeFeed,
    /// A `_ts` watermark query with an overlap window, for servers without a change feed.
    Watermark,
}

/// Where a range without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartAt {
    /// Every document once, at its latest version (safe default: nothing can be missed).
    #[default]
    Beginning,
    /// Only changes made after the replicator started.
    Now,
    /// Documents changed at or after this time (e.g. when the backfill started): skips
    /// re-reading what the backfill copied.
    Time(chrono::DateTime<chrono::Utc>),
}

/// A `--start` value that is none of `beginning`, `now` or an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("expected beginning, now or an RFC 3339 time")]
pub struct BadStart;

impl std::str::FromStr for StartAt {
    type Err = BadStart;

    fn from_str(value: &str) -> Result<Self, BadStart> {
        match value {
            "beginning" => Ok(Self::Beginning),
            "now" => Ok(Self::Now),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| Self::Time(t.with_timezone(&chrono::Utc)))
                .map_err(|_| BadStart),
        }
    }
}

/// How replication runs.
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    pub mode: ReplicationMode,
    /// Where a range without a checkpoint starts (a checkpoint always wins).
    pub start: StartAt,
    /// The change feed to read (change-feed mode only).
    pub feed_mode: FeedMode,
    /// Catch up to now once, then return; otherwise run until stopped.
    pub once: bool,
    /// Apply deletes found by the key-set comparison (or the feed); otherwise only report them.
    pub apply_deletes: bool,
    /// Pause between cycles once caught up.
    pub poll: Duration,
    /// Concurrent workers in this process (each serves ranges of one container at a time).
    pub workers: usize,
    /// Documents per page read (and per write transaction).
    pub page_size: u32,
    /// How long a range stays leased without a renewal before another worker may take it.
    pub lease: Duration,
    /// Names this process's workers in the lease table.
    pub owner: String,
    /// Watermark mode: how far before the newest `_ts` applied each pass reads again. Also the
    /// margin for the clock skew between this host and Cosmos wherever a `_ts` is compared with
    /// this host's clock (the watermark's cap, the probe's window).
    pub overlap: Duration,
    /// Change-feed and auto modes: how often a caught-up range's feed is cross-checked against
    /// a `_ts` probe of the same range (`--once` checks each range once, when caught up).
    /// `None`: never.
    pub probe_every: Option<Duration>,
    /// How often (continuous runs) the key-set comparison looks for deletes; `--once` runs it
    /// once, at the end. `None`: never.
    pub delete_check_every: Option<Duration>,
    /// Rows written to PostgreSQL more recently than this are not compared.
    pub delete_grace: Duration,
    /// Test seam, unset in production: awaited after every page is applied (and, on the change
    /// feed, checkpointed), before the next page is read, so a test can hold a pass open at a
    /// known point while it changes documents.
    pub after_page: PageHook,
    /// Continuous runs: the longest wait between two attempts while a store is out (the wait
    /// starts at a second and doubles up to this).
    pub outage_backoff_cap: Duration,
    /// Told when a continuous run starts waiting out an outage and when it works again (the
    /// process's heartbeat); the default tells nobody.
    pub health: Health,
}

/// A page a replication turn has applied (what [`PageHook`] is told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageDone {
    pub container: &'static str,
    /// The page's number in its turn (a range's feed read, or a watermark pass), from 1.
    pub page: u64,
}

/// An async callback awaited after every page (see [`ReplicateConfig::after_page`]); the
/// default does nothing.
#[derive(Clone, Default)]
pub struct PageHook(Option<Arc<dyn Fn(PageDone) -> BoxFuture<'static, ()> + Send + Sync>>);

impl PageHook {
    pub fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn(PageDone) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Some(Arc::new(move |page| Box::pin(hook(page)))))
    }

    pub(super) async fn call(&self, page: PageDone) {
        if let Some(hook) = &self.0 {
            hook(page).await;
        }
    }
}

impl std::fmt::Debug for PageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "PageHook(set)"
        } else {
            "PageHook(none)"
        })
    }
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::Auto,
            start: StartAt::Beginning,
            feed_mode: FeedMode::LatestVersion,
            once: false,
            apply_deletes: false,
            poll: Duration::from_millis(1000),
            workers: 2,
            page_size: 1000,
            lease: Duration::from_secs(30),
            owner: local_owner(std::process::id()),
            overlap: Duration::from_secs(5),
            probe_every: Some(Duration::from_secs(10)),
            delete_check_every: Some(Duration::from_secs(300)),
            delete_grace: Duration::from_secs(60),
            after_page: PageHook::default(),
            outage_backoff_cap: OutageBackoff::CAP,
            health: Health::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(
            "beginning".parse::<StartAt>().ok(),
            Some(StartAt::Beginning)
        );
        assert_eq!("now".parse::<StartAt>().ok(), Some(StartAt::Now));
        let at = "2026-12-03T06:00:00+01:00".parse::<StartAt>().ok();
        assert_eq!(
            at,
            chrono::DateTime::from_timestamp(1_796_274_000, 0).map(StartAt::Time)
        );
        assert!("yesterday".parse::<StartAt>().is_err());
    }
}
