//! [`SubscriptionRepository`] on the `Subscription` embedded in account documents.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{Page, PageRequest, RepoResult, SubscriptionRepository};
use mystira_domain::{RepoError, Subscription};
use uuid::Uuid;

use super::accounts::{decode_found, write_account};
use super::{Docs, conflict, decode_window, now_ticks, same_content};

const ENTITY: &str = "Accounts.Subscription";

/// Subscriptions in Cosmos: at most one per account document, by construction.
#[derive(Debug, Clone)]
pub struct CosmosSubscriptionRepository {
    docs: Docs,
}

impl CosmosSubscriptionRepository {
    /// On an open `Accounts` container.
    pub fn new(accounts: crate::Container) -> Self {
        Self::from_docs(Docs::new(accounts, codec::Container::Accounts))
    }

    pub(crate) fn from_docs(docs: Docs) -> Self {
        Self { docs }
    }
}

#[async_trait]
impl SubscriptionRepository for CosmosSubscriptionRepository {
    async fn get_for_account(&self, account_id: Uuid) -> RepoResult<Option<Subscription>> {
        match self.docs.locate(account_id).await? {
            Some(found) => Ok(decode_found(&self.docs, &found)?.subscription),
            None => Ok(None),
        }
    }

    /// Replaces the embedded subscription, property by property (`codec::account_document`):
    /// an existing one keeps its id and Cosmos id, a new one is written as the app writes one.
    /// The app's `Subscription` has no `CreatedAt`/`UpdatedAt`, so neither is written (an
    /// existing one, left by an older writer, is kept up to date: `created_at` kept,
    /// `updated_at` the time of the write). Returns what a later read returns: without them
    /// in the document, `created_at` is `StartDate` (else the account's `CreatedAt`) and
    /// `updated_at` the document's `_ts`, the second this write landed (or the last write's,
    /// when the subscription already said so and nothing was written).
    async fn upsert_for_account(&self, subscription: &Subscription) -> RepoResult<Subscription> {
        subscription.validate()?;
        let docs = &self.docs;
        let stored = docs
            .modify_returning(subscription.account_id, |found| {
                let mut decoded = decode_found(docs, found)?;
                let mut next = Subscription {
                    account_id: decoded.account.id,
                    ..subscription.clone()
                };
                if let Some(old) = &decoded.subscription {
                    next.id = old.id;
                    next.cosmos_id = old.cosmos_id.clone();
                    next.created_at = old.created_at;
                    next.updated_at = now_ticks();
                }
                decoded.subscription = Some(next);
                let doc = write_account(found, &decoded);
                Ok((!same_content(&found.doc, &doc)).then_some(doc))
            })
            .await?
            .ok_or_else(|| conflict(ENTITY, ConflictKind::MissingReference, "AccountId"))?;
        codec::decode_account(&stored)
            .map_err(|e| super::undecodable(docs.kind(), &e))?
            .subscription
            .ok_or_else(|| RepoError::Store("a written subscription did not read back".to_owned()))
    }

    /// Pages over the account documents whose subscription says `IsActive` (in account-id
    /// order, cursor = the account's key) and keeps those not past `valid_until` at `now`.
    async fn list_active(
        &self,
        now: DateTime<Utc>,
        page: PageRequest,
    ) -> RepoResult<Page<Subscription>> {
        let (docs, next) = self
            .docs
            .window("c.Subscription.IsActive = true", page)
            .await?;
        Ok(decode_window(
            self.docs.kind(),
            &docs,
            codec::decode_account,
            |d| d.subscription.filter(|s| s.is_active_at(now)),
            next,
        ))
    }
}
