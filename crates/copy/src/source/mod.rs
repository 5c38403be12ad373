//! Where documents come from: export files or a live Cosmos endpoint, read page by page from a
//! resumable position (a byte offset, a continuation token) that the backfill checkpoints.
//!
//! This module holds the [`DocumentSource`] trait, its page types and errors; the sources are
//! [`ExportDirSource`] (`export_dir`) and [`CosmosSource`] (`cosmos`, with the planning and
//! reading of a live container's ranges in `live_ranges`).

mod cosmos;
mod export_dir;
mod live_ranges;

use async_trait::async_trait;
use mystira_cosmos_codec::codec;
use mystira_cosmos_codec::export::{Line, LineError};
pub use mystira_postgres::leases::RangePlan;

pub use cosmos::CosmosSource;
pub use export_dir::ExportDirSource;

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

/// A page whose documents may not be parsed yet ([`DocumentSource::read_page_unparsed`]).
#[derive(Debug)]
pub struct UnparsedPage {
    documents: Unparsed,
    /// The position after the page, as in [`SourcePage::next`].
    pub next: Option<serde_json::Value>,
}

#[derive(Debug)]
enum Unparsed {
    Parsed(Vec<SourceDocument>),
    /// Lines of an export file (`file` as named in its errors, `file_name` its base name).
    Lines {
        file: String,
        file_name: String,
        container: String,
        lines: Vec<Result<Line, LineError>>,
    },
}

impl From<SourcePage> for UnparsedPage {
    fn from(page: SourcePage) -> Self {
        Self {
            documents: Unparsed::Parsed(page.documents),
            next: page.next,
        }
    }
}

impl UnparsedPage {
    /// The page as [`DocumentSource::read_page`] returns it (CPU only: call it where the work
    /// may run, a blocking thread).
    pub fn parse(self) -> SourcePage {
        self.parse_skipping(|_| false)
    }

    /// [`Self::parse`], leaving out the unparsed lines `skip` rejects from their text alone
    /// (parsed pages are returned whole: their caller filters the documents).
    pub fn parse_skipping(self, skip: impl Fn(&[u8]) -> bool) -> SourcePage {
        let UnparsedPage { documents, next } = self;
        SourcePage {
            documents: parse_each(documents, skip).map(|(doc, _)| doc).collect(),
            next,
        }
    }

    /// The page's documents one at a time, each parsed when it is asked for (so a caller that
    /// maps each as it comes maps a document its parse just left in the cache), with whether
    /// it may hold a NUL character (`codec::text_may_hold_nul`): false only for an export
    /// line whose text shows it holds none, so the mapping need not look
    /// ([`crate::mapping::map_document_hinted`]). Lines `skip` rejects are left out, as in
    /// [`Self::parse_skipping`].
    pub fn into_documents(
        self,
        skip: impl Fn(&[u8]) -> bool,
    ) -> impl Iterator<Item = (SourceDocument, bool)> {
        parse_each(self.documents, skip)
    }
}

/// [`UnparsedPage::into_documents`] of a page's documents.
fn parse_each(
    documents: Unparsed,
    skip: impl Fn(&[u8]) -> bool,
) -> impl Iterator<Item = (SourceDocument, bool)> {
    let (parsed, lines) = match documents {
        Unparsed::Parsed(documents) => (Some(documents), None),
        Unparsed::Lines {
            file,
            file_name,
            container,
            lines,
        } => (None, Some((file, file_name, container, lines))),
    };
    let parsed = parsed.into_iter().flatten().map(|doc| (doc, true));
    let lines = lines.map(move |(file, file_name, container, lines)| {
        lines
            .into_iter()
            .filter(move |line| line.as_ref().map_or(true, |l| !skip(&l.bytes)))
            .map(move |line| {
                let may_hold_nul = line
                    .as_ref()
                    .map_or(true, |l| codec::text_may_hold_nul(&l.bytes));
                let doc = match line.and_then(|l| l.parse(&file, &container)) {
                    Ok(doc) => SourceDocument::Document(doc.value),
                    Err(e) => SourceDocument::Malformed {
                        locator: format!("{file_name}:{}", e.line_no),
                        raw: serde_json::json!({
                            "file": file_name,
                            "line_no": e.line_no,
                            "byte_offset": e.byte_offset,
                        }),
                        message: e.message,
                    },
                };
                (doc, may_hold_nul)
            })
    });
    parsed.chain(lines.into_iter().flatten())
}

/// The page of `container` at `position`, parsed on a blocking thread, without the export lines
/// whose `id` their text shows is not one of `ids` (`codec::document_id_of_json`). Lines whose
/// text does not show it plainly, and pages of sources that parse as they read, come whole: the
/// caller still picks its documents. For passes that re-read a container for a few ids.
pub async fn read_page_of_ids(
    source: &dyn DocumentSource,
    container: &str,
    position: Option<&serde_json::Value>,
    max: usize,
    ids: &std::sync::Arc<std::collections::BTreeSet<String>>,
) -> Result<SourcePage, SourceError> {
    let page = source.read_page_unparsed(container, position, max).await?;
    let ids = std::sync::Arc::clone(ids);
    tokio::task::spawn_blocking(move || {
        page.parse_skipping(|text| {
            mystira_cosmos_codec::codec::document_id_of_json(text)
                .is_some_and(|id| !ids.contains(id.as_ref()))
        })
    })
    .await
    .map_err(|e| SourceError::Unavailable(e.to_string()))
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

    /// Like [`Self::read_page`], but the parsing may be left to [`UnparsedPage::parse`], for a
    /// caller that parses pages on other threads while it reads the next one (verify reads a
    /// container as one stream). Export files leave their lines unparsed; the default reads
    /// and parses at once.
    async fn read_page_unparsed(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<UnparsedPage, SourceError> {
        Ok(self.read_page(container, position, max).await?.into())
    }

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

    /// Whether the next page of `range` from `position` may only be read once every bounded
    /// range of the container (one with an end) is done. The live source's open-ended ranges
    /// end with a final pass that must come after them (see [`CosmosSource`]); the default is
    /// never.
    fn awaits_bounded_ranges(
        &self,
        _range: &RangePlan,
        _position: Option<&serde_json::Value>,
    ) -> bool {
        false
    }

    /// Whether the source can change while it is read (a live database, not export files):
    /// verify then rechecks the documents it finds differing (`verify::recheck`).
    fn is_live(&self) -> bool {
        false
    }

    /// The documents of `container` whose `id` is `id` (in any partition), read now. Only a
    /// live source ([`Self::is_live`]) needs it; the default says it cannot.
    async fn read_documents_by_id(
        &self,
        container: &str,
        _id: &str,
    ) -> Result<Vec<SourceDocument>, SourceError> {
        Err(SourceError::Unavailable(format!(
            "{container}: this source cannot read single documents"
        )))
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
