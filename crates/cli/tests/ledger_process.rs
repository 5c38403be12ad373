//! `ledger check` and `loadgen` as processes, for their exit codes, against a fresh database on
//! the PostgreSQL server in `DATABASE_URL` and the Cosmos-protocol test server in
//! `COSMOS_ENDPOINT` (both started by `./scripts/test`):
//! - `ledger check` exits 4 when the ledger holds no acknowledged write (nothing to check), 3
//!   naming what waits while the retry journal table, the outbox or the local journal files
//!   hold entries, and 1 when an acknowledged write is lost;
//! - `loadgen` exits 1 at once, in bounded memory, when its ledger cannot be written, at the
//!   start (`/dev/full`) or in the middle of a run (a pipe whose reader goes away).
//!
//! Each test takes a few seconds.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as cosmos_support;
use mystira_test_support::process::SpawnGuarded;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mystira_domain::phase::Phase;
use mystira_loadtest::ledger::{FieldGroups, LedgerWriter};
use mystira_postgres::journal::{JournalOp, JournalRecord};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// One test's world: a migrated database, a Cosmos database with the user-domain containers,
/// and a scratch directory (ledgers, the local journal directory).
struct World {
    url: String,
    pool: PgPool,
    cosmos_db: String,
    work: tempfile::TempDir,
}

impl World {
    async fn new(tag: &str) -> Self {
        let url = mystira_test_support::postgres::fresh_database(tag).await;
        let (store, _repos) = cosmos_support::user_domain(tag).await;
        let world = Self {
            pool: PgPool::connect(&url).await.unwrap(),
            url,
            cosmos_db: store.database_name().to_owned(),
            work: tempfile::tempdir().unwrap(),
        };
        let out = world.run(&["db", "migrate"]);
        assert!(out.status.success(), "db migrate failed");
        world
    }

