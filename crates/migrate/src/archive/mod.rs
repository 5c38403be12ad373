//! The archive of the Cosmos side at the end of phase 3 (`mystira-users archive`), its offline
//! check (`archive verify`) and loading it back into a Cosmos database (`restore`).
//!
//! # Layout of an archive
//! In a folder or under a prefix of an Azure Blob Storage container ([`store::Store`]: the
//! same names, the same atomic writes, each its own way):
//! - `manifest.json` ([`manifest::Manifest`]): the source, when the archive began and ended,
//!   per container its partition key, when its archive began, its ranges with how far each
//!   got, its document count; per chunk its file, SHA-256, byte and document counts.
//! - `<Container>/r<range>-c<seq>.jsonl.zst`: chunks of at most `chunk_documents` documents,
//!   one JSON document a line exactly as the server returned it (system properties `_rid`,
//!   `_self`, `_etag`, `_ts`, `_attachments` included), zstd-compressed with a frame checksum.
//! - `restore-state-*.json`: a restore's checkpoint per target database (see [`restore`]).
//!
//! # How it reads
//! Through a [`DocumentSource`], in practice [`crate::CosmosSource`], the reader `migrate`
//! uses: each container is split by [`DocumentSource::plan_ranges`] (feed ranges, then `_ts`
//! intervals), read page by page, and ends with the open ranges' final pass over the change
//! feed from the position taken at planning. The bounded ranges are read first (`workers` at a
//! time) and the open ones after them, which is the order the final pass needs. A container
//! nobody writes while it is archived is read once, document by document; one written meanwhile
//! may have a document read at two versions, both kept in chunk order (restore applies the
//! later one last). Reads are paced to `max_docs_per_second` in this process.
//!
//! # Resuming after a kill
//! A chunk is encoded, written whole (in a folder: under a temporary name, fsynced, renamed
//! into place; in a container: one Put Blob), and only then recorded in the manifest with its
//! range's position after it (the manifest is replaced atomically, under one lock, so a chunk
//! and its record appear in the same order). A re-run loads the manifest, removes temporary
//! files and chunks the manifest does not list (written by a run killed before recording
//! them), and continues every range from its recorded position. The plan is kept: a
//! container's archive is the container as of the time it began, whatever the number of runs.

pub mod chunk;
pub mod manifest;
pub mod restore;
pub mod store;
pub mod verify;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

use manifest::{CHUNK_EXTENSION, ChunkEntry, ContainerEntry, MANIFEST, Manifest, RangeEntry};
use mystira_copy::source::{DocumentSource, RangePlan, SourceDocument, SourceError};
pub use store::Store;

pub use restore::{RestoreConfig, RestoreReport, RestoreTarget, restore};
pub use verify::{ArchiveVerifyReport, Finding, postgres_counts, verify_offline};

/// Why an archive, a check or a restore could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The directory or the flags do not allow it (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the source returned a line that is not a document ({0})")]
    NotADocument(String),
    #[error(transparent)]
    Cosmos(#[from] mystira_cosmos_store::Error),
    /// A chunk does not match the manifest.
    #[error("chunk {file}: {message}")]
    Damaged {
        file: String,
        code: &'static str,
        message: String,
    },
    /// The archive in the directory has not been finished: run `archive` again to finish it.
    #[error(
        "the archive in {0} is not finished (an archive run was stopped): run `mystira-users archive --out {0}` again to finish it"
    )]
    NotFinished(String),
    /// The target database holds documents and merging was not asked for (exit code 3).
    #[error(
        "the target database {database} is not empty ({containers}): restore into an empty database, or pass --merge to upsert the archive's documents over what it holds"
    )]
    TargetNotEmpty {
        database: String,
        containers: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl ArchiveError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// A point where a test makes the process stop moving (it then waits forever, to be killed):
/// `archive-renamed:N` after the Nth chunk file of this run is renamed into place and before
/// the manifest records it, `archive-recorded:N` after the manifest records it,
/// `restore-upserted:N` after the Nth chunk's documents are upserted and before its
/// checkpoint, `restore-checkpointed:N` after its checkpoint. Set through
/// `MYSTIRA_ARCHIVE_TEST_STALL` by the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallPoint {
    ArchiveRenamed(u64),
    ArchiveRecorded(u64),
    RestoreUpserted(u64),
    RestoreCheckpointed(u64),
}

