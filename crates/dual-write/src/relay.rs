//! The outbox relay: delivers every aggregate that has outbox rows to Cosmos, at least once, so
//! that Cosmos holds what PostgreSQL holds and rolling back from phase 2 to phase 1 loses
//! nothing.
//!
//! A delivery (see `mystira_postgres::outbox::Delivery`) locks the aggregate, reads its state
//! from PostgreSQL afresh, and puts that state into Cosmos through the
//! [`AggregateWriter`] (`If-Match` on `_etag`, re-read and merge on a lost race), or deletes
//! the document when PostgreSQL no longer has the aggregate; then it records the version Cosmos
//! answered and removes the rows it saw. Deliveries of one aggregate are serialised by the lock
//! and each writes the newest state, so Cosmos never goes back in time, whatever the number of
//! relays, and a delivery repeated after a crash writes the same state again. The router
//! delivers inline right after a phase-2 write through the same function; the relay picks up
//! whatever that did not finish.

use std::time::Duration;

use mystira_copy::delivery::OutboxDelivery;
use mystira_cosmos_codec::codec;
use mystira_cosmos_store::AggregateWriter;
use mystira_cosmos_store::repos::profiles::ProfileIdsWritten;
use mystira_domain::RepoError;
use mystira_postgres::aggregates;
use mystira_postgres::outbox::{self, DeliveredVersion, Delivery, PendingAggregate};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::heartbeat::{Health, OutageBackoff};
use crate::journal::error_class;

/// What delivering one aggregate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivered {
    /// Cosmos now holds PostgreSQL's state.
    Put,
    /// PostgreSQL no longer has the aggregate; the Cosmos document is gone too.
    Removed,
    /// Nothing was pending any more (another relay delivered it).
    AlreadyDelivered,
}

/// Delivers one aggregate now (see the module docs). `Err` leaves its rows in the outbox.
pub async fn deliver(
    pool: &PgPool,
    writer: &AggregateWriter,
    aggregate: PendingAggregate,
) -> Result<Delivered, RepoError> {
    let Some(container) = codec::Container::from_name(&aggregate.container) else {
        return Err(RepoError::Store(format!(
            "outbox names container `{}`, which is not part of the user domain",
            aggregate.container
        )));
    };
    let Some(mut delivery) = Delivery::begin(pool, aggregate).await? else {
        return Ok(Delivered::AlreadyDelivered);
    };
    let key = delivery.aggregate.key;
    match aggregates::load(delivery.connection(), container.name(), key).await? {
        Some(state) => {
            let v = writer.put(&state).await?;
            // the accounts' lists a profile's put changed (created: its account's; moved: the
            // former account's and the new one's)
            let mut listed = v.profile_ids.clone();
            if v.created && container == codec::Container::Accounts {
                // profiles PostgreSQL gave the account before its document existed found no
                // list to join (their deliveries ran first): the app's list names them all
                let profiles = profiles_of_account(delivery.connection(), key).await?;
                if !profiles.is_empty() {
                    listed.extend(writer.list_profiles(key, &profiles).await?);
                }
            }
            let (mut ts, mut etag) = (v.ts, v.etag);
            for listed in &listed {
                record_profile_ids(delivery.connection(), listed).await?;
                // this document's list written right after the put: that version is the one
                // that holds PostgreSQL's state now
                if container == codec::Container::Accounts
                    && listed.account_doc_id == v.document_id
                    && listed.before == (Some(ts), etag.clone())
                    && let (Some(after_ts), after_etag) = &listed.after
                {
                    (ts, etag) = (*after_ts, after_etag.clone());
                }
            }
            delivery
                .delivered(Some(DeliveredVersion {
                    document_id: v.document_id,
                    ts,
                    etag,
                }))
                .await?;
            Ok(Delivered::Put)
        }
        None => {
            let doc_id = delivery.known_document_id().await?;
            let (_, listed) = writer.remove(container, key, doc_id.as_deref()).await?;
            if let Some(listed) = &listed {
                record_profile_ids(delivery.connection(), listed).await?;
            }
            delivery.delivered(None).await?;
            Ok(Delivered::Removed)
        }
    }
}

/// The profiles of account `key` (key, Cosmos document id), oldest first: the order the app
/// appended them to its `UserProfileIds`.
async fn profiles_of_account(
    conn: &mut sqlx::PgConnection,
    key: Uuid,
) -> Result<Vec<(Uuid, String)>, RepoError> {
    sqlx::query_as(
        "select id, coalesce(cosmos_id, id::text) from user_profiles where account_id = $1
         order by created_at, id",
    )
    .bind(key)
    .fetch_all(conn)
    .await
    .map_err(|e| mystira_postgres::map_sqlx_error("user_profiles", e))
}

