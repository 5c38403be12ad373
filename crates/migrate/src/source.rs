//! Where documents come from: export files or a live Cosmos endpoint, read page by page from a
//! resumable position (a byte offset, a continuation token) that the backfill checkpoints.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mystira_cosmos::export::{DocumentReader, Position};
pub use mystira_postgres::leases::RangePlan;

/// One raw document, or a line that is not a document, with where it was read.
#[derive(Debug, Clone)]
pub enum SourceDocument {
    /// A parsed JSON document.
    Document(serde_json::Value),
    /// A line of an export file that is not a JSON object.
    /// `raw` says where the line is (file, line, byte offset); the line itself stays there.
    Malformed {
        locator: String,
        message: String,
        raw: serde_json::Value,
    },
}

/// A page of documents and the position after it (`None` when the container is exhausted).
#[derive(Debug, Default)]
pub struct SourcePage {
    pub documents: Vec<SourceDocument>,
    pub next: Option<serde_json::Value>,
}

/// A source of Cosmos documents, read container by container.
#[async_trait]
pub trait DocumentSource: Send + Sync {
    /// A short description for logs and run records (no secrets).
    fn describe(&self) -> String;
    /// Whether the container exists in this source.
    async fn has_container(&self, container: &str) -> Result<bool, SourceError>;
    /// Up to `max` documents of `container` from `position` (`None` = the beginning).
    async fn read_page(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError>;

    /// How many documents `container` holds, when the source can tell cheaply (for progress
    /// bars and ETAs).
    async fn estimate_documents(&self, _container: &str) -> Option<u64> {
        None
    }

    /// Splits `container` into about `n` ranges that can be copied independently. The default
    /// is one range: the whole container.
    async fn plan_ranges(
        &self,
        _container: &str,
        _n: usize,
    ) -> Result<Vec<RangePlan>, SourceError> {
        Ok(vec![RangePlan {
            start: serde_json::Value::Null,
            end: None,
        }])
    }

    /// Like [`Self::read_page`], but stops at the end of `range` (`next` is `None` there).
    /// `position` is where the range's copy got to; `None` means the range's start.
    async fn read_range_page(
        &self,
        container: &str,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let start = Some(&range.start).filter(|s| !s.is_null());
        self.read_page(container, position.or(start), max).await
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot read {what}: {message}")]
    Io { what: String, message: String },
    #[error("the saved position for {container} is not valid for this source: {message}")]
    BadPosition { container: String, message: String },
    #[error("source unavailable: {0}")]
    Unavailable(String),
}

/// Export files: `<Container>.jsonl` in a directory (see `mystira_cosmos::export`).
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
        let at = match position {
            None => Position::START,
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| SourceError::BadPosition {
                container: container.to_owned(),
                message: e.to_string(),
            })?,
        };
        self.read_until(container, at, None, max).await
    }

    async fn estimate_documents(&self, container: &str) -> Option<u64> {
        let export = mystira_cosmos::export::ExportDir::open(&self.dir).ok()?;
        let manifest = export.manifest?;
        manifest
            .files
            .get(&mystira_cosmos::export::file_name(container))
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
        self.read_until(container, at, end, max).await
    }
}

impl ExportDirSource {
    async fn read_until(
        &self,
        container: &str,
        at: Position,
        end: Option<u64>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let path = self.file(container);
        let container = container.to_owned();
        // file reads block: keep them off the async workers
        tokio::task::spawn_blocking(move || read_export_page(&path, &container, at, end, max))
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

fn read_export_page(
    path: &Path,
    container: &str,
    at: Position,
    end: Option<u64>,
    max: usize,
) -> Result<SourcePage, SourceError> {
    let io = |e: mystira_cosmos::export::ExportError| SourceError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = DocumentReader::open_at(path, container, at).map_err(io)?;
    let mut documents = Vec::with_capacity(max);
    let mut range_done = false;
    while documents.len() < max {
        if end.is_some_and(|end| reader.position().byte_offset >= end) {
            range_done = true;
            break;
        }
        let Some(item) = reader.next() else {
            range_done = true;
            break;
        };
        documents.push(match item {
            Ok(doc) => SourceDocument::Document(doc.value),
            Err(e) => SourceDocument::Malformed {
                locator: format!("{}:{}", file_name_of(path), e.line_no),
                message: e.message.clone(),
                raw: serde_json::json!({
                    "file": file_name_of(path),
                    "line_no": e.line_no,
                    "byte_offset": e.byte_offset,
                }),
            },
        });
    }
    // a full page may end exactly at the end: the next read then returns an empty last page
    let next = (!range_done).then(|| serde_json::to_value(reader.position()).unwrap_or_default());
    Ok(SourcePage { documents, next })
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// A live Cosmos database, read through the official SDK in pages with continuation tokens
/// (the position saved in the checkpoint is the token).
#[derive(Debug)]
pub struct CosmosSource {
    store: mystira_cosmos_client::CosmosStore,
}

impl CosmosSource {
    pub fn new(store: mystira_cosmos_client::CosmosStore) -> Self {
        Self { store }
    }
}

fn cosmos_err(e: mystira_cosmos_client::Error) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

#[async_trait]
impl DocumentSource for CosmosSource {
    fn describe(&self) -> String {
        format!("cosmos database {}", self.store.database_name())
    }

    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        match self.store.container(container).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == mystira_cosmos_client::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(cosmos_err(e)),
        }
    }

    async fn read_page(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let resume = match position {
            None => None,
            Some(serde_json::Value::String(t)) => {
                Some(mystira_cosmos_client::ResumeToken::from_string(t.clone()))
            }
            Some(_) => {
                return Err(SourceError::BadPosition {
                    container: container.to_owned(),
                    message: "a Cosmos position is a continuation token string".into(),
                });
            }
        };
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let size = u32::try_from(max).unwrap_or(u32::MAX);
        let spec = mystira_cosmos_client::QuerySpec::new("select * from c");
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, resume, size);
        // Pages may come back empty before the end; read until one has documents or the query
        // is exhausted.
        loop {
            match pages.next_page().await.map_err(cosmos_err)? {
                None => {
                    return Ok(SourcePage {
                        documents: Vec::new(),
                        next: None,
                    });
                }
                Some(page) if page.items.is_empty() => continue,
                Some(page) => {
                    let next = serde_json::Value::String(page.resume_token().as_str().to_owned());
                    let documents = page
                        .items
                        .into_iter()
                        .map(SourceDocument::Document)
                        .collect();
                    return Ok(SourcePage {
                        documents,
                        next: Some(next),
                    });
                }
            }
        }
    }
}
