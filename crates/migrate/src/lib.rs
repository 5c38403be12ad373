//! Moving the user domain: the backfill that copies every Cosmos document into PostgreSQL,
//! verification (with repair) that PostgreSQL holds what the source holds, phase control, the
//! dual-write router with its retry journal, and the outbox relay.

pub mod apply;
pub mod backfill;
pub mod journal;
pub mod mapping;
pub mod phase;
pub mod quarantine;
pub mod replicate;
pub mod relay;
pub mod router;
pub mod source;
pub mod verify;

pub use backfill::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
pub use source::{CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage};
pub use verify::{
    DriftItem, DriftKind, Entity, EntityCounts, Outcome, RepairOptions, RepairReport, VerifyError,
    VerifyOptions, VerifyReport, repair, run_verify, verify,
};
