//! `mystira-users replicate` as a process, against the PostgreSQL server in `DATABASE_URL` and
//! the Cosmos-protocol test server in `COSMOS_ENDPOINT` (both started by `./scripts/test`):
//! killed with SIGKILL at several points of a run and restarted, it ends row by row where a
//! clean run ends. The Cosmos data is written with `cosmos import` (upserts: what the app
//! does when it writes to Cosmos directly).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mystira_test_support::cosmos::EMULATOR_KEY;
use mystira_test_support::postgres::{copied_row_text, digests, fresh_database};
use mystira_test_support::process::SpawnGuarded;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
const TABLES: [&str; 9] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
    "migration.quarantine",
    "migration.document_notes",
    "migration.document_versions",
];

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} must be set: run through ./scripts/test, or start PostgreSQL and \
             `eval \"$(tools/cosmos-server/start)\"` first"
        )
    })
}

/// The binary with the Cosmos test server's settings and database `cosmos_db`.
fn command(cosmos_db: &str, pg: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("MYSTIRA_CONFIG")
        .env("COSMOS_ENDPOINT", required("COSMOS_ENDPOINT"))
        .env("COSMOS_CERT_FILE", required("COSMOS_CERT_FILE"))
        .env("SSL_CERT_FILE", required("COSMOS_CERT_FILE"))
        .env("COSMOS_KEY", EMULATOR_KEY)
        .env("COSMOS_DATABASE", cosmos_db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(pg) = pg {
        c.args(["--database-url", pg]);
    }
    c
}

fn succeed(mut command: Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn generate(dir: &Path, accounts: u64, seed: u64) {
    let status = Command::new(BIN)
        .args(["generate", "--accounts", &accounts.to_string()])
        .args(["--seed", &seed.to_string(), "--dirty", "0.05", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Loads export files into Cosmos. Lines the generator made unloadable on purpose (no
/// partition-key value) are rejected by the import and make it exit non-zero; that is fine.
fn import(cosmos_db: &str, dir: &Path) {
    let mut c = command(cosmos_db, None, &["cosmos", "import", "--export-dir"]);
    c.arg(dir);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("imported") && out.status.code().is_some_and(|c| c != 2),
        "import failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every row of every table replication writes, as a digest per table (bookkeeping times
/// left out).
async fn state(db: &str) -> BTreeMap<&'static str, (i64, String)> {
    let mut conn = PgConnection::connect(db).await.unwrap();
    digests(&mut conn, &TABLES, copied_row_text).await
}

/// Documents written or re-written by replication since `since` (a PostgreSQL timestamp).
async fn replicated_since(db: &str, since: &str) -> i64 {
    let Ok(mut conn) = PgConnection::connect(db).await else {
        return 0;
    };
    sqlx::query_scalar(
        "select count(*) from migration.document_versions where written_at > $1::timestamptz",
    )
    .bind(since)
    .fetch_one(&mut conn)
    .await
    .unwrap_or(0)
}

/// Waits (bounded) until `n` documents were replicated, then SIGKILLs the child. `false` when
/// the child had already exited.
async fn kill_after(child: &mut Child, db: &str, since: &str, n: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if replicated_since(db, since).await >= n {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the replicator made no progress within two minutes");
}

#[tokio::test]
async fn replicate_killed_with_sigkill_mid_run_and_restarted_ends_row_by_row_equal_to_a_clean_run()
{
    let cosmos_db = format!("replproc-{}", uuid::Uuid::new_v4().simple());
    let before = tempfile::tempdir().unwrap();
    generate(before.path(), 60, 3);
    import(&cosmos_db, before.path());

    // Both databases start from the same backfill.
    let clean_db = fresh_database("repl_clean").await;
    let killed_db = fresh_database("repl_killed").await;
    for db in [&clean_db, &killed_db] {
        succeed(command(&cosmos_db, Some(db), &["migrate", "--json"]));
    }

    // The app writes to Cosmos directly: new accounts, profiles and sign-ups, and updates of
    // documents the backfill already copied.
    let after = tempfile::tempdir().unwrap();
    generate(after.path(), 120, 4);
    import(&cosmos_db, after.path());
    let updates = tempfile::tempdir().unwrap();
    let accounts = std::fs::read_to_string(before.path().join("Accounts.jsonl")).unwrap();
    let renamed: String = accounts
        .lines()
        .map(|l| l.replacen("\"DisplayName\":\"", "\"DisplayName\":\"Renamed ", 1) + "\n")
        .collect();
    std::fs::write(updates.path().join("Accounts.jsonl"), renamed).unwrap();
    import(&cosmos_db, updates.path());

    let once = [
        "replicate",
        "--once",
        "--json",
        "--delete-check-seconds",
        "0",
    ];
    let clean = succeed(command(&cosmos_db, Some(&clean_db), &once));
    assert_eq!(clean["reconciled"], true);
    assert!(
        clean["containers"]["Accounts"]["written"].as_u64().unwrap() >= 120,
        "the new and the updated accounts were written"
    );
    let expected = state(&clean_db).await;
    let again = succeed(command(&cosmos_db, Some(&clean_db), &once));
    assert_eq!(again["containers"]["Accounts"]["read"], 0, "caught up");
    assert_eq!(
        state(&clean_db).await,
        expected,
        "a second run changes nothing"
    );

    // Small pages, so that a kill lands between a write and its checkpoint often.
    let mut conn = PgConnection::connect(&killed_db).await.unwrap();
    let since: String = sqlx::query_scalar("select now()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let continuous = [
        "replicate",
        "--page-size",
        "3",
        "--workers",
        "1",
        "--poll-ms",
        "50",
        "--lease-seconds",
        "60",
    ];
    let mut kills = 0;
    for n in [20, 150, 300] {
        let mut child = command(&cosmos_db, Some(&killed_db), &continuous)
            .spawn_guarded()
            .unwrap();
        if kill_after(&mut child, &killed_db, &since, n).await {
            kills += 1;
        }
    }
    assert!(kills >= 2, "only {kills} kills happened");
    // The restart takes the dead process's ranges at once (its pid is gone), not after the
    // 60 s lease.
    let resumed = succeed(command(&cosmos_db, Some(&killed_db), &once));
    assert_eq!(resumed["reconciled"], true);
    assert_eq!(state(&killed_db).await, expected);
}

#[tokio::test]
async fn sigterm_stops_a_running_replicator_cleanly_and_releases_its_leases() {
    let cosmos_db = format!("replterm-{}", uuid::Uuid::new_v4().simple());
    let data = tempfile::tempdir().unwrap();
    generate(data.path(), 10, 5);
    import(&cosmos_db, data.path());
    let db = fresh_database("repl_term").await;
    succeed(command(&cosmos_db, Some(&db), &["db", "migrate"]));
    let child = command(
        &cosmos_db,
        Some(&db),
        &["replicate", "--json", "--poll-ms", "50"],
    )
    .spawn_guarded()
    .unwrap();
    // Bounded wait until it has caught up once (every range checkpointed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut conn = PgConnection::connect(&db).await.unwrap();
        let ready: bool = sqlx::query_scalar(
            "select count(*) = 3 and bool_and(position is not null and owner is not null)
             from migration.work_ranges where job = 'replicate'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(false);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the replicator never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.into_inner().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stopped"], true);
    let mut conn = PgConnection::connect(&db).await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "select count(*) from migration.work_ranges where job = 'replicate' and owner is not null",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(held, 0, "leases released on SIGTERM");
}