/// Keeps what the bookkeeping of unmapped properties holds for an account document's
/// `UserProfileIds` (the `user_profile_ids_dropped` note, which `verify --direction
/// pg-to-cosmos` compares with the document) in step with the list a delivery wrote, and the
/// document's recorded version, in the delivery's transaction.
async fn record_profile_ids(
    conn: &mut sqlx::PgConnection,
    listed: &ProfileIdsWritten,
) -> Result<(), RepoError> {
    sqlx::query(
        "insert into migration.document_notes as n
             (container, document_id, code, subject, detail, original)
         values ('Accounts', $1, 'user_profile_ids_dropped', 'UserProfileIds',
                 jsonb_build_object('rule', 'not stored: profiles point at their account'), $2)
         on conflict (container, document_id, code, subject) do update
             set original = excluded.original, seen_at = now()",
    )
    .bind(&listed.account_doc_id)
    .bind(&listed.user_profile_ids)
    .execute(&mut *conn)
    .await
    .map_err(|e| mystira_postgres::map_sqlx_error("document_notes", e))?;
    // The written version holds what PostgreSQL holds when the version it was written on is
    // the one PostgreSQL copied last (the list aside, which the note now says): record it, so
    // verify does not see the account as stale and its echo is no copy. Written on another
    // version (one PostgreSQL has not copied yet), it is left to the copy from Cosmos.
    if let ((Some(before_ts), before_etag), (Some(after_ts), after_etag)) =
        (&listed.before, &listed.after)
    {
        sqlx::query(
            "update migration.document_versions
             set source_ts = $4, source_etag = $5, written_at = now()
             where container = 'Accounts' and document_id = $1 and not deleted
               and source_ts = $2 and source_etag is not distinct from $3",
        )
        .bind(&listed.account_doc_id)
        .bind(before_ts)
        .bind(before_etag)
        .bind(after_ts)
        .bind(after_etag)
        .execute(&mut *conn)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("document_versions", e))?;
    }
    Ok(())
}

/// [`deliver`] for the aggregate `(container, key)`, deferring it on failure so the relay backs
/// off. For the router's inline delivery: a failure is not the caller's failure (the write is
/// committed in PostgreSQL with its outbox row), so it is logged without values and left to the
/// relay.
pub async fn deliver_or_defer(
    pool: &PgPool,
    writer: &AggregateWriter,
    container: codec::Container,
    key: Uuid,
) -> Option<Delivered> {
    let aggregate = PendingAggregate {
        container: container.name().to_owned(),
        key,
    };
    match deliver(pool, writer, aggregate.clone()).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(%container, class = error_class(&e), "delivery to cosmos deferred to the relay");
            if let Err(e) = outbox::defer(pool, &aggregate, error_class(&e)).await {
                tracing::warn!(class = error_class(&e), "could not defer an outbox row");
            }
            None
        }
    }
}

/// How the relay batches and paces.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Aggregates taken per pass.
    pub batch_aggregates: i64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Pause when nothing is due.
    pub idle_poll: Duration,
    /// [`run_relay`]: the longest wait between two passes while PostgreSQL is out.
    pub outage_backoff_cap: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_aggregates: 200,
            concurrency: 8,
            idle_poll: Duration::from_millis(200),
            outage_backoff_cap: OutageBackoff::CAP,
        }
    }
}

/// What a relay pass (or run) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelayReport {
    pub put: u64,
    pub removed: u64,
    pub already_delivered: u64,
    pub deferred: u64,
    /// The class of the last delivery that failed (in a pass: when none got through, the
    /// heartbeat says the relay is retrying it). Classes only, never a message.
    #[serde(skip)]
    pub last_failure_class: Option<&'static str>,
}

impl RelayReport {
    pub fn add(&mut self, other: &RelayReport) {
        self.put += other.put;
        self.removed += other.removed;
        self.already_delivered += other.already_delivered;
        self.deferred += other.deferred;
        self.last_failure_class = other.last_failure_class.or(self.last_failure_class);
    }

    pub fn delivered(&self) -> u64 {
        self.put + self.removed
    }
}

