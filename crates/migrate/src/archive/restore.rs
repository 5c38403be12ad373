//! `restore`: loads a finished archive into a Cosmos database.
//!
//! - The archive is checked first as `archive verify` checks it offline; a damaged or
//!   unfinished archive restores nothing.
//! - A target that holds documents in any of the archive's containers is refused unless
//!   merging was asked for, before anything is written. The database and containers are
//!   created when missing, with the partition keys the manifest records (the app's: `/id` for
//!   Accounts and UserProfiles, `/email` for PendingSignups); an existing container with
//!   another partition key is an error.
//! - Chunks are applied in manifest order, one after the other, each chunk's documents upserted
//!   `concurrency` at a time; a document read at two versions (see the archive's module docs)
//!   is written at the later one. System properties (`_rid`, `_self`, `_etag`, `_ts`,
//!   `_attachments`) cannot be written: they are stripped, and the target gives every document
//!   a new `_ts` and `_etag`.
//! - After each chunk a checkpoint (the next chunk's index) is saved atomically in a state file
//!   in the archive (its folder, or its blob prefix), named after the target
//!   (`restore-state-<database>-<hash>.json`, the hash of endpoint and database). A re-run after a kill continues from it (the chunk
//!   that was being applied is upserted again: upserts are idempotent) without the emptiness
//!   check, which its own earlier writes would fail. A re-run after a finished restore does
//!   nothing; `restart` starts over (and then needs `merge`, the target holding the restore).
//! - At the end the target is read back and every document compared with the archive's (its
//!   later version where it holds two), system properties aside: every document must be
//!   there with the same content, and without `merge` nothing else. A re-run after a finished
//!   restore does the same check.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use mystira_cosmos_store::{CosmosStore, ErrorKind, PartitionKey, QuerySpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::chunk::{self, sha256_hex};
use super::manifest::{self, Manifest, RESTORE_STATE_PREFIX};
use super::store::Store;
use super::{ArchiveError, StallPoint, stall};

/// The database restored into (the endpoint only names the state file: never a key).
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    pub endpoint: String,
    pub database: String,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// Documents upserted at the same time.
    pub concurrency: usize,
    /// Upsert over a target that already holds documents.
    pub merge: bool,
    /// Forget an earlier restore into this target and start over.
    pub restart: bool,
    pub stall: Option<StallPoint>,
}

/// A restore's checkpoint, in the archive directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestoreState {
    endpoint: String,
    database: String,
    /// The archive it restores (its `started_at`), so a state file never applies to another.
    archive_started_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    merge: bool,
    /// Chunks of the manifest applied so far (the next one to apply).
    next_chunk: usize,
    /// Documents upserted per container, over every run of this restore.
    upserted: BTreeMap<String, u64>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The archive restored (a folder, or a blob URL without credentials).
    pub dir: String,
    pub database: String,
    /// `restored`, `resumed` (an interrupted restore was finished) or `already_restored`.
    pub outcome: &'static str,
    pub merge: bool,
    /// The checkpoint file (its path, or its URL without credentials).
    pub state_file: String,
    /// Chunks this run applied.
    pub chunks_applied: u64,
    pub chunks_total: u64,
    /// Documents upserted per container, over every run of this restore.
    pub upserted: BTreeMap<String, u64>,
    /// Distinct documents per container in the archive.
    pub archived: BTreeMap<String, u64>,
    /// Per container, the target read back afterwards and compared with the archive.
    pub target: BTreeMap<String, TargetCheck>,
    /// Whether the target holds every document of the archive as the archive holds it
    /// (system properties aside) and, without merge, nothing else.
    pub matches: bool,
    /// Documents that could not be written (no string at the partition-key path), by chunk
    /// and line; never values.
    pub rejected: Vec<String>,
}

