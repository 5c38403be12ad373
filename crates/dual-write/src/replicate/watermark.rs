//! Watermark mode (and auto mode's fallback for one feed range): a pass reads everything whose
//! `_ts` is at or after the checkpoint minus the overlap window, skips what the previous pass's
//! window already read (by `_etag`), and checkpoints only a complete pass.

use std::collections::HashSet;
use std::time::Instant;

use mystira_copy::ContainerCounts;
use mystira_copy::apply::{Retries, write_page};
use mystira_copy::source::SourceDocument;
use mystira_cosmos_store::{FeedRangeKey, QuerySpec, ResumeToken};
use mystira_postgres::feed_checks;
use mystira_postgres::leases::{self, Lease};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::feed::feed_range_of;
use super::{PageDone, ReplicateError, Replicator, StartAt, Turn, now_secs};

/// The watermark checkpoint: the newest `_ts` applied, and the `_etag`s read inside the
/// overlap window below it (skipped when read again).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(super) struct Watermark {
    pub(super) since: Option<i64>,
    pub(super) etags: Vec<String>,
}

/// What a watermark pass did: the next checkpoint (`None`: interrupted, read again), when it
/// started (and its start in `_ts` terms, the cap), and the range's counts after it.
struct WatermarkPass {
    next: Option<Watermark>,
    started: Instant,
    cap: i64,
    range_counts: ContainerCounts,
}

