//! The other direction: delivering PostgreSQL's state of an aggregate to Cosmos.

use std::time::Duration;

use mystira_domain::RepoError;

/// Delivers the outbox's rows to Cosmos: the outbox relay of `mystira-dual-write`
/// (`relay::RelayDelivery`), passed in by the caller so that `verify --direction pg-to-cosmos --repair` (`mystira-migrate`) does not depend on
/// the live path (the two crates sit side by side on the copy core).
#[async_trait::async_trait]
pub trait OutboxDelivery: Send + Sync {
    /// Relays until the outbox is empty or `timeout` has passed; returns the rows left.
    async fn drain(&self, timeout: Duration) -> Result<i64, RepoError>;
}
