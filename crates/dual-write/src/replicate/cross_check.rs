//! The change feed's cross-check: a caught-up range's feed is compared with a `_ts` probe of
//! the same range; a disagreement is reported, and in auto mode the range falls back to the
//! `_ts` watermark for the rest of the run.

use std::time::Instant;

use mystira_cosmos_store::{FeedRangeKey, QuerySpec, ResumeToken};
use mystira_postgres::feed_checks;
use serde_json::Value;

use super::watermark::Watermark;
use super::{ReplicateError, ReplicationMode, Replicator, StartAt};

impl Replicator<'_> {
    pub(super) fn in_fallback(&self, key: &(String, i32)) -> bool {
        self.state()
            .ranges
            .get(key)
            .is_some_and(|r| r.fallback.is_some())
    }

    /// Auto mode: the range is read from the watermark from `from` on (the end of the last
    /// window its probe found complete), for the rest of the run.
    pub(super) fn enter_fallback(&self, key: &(String, i32), from: i64) {
        let mut state = self.state();
        let range = state.ranges.entry(key.clone()).or_default();
        range.fallback = Some(Watermark {
            since: Some(from),
            etags: Vec::new(),
        });
        range.delivered.clear();
    }

    pub(super) fn probe_due(&self, key: &(String, i32)) -> bool {
        let Some(every) = self.config.probe_every else {
            return false;
        };
        let state = self.state();
        let last = state.ranges.get(key).and_then(|r| r.last_probe);
        // a --once run checks each range once, at the end of its catch-up
        last.is_none() || (!self.config.once && last.is_some_and(|t| t.elapsed() >= every))
    }

    /// Where the next probe of a range starts: the end of the window the last agreeing probe
    /// covered (`migration.feed_checks`), or, for a range never probed, where its feed started.
    pub(super) async fn probed_to(
        &self,
        container: &str,
        range_no: i32,
    ) -> Result<i64, ReplicateError> {
        let key = (container.to_owned(), range_no);
        if let Some(to) = self.state().ranges.get(&key).and_then(|r| r.probed_to) {
            return Ok(to);
        }
        let stored = feed_checks::load(self.pool, self.job, container, range_no)
            .await?
            .and_then(|c| c.probed_to);
        let to = stored.unwrap_or(match self.config.start {
            StartAt::Beginning => 0,
            StartAt::Time(t) => t.timestamp(),
            StartAt::Now => self.started_secs,
        });
        self.state().ranges.entry(key).or_default().probed_to = Some(to);
        Ok(to)
    }

    /// The cross-check: every document of the range changed in `[probed_to, read_at -
    /// overlap)` must have been delivered by the feed, which said at `read_at` that it had
    /// nothing more: that is, be in PostgreSQL at that version or newer (or quarantined, or held
    /// back by a PostgreSQL change Cosmos has not taken), or have been delivered in this run.
    /// The window's end leaves the overlap for the clock skew between this host and Cosmos, so
    /// a change made after the read is never taken for a miss. Returns whether they agree; a
    /// disagreement is logged as an error, counted in the report and recorded in
    /// `migration.feed_checks` (which `serve` exports), and the window is checked again next
    /// time.
    pub(super) async fn cross_check(
        &self,
        container: &'static str,
        range_no: i32,
        range: &FeedRangeKey,
        read_at: i64,
    ) -> Result<bool, ReplicateError> {
        let key = (container.to_owned(), range_no);
        let from = self.probed_to(container, range_no).await?;
        let overlap = i64::try_from(self.config.overlap.as_secs()).unwrap_or(i64::MAX);
        let to = read_at.saturating_sub(overlap);
        self.state()
            .ranges
            .entry(key.clone())
            .or_default()
            .last_probe = Some(Instant::now());
        if to <= from {
            return Ok(true);
        }
        let spec = QuerySpec::new(
            "select c.id, c._etag, c._ts from c where c._ts >= @from and c._ts < @to",
        )
        .param("@from", from)
        .param("@to", to)
        .in_feed_range(range.clone());
        let mut pages = self.containers[container].query_with_page_size::<Value>(
            spec,
            None::<ResumeToken>,
            self.config.page_size.max(1000),
        );
        let mut probed = 0u64;
        let mut missing = 0i64;
        while let Some(page) = pages.next_page().await? {
            let (mut ids, mut etags, mut ts) = (Vec::new(), Vec::new(), Vec::new());
            {
                let state = self.state();
                let delivered = state.ranges.get(&key).map(|r| &r.delivered);
                for doc in &page.items {
                    let (Some(id), Some(etag), Some(t)) = (
                        doc.get("id").and_then(Value::as_str),
                        doc.get("_etag").and_then(Value::as_str),
                        doc.get("_ts").and_then(Value::as_i64),
                    ) else {
                        continue;
                    };
                    probed += 1;
                    if delivered.is_some_and(|d| d.contains_key(etag)) {
                        continue;
                    }
                    ids.push(id.to_owned());
                    etags.push(etag.to_owned());
                    ts.push(t);
                }
            }
            if !ids.is_empty() {
                missing +=
                    feed_checks::unaccounted(self.pool, container, &ids, &etags, &ts).await?;
            }
        }
        let missing_docs = u64::try_from(missing).unwrap_or(0);
        {
            let mut state = self.state();
            let entry = state.containers.entry(container.to_owned()).or_default();
            entry.feed_probes += 1;
            if missing_docs > 0 {
                entry.feed_disagreements += 1;
            }
            state.ranges.entry(key.clone()).or_default().missing = missing_docs;
        }
        if missing == 0 {
            feed_checks::agreed(self.pool, self.job, container, range_no, to).await?;
            let mut state = self.state();
            let range = state.ranges.entry(key).or_default();
            range.probed_to = Some(to);
            range.delivered.retain(|_, t| *t >= to);
            tracing::debug!(
                container,
                range = range_no,
                probed,
                "change feed cross-checked"
            );
            return Ok(true);
        }
        let fallback = self.config.mode == ReplicationMode::Auto;
        tracing::error!(
            container,
            range = range_no,
            missing,
            probed,
            window_from = from,
            window_to = to,
            fallback,
            "the change feed disagrees with a _ts probe of the same range: documents changed in \
             cosmos that the feed never delivered{}",
            if fallback {
                "; this range is read from the _ts watermark instead"
            } else {
                " (change-feed mode: not worked around; `--mode auto` falls back to the \
                 watermark)"
            }
        );
        feed_checks::disagreed(
            self.pool, self.job, container, range_no, from, missing, fallback,
        )
        .await?;
        if fallback {
            self.enter_fallback(&key, from);
        }
        Ok(false)
    }
}
