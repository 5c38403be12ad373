//! The ledger: what the load generator ([`crate::loadgen`]) asked of the dual-write router and
//! what the router acknowledged, and [`check`], which compares it with both stores after the
//! faults are over: every acknowledged write is where its phase promised it, and nothing is
//! duplicated.
//!
//! # The file
//! JSON lines, appended; one [`LedgerRecord`] per line:
//! * `run`: a load generator started on this file (its run number and seed);
//! * `intent`: a call is about to be made: its sequence number, the operation, the aggregate
//!   (container and key) and, per *field group* it sets (`account`, `login`, `subscription`,
//!   `completed:<scenario>`, `profile`, `onboarded`, `badge:<configuration>`, `signup`,
//!   `attempts`, `used`), the digest of the state the call leaves that group in;
//! * `ack`: the router returned `Ok` for that call: the same, with the time and the phase the
//!   router used (sampled right before and right after the call).
//!
//! A digest is the md5 of the aggregate's key, the group's name and the group's canonical field
//! values ([`FieldGroups`]), never the values themselves: the file holds no email, code, token
//! or name. A failed call leaves only its intent. Intents exist because an acknowledgement is not
//! the only way a write lands: a call that failed with an unknown outcome, or that was in flight
//! when the process was killed, may have landed too, and then it, not the last acknowledged
//! write, is what the stores hold. Without its intent the check could not tell such a write from
//! a lost one. Every record is handed to the kernel (one `write` of the whole line) before the
//! writer returns, so it survives a `kill -9` of the writer; records are fsynced in batches
//! ([`LedgerWriter::sync`]) and at the end. An acknowledgement lost in a machine crash leaves its
//! intent behind: that write is then checked less strictly (as "may have landed"), never falsely
//! reported lost. The first write or fsync that fails breaks the writer: every later record is
//! refused (nothing is written after a gap), and the load generator stops its run.
//!
//! A ledger line is a few hundred bytes; the reader refuses a line longer than [`MAX_LINE`]
//! instead of reading on (a device such as `/dev/full` or `/dev/zero` reads as one endless
//! line). Only a regular file is scanned for earlier runs when a writer opens it, and only a
//! regular file is fsynced: a pipe or a device holds no earlier runs and has nothing to sync.
//!
//! # The check
//! Every field group of every aggregate is checked against its last acknowledged write: each
//! store that write's phase promised (0 `cosmos-only`: Cosmos; 1 and 2: both; 3
//! `postgres-only`: PostgreSQL; a call whose phase changed under it promises what both phases
//! promise) must hold the digest of that write, or of an intent that came after it and was not
//! acknowledged. The load generator runs the calls of one simulated user one at a time, so the
//! order of the file is the order of the calls on each aggregate. Then duplicates: one badge per
//! profile and configuration and one completion per account and scenario (in both stores), one
//! account per auth0 id (both stores, by looking the account's email up), and one PostgreSQL row
//! per Cosmos document id. Cosmos duplicates in embedded lists are counted in the raw document,
//! since the codec keeps one of each when it decodes.
//!
//! The check is meaningful only after recovery, once the retry journal (the table
//! `migration.retry_journal` and the local journal files of the machine it runs on) and the
//! outbox (`migration.outbox`) have drained, and only when the ledger holds something to check.
//! [`check`] reports their depth first, and its [`Verdict`] is [`Verdict::NothingToCheck`] when
//! no acknowledged write with a field group is in the ledger (an empty ledger, or one whose
//! every call failed), else [`Verdict::NotDrained`] while anything waits in the journal or the
//! outbox, else [`Verdict::Fail`] when a write is lost or something is duplicated, else
//! [`Verdict::Pass`]. Only a pass passes. Local journal files on other machines (other routers)
//! are not visible from here: run `journal status` on each of them.

mod check;
mod expectations;
mod groups;
mod held;
mod record;
mod report;
mod writer;

pub use check::check;
pub use groups::FieldGroups;
pub use record::{ContainerName, Groups, LedgerError, LedgerRecord, MAX_LINE};
pub use report::{Backlog, Duplicate, LedgerReport, LostWrite, Store, Verdict};
pub use writer::LedgerWriter;
