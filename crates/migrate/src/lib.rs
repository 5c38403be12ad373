//! Moving the user domain: the backfill that copies every Cosmos document into PostgreSQL,
//! and verification (with repair) that PostgreSQL holds what the source holds.
//! (Replication, the dual-write router and phase control will live here too.)

pub mod backfill;
pub mod mapping;
pub mod quarantine;
pub mod source;
pub mod verify;

pub use backfill::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
pub use source::{CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage};
pub use verify::{
    DriftItem, DriftKind, Entity, EntityCounts, Outcome, RepairOptions, RepairReport, VerifyError,
    VerifyOptions, VerifyReport, repair, run_verify, verify,
};
