//! Change-feed mode: a turn on one feed range reads its feed from the checkpoint until caught
//! up, applying each page before saving its continuation (write first, checkpoint after), then
//! hands over to the cross-check when it is due (and, in auto mode, to the watermark fallback).

use std::time::Instant;

use mystira_copy::ContainerCounts;
use mystira_copy::apply::{Retries, write_page};
use mystira_copy::source::SourceDocument;
use mystira_cosmos_store::{FeedRangeKey, FeedStart};
use mystira_postgres::feed_checks;
use mystira_postgres::leases::{self, Lease};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    DELIVERED_KEPT, PageDone, ReplicateError, ReplicationMode, Replicator, StartAt, Turn, now_secs,
};

/// A feed turn's end, and the position it saved last.
struct FeedTurn {
    turn: Turn,
    position: Option<Value>,
}

impl Replicator<'_> {
    /// A turn on one feed range in change-feed or auto mode: the feed from its checkpoint
    /// until caught up, then (when due) the cross-check against a `_ts` probe of the range. In
    /// auto mode a range whose feed disagreed, or cannot be read here, is read from the `_ts`
    /// watermark instead.
    pub(super) async fn feed_range_turn(
        &self,
        container: &'static str,
        owner: &str,
        lease: &Lease,
        stop: &watch::Receiver<bool>,
    ) -> Result<Turn, ReplicateError> {
        let key = (container.to_owned(), lease.range_no);
        let auto = self.config.mode == ReplicationMode::Auto;
        if auto && self.in_fallback(&key) {
            return self
                .fallback_turn(container, owner, lease, lease.position.clone(), stop)
                .await;
        }
        let done = match self.feed_turn(container, owner, lease, stop).await {
            Ok(done) => done,
            Err(ReplicateError::Cosmos(e)) if auto && feed_unsupported(&e) => {
                tracing::warn!(
                    container,
                    range = lease.range_no,
                    kind = ?e.kind(),
                    "the change feed cannot be read here; this range is read from the _ts \
                     watermark instead"
                );
                let from = self.probed_to(container, lease.range_no).await?;
                feed_checks::fell_back(self.pool, self.job, container, lease.range_no, from)
                    .await?;
                self.enter_fallback(&key, from);
                return self
                    .fallback_turn(container, owner, lease, lease.position.clone(), stop)
                    .await;
            }
            Err(e) => return Err(e),
        };
        let Turn::CaughtUp(Some(read_at)) = done.turn else {
            return Ok(done.turn);
        };
        if !self.probe_due(&key) {
            return Ok(done.turn);
        }
        let range = feed_range_of(lease)?;
        let agreed = self
            .cross_check(container, lease.range_no, &range, read_at)
            .await?;
        if !agreed && auto {
            // what the feed missed is read from the watermark now, in the same turn
            return self
                .fallback_turn(container, owner, lease, done.position, stop)
                .await;
        }
        Ok(done.turn)
    }

    /// Reads one range's change feed from its checkpoint until caught up.
    async fn feed_turn(
        &self,
        container: &'static str,
        owner: &str,
        lease: &Lease,
        stop: &watch::Receiver<bool>,
    ) -> Result<FeedTurn, ReplicateError> {
        let handle = &self.containers[container];
        let range = feed_range_of(lease)?;
        let start = match &lease.position {
            None | Some(Value::Null) => match self.config.start {
                StartAt::Beginning => FeedStart::Beginning,
                StartAt::Now => FeedStart::Now,
                StartAt::Time(t) => FeedStart::PointInTime(t),
            },
            Some(v) => FeedStart::Token(
                serde_json::from_value(v.clone())
                    .map_err(|_| ReplicateError::BadCheckpoint("change feed token"))?,
            ),
        };
        let mut range_counts: ContainerCounts =
            serde_json::from_value(lease.counts.clone()).unwrap_or_default();
        let mut feed = handle.change_feed_with_page_size(
            &range,
            start,
            self.config.feed_mode,
            self.config.page_size,
        );
        let mut page_no = 0;
        let mut saved = lease.position.clone();
        let key = (container.to_owned(), lease.range_no);
        loop {
            // the second the request left (this host's clock): the feed's answer covers every
            // change committed before it
            let requested_at = now_secs();
            let page = feed.next_page().await?;
            page_no += 1;
            let read_at = Instant::now();
            let caught_up = page.is_caught_up();
            let position = serde_json::to_value(page.token())
                .map_err(|_| ReplicateError::BadCheckpoint("change feed token"))?;
            let mut page_counts = ContainerCounts::default();
            let newest = page
                .documents
                .iter()
                .filter_map(|d| d.get("_ts").and_then(Value::as_i64))
                .max();
            let pages = u64::from(!caught_up);
            // what the feed delivered, for the cross-check (remembered once applied)
            let delivered: Vec<(String, i64)> = page
                .documents
                .iter()
                .filter_map(|d| {
                    Some((
                        d.get("_etag")?.as_str()?.to_owned(),
                        d.get("_ts")?.as_i64()?,
                    ))
                })
                .collect();
            if !page.documents.is_empty() {
                let documents = page
                    .documents
                    .into_iter()
                    .map(SourceDocument::Document)
                    .collect();
                write_page(
                    self.pool,
                    container,
                    documents,
                    &mut page_counts,
                    Retries::Backoff,
                )
                .await?;
            }
            if !delivered.is_empty() {
                let mut state = self.state();
                let remembered = &mut state.ranges.entry(key.clone()).or_default().delivered;
                if remembered.len() + delivered.len() > DELIVERED_KEPT {
                    remembered.clear();
                }
                remembered.extend(delivered);
            }
            let feed_deletes = page.deletes.len() as u64;
            if self.config.apply_deletes {
                for delete in &page.deletes {
                    if let Some(id) = &delete.id {
                        let ts = delete.ts.unwrap_or_else(now_secs);
                        self.apply_delete(container, id, ts).await?;
                    }
                }
            }
            // Checkpoint after the write: a crash in between re-reads the page, idempotently.
            range_counts.add(&page_counts);
            let kept = leases::advance(
                self.pool,
                self.job,
                lease,
                owner,
                Some(&position),
                &serde_json::to_value(&range_counts).unwrap_or_default(),
                false,
                self.config.lease,
            )
            .await?;
            self.record(container, &page_counts, pages, 0, newest, feed_deletes);
            if !kept {
                tracing::warn!(
                    container,
                    range = lease.range_no,
                    "lease lost to another worker"
                );
                return Ok(FeedTurn {
                    turn: Turn::Interrupted,
                    position: saved,
                });
            }
            saved = Some(position);
            if caught_up {
                // what the feed held is applied: the lag bound `serve` exports restarts here
                leases::mark_caught_up(self.pool, self.job, lease, owner, read_at.elapsed())
                    .await?;
                return Ok(FeedTurn {
                    turn: Turn::CaughtUp(Some(requested_at)),
                    position: saved,
                });
            }
            self.config
                .after_page
                .call(PageDone {
                    container,
                    page: page_no,
                })
                .await;
            if *stop.borrow() {
                return Ok(FeedTurn {
                    turn: Turn::Interrupted,
                    position: saved,
                });
            }
        }
    }
}

/// The range a lease row of a feed-range job names.
pub(super) fn feed_range_of(lease: &Lease) -> Result<FeedRangeKey, ReplicateError> {
    match &lease.range_start {
        Value::String(s) => Ok(FeedRangeKey::from_string(s.clone())),
        _ => Err(ReplicateError::BadCheckpoint("feed range")),
    }
}

/// Whether a change feed error says the feed cannot be read at all here (a server that does
/// not implement it: a 4xx other than throttling, or 501), rather than that the store is out.
fn feed_unsupported(e: &mystira_cosmos_store::Error) -> bool {
    use mystira_cosmos_store::ErrorKind;
    e.kind() == ErrorKind::InvalidRequest || e.status().is_some_and(|(code, _)| code == 501)
}
