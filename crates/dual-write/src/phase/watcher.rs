//! [`PhaseWatcher`]: the phase every part of a process obeys, loaded from PostgreSQL and kept
//! current by LISTEN/NOTIFY on [`PHASE_CHANNEL`] plus a re-read every `poll`, keeping the last
//! known phase while PostgreSQL is unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use mystira_postgres::phase as store;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::PHASE_CHANNEL;

/// What a [`PhaseWatcher`] knows: the domain phase and every canary override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseSnapshot {
    pub domain: Phase,
    /// When the domain phase last changed (`None` for [`PhaseWatcher::fixed`]).
    pub domain_changed_at: Option<DateTime<Utc>>,
    pub overrides: HashMap<Uuid, Phase>,
}

impl PhaseSnapshot {
    /// The account's override when it has one, else the domain phase.
    pub fn phase_for(&self, account: Option<Uuid>) -> Phase {
        account
            .and_then(|a| self.overrides.get(&a).copied())
            .unwrap_or(self.domain)
    }
}

/// How a [`PhaseWatcher`] keeps current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatcherOptions {
    /// Re-read the phase this often, whatever the notifications do (the fallback).
    pub poll: Duration,
    /// LISTEN for change notifications (off: polling alone, e.g. behind a pooler in
    /// transaction mode, which does not forward notifications).
    pub listen: bool,
    /// A read of the phase that takes longer is abandoned (PostgreSQL unreachable).
    pub query_timeout: Duration,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            listen: true,
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// The `application_name` of the watcher's connections (seen in `pg_stat_activity`).
pub const WATCHER_APPLICATION_NAME: &str = "mystira-phase-watcher";

/// The phase every part of a process obeys, kept current from PostgreSQL (see the module
/// docs). Cheap to clone; the background task stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PhaseWatcher {
    inner: Arc<WatcherInner>,
}

#[derive(Debug)]
struct WatcherInner {
    rx: watch::Receiver<PhaseSnapshot>,
    /// Keeps a [`PhaseWatcher::fixed`] channel open (no task owns its sender).
    _fixed: Option<watch::Sender<PhaseSnapshot>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for WatcherInner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PhaseWatcher {
    /// Loads the phase and overrides (failing if PostgreSQL cannot be read now), then keeps
    /// them current: LISTEN/NOTIFY plus a re-read every `poll`.
    pub async fn start(pool: PgPool, poll: Duration) -> Result<PhaseWatcher, RepoError> {
        Self::start_with(
            pool,
            WatcherOptions {
                poll,
                ..WatcherOptions::default()
            },
        )
        .await
    }

    /// [`PhaseWatcher::start`] with every option.
    pub async fn start_with(
        pool: PgPool,
        options: WatcherOptions,
    ) -> Result<PhaseWatcher, RepoError> {
        // Own connections (one to read, one to listen) on the caller's database: a caller's
        // pool exhausted under load must not delay seeing a phase change.
        let connect = (*pool.connect_options())
            .clone()
            .application_name(WATCHER_APPLICATION_NAME);
        let own_pool = |timeout| {
            PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(timeout)
                .connect_lazy_with(connect.clone())
        };
        let reader = own_pool(options.query_timeout);
        let first = read_snapshot(&reader, options.query_timeout).await?;
        let (tx, rx) = watch::channel(first);
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        if options.listen {
            let listener_pool = own_pool(options.query_timeout);
            tasks.push(tokio::spawn(listen(listener_pool, wake.clone())).abort_handle());
        }
        tasks.push(tokio::spawn(refresh(reader, tx, wake, options)).abort_handle());
        Ok(PhaseWatcher {
            inner: Arc::new(WatcherInner {
                rx,
                _fixed: None,
                tasks,
            }),
        })
    }

    /// A watcher that always says `phase` (no task, no database): for tests and tools.
    pub fn fixed(phase: Phase) -> PhaseWatcher {
        let (tx, rx) = watch::channel(PhaseSnapshot {
            domain: phase,
            domain_changed_at: None,
            overrides: HashMap::new(),
        });
        PhaseWatcher {
            inner: Arc::new(WatcherInner {
                rx,
                _fixed: Some(tx),
                tasks: Vec::new(),
            }),
        }
    }

    /// The phase `account` runs in: its override when it has one, else the domain phase.
    pub fn phase_for(&self, account: Option<Uuid>) -> Phase {
        self.inner.rx.borrow().phase_for(account)
    }

    /// The domain-wide phase.
    pub fn domain_phase(&self) -> Phase {
        self.inner.rx.borrow().domain
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> PhaseSnapshot {
        self.inner.rx.borrow().clone()
    }

    /// A receiver that is told of every change (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<PhaseSnapshot> {
        self.inner.rx.clone()
    }
}

async fn read_snapshot(pool: &PgPool, timeout: Duration) -> Result<PhaseSnapshot, RepoError> {
    let (state, overrides) = tokio::time::timeout(timeout, store::load_all(pool))
        .await
        .map_err(|_| RepoError::Unavailable("reading the phase timed out".to_owned()))??;
    Ok(PhaseSnapshot {
        domain: state.phase,
        domain_changed_at: Some(state.changed_at),
        overrides,
    })
}

/// Re-reads the phase on every wake-up from the listener and every `poll`, publishing changes.
async fn refresh(
    pool: PgPool,
    tx: watch::Sender<PhaseSnapshot>,
    wake: Arc<Notify>,
    options: WatcherOptions,
) {
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the first tick is immediate: the snapshot was just read
    tick.tick().await;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        match read_snapshot(&pool, options.query_timeout).await {
            Ok(snapshot) => {
                if !reachable {
                    tracing::info!("phase watcher reads the phase again");
                    reachable = true;
                }
                tx.send_if_modified(|current| {
                    if *current == snapshot {
                        false
                    } else {
                        tracing::info!(
                            phase = %snapshot.domain,
                            overrides = snapshot.overrides.len(),
                            "phase changed"
                        );
                        *current = snapshot;
                        true
                    }
                });
            }
            Err(error) => {
                // once per outage: the poll would otherwise log every second
                if reachable {
                    tracing::warn!(%error, "phase watcher cannot read the phase; keeping the last known one");
                    reachable = false;
                }
            }
        }
    }
}

/// The first wait before reconnecting the listener, doubled up to [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// LISTENs on [`PHASE_CHANNEL`] and wakes [`refresh`] on every notification, reconnecting
/// whenever the connection is lost. Runs in its own task so that a `try_recv` is never
/// cancelled half-way (its cancel safety is not documented).
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    let mut healthy = true;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(PHASE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let error = match connected {
            Ok(mut listener) => {
                if !healthy {
                    tracing::info!("phase watcher listens for changes again");
                    healthy = true;
                }
                backoff = LISTEN_BACKOFF_MIN;
                // changes made while not listening were not notified
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // the connection was lost (and re-established): notifications missed
                        Ok(None) => wake.notify_one(),
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        if healthy {
            let error = mystira_postgres::map_sqlx_error("phase_state", error);
            tracing::warn!(%error, "phase watcher lost its listener; polling until it reconnects");
            healthy = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_watcher_answers_its_phase_for_every_account() {
        let w = PhaseWatcher::fixed(Phase::DualWriteCosmosRead);
        assert_eq!(w.domain_phase(), Phase::DualWriteCosmosRead);
        assert_eq!(w.phase_for(Some(Uuid::nil())), Phase::DualWriteCosmosRead);
        let rx = w.subscribe();
        drop(w);
        // the channel stays readable for subscribers
        assert_eq!(rx.borrow().domain, Phase::DualWriteCosmosRead);
    }
}