impl std::str::FromStr for StallPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (point, n) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not POINT:N"))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{n:?} is not a number of chunks"))?;
        match point {
            "archive-renamed" => Ok(Self::ArchiveRenamed(n)),
            "archive-recorded" => Ok(Self::ArchiveRecorded(n)),
            "restore-upserted" => Ok(Self::RestoreUpserted(n)),
            "restore-checkpointed" => Ok(Self::RestoreCheckpointed(n)),
            other => Err(format!("{other:?} is not a stall point")),
        }
    }
}

/// Stops this task for good (the test kills the process): the point is logged first.
async fn stall(point: StallPoint) {
    tracing::warn!(point = ?point, "test hook: stalled until killed");
    std::future::pending::<()>().await;
}

/// How to archive.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The containers and their partition-key paths, in archive order.
    pub containers: Vec<(String, String)>,
    /// Ranges asked of the source per container ([`DocumentSource::plan_ranges`]).
    pub ranges: usize,
    /// Ranges read at the same time.
    pub workers: usize,
    /// Documents per chunk at most (a new archive only: a resumed one keeps its own).
    pub chunk_documents: usize,
    /// Documents per source page at most.
    pub page_size: usize,
    /// Documents read per second at most by this process; `None` = unlimited.
    pub max_docs_per_second: Option<u32>,
    pub stall: Option<StallPoint>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            containers: mystira_cosmos_store::USER_DOMAIN_CONTAINERS
                .iter()
                .map(|(c, pk)| ((*c).to_owned(), (*pk).to_owned()))
                .collect(),
            ranges: 8,
            workers: 2,
            chunk_documents: 10_000,
            page_size: 1000,
            max_docs_per_second: None,
            stall: None,
        }
    }
}

/// What an archive run did.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// The target (a folder, or a blob URL without credentials).
    pub dir: String,
    /// `created`, `resumed` (an unfinished archive was found and finished) or `complete` (the
    /// archive was already finished: nothing was read).
    pub outcome: &'static str,
    /// Chunks this run wrote.
    pub chunks_written: u64,
    /// Chunk files of an earlier, killed run that its manifest did not list, removed.
    pub orphans_removed: u64,
    pub manifest: Manifest,
}

impl ArchiveReport {
    /// The summary a person reads.
    pub fn summary(&self) -> String {
        let m = &self.manifest;
        let mut out = format!(
            "archive {} ({}): {} chunks, this run wrote {}\n  source: {}\n  began: {}\n",
            self.dir,
            self.outcome,
            m.chunks.len(),
            self.chunks_written,
            m.source,
            m.started_at.to_rfc3339(),
        );
        let counts = m.chunk_counts();
        for c in &m.containers {
            let (chunks, bytes) = counts.get(&c.name).copied().unwrap_or_default();
            let documents = c
                .documents
                .map_or_else(|| "?".to_owned(), |d| d.to_string());
            out.push_str(&format!(
                "  {:<15} {documents:>10} documents {chunks:>6} chunks {bytes:>12} bytes  began {}{}\n",
                c.name,
                c.started_at.to_rfc3339(),
                if c.present { "" } else { "  (not in the source)" },
            ));
            if c.documents.is_some_and(|d| d < c.lines) {
                out.push_str(&format!(
                    "    {} documents were read at two versions (written while archived); \
                     restore applies the later one\n",
                    c.lines - c.documents.unwrap_or_default()
                ));
            }
        }
        if self.orphans_removed > 0 {
            out.push_str(&format!(
                "  removed {} unrecorded chunk files of a stopped run\n",
                self.orphans_removed
            ));
        }
        out
    }
}

