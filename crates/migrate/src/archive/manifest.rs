//! The archive's manifest (`manifest.json`) and the file operations every writer of an archive
//! directory uses: a file is written under a temporary name, fsynced, renamed into place, and
//! its directory fsynced, so a kill at any moment leaves either the old file or the new one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ArchiveError;

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

    /// Reads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, ArchiveError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ArchiveError::io(&path, &e)),
        };
        let manifest: Self = serde_json::from_slice(&text).map_err(|e| ArchiveError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if manifest.format != FORMAT {
            return Err(ArchiveError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "format {:?} is not {FORMAT:?} (written by another version)",
                    manifest.format
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Replaces `dir/manifest.json` atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> Result<(), ArchiveError> {
        let path = dir.join(MANIFEST);
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| ArchiveError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(&path, &text)
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

/// The temporary name a file is written under before it is renamed to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` so that a kill leaves either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = temp_path(path);
    write_synced(&tmp, bytes)?;
    rename_synced(&tmp, path)
}

/// Creates (or truncates) `path` with `bytes` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut file = std::fs::File::create(path).map_err(|e| ArchiveError::io(path, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ArchiveError::io(path, &e))
}

/// Renames `from` to `to` and fsyncs the directory, so the rename survives a crash.
pub fn rename_synced(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    std::fs::rename(from, to).map_err(|e| ArchiveError::io(to, &e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory (its entries: created, renamed and removed files).
pub fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ArchiveError::io(dir, &e))
}
