//! Local journal files against real files and a real PostgreSQL (`sqlx::test`): a failed
//! append never glues the next acknowledged record to a torn line, a torn last line is skipped,
//! a record an older writer glued to a torn line is recovered, and a file with an unreadable
//! line before its last is replayed and then kept as damaged, not deleted.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mystira_cosmos_codec::codec::Container;
use mystira_cosmos_codec::generate::{GenerateOptions, documents_of};
use mystira_dual_write::journal::{FileJournal, replay_files};
use mystira_postgres::journal::{JournalOp, JournalRecord};
use serde_json::Value;
use sqlx::PgPool;

/// `n` account upserts, as the router journals them (generated, valid documents).
fn records(n: usize, seed: u64) -> Vec<JournalRecord> {
    documents_of(&GenerateOptions {
        accounts: n as u64,
        seed,
        dirty: 0.0,
    })
    .filter(|d| d.container == Container::Accounts)
    .take(n)
    .map(|d| JournalRecord {
        container: "Accounts".to_owned(),
        document_id: d.value["id"].as_str().unwrap().to_owned(),
        op: JournalOp::Upsert { document: d.value },
    })
    .collect()
}

fn line(record: &JournalRecord) -> Vec<u8> {
    let mut out = serde_json::to_vec(record).unwrap();
    out.push(b'\n');
    out
}

/// The journal files (`*.jsonl`) in `dir`, by name.
fn journal_files(dir: &Path, ending: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(ending))
        .collect();
    out.sort();
    out
}

async fn landed(pool: &PgPool, record: &JournalRecord) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from migration.document_versions
                        where container = $1 and document_id = $2)",
    )
    .bind(&record.container)
    .bind(&record.document_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_failed_append_does_not_glue_the_next_acknowledged_record_to_its_torn_line(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path()).unwrap();
    let [first, torn, acknowledged]: [JournalRecord; 3] = records(3, 21).try_into().unwrap();
    files.append(std::slice::from_ref(&first)).unwrap();

    // The next append fails after part of its record reached the file, cut inside a
    // two-byte character (as a full disk or an I/O error can leave it).
    let mut torn = torn;
    if let JournalOp::Upsert { document } = &mut torn.op {
        document["DisplayName"] = Value::String("Zoë".to_owned());
    }
    let torn_bytes = line(&torn);
    let cut = torn_bytes
        .windows(2)
        .position(|w| w == "ë".as_bytes())
        .unwrap()
        + 1;
    files.cut_next_append(cut);
    assert!(files.append(std::slice::from_ref(&torn)).is_err());
    assert!(
        !files.has_open_file(),
        "the file of a failed append is sealed"
    );

    // The caller retries elsewhere; the next write is journalled and acknowledged.
    files.append(std::slice::from_ref(&acknowledged)).unwrap();
    files.seal();

    let written = journal_files(dir.path(), ".jsonl");
    assert_eq!(
        written.len(),
        2,
        "the record after the failure started a new file"
    );
    for path in &written {
        let bytes = std::fs::read(path).unwrap();
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        // every line but the last (the torn one, or what follows the final newline) is a record
        for line in &lines[..lines.len() - 1] {
            assert!(
                serde_json::from_slice::<JournalRecord>(line).is_ok(),
                "a whole record on its own line in {}",
                path.display()
            );
        }
    }
    assert_eq!(
        std::fs::read(&written[0]).unwrap(),
        [line(&first), torn_bytes[..cut].to_vec()].concat(),
        "the failed file ends with the torn line"
    );

    let report = replay_files(&pool, &files, None).await.unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(report.torn_lines, 1, "the torn line is skipped and counted");
    assert_eq!((report.files_done, report.damaged_files), (2, 0));
    assert!(
        landed(&pool, &acknowledged).await,
        "the acknowledged record landed"
    );
    assert!(landed(&pool, &first).await);
    assert!(
        !landed(&pool, &torn).await,
        "the torn write was never acknowledged"
    );
    let depth = files.pending().unwrap();
    assert_eq!((depth.files, depth.records, depth.damaged_files), (0, 0, 0));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn an_unreadable_line_before_the_last_keeps_the_file_after_its_records_are_replayed(
    pool: PgPool,
) {
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path()).unwrap();
    let [before, after]: [JournalRecord; 2] = records(2, 22).try_into().unwrap();
    // A block of zeros in the middle (what a filesystem can leave after a crash): damage, not
    // a torn write, since a torn write is always the last line of its file.
    let path = dir.path().join("journal-1-1.jsonl");
    std::fs::write(
        &path,
        [line(&before), vec![0u8; 32], b"\n".to_vec(), line(&after)].concat(),
    )
    .unwrap();

    let report = replay_files(&pool, &files, None).await.unwrap();
    assert_eq!(report.applied, 2, "every readable record is replayed");
    assert!(landed(&pool, &before).await && landed(&pool, &after).await);
    assert_eq!((report.damaged_files, report.damaged_lines), (1, 1));
    assert_eq!((report.files_done, report.torn_lines), (0, 0));
    assert!(!path.exists());
    assert_eq!(
        journal_files(dir.path(), ".jsonl.damaged"),
        vec![dir.path().join("journal-1-1.jsonl.damaged")],
        "the file is kept, renamed, for an operator"
    );
    let depth = files.pending().unwrap();
    assert_eq!((depth.files, depth.damaged_files), (0, 1), "and counted");

    // It is not replayed again on every pass.
    let again = replay_files(&pool, &files, None).await.unwrap();
    assert_eq!(
        (again.applied, again.damaged_files, again.files_done),
        (0, 0, 0)
    );
    assert_eq!(files.pending().unwrap().damaged_files, 1);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_record_an_older_writer_glued_to_a_torn_line_is_recovered(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path()).unwrap();
    let [first, torn, glued, last]: [JournalRecord; 4] = records(4, 23).try_into().unwrap();
    // An older writer kept appending after a failed write: the next record went on the torn
    // line.
    let torn_bytes = line(&torn);
    let path = dir.path().join("journal-1-1.jsonl");
    std::fs::write(
        &path,
        [
            line(&first),
            torn_bytes[..torn_bytes.len() / 2].to_vec(),
            line(&glued),
            line(&last),
        ]
        .concat(),
    )
    .unwrap();

    let report = replay_files(&pool, &files, None).await.unwrap();
    assert_eq!(report.applied, 3);
    assert!(
        landed(&pool, &glued).await,
        "the record behind the torn line landed"
    );
    assert!(landed(&pool, &first).await && landed(&pool, &last).await);
    assert!(!landed(&pool, &torn).await);
    assert_eq!(
        (report.torn_lines, report.files_done, report.damaged_files),
        (1, 1, 0)
    );
    assert!(!path.exists());
}
