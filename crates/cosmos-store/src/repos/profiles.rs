//! [`ProfileRepository`] on the `UserProfiles` container. The link to an account is the
//! profile's `AccountId` string, which the app has written in several spellings of the
//! account's id; lookups by account try all of them (see [`account_id_spellings`]).

use async_trait::async_trait;
use mystira_cosmos_codec::codec;
use mystira_domain::UserProfile;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{ProfileRepository, RepoResult};
use serde_json::Value;
use uuid::Uuid;

use super::{Docs, Found, Step, conflict, now_ticks, undecodable, warn_skipped};
use crate::capture::{self, WrittenDocument};
use crate::container::QuerySpec;
use crate::error::ErrorKind;
use mystira_domain::RepoError;

const ENTITY: &str = "UserProfiles";

/// User profiles in Cosmos (badges are embedded; see [`super::CosmosBadgeRepository`]).
#[derive(Debug, Clone)]
pub struct CosmosProfileRepository {
    docs: Docs,
    accounts: Docs,
}

impl CosmosProfileRepository {
    /// On open `UserProfiles` and `Accounts` containers (accounts are read to check and spell
    /// the `AccountId` reference).
    pub fn new(profiles: crate::Container, accounts: crate::Container) -> Self {
        Self::from_docs(
            Docs::new(profiles, codec::Container::UserProfiles),
            Docs::new(accounts, codec::Container::Accounts),
        )
    }

    pub(crate) fn from_docs(docs: Docs, accounts: Docs) -> Self {
        Self { docs, accounts }
    }

    /// The `AccountId` string to write for account `key`: the account's own document id (or its
    /// guid part in EF 8's `Account|<guid>` form) when that resolves to the key, as the app needs
    /// for non-UUID ids; else the key's text. `Conflict(MissingReference)` if there is no such
    /// account.
    async fn account_reference(&self, key: Uuid) -> RepoResult<String> {
        let found = self
            .accounts
            .locate(key)
            .await?
            .ok_or_else(|| conflict(ENTITY, ConflictKind::MissingReference, "AccountId"))?;
        let stripped = found
            .doc_id
            .strip_prefix("Account|")
            .unwrap_or(&found.doc_id);
        Ok([stripped, found.doc_id.as_str()]
            .into_iter()
            .find(|raw| codec::reference_key(raw, "Account") == key)
            .map_or_else(|| key.hyphenated().to_string(), str::to_owned))
    }
}

