//! [`AccountRepository`] on the `Accounts` container, plus the account-document helpers that
//! the subscription and completed-scenario repositories share (they edit the same document).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec::{self, DecodedAccount};
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{AccountRepository, Page, PageRequest, RepoResult};
use mystira_domain::{Account, Email};
use serde_json::Value;
use uuid::Uuid;

use super::{Docs, Found, Step, conflict, decode_window, undecodable, warn_skipped};
use crate::container::QuerySpec;

const ENTITY: &str = "Accounts";

/// Accounts in Cosmos. Delete removes the account document only (see the module docs of
/// [`super`] for what that means for profiles).
#[derive(Debug, Clone)]
pub struct CosmosAccountRepository {
    docs: Docs,
}

impl CosmosAccountRepository {
    /// On an open `Accounts` container.
    pub fn new(accounts: crate::Container) -> Self {
        Self::from_docs(Docs::new(accounts, codec::Container::Accounts))
    }

    pub(crate) fn from_docs(docs: Docs) -> Self {
        Self { docs }
    }

    /// Accounts whose user id (`ExternalUserId`, or the legacy `Auth0UserId` where that is
    /// empty, the codec's rule) is `auth0_user_id`, oldest first.
    async fn with_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Vec<DecodedAccount>> {
        if auth0_user_id.trim().is_empty() {
            // "" means none in Cosmos; none never matches.
            return Ok(Vec::new());
        }
        let spec =
            QuerySpec::new("select * from c where c.ExternalUserId = @id or c.Auth0UserId = @id")
                .param("@id", auth0_user_id);
        let docs = self.docs.query(spec).await?;
        let mut out = decode_all(self.docs.kind(), &docs);
        out.retain(|d| d.account.auth0_user_id.as_deref() == Some(auth0_user_id));
        out.sort_by_key(|d| (d.account.created_at, d.account.id));
        Ok(out)
    }

    /// `Conflict(DuplicateAuth0UserId)` if an account other than `id` has the auth0 id.
    async fn check_auth0_free(&self, account: &Account) -> RepoResult<()> {
        let Some(auth0) = account.auth0_user_id.as_deref() else {
            return Ok(());
        };
        let taken = self
            .with_auth0_id(auth0)
            .await?
            .iter()
            .any(|d| d.account.id != account.id);
        if taken {
            return Err(conflict(
                ENTITY,
                ConflictKind::DuplicateAuth0UserId,
                "ExternalUserId",
            ));
        }
        Ok(())
    }

    /// Changes the account with `change` (which sees the stored account), leaving the embedded
    /// subscription, completed scenarios and profile ids as stored.
    async fn modify_account(
        &self,
        id: Uuid,
        change: impl Fn(&Account) -> Account + Send + Sync,
    ) -> RepoResult<bool> {
        let docs = &self.docs;
        let done = docs
            .modify(id, |found| {
                let decoded = decode_found(docs, found)?;
                let changed = change(&decoded.account);
                if changed == decoded.account {
                    return Ok(Step::Keep(()));
                }
                let doc = write_account(
                    found,
                    &DecodedAccount {
                        account: changed,
                        ..decoded
                    },
                );
                Ok(Step::Write(doc, ()))
            })
            .await?;
        Ok(done.is_some())
    }
}

/// Decodes a found account document (a point lookup: failure is an error).
pub(crate) fn decode_found(docs: &Docs, found: &Found) -> RepoResult<DecodedAccount> {
    codec::decode_account(&found.doc).map_err(|e| undecodable(docs.kind(), &e))
}

/// Decodes documents of a list, skipping the ones that do not decode.
fn decode_all(kind: codec::Container, docs: &[Value]) -> Vec<DecodedAccount> {
    docs.iter()
        .filter_map(|doc| {
            codec::decode_account(doc)
                .inspect_err(|e| warn_skipped(kind, e))
                .ok()
        })
        .collect()
}

