//! Copying the user domain: the backfill that copies every Cosmos document into PostgreSQL
//! (the initial load and the upsert path), verification (with repair) that PostgreSQL holds
//! what the source holds (and, the other way, that Cosmos holds what PostgreSQL holds), the
//! migration report, and the archive of the source (with its restore).
//!
//! Built on the copy core (`mystira-copy`); the live path (phases, router, relay, replication)
//! is `mystira-dual-write`, beside this crate.

pub mod archive;
pub mod backfill;
pub mod initial;
pub mod report;
pub mod verify;

pub use backfill::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
pub use initial::{LoadMode, LoadPath};
pub use mystira_copy::source::{
    CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage,
};
pub use verify::{
    DriftItem, DriftKind, Entity, EntityCounts, Outcome, RepairOptions, RepairReport, VerifyError,
    VerifyOptions, VerifyReport, repair, run_verify, verify,
};
