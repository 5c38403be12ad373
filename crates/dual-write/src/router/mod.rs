//! The dual-write router: every repository port of the user domain over the two real stores,
//! choosing them by phase, so that the app moves from Cosmos to PostgreSQL (and back) without
//! losing a write. This replaces the spec's `DualWriteUserRepository`, whose phase-1 write was
//! fire-and-forget (`Task.Run`, errors only logged) and whose phase-2 fallback was unguarded.
//!
//! | phase | a write | a read |
//! |---|---|---|
//! | 0 `cosmos-only` | Cosmos | Cosmos |
//! | 1 `dual-write-cosmos-read` | Cosmos (its failure is the caller's); then the documents Cosmos stored are copied into PostgreSQL through the backfill's version guard; if that fails, they go to the retry journal in PostgreSQL, and if PostgreSQL is down, to a local journal file fsynced before the call returns | Cosmos |
//! | 2 `dual-write-postgres-read` | PostgreSQL, with an outbox row written by a trigger in the same transaction (its failure is the caller's); then the aggregate is delivered to Cosmos, inline or by the background work ([`Phase2Delivery`]), and what does not get through is left to the relay | PostgreSQL; a point lookup that misses falls back to Cosmos and back-fills PostgreSQL through the version guard |
//! | 3 `postgres-only` | PostgreSQL | PostgreSQL |
//!
//! The phase is looked up per call ([`PhaseSource::phase_for`]), with the account the call
//! concerns when the call names one (canary overrides); calls keyed by a profile, a badge or a
//! sign-up use the domain-wide phase. Every path is idempotent and version-guarded, so a call
//! in flight while the phase changes still leaves both stores consistent: a phase-1 copy that
//! lands after a phase-2 write of the same aggregate is held back by the pending outbox row.
//!
//! Nothing is only logged: the one outcome the router cannot make durable (Cosmos took the
//! write and neither PostgreSQL nor the local journal could record it) is returned as
//! [`RepoError::Unavailable`](mystira_domain::RepoError::Unavailable) naming that, so the caller
//! retries.
//!
//! Layout: `config` (the phase source, modes and timeouts), the phase dispatch here (`write`,
//! `read`, `list`), `phase1` and `phase2` (each phase's second store), `ports` (the repository
//! ports over the dispatch), `stats` (counters and the write observer), `background` (the
//! journal replay and relay the router wakes).

mod background;
mod config;
mod phase1;
mod phase2;
mod ports;
mod stats;

use std::fmt;
use std::sync::Arc;

use mystira_cosmos_codec::codec::Container;
use mystira_cosmos_store::CosmosRepositories;
use mystira_cosmos_store::capture::capture_writes;
use mystira_domain::phase::Phase;
use mystira_domain::ports::RepoResult;
use mystira_postgres::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::journal::FileJournal;

pub use background::{BackgroundConfig, BackgroundReport, run_background};
pub use config::{FixedPhase, Phase1Copy, Phase2Delivery, PhaseSource, RouterConfig};
use stats::Counters;
pub use stats::{RouterStats, Store, WriteObserver};

/// The six PostgreSQL repositories on one pool.
#[derive(Debug, Clone)]
struct PgRepos {
    accounts: PgAccountRepository,
    subscriptions: PgSubscriptionRepository,
    profiles: PgProfileRepository,
    badges: PgBadgeRepository,
    completed: PgCompletedScenarioRepository,
    signups: PgPendingSignupRepository,
}

impl PgRepos {
    fn new(pool: &PgPool) -> Self {
        Self {
            accounts: PgAccountRepository::new(pool.clone()),
            subscriptions: PgSubscriptionRepository::new(pool.clone()),
            profiles: PgProfileRepository::new(pool.clone()),
            badges: PgBadgeRepository::new(pool.clone()),
            completed: PgCompletedScenarioRepository::new(pool.clone()),
            signups: PgPendingSignupRepository::new(pool.clone()),
        }
    }
}

struct Inner {
    pool: PgPool,
    pg: PgRepos,
    cosmos: CosmosRepositories,
    phases: Arc<dyn PhaseSource>,
    files: FileJournal,
    config: RouterConfig,
    counters: Counters,
    /// Wakes [`run_background`] when a write left work to it (a journal entry, a delivery).
    wake: tokio::sync::Notify,
    /// Permits for inline deliveries in flight (see [`RouterConfig::max_inline_deliveries`]).
    inline_deliveries: Arc<tokio::sync::Semaphore>,
}

