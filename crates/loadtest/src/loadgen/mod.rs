//! The load generator: drives a [`DualWriteRouter`] at a fixed rate with a realistic, seeded
//! mix of user-domain calls and records every call in a ledger ([`crate::ledger`]), so that
//! after faults [`crate::ledger::check`] can prove that no acknowledged write was lost.
//!
//! # The mix
//! Simulated users go through the app's flows: a sign-up request (a pending sign-up with an
//! emailed code), its verification (now and then a wrong code first), `mark_used`, the account
//! and a first profile; then, at random, logins, profile edits and onboarding, badge awards,
//! completed scenarios, subscription changes, account edits, sign-ins (a pending sign-in,
//! verified and used, then a login) and further profiles. New users keep arriving. Every value
//! is derived from the seed and the run number (a restarted generator appending to the same
//! ledger starts a new run, so its users are new), and times are whole milliseconds, which both
//! stores keep exactly.
//!
//! # Pacing
//! Open loop: a call starts every `1/rate` seconds whatever the previous calls do, so a slow
//! store shows as latency, not as a lower rate, up to `concurrency` calls in flight; a call
//! that would pass that bound is not made and is counted (`over_concurrency`). The calls of one
//! simulated user run one at a time (a user waits for the app's answer), which is also what
//! makes the ledger's order the order of the writes on each aggregate.
//!
//! # Failures
//! A failed call is counted by operation and error class; it leaves only its intent in the
//! ledger. The user then behaves as the app would: a failed creation is tried again with the
//! same entity (a conflict on the id then means the first try landed), a failed step of a
//! sign-up abandons it (a new one is requested), and any other failed write is simply followed
//! by the user's next call.
//!
//! # The ledger failing
//! A call is made only once its intent is written, and counts as acknowledged only once its
//! acknowledgement is written. The first ledger write (or fsync) that fails stops the run: no
//! call is started after it, the calls in flight finish (bounded by the settle timeout), and
//! [`run_load`] returns [`LoadError::LedgerWrite`] with the report of what was done until then.
//! A run whose ledger cannot be written proves nothing, and going on would only pile up work.

mod call;
mod config;
mod report;
mod rng;
mod run;
mod steps;
mod users;

pub use config::{LoadConfig, LoadError};
pub use report::{LoadReport, OpStats};
pub use run::run_load;
