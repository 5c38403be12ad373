//! [`AggregateWriter`]: puts whole aggregates (the state PostgreSQL holds) into Cosmos, in the
//! shape the app reads today (EF Core 9: PascalCase, `$type`, integer enums, comma-joined
//! lists, the original id of a row that came from a non-UUID id). This is the write path of the
//! outbox relay (phase 2) and of repairs towards Cosmos.
//!
//! A put is a read-modify-write of the one document: the aggregate is merged onto the stored
//! document property by property, at every depth ([`codec::account_document`] and its
//! siblings: a property whose stored value means what PostgreSQL holds keeps its stored JSON,
//! unknown properties stay, embedded items are matched by key and new ones appended), and
//! replaced with `If-Match` on the `_etag` it was read at; after a lost race it reads again and
//! merges again, at most [`super::WRITE_ATTEMPTS`] times. A merge that changes nothing writes
//! nothing. What is merged is always the full state the caller passes, so a put is idempotent,
//! and a caller that serialises puts per aggregate (the relay does) and reads the state afresh
//! for each put can never make Cosmos go back in time. A document Cosmos does not have is
//! created as the app creates one.
//!
//! A profile's put keeps its accounts' `UserProfileIds` as the app does: a new profile's id is
//! appended to its account's list, and a profile whose document is to name another account
//! leaves the former account's list and joins the new one's, before the profile's document is
//! written ([`DocumentVersion::profile_ids`] says which account documents were written).

use mystira_cosmos_codec::codec;
use mystira_domain::RepoError;
use mystira_domain::aggregate::Aggregate;
use mystira_domain::ports::RepoResult;
use serde_json::Value;
use uuid::Uuid;

use super::profiles::{ProfileIdsWritten, account_of, maintain_profile_ids, move_profile_ids};
use super::{Docs, WRITE_ATTEMPTS, backoff, same_content};
use crate::error::ErrorKind;

/// The version of a document as Cosmos holds it after a put.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentVersion {
    pub document_id: String,
    pub ts: i64,
    pub etag: Option<String>,
    /// The put created the document (Cosmos had none).
    pub created: bool,
    /// The account documents whose `UserProfileIds` the put of a profile changed: the one a
    /// new profile joined, or the two a moved profile left and joined (each once, from the
    /// version first written on to the last one written).
    pub profile_ids: Vec<ProfileIdsWritten>,
}

/// Writes aggregates into the three containers.
#[derive(Debug, Clone)]
pub struct AggregateWriter {
    pub(super) accounts: Docs,
    pub(super) profiles: Docs,
    pub(super) signups: Docs,
}

impl AggregateWriter {
    fn docs(&self, container: codec::Container) -> &Docs {
        match container {
            codec::Container::Accounts => &self.accounts,
            codec::Container::UserProfiles => &self.profiles,
            codec::Container::PendingSignups => &self.signups,
        }
    }

    /// The raw document of `container` whose key is `key` (any spelling of its id), with its
    /// system properties.
    pub async fn read(&self, container: codec::Container, key: Uuid) -> RepoResult<Option<Value>> {
        Ok(self.docs(container).locate(key).await?.map(|f| f.doc))
    }

