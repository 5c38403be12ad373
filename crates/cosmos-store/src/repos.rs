//! The repository ports of `mystira_domain::ports` on Cosmos DB, so that the dual-write router
//! can put either store behind the same traits. One struct per port; [`CosmosRepositories`]
//! opens all of them on one [`CosmosStore`].
//!
//! # Where the data lives
//! * `Accounts` (partition key `/id`): the account document, with the embedded `Subscription`
//!   and `CompletedScenarioIds`. [`CosmosAccountRepository`], [`CosmosSubscriptionRepository`]
//!   and [`CosmosCompletedScenarioRepository`] all read and write this one document.
//! * `UserProfiles` (`/id`): the profile document with its embedded `EarnedBadges`
//!   ([`CosmosProfileRepository`], [`CosmosBadgeRepository`]).
//! * `PendingSignups` (`/email`): one document per sign-up ([`CosmosPendingSignupRepository`]).
//!
//! The partition-key path is read from the container (older containers used `/Id`), never
//! assumed: a point read by id is used only when the path is `/id`, otherwise the id is queried.
//!
//! # Decoding and encoding
//! Every read goes through `mystira_cosmos_codec::codec` (all historical shapes: EF 8
//! `Discriminator`, `Auth0UserId`, `Type|<guid>` ids, ...). A document that does not decode is
//! skipped in lists with a `tracing` warning naming the container, the reason code and the field
//! (never a value or an id), and is [`RepoError::Store`] for a point lookup.
//!
//! Every write changes the stored document with the functions a phase-2 delivery uses
//! (`codec::{account,profile,signup}_document(Some(stored), ...)`, given the domain values the
//! write means: the stored ones it does not change, decoded from the same document, and the
//! ones it changes): a property whose stored text already means what the write says keeps its
//! text (a date's digits and offset, an id's spelling, EF 8's `Discriminator`, `Auth0UserId`
//! while the user id is the same), unknown properties stay at every depth, system properties
//! are left to Cosmos, and embedded items are matched, never rebuilt (duplicate badges stay).
//! So a write changes only what it changed, as the app's would. Creates encode the entity in
//! the current EF Core 9 shape.
//!
//! A subscription's `created_at`/`updated_at` have no place in the app's `Subscription`: a
//! write never adds `CreatedAt`/`UpdatedAt` to it (it keeps them up to date only where an
//! older writer left them, as a delivery does), and what a read returns for them is derived
//! (see [`CosmosSubscriptionRepository`]).
//!
//! # Ids
//! A document's `id` is the entity's Cosmos id (its original string, or the canonical text of
//! its key). `get(key)` therefore tries, in order: a point read of the canonical text (the
//! common case, one cheap read); a parameterised query for the other spellings a UUID key has
//! been stored under (upper case, EF 8's `<Type>|<guid>` in `id` or the guid in `Id`); and, only
//! for version-5 keys (the keys derived from non-UUID ids such as 26-character hex ids), a query
//! over the documents whose id is not a lower-case 36-character string, whose keys are computed
//! here with the codec's rule. Every candidate is checked with the codec's key rule before it is
//! returned. Updates never rename a document: the stored `id` (and the entity's `cosmos_id`) is
//! kept.
//!
//! # Concurrency
//! Every read-modify-write reads the document with its ETag, changes it, and replaces it with
//! `If-Match`; on a stale ETag it re-reads and decides again, at most [`WRITE_ATTEMPTS`] times,
//! then gives up with [`RepoError::Unavailable`] (nothing was written; retry). This is what makes
//! concurrent awards of one badge end with one badge and every concurrent wrong sign-up code be
//! counted.
//!
//! # Differences from the PostgreSQL repositories
//! * **Uniqueness that Cosmos cannot enforce is checked before the write, not by the store.**
//!   `Accounts` is partitioned by `/id`, so a unique-key policy on `ExternalUserId` would be per
//!   document and useless: `create`/`update` query for another account with the auth0 id first,
//!   and two concurrent creates with the same auth0 id can both succeed. Likewise an id already
//!   stored under another spelling (`Account|<guid>`) is looked up before `create`, racily, and a
//!   `PendingSignups` id is unique only within its email partition in Cosmos, so the duplicate-id
//!   check for sign-ups is a query too.
//! * **Account delete** removes the account document, and with it the embedded subscription and
//!   completed scenarios (PostgreSQL's cascade). Profiles are separate documents in other
//!   partitions; they are left as the app leaves them: their `AccountId` still names the deleted
//!   account, so `ProfileRepository::get` still returns `account_id: Some(..)` and
//!   `list_by_account` of the deleted id still lists them, where PostgreSQL has set
//!   `account_id` to `None`. An account's `UserProfileIds` is kept as the app keeps it: a
//!   profile's create appends its id, its delete removes it, an update that moves it to
//!   another account removes it from the former account's list and appends it to the new
//!   one's (`profiles::maintain_profile_ids`, `profiles::move_profile_ids`).
//! * **Completed scenarios have no stored time.** The codec derives `completed_at` from the
//!   account's `LastLoginAt`, so `mark_completed` returns (and `list_by_account` reads) that
//!   derived time, not the `at` passed in, and the time of every completion moves with each
//!   `record_login`. Completions are listed in the order they were recorded (array order).
//! * **Paging is keyed on the document id** (`order by c.id`). For canonical ids this is the key
//!   order PostgreSQL uses; documents with other ids (upper case, non-UUID, EF 8 form) sort by
//!   their id string instead. The `next` request carries the key of the last document of the
//!   page, which is resolved back to its document id. A page can hold fewer than `limit` items
//!   when documents are skipped (undecodable, or in `list_active` not active at `now`): follow
//!   `next` until it is `None`. `list_active` pages over account documents, so its cursor is the
//!   owning account's key, not the subscription's id.
//! * **Timestamps** keep 100 ns ticks (PostgreSQL: microseconds); `updated_at` of a profile is
//!   set to this process's clock on a write (PostgreSQL: the server's `now()`); a subscription's
//!   `created_at`/`updated_at` are derived on every read (`StartDate`, else the account's
//!   `CreatedAt`; the document's `_ts`, the time of the document's last write, whatever it
//!   changed) unless the stored subscription has them (PostgreSQL keeps `created_at` and sets
//!   `updated_at` to `now()` on an upsert); and
//!   `cleanup_expired` compares with this process's clock as well (Cosmos queries cannot compare
//!   the app's date strings reliably: their offsets and digit counts vary).
//! * **Emails** are matched ignoring case with `LOWER(...)`; the partition key of a sign-up is
//!   its email as given (the app lower-cases it before it gets here).

