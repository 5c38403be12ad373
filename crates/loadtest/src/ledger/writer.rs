//! Writing the ledger: one run per opening, each record handed to the kernel in one `write`,
//! fsynced in batches; the first failure breaks the writer for good.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use mystira_domain::phase::Phase;
use uuid::Uuid;

use super::record::{Groups, LedgerError, LedgerRecord, file_err, is_regular, next_line};

pub(super) struct WriterState {
    pub(super) out: File,
    /// Only a regular file is fsynced (a pipe or a device has nothing to sync).
    pub(super) regular: bool,
    pub(super) next_seq: u64,
    pub(super) unsynced: u64,
    pub(super) lines: u64,
    /// The first write or fsync that failed: nothing is written after it.
    pub(super) broken: Option<String>,
}

impl WriterState {
    /// Refuses to write once a write has failed.
    fn usable(&self, path: &Path) -> Result<(), LedgerError> {
        match &self.broken {
            Some(first) => Err(LedgerError::Broken {
                path: path.to_owned(),
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the writer broken by `e` and returns the error.
    fn fail(&mut self, path: &Path, e: std::io::Error) -> LedgerError {
        self.broken.get_or_insert_with(|| e.to_string());
        file_err(path)(e)
    }
}

/// Appends to a ledger file (see the module docs on what is written when). Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    path: PathBuf,
    run: u64,
    state: Arc<Mutex<WriterState>>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("path", &self.path)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl LedgerWriter {
    /// Opens (or creates) the file for appending and starts a new run on it: the run number
    /// and sequence numbers continue those already in the file, so a restarted load generator
    /// appends to the ledger of the one that was killed. Fails at once when the run's first
    /// record cannot be written.
    pub fn open(path: &Path, seed: u64) -> Result<Self, LedgerError> {
        let (mut run, mut seq) = (0u64, 0u64);
        // a pipe or a device holds no earlier runs (and reading one may never end)
        if is_regular(path) {
            let mut reader = BufReader::new(File::open(path).map_err(file_err(path))?);
            let mut buf = Vec::new();
            for n in 1.. {
                if !next_line(&mut reader, &mut buf, path, n)? {
                    break;
                }
                // a line cut short by a kill is skipped here as in the check
                match serde_json::from_slice::<LedgerRecord>(&buf) {
                    Ok(LedgerRecord::Run { run: r, .. }) => run = run.max(r),
                    Ok(LedgerRecord::Intent { seq: s, .. } | LedgerRecord::Ack { seq: s, .. }) => {
                        seq = seq.max(s)
                    }
                    Err(_) => {}
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(file_err(path))?;
        // a torn last line (a kill mid-write) must not swallow the next record
        let meta = file.metadata().map_err(file_err(path))?;
        let (regular, len) = (meta.is_file(), meta.len());
        if regular && len > 0 {
            let mut last = [0u8; 1];
            let mut reader = File::open(path).map_err(file_err(path))?;
            reader
                .seek(SeekFrom::Start(len - 1))
                .and_then(|_| reader.read_exact(&mut last))
                .map_err(file_err(path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(file_err(path))?;
            }
        }
        let writer = Self {
            path: path.to_owned(),
            run: run + 1,
            state: Arc::new(Mutex::new(WriterState {
                out: file,
                regular,
                next_seq: seq + 1,
                unsynced: 0,
                lines: 0,
                broken: None,
            })),
        };
        writer.append(&LedgerRecord::Run {
            run: writer.run,
            seed,
            at: Utc::now(),
        })?;
        writer.sync()?;
        Ok(writer)
    }

    /// This writer's run number (1 for a new file).
    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands one record to the kernel in one `write` of the whole line.
    fn append(&self, record: &LedgerRecord) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(record).map_err(|e| LedgerError::File {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut state = self.lock();
        state.usable(&self.path)?;
        if let Err(e) = state.out.write_all(&line) {
            return Err(state.fail(&self.path, e));
        }
        state.unsynced += 1;
        state.lines += 1;
        Ok(())
    }

    fn take_seq(&self) -> u64 {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        seq
    }

    /// Records that a call is about to be made, handing the bytes to the kernel before it
    /// returns (a `kill -9` of this process cannot lose them). Returns the call's number.
    pub fn intent(
        &self,
        op: &str,
        container: &str,
        key: Uuid,
        groups: Groups,
    ) -> Result<u64, LedgerError> {
        let seq = self.take_seq();
        self.append(&LedgerRecord::Intent {
            seq,
            op: op.to_owned(),
            container: container.to_owned(),
            key,
            groups,
        })?;
        Ok(seq)
    }

    /// Records an acknowledged call, handed to the kernel before it returns (fsynced with the
    /// next [`LedgerWriter::sync`]).
    #[allow(clippy::too_many_arguments)]
    pub fn ack(
        &self,
        call: u64,
        phase: Phase,
        phase_after: Phase,
        op: &str,
        container: &str,
        key: Uuid,
        groups: Groups,
    ) -> Result<(), LedgerError> {
        let seq = self.take_seq();
        self.append(&LedgerRecord::Ack {
            seq,
            call,
            at: Utc::now(),
            phase,
            phase_after: (phase_after != phase).then_some(phase_after),
            op: op.to_owned(),
            container: container.to_owned(),
            key,
            groups,
        })
    }

    /// Fsyncs the records written since the last sync. Returns how many records it made
    /// durable. A pipe or a device is not fsynced (it has nothing to sync).
    pub fn sync(&self) -> Result<u64, LedgerError> {
        let mut state = self.lock();
        state.usable(&self.path)?;
        if state.unsynced == 0 {
            return Ok(0);
        }
        if state.regular
            && let Err(e) = state.out.sync_data()
        {
            return Err(state.fail(&self.path, e));
        }
        Ok(std::mem::take(&mut state.unsynced))
    }

    /// Lines this writer appended.
    pub fn lines(&self) -> u64 {
        self.lock().lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::expectations::read_ledger;
    use crate::ledger::groups::FieldGroups;

    #[test]
    fn a_restart_after_a_torn_line_continues_the_numbering_on_a_new_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.jsonl");
        let key = Uuid::new_v4();
        let w = LedgerWriter::open(&path, 1).expect("open");
        let call = w
            .intent(
                "profile.onboard",
                "UserProfiles",
                key,
                FieldGroups::onboarded(key, true),
            )
            .expect("intent");
        w.sync().expect("sync");
        drop(w);
        // a kill in the middle of writing the acknowledgement
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"{\"kind\":\"ack\",\"seq\":3,\"ca")
            .expect("torn line");
        drop(f);

        let w = LedgerWriter::open(&path, 1).expect("reopen");
        assert_eq!(w.run(), 2);
        let next = w
            .intent(
                "account.login",
                "Accounts",
                key,
                FieldGroups::login(key, Utc::now()),
            )
            .expect("intent");
        assert!(next > call);
        w.sync().expect("sync");

        let (expectations, report) = read_ledger(&path).expect("read");
        assert_eq!((report.runs, report.intents, report.acks), (2, 2, 0));
        assert_eq!(report.torn_lines, 1);
        assert_eq!(report.unacknowledged, 2);
        // an unacknowledged call promises nothing
        assert!(
            expectations
                .values()
                .flat_map(|g| g.values())
                .all(|e| e.last_ack.is_none())
        );
    }

    /// Found by review (issue 29): `loadgen --ledger /dev/full` grew to 24 GiB. Opening the
    /// ledger scanned the existing "file" for earlier runs line by line, and `/dev/full` reads
    /// as an endless run of zero bytes without a newline: one line, growing until the kernel
    /// killed the process. A device is not scanned now (the write then fails at once), and a
    /// reader gives up on a line longer than `MAX_LINE`.
    #[test]
    fn a_device_that_never_ends_a_line_is_refused_not_read_forever() {
        let full = Path::new("/dev/full");
        match LedgerWriter::open(full, 1) {
            Err(LedgerError::File { path, source }) => {
                assert_eq!(path, full);
                assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}");
            }
            other => panic!("writing to /dev/full must fail at once: {other:?}"),
        }
        match read_ledger(Path::new("/dev/zero")) {
            Err(LedgerError::LineTooLong { line: 1, .. }) => {}
            other => panic!("an endless line must be refused: {:?}", other.map(|r| r.1)),
        }
    }

    #[test]
    fn a_failed_write_breaks_the_writer_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = LedgerWriter::open(&dir.path().join("ledger.jsonl"), 1).expect("open");
        let key = Uuid::new_v4();
        w.intent("profile.onboard", "UserProfiles", key, Groups::new())
            .expect("intent");
        // the file is swapped for a device whose writes fail, as a full disk would
        w.lock().out = OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("/dev/full");
        assert!(matches!(
            w.intent("profile.onboard", "UserProfiles", key, Groups::new()),
            Err(LedgerError::File { .. })
        ));
        // nothing is written after a gap, also not once writes would work again
        w.lock().out = OpenOptions::new()
            .append(true)
            .open(dir.path().join("ledger.jsonl"))
            .expect("reopen");
        assert!(matches!(
            w.intent("profile.onboard", "UserProfiles", key, Groups::new()),
            Err(LedgerError::Broken { .. })
        ));
        assert!(matches!(w.sync(), Err(LedgerError::Broken { .. })));
        assert_eq!(w.lines(), 2, "the run record and the first intent");
    }
}