/// Every spelling an `AccountId` pointing at `key` has been seen in: the canonical text, upper
/// case, EF 8's `Account|` form of both, and the account document's own id when it exists.
/// Mixed-case spellings are not covered (an exact `IN` keeps the query on the index).
async fn account_id_spellings(accounts: &Docs, key: Uuid) -> RepoResult<Vec<String>> {
    let lower = key.hyphenated().to_string();
    let upper = lower.to_uppercase();
    let mut out = vec![
        format!("Account|{lower}"),
        format!("Account|{upper}"),
        lower,
        upper,
    ];
    if let Some(found) = accounts.locate(key).await? {
        let stripped = found.doc_id.strip_prefix("Account|").map(str::to_owned);
        out.push(found.doc_id);
        out.extend(stripped);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An account document whose `UserProfileIds` a profile's create or delete changed: its id, the
/// list it now holds, and its version before and after the write (for the bookkeeping of what
/// no row holds, and of the versions PostgreSQL has copied).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileIdsWritten {
    pub account_doc_id: String,
    pub user_profile_ids: Value,
    /// `(_ts, _etag)` of the version the list was changed on.
    pub before: (Option<i64>, Option<String>),
    /// `(_ts, _etag)` of the version written.
    pub after: (Option<i64>, Option<String>),
}

/// The `(_ts, _etag)` of a stored document.
fn version(doc: &Value) -> (Option<i64>, Option<String>) {
    (
        doc.get("_ts").and_then(Value::as_i64),
        doc.get("_etag").and_then(Value::as_str).map(str::to_owned),
    )
}

/// Does to the `UserProfileIds` of account `account_key` what the app does when it creates
/// (`Some(profile_doc_id)`) or deletes (`None`) the profile with key `profile_key`: appends the
/// id, or removes it (`codec::profile_ids_with` / `profile_ids_without`), and changes nothing
/// else. A read-modify-write with `If-Match`, again after a lost race (at most
/// [`super::WRITE_ATTEMPTS`] times); reported to the capture of a phase-1 call. `None` when the
/// account has no document or its list already says so (nothing is written).
pub(crate) async fn maintain_profile_ids(
    accounts: &Docs,
    account_key: Uuid,
    profile_key: Uuid,
    profile_doc_id: Option<&str>,
) -> RepoResult<Option<ProfileIdsWritten>> {
    for attempt in 0..super::WRITE_ATTEMPTS {
        let Some(found) = accounts.locate(account_key).await? else {
            return Ok(None);
        };
        let list = match profile_doc_id {
            Some(id) => codec::profile_ids_with(&found.doc, id, profile_key),
            None => codec::profile_ids_without(&found.doc, profile_key),
        };
        let Some(list) = list else {
            return Ok(None);
        };
        let mut doc = crate::transfer::strip_system_fields(found.doc.clone());
        if let Some(obj) = doc.as_object_mut() {
            obj.shift_remove("_lsn");
            obj.insert("UserProfileIds".into(), list.clone());
        }
        let etag = found.etag.as_deref().ok_or_else(|| {
            RepoError::Store("an account document was read without an etag".to_owned())
        })?;
        let written = accounts
            .container
            .replace_if_match_returning(found.partition.clone(), &found.doc_id, &doc, etag)
            .await;
        match written {
            Ok(stored) => {
                // only the answer says which version is this write's (a read may see a later one)
                let after = stored
                    .document
                    .as_ref()
                    .map(version)
                    .unwrap_or((None, None));
                let stored = match stored.document {
                    Some(doc) => Some(doc),
                    None if capture::capturing() => accounts.reread(&found).await?.map(|f| f.doc),
                    None => None,
                };
                if let Some(document) = stored
                    && capture::capturing()
                {
                    capture::record(WrittenDocument::Stored {
                        container: codec::Container::Accounts,
                        document,
                    });
                }
                return Ok(Some(ProfileIdsWritten {
                    account_doc_id: found.doc_id.clone(),
                    user_profile_ids: list,
                    before: version(&found.doc),
                    after,
                }));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PreconditionFailed | ErrorKind::NotFound
                ) =>
            {
                super::backoff(attempt).await;
            }
            Err(e) => return Err(accounts.err(e)),
        }
    }
    Err(accounts.contended())
}

/// What the app does to the accounts' `UserProfileIds` when the profile stored as `profile`
/// is written naming `account` (`None`: no account) instead of the account its `AccountId`
/// names now: its id leaves the former account's list (any spelling) and is appended to the
/// new account's (as its document id). Nothing when the account stays the same. Returns the
/// account documents written, the former account's first.
pub(crate) async fn move_profile_ids(
    accounts: &Docs,
    profile: &Found,
    account: Option<Uuid>,
) -> RepoResult<Vec<ProfileIdsWritten>> {
    let from = account_of(&profile.doc);
    let mut written = Vec::new();
    if from == account {
        return Ok(written);
    }
    let Some(key) =
        codec::document_ref(codec::Container::UserProfiles, &profile.doc).map(|r| r.key)
    else {
        return Ok(written);
    };
    if let Some(from) = from {
        written.extend(maintain_profile_ids(accounts, from, key, None).await?);
    }
    if let Some(to) = account {
        written.extend(maintain_profile_ids(accounts, to, key, Some(&profile.doc_id)).await?);
    }
    Ok(written)
}

/// The account key a stored profile document's `AccountId` names, if any.
pub(crate) fn account_of(profile_doc: &Value) -> Option<Uuid> {
    profile_doc
        .get("AccountId")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
        .map(|r| codec::reference_key(r.trim(), "Account"))
}

fn decode_found(docs: &Docs, found: &Found) -> RepoResult<codec::DecodedProfile> {
    codec::decode_profile(&found.doc).map_err(|e| undecodable(docs.kind(), &e))
}

#[async_trait]
impl ProfileRepository for CosmosProfileRepository {
    /// Checks (racily) that the key is not stored under another id spelling and that the account
    /// exists, then creates the document.
    async fn create(&self, profile: &UserProfile) -> RepoResult<()> {
        profile.validate()?;
        if self.docs.locate(profile.id).await?.is_some() {
            return Err(conflict(ENTITY, ConflictKind::DuplicateId, "id"));
        }
        let reference = match profile.account_id {
            Some(key) => Some(self.account_reference(key).await?),
            None => None,
        };
        let doc = codec::encode_profile_with_account_id(profile, &[], reference.as_deref());
        // the app appends the new profile's id to its account's `UserProfileIds`; first, so
        // that a retry after a failed create finds the id listed and does not list it twice
        if let (Some(account), Some(id)) =
            (profile.account_id, doc.get("id").and_then(Value::as_str))
        {
            maintain_profile_ids(&self.accounts, account, profile.id, Some(id)).await?;
        }
        self.docs.create(&doc).await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<UserProfile>> {
        match self.docs.locate(id).await? {
            Some(found) => Ok(Some(decode_found(&self.docs, &found)?.profile)),
            None => Ok(None),
        }
    }

    /// Profiles whose `AccountId` is any spelling of the account's id, oldest first. Profiles of
    /// a deleted account are still listed (Cosmos does not detach them).
    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<UserProfile>> {
        let spellings = account_id_spellings(&self.accounts, account_id).await?;
        let names: Vec<String> = (0..spellings.len()).map(|i| format!("@a{i}")).collect();
        let mut spec = QuerySpec::new(format!(
            "select * from c where c.AccountId in ({})",
            names.join(", ")
        ));
        for (name, value) in names.iter().zip(spellings) {
            spec = spec.param(name.as_str(), value);
        }
        let mut profiles: Vec<UserProfile> = self
            .docs
            .query(spec)
            .await?
            .iter()
            .filter_map(|doc| match codec::decode_profile(doc) {
                Ok(d) => Some(d.profile),
                Err(e) => {
                    warn_skipped(self.docs.kind(), &e);
                    None
                }
            })
            .filter(|p| p.account_id == Some(account_id))
            .collect();
        profiles.sort_by_key(|p| (p.created_at, p.id));
        Ok(profiles)
    }

    /// Keeps the stored document id and `created_at`, sets `updated_at` to now, and keeps the
    /// badges and (when the account is unchanged) the `AccountId` spelling exactly as stored. A
    /// changed account must exist (`Conflict(MissingReference)`). A profile moved to another
    /// account (or detached from one) leaves the former account's `UserProfileIds` and joins
    /// the new one's, as the app keeps the lists (`move_profile_ids`).
    async fn update(&self, profile: &UserProfile) -> RepoResult<bool> {
        profile.validate()?;
        let Some(found) = self.docs.locate(profile.id).await? else {
            return Ok(false);
        };
        let stored_account = decode_found(&self.docs, &found)?.profile.account_id;
        let reference = match profile.account_id {
            Some(key) if Some(key) != stored_account => Some(self.account_reference(key).await?),
            _ => None,
        };
        // the lists first, as a create does: a retry after a failure in between finds them
        // already so and writes nothing
        move_profile_ids(&self.accounts, &found, profile.account_id).await?;
        let docs = &self.docs;
        let done = docs
            .modify_from(found, |found| {
                let decoded = decode_found(docs, found)?;
                let next = UserProfile {
                    id: decoded.profile.id,
                    cosmos_id: decoded.profile.cosmos_id.clone(),
                    created_at: decoded.profile.created_at,
                    updated_at: now_ticks(),
                    ..profile.clone()
                };
                let mut doc = codec::profile_document(
                    Some(&found.doc),
                    &next,
                    &decoded.badges,
                    reference.as_deref(),
                );
                // the merge keeps a stored reference when the state has none (PostgreSQL's
                // detached profile); this write means to clear it
                if next.account_id.is_none()
                    && decoded.profile.account_id.is_some()
                    && let Some(obj) = doc.as_object_mut()
                {
                    obj.insert("AccountId".into(), Value::Null);
                }
                Ok(Step::Write(doc, ()))
            })
            .await?;
        Ok(done.is_some())
    }

    /// Deletes the profile document, and with it the embedded badges; its id leaves its
    /// account's `UserProfileIds` first, as the app removes it (a retry after a failed delete
    /// then finds nothing left to remove).
    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        match self.docs.locate(id).await? {
            Some(found) => {
                if let Some(account) = account_of(&found.doc) {
                    maintain_profile_ids(&self.accounts, account, id, None).await?;
                }
                self.docs.delete(&found).await
            }
            None => Ok(false),
        }
    }

    /// Sets `HasCompletedOnboarding` (and `updated_at`) unless it is already set; then nothing
    /// is written (PostgreSQL's trigger would still move `updated_at`).
    async fn mark_onboarded(&self, id: Uuid) -> RepoResult<bool> {
        let docs = &self.docs;
        let done = docs
            .modify(id, |found| {
                let decoded = decode_found(docs, found)?;
                if decoded.profile.has_completed_onboarding {
                    return Ok(Step::Keep(()));
                }
                let next = UserProfile {
                    has_completed_onboarding: true,
                    updated_at: now_ticks(),
                    ..decoded.profile
                };
                Ok(Step::Write(
                    codec::profile_document(Some(&found.doc), &next, &decoded.badges, None),
                    (),
                ))
            })
            .await?;
        Ok(done.is_some())
    }
}
