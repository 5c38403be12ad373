//! JSON-lines export files: the raw Cosmos documents of a data set, outside Cosmos.
//!
//! Layout of an export directory:
//! * one file per container, `<Container>.jsonl` (`Accounts.jsonl`, ...), one raw document per
//!   line (compact JSON, so a line never contains a newline), in the order written;
//! * optionally `manifest.json`: per file, its container, line count, byte count and SHA-256,
//!   so a copy can be checked before it is trusted. A directory of `.jsonl` files without a
//!   manifest is valid (for example, files cut by hand from a larger export).
//!
//! The [`DocumentReader`] streams a file line by line (never the whole file in memory). A line
//! that is not a JSON object is reported as a [`LineError`] with the file and line number, and
//! reading continues with the next line. Reading can start at any line boundary
//! ([`Position`]), so a checkpoint of (byte offset, line number) resumes exactly there.
//! Blank lines are skipped (but counted), and so is a UTF-8 byte-order mark at the start of a
//! file (Windows tools write one; it is not part of the first document).
//!
//! The [`ExportWriter`] writes documents as they come and hashes while writing, then writes the
//! manifest last: a directory with a manifest is complete, and a stale manifest is removed
//! before writing starts, so a crashed writer never leaves a manifest that lies.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The extension of a container file.
pub const EXTENSION: &str = "jsonl";
/// The manifest's `format` value.
pub const FORMAT: &str = "mystira-cosmos-export";
/// The UTF-8 byte-order mark, skipped at the start of a container file or the manifest.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Keyed by file name (`Accounts.jsonl`).
    pub files: BTreeMap<String, FileEntry>,
}

/// One file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub container: String,
    pub lines: u64,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// An export directory or file that cannot be used. Never contains document contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("cannot access `{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("manifest `{}` is not valid: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    #[error("`{file}` does not match the manifest: {rule}")]
    Mismatch { file: String, rule: String },
    #[error("container name must be letters, digits, `_` or `-`")]
    InvalidContainerName,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn check_container_name(name: &str) -> Result<(), ExportError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ExportError::InvalidContainerName)
    }
}

/// The file name of a container's export file.
pub fn file_name(container: &str) -> String {
    format!("{container}.{EXTENSION}")
}

/// Writes an export directory: documents first, the manifest on [`finish`](Self::finish).
#[derive(Debug)]
pub struct ExportWriter {
    dir: PathBuf,
    files: BTreeMap<String, OpenFile>,
    line: Vec<u8>,
}

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    writer: BufWriter<File>,
    hasher: Sha256,
    lines: u64,
    bytes: u64,
}

impl ExportWriter {
    /// Creates (or reuses) `dir`. A manifest already there is removed first; container files
    /// are truncated when first written.
    pub fn create(dir: &Path) -> Result<Self, ExportError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let manifest = dir.join(MANIFEST_FILE);
        match fs::remove_file(&manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&manifest)(e)),
        }
        Ok(Self {
            dir: dir.to_owned(),
            files: BTreeMap::new(),
            line: Vec::with_capacity(4096),
        })
    }

    /// Creates the container's file now, so it exists (empty) even if nothing is written to it.
    pub fn add_container(&mut self, container: &str) -> Result<(), ExportError> {
        self.file(container).map(|_| ())
    }

    /// Appends one document to the container's file.
    pub fn write(&mut self, container: &str, doc: &Value) -> Result<(), ExportError> {
        self.line.clear();
        // Writing a Value into a Vec cannot fail (no I/O, string keys only).
        serde_json::to_writer(&mut self.line, doc).map_err(|e| ExportError::Io {
            path: self.dir.join(file_name(container)),
            source: io::Error::other(e),
        })?;
        self.line.push(b'\n');
        let line = std::mem::take(&mut self.line);
        let result = self.write_line(container, &line);
        self.line = line;
        result
    }

    fn write_line(&mut self, container: &str, line: &[u8]) -> Result<(), ExportError> {
        let file = self.file(container)?;
        file.writer.write_all(line).map_err(io_err(&file.path))?;
        file.hasher.update(line);
        file.lines += 1;
        file.bytes += line.len() as u64;
        Ok(())
    }

    fn file(&mut self, container: &str) -> Result<&mut OpenFile, ExportError> {
        if !self.files.contains_key(container) {
            check_container_name(container)?;
            let path = self.dir.join(file_name(container));
            let handle = File::create(&path).map_err(io_err(&path))?;
            self.files.insert(
                container.to_owned(),
                OpenFile {
                    path,
                    writer: BufWriter::with_capacity(1 << 20, handle),
                    hasher: Sha256::new(),
                    lines: 0,
                    bytes: 0,
                },
            );
        }
        self.files
            .get_mut(container)
            .ok_or(ExportError::InvalidContainerName)
    }

    /// Flushes and syncs every file, then writes the manifest. Returns the manifest.
    pub fn finish(self) -> Result<Manifest, ExportError> {
        let mut manifest = Manifest {
            format: FORMAT.to_owned(),
            version: 1,
            files: BTreeMap::new(),
        };
        for (container, file) in self.files {
            let OpenFile {
                path,
                writer,
                hasher,
                lines,
                bytes,
            } = file;
            let handle = writer
                .into_inner()
                .map_err(|e| io_err(&path)(e.into_error()))?;
            handle.sync_all().map_err(io_err(&path))?;
            manifest.files.insert(
                file_name(&container),
                FileEntry {
                    container,
                    lines,
                    bytes,
                    sha256: hex(&hasher.finalize()),
                },
            );
        }
        let path = self.dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| ExportError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        fs::write(&path, text).map_err(io_err(&path))?;
        Ok(manifest)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An export directory opened for reading.
#[derive(Debug, Clone)]
pub struct ExportDir {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
    /// The container files, sorted by container name.
    pub files: Vec<ExportFile>,
}

/// One container file of an export directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub container: String,
    pub path: PathBuf,
}