pub mod accounts;
pub mod aggregates;
pub mod badges;
pub mod completed_scenarios;
pub mod pending_signups;
pub mod profiles;
pub mod subscriptions;

use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec::{self, DecodeError};
use mystira_domain::error::{ConflictKind, RepoError};
use mystira_domain::ports::{Page, PageRequest, RepoResult};
use serde_json::Value;
use uuid::Uuid;

use crate::PartitionKey;
use crate::capture::{self, WrittenDocument};
use crate::container::{Container, QuerySpec};
use crate::error::ErrorKind;
use crate::store::CosmosStore;

pub use accounts::CosmosAccountRepository;
pub use aggregates::{AggregateWriter, DocumentVersion};
pub use badges::CosmosBadgeRepository;
pub use completed_scenarios::CosmosCompletedScenarioRepository;
pub use pending_signups::CosmosPendingSignupRepository;
pub use profiles::CosmosProfileRepository;
pub use subscriptions::CosmosSubscriptionRepository;

/// How many times a read-modify-write re-reads after a stale ETag before giving up. Each lost
/// race means another writer succeeded, so with fewer concurrent writers than this every caller
/// gets through.
pub const WRITE_ATTEMPTS: u32 = 16;

/// The partition-key path the app uses for a container (what [`CosmosRepositories::ensure`]
/// creates; existing containers are read as they are).
pub fn partition_key_path(kind: codec::Container) -> &'static str {
    match kind {
        codec::Container::Accounts | codec::Container::UserProfiles => "/id",
        codec::Container::PendingSignups => "/email",
    }
}

