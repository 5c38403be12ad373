//! Cosmos DB adapter on the official `azure_data_cosmos` 1.0.0 SDK.
//!
//! - [`CosmosStore`]: one account + database; creates databases and containers if missing.
//! - [`Container`]: point read (missing = `None`), create, upsert, replace with `If-Match`,
//!   delete, parameterised queries, and whole-container streaming in [`Pages`] with a
//!   [`ResumeToken`] after every page for checkpointing.
//! - [`changefeed`]: a container's change feed per feed range, in pages of raw documents with
//!   a [`ChangeFeedToken`] to checkpoint and resume from.
//! - [`Error`] with a `#[non_exhaustive]` [`ErrorKind`] and one [`Error::is_retryable`].
//! - [`RetryPolicy`]: 429/503/transport failures are retried in one bounded loop that honours
//!   the service's `x-ms-retry-after-ms`; the SDK's own retries for those are switched off so
//!   the bounds do not multiply (see `README.md`).
//!
//! The crate never logs the account key, item ids, partition-key values or document content.

pub mod capture;
pub mod changefeed;
mod config;
mod container;
mod error;
mod pages;
pub mod repos;
mod retry;
mod store;
pub mod transfer;

pub use azure_data_cosmos::PartitionKey;
pub use changefeed::{
    ChangeFeed, ChangeFeedPage, ChangeFeedToken, FeedDelete, FeedMode, FeedRangeKey, FeedStart,
};
pub use config::{CosmosConfig, DEFAULT_DATABASE, DEFAULT_PAGE_SIZE, RetryPolicy, TlsTrust};
pub use container::{Container, QuerySpec, Stored, Versioned};
pub use error::{Error, ErrorKind, Result};
pub use pages::{Page, Pages, ResumeToken};
pub use repos::{
    AggregateWriter, CosmosAccountRepository, CosmosBadgeRepository,
    CosmosCompletedScenarioRepository, CosmosPendingSignupRepository, CosmosProfileRepository,
    CosmosRepositories, CosmosSubscriptionRepository, DocumentVersion,
};
pub use store::CosmosStore;
pub use transfer::{ImportCounts, USER_DOMAIN_CONTAINERS, export_dir, import_dir};

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers run these futures on multi-threaded runtimes and behind `async_trait`, so they
    /// must be `Send`; this fails to compile if an SDK change makes one of them `!Send`.
    #[allow(dead_code)]
    fn operation_futures_are_send(store: &CosmosStore, container: &Container) {
        fn send<T: Send>(_: T) {}
        send(store.ensure_database());
        send(store.ensure_container("c", "/id"));
        send(container.read::<serde_json::Value>("pk", "id"));
        send(container.upsert("pk", "id", &serde_json::json!({})));
        send(container.replace_if_match("pk", "id", &serde_json::json!({}), "etag"));
        send(container.delete("pk", "id"));
        let mut pages = container.read_all::<serde_json::Value>(None);
        send(pages.next_page());
    }
}
