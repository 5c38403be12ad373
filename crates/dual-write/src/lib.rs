//! The live path of the migration: phase control (gates, changes, the watcher), the
//! dual-write router with its retry journal, the outbox relay that delivers PostgreSQL's
//! writes to Cosmos in phase 2, replication of the app's direct Cosmos writes from the change
//! feed, the long-runners' heartbeats, and the one status read of all of it.
//!
//! Built on the copy core (`mystira-copy`): the router, the journal's replay and the
//! replicator copy documents by the same version-guarded apply as the backfill.

pub mod heartbeat;
pub mod hosting;
pub mod journal;
pub mod phase;
pub mod relay;
pub mod replicate;
pub mod router;
pub mod status;
