//! The migration phase in PostgreSQL (`migration.phase_state`, one row, and
//! `migration.phase_overrides`, per canary account): which store is written first and which is
//! read. Every change fires `pg_notify('mystira_phase', ...)` (a trigger), which running
//! processes LISTEN for.
//!
//! # Changing the phase
//! [`set_phase`], [`set_override`] and [`clear_override`] each run in one transaction that
//! first locks the single `phase_state` row (`select ... for update`), so every phase change,
//! domain-wide or per account, is serialized: two concurrent changes never both read the same
//! "from" phase, and every change leaves exactly one `phase_transitions` row. The caller's
//! [`PhaseGate`] is evaluated inside that transaction, after the lock, so the facts it reads
//! (job runs, journal, outbox) are read after every earlier change committed. What a gate
//! requires is the caller's business (`mystira-dual-write` holds the rules); this module only
//! guarantees lock, gate, write and audit happen atomically.
//!
//! # Overrides a domain move leaves on the wrong side
//! A domain move from `from` to `to` leaves an override on the wrong side when it is behind the
//! new domain phase after a forward move, or ahead of it after a backward one
//! ([`left_on_wrong_side`](mystira_domain::phase::left_on_wrong_side)). The move clears those
//! overrides in the same transaction (each account gets its own audit row, and the gate is
//! asked about each account's move too), or with [`ChangeFlags::keep_overrides`] keeps them;
//! the domain's audit row lists them either way (`overrides_cleared`, `overrides_kept`).
//!
//! # Gate facts
//! [`latest_run`], [`verify_facts`], [`verify_facts_for`], [`left_postgres_only_at`],
//! [`account_exists`], [`retry_journal_len`] and [`outbox_backlog`] read what the gates decide
//! on; they are generic over the executor so a gate reads them inside the locked transaction.
//!
//! # Layout
//! `state` reads the phase and the overrides, `history` the audit rows, `gate` is the contract
//! a change asks, `change` the locked transaction that changes the phase, `facts` what the
//! gates decide on. The phase itself and its policy are `mystira_domain::phase`.

mod change;
mod facts;
mod gate;
mod history;
mod state;

use mystira_domain::RepoError;
use mystira_domain::phase::Phase;

pub use change::{
    AffectedOverride, ChangeFlags, ChangeOutcome, ChangeRequest, OverrideAction, clear_override,
    clear_override_with, set_override, set_override_with, set_phase, set_phase_with,
};
pub use facts::{
    OutboxBacklog, RunRecord, RunSummary, VerifyDirection, VerifyFacts, account_exists, latest_run,
    left_postgres_only_at, outbox_backlog, recent_runs, retry_journal_len, verify_facts,
    verify_facts_for,
};
pub use gate::{ChangeKind, GateRequest, Move, PhaseGate, Ungated};
pub use history::{Transition, history};
pub use state::{PhaseOverride, PhaseState, current, load_all, override_details, overrides};

/// The channel every phase change is notified on.
pub const PHASE_CHANNEL: &str = "mystira_phase";

/// A phase as stored (by [`Phase::name`]) in `migration.phase_state`, `phase_overrides` or
/// `phase_transitions`.
fn parse_stored(name: &str) -> Result<Phase, RepoError> {
    name.parse()
        .map_err(|_| RepoError::Store("migration.phase_state holds an unknown phase".to_owned()))
}
