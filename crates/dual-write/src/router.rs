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
//! [`RepoError::Unavailable`] naming that, so the caller retries.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec::Container;
use mystira_cosmos_store::CosmosRepositories;
use mystira_cosmos_store::capture::{WrittenDocument, capture_writes};
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, AwardOutcome, BadgeRepository, CompletedScenarioRepository, Page,
    PageRequest, PendingSignupRepository, ProfileRepository, RepoResult, SubscriptionRepository,
    VerifyOutcome,
};
use mystira_domain::{
    Account, CompletedScenario, Email, PendingSignup, RepoError, SignupStatus, Subscription,
    UserBadge, UserProfile,
};
use mystira_postgres::journal::{self, JournalOp, JournalRecord};
use mystira_postgres::outbox;
use mystira_postgres::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::journal::{FileJournal, apply_record};
use crate::relay::{self, Delivered};
use mystira_copy::apply::{Copied, copy_record};

/// Where the router learns the phase of a call.
pub trait PhaseSource: Send + Sync + fmt::Debug {
    /// The phase for a call concerning `account` (or no particular account).
    fn phase_for(&self, account: Option<Uuid>) -> Phase;
}

/// A phase that never changes (tools and tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedPhase(pub Phase);

impl PhaseSource for FixedPhase {
    fn phase_for(&self, _account: Option<Uuid>) -> Phase {
        self.0
    }
}

impl PhaseSource for crate::phase::PhaseWatcher {
    fn phase_for(&self, account: Option<Uuid>) -> Phase {
        crate::phase::PhaseWatcher::phase_for(self, account)
    }
}

/// When a phase-2 write reaches Cosmos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase2Delivery {
    /// In the call, after the PostgreSQL commit: the call returns once Cosmos has the write
    /// too (or the delivery failed and was left to the relay).
    #[default]
    Inline,
    /// After the call: the commit (with its outbox row) is the acknowledgement, and the
    /// router's background work ([`run_background`]), woken at once, or any relay delivers it.
    /// The caller pays for PostgreSQL only; Cosmos lags by a delivery.
    Background,
}

/// How a phase-1 write reaches PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase1Copy {
    /// In the call: the documents Cosmos stored are applied to PostgreSQL before the call
    /// returns; only a failure goes to the journal.
    #[default]
    Inline,
    /// Through the journal: the call appends the documents to the retry journal (one
    /// statement) and returns; the router's background work, woken at once, applies them. The
    /// caller pays one PostgreSQL round trip; PostgreSQL lags by a replay (reads come from
    /// Cosmos in phase 1, so callers do not see the lag).
    Journal,
}

/// The router's timeouts and modes.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long a phase-1 copy into PostgreSQL (and then the journal insert) may take before
    /// the router gives up on PostgreSQL for this call and journals to the local file.
    pub postgres_timeout: Duration,
    pub phase1_copy: Phase1Copy,
    pub phase2_delivery: Phase2Delivery,
    /// How long a phase-2 call waits for its inline delivery to Cosmos. Past it the call is
    /// answered (the write is committed in PostgreSQL with its outbox row) and the delivery
    /// goes on in the background, then the relay's: a hanging Cosmos must not hold requests.
    pub phase2_delivery_deadline: Duration,
    /// Inline deliveries that may run at once, those past their deadline included. When all
    /// are taken (Cosmos hangs under load), a call skips the inline delivery and leaves it to
    /// the relay, so hanging deliveries cannot pile up without bound.
    pub max_inline_deliveries: usize,
    /// Told of every store write the router makes, with its time (the service's metrics).
    pub observer: Option<Arc<dyn WriteObserver>>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            postgres_timeout: Duration::from_secs(2),
            phase1_copy: Phase1Copy::Inline,
            phase2_delivery: Phase2Delivery::Inline,
            phase2_delivery_deadline: Duration::from_secs(2),
            max_inline_deliveries: 64,
            observer: None,
        }
    }
}

/// Which store a write went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    Cosmos,
    Postgres,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosmos => "cosmos",
            Self::Postgres => "postgres",
        }
    }
}

