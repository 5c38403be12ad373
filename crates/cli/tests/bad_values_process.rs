//! The binary with a value PostgreSQL cannot store: an export holding a NUL character in one
//! document, behind a byte-order mark, migrates every other document with exit 0, on the
//! initial load and on a re-run by upserts, and `quarantine list` names that document with
//! reason `nul_character`. Against the PostgreSQL server in `DATABASE_URL`.
#![allow(clippy::unwrap_used)]

use mystira_test_support::postgres::fresh_database;

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

fn run(args: &[&str], db: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--database-url", db, "--json"])
        .env_remove("MYSTIRA_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn migrate(export: &Path, db: &str) -> serde_json::Value {
    let out = run(
        &[
            "migrate",
            "--export-dir",
            export.to_str().unwrap(),
            "--batch-rows",
            "8",
        ],
        db,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (document id, reason) of every open quarantine entry.
fn quarantine_list(db: &str) -> Vec<(String, String)> {
    let out = run(&["quarantine", "list"], db);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["document_id"].as_str().unwrap().to_owned(),
                e["reason_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn account(id: &str, display_name: &str) -> String {
    serde_json::to_string(&serde_json::json!({
        "$type": "Account", "id": id, "Email": format!("{id}@example.com"),
        "DisplayName": display_name, "Role": "User",
        "CreatedAt": "2024-01-01T00:00:00Z", "LastLoginAt": "2024-01-02T00:00:00Z",
        "_ts": 1_700_000_000,
    }))
    .unwrap()
}

const BAD: &str = "00000000-0000-0000-0000-000000290001";
const LATER_BAD: &str = "00000000-0000-0000-0000-000000290002";

#[tokio::test]
async fn a_nul_character_in_one_document_never_stops_the_migration() {
    let export = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args([
            "generate",
            "--accounts",
            "30",
            "--seed",
            "7",
            "--dirty",
            "0",
        ])
        .arg("--out")
        .arg(export.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(export.path().join("manifest.json")).unwrap();
    let accounts = export.path().join("Accounts.jsonl");
    let generated = std::fs::read_to_string(&accounts).unwrap();
    let good = generated.lines().count() as u64;
    // a BOM, then the bad document among the good ones
    let mut lines: Vec<String> = generated.lines().map(str::to_owned).collect();
    lines.insert(5, account(BAD, "Test\u{0}Parent"));
    std::fs::write(&accounts, format!("\u{feff}{}\n", lines.join("\n"))).unwrap();

    let db = fresh_database("bad_values").await;
    let report = migrate(export.path(), &db);
    assert_eq!(report["load_path"], "initial", "{report}");
    let accounts_counts = &report["job"]["Accounts"];
    assert_eq!(accounts_counts["written"], good, "{report}");
    assert_eq!(accounts_counts["quarantined"], 1, "{report}");
    assert_eq!(
        quarantine_list(&db),
        [(BAD.to_owned(), "nul_character".to_owned())]
    );

    // the source gains another such document: the re-run upserts, and goes on as well
    lines.push(account(LATER_BAD, "x\u{0}"));
    std::fs::write(&accounts, format!("\u{feff}{}\n", lines.join("\n"))).unwrap();
    let again = migrate(export.path(), &db);
    assert_eq!(again["load_path"], "upsert", "{again}");
    let mut listed = quarantine_list(&db);
    listed.sort();
    assert_eq!(
        listed,
        [
            (BAD.to_owned(), "nul_character".to_owned()),
            (LATER_BAD.to_owned(), "nul_character".to_owned())
        ]
    );
}