/// One pass: delivers up to `batch_aggregates` due aggregates, `concurrency` at a time.
pub async fn relay_once(
    pool: &PgPool,
    writer: &AggregateWriter,
    config: &RelayConfig,
) -> Result<RelayReport, RepoError> {
    use futures::StreamExt;
    let due = outbox::due_aggregates(pool, config.batch_aggregates).await?;
    let results: Vec<(PendingAggregate, Result<Delivered, RepoError>)> = futures::stream::iter(due)
        .map(|aggregate| async move {
            let result = deliver(pool, writer, aggregate.clone()).await;
            (aggregate, result)
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let mut report = RelayReport::default();
    for (aggregate, result) in results {
        match result {
            Ok(Delivered::Put) => report.put += 1,
            Ok(Delivered::Removed) => report.removed += 1,
            Ok(Delivered::AlreadyDelivered) => report.already_delivered += 1,
            Err(e) => {
                report.deferred += 1;
                report.last_failure_class = Some(error_class(&e));
                let attempts = outbox::defer(pool, &aggregate, error_class(&e)).await?;
                tracing::warn!(
                    container = %aggregate.container,
                    class = error_class(&e),
                    attempts,
                    "outbox delivery deferred"
                );
            }
        }
    }
    Ok(report)
}

/// Runs passes until `stop` resolves, and never ends because a store is out: a pass that fails
/// with a retryable error (PostgreSQL unreachable) is logged by its class and tried again after
/// a bounded exponential back-off (1 s doubling to `config.outage_backoff_cap`). Cosmos being
/// out fails deliveries, not passes: each is deferred with its own back-off (1 s doubling to
/// 5 min, in the outbox row), and a pass that delivered nothing while some failed tells
/// `health` the relay is retrying. An error that waiting does not fix is returned.
pub async fn run_relay(
    pool: &PgPool,
    writer: &AggregateWriter,
    config: &RelayConfig,
    health: &Health,
    stop: impl Future<Output = ()>,
) -> Result<RelayReport, RepoError> {
    let mut total = RelayReport::default();
    let mut backoff = OutageBackoff::new(OutageBackoff::INITIAL, config.outage_backoff_cap);
    let mut deliveries_failing = false;
    tokio::pin!(stop);
    loop {
        let pass = tokio::select! {
            _ = &mut stop => return Ok(total),
            pass = relay_once(pool, writer, config) => pass,
        };
        let pause = match pass {
            Ok(pass) => {
                if backoff.attempts() > 0 {
                    tracing::info!(
                        attempts = backoff.attempts(),
                        "relay: postgresql reachable again; resumed"
                    );
                }
                backoff.reset();
                // deliveries failing (Cosmos out) make the relay "retrying" until one gets
                // through; a pass with nothing due (the failed rows wait out their back-off)
                // changes nothing
                if pass.delivered() + pass.already_delivered > 0 {
                    deliveries_failing = false;
                } else if let Some(class) = pass.last_failure_class {
                    deliveries_failing = true;
                    health.retrying(class_of_delivery(class));
                }
                if !deliveries_failing {
                    health.running();
                }
                total.add(&pass);
                (pass.delivered() + pass.already_delivered == 0).then_some(config.idle_poll)
            }
            Err(e) if e.is_retryable() => {
                health.retrying("postgres_unavailable");
                let delay = backoff.next_delay();
                tracing::warn!(
                    class = error_class(&e),
                    attempt = backoff.attempts(),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "relay pass failed (postgresql); retrying"
                );
                Some(delay)
            }
            Err(e) => return Err(e),
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = &mut stop => return Ok(total),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The heartbeat's class for deliveries that fail: a delivery reads PostgreSQL and writes
/// Cosmos, and its error does not say which store failed, so the class names the delivery.
fn class_of_delivery(class: &'static str) -> &'static str {
    match class {
        "unavailable" => "delivery_unavailable",
        "invalid" => "delivery_invalid",
        "conflict" => "delivery_conflict",
        _ => "delivery_failed",
    }
}

/// The relay as the copy core's [`OutboxDelivery`]: what `verify --direction pg-to-cosmos
/// --repair` drains the outbox with.
#[derive(Debug)]
pub struct RelayDelivery<'a> {
    pub pool: &'a PgPool,
    pub writer: &'a AggregateWriter,
    pub config: RelayConfig,
}

#[async_trait::async_trait]
impl OutboxDelivery for RelayDelivery<'_> {
    async fn drain(&self, timeout: Duration) -> Result<i64, RepoError> {
        let (_, left) = drain(self.pool, self.writer, &self.config, timeout).await?;
        Ok(left.rows)
    }
}

/// Runs passes until the outbox is empty, waiting for deferred rows to come due, or until
/// `timeout` passes. Returns what was delivered and what is left.
pub async fn drain(
    pool: &PgPool,
    writer: &AggregateWriter,
    config: &RelayConfig,
    timeout: Duration,
) -> Result<(RelayReport, outbox::Depth), RepoError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut total = RelayReport::default();
    loop {
        let pass = relay_once(pool, writer, config).await?;
        total.add(&pass);
        let left = outbox::depth(pool).await?;
        if left.rows == 0 || std::time::Instant::now() >= deadline {
            return Ok((total, left));
        }
        if pass.delivered() == 0 {
            tokio::time::sleep(config.idle_poll).await;
        }
    }
}
