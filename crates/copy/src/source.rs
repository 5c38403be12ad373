//! Where documents come from: export files or a live Cosmos endpoint, read page by page from a
//! resumable position (a byte offset, a continuation token) that the backfill checkpoints.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mystira_cosmos_codec::export::{DocumentReader, Line, LineError, Position};
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
        let documents = match self.documents {
            Unparsed::Parsed(documents) => documents,
            Unparsed::Lines {
                file,
                file_name,
                container,
                lines,
            } => lines
                .into_iter()
                .filter(|line| line.as_ref().map_or(true, |l| !skip(&l.bytes)))
                .map(|line| match line.and_then(|l| l.parse(&file, &container)) {
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
                })
                .collect(),
        };
        SourcePage {
            documents,
            next: self.next,
        }
    }
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

/// A live Cosmos database, read through the official SDK in pages with continuation tokens
/// (the position saved in the checkpoint is the token).
///
/// # Ranges of a live container
/// [`DocumentSource::plan_ranges`] splits a container first by its feed ranges (one per
/// physical partition, `read_feed_ranges`; a server that cannot answer that call, or answers
/// with none, is read as one feed range covering everything), and, where there are fewer feed
/// ranges than ranges asked for, each feed range further by `_ts` into intervals
/// `[..., b1)`, `[b1, b2)`, ..., `[bk, N]` between its oldest and newest `_ts` (`N`) at
/// planning. A range is read with `select * from c where <its _ts interval> order by c._ts` in
/// its feed range, resumed from the SDK's continuation token, which the service (and the test
/// server) resumes at a position in (`_ts`, `_rid`) order.
///
/// # The rule: every document once, none missed while the run goes
/// - Planning takes, per feed range, the position of its change feed *now* (`changes_after`),
///   and only then reads its newest `_ts` `N`. So every document is either unchanged since
///   that position, and then has a `_ts` of at most `N`, or changed after it, and then is in
///   the change feed after it.
/// - The intervals of a feed range cover every `_ts` up to `N` once, and a document's
///   position (`_ts`, `_rid`) is fixed while it is not written (`_rid` is fixed for its life):
///   the first passes read every unchanged document exactly once, whatever the number of
///   ranges, workers or pages.
/// - The last range of a feed range (planned without an end) then reads the **final pass**:
///   the feed range's change feed (latest version) from `changes_after` until it is caught
///   up. It starts only once every bounded range of the container is done (the backfill waits
///   for them, [`DocumentSource::awaits_bounded_ranges`]; bounded ranges are numbered first,
///   so they are taken first). Every document written after planning and before the final
///   pass catches up is read there, at that version or a newer one; writes after that point
///   are left to replication (`replicate`), as are deletes.
/// - So a document is read twice only when it was written during the run (or in the second
///   of planning) and a first pass read it too: its two reads are counted (`read`), the
///   version-guarded writes count an older or equal second copy `unchanged`, and the initial
///   load sets it aside for its upsert pass. A container nobody writes while it is copied is
///   read once, document by document.
/// - A server without a change feed (planning cannot take its position) gets the earlier
///   final pass: the last range has no upper `_ts` bound, and its final pass reads again every
///   document with `_ts` at or after `N` (`final_from`), which reads the documents of the
///   newest seconds twice. Ranges planned that way by an earlier version are read that way.
#[derive(Debug)]
pub struct CosmosSource {
    store: mystira_cosmos_store::CosmosStore,
}

impl CosmosSource {
    pub fn new(store: mystira_cosmos_store::CosmosStore) -> Self {
        Self { store }
    }

    /// The oldest (`newest = false`) or newest `_ts` in `range`, `None` when it is empty.
    async fn ts_edge(
        &self,
        handle: &mystira_cosmos_store::Container,
        range: &FeedRangeKey,
        newest: bool,
    ) -> Result<Option<i64>, SourceError> {
        let order = if newest { "desc" } else { "asc" };
        // TOP and the order are ours, not a caller's value, so they are part of the text
        let spec = mystira_cosmos_store::QuerySpec::new(format!(
            "select top 1 c._ts from c order by c._ts {order}"
        ))
        .in_feed_range(range.clone());
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, None, 1);
        while let Some(page) = pages.next_page().await.map_err(cosmos_err)? {
            if let Some(doc) = page.items.first() {
                return Ok(doc.get("_ts").and_then(serde_json::Value::as_i64));
            }
        }
        Ok(None)
    }
}

