//! The copy core: how one Cosmos document reaches PostgreSQL, shared by every path that copies
//! (the backfill and verify's repair in `mystira-migrate`; the router, journal replay and
//! replicator in `mystira-dual-write`).
//!
//! - [`source`]: where documents come from (a Cosmos container, or export files), page by page.
//! - [`mapping`]: a document decoded by the codec and mapped to rows, or the reason it cannot be.
//! - [`apply`]: the version-guarded write (an older copy never overwrites newer data).
//! - [`quarantine`]: documents that cannot be migrated, kept with their reason, and their retry.
//! - [`delivery`]: the port by which a repair delivers PostgreSQL's state to Cosmos.
//! - [`containers`]: the containers in copy order and the accounting of their documents.

pub mod apply;
pub mod containers;
pub mod delivery;
pub mod mapping;
pub mod quarantine;
pub mod source;

pub use containers::{CONTAINERS, ContainerCounts, local_owner};
pub use source::{CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage};
