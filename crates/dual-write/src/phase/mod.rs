//! Phase control: the gates a phase change must pass, changing the phase (domain-wide or for
//! one canary account) through them, and [`PhaseWatcher`], which every running process uses
//! to know the phase within 2 seconds of a change.
//!
//! # Gates
//! A forward move must meet the gate of every step it passes (0→3 meets 0→1, 1→2 and 2→3):
//! - into `dual-write-cosmos-read` (0→1): the latest backfill run succeeded;
//! - into `dual-write-postgres-read` (1→2): a clean Cosmos-to-PostgreSQL verify of the whole
//!   key space finished less than `max_verify_age` ago (and no verify of that direction found
//!   drift since), and the retry journal is empty (every phase-1 write reached PostgreSQL);
//! - into `postgres-only` (2→3): the outbox is empty (every PostgreSQL write reached Cosmos),
//!   the same recent clean Cosmos-to-PostgreSQL verify, and a recent clean
//!   PostgreSQL-to-Cosmos one (Cosmos, archived from now on, holds what PostgreSQL holds).
//!
//! A backward move needs no backfill and no verify, except where it leaves PostgreSQL-primary
//! (phase 2 or 3) for a Cosmos-primary phase (1 or 0):
//! - the outbox must be empty: those writes exist only in PostgreSQL until the relay delivers
//!   them (`wait_drain` waits, bounded, for the relay to empty it first);
//! - out of `postgres-only` the move must go through `dual-write-postgres-read`: phase 3 writes
//!   PostgreSQL alone, and while it does no verify can prove Cosmos caught up;
//! - from `dual-write-postgres-read`, once anything has been in `postgres-only`: a clean
//!   PostgreSQL-to-Cosmos verify of the whole key space that started at least
//!   [`POSTGRES_ONLY_SETTLE`] after phase 3 was last left (by the domain or any account), and
//!   no drift found since. Phase-3 writes reach Cosmos only through `verify --direction
//!   pg-to-cosmos --repair`; that verify is what proves they did.
//!
//! A canary override is gated the same way, from the phase the account runs in now, and must
//! name an account PostgreSQL holds. A domain move that leaves overrides on the wrong side
//! (behind it going forward, ahead of it going back) clears them (each such account's own move
//! passes the gates too) unless `keep_overrides`; both are audited. The journal and outbox are
//! counted domain-wide, also for an override: conservative, since a canary's writes cannot be
//! told apart from the rest's in either table.
//!
//! `force` goes past a refusing gate; the audit row then says `forced`. The gate is evaluated
//! inside the transaction holding the phase lock (see `mystira_postgres::phase`), so two
//! operators changing the phase at once are serialized and each decision is taken on facts
//! read after the other's change committed. `dry_run` decides the same way and writes nothing.
//!
//! # Watching
//! [`PhaseWatcher::start`] loads the phase and the overrides, then keeps them current from a
//! background task: it LISTENs on [`PHASE_CHANNEL`] (a trigger notifies on every change) and
//! also re-reads every `poll` (default 1 s), so a change is seen within about one `poll` even
//! when notifications are lost (a dropped listener connection, a proxy that does not forward
//! them). While PostgreSQL is unreachable it keeps the last known phase, logs one warning and
//! keeps trying.
//!
//! # Layout
//! `gates` holds the rules (which checks a move must pass, and reading the facts they decide
//! on), `conditions` what an unmet check says, `change` the requests that move the phase and
//! `decision` what they report, `drain` the bounded wait for the outbox, `show` what `phase
//! show` reports, `watcher` the [`PhaseWatcher`], `durations` the durations people type and
//! read. The phase itself and its routing policy are `mystira_domain::phase`; storing and
//! changing it under the lock is `mystira_postgres::phase`.

mod change;
mod conditions;
mod decision;
mod drain;
mod durations;
mod gates;
mod show;
mod watcher;

pub use change::{ChangeOptions, PhaseError, clear_override, history, set_phase};
pub use conditions::Condition;
pub use decision::{Decision, DecisionKind};
pub use drain::DrainWait;
pub use durations::{format_duration, parse_duration};
pub use gates::{
    DEFAULT_MAX_VERIFY_AGE, GateCheck, GateConfig, POSTGRES_ONLY_SETTLE, needs_empty_outbox,
    unmet_conditions,
};
pub use mystira_postgres::phase::{
    AffectedOverride, OverrideAction, PHASE_CHANNEL, PhaseOverride, PhaseState, VerifyDirection,
};
pub use show::{
    OverrideEffect, OverrideOutlook, OverridePosition, OverrideStatus, PhaseStatus, status,
};
pub use watcher::{PhaseSnapshot, PhaseWatcher, WATCHER_APPLICATION_NAME, WatcherOptions};