/// Per-process read pacing, the same arithmetic as the backfill's shared budget
/// (`mystira_postgres::read_budget`): reading `n` documents moves the next free instant on by
/// `n / rate` seconds, and the reader waits until it.
#[derive(Debug)]
struct Pacer {
    rate: Option<u32>,
    next_free: std::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(rate: Option<u32>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            next_free: std::sync::Mutex::new(Instant::now()),
        }
    }

    async fn pace(&self, documents: usize) {
        let wait = self.reserve(documents, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Reserves `documents` at `now`: how long to wait until they are paid for.
    fn reserve(&self, documents: usize, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        if documents == 0 {
            return Duration::ZERO;
        }
        let mut next = self
            .next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *next = (*next).max(now) + Duration::from_secs_f64(documents as f64 / f64::from(rate));
        next.saturating_duration_since(now)
    }
}

/// Archives every container of `config` from `source` into `store` (a folder is created), or
/// finishes the unfinished archive there.
pub async fn run_archive(
    source: &dyn DocumentSource,
    store: &Store,
    config: &ArchiveConfig,
) -> Result<ArchiveReport, ArchiveError> {
    if config.chunk_documents == 0 || config.page_size == 0 {
        return Err(ArchiveError::Usage(
            "chunk size and page size must be at least 1".into(),
        ));
    }
    let (manifest, orphans_removed, resumed) = open_dir(store, source, config).await?;
    if manifest.finished_at.is_some() {
        return Ok(ArchiveReport {
            dir: store.shown(),
            outcome: "complete",
            chunks_written: 0,
            orphans_removed,
            manifest,
        });
    }
    if resumed && manifest.chunk_documents != config.chunk_documents {
        tracing::info!(
            chunk_documents = manifest.chunk_documents,
            "resuming an archive: its own chunk size is kept"
        );
    }
    let run = Run {
        source,
        store,
        config,
        chunk_documents: manifest.chunk_documents,
        manifest: Mutex::new(manifest),
        pacer: Pacer::new(config.max_docs_per_second),
        renamed: AtomicU64::new(0),
        recorded: AtomicU64::new(0),
    };
    for (name, partition_key) in &config.containers {
        run.archive_container(name, partition_key).await?;
    }
    let mut manifest = run.manifest.into_inner();
    seal(store, &mut manifest).await?;
    Ok(ArchiveReport {
        dir: store.shown(),
        outcome: if resumed { "resumed" } else { "created" },
        chunks_written: run.recorded.load(Ordering::SeqCst),
        orphans_removed,
        manifest,
    })
}

/// Creates the archive with a new manifest, or loads the one there and removes what a killed
/// run left unrecorded. Returns the manifest, the chunks removed and whether it was resumed.
async fn open_dir(
    store: &Store,
    source: &dyn DocumentSource,
    config: &ArchiveConfig,
) -> Result<(Manifest, u64, bool), ArchiveError> {
    store.prepare().await?;
    let Some(manifest) = Manifest::load(store).await? else {
        if !store.is_empty().await? {
            return Err(ArchiveError::Usage(format!(
                "{} is not empty and holds no archive ({MANIFEST}): archive into a new or \
                 empty directory or prefix",
                store.shown()
            )));
        }
        let manifest = Manifest::new(source.describe(), config.chunk_documents);
        manifest.save(store).await?;
        return Ok((manifest, 0, false));
    };
    // positions and change-feed tokens of one database mean nothing in another
    if manifest.source != source.describe() {
        return Err(ArchiveError::Usage(format!(
            "the archive in {} is of {}, not of {}: archive {} into another directory or prefix",
            store.shown(),
            manifest.source,
            source.describe(),
            source.describe()
        )));
    }
    let removed = remove_unrecorded(store, &manifest).await?;
    Ok((manifest, removed, true))
}

/// Removes temporary files and chunks the manifest does not list, at the top and in each
/// container's folder (a killed run may leave one of each). Returns how many chunks it removed.
async fn remove_unrecorded(store: &Store, manifest: &Manifest) -> Result<u64, ArchiveError> {
    let listed: std::collections::HashSet<&str> =
        manifest.chunks.iter().map(|c| c.file.as_str()).collect();
    let mut doomed = Vec::new();
    let mut removed = 0;
    for name in store.list().await? {
        let folder = name.rsplit_once('/').map_or("", |(f, _)| f);
        if !folder.is_empty() && !manifest.containers.iter().any(|c| c.name == folder) {
            continue;
        }
        let unlisted_chunk = name.ends_with(CHUNK_EXTENSION) && !listed.contains(name.as_str());
        if unlisted_chunk {
            removed += 1;
            tracing::info!(file = %name, "removed a chunk a stopped run did not record");
        }
        if unlisted_chunk || store::is_temporary(&name) {
            doomed.push(name);
        }
    }
    store.remove(&doomed).await?;
    Ok(removed)
}

struct Run<'a> {
    source: &'a dyn DocumentSource,
    store: &'a Store,
    config: &'a ArchiveConfig,
    chunk_documents: usize,
    manifest: Mutex<Manifest>,
    pacer: Pacer,
    /// Chunk files this run renamed into place, and recorded in the manifest.
    renamed: AtomicU64,
    recorded: AtomicU64,
}