/// Watches the router's writes: each store call a write made, how long it took, whether it
/// succeeded. `operation` is the port's call (`accounts.create`, ...) or the router's own
/// second half (`phase1_copy`, `phase2_delivery`). Called inline: keep it cheap.
pub trait WriteObserver: Send + Sync + fmt::Debug {
    fn store_write(&self, store: Store, operation: &'static str, took: Duration, ok: bool);

    /// A dual write whose second store did not take it in the call: `journalled_postgres`
    /// and `journalled_file` (phase 1: the copy into PostgreSQL failed, the documents went to
    /// the retry journal, or to the local file), `left_to_relay` (phase 2: the inline delivery
    /// to Cosmos failed, the relay delivers it), `unrecorded` (phase 1: neither journal could
    /// record it; the caller got an error and retries), `held_back` (phase 1: the copy was
    /// held back by an undelivered PostgreSQL change; the caller got an error and retries).
    /// `n` documents or aggregates.
    fn dual_write_failure(&self, kind: &'static str, n: u64) {
        let _ = (kind, n);
    }
}

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

/// What the router did, since it started (for reports and metrics).
#[derive(Debug, Default)]
struct Counters {
    copied: AtomicU64,
    journalled_postgres: AtomicU64,
    journalled_file: AtomicU64,
    delivered_inline: AtomicU64,
    left_to_relay: AtomicU64,
    fallback_reads: AtomicU64,
    delivered_before_write: AtomicU64,
    held_back: AtomicU64,
}

/// A snapshot of [`DualWriteRouter::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RouterStats {
    /// Phase-1 documents copied into PostgreSQL in the call.
    pub copied: u64,
    /// Phase-1 documents put in the retry journal table instead.
    pub journalled_postgres: u64,
    /// Phase-1 documents put in a local journal file instead (PostgreSQL unreachable).
    pub journalled_file: u64,
    /// Phase-2 aggregates delivered to Cosmos in the call.
    pub delivered_inline: u64,
    /// Phase-2 aggregates whose inline delivery failed (the relay delivers them).
    pub left_to_relay: u64,
    /// Phase-2 point lookups that missed in PostgreSQL and were read from Cosmos.
    pub fallback_reads: u64,
    /// Phase-1 writes whose aggregate had an undelivered PostgreSQL change, delivered to Cosmos
    /// before the write.
    pub delivered_before_write: u64,
    /// Phase-1 copies held back by a PostgreSQL change that appeared while the write was in
    /// flight: those calls failed (retryable) rather than being acknowledged.
    pub held_back: u64,
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

    pub fn stats(&self) -> RouterStats {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouterStats {
            copied: get(&c.copied),
            journalled_postgres: get(&c.journalled_postgres),
            journalled_file: get(&c.journalled_file),
            delivered_inline: get(&c.delivered_inline),
            left_to_relay: get(&c.left_to_relay),
            fallback_reads: get(&c.fallback_reads),
            delivered_before_write: get(&c.delivered_before_write),
            held_back: get(&c.held_back),
        }
    }

    fn failure(&self, kind: &'static str, n: usize) {
        if let Some(observer) = &self.0.config.observer {
            observer.dual_write_failure(kind, n as u64);
        }
    }

    fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: usize) {
        counter(&self.0.counters).fetch_add(n as u64, Ordering::Relaxed);
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

    /// `call`, reported to the observer (if any) with its time and outcome.
    async fn timed<T>(
        &self,
        store: Store,
        operation: &'static str,
        call: impl Future<Output = RepoResult<T>>,
    ) -> RepoResult<T> {
        let Some(observer) = &self.0.config.observer else {
            return call.await;
        };
        let started = std::time::Instant::now();
        let result = call.await;
        observer.store_write(store, operation, started.elapsed(), result.is_ok());
        result
    }

    /// Phase 1's first half, for a write that names its aggregate: a PostgreSQL change of the
    /// aggregate that Cosmos has not taken yet (a pending outbox row, left by a phase-2 write
    /// before a rollback) is delivered to Cosmos before the write goes there, so that the write
    /// lands on top of it in Cosmos and its copy is not held back (docs/dual-write.md, "Who wins
    /// an aggregate"). If the delivery fails, nothing has been written and the call fails. If
    /// PostgreSQL cannot say (it is unreachable), the write goes ahead: phase 1 keeps taking
    /// writes while PostgreSQL is down, and a copy that meets a pending row later is held back
    /// and put on record by the replay.
    async fn deliver_pending_first(&self, container: Container, key: Uuid) -> RepoResult<()> {
        let pending = tokio::time::timeout(
            self.0.config.postgres_timeout,
            outbox::has_pending(&self.0.pool, container.name(), key),
        )
        .await;
        match pending {
            Ok(Ok(false)) => Ok(()),
            Ok(Ok(true)) => {
                let aggregate = outbox::PendingAggregate {
                    container: container.name().to_owned(),
                    key,
                };
                match relay::deliver(&self.0.pool, &self.0.cosmos.writer, aggregate).await {
                    Ok(_) => {
                        self.count(|c| &c.delivered_before_write, 1);
                        Ok(())
                    }
                    Err(e) => Err(RepoError::Unavailable(format!(
                        "this {container} document has a PostgreSQL change that Cosmos has not \
                         taken yet, and delivering it before the write failed ({}); nothing \
                         was written: retry the call",
                        crate::journal::error_class(&e)
                    ))),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(%container, class = crate::journal::error_class(&e), "cannot check the outbox before a phase-1 write; writing");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(%container, "outbox check timed out before a phase-1 write; writing");
                Ok(())
            }
        }
    }

    /// Phase 1's second half: the documents Cosmos stored, into PostgreSQL or the journal.
    async fn copy_to_postgres(&self, written: Vec<WrittenDocument>) -> RepoResult<()> {
        if written.is_empty() {
            return Ok(());
        }
        let records: Vec<JournalRecord> = written.into_iter().map(journal_record).collect();
        let timeout = self.0.config.postgres_timeout;
        if self.0.config.phase1_copy == Phase1Copy::Inline {
            let applied = tokio::time::timeout(timeout, async {
                let mut held_back = Vec::new();
                for record in &records {
                    if copy_record(&self.0.pool, record).await? == Copied::HeldBack {
                        held_back.push(record);
                    }
                }
                Ok::<_, RepoError>(held_back)
            });
            let applied = self
                .timed(Store::Postgres, "phase1_copy", async {
                    applied.await.unwrap_or_else(|_| {
                        Err(RepoError::Unavailable("the copy timed out".to_owned()))
                    })
                })
                .await;
            match applied {
                Ok(held_back) if held_back.is_empty() => {
                    self.count(|c| &c.copied, records.len());
                    return Ok(());
                }
                Ok(held_back) => return Err(self.held_back(&held_back).await),
                Err(e) => {
                    tracing::warn!(
                        class = crate::journal::error_class(&e),
                        "copy to postgresql failed or timed out; journalling"
                    );
                }
            }
        }
        // The records may have landed in part: replaying them is harmless (version guard).
        let journalled =
            tokio::time::timeout(timeout, journal::append(&self.0.pool, &records, "router")).await;
        if matches!(journalled, Ok(Ok(()))) {
            self.count(|c| &c.journalled_postgres, records.len());
            self.failure("journalled_postgres", records.len());
            self.0.wake.notify_one();
            return Ok(());
        }
        let n = records.len();
        self.0.files.append_async(records).await.map_err(|e| {
            self.failure("unrecorded", n);
            RepoError::Unavailable(format!(
                "the write reached Cosmos, but neither PostgreSQL nor the local journal could \
                 record it ({e}); retry the call"
            ))
        })?;
        self.count(|c| &c.journalled_file, n);
        self.failure("journalled_file", n);
        Ok(())
    }

    /// A phase-1 copy the outbox rule held back: PostgreSQL holds a change of the aggregate
    /// that Cosmos had not taken when this write reached Cosmos (a phase-2 write committed by
    /// a router that had not yet seen the phase change). PostgreSQL's change is the reference;
    /// it is delivered now, over the document this write left in Cosmos, so the write is not
    /// acknowledged: the caller gets a retryable error, and its retry lands on top of the
    /// delivered change. A delivery that fails here is left to the relay (deferred).
    async fn held_back(&self, records: &[&JournalRecord]) -> RepoError {
        self.count(|c| &c.held_back, records.len());
        self.failure("held_back", records.len());
        for record in records {
            let JournalOp::Upsert { document } = &record.op else {
                continue;
            };
            if let Some(container) = Container::from_name(&record.container)
                && let Some(doc_ref) =
                    mystira_cosmos_codec::codec::document_ref(container, document)
            {
                relay::deliver_or_defer(
                    &self.0.pool,
                    &self.0.cosmos.writer,
                    container,
                    doc_ref.key,
                )
                .await;
            }
        }
        RepoError::Unavailable(
            "Cosmos took the write, but PostgreSQL holds a newer change of the same document \
             that Cosmos had not taken (a write made in phase 2); that change was delivered over \
             this write, which is not acknowledged: retry the call"
                .to_owned(),
        )
    }

    /// Phase 2's second half: the aggregate into Cosmos now, or later by the relay. The call
    /// waits for the delivery at most [`RouterConfig::phase2_delivery_deadline`]: the delivery
    /// runs as a task of its own, so past the deadline it is not cancelled midway (it finishes
    /// or defers its rows for the relay) while the caller gets its answer.
    async fn deliver_inline(&self, container: Container, key: Uuid) {
        let started = std::time::Instant::now();
        let Ok(permit) = self.0.inline_deliveries.clone().try_acquire_owned() else {
            tracing::warn!(%container, "too many inline deliveries in flight; left to the relay");
            self.count(|c| &c.left_to_relay, 1);
            self.failure("left_to_relay", 1);
            self.0.wake.notify_one();
            return;
        };
        let router = self.clone();
        let delivery = tokio::spawn(async move {
            let _permit = permit;
            relay::deliver_or_defer(&router.0.pool, &router.0.cosmos.writer, container, key).await
        });
        let delivered =
            match tokio::time::timeout(self.0.config.phase2_delivery_deadline, delivery).await {
                Ok(Ok(delivered)) => delivered,
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // cancelled: the runtime is shutting down; the rows stay for the relay
                Ok(Err(_)) => None,
                Err(_) => {
                    tracing::warn!(
                        %container,
                        class = "deadline",
                        "inline delivery to cosmos passed its deadline; answering, the delivery \
                         goes on in the background"
                    );
                    None
                }
            };
        if let Some(observer) = &self.0.config.observer {
            observer.store_write(
                Store::Cosmos,
                "phase2_delivery",
                started.elapsed(),
                delivered.is_some(),
            );
        }
        match delivered {
            Some(Delivered::Put | Delivered::Removed | Delivered::AlreadyDelivered) => {
                self.count(|c| &c.delivered_inline, 1);
            }
            None => {
                self.count(|c| &c.left_to_relay, 1);
                self.failure("left_to_relay", 1);
            }
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

    /// Copies the Cosmos document of `(container, key)` into PostgreSQL through the version
    /// guard (the phase-2 fallback's back-fill). A failure only costs the next read another
    /// fallback; it is logged without values.
    async fn backfill_from_cosmos(&self, container: Container, key: Uuid) {
        let copied = async {
            if let Some(document) = self.0.cosmos.writer.read(container, key).await? {
                let record = JournalRecord {
                    container: container.name().to_owned(),
                    document_id: document_id(&document),
                    op: JournalOp::Upsert { document },
                };
                apply_record(&self.0.pool, &record).await?;
            }
            Ok::<(), RepoError>(())
        };
        if let Err(e) = copied.await {
            tracing::warn!(%container, class = crate::journal::error_class(&e), "fallback back-fill failed");
        }
    }
}

fn document_id(document: &serde_json::Value) -> String {
    document
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A captured Cosmos write as a journal record. A delete is dated by the `_ts` of the version
/// it deleted (else now): a copy of that version or an older one is then refused.
fn journal_record(written: WrittenDocument) -> JournalRecord {
    match written {
        WrittenDocument::Stored {
            container,
            document,
        } => JournalRecord {
            container: container.name().to_owned(),
            document_id: document_id(&document),
            op: JournalOp::Upsert { document },
        },
        WrittenDocument::Deleted {
            container,
            document_id,
            key,
            source_ts,
        } => JournalRecord {
            container: container.name().to_owned(),
            document_id,
            op: JournalOp::Delete {
                key,
                source_ts: source_ts.unwrap_or_else(|| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                }),
            },
        },
    }
}

#[async_trait]
impl AccountRepository for DualWriteRouter {
    async fn create(&self, account: &Account) -> RepoResult<()> {
        let pg = &self.0.pg.accounts;
        let cosmos = &self.0.cosmos.accounts;
        self.write(
            "accounts.create",
            Some(account.id),
            Some((Container::Accounts, account.id)),
            cosmos.create(account),
            pg.create(account),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            Some(id),
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    async fn get_by_cosmos_id(&self, cosmos_id: &str) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            None,
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get_by_cosmos_id(cosmos_id),
            pg.get_by_cosmos_id(cosmos_id),
        )
        .await
    }

    async fn get_by_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            None,
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get_by_auth0_id(auth0_user_id),
            pg.get_by_auth0_id(auth0_user_id),
        )
        .await
    }

    /// In phase 2, an email PostgreSQL has no account for is looked up in Cosmos, and what is
    /// found there is back-filled.
    async fn find_by_email(&self, email: &Email) -> RepoResult<Vec<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        match self.phase_for(None) {
            Phase::DualWritePostgresRead => {
                let found = pg.find_by_email(email).await?;
                if !found.is_empty() {
                    return Ok(found);
                }
                let found = cosmos.find_by_email(email).await?;
                for account in &found {
                    self.count(|c| &c.fallback_reads, 1);
                    self.backfill_from_cosmos(Container::Accounts, account.id)
                        .await;
                }
                Ok(found)
            }
            _ => {
                self.list(None, cosmos.find_by_email(email), pg.find_by_email(email))
                    .await
            }
        }
    }

    async fn update(&self, account: &Account) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.update",
            Some(account.id),
            Some((Container::Accounts, account.id)),
            cosmos.update(account),
            pg.update(account),
        )
        .await
    }

    async fn record_login(&self, id: Uuid, at: DateTime<Utc>) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.record_login",
            Some(id),
            Some((Container::Accounts, id)),
            cosmos.record_login(id, at),
            pg.record_login(id, at),
        )
        .await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.delete",
            Some(id),
            Some((Container::Accounts, id)),
            cosmos.delete(id),
            pg.delete(id),
        )
        .await
    }

    async fn list(&self, page: PageRequest) -> RepoResult<Page<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.list(None, cosmos.list(page), pg.list(page)).await
    }
}

