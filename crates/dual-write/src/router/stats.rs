//! What the router tells about its writes: the counters behind [`DualWriteRouter::stats`] and the
//! [`WriteObserver`] told of every store write (the service's metrics).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mystira_domain::ports::RepoResult;
use serde::Serialize;

use super::DualWriteRouter;

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

/// What the router did, since it started (for reports and metrics).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) copied: AtomicU64,
    pub(super) journalled_postgres: AtomicU64,
    pub(super) journalled_file: AtomicU64,
    pub(super) delivered_inline: AtomicU64,
    pub(super) left_to_relay: AtomicU64,
    pub(super) fallback_reads: AtomicU64,
    pub(super) delivered_before_write: AtomicU64,
    pub(super) held_back: AtomicU64,
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

impl DualWriteRouter {
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

    pub(super) fn failure(&self, kind: &'static str, n: usize) {
        if let Some(observer) = &self.0.config.observer {
            observer.dual_write_failure(kind, n as u64);
        }
    }

    pub(super) fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: usize) {
        counter(&self.0.counters).fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `call`, reported to the observer (if any) with its time and outcome.
    pub(super) async fn timed<T>(
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
}
