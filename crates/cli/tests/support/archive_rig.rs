//! What the archive's process tests share (`archive_process.rs`: the archive in a folder;
//! `archive_blob.rs`: in Azure Blob Storage, on Azurite): the binary with the Cosmos-protocol
//! test server's settings, a seeded source database and what it holds as `cosmos export` reads
//! it, chunks decoded independently of the binary, and the deterministic kill (the process
//! stops at a test-hook point, then gets SIGKILL).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mystira_test_support::cosmos::EMULATOR_KEY;
use mystira_test_support::process::ChildGuard;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
/// Azurite's well-known account key (devstoreaccount1), public by design.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];
pub const SYSTEM: [&str; 5] = ["_rid", "_self", "_etag", "_ts", "_attachments"];
/// Documents per chunk in these tests: small, so a few dozen documents make many chunks.
pub const CHUNK: &str = "5";

/// Documents by container and id.
pub type Documents = BTreeMap<(String, String), Value>;

pub fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} must be set: run through ./scripts/test, or start PostgreSQL, \
             `eval \"$(tools/cosmos-server/start)\"` and `eval \"$(tools/azurite/start)\"` first"
        )
    })
}

/// The binary with the Cosmos test server's settings (database `cosmos_db`) and no database
/// url unless the arguments give one.
pub fn command(cosmos_db: &str, args: &[&str]) -> Command {
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

/// Runs it: exit code, stdout as JSON (null when it is not), stdout and stderr. No output may
/// hold a key.
pub fn run(mut command: Command) -> (i32, Value, String) {
    let out: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for key in [EMULATOR_KEY, AZURITE_KEY] {
        assert!(!text.contains(key), "a key was printed: {text}");
    }
    (out.status.code().unwrap_or(-1), json, text)
}

pub fn succeed(command: Command) -> Value {
    let (code, json, text) = run(command);
    assert_eq!(code, 0, "command failed: {text}");
    json
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The documents of export files (`cosmos export`), by container and id (a container the
/// database does not have has no file).
pub fn exported(dir: &Path) -> Documents {
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
pub fn read_back(cosmos_db: &str) -> Documents {
    let dir = tempfile::tempdir().unwrap();
    succeed(command(
        cosmos_db,
        &["cosmos", "export", "--out", path(dir.path())],
    ));
    exported(dir.path())
}

/// The documents without the system properties Cosmos sets on every write.
pub fn without_system(docs: &Documents) -> Documents {
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

/// Adds the documents of one chunk (`compressed`, named `file`, of `container`) to `out`,
/// decompressed here; a document twice is an error (the archive of a container nobody wrote
/// holds each once).
pub fn add_chunk(out: &mut Documents, container: &str, file: &str, compressed: &[u8]) {
    let bytes = zstd::stream::decode_all(compressed).unwrap();
    for line in String::from_utf8(bytes).unwrap().lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let id = doc["id"].as_str().unwrap().to_owned();
        assert!(
            out.insert((container.to_owned(), id), doc).is_none(),
            "{file}: a document twice in an archive of a container nobody wrote"
        );
    }
}

/// A manifest's chunk files and `manifest.json`, sorted: everything an archive holds.
pub fn archive_files(manifest: &Value) -> Vec<String> {
    let mut files: Vec<String> = manifest["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap().to_owned())
        .chain(["manifest.json".to_owned()])
        .collect();
    files.sort();
    files
}

/// A source database holding generated documents written in two different seconds (so the
/// archive splits a container into `_ts` ranges), and what it holds as `cosmos export` reads
/// it.
pub fn seeded_source(tag: &str) -> (String, Documents) {
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

/// `archive --json --out TARGET` in small chunks and several ranges read two at a time.
pub fn archive_to(cosmos_db: &str, target: &str) -> Command {
    command(
        cosmos_db,
        &[
            "archive",
            "--json",
            "--out",
            target,
            "--chunk-documents",
            CHUNK,
            "--ranges",
            "3",
            "--workers",
            "2",
        ],
    )
}

/// `restore --json TARGET --cosmos-database DATABASE EXTRA...`.
pub fn restore_from(archive: &str, database: &str, extra: &[&str]) -> Command {
    let mut args = vec!["restore", "--json", archive, "--cosmos-database", database];
    args.extend_from_slice(extra);
    // COSMOS_DATABASE names the source: restore must not read it
    command("not-the-target", &args)
}

/// Starts `command` with the stall hook at `point`, waits (bounded) until the process says it
/// stopped there, and kills it with SIGKILL (what `kill -9` sends).
pub fn kill_at(mut command: Command, point: &str) {
    command.env("MYSTIRA_ARCHIVE_TEST_STALL", point);
    let mut child = ChildGuard::new(command.spawn().unwrap());
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