impl ExportDir {
    /// Lists `<Container>.jsonl` files and reads `manifest.json` if present. Every file the
    /// manifest names must exist.
    pub fn open(dir: &Path) -> Result<Self, ExportError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let is_jsonl = path.extension().is_some_and(|e| e == EXTENSION) && path.is_file();
            let container = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
            if let (true, Some(container)) = (is_jsonl, container) {
                files.push(ExportFile { container, path });
            }
        }
        files.sort_by(|a, b| a.container.cmp(&b.container));
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Manifest>(bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes))
                    .map_err(|e| ExportError::Manifest {
                        path: manifest_path.clone(),
                        message: e.to_string(),
                    })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&manifest_path)(e)),
        };
        if let Some(m) = &manifest {
            if m.format != FORMAT {
                return Err(ExportError::Manifest {
                    path: manifest_path,
                    message: format!("`format` must be `{FORMAT}`"),
                });
            }
            if let Some(missing) = m
                .files
                .keys()
                .find(|name| !files.iter().any(|f| file_name(&f.container) == **name))
            {
                return Err(ExportError::Mismatch {
                    file: missing.clone(),
                    rule: "listed in the manifest but not in the directory".into(),
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            files,
        })
    }

    pub fn file(&self, container: &str) -> Option<&ExportFile> {
        self.files.iter().find(|f| f.container == container)
    }

    /// Checks every file against the manifest (line count, byte count, SHA-256), streaming.
    /// Without a manifest there is nothing to check and this succeeds.
    pub fn verify(&self) -> Result<(), ExportError> {
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
        for (name, entry) in &manifest.files {
            let path = self.dir.join(name);
            let mut reader =
                BufReader::with_capacity(1 << 20, File::open(&path).map_err(io_err(&path))?);
            let mut hasher = Sha256::new();
            let (mut lines, mut bytes) = (0u64, 0u64);
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = reader.read(&mut chunk).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                let data = &chunk[..n];
                hasher.update(data);
                bytes += n as u64;
                lines += data.iter().filter(|b| **b == b'\n').count() as u64;
            }
            let mismatch = |rule: &str| ExportError::Mismatch {
                file: name.clone(),
                rule: rule.to_owned(),
            };
            if bytes != entry.bytes {
                return Err(mismatch("byte count differs"));
            }
            if lines != entry.lines {
                return Err(mismatch("line count differs"));
            }
            if hex(&hasher.finalize()) != entry.sha256 {
                return Err(mismatch("sha256 differs"));
            }
        }
        Ok(())
    }

    /// A reader over one container file from its start.
    pub fn reader(&self, file: &ExportFile) -> Result<DocumentReader, ExportError> {
        DocumentReader::open(&file.path, &file.container)
    }
}

/// Where to resume reading: the byte offset of a line start and that line's number (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub byte_offset: u64,
    pub line_no: u64,
}

impl Position {
    pub const START: Position = Position {
        byte_offset: 0,
        line_no: 1,
    };
}