    fn journal_dir(&self) -> PathBuf {
        self.work.path().join("journal")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--database-url", &self.url])
            .current_dir(self.work.path())
            .env("COSMOS_KEY", cosmos_support::EMULATOR_KEY)
            .env("COSMOS_DATABASE", &self.cosmos_db)
            .env("MYSTIRA_JOURNAL_DIR", self.journal_dir())
            .env_remove("MYSTIRA_CONFIG")
            .env("RUST_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `ledger check --json FILE`: the exit code, the report, and the human summary's last line.
    fn check(&self, ledger: &Path) -> (i32, Value, String) {
        let ledger = ledger.to_str().unwrap();
        let json = self.run(&["ledger", "check", "--json", ledger]);
        let report: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|_| {
            panic!(
                "ledger check printed no report: {}",
                String::from_utf8_lossy(&json.stderr)
            )
        });
        let human = self.run(&["ledger", "check", ledger]);
        assert_eq!(human.status.code(), json.status.code());
        let text = String::from_utf8_lossy(&human.stdout);
        let verdict = text.lines().last().unwrap_or_default().to_owned();
        (json.status.code().unwrap(), report, verdict)
    }
}

/// A ledger whose one call, `profile.onboard` of a profile no store holds, was acknowledged
/// (`acked`, in phase 1: both stores promised) or not.
fn ledger_of_one_call(path: &Path, acked: bool) {
    let key = Uuid::new_v4();
    let groups = FieldGroups::onboarded(key, true);
    let w = LedgerWriter::open(path, 1).unwrap();
    let call = w
        .intent("profile.onboard", "UserProfiles", key, groups.clone())
        .unwrap();
    if acked {
        let phase = Phase::DualWriteCosmosRead;
        w.ack(
            call,
            phase,
            phase,
            "profile.onboard",
            "UserProfiles",
            key,
            groups,
        )
        .unwrap();
    }
    w.sync().unwrap();
}

#[tokio::test]
async fn ledger_check_exits_4_with_nothing_to_check_and_3_naming_what_waits() {
    let w = World::new("ledger_check_codes").await;

    // nothing to check: an empty ledger, and one whose every call failed
    let empty = w.work.path().join("empty.jsonl");
    std::fs::write(&empty, b"").unwrap();
    let (code, report, verdict) = w.check(&empty);
    assert_eq!(code, 4, "{verdict}");
    assert_eq!(report["verdict"], "nothing_to_check");
    assert!(verdict.contains("NOTHING TO CHECK"), "{verdict}");
    let failed = w.work.path().join("failed.jsonl");
    ledger_of_one_call(&failed, false);
    let (code, _, verdict) = w.check(&failed);
    assert_eq!(code, 4, "{verdict}");

    // an acknowledged write that no store holds: lost (1) once nothing waits, but while
    // anything waits the check proves nothing (3), and says what waits
    let ledger = w.work.path().join("ledger.jsonl");
    ledger_of_one_call(&ledger, true);
    let (code, report, verdict) = w.check(&ledger);
    assert_eq!(code, 1, "{verdict}");
    assert_eq!(
        report["lost"].as_array().unwrap().len(),
        2,
        "in both stores"
    );
    assert!(verdict.contains("FAIL"), "{verdict}");

    // a local journal file of a router on this machine
    std::fs::create_dir_all(w.journal_dir()).unwrap();
    let file = w.journal_dir().join("journal-1-1.jsonl");
    std::fs::write(&file, b"{}\n").unwrap();
    let (code, report, verdict) = w.check(&ledger);
    assert_eq!(code, 3, "{verdict}");
    assert_eq!(report["verdict"], "not_drained");
    assert_eq!(report["backlog"]["journal_file_records"], 1);
    assert!(verdict.contains("local journal files"), "{verdict}");
    std::fs::remove_file(&file).unwrap();

    // a row in the outbox
    mystira_postgres::outbox::enqueue(&w.pool, "Accounts", Uuid::new_v4())
        .await
        .unwrap();
    let (code, report, verdict) = w.check(&ledger);
    assert_eq!(code, 3, "{verdict}");
    assert_eq!(report["backlog"]["outbox_rows"], 1);
    assert!(verdict.contains("outbox (migration.outbox)"), "{verdict}");
    sqlx::query("delete from migration.outbox")
        .execute(&w.pool)
        .await
        .unwrap();

    // an entry in the retry journal table
    let record = JournalRecord {
        container: "Accounts".to_owned(),
        document_id: Uuid::new_v4().to_string(),
        op: JournalOp::Delete {
            key: Uuid::new_v4(),
            source_ts: 0,
        },
    };
    mystira_postgres::journal::append(&w.pool, &[record], "router")
        .await
        .unwrap();
    let (code, report, verdict) = w.check(&ledger);
    assert_eq!(code, 3, "{verdict}");
    assert_eq!(report["backlog"]["journal_entries"], 1);
    assert!(verdict.contains("migration.retry_journal"), "{verdict}");
}

/// `/dev/full` took every write and then grew without bound while `loadgen` opened it (read as
/// one endless line). Now the first write fails and the run stops: exit 1 within seconds,
/// under an address-space limit that the old growth broke within a second or two.
#[tokio::test]
async fn loadgen_stops_at_once_when_its_ledger_cannot_be_written() {
    let w = World::new("loadgen_dev_full").await;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"ulimit -v 4194304 && exec "$@""#)
        .arg("sh")
        .arg(BIN);
    let loadgen = w.command(&[
        "loadgen",
        "--ledger",
        "/dev/full",
        "--rate",
        "50",
        "--duration",
        "60s",
    ]);
    c.args(loadgen.get_args())
        .envs(loadgen.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("MYSTIRA_CONFIG")
        .current_dir(w.work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn_guarded().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("loadgen kept running on a ledger it cannot write");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.into_inner().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ledger file /dev/full") && stderr.contains("No space left on device"),
        "{stderr}"
    );
}

/// A ledger write that fails in the middle of a run: the run stops there, and `loadgen`
/// prints what it did until then and exits 1 (it exited 0 after the whole --duration).
#[tokio::test]
async fn loadgen_exits_1_when_a_ledger_write_fails_during_the_run() {
    let w = World::new("loadgen_pipe").await;
    let pipe = w.work.path().join("ledger.pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let mut child = w
        .command(&[
            "loadgen",
            "--ledger",
            pipe.to_str().unwrap(),
            "--rate",
            "50",
            "--duration",
            "120s",
            "--drain-timeout",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_guarded()
        .unwrap();
    // the reader: once 20 records have arrived it goes away, and the next write fails
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_pipe = pipe.clone();
    std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::open(reader_pipe).unwrap());
        let seen = reader.lines().take(20).count();
        let _ = tx.send(seen);
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("loadgen wrote no 20 ledger records in 30 s");
    assert_eq!(seen, 20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("loadgen went on after its ledger failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.into_inner().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("could not be written") && stdout.contains("the run was stopped at once"),
        "{stdout}"
    );
    assert!(
        stdout.contains("loadgen run 1"),
        "the report of the run so far: {stdout}"
    );
}
