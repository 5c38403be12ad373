//! The ledger file's records and the errors of reading and writing it; reading one line at most
//! [`MAX_LINE`] long.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The container an aggregate lives in (the Cosmos container names).
pub type ContainerName = String;

/// Field group name to digest.
pub type Groups = BTreeMap<String, String>;

/// One line of the ledger (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerRecord {
    Run {
        run: u64,
        seed: u64,
        at: DateTime<Utc>,
    },
    Intent {
        seq: u64,
        op: String,
        container: ContainerName,
        key: Uuid,
        groups: Groups,
    },
    Ack {
        seq: u64,
        /// The `seq` of the call's intent.
        call: u64,
        at: DateTime<Utc>,
        phase: Phase,
        /// The phase after the call, when it differs (a switch under the call).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase_after: Option<Phase>,
        op: String,
        container: ContainerName,
        key: Uuid,
        groups: Groups,
    },
}

/// The error of reading or writing a ledger file, naming the file (never a record's content).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("ledger file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger file {path}, line {line}: not a ledger record")]
    Malformed { path: PathBuf, line: u64 },
    #[error("ledger file {path}, line {line}: longer than 64 KiB, not a ledger record")]
    LineTooLong { path: PathBuf, line: u64 },
    #[error("ledger file {path}: not written, an earlier write failed ({first})")]
    Broken { path: PathBuf, first: String },
    #[error("reading the stores failed: {0}")]
    Store(#[from] RepoError),
    #[error("reading the local journal files failed: {0}")]
    Journal(#[from] mystira_dual_write::journal::FileJournalError),
}

pub(super) fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::File {
        path: path.to_owned(),
        source,
    }
}

/// The longest line a ledger reader accepts, newline excluded (a record is a few hundred bytes).
pub const MAX_LINE: u64 = 64 * 1024;

/// Reads the next line of `reader` into `buf` (without its newline): `Ok(false)` at the end.
/// Stops at [`MAX_LINE`] bytes with an error rather than reading on: a device that never ends
/// a line (`/dev/zero`, `/dev/full`) must not fill memory.
pub(super) fn next_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    path: &Path,
    line: u64,
) -> Result<bool, LedgerError> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE + 1)
        .read_until(b'\n', buf)
        .map_err(file_err(path))?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 > MAX_LINE {
        return Err(LedgerError::LineTooLong {
            path: path.to_owned(),
            line,
        });
    }
    Ok(true)
}

/// Whether `path` is a regular file (false when it does not exist).
pub(super) fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}