#[async_trait]
impl SubscriptionRepository for DualWriteRouter {
    async fn get_for_account(&self, account_id: Uuid) -> RepoResult<Option<Subscription>> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        self.read(
            Some(account_id),
            Container::Accounts,
            |s: &Subscription| s.account_id,
            cosmos.get_for_account(account_id),
            pg.get_for_account(account_id),
        )
        .await
    }

    async fn upsert_for_account(&self, subscription: &Subscription) -> RepoResult<Subscription> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        let account = subscription.account_id;
        self.write(
            "subscriptions.upsert_for_account",
            Some(account),
            Some((Container::Accounts, account)),
            cosmos.upsert_for_account(subscription),
            pg.upsert_for_account(subscription),
        )
        .await
    }

    async fn list_active(
        &self,
        now: DateTime<Utc>,
        page: PageRequest,
    ) -> RepoResult<Page<Subscription>> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        self.list(
            None,
            cosmos.list_active(now, page),
            pg.list_active(now, page),
        )
        .await
    }
}

#[async_trait]
impl ProfileRepository for DualWriteRouter {
    async fn create(&self, profile: &UserProfile) -> RepoResult<()> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.create",
            profile.account_id,
            Some((Container::UserProfiles, profile.id)),
            cosmos.create(profile),
            pg.create(profile),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<UserProfile>> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.read(
            None,
            Container::UserProfiles,
            |p: &UserProfile| p.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<UserProfile>> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.list(
            Some(account_id),
            cosmos.list_by_account(account_id),
            pg.list_by_account(account_id),
        )
        .await
    }

