//! The backfill as a process: `kill -9` at several points of a real run and a re-run reaches
//! exactly the state of a clean run, row by row; two processes share one run, one is killed,
//! and the other takes its ranges over when their leases expire. Against the PostgreSQL server
//! in `DATABASE_URL` (which `./scripts/test` starts), one fresh database per run.
#![allow(clippy::unwrap_used)]

use mystira_test_support::postgres::fresh_database;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mystira_test_support::postgres::{copied_row_text, digests};
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

fn migrate(export: &Path, db: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["migrate", "--export-dir"])
        .arg(export)
        .args([
            "--database-url",
            db,
            "--batch-rows",
            "40",
            "--ranges",
            "6",
            "--json",
        ])
        .args(extra)
        .env_remove("MYSTIRA_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn generate(dir: &Path, accounts: u64) {
    let status = Command::new(BIN)
        .args([
            "generate",
            "--accounts",
            &accounts.to_string(),
            "--seed",
            "3",
            "--dirty",
            "0.05",
            "--out",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every row of every table that the backfill writes, as a digest per table. Timestamps of
/// bookkeeping (when a copy was made) are left out: they differ between any two runs.
async fn state(db: &str) -> BTreeMap<&'static str, (i64, String)> {
    let mut conn = PgConnection::connect(db).await.unwrap();
    digests(&mut conn, &TABLES, copied_row_text).await
}

async fn copied_documents(db: &str) -> i64 {
    let Ok(mut conn) = PgConnection::connect(db).await else {
        return 0;
    };
    sqlx::query_scalar("select count(*) from migration.document_versions")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0)
}

/// Waits (bounded) until at least `n` documents have been copied, then kills the child with
/// SIGKILL (what `kill -9` sends).
async fn kill_after(child: &mut Child, db: &str, n: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false; // finished before the kill point
        }
        if copied_documents(db).await >= n {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the run made no progress within two minutes");
}

fn finish(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn kill_9_at_several_points_then_rerun_reaches_the_clean_state_row_by_row() {
    let export = tempfile::tempdir().unwrap();
    generate(export.path(), 600);

    let clean_db = fresh_database("clean").await;
    let clean = finish(&mut migrate(export.path(), &clean_db, &[]));
    assert_eq!(clean["reconciled"], true);
    let expected = state(&clean_db).await;

    let db = fresh_database("killed").await;
    let mut kills = 0;
    // in Accounts, later in Accounts, in UserProfiles, in UserProfiles again
    for n in [50, 400, 900, 1700] {
        let mut child = migrate(export.path(), &db, &["--workers", "2"])
            .spawn_guarded()
            .unwrap();
        if kill_after(&mut child, &db, n).await {
            kills += 1;
        }
    }
    assert!(
        kills >= 3,
        "only {kills} kills happened: the data set is too small"
    );
    let resumed = finish(&mut migrate(export.path(), &db, &[]));
    assert_eq!(
        resumed["joined"], true,
        "the re-run must resume the killed run"
    );
    assert_eq!(resumed["reconciled"], true);
    assert_eq!(state(&db).await, expected);
}

#[tokio::test]
async fn two_processes_share_a_run_and_one_takes_over_when_the_other_is_killed() {
    let export = tempfile::tempdir().unwrap();
    generate(export.path(), 500);
    let clean_db = fresh_database("clean2").await;
    finish(&mut migrate(export.path(), &clean_db, &[]));
    let expected = state(&clean_db).await;

    let db = fresh_database("shared").await;
    let lease = ["--lease-seconds", "2", "--workers", "1"];
    let mut victim = migrate(export.path(), &db, &lease).spawn_guarded().unwrap();
    // let the victim plan the run and take a range, then start the survivor
    let deadline = Instant::now() + Duration::from_secs(60);
    while copied_documents(&db).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the first process never started copying"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survivor = migrate(export.path(), &db, &lease).spawn_guarded().unwrap();
    assert!(
        kill_after(&mut victim, &db, 300).await,
        "the victim finished before it was killed"
    );
    let out = survivor.into_inner().wait_with_output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["joined"], true,
        "the second process must join the first one's run"
    );
    assert_eq!(report["reconciled"], true);
    assert_eq!(state(&db).await, expected);
}

fn verify(export: &Path, db: &str, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["verify", "--json", "--export-dir"])
        .arg(export)
        .args(["--database-url", db])
        .args(extra)
        .env_remove("MYSTIRA_CONFIG")
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[tokio::test]
async fn verify_exits_0_when_clean_1_on_drift_2_when_it_cannot_compare_and_repair_fixes_drift() {
    let export = tempfile::tempdir().unwrap();
    generate(export.path(), 80);
    let db = fresh_database("verify").await;
    finish(&mut migrate(export.path(), &db, &[]));
    assert_eq!(verify(export.path(), &db, &[]).status.code(), Some(0));

    let mut conn = PgConnection::connect(&db).await.unwrap();
    sqlx::raw_sql("delete from completed_scenarios where ctid in (select ctid from completed_scenarios limit 3)")
        .execute(&mut conn)
        .await
        .unwrap();
    let drift = verify(export.path(), &db, &[]);
    assert_eq!(drift.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&drift.stdout).unwrap();
    assert_eq!(
        report["entities"]["completed_scenarios"]["missing"], 3,
        "{report}"
    );

    let repaired = verify(export.path(), &db, &["--repair"]);
    assert_eq!(repaired.status.code(), Some(0));
    assert_eq!(verify(export.path(), &db, &[]).status.code(), Some(0));

    let unreachable = verify(export.path(), "postgres://nobody@127.0.0.1:1/none", &[]);
    assert_eq!(unreachable.status.code(), Some(2));
}

/// The catalog of the domain tables' indexes, constraints and triggers, one line each.
async fn domain_catalog(db: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(
        "select 'index ' || indexdef from pg_indexes where schemaname = 'public'
         union all
         select 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
                || pg_get_constraintdef(oid)
         from pg_constraint where connamespace = 'public'::regnamespace
         union all
         select 'trigger ' || pg_get_triggerdef(oid) || ' ' || tgenabled::text
         from pg_trigger where not tgisinternal
         order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Per container: read and each outcome (not `superseded` or `set_aside`, which say how a
/// path got there).
fn outcomes(report: &serde_json::Value) -> Vec<(String, [serde_json::Value; 5])> {
    let job = report["job"].as_object().unwrap();
    job.iter()
        .map(|(c, n)| {
            let skipped: u64 = n["skipped"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(serde_json::Value::as_u64)
                .sum();
            (
                c.clone(),
                [
                    n["read"].clone(),
                    n["written"].clone(),
                    n["unchanged"].clone(),
                    n["quarantined"].clone(),
                    skipped.into(),
                ],
            )
        })
        .collect()
}

async fn load_stage(db: &str) -> Option<String> {
    let mut conn = PgConnection::connect(db).await.ok()?;
    sqlx::query_scalar("select stage from migration.load_state")
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn initial_load_killed_while_copying_and_while_rebuilding_reaches_the_upsert_state() {
    let export = tempfile::tempdir().unwrap();
    generate(export.path(), 600);

    // the reference: the upsert path, one clean run
    let clean_db = fresh_database("upserted").await;
    let clean = finish(&mut migrate(
        export.path(),
        &clean_db,
        &["--load-mode", "upsert"],
    ));
    assert_eq!(clean["load_path"], "upsert");
    let expected = state(&clean_db).await;
    let expected_catalog = domain_catalog(&clean_db).await;

    let db = fresh_database("initial_killed").await;
    let initial = ["--load-mode", "initial", "--workers", "2"];
    let mut kills = 0;
    // while copying: in Accounts, then in UserProfiles
    for n in [100, 1200] {
        let mut child = migrate(export.path(), &db, &initial)
            .spawn_guarded()
            .unwrap();
        if kill_after(&mut child, &db, n).await {
            kills += 1;
            assert_eq!(load_stage(&db).await.as_deref(), Some("loading"));
        }
    }
    assert_eq!(kills, 2, "both kills must land while copying");

    // while rebuilding: a reader holds pending_signups, so the rebuild waits on its key (an
    // `alter table` needs the table to itself) with the load in stage `rebuilding`
    let mut blocker = PgConnection::connect(&db).await.unwrap();
    sqlx::raw_sql("begin; select 1 from pending_signups limit 1")
        .execute(&mut blocker)
        .await
        .unwrap();
    let mut child = migrate(export.path(), &db, &initial)
        .spawn_guarded()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while load_stage(&db).await.as_deref() != Some("rebuilding") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the rebuild"
        );
        assert!(
            Instant::now() < deadline,
            "the load never reached the rebuild"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // let it get into the rebuild, then kill it there
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(load_stage(&db).await.as_deref(), Some("rebuilding"));
    child.kill().unwrap();
    child.wait().unwrap();
    sqlx::raw_sql("commit").execute(&mut blocker).await.unwrap();

    // the next run (auto) finishes the load: the same rows, counts and schema as the upserts
    let resumed = finish(&mut migrate(export.path(), &db, &[]));
    assert_eq!(resumed["load_path"], "initial");
    assert_eq!(resumed["reconciled"], true);
    assert_eq!(
        outcomes(&resumed),
        outcomes(&clean),
        "the same totals as the upsert path"
    );
    assert_eq!(load_stage(&db).await, None);
    assert_eq!(state(&db).await, expected);
    assert_eq!(domain_catalog(&db).await, expected_catalog);

    // and a later run takes the upsert path and changes nothing
    let again = finish(&mut migrate(export.path(), &db, &[]));
    assert_eq!(again["load_path"], "upsert");
    assert_eq!(state(&db).await, expected);
}

#[tokio::test]
async fn load_mode_initial_on_a_database_holding_rows_is_a_usage_error_naming_why() {
    let export = tempfile::tempdir().unwrap();
    generate(export.path(), 20);
    let db = fresh_database("initial_refused").await;
    finish(&mut migrate(export.path(), &db, &[]));
    let out = migrate(export.path(), &db, &["--load-mode", "initial", "--restart"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("accounts holds rows"), "{stderr}");
}