/// A container of the target read back after a restore and compared with the archive, each
/// document without its system properties (which the target sets anew).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetCheck {
    /// Documents in the target.
    pub in_target: u64,
    /// Documents of the archive the target holds exactly as the archive does (its later
    /// version, where it holds two).
    pub identical: u64,
    /// Documents of the archive the target holds with other content.
    pub differing: u64,
    /// Documents of the archive the target does not hold.
    pub missing: u64,
    /// Documents the target holds and the archive does not (only a merge may leave some).
    pub extra: u64,
    /// Ids of a few differing or missing documents (never values).
    pub examples: Vec<String>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        self.rejected.is_empty() && self.matches
    }

    /// The summary a person reads.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "restore of {} into {} ({}): {} of {} chunks applied by this run{}\n",
            self.dir,
            self.database,
            self.outcome,
            self.chunks_applied,
            self.chunks_total,
            if self.merge { ", merged" } else { "" },
        );
        for (name, archived) in &self.archived {
            let check = self.target.get(name).cloned().unwrap_or_default();
            out.push_str(&format!(
                "  {name:<15} {archived:>10} in the archive {:>10} upserted {:>10} in the target \
                 {:>10} identical\n",
                self.upserted.get(name).copied().unwrap_or(0),
                check.in_target,
                check.identical,
            ));
            if check.differing + check.missing + check.extra > 0 {
                out.push_str(&format!(
                    "    {} differing, {} missing, {} not in the archive; e.g. {}\n",
                    check.differing,
                    check.missing,
                    check.extra,
                    check.examples.join(", ")
                ));
            }
        }
        if !self.matches {
            out.push_str("  the target does not hold what the archive holds\n");
        }
        for r in &self.rejected {
            out.push_str(&format!("  not restored: {r}\n"));
        }
        out.push_str(
            "  documents get a new _ts and _etag in the target (system properties are not \
             written)\n",
        );
        out
    }
}

/// The name of `target`'s state file in the archive.
pub fn state_name(target: &RestoreTarget) -> String {
    let safe: String = target
        .database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = sha256_hex(format!("{}\n{}", target.endpoint, target.database).as_bytes());
    format!("{RESTORE_STATE_PREFIX}{safe}-{}.json", &hash[..12])
}

