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
//! [`FeedMode::AllVersionsAndDeletes`](mystira_cosmos_store::FeedMode::AllVersionsAndDeletes)
//! (accounts with continuous backup only) the feed reports deletes itself; they are counted and
//! applied under the same flag.
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
//!
//! Layout: `config` and `report` (with `error`) are the run's inputs and outputs; `run` is the
//! continuous runner; `ranges` plans, serves and releases the leased ranges; `feed` reads a
//! range's change feed, `cross_check` compares it with a `_ts` probe, `watermark` reads by `_ts`
//! instead; `deletes` finds and applies deletes.

mod config;
mod cross_check;
mod deletes;
mod error;
mod feed;
mod ranges;
mod report;
mod run;
mod watermark;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mystira_copy::CONTAINERS;
use mystira_cosmos_store::{Container, CosmosStore};
use sqlx::PgPool;

pub use config::{BadStart, PageDone, PageHook, ReplicateConfig, ReplicationMode, StartAt};
pub use error::ReplicateError;
pub use report::{ContainerReplication, DeleteCheck, ReplicateReport};
pub use run::{Progress, run_replication};
use watermark::Watermark;

/// The lease job of change-feed replication (one unit per container, one range per feed range).
pub const JOB: &str = "replicate";
/// The lease job of watermark replication (one unit and one range per container).
pub const WATERMARK_JOB: &str = "replicate-watermark";

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
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
