//! `archive verify`: checks an archive (a folder or a blob container prefix) offline against
//! its manifest, and its per-container document counts against PostgreSQL's.
//!
//! # What PostgreSQL's count is
//! For each container, the distinct document ids PostgreSQL knows Cosmos to hold: the rows of
//! `migration.document_versions` that are not tombstones (`deleted`), which every copy from
//! Cosmos (backfill, replication, journal replay) and every delivery to Cosmos (the relay)
//! records, together with the open entries of `migration.quarantine` (documents read from
//! Cosmos that could not be mapped, which have no version row of their own). A document in
//! both is counted once. Writes made in phase 3 reach PostgreSQL only and record no version, so
//! they do not count; an archive taken in phase 3 (Cosmos no longer written) matches exactly.
//! It differs when Cosmos changed after PostgreSQL last heard of it: documents created or
//! deleted directly in Cosmos and not yet replicated, or an archive taken while writes still
//! reached Cosmos.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::ArchiveError;
use super::chunk::{self, DistinctCounter};
use super::manifest::{CHUNK_EXTENSION, MANIFEST, Manifest};
use super::store::Store;

/// One thing wrong with an archive, with a stable code; `chunk` names the chunk file when it is
/// about one. Never holds document values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.chunk, &self.container) {
            (Some(chunk), _) => write!(f, "chunk {chunk}: {} [{}]", self.message, self.code),
            (None, Some(c)) => write!(f, "{c}: {} [{}]", self.message, self.code),
            (None, None) => write!(f, "{} [{}]", self.message, self.code),
        }
    }
}

/// One container's counts as checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerCheck {
    /// Distinct documents the manifest records.
    pub documents: Option<u64>,
    /// Distinct documents counted in the chunks.
    pub counted: u64,
    /// Lines in the chunks.
    pub lines: u64,
    pub chunks: u64,
    /// PostgreSQL's comparable count (see the module docs), when it was compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<u64>,
}

/// What `archive verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveVerifyReport {
    /// The archive checked (a folder, or a blob URL without credentials).
    pub dir: String,
    /// Whether the archive is intact and complete (and, when compared, matches PostgreSQL).
    pub ok: bool,
    pub finished: bool,
    pub started_at: Option<String>,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub containers: BTreeMap<String, ContainerCheck>,
    pub postgres_compared: bool,
    pub findings: Vec<Finding>,
}

impl ArchiveVerifyReport {
    fn finding(
        &mut self,
        code: &'static str,
        chunk: Option<&str>,
        container: Option<&str>,
        message: String,
    ) {
        self.ok = false;
        self.findings.push(Finding {
            code,
            chunk: chunk.map(str::to_owned),
            container: container.map(str::to_owned),
            message,
        });
    }

    /// Compares the archive's per-container documents with PostgreSQL's comparable counts.
    pub fn compare_with_postgres(&mut self, counts: &BTreeMap<String, u64>) {
        self.postgres_compared = true;
        let names: Vec<String> = self.containers.keys().cloned().collect();
        for name in names {
            let postgres = counts.get(&name).copied().unwrap_or(0);
            let archived = {
                let check = self.containers.entry(name.clone()).or_default();
                check.postgres = Some(postgres);
                check.documents.unwrap_or(check.counted)
            };
            if archived != postgres {
                self.finding(
                    "postgres_count_differs",
                    None,
                    Some(&name),
                    format!(
                        "the archive holds {archived} documents, PostgreSQL knows of {postgres} \
                         (document versions not deleted, plus open quarantine)"
                    ),
                );
            }
        }
    }

    /// The summary a person reads.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "archive {}: {}\n  {} chunks, {} bytes checked{}\n",
            self.dir,
            if self.ok { "intact" } else { "NOT OK" },
            self.chunks_checked,
            self.bytes_checked,
            self.started_at
                .as_ref()
                .map_or_else(String::new, |t| format!("; began {t}")),
        );
        for (name, c) in &self.containers {
            out.push_str(&format!(
                "  {name:<15} {:>10} documents {:>6} chunks",
                c.documents
                    .map_or_else(|| "?".to_owned(), |d| d.to_string()),
                c.chunks
            ));
            if let Some(pg) = c.postgres {
                out.push_str(&format!("  postgresql {pg:>10}"));
            }
            out.push('\n');
        }
        if !self.postgres_compared {
            out.push_str("  not compared with PostgreSQL (no database configured)\n");
        }
        for f in &self.findings {
            out.push_str(&format!("  {f}\n"));
        }
        out
    }
}

