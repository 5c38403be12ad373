//! The ranges of a live Cosmos container (the rule they keep is on [`CosmosSource`]):
//! planning them (feed ranges, each split by `_ts` where more ranges are asked for), and reading
//! a range's first pass (a `_ts` interval) and, for the last range of a feed range, its final
//! pass (the change feed after planning).

use mystira_cosmos_store::FeedRangeKey;

use super::cosmos::{CosmosSource, cosmos_err};
use super::{DocumentSource, RangePlan, SourceDocument, SourceError, SourcePage};

impl CosmosSource {
    /// [`DocumentSource::plan_ranges`] of a live container.
    pub(super) async fn plan_live_ranges(
        &self,
        container: &str,
        n: usize,
    ) -> Result<Vec<RangePlan>, SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let feeds = match handle.feed_ranges().await {
            Ok(feeds) if !feeds.is_empty() => feeds,
            Ok(_) => {
                tracing::warn!(
                    container,
                    "the server reports no feed ranges: one is assumed"
                );
                vec![FeedRangeKey::full()]
            }
            // an outage is an outage; a server without the call is read as one feed range
            Err(e) if e.is_retryable() => return Err(cosmos_err(e)),
            Err(e) => {
                tracing::warn!(container, error = %e, "feed ranges unavailable: one is assumed");
                vec![FeedRangeKey::full()]
            }
        };
        let per_feed = n.max(1).div_ceil(feeds.len());
        // bounded ranges first, open-ended last: workers take the lowest range first, so a
        // worker reaches an open range's final pass only once every bounded one is taken
        let (mut bounded, mut open) = (Vec::new(), Vec::new());
        for feed in feeds {
            // before the newest `_ts`: a write after this position is in the change feed, and
            // one before it has a `_ts` at most the newest read below
            let changes_after = self.feed_position_now(&handle, container, &feed).await?;
            let newest = self.ts_edge(&handle, &feed, true).await?;
            let cuts = match (per_feed > 1, newest) {
                (true, Some(newest)) => match self.ts_edge(&handle, &feed, false).await? {
                    Some(oldest) => ts_boundaries(oldest, newest, per_feed),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut from = None;
            for cut in cuts {
                let range = LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: None,
                    ts_through: None,
                    final_from: None,
                };
                bounded.push(range.plan(Some(cut)));
                from = Some(cut);
            }
            let last = match changes_after {
                Some(token) => LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: Some(token),
                    ts_through: newest,
                    final_from: None,
                },
                None => LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: None,
                    ts_through: None,
                    final_from: newest.or(from),
                },
            };
            open.push(last.plan(None));
        }
        bounded.extend(open);
        Ok(bounded)
    }

    /// [`DocumentSource::read_range_page`] of a live container's range.
    pub(super) async fn read_live_range_page(
        &self,
        container: &str,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let bad = |message: String| SourceError::BadPosition {
            container: container.to_owned(),
            message,
        };
        // a run planned before live containers were split has one range starting at null and
        // a bare continuation token as its position
        let Ok(live) = serde_json::from_value::<LiveRange>(range.start.clone()) else {
            let start = Some(&range.start).filter(|s| !s.is_null());
            return self.read_page(container, position.or(start), max).await;
        };
        let position = match position {
            None => LivePosition {
                pass: Pass::First,
                token: None,
            },
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| bad(e.to_string()))?,
        };
        let ts_to = match &range.end {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| bad("a live range ends at a _ts (seconds)".into()))?,
            ),
        };
        // the last range of a feed range planned with its change-feed position
        let through = match (&live.changes_after, ts_to) {
            (Some(after), None) => {
                if position.pass == Pass::Final {
                    let from = position.token.clone().unwrap_or_else(|| after.clone());
                    return self.changes_page(container, &live, from, max).await;
                }
                match live.ts_through {
                    Some(through) => Some(through),
                    // empty at planning: every document it holds now is in the change feed
                    None => {
                        let next = LivePosition {
                            pass: Pass::Final,
                            token: None,
                        };
                        return Ok(SourcePage {
                            documents: Vec::new(),
                            next: Some(serde_json::to_value(next).unwrap_or_default()),
                        });
                    }
                }
            }
            _ => None,
        };
        let (lower, upper) = match position.pass {
            Pass::First => (live.ts_from, ts_to),
            Pass::Final => (live.final_from.max(live.ts_from), ts_to),
        };
        let mut text = String::from("select * from c");
        let mut conditions = Vec::new();
        if lower.is_some() {
            conditions.push("c._ts >= @lo");
        }
        if upper.is_some() {
            conditions.push("c._ts < @hi");
        }
        if through.is_some() {
            conditions.push("c._ts <= @through");
        }
        if !conditions.is_empty() {
            text.push_str(" where ");
            text.push_str(&conditions.join(" and "));
        }
        text.push_str(" order by c._ts");
        let mut spec = mystira_cosmos_store::QuerySpec::new(text)
            .in_feed_range(FeedRangeKey::from_string(live.feed_range.clone()));
        if let Some(lo) = lower {
            spec = spec.param("@lo", lo);
        }
        if let Some(hi) = upper {
            spec = spec.param("@hi", hi);
        }
        if let Some(through) = through {
            spec = spec.param("@through", through);
        }
        let resume = position
            .token
            .clone()
            .map(mystira_cosmos_store::ResumeToken::from_string);
        let (documents, token) = self.query_page(container, spec, resume, max).await?;
        let next = match (token, position.pass, ts_to) {
            (Some(token), pass, _) => Some(LivePosition {
                pass,
                token: Some(token),
            }),
            // the first pass of the open-ended range is over: its final pass is next
            (None, Pass::First, None) => Some(LivePosition {
                pass: Pass::Final,
                token: None,
            }),
            (None, _, _) => None,
        };
        Ok(SourcePage {
            documents,
            next: next.map(|p| serde_json::to_value(p).unwrap_or_default()),
        })
    }

    /// The oldest (`newest = false`) or newest `_ts` in `range`, `None` when it is empty.
    async fn ts_edge(
        &self,
        handle: &mystira_cosmos_store::Container,
        range: &FeedRangeKey,
        newest: bool,
    ) -> Result<Option<i64>, SourceError> {
        let order = if newest { "desc" } else { "asc" };
        // TOP and the order are ours, not a caller's value, so they are part of the text
        let spec = mystira_cosmos_store::QuerySpec::new(format!(
            "select top 1 c._ts from c order by c._ts {order}"
        ))
        .in_feed_range(range.clone());
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, None, 1);
        while let Some(page) = pages.next_page().await.map_err(cosmos_err)? {
            if let Some(doc) = page.items.first() {
                return Ok(doc.get("_ts").and_then(serde_json::Value::as_i64));
            }
        }
        Ok(None)
    }

    /// The position of `range`'s change feed now (latest version), or `None` when the server
    /// has no change feed (the range is then planned with the query-based final pass).
    async fn feed_position_now(
        &self,
        handle: &mystira_cosmos_store::Container,
        container: &str,
        range: &FeedRangeKey,
    ) -> Result<Option<String>, SourceError> {
        let mut feed = handle.change_feed_with_page_size(
            range,
            mystira_cosmos_store::FeedStart::Now,
            mystira_cosmos_store::FeedMode::LatestVersion,
            1,
        );
        match feed.next_page().await {
            // a change in this very request comes before the newest `_ts` is read: its `_ts`
            // is at most that, so the first pass reads it; the position after it is as good
            Ok(page) => Ok(Some(page.token().as_str().to_owned())),
            Err(e) if e.is_retryable() => Err(cosmos_err(e)),
            Err(e) => {
                tracing::warn!(
                    container,
                    error = %e,
                    "no change feed: the last range's final pass reads the newest seconds again"
                );
                Ok(None)
            }
        }
    }

    /// A page of the final pass: the changes of `live`'s feed range after `from` (a change-feed
    /// token), and the position after them; `next` is `None` once the feed is caught up.
    async fn changes_page(
        &self,
        container: &str,
        live: &LiveRange,
        from: String,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let mut feed = handle.change_feed_with_page_size(
            &FeedRangeKey::from_string(live.feed_range.clone()),
            mystira_cosmos_store::FeedStart::Token(
                mystira_cosmos_store::ChangeFeedToken::from_string(from),
            ),
            mystira_cosmos_store::FeedMode::LatestVersion,
            u32::try_from(max).unwrap_or(u32::MAX),
        );
        let page = feed.next_page().await.map_err(cosmos_err)?;
        if page.is_caught_up() {
            return Ok(SourcePage::default());
        }
        let next = LivePosition {
            pass: Pass::Final,
            token: Some(page.token().as_str().to_owned()),
        };
        Ok(SourcePage {
            documents: page
                .documents
                .into_iter()
                .map(SourceDocument::Document)
                .collect(),
            next: Some(serde_json::to_value(next).unwrap_or_default()),
        })
    }
}

