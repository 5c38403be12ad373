//! Replication: catches writes that reach Cosmos without going through the router (the app
//! still writing to Cosmos directly) and applies them to PostgreSQL, continuously or once.
//!
//! **Change-feed mode** (the default): for each container of the user domain and each of its
//! feed ranges, a worker takes the range as a lease (job [`JOB`], one lease unit per
//! container), reads the range's change feed from the continuation saved in the lease row,
//! applies every page through [`mystira_copy::apply::write_page`] (the backfill's decoder, mapping
//! and version guard) and only then saves the page's continuation (write first, checkpoint
//! after). Delivery is therefore at least once, and exactly-once in effect: a page read again
//! after `kill -9` between the write and the checkpoint is `unchanged`, because the version
//! guard refuses to write a version that is already there. A range without a checkpoint starts
//! at the beginning of the feed (every document once, at its latest version), so nothing
//! written before or during a backfill can be missed.
//!
//! **Watermark mode** ([`ReplicationMode::Watermark`]), for servers without a change feed:
//! `select * from c where c._ts >= @since`, with `@since` the previous pass's watermark minus
//! an overlap window (`_ts` has one-second resolution, and a write can commit with a `_ts` a
//! little older than one already read). The watermark is the newest `_ts` the pass applied,
//! **capped at the second the pass started**: a document read early in a long pass and changed
//! while the pass still runs is not read again by that pass, and a watermark taken from a
//! later document's newer `_ts` would pass its change for good. The pass start is read on this
//! host's clock (Cosmos offers no clock reading the test server can serve), so the overlap
//! window also has to cover the skew between this host's clock and Cosmos's (see
//! `docs/replication.md`). Documents seen in the previous pass's window are recognised by
//! `_etag` and skipped, and anything else read twice is `unchanged` through the version guard.
//! The checkpoint (`{"since", "etags"}`) lives in the lease row of job [`WATERMARK_JOB`].
//!
//! **Deletes**: a latest-version feed and a watermark query carry none. A key-set comparison
//! (the ids PostgreSQL holds as not deleted in `migration.document_versions` against the ids in
//! Cosmos) reports the documents missing from Cosmos, and applies them as deletes
//! (`bulk::delete_document`, a tombstone version) only when [`ReplicateConfig::apply_deletes`]
//! says so. PostgreSQL is listed first and rows written in the last
//! [`ReplicateConfig::delete_grace`] are left out, and so are documents with an outbox row (a
//! write made in PostgreSQL first that Cosmos has not taken yet, phase 2), so a document created
//! (or written back) while the comparison runs is never taken for a delete. With
//! [`FeedMode::AllVersionsAndDeletes`] (accounts with continuous backup only) the feed reports
//! deletes itself; they are counted and applied under the same flag.
//!
//! **Sharing**: several replicator processes (and several workers in one) share the ranges:
//! a range is leased to one worker slot (`<host>:<pid>/<worker>.<slot>`), renewed with every
//! checkpoint and every poll, and taken over when its lease expires (at once when the holder
//! was a process of this host that no longer exists). Containers are served in dependency
//! order in every cycle (accounts before the profiles that point at them).
//!
//! **Lag**: per container, the seconds since every range this process serves was last caught
//! up (an upper bound on how far PostgreSQL is behind, near the poll interval while idle), and
//! apart from it the age of the newest `_ts` applied (which is no lag: it grows while nothing
//! is written).
//!
//! Nothing here logs ids, partition keys or document values: only containers, counts and
//! timings.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use mystira_cosmos_store::{
    Container, CosmosStore, FeedMode, FeedRangeKey, FeedStart, QuerySpec, ResumeToken,
};
use mystira_postgres::bulk::{self, DeleteOutcome};
use mystira_postgres::feed_checks;
use mystira_postgres::leases::{self, Lease, RangePlan};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::heartbeat::{Health, OutageBackoff};
use mystira_copy::apply::{Retries, write_page};
use mystira_copy::source::SourceDocument;
use mystira_copy::{CONTAINERS, ContainerCounts, local_owner};