/// The router (cheap to clone; every clone shares one state).
#[derive(Clone)]
pub struct DualWriteRouter(Arc<Inner>);

impl fmt::Debug for DualWriteRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWriteRouter")
            .field("phases", &self.0.phases)
            .field("journal_dir", &self.0.files.dir())
            .finish_non_exhaustive()
    }
}

/// The aggregate (Cosmos document) a write changes, when the call names it.
type Target = Option<(Container, Uuid)>;

impl DualWriteRouter {
    pub fn new(
        pool: PgPool,
        cosmos: CosmosRepositories,
        phases: Arc<dyn PhaseSource>,
        files: FileJournal,
        config: RouterConfig,
    ) -> Self {
        Self(Arc::new(Inner {
            pg: PgRepos::new(&pool),
            pool,
            cosmos,
            phases,
            files,
            counters: Counters::default(),
            wake: tokio::sync::Notify::new(),
            inline_deliveries: Arc::new(tokio::sync::Semaphore::new(
                config.max_inline_deliveries.max(1),
            )),
            config,
        }))
    }

    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    pub fn cosmos(&self) -> &CosmosRepositories {
        &self.0.cosmos
    }

    pub fn file_journal(&self) -> &FileJournal {
        &self.0.files
    }

    /// The phase a call concerning `account` runs in now.
    pub fn phase_for(&self, account: Option<Uuid>) -> Phase {
        self.0.phases.phase_for(account)
    }

    /// A write, routed by phase (see the module docs). `cosmos` and `pg` are the same call on
    /// either store; only the one(s) the phase needs are awaited.
    async fn write<T: Send>(
        &self,
        operation: &'static str,
        account: Option<Uuid>,
        target: Target,
        cosmos: impl Future<Output = RepoResult<T>> + Send,
        pg: impl Future<Output = RepoResult<T>> + Send,
    ) -> RepoResult<T> {
        let cosmos = self.timed(Store::Cosmos, operation, cosmos);
        let pg = self.timed(Store::Postgres, operation, pg);
        match self.phase_for(account) {
            Phase::CosmosOnly => cosmos.await,
            Phase::DualWriteCosmosRead => {
                if let Some((container, key)) = target {
                    self.deliver_pending_first(container, key).await?;
                }
                let (result, written) = capture_writes(cosmos).await;
                // What Cosmos took is copied even when the call failed half-way: it is stored.
                self.copy_to_postgres(written).await?;
                result
            }
            Phase::DualWritePostgresRead => {
                let result = pg.await?;
                match (self.0.config.phase2_delivery, target) {
                    (Phase2Delivery::Inline, Some((container, key))) => {
                        self.deliver_inline(container, key).await;
                    }
                    _ => self.0.wake.notify_one(),
                }
                Ok(result)
            }
            Phase::PostgresOnly => pg.await,
        }
    }

    /// A point lookup, routed by phase; in phase 2 a miss in PostgreSQL falls back to Cosmos,
    /// and what Cosmos has is copied into PostgreSQL through the version guard (keyed by
    /// `key_of` the value found) before it is returned.
    async fn read<T: Send>(
        &self,
        account: Option<Uuid>,
        container: Container,
        key_of: impl Fn(&T) -> Uuid + Send,
        cosmos: impl Future<Output = RepoResult<Option<T>>> + Send,
        pg: impl Future<Output = RepoResult<Option<T>>> + Send,
    ) -> RepoResult<Option<T>> {
        match self.phase_for(account) {
            Phase::CosmosOnly | Phase::DualWriteCosmosRead => cosmos.await,
            Phase::PostgresOnly => pg.await,
            Phase::DualWritePostgresRead => {
                if let Some(found) = pg.await? {
                    return Ok(Some(found));
                }
                let found = cosmos.await?;
                if let Some(value) = &found {
                    self.count(|c| &c.fallback_reads, 1);
                    self.backfill_from_cosmos(container, key_of(value)).await;
                }
                Ok(found)
            }
        }
    }

    /// A read that does not fall back (lists): from the phase's primary store.
    async fn list<T: Send>(
        &self,
        account: Option<Uuid>,
        cosmos: impl Future<Output = RepoResult<T>> + Send,
        pg: impl Future<Output = RepoResult<T>> + Send,
    ) -> RepoResult<T> {
        if self.phase_for(account).postgres_is_primary() {
            pg.await
        } else {
            cosmos.await
        }
    }
}