impl Replicator<'_> {
    /// Auto mode: one watermark pass over one feed range (`in_feed_range`), from the range's
    /// fallback checkpoint (kept in this process). The lease row keeps the feed's position
    /// (`position`, saved as it is): the feed is tried again by the next run.
    pub(super) async fn fallback_turn(
        &self,
        container: &'static str,
        owner: &str,
        lease: &Lease,
        position: Option<Value>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Turn, ReplicateError> {
        let key = (container.to_owned(), lease.range_no);
        let range = feed_range_of(lease)?;
        let checkpoint = self
            .state()
            .ranges
            .get(&key)
            .and_then(|r| r.fallback.clone())
            .unwrap_or_default();
        let range_counts: ContainerCounts =
            serde_json::from_value(lease.counts.clone()).unwrap_or_default();
        let pass = self
            .watermark_pass(container, &checkpoint, Some(&range), range_counts, stop)
            .await?;
        let kept = leases::advance(
            self.pool,
            self.job,
            lease,
            owner,
            position.as_ref(),
            &serde_json::to_value(&pass.range_counts).unwrap_or_default(),
            false,
            self.config.lease,
        )
        .await?;
        if !kept {
            tracing::warn!(container, "lease lost to another worker");
            return Ok(Turn::Interrupted);
        }
        let Some(next) = pass.next else {
            return Ok(Turn::Interrupted);
        };
        // everything committed before the pass started is applied: the next probe (the next
        // run's, when the feed is tried again) starts there
        let overlap = i64::try_from(self.config.overlap.as_secs()).unwrap_or(i64::MAX);
        feed_checks::watermark_applied(
            self.pool,
            self.job,
            container,
            lease.range_no,
            pass.cap.saturating_sub(overlap),
        )
        .await?;
        if let Some(range) = self.state().ranges.get_mut(&key) {
            range.fallback = Some(next);
        }
        leases::mark_caught_up(self.pool, self.job, lease, owner, pass.started.elapsed()).await?;
        Ok(Turn::CaughtUp(None))
    }

    /// One watermark pass over a container: everything with `_ts` at or after the checkpoint
    /// minus the overlap window.
    pub(super) async fn watermark_turn(
        &self,
        container: &'static str,
        owner: &str,
        lease: &Lease,
        stop: &watch::Receiver<bool>,
    ) -> Result<Turn, ReplicateError> {
        let checkpoint = match &lease.position {
            None | Some(Value::Null) => Watermark {
                since: match self.config.start {
                    StartAt::Beginning => None,
                    // read from the overlap window before it, like after any checkpoint
                    StartAt::Now => Some(now_secs()),
                    StartAt::Time(t) => Some(t.timestamp()),
                },
                etags: Vec::new(),
            },
            Some(v) => serde_json::from_value::<Watermark>(v.clone())
                .map_err(|_| ReplicateError::BadCheckpoint("watermark"))?,
        };
        let range_counts: ContainerCounts =
            serde_json::from_value(lease.counts.clone()).unwrap_or_default();
        let pass = self
            .watermark_pass(container, &checkpoint, None, range_counts, stop)
            .await?;
        // The pass is checkpointed only when complete: an interrupted pass is read again.
        let position = match &pass.next {
            None => lease.position.clone(),
            Some(next) => Some(json!(next)),
        };
        let kept = leases::advance(
            self.pool,
            self.job,
            lease,
            owner,
            position.as_ref(),
            &serde_json::to_value(&pass.range_counts).unwrap_or_default(),
            false,
            self.config.lease,
        )
        .await?;
        if !kept {
            tracing::warn!(container, "lease lost to another worker");
            return Ok(Turn::Interrupted);
        }
        if pass.next.is_none() {
            return Ok(Turn::Interrupted);
        }
        // a complete pass read everything committed before it started: the lag bound restarts
        // at its start
        leases::mark_caught_up(self.pool, self.job, lease, owner, pass.started.elapsed()).await?;
        Ok(Turn::CaughtUp(None))
    }

    /// Reads and applies everything of `container` (of one feed range, with `scope`) whose
    /// `_ts` is at or after the checkpoint minus the overlap window; `range_counts` are the
    /// range's counts so far. The next checkpoint is `None` when the pass was interrupted.
    async fn watermark_pass(
        &self,
        container: &'static str,
        checkpoint: &Watermark,
        scope: Option<&FeedRangeKey>,
        mut range_counts: ContainerCounts,
        stop: &watch::Receiver<bool>,
    ) -> Result<WatermarkPass, ReplicateError> {
        let pass_started = Instant::now();
        // The pass's start in `_ts` terms (whole seconds, floored), on this host's clock: every
        // change committed after this moment has a `_ts` at or after it, give or take the
        // clock skew the overlap window covers.
        let pass_start_ts = now_secs();
        let handle = &self.containers[container];
        let overlap = i64::try_from(self.config.overlap.as_secs()).unwrap_or(i64::MAX);
        let from = checkpoint.since.map_or(0, |s| s.saturating_sub(overlap));
        // The next watermark is at most the pass's start: a document read early in this pass
        // and changed while it runs is not read again by it, and a watermark taken from the
        // newest `_ts` read (a later document's) would skip that change for good. A start
        // position in the future (`--start` a later time) is kept as it is.
        let cap = checkpoint
            .since
            .map_or(pass_start_ts, |s| s.max(pass_start_ts));
        let seen: HashSet<&str> = checkpoint.etags.iter().map(String::as_str).collect();
        let mut spec =
            QuerySpec::new("select * from c where c._ts >= @since").param("@since", from);
        if let Some(range) = scope {
            spec = spec.in_feed_range(range.clone());
        }
        let mut pages =
            handle.query_with_page_size::<Value>(spec, None::<ResumeToken>, self.config.page_size);
        let mut newest = checkpoint.since;
        // (ts, etag) of what this pass read, to keep the window's etags for the next pass
        let mut read: Vec<(i64, String)> = Vec::new();
        let mut interrupted = false;
        let mut page_no = 0;
        while let Some(page) = pages.next_page().await? {
            page_no += 1;
            let mut documents = Vec::new();
            let mut duplicates = 0;
            let mut page_newest = None;
            for doc in page.items {
                let ts = doc.get("_ts").and_then(Value::as_i64);
                let etag = doc.get("_etag").and_then(Value::as_str).map(str::to_owned);
                if let (Some(ts), Some(etag)) = (ts, &etag) {
                    read.push((ts, etag.clone()));
                }
                if etag.as_deref().is_some_and(|e| seen.contains(e)) {
                    duplicates += 1;
                    continue;
                }
                page_newest = page_newest.max(ts);
                documents.push(SourceDocument::Document(doc));
            }
            let mut page_counts = ContainerCounts::default();
            let pages_with_changes = u64::from(!documents.is_empty());
            if !documents.is_empty() {
                write_page(
                    self.pool,
                    container,
                    documents,
                    &mut page_counts,
                    Retries::Backoff,
                )
                .await?;
            }
            newest = newest.max(page_newest);
            // only the window below the next watermark is kept for the next pass
            if let Some(n) = newest {
                let window_start = n.min(cap).saturating_sub(overlap);
                read.retain(|(ts, _)| *ts >= window_start);
            }
            range_counts.add(&page_counts);
            self.record(
                container,
                &page_counts,
                pages_with_changes,
                duplicates,
                page_newest,
                0,
            );
            self.config
                .after_page
                .call(PageDone {
                    container,
                    page: page_no,
                })
                .await;
            if *stop.borrow() {
                interrupted = true;
                break;
            }
        }
        let next = (!interrupted).then(|| {
            let since = newest.map(|n| n.min(cap));
            let window_start = since.map_or(i64::MIN, |s| s.saturating_sub(overlap));
            let etags = read
                .into_iter()
                .filter(|(ts, _)| *ts >= window_start)
                .map(|(_, e)| e)
                .collect();
            Watermark { since, etags }
        });
        Ok(WatermarkPass {
            next,
            started: pass_started,
            cap,
            range_counts,
        })
    }
}