/// The lease job of change-feed replication (one unit per container, one range per feed range).
pub const JOB: &str = "replicate";
/// The lease job of watermark replication (one unit and one range per container).
pub const WATERMARK_JOB: &str = "replicate-watermark";

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

    async fn call(&self, page: PageDone) {
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
    fn nothing(config: &ReplicateConfig, started: Instant) -> Self {
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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicateError {
    #[error("cosmos: {0}")]
    Cosmos(#[from] mystira_cosmos_store::Error),
    #[error("postgresql: {0}")]
    Store(#[from] mystira_domain::RepoError),
    #[error("a stored replication checkpoint is not valid ({0})")]
    BadCheckpoint(&'static str),
}

impl ReplicateError {
    /// The class of a store outage that a continuous run waits out (PostgreSQL unreachable;
    /// Cosmos throttling, unavailable, timing out, dropping connections or failing with a 5xx
    /// past the client's own retries), or `None` for an error that waiting does not fix (a
    /// refused key, a bad request, a corrupt checkpoint). Classes only: never a message.
    pub fn outage_class(&self) -> Option<&'static str> {
        use mystira_cosmos_store::ErrorKind;
        match self {
            ReplicateError::Cosmos(e) => match e.kind() {
                ErrorKind::Throttled => Some("cosmos_throttled"),
                ErrorKind::Unavailable => Some("cosmos_unavailable"),
                ErrorKind::Transport => Some("cosmos_transport"),
                // 501: the server does not implement the request (no change feed): no outage
                ErrorKind::Service if e.status().is_none_or(|(code, _)| code != 501) => {
                    Some("cosmos_service")
                }
                _ => None,
            },
            ReplicateError::Store(e) if e.is_retryable() => Some("postgres_unavailable"),
            _ => None,
        }
    }
}

/// Called after every applied page and at the end of every cycle with the report so far.
pub type Progress<'a> = &'a (dyn Fn(&ReplicateReport) + Send + Sync);

/// Runs replication: once to now (`config.once`), or until `stop` turns true (then the cycle
/// in progress finishes its current page, checkpoints, and the leases are released).
///
/// A continuous run never ends because a store is out: an error that
/// [`ReplicateError::outage_class`] names (PostgreSQL unreachable, Cosmos throttling, timing
/// out, dropping connections, answering 5xx) is logged by its class, reported to
/// `config.health`, and the cycle is tried again after a bounded exponential back-off (1 s
/// doubling to `config.outage_backoff_cap`); what was checkpointed stays, so the next cycle
/// resumes where the last checkpoint left it. A `--once` run returns the error instead.
pub async fn run_replication(
    pool: &PgPool,
    store: &CosmosStore,
    config: &ReplicateConfig,
    mut stop: watch::Receiver<bool>,
    progress: Progress<'_>,
) -> Result<ReplicateReport, ReplicateError> {
    let started = Instant::now();
    let mut outage = Outage::new(config);
    // Opening the containers and planning the ranges need both stores too.
    let replicator = loop {
        let opened = async {
            let replicator = Replicator::open(pool, store, config).await?;
            replicator.plan().await?;
            Ok::<_, ReplicateError>(replicator)
        }
        .await;
        match opened {
            Ok(replicator) => break replicator,
            Err(e) => {
                if !outage.wait(e, &mut stop).await? {
                    return Ok(ReplicateReport::nothing(config, started));
                }
            }
        }
    };
    outage.recovered();
    let mut last_delete_check: Option<Instant> = None;
    let result: Result<(), ReplicateError> = async {
        loop {
            let turn = async {
                replicator.cycle(&stop).await?;
                let stopping = *stop.borrow();
                let check_due = match config.delete_check_every {
                    None => false,
                    Some(_) if config.once => true,
                    Some(every) => last_delete_check.is_none_or(|t| t.elapsed() >= every),
                };
                if check_due && !stopping {
                    replicator.check_deletes().await?;
                    last_delete_check = Some(Instant::now());
                }
                Ok::<_, ReplicateError>(())
            }
            .await;
            if let Err(e) = turn {
                if outage.wait(e, &mut stop).await? {
                    continue;
                }
                return Ok(());
            }
            outage.recovered();
            progress(&replicator.report(started, false));
            if config.once || *stop.borrow() {
                return Ok(());
            }
            // Sleep until the next poll, or until asked to stop.
            if sleep_or_stop(config.poll, &mut stop).await {
                return Ok(());
            }
        }
    }
    .await;
    // Leases are released whatever happened, so another replicator can take over at once.
    let released = replicator.release_all().await;
    result?;
    match released {
        Ok(()) => {}
        // stopping during an outage: the leases expire by themselves
        Err(e) if !config.once && e.outage_class().is_some() => tracing::warn!(
            class = e.outage_class(),
            "leases not released (a store is out); they expire after the lease time"
        ),
        Err(e) => return Err(e),
    }
    Ok(replicator.report(started, !config.once))
}

/// Sleeps `pause`, or less when `stop` turns true; returns whether it did.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        changed = stop.changed() => {
            if changed.is_err() {
                // nobody can ask any more: just sleep
                tokio::time::sleep(pause).await;
            }
        }
    }
    *stop.borrow()
}

/// A continuous run's handling of store outages (see [`run_replication`]).
struct Outage<'a> {
    config: &'a ReplicateConfig,
    backoff: OutageBackoff,
    since: Option<Instant>,
}