fn cosmos_err(e: mystira_cosmos_store::Error) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

use mystira_cosmos_store::FeedRangeKey;

/// A planned range of a live container: a feed range and a `_ts` interval
/// (`ts_from <= _ts < ts_to`, either side open), and for the last range of its feed range,
/// what its final pass reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LiveRange {
    feed_range: String,
    ts_from: Option<i64>,
    /// The feed range's change-feed position taken at planning, before its newest `_ts` was
    /// read: the final pass reads the changes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changes_after: Option<String>,
    /// With `changes_after`: the newest `_ts` at planning, where the first pass stops
    /// (inclusive); `None`: the feed range was empty then, and there is no first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts_through: Option<i64>,
    /// Without `changes_after` (no change feed, or a plan of an earlier version): the first
    /// pass is open-ended and the final pass reads again every document from this `_ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    final_from: Option<i64>,
}

impl LiveRange {
    fn plan(self, ts_to: Option<i64>) -> RangePlan {
        RangePlan {
            start: serde_json::to_value(&self).unwrap_or_default(),
            end: ts_to.map(serde_json::Value::from),
        }
    }
}

/// Where a live range's copy is: the pass (`first`, then `final` for the open-ended range) and
/// the SDK's continuation token within it (`None`: the pass's beginning).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LivePosition {
    pass: Pass,
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Pass {
    First,
    Final,
}

/// `k - 1` boundaries splitting the seconds `oldest..=newest` into `k` about equal intervals;
/// each is above `oldest` and at most `newest` (fewer when there are fewer seconds).
fn ts_boundaries(oldest: i64, newest: i64, k: usize) -> Vec<i64> {
    if newest <= oldest || k < 2 {
        return Vec::new();
    }
    let span = i128::from(newest) - i128::from(oldest) + 1;
    let k = k as i128;
    let mut out: Vec<i64> = (1..k)
        .filter_map(|i| i64::try_from(i128::from(oldest) + span * i / k).ok())
        .filter(|b| *b > oldest && *b <= newest)
        .collect();
    out.dedup();
    out
}