/// The account document to write: the stored document with `decoded` merged in by meaning
/// (`codec::account_document`). `decoded` holds what the write means: the parts it does not
/// change as decoded from the same document, which the merge leaves byte for byte.
/// `UserProfileIds` is not mapped, so it is never written here.
pub(crate) fn write_account(found: &Found, decoded: &DecodedAccount) -> Value {
    codec::account_document(
        Some(&found.doc),
        &decoded.account,
        decoded.subscription.as_ref(),
        &decoded.completed_scenarios,
    )
}

#[async_trait]
impl AccountRepository for CosmosAccountRepository {
    /// Checks (racily, see the module docs) that neither the key under another id spelling nor
    /// the auth0 id is taken, then creates the document; Cosmos itself refuses a second
    /// document with the same `id`.
    async fn create(&self, account: &Account) -> RepoResult<()> {
        account.validate()?;
        if self.docs.locate(account.id).await?.is_some() {
            return Err(conflict(ENTITY, ConflictKind::DuplicateId, "id"));
        }
        self.check_auth0_free(account).await?;
        let doc = codec::encode_account(account, None, &[], &[] as &[&str]);
        self.docs.create(&doc).await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<Account>> {
        match self.docs.locate(id).await? {
            Some(found) => Ok(Some(decode_found(&self.docs, &found)?.account)),
            None => Ok(None),
        }
    }

    async fn get_by_cosmos_id(&self, cosmos_id: &str) -> RepoResult<Option<Account>> {
        match self.docs.read_by_doc_id(cosmos_id).await? {
            Some(found) => Ok(Some(decode_found(&self.docs, &found)?.account)),
            None => Ok(None),
        }
    }

    /// Cosmos does not keep auth0 ids unique: when several accounts share one, the oldest is
    /// returned and the duplication is logged (without the id).
    async fn get_by_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Option<Account>> {
        let found = self.with_auth0_id(auth0_user_id).await?;
        if found.len() > 1 {
            tracing::warn!(
                container = %self.docs.kind(),
                count = found.len(),
                "several accounts share one external user id; the oldest is returned"
            );
        }
        Ok(found.into_iter().next().map(|d| d.account))
    }

    async fn find_by_email(&self, email: &Email) -> RepoResult<Vec<Account>> {
        let spec = QuerySpec::new("select * from c where lower(c.Email) = @email")
            .param("@email", email.normalized());
        let docs = self.docs.query(spec).await?;
        let mut accounts: Vec<Account> = decode_all(self.docs.kind(), &docs)
            .into_iter()
            .map(|d| d.account)
            // The codec trims what it reads; compare what it decoded, as PostgreSQL would.
            .filter(|a| a.email.normalized() == email.normalized())
            .collect();
        accounts.sort_by_key(|a| (a.created_at, a.id));
        Ok(accounts)
    }

    /// Keeps the stored document id (`cosmos_id`) and `created_at`; a changed auth0 id is
    /// checked for uniqueness first (racily, see the module docs).
    async fn update(&self, account: &Account) -> RepoResult<bool> {
        account.validate()?;
        self.check_auth0_free(account).await?;
        self.modify_account(account.id, |stored| Account {
            id: stored.id,
            cosmos_id: stored.cosmos_id.clone(),
            created_at: stored.created_at,
            ..account.clone()
        })
        .await
    }

    /// Also moves the derived `completed_at` of every completed scenario (see the module docs).
    async fn record_login(&self, id: Uuid, at: DateTime<Utc>) -> RepoResult<bool> {
        self.modify_account(id, |stored| Account {
            last_login_at: at,
            ..stored.clone()
        })
        .await
    }

    /// Deletes the account document, which holds the subscription and the completed scenarios.
    /// Profiles are other documents and keep their `AccountId` (the app's behaviour; PostgreSQL
    /// detaches them instead).
    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        match self.docs.locate(id).await? {
            Some(found) => self.docs.delete(&found).await,
            None => Ok(false),
        }
    }

    /// In document-id order (see the module docs on paging).
    async fn list(&self, page: PageRequest) -> RepoResult<Page<Account>> {
        let (docs, next) = self.docs.window("true", page).await?;
        Ok(decode_window(
            self.docs.kind(),
            &docs,
            codec::decode_account,
            |d| Some(d.account),
            next,
        ))
    }
}
