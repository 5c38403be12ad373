//! What keeps a long-runner (`replicate`, `relay`) honest about being alive: a heartbeat row in
//! PostgreSQL (`mystira_postgres::heartbeats`), beaten from a task of its own every
//! [`heartbeats::BEAT_EVERY`], with the state the worker reports through its [`Health`]
//! (running, or retrying an outage of a store, with the failure's class); and the bounded
//! exponential back-off ([`OutageBackoff`]) with which a worker waits out a store outage
//! instead of exiting.
//!
//! A beat that fails (PostgreSQL is down) is skipped and logged once per outage: the row goes
//! stale, which is exactly what the alert and the phase gates look for. Beats resume by
//! themselves when PostgreSQL is back (the pool reconnects).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mystira_postgres::heartbeats::{self, BEAT_EVERY, WorkerId, WorkerKind, WorkerState};
use sqlx::PgPool;
use tokio::sync::Notify;

/// This process as a worker of `kind` (`mode`: replicate's mode).
pub fn this_process(kind: WorkerKind, mode: Option<&str>) -> WorkerId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    WorkerId {
        kind,
        host: host.trim().to_owned(),
        pid: std::process::id(),
        mode: mode.map(str::to_owned),
    }
}

/// The state a worker reports, shared with its heartbeat task.
#[derive(Debug)]
struct Shared {
    state: Mutex<(WorkerState, Option<&'static str>)>,
    changed: Notify,
}

/// A worker's handle on its heartbeat: cheap to clone; the default reports to nobody (tests,
/// `--once` runs).
#[derive(Debug, Clone, Default)]
pub struct Health(Option<Arc<Shared>>);

impl Health {
    /// Working normally (after a success; a no-op when nothing changed).
    pub fn running(&self) {
        self.set(WorkerState::Running, None);
    }

    /// Waiting out an outage of class `class` (`postgres_unavailable`, `cosmos_transport`,
    /// ...: never a message or a value).
    pub fn retrying(&self, class: &'static str) {
        self.set(WorkerState::Retrying, Some(class));
    }

    fn set(&self, state: WorkerState, class: Option<&'static str>) {
        let Some(shared) = &self.0 else { return };
        let mut current = shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != (state, class) {
            *current = (state, class);
            // beat now, so a change shows within one round trip rather than one period
            shared.changed.notify_one();
        }
    }

    fn current(&self) -> (WorkerState, Option<&'static str>) {
        self.0.as_ref().map_or((WorkerState::Running, None), |s| {
            *s.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }
}

/// A running heartbeat: registered at [`Heartbeat::start`], beaten by a task until
/// [`Heartbeat::stop`] (or drop, which only ends the task).
#[derive(Debug)]
pub struct Heartbeat {
    health: Health,
    id: WorkerId,
    pool: PgPool,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Registers the worker (a failure is logged: the beats insert the row once PostgreSQL
    /// answers) and starts beating every [`BEAT_EVERY`].
    pub async fn start(pool: &PgPool, id: WorkerId) -> Self {
        Self::start_every(pool, id, BEAT_EVERY).await
    }

    /// [`Heartbeat::start`] with another period (tests).
    pub async fn start_every(pool: &PgPool, id: WorkerId, every: Duration) -> Self {
        match tokio::time::timeout(every, heartbeats::register(pool, &id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                kind = %id.kind,
                class = crate::journal::error_class(&e),
                "heartbeat: cannot register (the beats will)"
            ),
            Err(_) => {
                tracing::warn!(kind = %id.kind, "heartbeat: registering timed out (the beats will)")
            }
        }
        let health = Health(Some(Arc::new(Shared {
            state: Mutex::new((WorkerState::Running, None)),
            changed: Notify::new(),
        })));
        let task = tokio::spawn(beat_loop(pool.clone(), id.clone(), health.clone(), every));
        Self {
            health,
            id,
            pool: pool.clone(),
            task,
        }
    }

    /// The handle the worker reports its state through.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Ends the beats and records the stop (bounded: PostgreSQL may be down; then the row just
    /// goes stale).
    pub async fn stop(self) {
        self.task.abort();
        let last = heartbeats::beat(&self.pool, &self.id, WorkerState::Stopped, None);
        if tokio::time::timeout(Duration::from_secs(2), last)
            .await
            .is_err()
        {
            tracing::warn!(kind = %self.id.kind, "heartbeat: could not record the stop");
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat_loop(pool: PgPool, id: WorkerId, health: Health, every: Duration) {
    let Some(shared) = health.0.clone() else {
        return;
    };
    let mut failing = false;
    loop {
        let (state, class) = health.current();
        // bounded: a pool waiting for a server that is down would otherwise hold the loop
        let result = tokio::time::timeout(every, heartbeats::beat(&pool, &id, state, class)).await;
        match result {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(kind = %id.kind, "heartbeat: beating again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(kind = %id.kind, class = crate::journal::error_class(&e), "heartbeat: beat failed; the heartbeat goes stale until postgresql answers");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(kind = %id.kind, "heartbeat: beat timed out; the heartbeat goes stale until postgresql answers");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.changed.notified() => {}
        }
    }
}

/// Bounded exponential back-off for waiting out a store outage: `initial` doubling up to
/// `cap`, back to `initial` after [`OutageBackoff::reset`] (a success).
#[derive(Debug, Clone)]
pub struct OutageBackoff {
    initial: Duration,
    cap: Duration,
    attempts: u32,
}

impl OutageBackoff {
    /// The defaults: 1 s doubling up to 30 s.
    pub const INITIAL: Duration = Duration::from_secs(1);
    pub const CAP: Duration = Duration::from_secs(30);

    pub fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap: cap.max(initial),
            attempts: 0,
        }
    }

    /// The next wait, and one more attempt counted.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self
            .initial
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(self.cap);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

impl Default for OutageBackoff {
    fn default() -> Self {
        Self::new(Self::INITIAL, Self::CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = OutageBackoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.attempts(), 8);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn a_default_health_reports_to_nobody() {
        let h = Health::default();
        h.retrying("postgres_unavailable");
        assert_eq!(h.current(), (WorkerState::Running, None));
    }
}
