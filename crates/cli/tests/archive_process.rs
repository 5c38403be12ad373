//! `archive`, `archive verify` and `restore` as processes, against the Cosmos-protocol test
//! server in `COSMOS_ENDPOINT` and the PostgreSQL server in `DATABASE_URL` (both started by
//! `./scripts/test`): an archive of a live account holds every document as the server does and
//! restores into an empty database identical document for document (read back with
//! `cosmos export`, system properties aside); `archive verify` names a chunk with one flipped
//! byte and compares counts with PostgreSQL; `kill -9` at a chunk during `archive` and during
//! `restore`, then a re-run, ends where an uninterrupted run ends.
#![allow(clippy::unwrap_used)]

mod support;
use mystira_test_support::postgres::fresh_database;

use support::archive_rig::{
    CONTAINERS, Documents, add_chunk, archive_to, command, kill_at, path, read_back, restore_from,
    run, seeded_source, succeed, without_system,
};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// Every document in an archive's chunks, decompressed independently of the binary.
fn archived(dir: &Path) -> Documents {
    let mut out = Documents::new();
    for chunk in manifest(dir)["chunks"].as_array().unwrap() {
        let file = chunk["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        add_chunk(&mut out, chunk["container"].as_str().unwrap(), file, &bytes);
    }
    out
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn archive(cosmos_db: &str, out: &Path) -> Command {
    archive_to(cosmos_db, path(out))
}

fn restore(archive: &Path, target: &str, extra: &[&str]) -> Command {
    restore_from(path(archive), target, extra)
}

#[test]
fn an_archive_of_a_live_account_restores_into_an_empty_database_identical_document_for_document() {
    let (source_db, in_source) = seeded_source("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");

    let report = succeed(archive(&source_db, &out));
    assert_eq!(report["outcome"], "created");
    // every document exactly as the server holds it, system properties included
    let in_archive = archived(&out);
    assert_eq!(
        in_archive, in_source,
        "the archive is not what the server holds"
    );
    let m = manifest(&out);
    for c in m["containers"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let n = in_source.keys().filter(|(k, _)| k == name).count() as u64;
        assert_eq!(c["documents"], n, "{name}");
        assert!(c["started_at"].is_string(), "{name}");
    }
    // the two seconds of writes split a container into `_ts` ranges, read in parallel
    assert!(
        m["containers"][0]["ranges"].as_array().unwrap().len() > 1,
        "Accounts was read as one range: {}",
        m["containers"][0]["ranges"]
    );
    for chunk in m["chunks"].as_array().unwrap() {
        assert!(chunk["documents"].as_u64().unwrap() <= 5, "{chunk}");
        assert_eq!(chunk["sha256"].as_str().unwrap().len(), 64, "{chunk}");
        let size = std::fs::metadata(out.join(chunk["file"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(chunk["bytes"], size, "{chunk}");
    }
    let (code, _, text) = run(command(&source_db, &["archive", "verify", path(&out)]));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("not compared with PostgreSQL"), "{text}");

    // a second archive run on the finished archive reads nothing
    let again = succeed(archive(&source_db, &out));
    assert_eq!(again["outcome"], "complete");
    assert_eq!(again["chunks_written"], 0);
    // nor does one pointed at another database: positions of one mean nothing in another
    let (code, _, text) = run(archive("another-database", &out));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is of cosmos database"), "{text}");

    // restore into an empty database; read back independently
    let target = format!("{source_db}-restored");
    let restored = succeed(restore(&out, &target, &[]));
    assert_eq!(restored["outcome"], "restored", "{restored}");
    assert_eq!(restored["matches"], true, "{restored}");
    for c in CONTAINERS {
        let n = in_source.keys().filter(|(k, _)| k == c).count() as u64;
        assert_eq!(restored["target"][c]["identical"], n, "{c}: {restored}");
    }
    let in_target = read_back(&target);
    assert_eq!(
        without_system(&in_target),
        without_system(&in_source),
        "the restored database differs from the source"
    );
    // the target gave every document its own new system properties
    assert!(
        in_target
            .values()
            .all(|d| d["_etag"].is_string() && d["_ts"].is_u64())
    );

    // idempotent: the finished restore is not repeated
    let repeated = succeed(restore(&out, &target, &[]));
    assert_eq!(repeated["outcome"], "already_restored", "{repeated}");
    assert_eq!(repeated["chunks_applied"], 0, "{repeated}");
    // and it reads the target back: a document changed there since is named
    let (key, doc) = in_target
        .iter()
        .find(|((c, _), _)| c == "Accounts")
        .unwrap();
    let mut changed = doc.clone();
    changed["Tampered"] = Value::Bool(true);
    let tamper = tempfile::tempdir().unwrap();
    std::fs::write(tamper.path().join("Accounts.jsonl"), format!("{changed}\n")).unwrap();
    succeed(command(
        &target,
        &["cosmos", "import", "--export-dir", path(tamper.path())],
    ));
    let (code, checked, text) = run(restore(&out, &target, &[]));
    assert_eq!(code, 1, "{text}");
    assert_eq!(checked["matches"], false, "{text}");
    assert_eq!(checked["target"]["Accounts"]["differing"], 1, "{text}");
    assert_eq!(
        checked["target"]["Accounts"]["examples"][0],
        key.1.as_str(),
        "{text}"
    );

    // a non-empty target is refused, and nothing is written into it
    let (code, refused, text) = run(restore(&out, &source_db, &[]));
    assert_eq!(code, 3, "{text}");
    assert_eq!(refused["refused"], "target_not_empty", "{text}");
    assert_eq!(
        read_back(&source_db),
        in_source,
        "the refused restore wrote"
    );
    // with --merge it upserts over it: the same documents (new _ts and _etag)
    let merged = succeed(restore(&out, &source_db, &["--merge"]));
    assert_eq!(merged["outcome"], "restored", "{merged}");
    assert_eq!(
        without_system(&read_back(&source_db)),
        without_system(&in_source)
    );
}

#[tokio::test]
async fn archive_verify_names_a_chunk_with_one_flipped_byte_and_compares_counts_with_postgresql() {
    let (source_db, in_source) = seeded_source("verify");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");
    succeed(archive(&source_db, &out));

    // PostgreSQL migrated from the same account: its counts are the archive's
    let db = fresh_database("archive_verify").await;
    succeed(command(
        &source_db,
        &["migrate", "--json", "--database-url", &db],
    ));
    let verify = |extra: &[&str]| {
        let mut args = vec!["archive", "verify", "--json", path(&out)];
        args.extend_from_slice(extra);
        run(command(&source_db, &args))
    };
    let (code, report, text) = verify(&["--database-url", &db]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["postgres_compared"], true, "{text}");
    let quarantined: i64 = {
        let mut conn = PgConnection::connect(&db).await.unwrap();
        sqlx::query_scalar("select count(*) from migration.quarantine where resolved_at is null")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert!(
        quarantined > 0,
        "the generated data set has no problem documents"
    );
    for c in CONTAINERS {
        let n = in_source.keys().filter(|(k, _)| k == c).count() as u64;
        assert_eq!(report["containers"][c]["postgres"], n, "{c}: {text}");
    }

    // PostgreSQL hears of a delete the archive does not hold: the count differs, named
    let mut conn = PgConnection::connect(&db).await.unwrap();
    sqlx::query(
        "update migration.document_versions set deleted = true
         where (container, document_id) = (
             select container, document_id from migration.document_versions v
             where container = 'UserProfiles' and not exists (
                 select 1 from migration.quarantine q
                 where q.container = v.container and q.document_id = v.document_id)
             limit 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, report, text) = verify(&["--database-url", &db]);
    assert_eq!(code, 1, "{text}");
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{text}");
    assert_eq!(findings[0]["code"], "postgres_count_differs", "{text}");
    assert_eq!(findings[0]["container"], "UserProfiles", "{text}");

    // one flipped byte in one chunk: exit 1, the chunk named
    let m = manifest(&out);
    let victim = m["chunks"][2]["file"].as_str().unwrap().to_owned();
    let file = out.join(&victim);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    let (code, report, text) = verify(&[]);
    assert_eq!(code, 1, "{text}");
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{text}");
    assert_eq!(findings[0]["code"], "chunk_hash_differs", "{text}");
    assert_eq!(findings[0]["chunk"], victim.as_str(), "{text}");
    let (code, _, human) = run(command(&source_db, &["archive", "verify", path(&out)]));
    assert_eq!(code, 1);
    assert!(human.contains(&victim), "the chunk is not named: {human}");
    // and restore refuses the damaged archive before writing anything
    let target = format!("{source_db}-damaged");
    let (code, _, text) = run(restore(&out, &target, &[]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&victim), "{text}");
    assert!(
        read_back(&target).is_empty(),
        "a damaged archive was restored"
    );

    // a chunk file the manifest does not list is a finding too
    bytes[at] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    std::fs::write(out.join("Accounts/r009-c000001.jsonl.zst"), b"stray").unwrap();
    let (code, report, text) = verify(&[]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["findings"][0]["code"], "chunk_not_listed", "{text}");
    assert_eq!(
        report["findings"][0]["chunk"],
        "Accounts/r009-c000001.jsonl.zst"
    );
}

#[test]
fn archive_killed_at_a_chunk_resumes_to_the_archive_of_an_uninterrupted_run() {
    let (source_db, in_source) = seeded_source("archive-kill");
    let dir = tempfile::tempdir().unwrap();
    // killed after a chunk is recorded, and after a chunk file is renamed into place but before
    // the manifest records it (the re-run must remove that file and read its documents again)
    for point in ["archive-recorded:2", "archive-renamed:3"] {
        let out = dir.path().join(point.replace(':', "-"));
        kill_at(archive(&source_db, &out), point);
        let before = manifest(&out);
        assert!(
            before["finished_at"].is_null(),
            "{point}: finished before the kill"
        );
        let recorded = before["chunks"].as_array().unwrap().len();
        // `archive-renamed:3` stops with the third chunk on disk, unrecorded
        assert_eq!(recorded, 2, "{point}");
        let (code, report, text) = run(command(
            &source_db,
            &["archive", "verify", "--json", path(&out)],
        ));
        assert_eq!(code, 1, "{point}: a stopped archive passed verify: {text}");
        let codes: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert!(codes.contains(&"unfinished"), "{point}: {codes:?}");
        if point.starts_with("archive-renamed") {
            assert!(codes.contains(&"chunk_not_listed"), "{point}: {codes:?}");
        }

        let resumed = succeed(archive(&source_db, &out));
        assert_eq!(resumed["outcome"], "resumed", "{point}");
        let removed = if point.starts_with("archive-renamed") {
            1
        } else {
            0
        };
        assert_eq!(resumed["orphans_removed"], removed, "{point}");
        // the chunks finished before the kill are kept as they were
        let after = manifest(&out);
        assert_eq!(
            after["chunks"].as_array().unwrap()[..recorded],
            before["chunks"].as_array().unwrap()[..],
            "{point}"
        );
        assert_eq!(
            archived(&out),
            in_source,
            "{point}: not the source's documents"
        );
        let (code, _, text) = run(command(&source_db, &["archive", "verify", path(&out)]));
        assert_eq!(code, 0, "{point}: {text}");
    }
}

#[test]
fn restore_killed_at_a_chunk_resumes_to_the_same_documents() {
    let (source_db, in_source) = seeded_source("restore-kill");
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("archive");
    succeed(archive(&source_db, &out));
    // killed after a chunk's documents are upserted but before its checkpoint, and after a
    // checkpoint: the re-run (no --merge: the target holds its own restore's documents)
    // continues and ends with the source's documents
    for point in ["restore-upserted:3", "restore-checkpointed:2"] {
        let target = format!("{source_db}-{}", point.replace(':', "-"));
        kill_at(restore(&out, &target, &[]), point);
        let partial = read_back(&target);
        assert!(
            !partial.is_empty() && partial.len() < in_source.len(),
            "{point}: {} of {} documents before the re-run",
            partial.len(),
            in_source.len()
        );
        let resumed = succeed(restore(&out, &target, &[]));
        assert_eq!(resumed["outcome"], "resumed", "{point}: {resumed}");
        assert_eq!(resumed["matches"], true, "{point}: {resumed}");
        let applied = resumed["chunks_applied"].as_u64().unwrap();
        let total = resumed["chunks_total"].as_u64().unwrap();
        // two chunks were checkpointed before either kill (the third, upserted, is applied again)
        assert_eq!(applied, total - 2, "{point}: {resumed}");
        assert_eq!(
            without_system(&read_back(&target)),
            without_system(&in_source),
            "{point}: the resumed restore differs from the source"
        );
    }
}

#[test]
fn a_document_written_while_archived_is_kept_at_both_versions_and_restored_at_the_later_one() {
    let (source_db, _) = seeded_source("written");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");
    // stop after the first chunk, change one of its documents in the source, then finish
    kill_at(archive(&source_db, &out), "archive-recorded:1");
    let first = manifest(&out)["chunks"][0].clone();
    let container = first["container"].as_str().unwrap().to_owned();
    let bytes = zstd::stream::decode_all(
        std::fs::File::open(out.join(first["file"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut doc: Value =
        serde_json::from_slice(bytes.split(|b| *b == b'\n').next().unwrap()).unwrap();
    doc["WrittenWhileArchived"] = Value::Bool(true);
    let change = tempfile::tempdir().unwrap();
    std::fs::write(
        change.path().join(format!("{container}.jsonl")),
        format!("{doc}\n"),
    )
    .unwrap();
    succeed(command(
        &source_db,
        &["cosmos", "import", "--export-dir", path(change.path())],
    ));

    let resumed = succeed(archive(&source_db, &out));
    assert_eq!(resumed["outcome"], "resumed");
    let entry = resumed["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container.as_str())
        .unwrap()
        .clone();
    assert!(
        entry["lines"].as_u64().unwrap() > entry["documents"].as_u64().unwrap(),
        "the changed document was not read again: {entry}"
    );
    let (code, _, text) = run(command(&source_db, &["archive", "verify", path(&out)]));
    assert_eq!(code, 0, "{text}");

    // restore applies the later version: the target is the source as it is now
    let target = format!("{source_db}-restored");
    let restored = succeed(restore(&out, &target, &[]));
    assert_eq!(restored["matches"], true, "{restored}");
    let now = read_back(&source_db);
    assert_eq!(
        now.values()
            .filter(|d| d["WrittenWhileArchived"] == true)
            .count(),
        1
    );
    assert_eq!(without_system(&read_back(&target)), without_system(&now));
}