impl<'a> Outage<'a> {
    fn new(config: &'a ReplicateConfig) -> Self {
        Self {
            config,
            backoff: OutageBackoff::new(OutageBackoff::INITIAL, config.outage_backoff_cap),
            since: None,
        }
    }

    /// `Err(e)` when `e` is not an outage or the run is `--once`; otherwise waits the next
    /// back-off and returns whether to try again (`false`: asked to stop meanwhile).
    async fn wait(
        &mut self,
        e: ReplicateError,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ReplicateError> {
        let class = match e.outage_class() {
            Some(class) if !self.config.once => class,
            _ => return Err(e),
        };
        self.since.get_or_insert_with(Instant::now);
        self.config.health.retrying(class);
        let delay = self.backoff.next_delay();
        tracing::warn!(
            class,
            attempt = self.backoff.attempts(),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "replication: a store is out; retrying"
        );
        Ok(!sleep_or_stop(delay, stop).await)
    }

    /// A cycle worked: the outage (if any) is over.
    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                attempts = self.backoff.attempts(),
                outage_seconds = since.elapsed().as_secs(),
                "replication: stores reachable again; resumed"
            );
        }
        self.backoff.reset();
        self.config.health.running();
    }
}

/// The run's shared state.
struct Replicator<'a> {
    pool: &'a PgPool,
    config: &'a ReplicateConfig,
    job: &'static str,
    containers: BTreeMap<&'static str, Container>,
    state: Mutex<State>,
    /// When this run started (epoch seconds, this host's clock): where a range never probed
    /// starts its probes with `--start now`.
    started_secs: i64,
}

#[derive(Default)]
struct State {
    cycles: u64,
    containers: BTreeMap<String, ContainerReplication>,
    /// per container: when every range served in the last cycle was caught up
    caught_up_at: BTreeMap<String, Instant>,
    deletes: BTreeMap<String, DeleteCheck>,
    /// every slot owner this process used, released at the end
    owners: BTreeSet<String>,
    /// per (container, range number): the change feed's cross-check and fallback
    ranges: BTreeMap<(String, i32), RangeState>,
}