#[async_trait]
impl DocumentSource for CosmosSource {
    fn describe(&self) -> String {
        format!("cosmos database {}", self.store.database_name())
    }

    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        match self.store.container(container).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == mystira_cosmos_store::ErrorKind::NotFound => Ok(false),
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
                Some(mystira_cosmos_store::ResumeToken::from_string(t.clone()))
            }
            Some(_) => {
                return Err(SourceError::BadPosition {
                    container: container.to_owned(),
                    message: "a Cosmos position is a continuation token string".into(),
                });
            }
        };
        let spec = mystira_cosmos_store::QuerySpec::new("select * from c");
        let (documents, token) = self.query_page(container, spec, resume, max).await?;
        Ok(SourcePage {
            documents,
            next: token.map(serde_json::Value::String),
        })
    }

    fn is_live(&self) -> bool {
        true
    }

    async fn read_documents_by_id(
        &self,
        container: &str,
        id: &str,
    ) -> Result<Vec<SourceDocument>, SourceError> {
        // a query, not a point read: the partition key (an email for pending sign-ups) is not
        // known to the caller, and a document id may be in more than one partition
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let spec = mystira_cosmos_store::QuerySpec::new("select * from c where c.id = @id")
            .param("@id", id);
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, None, 10);
        let mut documents = Vec::new();
        while let Some(page) = pages.next_page().await.map_err(cosmos_err)? {
            documents.extend(page.items.into_iter().map(SourceDocument::Document));
        }
        Ok(documents)
    }

    async fn plan_ranges(&self, container: &str, n: usize) -> Result<Vec<RangePlan>, SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let feeds = match handle.feed_ranges().await {
            Ok(feeds) if !feeds.is_empty() => feeds,
            Ok(_) => {
                tracing::warn!(
                    container,
                    "the server reports no feed ranges: one is assumed"
                );
                vec![FeedRangeKey::full()]
            }
            // an outage is an outage; a server without the call is read as one feed range
            Err(e) if e.is_retryable() => return Err(cosmos_err(e)),
            Err(e) => {
                tracing::warn!(container, error = %e, "feed ranges unavailable: one is assumed");
                vec![FeedRangeKey::full()]
            }
        };
        let per_feed = n.max(1).div_ceil(feeds.len());
        // bounded ranges first, open-ended last: workers take the lowest range first, so a
        // worker reaches an open range's final pass only once every bounded one is taken
        let (mut bounded, mut open) = (Vec::new(), Vec::new());
        for feed in feeds {
            // before the newest `_ts`: a write after this position is in the change feed, and
            // one before it has a `_ts` at most the newest read below
            let changes_after = self.feed_position_now(&handle, container, &feed).await?;
            let newest = self.ts_edge(&handle, &feed, true).await?;
            let cuts = match (per_feed > 1, newest) {
                (true, Some(newest)) => match self.ts_edge(&handle, &feed, false).await? {
                    Some(oldest) => ts_boundaries(oldest, newest, per_feed),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut from = None;
            for cut in cuts {
                let range = LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: None,
                    ts_through: None,
                    final_from: None,
                };
                bounded.push(range.plan(Some(cut)));
                from = Some(cut);
            }
            let last = match changes_after {
                Some(token) => LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: Some(token),
                    ts_through: newest,
                    final_from: None,
                },
                None => LiveRange {
                    feed_range: feed.as_str().to_owned(),
                    ts_from: from,
                    changes_after: None,
                    ts_through: None,
                    final_from: newest.or(from),
                },
            };
            open.push(last.plan(None));
        }
        bounded.extend(open);
        Ok(bounded)
    }

    fn awaits_bounded_ranges(
        &self,
        range: &RangePlan,
        position: Option<&serde_json::Value>,
    ) -> bool {
        let open = range.end.as_ref().is_none_or(serde_json::Value::is_null);
        let at_final = position
            .and_then(|p| serde_json::from_value::<LivePosition>(p.clone()).ok())
            .is_some_and(|p| p.pass == Pass::Final && p.token.is_none());
        open && at_final
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
        // a run planned before live containers were split has one range starting at null and
        // a bare continuation token as its position
        let Ok(live) = serde_json::from_value::<LiveRange>(range.start.clone()) else {
            let start = Some(&range.start).filter(|s| !s.is_null());
            return self.read_page(container, position.or(start), max).await;
        };
        let position = match position {
            None => LivePosition {
                pass: Pass::First,
                token: None,
            },
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| bad(e.to_string()))?,
        };
        let ts_to = match &range.end {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| bad("a live range ends at a _ts (seconds)".into()))?,
            ),
        };
        // the last range of a feed range planned with its change-feed position
        let through = match (&live.changes_after, ts_to) {
            (Some(after), None) => {
                if position.pass == Pass::Final {
                    let from = position.token.clone().unwrap_or_else(|| after.clone());
                    return self.changes_page(container, &live, from, max).await;
                }
                match live.ts_through {
                    Some(through) => Some(through),
                    // empty at planning: every document it holds now is in the change feed
                    None => {
                        let next = LivePosition {
                            pass: Pass::Final,
                            token: None,
                        };
                        return Ok(SourcePage {
                            documents: Vec::new(),
                            next: Some(serde_json::to_value(next).unwrap_or_default()),
                        });
                    }
                }
            }
            _ => None,
        };
        let (lower, upper) = match position.pass {
            Pass::First => (live.ts_from, ts_to),
            Pass::Final => (live.final_from.max(live.ts_from), ts_to),
        };
        let mut text = String::from("select * from c");
        let mut conditions = Vec::new();
        if lower.is_some() {
            conditions.push("c._ts >= @lo");
        }
        if upper.is_some() {
            conditions.push("c._ts < @hi");
        }
        if through.is_some() {
            conditions.push("c._ts <= @through");
        }
        if !conditions.is_empty() {
            text.push_str(" where ");
            text.push_str(&conditions.join(" and "));
        }
        text.push_str(" order by c._ts");
        let mut spec = mystira_cosmos_store::QuerySpec::new(text)
            .in_feed_range(FeedRangeKey::from_string(live.feed_range.clone()));
        if let Some(lo) = lower {
            spec = spec.param("@lo", lo);
        }
        if let Some(hi) = upper {
            spec = spec.param("@hi", hi);
        }
        if let Some(through) = through {
            spec = spec.param("@through", through);
        }
        let resume = position
            .token
            .clone()
            .map(mystira_cosmos_store::ResumeToken::from_string);
        let (documents, token) = self.query_page(container, spec, resume, max).await?;
        let next = match (token, position.pass, ts_to) {
            (Some(token), pass, _) => Some(LivePosition {
                pass,
                token: Some(token),
            }),
            // the first pass of the open-ended range is over: its final pass is next
            (None, Pass::First, None) => Some(LivePosition {
                pass: Pass::Final,
                token: None,
            }),
            (None, _, _) => None,
        };
        Ok(SourcePage {
            documents,
            next: next.map(|p| serde_json::to_value(p).unwrap_or_default()),
        })
    }
}

