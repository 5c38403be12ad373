//! Where documents come from: export files or a live Cosmos endpoint, read page by page from a
//! resumable position (a byte offset, a continuation token) that the backfill checkpoints.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mystira_cosmos::export::{DocumentReader, Position};

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
        let path = self.file(container);
        let container = container.to_owned();
        // file reads block: keep them off the async workers
        tokio::task::spawn_blocking(move || read_export_page(&path, &container, at, max))
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }
}

fn read_export_page(
    path: &Path,
    container: &str,
    at: Position,
    max: usize,
) -> Result<SourcePage, SourceError> {
    let io = |e: mystira_cosmos::export::ExportError| SourceError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = DocumentReader::open_at(path, container, at).map_err(io)?;
    let mut documents = Vec::with_capacity(max);
    for item in reader.by_ref().take(max) {
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
    let next = (documents.len() == max).then(|| reader.position());
    // a full page may end exactly at the end of the file: the next read returns an empty page
    let next = next.map(|p| serde_json::to_value(p).unwrap_or_default());
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
