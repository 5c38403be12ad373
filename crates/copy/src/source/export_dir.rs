//! The export-dir source: `<Container>.jsonl` files in a directory, read page by page from a
//! byte offset, and split into byte ranges at line starts for parallel workers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mystira_cosmos_codec::export::{DocumentReader, Position};

use super::{DocumentSource, RangePlan, SourceError, SourcePage, Unparsed, UnparsedPage};

/// Export files: `<Container>.jsonl` in a directory (see `mystira_cosmos_codec::export`).
#[derive(Debug, Clone)]
pub struct ExportDirSource {
    dir: PathBuf,
    /// Readers left where a page ended, for the page that starts there (shared by clones).
    open: Arc<OpenReaders>,
}

impl ExportDirSource {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            open: Arc::default(),
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
        let open = Arc::clone(&self.open);
        tokio::task::spawn_blocking(move || {
            let reader = open.take(&path, &container, at);
            let (page, reader) = read_export_lines(reader, &path, &container, at, end, max)?;
            if let Some(reader) = reader {
                open.keep(path, reader);
            }
            Ok(then(page))
        })
        .await
        .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }
}

/// Readers that stopped at the end of a page, each kept for the read of the page after it.
///
/// Opening the file again for every page meant a new 1 MiB buffer per page, and its last
/// fill, read past the page's end, was read again by the next page (the kernel's copy of file
/// data was 11 % of a verify's CPU samples; an A/B of the change showed no gain beyond the
/// machine's noise, docs/benchmarks.md). A reader is taken only by a read that starts exactly
/// where it stopped, in the same file, so what a page holds is the same either way, as long as
/// export files do not change while they are read (the format's contract: a kept reader
/// would go on reading a file replaced under it). At most [`MAX_OPEN_READERS`] are kept (one
/// per worker and container is the usual need); the oldest goes first.
#[derive(Debug, Default)]
struct OpenReaders(Mutex<Vec<(PathBuf, DocumentReader)>>);

const MAX_OPEN_READERS: usize = 16;

impl OpenReaders {
    fn take(&self, path: &Path, container: &str, at: Position) -> Option<DocumentReader> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = open
            .iter()
            .position(|(p, r)| p == path && r.container() == container && r.position() == at)?;
        Some(open.remove(i).1)
    }

    fn keep(&self, path: PathBuf, reader: DocumentReader) {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.len() >= MAX_OPEN_READERS {
            open.remove(0);
        }
        open.push((path, reader));
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

/// Up to `max` lines of an export file from `at` (stopping at the byte offset `end`), unparsed,
/// read with `reader` when given (one that stopped at `at`), else with the file opened at `at`.
/// Returns the reader too while the file or range has more to read and no read failed (a
/// failed read ends its reader; the next page opens the file again and retries that line).
fn read_export_lines(
    reader: Option<DocumentReader>,
    path: &Path,
    container: &str,
    at: Position,
    end: Option<u64>,
    max: usize,
) -> Result<(UnparsedPage, Option<DocumentReader>), SourceError> {
    let io = |e: mystira_cosmos_codec::export::ExportError| SourceError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = match reader {
        Some(reader) => reader,
        None => DocumentReader::open_at(path, container, at).map_err(io)?,
    };
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
    let read_failed = lines.iter().any(Result::is_err);
    let page = UnparsedPage {
        documents: Unparsed::Lines {
            file: reader.file().to_owned(),
            file_name: file_name_of(path),
            container: container.to_owned(),
            lines,
        },
        next,
    };
    let reusable = !range_done && !read_failed;
    Ok((page, reusable.then_some(reader)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An export file with a byte-order mark, blank lines, a line that is not JSON and lines
    /// longer than the reader's first buffer, in a directory of its own.
    fn export_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mu-export-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the directory");
        let mut text = String::from("\u{feff}");
        for i in 0..40 {
            match i {
                7 => text.push_str("not json\n"),
                11 | 12 => text.push_str("  \n"),
                _ => text.push_str(&format!(
                    "{{\"id\":\"{i}\",\"pad\":\"{}\",\"_ts\":{i}}}\n",
                    "x".repeat(i * 300)
                )),
            }
        }
        std::fs::write(dir.join("Accounts.jsonl"), text).expect("write the export file");
        dir
    }

    fn shown(page: &SourcePage) -> String {
        format!("{:?} next {:?}", page.documents, page.next)
    }

    /// The page at `at` read through `kept`, after checking it is the page a fresh open reads.
    async fn same_page(
        kept: &ExportDirSource,
        at: Option<&serde_json::Value>,
        max: usize,
    ) -> SourcePage {
        let page = kept
            .read_page("Accounts", at, max)
            .await
            .expect("read a page");
        let fresh = ExportDirSource::new(&kept.dir)
            .read_page("Accounts", at, max)
            .await
            .expect("read a page");
        assert_eq!(shown(&page), shown(&fresh), "from {at:?}");
        page
    }

    /// Pages read with the readers kept between them are the pages read with the file opened
    /// for each, for the whole file and for ranges, and the readers are in fact kept.
    #[tokio::test]
    async fn pages_read_with_a_kept_reader_are_the_pages_read_from_a_fresh_open() {
        let dir = export_dir("kept");
        let kept = ExportDirSource::new(&dir);
        let (mut position, mut pages) = (None, 0);
        loop {
            let page = same_page(&kept, position.as_ref(), 3).await;
            pages += 1;
            let kept_readers = kept.open.0.lock().expect("the readers' lock").len();
            assert_eq!(
                kept_readers,
                usize::from(page.next.is_some()),
                "page {pages}"
            );
            match page.next {
                Some(next) => position = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 13, "38 lines that are not blank, in pages of 3");

        // two passes over the file, one page behind the other: each read takes only the reader
        // that stopped where it starts
        let mut ahead = same_page(&kept, None, 4).await.next;
        let mut behind = None;
        for _ in 0..8 {
            let Some(next) = ahead else { break };
            ahead = same_page(&kept, Some(&next), 4).await.next;
            behind = same_page(&kept, behind.as_ref(), 4).await.next;
        }
        assert!(behind.is_some(), "the second pass is still one page behind");

        let ranges = kept.plan_ranges("Accounts", 3).await.expect("plan ranges");
        for range in &ranges {
            let mut position: Option<serde_json::Value> = None;
            loop {
                let page = kept
                    .read_range_page("Accounts", range, position.as_ref(), 2)
                    .await
                    .expect("read a page");
                let fresh = ExportDirSource::new(&dir)
                    .read_range_page("Accounts", range, position.as_ref(), 2)
                    .await
                    .expect("read a page");
                assert_eq!(shown(&page), shown(&fresh));
                match page.next {
                    Some(next) => position = Some(next),
                    None => break,
                }
            }
        }
        std::fs::remove_dir_all(&dir).expect("remove the directory");
    }
}
