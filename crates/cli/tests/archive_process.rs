//! `archive`, `archive verify` and `restore` as processes, against the Cosmos-protocol test
//! server in `COSMOS_ENDPOINT` and the PostgreSQL server in `DATABASE_URL` (both started by
//! `./scripts/test`): an archive of a live account holds every document as the server does and
//! restores into an empty database identical document for document (read back with
//! `cosmos export`, system properties aside); `archive verify` names a chunk with one flipped
//! byte and compares counts with PostgreSQL; `kill -9` at a chunk during `archive` and during
//! `restore`, then a re-run, ends where an uninterrupted run ends.
#![allow(clippy::unwrap_used)]

mod support;
use support::fresh_database;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";
const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];
const SYSTEM: [&str; 5] = ["_rid", "_self", "_etag", "_ts", "_attachments"];
/// Documents per chunk in these tests: small, so a few dozen documents make many chunks.
const CHUNK: &str = "5";

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} must be set: run through ./scripts/test, or start PostgreSQL and \
             `eval \"$(tools/cosmos-server/start)\"` first"
        )
    })
}

/// The binary with the Cosmos test server's settings (database `cosmos_db`) and no database
/// url unless the arguments give one.
fn command(cosmos_db: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("MYSTIRA_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("MYSTIRA_ARCHIVE_TEST_STALL")
        .env("RUST_LOG", "warn")
        .env("COSMOS_ENDPOINT", required("COSMOS_ENDPOINT"))
        .env("COSMOS_CERT_FILE", required("COSMOS_CERT_FILE"))
        .env("SSL_CERT_FILE", required("COSMOS_CERT_FILE"))
        .env("COSMOS_KEY", EMULATOR_KEY)
        .env("COSMOS_DATABASE", cosmos_db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(mut command: Command) -> (i32, Value, String) {
    let out: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), json, text)
}

fn succeed(command: Command) -> Value {
    let (code, json, text) = run(command);
    assert_eq!(code, 0, "command failed: {text}");
    json
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The documents of export files (`cosmos export`), by container and id (a container the
/// database does not have has no file).
fn exported(dir: &Path) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for c in CONTAINERS {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{c}.jsonl"))) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let doc: Value = serde_json::from_str(line).unwrap();
            let id = doc["id"].as_str().unwrap().to_owned();
            assert!(
                out.insert((c.to_owned(), id), doc).is_none(),
                "{c}: an id twice"
            );
        }
    }
    out
}

/// What a Cosmos database holds now, read back with `cosmos export` (the SDK's plain
/// `select * from c`, none of the archive's code).
fn read_back(cosmos_db: &str) -> BTreeMap<(String, String), Value> {
    let dir = tempfile::tempdir().unwrap();
    succeed(command(
        cosmos_db,
        &["cosmos", "export", "--out", path(dir.path())],
    ));
    exported(dir.path())
}

/// The documents without the system properties Cosmos sets on every write.
fn without_system(docs: &BTreeMap<(String, String), Value>) -> BTreeMap<(String, String), Value> {
    docs.iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            for field in SYSTEM {
                v.as_object_mut().unwrap().remove(field);
            }
            (k.clone(), v)
        })
        .collect()
}

/// Every document in an archive's chunks, decompressed independently of the binary.
fn archived(dir: &Path) -> BTreeMap<(String, String), Value> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for chunk in manifest["chunks"].as_array().unwrap() {
        let file = dir.join(chunk["file"].as_str().unwrap());
        let bytes = zstd::stream::decode_all(std::fs::File::open(&file).unwrap()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let container = chunk["container"].as_str().unwrap().to_owned();
        for line in text.lines() {
            let doc: Value = serde_json::from_str(line).unwrap();
            let id = doc["id"].as_str().unwrap().to_owned();
            assert!(
                out.insert((container.clone(), id), doc).is_none(),
                "{}: a document twice in an archive of a container nobody wrote",
                file.display()
            );
        }
    }
    out
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// A source database holding generated documents written in two different seconds (so the
/// archive splits a container into `_ts` ranges), and what it holds as `cosmos export` reads
/// it.
fn seeded_source(tag: &str) -> (String, BTreeMap<(String, String), Value>) {
    let cosmos_db = format!("archive-{tag}-{}", uuid::Uuid::new_v4().simple());
    let generated = tempfile::tempdir().unwrap();
    for (i, (accounts, seed)) in [("6", "7"), ("5", "8")].into_iter().enumerate() {
        let out = generated.path().join(format!("set{i}"));
        succeed(command(
            &cosmos_db,
            &[
                "generate",
                "--accounts",
                accounts,
                "--seed",
                seed,
                "--dirty",
                "0.1",
                "--out",
                path(&out),
            ],
        ));
        succeed(command(
            &cosmos_db,
            &["cosmos", "import", "--export-dir", path(&out)],
        ));
        if i == 0 {
            // the second set must land in a later second than the first: wait (bounded) until
            // the clock the server stamps `_ts` with has passed the newest `_ts` so far
            let newest = read_back(&cosmos_db)
                .values()
                .filter_map(|d| d["_ts"].as_u64())
                .max()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                <= newest
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the clock does not move"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let docs = read_back(&cosmos_db);
    (cosmos_db, docs)
}

fn archive(cosmos_db: &str, out: &Path) -> Command {
    command(
        cosmos_db,
        &[
            "archive",
            "--json",
            "--out",
            path(out),
            "--chunk-documents",
            CHUNK,
            "--ranges",
            "3",
            "--workers",
            "2",
        ],
    )
}

fn restore(archive: &Path, target: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        "restore",
        "--json",
        path(archive),
        "--cosmos-database",
        target,
    ];
    args.extend_from_slice(extra);
    // COSMOS_DATABASE names the source: restore must not read it
    command("not-the-target", &args)
}

/// Starts `command` with the stall hook at `point`, waits (bounded) until the process says it
/// stopped there, and kills it with SIGKILL (what `kill -9` sends).
fn kill_at(mut command: Command, point: &str) {
    command.env("MYSTIRA_ARCHIVE_TEST_STALL", point);
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("test hook: stalled") => break,
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "the process never reached {point} ({e}): {}",
                    seen.join("\n")
                );
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "killed at {point}, yet it exited cleanly"
    );
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
