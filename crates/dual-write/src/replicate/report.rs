//! What a replication run reports: per-container counts and lag, the key-set comparison's
//! findings, and how the run's shared state is recorded into them.

use std::collections::BTreeMap;
use std::time::Instant;

use mystira_copy::ContainerCounts;
use mystira_cosmos_store::FeedMode;
use serde::Serialize;

use super::{ReplicateConfig, ReplicationMode, Replicator, now_secs};

/// What this process did to one container, and how far behind it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerReplication {
    #[serde(flatten)]
    pub counts: ContainerCounts,
    /// Pages read that had changes.
    pub pages: u64,
    /// Watermark mode: documents read again inside the overlap window and skipped by `_etag`.
    pub duplicates_skipped: u64,
    /// Ranges of this container this process served in its last cycle.
    pub ranges_served: u64,
    /// The newest `_ts` applied (epoch seconds).
    pub newest_ts: Option<i64>,
    /// How far behind Cosmos PostgreSQL may be for this container, an upper bound: seconds
    /// since every range of it this process served was last caught up (everything Cosmos had
    /// committed before that moment is applied). Stays near the poll interval while the
    /// replicator is idle and caught up. `None`: not caught up yet.
    pub lag_seconds: Option<f64>,
    /// Seconds between now and `newest_ts`: how old the newest change seen is. Not a lag: it
    /// grows while nothing is written to Cosmos.
    pub newest_change_age_seconds: Option<f64>,
    /// Deletes reported by an all-versions-and-deletes feed.
    pub feed_deletes: u64,
    /// Cross-checks of a range's change feed against a `_ts` probe of the same range.
    pub feed_probes: u64,
    /// Of those, the ones that found documents changed in Cosmos that the feed never delivered.
    pub feed_disagreements: u64,
    /// The documents the latest probe of each range found missing from its feed (0 when it
    /// agreed), summed over the ranges.
    pub feed_missing: u64,
    /// Ranges read from the `_ts` watermark instead of their feed (auto mode).
    pub fallback_ranges: u64,
}

/// What the key-set comparison found in one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteCheck {
    /// Ids PostgreSQL holds (not deleted, older than the grace period).
    pub postgres_ids: u64,
    /// Ids Cosmos holds.
    pub cosmos_ids: u64,
    /// Documents in PostgreSQL that Cosmos no longer has.
    pub missing_from_cosmos: u64,
    /// Of those, deletes applied (tombstone recorded).
    pub applied: u64,
    /// Of those, deletes that lost to a newer version.
    pub superseded: u64,
}

/// The result of a replication run.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicateReport {
    pub mode: ReplicationMode,
    pub feed_mode: FeedMode,
    pub owner: String,
    pub cycles: u64,
    pub containers: BTreeMap<String, ContainerReplication>,
    /// The last key-set comparison, per container (absent when none ran).
    pub deletes: BTreeMap<String, DeleteCheck>,
    pub apply_deletes: bool,
    pub elapsed_seconds: f64,
    /// Whether the run stopped because it was asked to (not `--once`).
    pub stopped: bool,
}

impl ReplicateReport {
    /// The report of a run that stopped before it could start (asked to stop while a store
    /// was out).
    pub(super) fn nothing(config: &ReplicateConfig, started: Instant) -> Self {
        Self {
            mode: config.mode,
            feed_mode: config.feed_mode,
            owner: config.owner.clone(),
            cycles: 0,
            containers: BTreeMap::new(),
            deletes: BTreeMap::new(),
            apply_deletes: config.apply_deletes,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            stopped: true,
        }
    }

    /// Whether every document read is accounted for.
    pub fn reconciles(&self) -> bool {
        self.containers.values().all(|c| c.counts.reconciles())
    }

    /// Probes that found the change feed missing documents, over every container.
    pub fn feed_disagreements(&self) -> u64 {
        self.containers.values().map(|c| c.feed_disagreements).sum()
    }

    /// Documents PostgreSQL holds that Cosmos no longer has and that were not deleted here.
    pub fn unapplied_deletes(&self) -> u64 {
        self.deletes
            .values()
            .map(|d| d.missing_from_cosmos - d.applied - d.superseded)
            .sum()
    }
}

impl Replicator<'_> {
    pub(super) fn record(
        &self,
        container: &str,
        page: &ContainerCounts,
        pages: u64,
        duplicates: u64,
        newest: Option<i64>,
        feed_deletes: u64,
    ) {
        let mut state = self.state();
        let entry = state.containers.entry(container.to_owned()).or_default();
        entry.counts.add(page);
        entry.pages += pages;
        entry.duplicates_skipped += duplicates;
        entry.newest_ts = entry.newest_ts.max(newest);
        entry.feed_deletes += feed_deletes;
    }

    pub(super) fn report(&self, started: Instant, stopped: bool) -> ReplicateReport {
        let state = self.state();
        let now = now_secs();
        let mut containers = state.containers.clone();
        for (name, c) in &mut containers {
            // the lag is the caught-up bound, not the age of the newest change: that one grows
            // while nothing is written, however caught up the replicator is
            c.lag_seconds = state
                .caught_up_at
                .get(name)
                .map(|t| t.elapsed().as_secs_f64());
            c.newest_change_age_seconds = c.newest_ts.map(|ts| (now - ts).max(0) as f64);
            let ranges = state.ranges.iter().filter(|((n, _), _)| n == name);
            let (mut missing, mut fallback) = (0, 0);
            for (_, r) in ranges {
                missing += r.missing;
                fallback += u64::from(r.fallback.is_some());
            }
            c.feed_missing = missing;
            c.fallback_ranges = fallback;
        }
        ReplicateReport {
            mode: self.config.mode,
            feed_mode: self.config.feed_mode,
            owner: self.config.owner.clone(),
            cycles: state.cycles,
            containers,
            deletes: state.deletes.clone(),
            apply_deletes: self.config.apply_deletes,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_reason() {
        let mut total = ContainerCounts::default();
        let page = ContainerCounts {
            read: 3,
            written: 1,
            unchanged: 1,
            quarantined: 0,
            skipped: [("duplicate".to_owned(), 1)].into(),
            ..ContainerCounts::default()
        };
        total.add(&page);
        total.add(&page);
        assert_eq!(total.read, 6);
        assert_eq!(total.skipped["duplicate"], 2);
        assert!(total.reconciles());
    }
}