/// One document read from an export file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub container: String,
    /// 1-based line number.
    pub line_no: u64,
    /// Byte offset of the line's start.
    pub byte_offset: u64,
    /// Where the next line starts: the position to checkpoint after processing this document.
    pub next: Position,
    pub value: Value,
}

/// A line that is not a document. The message never holds the line's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line_no}: {message}")]
pub struct LineError {
    pub file: String,
    pub line_no: u64,
    pub byte_offset: u64,
    pub message: String,
}

/// Streams the documents of one export file, line by line.
#[derive(Debug)]
pub struct DocumentReader {
    reader: BufReader<File>,
    file: String,
    container: String,
    pos: Position,
    buf: Vec<u8>,
    done: bool,
}

impl DocumentReader {
    pub fn open(path: &Path, container: &str) -> Result<Self, ExportError> {
        Self::open_at(path, container, Position::START)
    }

    /// Opens `path` and starts at `at`, which must be a line start (a [`Document::next`] or
    /// [`DocumentReader::position`] saved earlier).
    pub fn open_at(path: &Path, container: &str, at: Position) -> Result<Self, ExportError> {
        let mut handle = File::open(path).map_err(io_err(path))?;
        handle
            .seek(SeekFrom::Start(at.byte_offset))
            .map_err(io_err(path))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, handle),
            file: path.display().to_string(),
            container: container.to_owned(),
            pos: at,
            buf: Vec::with_capacity(4096),
            done: false,
        })
    }

    /// The position of the next line to be read.
    pub fn position(&self) -> Position {
        self.pos
    }

    fn line_error(&self, line_no: u64, byte_offset: u64, message: String) -> LineError {
        LineError {
            file: self.file.clone(),
            line_no,
            byte_offset,
            message,
        }
    }
}

/// One line of an export file, read but not parsed yet ([`DocumentReader::next_line`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub line_no: u64,
    /// Byte offset of the line's start.
    pub byte_offset: u64,
    /// Where the next line starts.
    pub next: Position,
    pub bytes: Vec<u8>,
}

impl Line {
    /// Parses the line as [`DocumentReader`]'s iterator does: a JSON object, or why it is not
    /// one. `file` and `container` are the reader's ([`DocumentReader::file`]).
    pub fn parse(self, file: &str, container: &str) -> Result<Document, LineError> {
        let parsed = match serde_json::from_slice::<Value>(&self.bytes) {
            // serde_json's syntax errors give a position and a rule, not the content.
            Err(e) => Err(format!("not valid JSON: {e}")),
            Ok(v) if !v.is_object() => Err("not a JSON object".to_owned()),
            Ok(v) => Ok(v),
        };
        match parsed {
            Ok(value) => Ok(Document {
                container: container.to_owned(),
                line_no: self.line_no,
                byte_offset: self.byte_offset,
                next: self.next,
                value,
            }),
            Err(message) => Err(LineError {
                file: file.to_owned(),
                line_no: self.line_no,
                byte_offset: self.byte_offset,
                message,
            }),
        }
    }
}

impl DocumentReader {
    /// The file as named in [`LineError`]s.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The container this reader reads documents of.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The next line that is not blank, unparsed. Parsing is most of the cost of reading, so
    /// a caller may do it ([`Line::parse`]) on other threads while it reads on; the iterator
    /// reads and parses in one step.
    pub fn next_line(&mut self) -> Option<Result<Line, LineError>> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            let start = self.pos;
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.line_error(
                        start.line_no,
                        start.byte_offset,
                        format!("read failed: {e}"),
                    )));
                }
            };
            self.pos = Position {
                byte_offset: start.byte_offset + n as u64,
                line_no: start.line_no + 1,
            };
            // a byte-order mark at the start of the file (Windows tools write one) is not part
            // of the first document; positions still count its bytes
            if start.byte_offset == 0 && self.buf.starts_with(UTF8_BOM) {
                self.buf.drain(..UTF8_BOM.len());
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // the line takes the buffer (no copy); the next line gets one of about its size
            let capacity = self.buf.len().max(4096);
            return Some(Ok(Line {
                line_no: start.line_no,
                byte_offset: start.byte_offset,
                next: self.pos,
                bytes: std::mem::replace(&mut self.buf, Vec::with_capacity(capacity)),
            }));
        }
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.next_line()?;
        Some(line.and_then(|line| line.parse(&self.file, &self.container)))
    }
}