    async fn update(&self, profile: &UserProfile) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.update",
            None,
            Some((Container::UserProfiles, profile.id)),
            cosmos.update(profile),
            pg.update(profile),
        )
        .await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.delete",
            None,
            Some((Container::UserProfiles, id)),
            cosmos.delete(id),
            pg.delete(id),
        )
        .await
    }

    async fn mark_onboarded(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.mark_onboarded",
            None,
            Some((Container::UserProfiles, id)),
            cosmos.mark_onboarded(id),
            pg.mark_onboarded(id),
        )
        .await
    }
}

#[async_trait]
impl BadgeRepository for DualWriteRouter {
    async fn award(&self, badge: &UserBadge) -> RepoResult<AwardOutcome> {
        let (pg, cosmos) = (&self.0.pg.badges, &self.0.cosmos.badges);
        self.write(
            "badges.award",
            None,
            Some((Container::UserProfiles, badge.user_profile_id)),
            cosmos.award(badge),
            pg.award(badge),
        )
        .await
    }

    async fn list_by_profile(&self, profile_id: Uuid) -> RepoResult<Vec<UserBadge>> {
        let (pg, cosmos) = (&self.0.pg.badges, &self.0.cosmos.badges);
        self.list(
            None,
            cosmos.list_by_profile(profile_id),
            pg.list_by_profile(profile_id),
        )
        .await
    }
}