/// Every repository of the user domain on one database.
#[derive(Debug, Clone)]
pub struct CosmosRepositories {
    pub accounts: CosmosAccountRepository,
    pub subscriptions: CosmosSubscriptionRepository,
    pub completed_scenarios: CosmosCompletedScenarioRepository,
    pub profiles: CosmosProfileRepository,
    pub badges: CosmosBadgeRepository,
    pub pending_signups: CosmosPendingSignupRepository,
    /// Whole aggregates into documents (the outbox relay's write path).
    pub writer: AggregateWriter,
}

impl CosmosRepositories {
    /// Opens the three existing containers.
    pub async fn open(store: &CosmosStore) -> crate::Result<Self> {
        let accounts = store.container(codec::Container::Accounts.name()).await?;
        let profiles = store
            .container(codec::Container::UserProfiles.name())
            .await?;
        let signups = store
            .container(codec::Container::PendingSignups.name())
            .await?;
        Ok(Self::from_containers(accounts, profiles, signups))
    }

    /// Creates the database and the containers (with the app's partition keys) where missing,
    /// then opens them.
    pub async fn ensure(store: &CosmosStore) -> crate::Result<Self> {
        store.ensure_database().await?;
        let open =
            |kind: codec::Container| store.ensure_container(kind.name(), partition_key_path(kind));
        let accounts = open(codec::Container::Accounts).await?;
        let profiles = open(codec::Container::UserProfiles).await?;
        let signups = open(codec::Container::PendingSignups).await?;
        Ok(Self::from_containers(accounts, profiles, signups))
    }

    /// Builds the repositories on already opened containers.
    pub fn from_containers(accounts: Container, profiles: Container, signups: Container) -> Self {
        let accounts = Docs::new(accounts, codec::Container::Accounts);
        let profiles = Docs::new(profiles, codec::Container::UserProfiles);
        let signups = Docs::new(signups, codec::Container::PendingSignups);
        let writer = AggregateWriter {
            accounts: accounts.clone(),
            profiles: profiles.clone(),
            signups: signups.clone(),
        };
        Self {
            accounts: CosmosAccountRepository::from_docs(accounts.clone()),
            subscriptions: CosmosSubscriptionRepository::from_docs(accounts.clone()),
            completed_scenarios: CosmosCompletedScenarioRepository::from_docs(accounts.clone()),
            profiles: CosmosProfileRepository::from_docs(profiles.clone(), accounts),
            badges: CosmosBadgeRepository::from_docs(profiles),
            pending_signups: CosmosPendingSignupRepository::from_docs(signups),
            writer,
        }
    }
}

/// A cosmos-client error as a repository error. Never carries ids or values (the client's
/// messages name only the operation and the container).
pub(crate) fn repo_error(entity: &'static str, err: crate::Error) -> RepoError {
    match err.kind() {
        ErrorKind::Conflict => RepoError::Conflict {
            entity,
            kind: ConflictKind::DuplicateId,
            constraint: "id".to_owned(),
        },
        // A stale ETag that escapes a retry loop: someone else wrote; trying again may succeed.
        ErrorKind::Throttled
        | ErrorKind::Unavailable
        | ErrorKind::Transport
        | ErrorKind::PreconditionFailed => RepoError::Unavailable(err.to_string()),
        _ => RepoError::Store(err.to_string()),
    }
}

/// A conflict found by a check before the write (see the module docs on uniqueness).
pub(crate) fn conflict(entity: &'static str, kind: ConflictKind, constraint: &str) -> RepoError {
    RepoError::Conflict {
        entity,
        kind,
        constraint: constraint.to_owned(),
    }
}

/// A document that does not decode, for a point lookup. The codec's message names the field and
/// the rule, never the value.
pub(crate) fn undecodable(kind: codec::Container, err: &DecodeError) -> RepoError {
    RepoError::Store(format!(
        "a document in {kind} does not decode ({}): {}",
        err.code, err.message
    ))
}

/// Logs a document skipped in a list, without its id or any value.
pub(crate) fn warn_skipped(kind: codec::Container, err: &DecodeError) {
    tracing::warn!(
        container = %kind,
        code = err.code,
        field = %err.field,
        "skipping a document that does not decode"
    );
}