    /// Makes the document of `aggregate` hold its state; returns the version Cosmos then holds.
    pub async fn put(&self, aggregate: &Aggregate) -> RepoResult<DocumentVersion> {
        let (docs, key) = match aggregate {
            Aggregate::Account(a) => (&self.accounts, a.account.id),
            Aggregate::Profile(p) => (&self.profiles, p.profile.id),
            Aggregate::Signup(s) => (&self.signups, s.id),
        };
        // The document's id is known exactly: the row's Cosmos id, or its key's canonical
        // text (what the encoder writes). A point read finds it; `locate`'s search over other
        // spellings would scan the container for every aggregate Cosmos does not have yet.
        let encoded_doc = document(None, aggregate);
        let doc_id = encoded_doc
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut profile_ids: Vec<ProfileIdsWritten> = Vec::new();
        for attempt in 0..WRITE_ATTEMPTS {
            // a sign-up is first looked for in the partition its email names (a point read);
            // the id query covers one stored under another spelling of the email
            let in_partition = match docs.id_is_partition() {
                true => None,
                false => {
                    docs.read_in(docs.partition_of(&encoded_doc), &doc_id)
                        .await?
                }
            };
            let stored = match in_partition {
                Some(found) => Some(found),
                None => docs.read_by_doc_id(&doc_id).await?,
            }
            .filter(|found| docs.key_of(&found.doc) == Some(key));
            let found_before = stored.is_some();
            let written = match stored {
                Some(found) => {
                    let doc = document(Some(&found.doc), aggregate);
                    if same_content(&found.doc, &doc) {
                        return version_of(&found.doc, false, profile_ids);
                    }
                    // a profile whose document is to name another account: the lists of both
                    // accounts first, as the app keeps them (a put repeated after a failure
                    // finds them so and writes nothing)
                    if let Aggregate::Profile(_) = aggregate {
                        let to = account_of(&doc);
                        for written in move_profile_ids(&self.accounts, &found, to).await? {
                            join_written(&mut profile_ids, written);
                        }
                    }
                    let etag = found.etag.as_deref().ok_or_else(|| {
                        RepoError::Store(format!(
                            "a document in {} was read without an etag",
                            docs.kind
                        ))
                    })?;
                    docs.container
                        .replace_if_match_returning(
                            found.partition.clone(),
                            &found.doc_id,
                            &doc,
                            etag,
                        )
                        .await
                        .map(|stored| (stored, found.partition.clone(), found.doc_id.clone()))
                }
                None => {
                    // a new profile: its id joins its account's `UserProfileIds` as the app
                    // appends it, before the profile exists, so that a put repeated after a
                    // failure finds it listed (appended once)
                    if let Aggregate::Profile(p) = aggregate
                        && let Some(account) = p.profile.account_id
                        && let Some(written) =
                            maintain_profile_ids(&self.accounts, account, key, Some(&doc_id))
                                .await?
                    {
                        join_written(&mut profile_ids, written);
                    }
                    let partition = docs.partition_of(&encoded_doc);
                    docs.container
                        .create_returning(partition.clone(), &doc_id, &encoded_doc)
                        .await
                        .map(|stored| (stored, partition, doc_id.clone()))
                }
            };
            match written {
                Ok((stored, partition, doc_id)) => {
                    let doc = match stored.document {
                        Some(doc) => doc,
                        None => docs
                            .container
                            .read::<Value>(partition, &doc_id)
                            .await
                            .map_err(|e| docs.err(e))?
                            .map(|v| v.value)
                            .ok_or_else(|| docs.contended())?,
                    };
                    return version_of(&doc, !found_before, profile_ids);
                }
                // Someone wrote (or created) it in between: read again and merge again.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::PreconditionFailed | ErrorKind::Conflict | ErrorKind::NotFound
                    ) =>
                {
                    backoff(attempt).await;
                }
                Err(e) => return Err(docs.err(e)),
            }
        }
        Err(docs.contended())
    }

    /// Deletes the document of `container` with key `key`; `false` if there was none.
    /// `doc_id`, when known (the id the document was last seen under), spares the search over
    /// every spelling of the key. A profile's id first leaves its account's `UserProfileIds`,
    /// as the app removes it (the account document written is returned).
    pub async fn remove(
        &self,
        container: codec::Container,
        key: Uuid,
        doc_id: Option<&str>,
    ) -> RepoResult<(bool, Option<ProfileIdsWritten>)> {
        let docs = self.docs(container);
        let found = match doc_id {
            Some(id) => docs
                .read_by_doc_id(id)
                .await?
                .filter(|f| docs.key_of(&f.doc) == Some(key)),
            None => None,
        };
        let found = match found {
            Some(f) => Some(f),
            None => docs.locate(key).await?,
        };
        let Some(found) = found else {
            return Ok((false, None));
        };
        let profile_ids = match container {
            codec::Container::UserProfiles => match account_of(&found.doc) {
                Some(account) => maintain_profile_ids(&self.accounts, account, key, None).await?,
                None => None,
            },
            _ => None,
        };
        Ok((docs.delete(&found).await?, profile_ids))
    }

    /// Appends each of `profiles` (key, document id), in order, to the `UserProfileIds` of
    /// account `account_key` unless it is listed: for an account document created after its
    /// profiles (their deliveries found no account document to append to). Returns the list
    /// written, with the version it was first written on.
    pub async fn list_profiles(
        &self,
        account_key: Uuid,
        profiles: &[(Uuid, String)],
    ) -> RepoResult<Option<ProfileIdsWritten>> {
        let mut all: Vec<ProfileIdsWritten> = Vec::new();
        for (key, doc_id) in profiles {
            if let Some(written) =
                maintain_profile_ids(&self.accounts, account_key, *key, Some(doc_id)).await?
            {
                join_written(&mut all, written);
            }
        }
        Ok(all.pop())
    }

    /// The raw document of `container` whose `id` is exactly `doc_id` and whose key is `key`.
    pub async fn read_exact(
        &self,
        container: codec::Container,
        doc_id: &str,
        key: Uuid,
    ) -> RepoResult<Option<Value>> {
        let docs = self.docs(container);
        Ok(docs
            .read_by_doc_id(doc_id)
            .await?
            .filter(|f| docs.key_of(&f.doc) == Some(key))
            .map(|f| f.doc))
    }
}

/// The document that makes Cosmos hold `aggregate`: merged onto `stored`, or new.
fn document(stored: Option<&Value>, aggregate: &Aggregate) -> Value {
    match aggregate {
        Aggregate::Account(a) => codec::account_document(
            stored,
            &a.account,
            a.subscription.as_ref(),
            &a.completed_scenarios,
        ),
        Aggregate::Profile(p) => codec::profile_document(
            stored,
            &p.profile,
            &p.badges,
            p.account_cosmos_id.as_deref(),
        ),
        Aggregate::Signup(s) => codec::signup_document(stored, s),
    }
}

/// Adds a list written to `all`: one change per account document, from the first version
/// written on to the last one written (a list written again on another version replaces it).
fn join_written(all: &mut Vec<ProfileIdsWritten>, written: ProfileIdsWritten) {
    match all
        .iter_mut()
        .find(|w| w.account_doc_id == written.account_doc_id)
    {
        Some(first) if first.after == written.before => {
            *first = ProfileIdsWritten {
                before: first.before.clone(),
                ..written
            };
        }
        Some(other) => *other = written,
        None => all.push(written),
    }
}

fn version_of(
    doc: &Value,
    created: bool,
    profile_ids: Vec<ProfileIdsWritten>,
) -> RepoResult<DocumentVersion> {
    let document_id = doc
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| RepoError::Store("a stored document has no id".to_owned()))?
        .to_owned();
    let ts = doc
        .get("_ts")
        .and_then(Value::as_i64)
        .ok_or_else(|| RepoError::Store("a stored document has no _ts".to_owned()))?;
    let etag = doc.get("_etag").and_then(Value::as_str).map(str::to_owned);
    Ok(DocumentVersion {
        document_id,
        ts,
        etag,
        created,
        profile_ids,
    })
}