#[async_trait]
impl CompletedScenarioRepository for DualWriteRouter {
    async fn mark_completed(
        &self,
        account_id: Uuid,
        scenario_id: &str,
        at: DateTime<Utc>,
    ) -> RepoResult<CompletedScenario> {
        let (pg, cosmos) = (&self.0.pg.completed, &self.0.cosmos.completed_scenarios);
        self.write(
            "completed_scenarios.mark_completed",
            Some(account_id),
            Some((Container::Accounts, account_id)),
            cosmos.mark_completed(account_id, scenario_id, at),
            pg.mark_completed(account_id, scenario_id, at),
        )
        .await
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<CompletedScenario>> {
        let (pg, cosmos) = (&self.0.pg.completed, &self.0.cosmos.completed_scenarios);
        self.list(
            Some(account_id),
            cosmos.list_by_account(account_id),
            pg.list_by_account(account_id),
        )
        .await
    }
}

#[async_trait]
impl PendingSignupRepository for DualWriteRouter {
    async fn create(&self, signup: &PendingSignup) -> RepoResult<()> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.create",
            None,
            Some((Container::PendingSignups, signup.id)),
            cosmos.create(signup),
            pg.create(signup),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<PendingSignup>> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.read(
            None,
            Container::PendingSignups,
            |s: &PendingSignup| s.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    /// The sign-up a wrong code counts against is not known before the call: in phase 2 its
    /// outbox row is delivered by the relay rather than inline.
    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.verify_code",
            None,
            None,
            cosmos.verify_code(email, code, now, lockout_attempts),
            pg.verify_code(email, code, now, lockout_attempts),
        )
        .await
    }