/// A date-time cut to .NET's 100 ns ticks, the precision a document keeps.
pub(crate) fn now_ticks() -> DateTime<Utc> {
    let now = Utc::now();
    let excess = i64::from(now.timestamp_subsec_nanos() % 100);
    now - chrono::Duration::nanoseconds(excess)
}

/// A document read with what is needed to write it back.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub doc: Value,
    pub etag: Option<String>,
    pub doc_id: String,
    pub partition: PartitionKey,
}

/// What a read-modify-write step decided.
pub(crate) enum Step<R> {
    /// Nothing to write; the result as it stands.
    Keep(R),
    /// Replace the document with this one (if nobody wrote in between), then return the result.
    Write(Value, R),
}

/// One container of the user domain with the operations every repository shares.
#[derive(Debug, Clone)]
pub(crate) struct Docs {
    container: Container,
    kind: codec::Container,
    /// The partition-key path as segments (`["email"]`), read from the container.
    pk_path: Vec<String>,
}

impl Docs {
    pub(crate) fn new(container: Container, kind: codec::Container) -> Self {
        let path = container
            .partition_key_paths()
            .first()
            .cloned()
            .unwrap_or_else(|| partition_key_path(kind).to_owned());
        let pk_path = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            container,
            kind,
            pk_path,
        }
    }

    pub(crate) fn kind(&self) -> codec::Container {
        self.kind
    }

    fn entity(&self) -> &'static str {
        self.kind.name()
    }

    fn err(&self, e: crate::Error) -> RepoError {
        repo_error(self.entity(), e)
    }

    pub(crate) fn id_is_partition(&self) -> bool {
        self.pk_path.len() == 1 && self.pk_path[0] == "id"
    }

    /// The partition-key value of a document (missing = undefined, as Cosmos stores it).
    pub(crate) fn partition_of(&self, doc: &Value) -> PartitionKey {
        let mut value = Some(doc);
        for segment in &self.pk_path {
            value = value.and_then(|v| v.get(segment));
        }
        match value {
            None => PartitionKey::from(PartitionKey::UNDEFINED),
            Some(Value::Null) => PartitionKey::from(PartitionKey::NULL),
            Some(Value::String(s)) => PartitionKey::from(s.clone()),
            Some(Value::Bool(b)) => PartitionKey::from(*b),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(PartitionKey::from)
                .or_else(|| n.as_f64().and_then(|f| PartitionKey::try_from(f).ok()))
                .unwrap_or_else(|| PartitionKey::from(PartitionKey::UNDEFINED)),
            Some(_) => PartitionKey::from(PartitionKey::UNDEFINED),
        }
    }

    fn found(&self, doc: Value, etag: Option<String>) -> Option<Found> {
        let doc_id = doc.get("id")?.as_str()?.to_owned();
        let etag = etag.or_else(|| doc.get("_etag").and_then(Value::as_str).map(str::to_owned));
        let partition = self.partition_of(&doc);
        Some(Found {
            doc,
            etag,
            doc_id,
            partition,
        })
    }

    /// Runs a query to the end and returns every document.
    pub(crate) async fn query(&self, spec: QuerySpec) -> RepoResult<Vec<Value>> {
        let mut pages = self.container.query::<Value>(spec, None);
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await.map_err(|e| self.err(e))? {
            out.extend(page.items);
        }
        Ok(out)
    }

    /// [`Docs::query`], each document with its ETag and partition.
    pub(crate) async fn query_found(&self, spec: QuerySpec) -> RepoResult<Vec<Found>> {
        Ok(self
            .query(spec)
            .await?
            .into_iter()
            .filter_map(|doc| self.found(doc, None))
            .collect())
    }

    /// The document whose `id` is exactly `doc_id`.
    pub(crate) async fn read_by_doc_id(&self, doc_id: &str) -> RepoResult<Option<Found>> {
        if self.id_is_partition() {
            let read = self
                .container
                .read::<Value>(doc_id.to_owned(), doc_id)
                .await
                .map_err(|e| self.err(e))?;
            return Ok(read.and_then(|v| self.found(v.value, v.etag)));
        }
        let spec = QuerySpec::new("select * from c where c.id = @id").param("@id", doc_id);
        let mut all = self.query_found(spec).await?;
        if all.len() > 1 {
            // Ids are unique only per partition; the oldest write wins the lookup.
            tracing::warn!(container = %self.kind, count = all.len(), "several documents share an id");
        }
        all.sort_by_key(|f| f.doc.get("_ts").and_then(Value::as_i64));
        Ok(all.into_iter().next())
    }

    /// A point read of `doc_id` in `partition`.
    pub(crate) async fn read_in(
        &self,
        partition: PartitionKey,
        doc_id: &str,
    ) -> RepoResult<Option<Found>> {
        let read = self
            .container
            .read::<Value>(partition, doc_id)
            .await
            .map_err(|e| self.err(e))?;
        Ok(read.and_then(|v| self.found(v.value, v.etag)))
    }

    /// Reads `found` again (after a stale ETag).
    async fn reread(&self, found: &Found) -> RepoResult<Option<Found>> {
        self.read_in(found.partition.clone(), &found.doc_id).await
    }

    pub(crate) fn key_of(&self, doc: &Value) -> Option<Uuid> {
        codec::document_ref(self.kind, doc).map(|r| r.key)
    }

    /// The document whose key (by the codec's rule) is `key`; see the module docs for the order
    /// of the lookups.
    pub(crate) async fn locate(&self, key: Uuid) -> RepoResult<Option<Found>> {
        let canonical = key.hyphenated().to_string();
        if self.id_is_partition()
            && let Some(found) = self.read_by_doc_id(&canonical).await?
            && self.key_of(&found.doc) == Some(key)
        {
            return Ok(Some(found));
        }
        let upper = canonical.to_uppercase();
        let entity = self.kind.entity_type();
        let spec = QuerySpec::new(
            "select * from c where c.id in (@lower, @upper, @typed, @typed_upper) \
             or c.Id in (@lower, @upper)",
        )
        .param("@lower", canonical.as_str())
        .param("@upper", upper.as_str())
        .param("@typed", format!("{entity}|{canonical}"))
        .param("@typed_upper", format!("{entity}|{upper}"));
        if let Some(found) = self.first_with_key(spec, key).await? {
            return Ok(Some(found));
        }
        if key.get_version_num() == 5 {
            // Only a non-UUID id maps to a v5 key, and its key cannot be computed in a query:
            // read the (few) documents whose id is not a canonical UUID and compute theirs.
            let spec = QuerySpec::new(
                "select * from c where length(c.id) != 36 or c.id != lower(c.id) \
                 or is_defined(c.Id)",
            );
            return self.first_with_key(spec, key).await;
        }
        Ok(None)
    }

    async fn first_with_key(&self, spec: QuerySpec, key: Uuid) -> RepoResult<Option<Found>> {
        Ok(self
            .query_found(spec)
            .await?
            .into_iter()
            .find(|f| self.key_of(&f.doc) == Some(key)))
    }

    /// Creates `doc` (its `id` and partition are read from it); an existing id is
    /// `Conflict(DuplicateId)`.
    pub(crate) async fn create(&self, doc: &Value) -> RepoResult<()> {
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| RepoError::Store("an encoded document has no id".to_owned()))?;
        if capture::capturing() {
            let stored = self
                .container
                .create_returning(self.partition_of(doc), id, doc)
                .await
                .map_err(|e| self.err(e))?;
            return self.record_stored(stored, self.partition_of(doc), id).await;
        }
        self.container
            .create(self.partition_of(doc), id, doc)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reports a write to the capture of the current task (see [`crate::capture`]). A service
    /// that sent no body is asked for the document: the copy needs the version it got.
    async fn record_stored(
        &self,
        stored: crate::container::Stored,
        partition: PartitionKey,
        doc_id: &str,
    ) -> RepoResult<()> {
        let document = match stored.document {
            Some(doc) => Some(doc),
            None => self
                .container
                .read::<Value>(partition, doc_id)
                .await
                .map_err(|e| self.err(e))?
                .map(|v| v.value),
        };
        if let Some(document) = document {
            capture::record(WrittenDocument::Stored {
                container: self.kind,
                document,
            });
        }
        Ok(())
    }

    /// Deletes the document; `false` if it was already gone.
    pub(crate) async fn delete(&self, found: &Found) -> RepoResult<bool> {
        let deleted = self
            .container
            .delete(found.partition.clone(), &found.doc_id)
            .await
            .map_err(|e| self.err(e))?;
        if deleted && let Some(key) = self.key_of(&found.doc) {
            capture::record(WrittenDocument::Deleted {
                container: self.kind,
                document_id: found.doc_id.clone(),
                key,
                source_ts: found.doc.get("_ts").and_then(Value::as_i64),
            });
        }
        Ok(deleted)
    }

    /// Replaces `found` with `doc` if its ETag still matches. `Ok(false)` when it does not (or
    /// the document is gone): re-read and decide again.
    pub(crate) async fn replace(&self, found: &Found, doc: &Value) -> RepoResult<bool> {
        let etag = found.etag.as_deref().ok_or_else(|| {
            RepoError::Store(format!(
                "a document in {} was read without an etag",
                self.kind
            ))
        })?;
        let replaced = if capture::capturing() {
            self.container
                .replace_if_match_returning(found.partition.clone(), &found.doc_id, doc, etag)
                .await
                .map(Some)
        } else {
            self.container
                .replace_if_match(found.partition.clone(), &found.doc_id, doc, etag)
                .await
                .map(|_| None)
        };
        match replaced {
            Ok(Some(stored)) => {
                self.record_stored(stored, found.partition.clone(), &found.doc_id)
                    .await?;
                Ok(true)
            }
            Ok(None) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PreconditionFailed | ErrorKind::NotFound
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Read-modify-write of the document with key `key`: `Ok(None)` if there is none.
    pub(crate) async fn modify<R: Send>(
        &self,
        key: Uuid,
        step: impl FnMut(&Found) -> RepoResult<Step<R>> + Send,
    ) -> RepoResult<Option<R>> {
        match self.locate(key).await? {
            Some(found) => self.modify_from(found, step).await,
            None => Ok(None),
        }
    }

    /// Read-modify-write starting from an already read document. `step` sees the current
    /// document each time; after a stale ETag it runs again on a fresh read.
    pub(crate) async fn modify_from<R: Send>(
        &self,
        mut found: Found,
        mut step: impl FnMut(&Found) -> RepoResult<Step<R>> + Send,
    ) -> RepoResult<Option<R>> {
        for attempt in 0..WRITE_ATTEMPTS {
            match step(&found)? {
                Step::Keep(result) => return Ok(Some(result)),
                Step::Write(doc, result) => {
                    if self.replace(&found, &doc).await? {
                        return Ok(Some(result));
                    }
                }
            }
            backoff(attempt).await;
            found = match self.reread(&found).await? {
                Some(fresh) => fresh,
                None => return Ok(None),
            };
        }
        Err(self.contended())
    }

    /// [`Docs::modify`] that returns the document as Cosmos holds it afterwards: the one
    /// written, with the `_ts` and `_etag` Cosmos gave it, or the stored one when `step` writes
    /// nothing (`None`). For a result derived from the written version (a subscription's
    /// `updated_at` is its `_ts`).
    pub(crate) async fn modify_returning(
        &self,
        key: Uuid,
        mut step: impl FnMut(&Found) -> RepoResult<Option<Value>> + Send,
    ) -> RepoResult<Option<Value>> {
        let Some(mut found) = self.locate(key).await? else {
            return Ok(None);
        };
        for attempt in 0..WRITE_ATTEMPTS {
            match step(&found)? {
                None => return Ok(Some(found.doc)),
                Some(doc) => {
                    if let Some(stored) = self.replace_returning(&found, &doc).await? {
                        return Ok(Some(stored));
                    }
                }
            }
            backoff(attempt).await;
            found = match self.reread(&found).await? {
                Some(fresh) => fresh,
                None => return Ok(None),
            };
        }
        Err(self.contended())
    }

    /// [`Docs::replace`] returning the document Cosmos stored (`None`: the ETag is stale or the
    /// document is gone; re-read and decide again). A service that sends no body is asked for
    /// the document; if it is gone by then, the document sent is returned.
    async fn replace_returning(&self, found: &Found, doc: &Value) -> RepoResult<Option<Value>> {
        let etag = found.etag.as_deref().ok_or_else(|| {
            RepoError::Store(format!(
                "a document in {} was read without an etag",
                self.kind
            ))
        })?;
        let stored = match self
            .container
            .replace_if_match_returning(found.partition.clone(), &found.doc_id, doc, etag)
            .await
        {
            Ok(stored) => stored,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PreconditionFailed | ErrorKind::NotFound
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.err(e)),
        };
        let document = match stored.document {
            Some(document) => Some(document),
            None => self
                .container
                .read::<Value>(found.partition.clone(), &found.doc_id)
                .await
                .map_err(|e| self.err(e))?
                .map(|v| v.value),
        };
        if let Some(document) = &document
            && capture::capturing()
        {
            capture::record(WrittenDocument::Stored {
                container: self.kind,
                document: document.clone(),
            });
        }
        Ok(Some(document.unwrap_or_else(|| doc.clone())))
    }

    pub(crate) fn contended(&self) -> RepoError {
        RepoError::Unavailable(format!(
            "a document in {} kept changing concurrently ({WRITE_ATTEMPTS} attempts); retry",
            self.kind
        ))
    }

    /// The `id` to continue a keyset page after: the document id of the document with key
    /// `after`, or its canonical text when that document is gone.
    async fn cursor(&self, after: Uuid) -> RepoResult<String> {
        Ok(match self.locate(after).await? {
            Some(found) => found.doc_id,
            None => after.hyphenated().to_string(),
        })
    }

    /// One keyset window of at most `page.limit` documents matching `filter` (a condition on
    /// `c`, no user values), in document-id order, and the request for the next window.
    pub(crate) async fn window(
        &self,
        filter: &str,
        page: PageRequest,
    ) -> RepoResult<(Vec<Value>, Option<PageRequest>)> {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        // One more than asked for tells whether another page follows. The number is ours, not a
        // caller's value, so it is part of the text (TOP takes no parameter on every server).
        let top = u64::from(page.limit) + 1;
        let spec = match page.after {
            Some(after) => QuerySpec::new(format!(
                "select top {top} * from c where ({filter}) and c.id > @after order by c.id"
            ))
            .param("@after", self.cursor(after).await?),
            None => QuerySpec::new(format!(
                "select top {top} * from c where ({filter}) order by c.id"
            )),
        };
        let mut docs = self.query(spec).await?;
        let more = docs.len() > limit;
        docs.truncate(limit);
        let next = match docs.last().and_then(|d| self.key_of(d)) {
            Some(key) if more => Some(PageRequest {
                after: Some(key),
                limit: page.limit,
            }),
            _ => None,
        };
        Ok((docs, next))
    }
}

/// Decodes the documents of a window, skipping (and logging) those that do not decode.
pub(crate) fn decode_window<T, D>(
    kind: codec::Container,
    docs: &[Value],
    decode: impl Fn(&Value) -> Result<D, DecodeError>,
    pick: impl Fn(D) -> Option<T>,
    next: Option<PageRequest>,
) -> Page<T> {
    let items = docs
        .iter()
        .filter_map(|doc| match decode(doc) {
            Ok(d) => pick(d),
            Err(e) => {
                warn_skipped(kind, &e);
                None
            }
        })
        .collect();
    Page { items, next }
}

/// A short, growing, slightly jittered pause after a lost race, so that racing writers spread
/// out instead of colliding again in lockstep.
pub(crate) async fn backoff(attempt: u32) {
    let base = 2u64.saturating_pow(attempt.min(6)).min(40);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % 7,
    );
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Whether `doc` would change nothing of `stored` (system properties aside).
pub(crate) fn same_content(stored: &Value, doc: &Value) -> bool {
    let user = |v: &Value| -> Vec<(String, Value)> {
        let mut props: Vec<(String, Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.sort_by(|x, y| x.0.cmp(&y.0));
        props
    };
    user(stored) == user(doc)
}
