//! `migrate` from a live account into an empty database, as a process: the Cosmos-protocol test
//! server in `COSMOS_ENDPOINT` holds the bundled sample (loaded with `cosmos import`), and the
//! PostgreSQL server in `DATABASE_URL` gets one fresh database per run (both started by
//! `./scripts/test`). The initial load reads each document once, whatever the workers and
//! ranges, and ends where a load of the same documents from export files ends: the same
//! counts, the same documents set aside, the same rows; `quarantine list` and `report` agree
//! with its summary.
#![allow(clippy::unwrap_used)]

use mystira_test_support::postgres::fresh_database;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mystira_test_support::cosmos::EMULATOR_KEY;
use mystira_test_support::postgres::{copied_row_text, digests};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];
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

fn sample_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample"
    ))
}

/// The binary with the Cosmos test server's settings and database `cosmos_db`, or with no
/// Cosmos settings at all (`None`: the command reads export files or PostgreSQL only).
fn command(cosmos_db: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("MYSTIRA_CONFIG")
        .env_remove("COSMOS_ENDPOINT")
        .env_remove("COSMOS_KEY")
        .env_remove("COSMOS_DATABASE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(db) = cosmos_db {
        c.env("COSMOS_ENDPOINT", required("COSMOS_ENDPOINT"))
            .env("COSMOS_CERT_FILE", required("COSMOS_CERT_FILE"))
            .env("SSL_CERT_FILE", required("COSMOS_CERT_FILE"))
            .env("COSMOS_KEY", EMULATOR_KEY)
            .env("COSMOS_DATABASE", db);
    }
    c
}

fn succeed(mut command: Command) -> Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Every row of every table the backfill writes, as a digest per table (bookkeeping times
/// left out; of the quarantine, whether an entry is still open is kept).
async fn state(db: &str) -> BTreeMap<&'static str, (i64, String)> {
    let mut conn = PgConnection::connect(db).await.unwrap();
    digests(&mut conn, &TABLES, |table| match table {
        "migration.quarantine" => {
            "(t.container, t.document_id, t.reason_code, t.message, t.resolved_at is null)::text"
        }
        _ => copied_row_text(table),
    })
    .await
}

/// Lines per export file: what the live account holds, one document a line.
fn documents_per_container(dir: &Path) -> BTreeMap<String, u64> {
    CONTAINERS
        .iter()
        .map(|c| {
            let text = std::fs::read_to_string(dir.join(format!("{c}.jsonl"))).unwrap();
            ((*c).to_owned(), text.lines().count() as u64)
        })
        .collect()
}

/// A container's counts in a `migrate --json` summary or a `report --json` sheet, as the
/// outcome fields (`set_aside` and `superseded` left out: they say how a path got there).
fn outcome(counts: &Value) -> [u64; 5] {
    let skipped = counts["skipped"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    [
        counts["read"].as_u64().unwrap(),
        counts["written"].as_u64().unwrap(),
        counts["unchanged"].as_u64().unwrap(),
        counts["quarantined"].as_u64().unwrap(),
        skipped,
    ]
}

fn job_outcomes(summary: &Value) -> BTreeMap<String, [u64; 5]> {
    summary["job"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, n)| (c.clone(), outcome(n)))
        .collect()
}

/// How many open entries `quarantine list` lists (it exits 1 when there are any).
fn quarantine_listed(db: &str) -> u64 {
    let args = [
        "quarantine",
        "list",
        "--json",
        "--limit",
        "100000",
        "--database-url",
        db,
    ];
    let out = command(None, &args).output().unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "quarantine list: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resolved_at"].is_null())
        .count() as u64
}

#[tokio::test]
async fn a_live_initial_load_reads_each_document_once_and_copies_it_whatever_the_workers() {
    let cosmos_db = format!("liveload-{}", uuid::Uuid::new_v4().simple());
    let sample = sample_dir();
    let imported = command(
        Some(&cosmos_db),
        &["cosmos", "import", "--export-dir", sample.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        imported.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    // what the account holds, exported: one line per document, with its `_ts` and `_etag`
    let exported = tempfile::tempdir().unwrap();
    succeed(command(
        Some(&cosmos_db),
        &[
            "cosmos",
            "export",
            "--out",
            exported.path().to_str().unwrap(),
        ],
    ));
    let in_cosmos = documents_per_container(exported.path());

    // the reference: the same documents loaded from the export files
    let files_db = fresh_database("live_ref").await;
    let files = succeed(command(
        None,
        &[
            "migrate",
            "--json",
            "--export-dir",
            exported.path().to_str().unwrap(),
            "--database-url",
            &files_db,
        ],
    ));
    assert_eq!(files["load_path"], "initial");
    let want_outcomes = job_outcomes(&files);
    let want_set_aside = files["initial_load"]["set_aside"]["documents"].clone();
    let want_state = state(&files_db).await;

    for (workers, ranges) in [("1", "1"), ("3", "4")] {
        let db = fresh_database("live_load").await;
        let live = succeed(command(
            Some(&cosmos_db),
            &[
                "migrate",
                "--json",
                "--workers",
                workers,
                "--ranges",
                ranges,
                "--batch-rows",
                "50",
                "--database-url",
                &db,
            ],
        ));
        let setup = format!("{workers} workers, {ranges} ranges");
        assert_eq!(live["load_path"], "initial", "{setup}");
        assert_eq!(live["reconciled"], true, "{setup}");
        let outcomes = job_outcomes(&live);
        for (container, n) in &in_cosmos {
            assert_eq!(
                outcomes[container][0], *n,
                "{setup}: {container} read {} times for {n} documents",
                outcomes[container][0]
            );
        }
        assert_eq!(outcomes, want_outcomes, "{setup}: the file load's counts");

        // the COPY path: only the documents that compete with another are set aside, as
        // from the files, not every document read twice
        let set_aside = &live["initial_load"]["set_aside"];
        assert_eq!(set_aside["documents"], want_set_aside, "{setup}");
        assert!(
            set_aside["reasons"]
                .as_object()
                .unwrap()
                .keys()
                .all(|r| !r.ends_with("document_read_twice")),
            "{setup}: {set_aside}"
        );
        let total_set_aside: u64 = set_aside["documents"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert!(
            total_set_aside < in_cosmos.values().sum::<u64>() / 2,
            "{setup}: {total_set_aside} documents set aside"
        );

        // the summary's quarantine is what `quarantine list` lists
        let quarantined: u64 = outcomes.values().map(|o| o[3]).sum();
        assert_eq!(quarantined, quarantine_listed(&db), "{setup}");

        // `report` shows the run's counts
        let sheet = succeed(command(None, &["report", "--json", "--database-url", &db]));
        for container in CONTAINERS {
            assert_eq!(
                outcome(&sheet["containers"][container]["counts"]),
                outcomes[container],
                "{setup}: report, {container}"
            );
        }

        assert_eq!(
            state(&db).await,
            want_state,
            "{setup}: the file load's rows"
        );
    }
}
