//! What the router is configured with: where it learns the phase of a call ([`PhaseSource`]),
//! how each dual-write phase reaches its second store, and its timeouts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mystira_domain::phase::Phase;
use serde::Serialize;
use uuid::Uuid;

use super::WriteObserver;
#[cfg(doc)]
use super::run_background;

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
