//! The runner: opens and plans the run, repeats cycles (and the delete check when due) until
//! `--once` is done or it is asked to stop, waits out store outages with a bounded back-off, and
//! releases the leases at the end.

use std::time::{Duration, Instant};

use mystira_cosmos_store::CosmosStore;
use sqlx::PgPool;
use tokio::sync::watch;

use super::{ReplicateConfig, ReplicateError, ReplicateReport, Replicator};
use crate::heartbeat::OutageBackoff;

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
}
