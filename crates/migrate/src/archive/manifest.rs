//! The archive's manifest (`manifest.json`), read from and replaced atomically in the archive's
//! [`Store`] (a folder or a blob container prefix).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ArchiveError;
use super::store::Store;

/// What `format` says in every manifest this version writes.
pub const FORMAT: &str = "mystira-users-archive/1";
/// The manifest's file name in the archive directory.
pub const MANIFEST: &str = "manifest.json";
/// A chunk file's extension: JSON lines, zstd-compressed.
pub const CHUNK_EXTENSION: &str = ".jsonl.zst";
/// The prefix of restore state files in the archive directory (see `restore`).
pub const RESTORE_STATE_PREFIX: &str = "restore-state-";

/// The archive's table of contents, rewritten (atomically) after every chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Where the documents came from (the source's description: no secrets).
    pub source: String,
    /// When the archive began (its first run).
    pub started_at: DateTime<Utc>,
    /// When it was finished; `None` while an archive run still has work to do.
    pub finished_at: Option<DateTime<Utc>>,
    /// Documents per chunk at most (the last chunk of a range holds fewer).
    pub chunk_documents: usize,
    /// The containers in the order they were archived (and are restored).
    pub containers: Vec<ContainerEntry>,
    /// Every finished chunk, in the order it was finished (the order restore applies them).
    pub chunks: Vec<ChunkEntry>,
}

/// One container of the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerEntry {
    pub name: String,
    /// The app's partition-key path for it (restore creates the container with it).
    pub partition_key: String,
    /// Whether the source had the container (an absent one is archived as empty).
    pub present: bool,
    /// When this container's archive began: its ranges were planned then, and what it holds is
    /// every document of the container at that time (plus any written while it was read).
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Distinct documents (by partition-key value and id), counted when the archive is
    /// finished; `None` before.
    pub documents: Option<u64>,
    /// Lines in its chunks: documents read. More than `documents` only when the container was
    /// written while it was archived and a document was read at two versions.
    pub lines: u64,
    /// The ranges it is read in (the source's plan) and how far each got.
    pub ranges: Vec<RangeEntry>,
}

/// One planned range of a container and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeEntry {
    /// The source's own description of the range (`RangePlan`).
    pub start: Value,
    pub end: Option<Value>,
    /// Where the next read begins: the position after the last finished chunk (`None`: the
    /// range's start).
    pub position: Option<Value>,
    pub done: bool,
    /// Chunks finished in this range (the next one is numbered one more).
    pub chunks: u64,
}

/// One chunk file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Its path relative to the archive directory, e.g. `Accounts/r000-c000001.jsonl.zst`.
    pub file: String,
    pub container: String,
    /// The range (index into the container's `ranges`) it was read from.
    pub range: usize,
    /// Documents (lines) in it.
    pub documents: u64,
    /// Its size on disk (compressed).
    pub bytes: u64,
    /// The size of its JSON lines before compression.
    pub json_bytes: u64,
    /// SHA-256 of the file as written (lower-case hex).
    pub sha256: String,
}

impl Manifest {
    pub fn new(source: String, chunk_documents: usize) -> Self {
        Self {
            format: FORMAT.to_owned(),
            source,
            started_at: Utc::now(),
            finished_at: None,
            chunk_documents,
            containers: Vec::new(),
            chunks: Vec::new(),
        }
    }

    pub fn container(&self, name: &str) -> Option<&ContainerEntry> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerEntry> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// The chunks of `container`, in manifest order.
    pub fn chunks_of<'a>(&'a self, container: &'a str) -> impl Iterator<Item = &'a ChunkEntry> {
        self.chunks.iter().filter(move |c| c.container == container)
    }

    /// Reads the store's `manifest.json`; `Ok(None)` when there is none.
    pub async fn load(store: &Store) -> Result<Option<Self>, ArchiveError> {
        let Some(text) = store.read(MANIFEST).await? else {
            return Ok(None);
        };
        let path = store.shown_name(MANIFEST);
        let manifest: Self = serde_json::from_slice(&text).map_err(|e| ArchiveError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if manifest.format != FORMAT {
            return Err(ArchiveError::Invalid {
                path,
                message: format!(
                    "format {:?} is not {FORMAT:?} (written by another version)",
                    manifest.format
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Replaces the store's `manifest.json` atomically (see [`Store::write`]).
    pub async fn save(&self, store: &Store) -> Result<(), ArchiveError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| ArchiveError::Invalid {
            path: store.shown_name(MANIFEST),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        store.write(MANIFEST, text).await
    }

    /// Chunks per container (for summaries).
    pub fn chunk_counts(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for chunk in &self.chunks {
            let entry = out.entry(chunk.container.clone()).or_default();
            entry.0 += 1;
            entry.1 += chunk.bytes;
        }
        out
    }
}

/// The relative path of chunk `seq` of `range` of `container`.
pub fn chunk_file(container: &str, range: usize, seq: u64) -> String {
    format!("{container}/r{range:03}-c{seq:06}{CHUNK_EXTENSION}")
}