impl Run<'_> {
    async fn archive_container(&self, name: &str, partition_key: &str) -> Result<(), ArchiveError> {
        let planned = self.manifest.lock().await.container(name).cloned();
        let entry = match planned {
            Some(entry) => entry,
            None => self.plan(name, partition_key).await?,
        };
        if entry.finished_at.is_some() {
            return Ok(());
        }
        // bounded ranges first, open-ended ones after them: an open range ends with the final
        // pass over the change feed, which must come after every bounded range is read
        let (bounded, open): (Vec<usize>, Vec<usize>) = (0..entry.ranges.len())
            .partition(|i| entry.ranges[*i].end.as_ref().is_some_and(|e| !e.is_null()));
        for group in [bounded, open] {
            let results: Vec<Result<(), ArchiveError>> = futures::stream::iter(group)
                .map(|i| self.archive_range(name, i))
                .buffer_unordered(self.config.workers.max(1))
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        let mut manifest = self.manifest.lock().await;
        if let Some(c) = manifest.container_mut(name) {
            c.finished_at = Some(Utc::now());
        }
        manifest.save(self.store).await
    }

    /// Plans `name`'s ranges and records them (and the time) in the manifest.
    async fn plan(&self, name: &str, partition_key: &str) -> Result<ContainerEntry, ArchiveError> {
        let started_at = Utc::now();
        let present = self.source.has_container(name).await?;
        let ranges = if present {
            self.source
                .plan_ranges(name, self.config.ranges.max(1))
                .await?
                .into_iter()
                .map(|plan| RangeEntry {
                    start: plan.start,
                    end: plan.end,
                    position: None,
                    done: false,
                    chunks: 0,
                })
                .collect()
        } else {
            tracing::warn!(
                container = name,
                "container not in the source: archived as empty"
            );
            Vec::new()
        };
        let entry = ContainerEntry {
            name: name.to_owned(),
            partition_key: partition_key.to_owned(),
            present,
            started_at,
            finished_at: None,
            documents: None,
            lines: 0,
            ranges,
        };
        let mut manifest = self.manifest.lock().await;
        manifest.containers.push(entry.clone());
        manifest.save(self.store).await?;
        tracing::info!(
            container = name,
            ranges = entry.ranges.len(),
            "archive of the container began"
        );
        Ok(entry)
    }

    /// Reads range `index` of `container` from its recorded position to its end, a chunk at a
    /// time.
    async fn archive_range(&self, container: &str, index: usize) -> Result<(), ArchiveError> {
        let range = {
            let manifest = self.manifest.lock().await;
            manifest
                .container(container)
                .and_then(|c| c.ranges.get(index))
                .cloned()
                .ok_or_else(|| ArchiveError::Failed(format!("{container} has no range {index}")))?
        };
        if range.done {
            return Ok(());
        }
        let plan = RangePlan {
            start: range.start.clone(),
            end: range.end.clone(),
        };
        let mut position = range.position.clone();
        let mut seq = range.chunks;
        let mut documents: Vec<Value> = Vec::new();
        loop {
            let want = (self.chunk_documents - documents.len())
                .min(self.config.page_size)
                .max(1);
            let page = self
                .source
                .read_range_page(container, &plan, position.as_ref(), want)
                .await?;
            self.pacer.pace(page.documents.len()).await;
            for doc in page.documents {
                match doc {
                    SourceDocument::Document(value) => documents.push(value),
                    SourceDocument::Malformed { locator, .. } => {
                        return Err(ArchiveError::NotADocument(locator));
                    }
                }
            }
            position = page.next;
            let done = position.is_none();
            if done || documents.len() >= self.chunk_documents {
                let batch = std::mem::take(&mut documents);
                if !batch.is_empty() {
                    seq += 1;
                }
                self.commit(container, index, seq, batch, position.clone(), done)
                    .await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Writes `documents` as chunk `seq` of the range (none: nothing is written) and records
    /// it with the range's new position.
    async fn commit(
        &self,
        container: &str,
        index: usize,
        seq: u64,
        documents: Vec<Value>,
        position: Option<Value>,
        done: bool,
    ) -> Result<(), ArchiveError> {
        let chunk = if documents.is_empty() {
            None
        } else {
            let file = manifest::chunk_file(container, index, seq);
            let encoded = blocking(move || chunk::encode(&documents))
                .await?
                .map_err(|e| ArchiveError::Io {
                    path: self.store.shown_name(&file),
                    message: e.to_string(),
                })?;
            // a folder writes and fsyncs the temporary file here, outside the lock
            let staged = self.store.stage(&file, encoded.bytes.clone()).await?;
            Some((file, staged, encoded))
        };
        // the chunk's appearance and its record under one lock: chunks appear in manifest order
        let mut manifest = self.manifest.lock().await;
        let wrote = chunk.is_some();
        if let Some((file, staged, encoded)) = chunk {
            self.store.publish(staged).await?;
            let renamed = self.renamed.fetch_add(1, Ordering::SeqCst) + 1;
            if self.config.stall == Some(StallPoint::ArchiveRenamed(renamed)) {
                stall(StallPoint::ArchiveRenamed(renamed)).await;
            }
            manifest.chunks.push(ChunkEntry {
                file,
                container: container.to_owned(),
                range: index,
                documents: encoded.documents,
                bytes: encoded.bytes.len() as u64,
                json_bytes: encoded.json_bytes,
                sha256: encoded.sha256,
            });
            if let Some(c) = manifest.container_mut(container) {
                c.lines += encoded.documents;
                if let Some(r) = c.ranges.get_mut(index) {
                    r.chunks = seq;
                }
            }
        }
        if let Some(r) = manifest
            .container_mut(container)
            .and_then(|c| c.ranges.get_mut(index))
        {
            r.position = position;
            r.done = done;
        }
        manifest.save(self.store).await?;
        if wrote {
            let recorded = self.recorded.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::debug!(container, range = index, chunk = seq, "chunk recorded");
            if self.config.stall == Some(StallPoint::ArchiveRecorded(recorded)) {
                stall(StallPoint::ArchiveRecorded(recorded)).await;
            }
        }
        Ok(())
    }
}

/// Counts every container's distinct documents (reading back and checking every chunk, which
/// also proves what was written reads back) and marks the archive finished.
async fn seal(store: &Store, manifest: &mut Manifest) -> Result<(), ArchiveError> {
    let mut counts = Vec::new();
    for c in &manifest.containers {
        let mut distinct = chunk::DistinctCounter::default();
        for entry in manifest.chunks_of(&c.name) {
            let docs = chunk::read_or_fail(store, entry).await?;
            distinct.add(&docs, &c.partition_key);
        }
        counts.push((c.name.clone(), distinct.count()));
    }
    for (name, documents) in counts {
        if let Some(c) = manifest.container_mut(&name) {
            if documents < c.lines {
                tracing::warn!(
                    container = name,
                    read_twice = c.lines - documents,
                    "documents read at two versions: the container was written while archived"
                );
            }
            c.documents = Some(documents);
        }
    }
    manifest.finished_at = Some(Utc::now());
    manifest.save(store).await
}

/// Runs file work on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArchiveError::Failed(format!("a file task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_makes_each_page_wait_until_the_rate_has_paid_for_it() {
        let pacer = Pacer::new(Some(100));
        let t0 = Instant::now();
        // 10 documents at 100 a second: 100 ms each, queued behind each other
        assert_eq!(pacer.reserve(10, t0), Duration::from_millis(100));
        assert_eq!(pacer.reserve(10, t0), Duration::from_millis(200));
        // time that passed pays for what was reserved; idle time is not saved up
        assert_eq!(
            pacer.reserve(10, t0 + Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(Pacer::new(None).reserve(10, t0), Duration::ZERO);
        assert_eq!(Pacer::new(Some(0)).reserve(10, t0), Duration::ZERO);
    }

    #[test]
    fn stall_points_parse_from_the_test_hook_variable() {
        assert_eq!(
            "archive-renamed:3".parse::<StallPoint>(),
            Ok(StallPoint::ArchiveRenamed(3))
        );
        assert_eq!(
            "restore-checkpointed:1".parse::<StallPoint>(),
            Ok(StallPoint::RestoreCheckpointed(1))
        );
        assert!("archive-renamed".parse::<StallPoint>().is_err());
        assert!("nowhere:1".parse::<StallPoint>().is_err());
    }
}
