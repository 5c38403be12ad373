//! Moving the user domain: the backfill that copies every Cosmos document into PostgreSQL,
//! verification (with repair) that PostgreSQL holds what the source holds, phase control, the
//! dual-write router with its retry journal, the outbox relay, and replication of direct Cosmos
//! writes from its change feed.

pub mod apply;
pub mod archive;
pub mod backfill;
pub mod heartbeat;
pub mod initial;
pub mod journal;
pub mod ledger;
pub mod loadgen;
pub mod mapping;
pub mod phase;
pub mod quarantine;
pub mod relay;
pub mod replicate;
pub mod report;
pub mod router;
pub mod source;
pub mod status;
pub mod verify;
pub mod write_bench;

pub use backfill::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
pub use initial::{LoadMode, LoadPath};
pub use source::{CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage};
pub use verify::{
    DriftItem, DriftKind, Entity, EntityCounts, Outcome, RepairOptions, RepairReport, VerifyError,
    VerifyOptions, VerifyReport, repair, run_verify, verify,
};