/// [`DocumentSource::awaits_bounded_ranges`] of a live container: the open-ended range at the
/// start of its final pass waits for the container's bounded ranges.
pub(super) fn awaits_bounded_ranges(
    range: &RangePlan,
    position: Option<&serde_json::Value>,
) -> bool {
    let open = range.end.as_ref().is_none_or(serde_json::Value::is_null);
    let at_final = position
        .and_then(|p| serde_json::from_value::<LivePosition>(p.clone()).ok())
        .is_some_and(|p| p.pass == Pass::Final && p.token.is_none());
    open && at_final
}

/// A planned range of a live container: a feed range and a `_ts` interval
/// (`ts_from <= _ts < ts_to`, either side open), and for the last range of its feed range,
/// what its final pass reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LiveRange {
    feed_range: String,
    ts_from: Option<i64>,
    /// The feed range's change-feed position taken at planning, before its newest `_ts` was
    /// read: the final pass reads the changes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changes_after: Option<String>,
    /// With `changes_after`: the newest `_ts` at planning, where the first pass stops
    /// (inclusive); `None`: the feed range was empty then, and there is no first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts_through: Option<i64>,
    /// Without `changes_after` (no change feed, or a plan of an earlier version): the first
    /// pass is open-ended and the final pass reads again every document from this `_ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    final_from: Option<i64>,
}