    /// The check and the mark happen in one store (the primary), atomically there; in phase
    /// 1 the document Cosmos wrote is copied as any other.
    async fn redeem_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.redeem_code",
            None,
            None,
            cosmos.redeem_code(email, code, now, lockout_attempts),
            pg.redeem_code(email, code, now, lockout_attempts),
        )
        .await
    }

    async fn mark_used(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_used",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_used(id),
            pg.mark_used(id),
        )
        .await
    }

    /// A point lookup like `get`: in phase 2 a sign-up PostgreSQL lacks is looked up in Cosmos
    /// and back-filled (a link emailed before the copy caught up still works).
    async fn find_by_token_hash(&self, token_hash: &str) -> RepoResult<Option<PendingSignup>> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.read(
            None,
            Container::PendingSignups,
            |s: &PendingSignup| s.id,
            cosmos.find_by_token_hash(token_hash),
            pg.find_by_token_hash(token_hash),
        )
        .await
    }

    async fn mark_verified(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_verified",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_verified(id, status, at),
            pg.mark_verified(id, status, at),
        )
        .await
    }

    async fn mark_consumed(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_consumed",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_consumed(id, status, at),
            pg.mark_consumed(id, status, at),
        )
        .await
    }

    async fn cleanup_expired(&self) -> RepoResult<u64> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.cleanup_expired",
            None,
            None,
            cosmos.cleanup_expired(),
            pg.cleanup_expired(),
        )
        .await
    }
}

/// How often [`run_background`] works through the journal and the outbox.
#[derive(Debug, Clone)]
pub struct BackgroundConfig {
    /// Pause between passes when there was nothing to do.
    pub idle_poll: Duration,
    pub relay: crate::relay::RelayConfig,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_millis(250),
            relay: crate::relay::RelayConfig::default(),
        }
    }
}

/// What the background work did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackgroundReport {
    pub journal: crate::journal::ReplayReport,
    pub relay: crate::relay::RelayReport,
}

/// The router's companion work, until `stop` resolves: replays the retry journal (table, and
/// this machine's journal files, sealing the router's own file first so that it can be taken)
/// and relays the outbox. Every pass is idempotent and shares its work with any other process
/// doing the same (`skip locked`, advisory locks), so every process hosting a router can run
/// it. Failures (PostgreSQL or Cosmos down) are logged without values and retried on the next
/// pass. `stop` is honoured between passes (or while idle), never within one.
pub async fn run_background(
    router: &DualWriteRouter,
    config: &BackgroundConfig,
    stop: impl Future<Output = ()>,
) -> BackgroundReport {
    tokio::pin!(stop);
    let mut report = BackgroundReport::default();
    loop {
        let pass = async {
            let mut busy = false;
            let files = router.file_journal();
            // the router's own file can be replayed only once it is sealed (checked in memory:
            // counting the records on disk every pass would read every file each time)
            if files.has_open_file() {
                files.seal();
            }
            match crate::journal::replay_files(router.pool(), files, Some(&router.cosmos().writer))
                .await
            {
                Ok(r) => {
                    busy |= r.applied > 0;
                    report.journal.add(&r);
                }
                Err(e) => tracing::warn!(error = %e, "journal file replay failed"),
            }
            match crate::journal::replay_table(router.pool(), 200, Some(&router.cosmos().writer))
                .await
            {
                Ok(r) => {
                    busy |= r.applied > 0;
                    report.journal.add(&r);
                }
                Err(e) => tracing::warn!(error = %e, "journal replay failed"),
            }
            match crate::relay::relay_once(router.pool(), &router.cosmos().writer, &config.relay)
                .await
            {
                Ok(r) => {
                    busy |= r.delivered() > 0;
                    report.relay.add(&r);
                }
                Err(e) => {
                    tracing::warn!(class = crate::journal::error_class(&e), "relay pass failed")
                }
            }
            busy
        };
        // a pass is never cancelled midway: one stopped between a delivery and its bookkeeping
        // would leave the work done but unrecorded (the outbox row redelivered later, the
        // report short). A pass is bounded (a batch each), so stop waits for at most one.
        let busy = pass.await;
        tokio::select! {
            biased;
            _ = &mut stop => return report,
            _ = std::future::ready(()) => {}
        }
        if !busy {
            tokio::select! {
                _ = &mut stop => return report,
                _ = tokio::time::sleep(config.idle_poll) => {}
                _ = router.0.wake.notified() => {}
            }
        }
    }
}