/// Checks the archive in `store` against its manifest, without Cosmos or PostgreSQL: the
/// manifest reads and is finished; every listed chunk is present with its size and SHA-256
/// (read back from the store and hashed again), decompresses, and holds the documents
/// recorded; no chunk file is unlisted; per container the chunks' lines add up to the recorded
/// lines, and the distinct documents counted in them to the recorded documents.
pub async fn verify_offline(store: &Store) -> ArchiveVerifyReport {
    let mut report = ArchiveVerifyReport {
        dir: store.shown(),
        ok: true,
        finished: false,
        started_at: None,
        chunks_checked: 0,
        bytes_checked: 0,
        containers: BTreeMap::new(),
        postgres_compared: false,
        findings: Vec::new(),
    };
    let manifest = match Manifest::load(store).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            report.finding(
                "manifest_missing",
                None,
                None,
                format!("{} holds no {MANIFEST}", store.shown()),
            );
            return report;
        }
        Err(e @ ArchiveError::Invalid { .. }) => {
            report.finding("manifest_invalid", None, None, e.to_string());
            return report;
        }
        // the store could not be read at all (a missing container, no credentials, no network)
        Err(e) => {
            report.finding("manifest_unreadable", None, None, e.to_string());
            return report;
        }
    };
    report.started_at = Some(manifest.started_at.to_rfc3339());
    report.finished = manifest.finished_at.is_some();
    if !report.finished {
        report.finding(
            "unfinished",
            None,
            None,
            "the archive was not finished: run `archive --out DIR` again to finish it".into(),
        );
    }
    let mut listed = HashSet::new();
    for c in &manifest.containers {
        let mut check = ContainerCheck {
            documents: c.documents,
            ..ContainerCheck::default()
        };
        let mut distinct = DistinctCounter::default();
        let mut per_range: BTreeMap<usize, u64> = BTreeMap::new();
        for entry in manifest.chunks_of(&c.name) {
            if !listed.insert(entry.file.clone()) {
                report.finding(
                    "chunk_listed_twice",
                    Some(&entry.file),
                    Some(&c.name),
                    "is listed twice in the manifest".into(),
                );
            }
            check.chunks += 1;
            check.lines += entry.documents;
            *per_range.entry(entry.range).or_default() += 1;
            report.chunks_checked += 1;
            report.bytes_checked += entry.bytes;
            match chunk::read_checked(store, entry).await {
                Ok(docs) => distinct.add(&docs, &c.partition_key),
                Err(problem) => {
                    report.finding(
                        problem.code,
                        Some(&entry.file),
                        Some(&c.name),
                        problem.message,
                    );
                }
            }
        }
        check.counted = distinct.count();
        if check.lines != c.lines {
            report.finding(
                "container_lines_differ",
                None,
                Some(&c.name),
                format!(
                    "its chunks hold {} documents read, the manifest says {}",
                    check.lines, c.lines
                ),
            );
        }
        for (i, range) in c.ranges.iter().enumerate() {
            let chunks = per_range.get(&i).copied().unwrap_or(0);
            if chunks != range.chunks {
                report.finding(
                    "range_chunks_differ",
                    None,
                    Some(&c.name),
                    format!(
                        "range {i} has {chunks} chunks listed, the manifest says {}",
                        range.chunks
                    ),
                );
            }
        }
        if let Some(documents) = c.documents {
            // a damaged chunk already made the count short: say so once, above
            let all_read = report
                .findings
                .iter()
                .all(|f| f.container.as_deref() != Some(&c.name) || f.chunk.is_none());
            if all_read && documents != check.counted {
                report.finding(
                    "container_documents_differ",
                    None,
                    Some(&c.name),
                    format!(
                        "its chunks hold {} distinct documents, the manifest says {documents}",
                        check.counted
                    ),
                );
            }
        }
        report.containers.insert(c.name.clone(), check);
    }
    let orphan_chunks = manifest
        .chunks
        .iter()
        .filter(|c| !manifest.containers.iter().any(|k| k.name == c.container));
    for entry in orphan_chunks {
        report.finding(
            "chunk_of_unknown_container",
            Some(&entry.file),
            None,
            format!(
                "belongs to container {}, which the manifest does not list",
                entry.container
            ),
        );
    }
    let unlisted = match unlisted_files(store, &listed).await {
        Ok(files) => files,
        Err(e) => {
            report.finding("archive_unlistable", None, None, e.to_string());
            Vec::new()
        }
    };
    for file in unlisted {
        report.finding(
            "chunk_not_listed",
            Some(&file),
            None,
            "is in the archive but not in the manifest".into(),
        );
    }
    report
}

/// Files in the archive that the manifest does not list: chunk files at the top, and any file
/// in a folder (a container's, or any other: nothing else belongs in one), temporary files of
/// a stopped run included.
async fn unlisted_files(
    store: &Store,
    listed: &HashSet<String>,
) -> Result<Vec<String>, ArchiveError> {
    Ok(store
        .list()
        .await?
        .into_iter()
        .filter(|name| {
            !listed.contains(name) && (name.contains('/') || name.ends_with(CHUNK_EXTENSION))
        })
        .collect())
}

/// PostgreSQL's comparable document count per container (see the module docs).
pub async fn postgres_counts(pool: &sqlx::PgPool) -> Result<BTreeMap<String, u64>, ArchiveError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select container, count(*) from (
             select container, document_id from migration.document_versions where not deleted
             union
             select container, document_id from migration.quarantine where resolved_at is null
         ) known
         group by container",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| ArchiveError::Failed(format!("cannot count PostgreSQL's documents: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(c, n)| (c, u64::try_from(n).unwrap_or(0)))
        .collect())
}