/// A feed range's cross-check state in this process.
#[derive(Debug, Default)]
struct RangeState {
    /// Loaded from `migration.feed_checks` (or the start position) at the first probe.
    probed_to: Option<i64>,
    last_probe: Option<Instant>,
    /// `_etag` -> `_ts` of what the feed delivered since `probed_to` (what PostgreSQL may not
    /// show as a source version: a copy held back, a document quarantined under another id).
    delivered: HashMap<String, i64>,
    /// Documents the latest probe found missing.
    missing: u64,
    /// Auto mode: read from the `_ts` watermark, from this checkpoint, for the rest of the run.
    fallback: Option<Watermark>,
}

/// At most this many delivered `_etag`s are remembered per range between two agreeing probes;
/// past it they are forgotten and PostgreSQL's source versions alone account for them.
const DELIVERED_KEPT: usize = 200_000;

/// How one turn on a range ended.
enum Turn {
    /// Everything the range held is applied; for a change feed, with the second (this host's
    /// clock, epoch) of the read that said so.
    CaughtUp(Option<i64>),
    /// Stopped before catching up (asked to stop, or the lease went to another worker).
    Interrupted,
}

/// A feed turn's end, and the position it saved last.
struct FeedTurn {
    turn: Turn,
    position: Option<Value>,
}

