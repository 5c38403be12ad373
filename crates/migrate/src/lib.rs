//! Moving the user domain: the backfill that copies every Cosmos document into PostgreSQL.
//! (Verification, replication, the dual-write router and phase control will live here too.)

pub mod backfill;
pub mod mapping;
pub mod source;

pub use backfill::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
pub use source::{CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage};
