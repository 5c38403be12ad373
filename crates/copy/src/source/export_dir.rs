//! The export-dir source: `<Container>.jsonl` files in a directory, read page by page from a
//! byte offset, and split into byte ranges at line starts for parallel workers.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mystira_cosmos_codec::export::{DocumentReader, Position};

use super::{DocumentSource, RangePlan, SourceError, SourcePage, Unparsed, UnparsedPage};

/// Export files: `<Container>.jsonl` in a directory (see `mystira_cosmos_codec::export`).
#[derive(Debug, Clone)]
pub struct ExportDirSource {
    dir: PathBuf,
}

impl ExportDirSource {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn file(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.jsonl"))
    }
}

#[async_trait]
impl DocumentSource for ExportDirSource {
    fn describe(&self) -> String {
        format!("export files in {}", self.dir.display())
    }

    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        Ok(self.file(container).is_file())
    }

    async fn read_page(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let at = start_position(container, position)?;
        self.read_lines(container, at, None, max, UnparsedPage::parse)
            .await
    }

    async fn read_page_unparsed(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<UnparsedPage, SourceError> {
        let at = start_position(container, position)?;
        self.read_lines(container, at, None, max, |page| page).await
    }

    async fn estimate_documents(&self, container: &str) -> Option<u64> {
        let export = mystira_cosmos_codec::export::ExportDir::open(&self.dir).ok()?;
        let manifest = export.manifest?;
        manifest
            .files
            .get(&mystira_cosmos_codec::export::file_name(container))
            .map(|f| f.lines)
    }

    async fn plan_ranges(&self, container: &str, n: usize) -> Result<Vec<RangePlan>, SourceError> {
        let path = self.file(container);
        tokio::task::spawn_blocking(move || plan_file_ranges(&path, n))
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }

    async fn read_range_page(
        &self,
        container: &str,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let bad = |message: String| SourceError::BadPosition {
            container: container.to_owned(),
            message,
        };
        let at: Position = serde_json::from_value(position.unwrap_or(&range.start).clone())
            .map_err(|e| bad(e.to_string()))?;
        let end = match &range.end {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| bad("a range end is a byte offset".into()))?,
            ),
        };
        self.read_lines(container, at, end, max, UnparsedPage::parse)
            .await
    }
}

impl ExportDirSource {
    /// Up to `max` lines from `at` (to the byte offset `end`), handed to `then` on a blocking
    /// thread: file reads block, and parsing is CPU work, so both stay off the async workers.
    async fn read_lines<T: Send + 'static>(
        &self,
        container: &str,
        at: Position,
        end: Option<u64>,
        max: usize,
        then: impl FnOnce(UnparsedPage) -> T + Send + 'static,
    ) -> Result<T, SourceError> {
        let path = self.file(container);
        let container = container.to_owned();
        tokio::task::spawn_blocking(move || {
            read_export_lines(&path, &container, at, end, max).map(then)
        })
        .await
        .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }
}

/// Splits a file into `n` byte ranges whose boundaries are moved forward to line starts, and
/// numbers each boundary's line (one streaming pass), so messages keep true line numbers.
fn plan_file_ranges(path: &Path, n: usize) -> Result<Vec<RangePlan>, SourceError> {
    use std::io::{BufRead, BufReader};
    let io = |e: std::io::Error| SourceError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    let n = n.max(1) as u64;
    let targets: Vec<u64> = (1..n).map(|i| size * i / n).collect();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io)?);
    let mut starts = vec![Position::START];
    let (mut offset, mut line_no, mut buf) = (0u64, 1u64, Vec::new());
    let mut targets = targets.into_iter().peekable();
    while targets.peek().is_some() {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(io)? as u64;
        offset += read;
        line_no += 1;
        if read == 0 || offset >= size {
            break;
        }
        // the first line start at or after a target begins the next range
        let mut crossed = false;
        while targets.next_if(|t| *t <= offset).is_some() {
            crossed = true;
        }
        if crossed {
            starts.push(Position {
                byte_offset: offset,
                line_no,
            });
        }
    }
    let ends: Vec<Option<u64>> = starts
        .iter()
        .skip(1)
        .map(|p| Some(p.byte_offset))
        .chain([None])
        .collect();
    Ok(starts
        .into_iter()
        .zip(ends)
        .map(|(start, end)| RangePlan {
            start: serde_json::to_value(start).unwrap_or_default(),
            end: end.map(serde_json::Value::from),
        })
        .collect())
}

/// Up to `max` lines of an export file from `at` (stopping at the byte offset `end`), unparsed.
fn read_export_lines(
    path: &Path,
    container: &str,
    at: Position,
    end: Option<u64>,
    max: usize,
) -> Result<UnparsedPage, SourceError> {
    let io = |e: mystira_cosmos_codec::export::ExportError| SourceError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = DocumentReader::open_at(path, container, at).map_err(io)?;
    let mut lines = Vec::with_capacity(max);
    let mut range_done = false;
    while lines.len() < max {
        if end.is_some_and(|end| reader.position().byte_offset >= end) {
            range_done = true;
            break;
        }
        let Some(line) = reader.next_line() else {
            range_done = true;
            break;
        };
        lines.push(line);
    }
    // a full page may end exactly at the end: the next read then returns an empty last page
    let next = (!range_done).then(|| serde_json::to_value(reader.position()).unwrap_or_default());
    Ok(UnparsedPage {
        documents: Unparsed::Lines {
            file: reader.file().to_owned(),
            file_name: file_name_of(path),
            container: container.to_owned(),
            lines,
        },
        next,
    })
}

/// Where a read starts: the beginning, or a saved [`Position`].
fn start_position(
    container: &str,
    position: Option<&serde_json::Value>,
) -> Result<Position, SourceError> {
    match position {
        None => Ok(Position::START),
        Some(p) => serde_json::from_value(p.clone()).map_err(|e| SourceError::BadPosition {
            container: container.to_owned(),
            message: e.to_string(),
        }),
    }
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}