impl CosmosSource {
    /// The position of `range`'s change feed now (latest version), or `None` when the server
    /// has no change feed (the range is then planned with the query-based final pass).
    async fn feed_position_now(
        &self,
        handle: &mystira_cosmos_store::Container,
        container: &str,
        range: &FeedRangeKey,
    ) -> Result<Option<String>, SourceError> {
        let mut feed = handle.change_feed_with_page_size(
            range,
            mystira_cosmos_store::FeedStart::Now,
            mystira_cosmos_store::FeedMode::LatestVersion,
            1,
        );
        match feed.next_page().await {
            // a change in this very request comes before the newest `_ts` is read: its `_ts`
            // is at most that, so the first pass reads it; the position after it is as good
            Ok(page) => Ok(Some(page.token().as_str().to_owned())),
            Err(e) if e.is_retryable() => Err(cosmos_err(e)),
            Err(e) => {
                tracing::warn!(
                    container,
                    error = %e,
                    "no change feed: the last range's final pass reads the newest seconds again"
                );
                Ok(None)
            }
        }
    }

    /// A page of the final pass: the changes of `live`'s feed range after `from` (a change-feed
    /// token), and the position after them; `next` is `None` once the feed is caught up.
    async fn changes_page(
        &self,
        container: &str,
        live: &LiveRange,
        from: String,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let mut feed = handle.change_feed_with_page_size(
            &FeedRangeKey::from_string(live.feed_range.clone()),
            mystira_cosmos_store::FeedStart::Token(
                mystira_cosmos_store::ChangeFeedToken::from_string(from),
            ),
            mystira_cosmos_store::FeedMode::LatestVersion,
            u32::try_from(max).unwrap_or(u32::MAX),
        );
        let page = feed.next_page().await.map_err(cosmos_err)?;
        if page.is_caught_up() {
            return Ok(SourcePage::default());
        }
        let next = LivePosition {
            pass: Pass::Final,
            token: Some(page.token().as_str().to_owned()),
        };
        Ok(SourcePage {
            documents: page
                .documents
                .into_iter()
                .map(SourceDocument::Document)
                .collect(),
            next: Some(serde_json::to_value(next).unwrap_or_default()),
        })
    }

    /// The next non-empty page of `spec` from `resume` and the token after it, or no documents
    /// and `None` when the query is exhausted.
    async fn query_page(
        &self,
        container: &str,
        spec: mystira_cosmos_store::QuerySpec,
        resume: Option<mystira_cosmos_store::ResumeToken>,
        max: usize,
    ) -> Result<(Vec<SourceDocument>, Option<String>), SourceError> {
        let handle = self.store.container(container).await.map_err(cosmos_err)?;
        let size = u32::try_from(max).unwrap_or(u32::MAX);
        let mut pages = handle.query_with_page_size::<serde_json::Value>(spec, resume, size);
        // Pages may come back empty before the end; read until one has documents or the query
        // is exhausted.
        loop {
            match pages.next_page().await.map_err(cosmos_err)? {
                None => return Ok((Vec::new(), None)),
                Some(page) if page.items.is_empty() => continue,
                Some(page) => {
                    let token = page.resume_token().as_str().to_owned();
                    let documents = page
                        .items
                        .into_iter()
                        .map(SourceDocument::Document)
                        .collect();
                    return Ok((documents, Some(token)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_boundaries_split_the_seconds_evenly_within_oldest_and_newest() {
        assert_eq!(ts_boundaries(100, 107, 4), vec![102, 104, 106]);
        assert_eq!(ts_boundaries(100, 101, 4), vec![101]);
        assert!(ts_boundaries(100, 100, 4).is_empty());
        assert!(ts_boundaries(100, 200, 1).is_empty());
        for (oldest, newest, k) in [(0, 1000, 7), (5, 9, 16), (i64::MAX - 3, i64::MAX, 3)] {
            let cuts = ts_boundaries(oldest, newest, k);
            assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
            assert!(cuts.iter().all(|c| *c > oldest && *c <= newest), "{cuts:?}");
        }
    }
}