impl LiveRange {
    fn plan(self, ts_to: Option<i64>) -> RangePlan {
        RangePlan {
            start: serde_json::to_value(&self).unwrap_or_default(),
            end: ts_to.map(serde_json::Value::from),
        }
    }
}

/// Where a live range's copy is: the pass (`first`, then `final` for the open-ended range) and
/// the SDK's continuation token within it (`None`: the pass's beginning).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LivePosition {
    pass: Pass,
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Pass {
    First,
    Final,
}

/// `k - 1` boundaries splitting the seconds `oldest..=newest` into `k` about equal intervals;
/// each is above `oldest` and at most `newest` (fewer when there are fewer seconds).
fn ts_boundaries(oldest: i64, newest: i64, k: usize) -> Vec<i64> {
    if newest <= oldest || k < 2 {
        return Vec::new();
    }
    let span = i128::from(newest) - i128::from(oldest) + 1;
    let k = k as i128;
    let mut out: Vec<i64> = (1..k)
        .filter_map(|i| i64::try_from(i128::from(oldest) + span * i / k).ok())
        .filter(|b| *b > oldest && *b <= newest)
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_boundaries_split_the_seconds_evenly_within_oldest_and_newest() {
        assert_eq!(ts_boundaries(100, 107, 4), vec![102, 104, 106]);
        assert_eq!(ts_boundaries(100, 101, 4), vec![101]);
        assert!(ts_boundaries(100, 100, 4).is_empty());
        assert!(ts_boundaries(100, 200, 1).is_empty());
        for (oldest, newest, k) in [(0, 1000, 7), (5, 9, 16), (i64::MAX - 3, i64::MAX, 3)] {
            let cuts = ts_boundaries(oldest, newest, k);
            assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
            assert!(cuts.iter().all(|c| *c > oldest && *c <= newest), "{cuts:?}");
        }
    }
}