/// Restores the archive in `archive` into `store`'s database (see the module docs).
pub async fn restore(
    archive: &Store,
    store: &CosmosStore,
    target: &RestoreTarget,
    config: &RestoreConfig,
) -> Result<RestoreReport, ArchiveError> {
    let manifest = Manifest::load(archive).await?.ok_or_else(|| {
        ArchiveError::Usage(format!(
            "{} holds no archive ({})",
            archive.shown(),
            manifest::MANIFEST
        ))
    })?;
    if manifest.finished_at.is_none() {
        return Err(ArchiveError::NotFinished(archive.shown()));
    }
    let check = super::verify_offline(archive).await;
    if !check.ok {
        let findings: Vec<String> = check.findings.iter().map(ToString::to_string).collect();
        return Err(ArchiveError::Failed(format!(
            "the archive does not pass `archive verify`, nothing restored: {}",
            findings.join("; ")
        )));
    }
    let name = state_name(target);
    let path = archive.shown_name(&name);
    let mut state = match load_state(archive, &name).await? {
        Some(_) if config.restart => None,
        Some(state) if state.archive_started_at != manifest.started_at => {
            return Err(ArchiveError::Failed(format!(
                "{path} belongs to another archive: remove it or pass --restart"
            )));
        }
        other => other,
    };
    let archived: BTreeMap<String, u64> = manifest
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.documents.unwrap_or(0)))
        .collect();
    let present: Vec<(String, String)> = manifest
        .containers
        .iter()
        .filter(|c| c.present)
        .map(|c| (c.name.clone(), c.partition_key.clone()))
        .collect();

    if let Some(done) = state.as_ref().filter(|s| s.finished_at.is_some()) {
        let merge = done.merge;
        let target_checks = compare_target(archive, &manifest, store, &present).await?;
        return Ok(RestoreReport {
            dir: archive.shown(),
            database: target.database.clone(),
            outcome: "already_restored",
            merge,
            state_file: path,
            chunks_applied: 0,
            chunks_total: manifest.chunks.len() as u64,
            upserted: done.upserted.clone(),
            matches: matches(&target_checks, merge),
            archived,
            target: target_checks,
            rejected: Vec::new(),
        });
    }
    let resumed = state.is_some();
    if state.is_none() {
        if !config.merge {
            let busy = non_empty_containers(store, &present).await?;
            if !busy.is_empty() {
                return Err(ArchiveError::TargetNotEmpty {
                    database: target.database.clone(),
                    containers: format!("documents in {}", busy.join(", ")),
                });
            }
        }
        let fresh = RestoreState {
            endpoint: target.endpoint.clone(),
            database: target.database.clone(),
            archive_started_at: manifest.started_at,
            started_at: Utc::now(),
            finished_at: None,
            merge: config.merge,
            next_chunk: 0,
            upserted: BTreeMap::new(),
        };
        save_state(archive, &name, &fresh).await?;
        state = Some(fresh);
    }
    let mut state = state.ok_or_else(|| ArchiveError::Failed("no restore state".into()))?;
    let merge = state.merge || config.merge;

    store.ensure_database().await?;
    let mut containers = BTreeMap::new();
    for (name, pk) in &present {
        let container = store.ensure_container(name, pk).await?;
        if container.partition_key_paths() != [pk.clone()] {
            return Err(ArchiveError::Failed(format!(
                "container {name} of {} has partition key {:?}, the archive's is {pk}",
                target.database,
                container.partition_key_paths()
            )));
        }
        containers.insert(name.clone(), (container, pk.clone()));
    }

    let mut applied = 0u64;
    let mut rejected = Vec::new();
    for (index, entry) in manifest.chunks.iter().enumerate().skip(state.next_chunk) {
        let Some((container, pk)) = containers.get(&entry.container) else {
            return Err(ArchiveError::Failed(format!(
                "chunk {} belongs to {}, which the archive does not hold",
                entry.file, entry.container
            )));
        };
        let documents = chunk::read_or_fail(archive, entry).await?;
        let (writes, bad) = writes_of(documents, pk, &entry.file);
        rejected.extend(bad);
        let n = writes.len() as u64;
        let results: Vec<Result<(), mystira_cosmos_store::Error>> = futures::stream::iter(writes)
            .map(|(partition, id, doc)| async move {
                container
                    .upsert(PartitionKey::from(partition), &id, &doc)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(config.concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        applied += 1;
        if config.stall == Some(StallPoint::RestoreUpserted(applied)) {
            stall(StallPoint::RestoreUpserted(applied)).await;
        }
        state.next_chunk = index + 1;
        *state.upserted.entry(entry.container.clone()).or_default() += n;
        save_state(archive, &name, &state).await?;
        tracing::debug!(chunk = %entry.file, documents = n, "chunk restored");
        if config.stall == Some(StallPoint::RestoreCheckpointed(applied)) {
            stall(StallPoint::RestoreCheckpointed(applied)).await;
        }
    }
    state.finished_at = Some(Utc::now());
    save_state(archive, &name, &state).await?;

    let target_checks = compare_target(archive, &manifest, store, &present).await?;
    Ok(RestoreReport {
        dir: archive.shown(),
        database: target.database.clone(),
        outcome: if resumed { "resumed" } else { "restored" },
        merge,
        state_file: path,
        chunks_applied: applied,
        chunks_total: manifest.chunks.len() as u64,
        upserted: state.upserted,
        matches: matches(&target_checks, merge),
        archived,
        target: target_checks,
        rejected,
    })
}

fn matches(checks: &BTreeMap<String, TargetCheck>, merge: bool) -> bool {
    checks
        .values()
        .all(|c| c.differing == 0 && c.missing == 0 && (merge || c.extra == 0))
}

/// The upserts of a chunk: each document once (the last line wins: the later version), its
/// system properties stripped, with its partition-key value and id. A document without a
/// string at the partition-key path is named by chunk and line instead.
fn writes_of(
    documents: Vec<Value>,
    partition_key: &str,
    file: &str,
) -> (Vec<(String, String, Value)>, Vec<String>) {
    let mut last = std::collections::HashMap::new();
    for (i, doc) in documents.iter().enumerate() {
        last.insert(chunk::identity(doc, partition_key), i);
    }
    let mut writes = Vec::new();
    let mut rejected = Vec::new();
    for (i, doc) in documents.into_iter().enumerate() {
        if last.get(&chunk::identity(&doc, partition_key)) != Some(&i) {
            continue;
        }
        let id = doc.get("id").and_then(Value::as_str).map(str::to_owned);
        let partition = doc
            .pointer(partition_key)
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (id, partition) {
            (Some(id), Some(partition)) => writes.push((
                partition,
                id,
                mystira_cosmos_store::transfer::strip_system_fields(doc),
            )),
            _ => rejected.push(format!(
                "{file} line {}: no string id or value at {partition_key}",
                i + 1
            )),
        }
    }
    (writes, rejected)
}

/// The containers of `present` that exist in the target and hold at least one document.
async fn non_empty_containers(
    store: &CosmosStore,
    present: &[(String, String)],
) -> Result<Vec<String>, ArchiveError> {
    let mut busy = Vec::new();
    for (name, _) in present {
        let container = match store.container(name).await {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let mut pages = container.query_with_page_size::<Value>(
            QuerySpec::new("select top 1 c.id from c"),
            None,
            1,
        );
        while let Some(page) = pages.next_page().await? {
            if !page.items.is_empty() {
                busy.push(name.clone());
                break;
            }
        }
    }
    Ok(busy)
}

/// Ids of differing or missing documents a check names at most.
const EXAMPLES: usize = 10;

/// A document's content without the system properties, as a digest.
fn content_digest(doc: Value) -> [u8; 32] {
    let doc = mystira_cosmos_store::transfer::strip_system_fields(doc);
    // the keys in their order (serde_json keeps it): restore writes each document as the
    // archive holds it, in the order the source returned its properties, and Cosmos keeps that
    // order, so a document that comes back in another order was not restored as archived
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// A document's id (empty when it has none: the archive's checks refuse such a chunk).
fn id_of(doc: &Value) -> String {
    doc.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Reads every container of the target back and compares each document with the archive's
/// (its later version where it holds two), system properties aside.
async fn compare_target(
    archive: &Store,
    manifest: &Manifest,
    store: &CosmosStore,
    present: &[(String, String)],
) -> Result<BTreeMap<String, TargetCheck>, ArchiveError> {
    // per container: identity -> (content digest, id), from the chunks in manifest order
    let mut expected: BTreeMap<String, HashMap<u128, ([u8; 32], String)>> = BTreeMap::new();
    for (name, pk) in present {
        let docs = expected.entry(name.clone()).or_default();
        for entry in manifest.chunks_of(name) {
            for doc in chunk::read_or_fail(archive, entry).await? {
                let (key, id) = (chunk::identity(&doc, pk), id_of(&doc));
                docs.insert(key, (content_digest(doc), id));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (name, pk) in present {
        let mut want = expected.get(name).cloned().unwrap_or_default();
        let mut check = TargetCheck::default();
        match store.container(name).await {
            Ok(container) => {
                let mut pages = container.read_all::<Value>(None);
                while let Some(page) = pages.next_page().await? {
                    for doc in page.items {
                        check.in_target += 1;
                        let (key, id) = (chunk::identity(&doc, pk), id_of(&doc));
                        match want.remove(&key) {
                            Some((digest, _)) if digest == content_digest(doc) => {
                                check.identical += 1;
                            }
                            Some(_) => {
                                check.differing += 1;
                                if check.examples.len() < EXAMPLES {
                                    check.examples.push(id);
                                }
                            }
                            None => check.extra += 1,
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        check.missing = want.len() as u64;
        let room = EXAMPLES.saturating_sub(check.examples.len());
        let mut missing: Vec<String> = want.into_values().map(|(_, id)| id).collect();
        missing.sort();
        check.examples.extend(missing.into_iter().take(room));
        out.insert(name.clone(), check);
    }
    Ok(out)
}

async fn load_state(archive: &Store, name: &str) -> Result<Option<RestoreState>, ArchiveError> {
    let Some(bytes) = archive.read(name).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ArchiveError::Invalid {
            path: archive.shown_name(name),
            message: e.to_string(),
        })
}

async fn save_state(archive: &Store, name: &str, state: &RestoreState) -> Result<(), ArchiveError> {
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| ArchiveError::Invalid {
        path: archive.shown_name(name),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    archive.write(name, bytes).await
}