impl<'a> Replicator<'a> {
    async fn open(
        pool: &'a PgPool,
        store: &CosmosStore,
        config: &'a ReplicateConfig,
    ) -> Result<Self, ReplicateError> {
        let mut containers = BTreeMap::new();
        for name in CONTAINERS {
            match store.container(name).await {
                Ok(c) => {
                    containers.insert(name, c);
                }
                Err(e) if e.kind() == mystira_cosmos_store::ErrorKind::NotFound => {
                    tracing::info!(container = name, "container not in cosmos, skipped");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let job = match config.mode {
            ReplicationMode::ChangeFeed | ReplicationMode::Auto => JOB,
            ReplicationMode::Watermark => WATERMARK_JOB,
        };
        Ok(Self {
            pool,
            config,
            job,
            containers,
            state: Mutex::new(State::default()),
            started_secs: now_secs(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates the lease rows (the first replicator to start does; later ones join them) and
    /// frees the ranges of dead local processes.
    async fn plan(&self) -> Result<(), ReplicateError> {
        let mut plans = Vec::new();
        for (name, container) in &self.containers {
            let ranges = match self.config.mode {
                ReplicationMode::ChangeFeed | ReplicationMode::Auto => container
                    .feed_ranges()
                    .await?
                    .into_iter()
                    .map(|r| RangePlan {
                        start: Value::String(r.as_str().to_owned()),
                        end: None,
                    })
                    .collect(),
                ReplicationMode::Watermark => vec![RangePlan {
                    start: Value::Null,
                    end: None,
                }],
            };
            plans.push(((*name).to_owned(), ranges));
        }
        // Replication ranges are never done, so once planned the job is always joined: its
        // checkpoints survive every restart.
        let joined = leases::start_or_join(self.pool, self.job, false, &plans).await?;
        if joined {
            self.release_dead_local_owners().await?;
        }
        Ok(())
    }

    /// One pass over every container, in dependency order: each container's ranges are served
    /// by the workers in parallel, and the next container starts when they are done.
    async fn cycle(&self, stop: &watch::Receiver<bool>) -> Result<(), ReplicateError> {
        for name in CONTAINERS {
            if !self.containers.contains_key(name) {
                continue;
            }
            if *stop.borrow() {
                break;
            }
            let workers =
                (0..self.config.workers.max(1)).map(|w| self.serve_container(name, w, stop));
            let served: Vec<(u64, bool)> = futures::future::try_join_all(workers).await?;
            let ranges: u64 = served.iter().map(|(n, _)| n).sum();
            let all_caught_up = served.iter().all(|(_, c)| *c);
            let mut state = self.state();
            let entry = state.containers.entry(name.to_owned()).or_default();
            entry.ranges_served = ranges;
            if all_caught_up && ranges > 0 {
                state.caught_up_at.insert(name.to_owned(), Instant::now());
            }
        }
        self.state().cycles += 1;
        Ok(())
    }

    /// Worker `w` serves every range of `container` it can lease, one slot per range; returns
    /// how many ranges it served and whether they all caught up.
    async fn serve_container(
        &self,
        container: &'static str,
        worker: usize,
        stop: &watch::Receiver<bool>,
    ) -> Result<(u64, bool), ReplicateError> {
        let mut served = 0;
        let mut all_caught_up = true;
        // A slot holds at most one range of a container, so the number of slots a worker
        // needs is bounded by the container's ranges.
        for slot in 0..1024 {
            if *stop.borrow() {
                break;
            }
            let owner = format!("{}/{worker}.{slot}", self.config.owner);
            let Some(lease) =
                leases::take(self.pool, self.job, container, &owner, self.config.lease).await?
            else {
                break;
            };
            self.state().owners.insert(owner.clone());
            let turn = match self.config.mode {
                ReplicationMode::ChangeFeed | ReplicationMode::Auto => {
                    self.feed_range_turn(container, &owner, &lease, stop)
                        .await?
                }
                ReplicationMode::Watermark => {
                    self.watermark_turn(container, &owner, &lease, stop).await?
                }
            };
            served += 1;
            all_caught_up &= matches!(turn, Turn::CaughtUp(_));
        }
        Ok((served, all_caught_up))
    }

    /// A turn on one feed range in change-feed or auto mode: the feed from its checkpoint
    /// until caught up, then (when due) the cross-check against a `_ts` probe of the range. In
    /// auto mode a range whose feed disagreed, or cannot be read here, is read from the `_ts`
    /// watermark instead.
    async fn feed_range_turn(
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

    fn in_fallback(&self, key: &(String, i32)) -> bool {
        self.state()
            .ranges
            .get(key)
            .is_some_and(|r| r.fallback.is_some())
    }

    /// Auto mode: the range is read from the watermark from `from` on (the end of the last
    /// window its probe found complete), for the rest of the run.
    fn enter_fallback(&self, key: &(String, i32), from: i64) {
        let mut state = self.state();
        let range = state.ranges.entry(key.clone()).or_default();
        range.fallback = Some(Watermark {
            since: Some(from),
            etags: Vec::new(),
        });
        range.delivered.clear();
    }

    fn probe_due(&self, key: &(String, i32)) -> bool {
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
    async fn probed_to(&self, container: &str, range_no: i32) -> Result<i64, ReplicateError> {
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
    async fn cross_check(
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

    /// Auto mode: one watermark pass over one feed range (`in_feed_range`), from the range's
    /// fallback checkpoint (kept in this process). The lease row keeps the feed's position
    /// (`position`, saved as it is): the feed is tried again by the next run.
    async fn fallback_turn(
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

    /// One watermark pass over a container: everything with `_ts` at or after the checkpoint
    /// minus the overlap window.
    async fn watermark_turn(
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

    fn record(
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

    /// The key-set comparison: ids PostgreSQL holds as not deleted (listed first, older than
    /// the grace period, with no outbox row still to deliver them to Cosmos) that Cosmos does
    /// not hold are deletes.
    async fn check_deletes(&self) -> Result<(), ReplicateError> {
        let grace_ms = i64::try_from(self.config.delete_grace.as_millis()).unwrap_or(i64::MAX);
        for (name, handle) in &self.containers {
            let postgres: Vec<(String, uuid::Uuid)> = sqlx::query_as(
                "select v.document_id, v.key from migration.document_versions v
                 where v.container = $1 and not v.deleted
                   and v.written_at < now() - $2 * interval '1 millisecond'
                   and not exists (select 1 from migration.outbox o
                                   where o.container = v.container and o.key = v.key)",
            )
            .bind(*name)
            .bind(grace_ms)
            .fetch_all(self.pool)
            .await
            .map_err(|e| mystira_postgres::map_sqlx_error("document_versions", e))?;
            let mut cosmos: HashSet<String> = HashSet::new();
            let mut pages = handle.query_with_page_size::<Value>(
                QuerySpec::new("select c.id from c"),
                None,
                self.config.page_size.max(1000),
            );
            while let Some(page) = pages.next_page().await? {
                cosmos.extend(
                    page.items
                        .iter()
                        .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_owned)),
                );
            }
            let mut check = DeleteCheck {
                postgres_ids: postgres.len() as u64,
                cosmos_ids: cosmos.len() as u64,
                ..DeleteCheck::default()
            };
            let now = now_secs();
            for (id, key) in postgres.iter().filter(|(id, _)| !cosmos.contains(id)) {
                check.missing_from_cosmos += 1;
                if self.config.apply_deletes {
                    match bulk::delete_document(self.pool, name, id, *key, now).await? {
                        DeleteOutcome::Deleted { .. } => check.applied += 1,
                        DeleteOutcome::Superseded => check.superseded += 1,
                    }
                }
            }
            if check.missing_from_cosmos > 0 {
                tracing::info!(
                    container = *name,
                    missing = check.missing_from_cosmos,
                    applied = check.applied,
                    "documents missing from cosmos"
                );
            }
            self.state().deletes.insert((*name).to_owned(), check);
        }
        Ok(())
    }

    /// A delete the feed reported: applied when PostgreSQL knows the document.
    async fn apply_delete(&self, container: &str, id: &str, ts: i64) -> Result<(), ReplicateError> {
        let key: Option<uuid::Uuid> = sqlx::query_scalar(
            "select key from migration.document_versions where container = $1 and document_id = $2",
        )
        .bind(container)
        .bind(id)
        .fetch_optional(self.pool)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("document_versions", e))?;
        if let Some(key) = key {
            bulk::delete_document(self.pool, container, id, key, ts).await?;
        }
        Ok(())
    }

    fn report(&self, started: Instant, stopped: bool) -> ReplicateReport {
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

    async fn release_all(&self) -> Result<(), ReplicateError> {
        let owners: Vec<String> = self.state().owners.iter().cloned().collect();
        for owner in owners {
            leases::release(self.pool, self.job, &owner).await?;
        }
        Ok(())
    }

    /// Leases held by processes of this host that no longer exist (killed) are released at
    /// once, so a restart resumes without waiting for them to expire. Other hosts' leases are
    /// left to expire: their liveness cannot be checked from here.
    async fn release_dead_local_owners(&self) -> Result<(), ReplicateError> {
        let here = local_owner(0);
        let host_prefix = here.trim_end_matches('0');
        for owner in leases::owners(self.pool, self.job).await? {
            let Some(rest) = owner.strip_prefix(host_prefix) else {
                continue;
            };
            let pid = rest.split('/').next().and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let released = leases::release(self.pool, self.job, &owner).await?;
                tracing::info!(released, "released the ranges of a dead local replicator");
            }
        }
        Ok(())
    }
}

/// What a watermark pass did: the next checkpoint (`None`: interrupted, read again), when it
/// started (and its start in `_ts` terms, the cap), and the range's counts after it.
struct WatermarkPass {
    next: Option<Watermark>,
    started: Instant,
    cap: i64,
    range_counts: ContainerCounts,
}

/// The range a lease row of a feed-range job names.
fn feed_range_of(lease: &Lease) -> Result<FeedRangeKey, ReplicateError> {
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

/// The watermark checkpoint: the newest `_ts` applied, and the `_etag`s read inside the
/// overlap window below it (skipped when read again).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
struct Watermark {
    since: Option<i64>,
    etags: Vec<String>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers may run replication on a multi-threaded runtime (spawned), so it must be `Send`.
    #[allow(dead_code)]
    fn replication_is_send(
        pool: &PgPool,
        store: &CosmosStore,
        config: &ReplicateConfig,
        stop: watch::Receiver<bool>,
    ) {
        fn send<T: Send>(_: T) {}
        send(run_replication(pool, store, config, stop, &|_| {}));
    }

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
