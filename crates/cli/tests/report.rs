//! `mystira-users report` as a process, after the main job migrated the bundled sample: every
//! figure of its JSON equals what SQL counts in the same database (the disagreeing
//! `UserProfileIds` recomputed here in Rust from the notes and the profiles), no email or name
//! of the sample is in either output form, and an unreachable or unmigrated database is a clear
//! error with exit code 1. Against the PostgreSQL server in `DATABASE_URL`, one fresh database
//! per test.
#![allow(clippy::unwrap_used)]

mod support;
use mystira_test_support::postgres::fresh_database;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};

use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
const NOTE: &str = mystira_migrate::report::USER_PROFILE_IDS_NOTE;

fn sample_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample"
    ))
}

fn mystira(db: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--database-url", db])
        .current_dir(sample_dir().join("../.."))
        .env_remove("MYSTIRA_CONFIG")
        // scripts/test points these at the Cosmos test server: the main job must not see one,
        // so that it migrates the bundled sample
        .env_remove("COSMOS_ENDPOINT")
        .env_remove("COSMOS_KEY")
        .env_remove("COSMOS_DATABASE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Every email address, display name and magic-link token hash in the sample (values the
/// report must never print; six-digit codes are left out, as digits in a count or a time could
/// match one by chance).
fn sample_personal_values() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in ["Accounts", "UserProfiles", "PendingSignups"] {
        let text = std::fs::read_to_string(sample_dir().join(format!("{file}.jsonl"))).unwrap();
        for line in text.lines() {
            let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(line) else {
                continue;
            };
            for key in [
                "Email",
                "email",
                "DisplayName",
                "Name",
                "VerificationTokenHash",
            ] {
                if let Some(v) = doc.get(key).and_then(|v| v.as_str())
                    && v.trim().len() >= 6
                {
                    out.insert(v.to_owned());
                }
            }
        }
    }
    out
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The accounts whose `UserProfileIds` note disagrees with the profiles pointing at them,
/// computed here from the rows (independently of the report's SQL).
async fn disagreeing_accounts(conn: &mut PgConnection) -> (i64, BTreeSet<String>, i64, i64) {
    let notes: Vec<(String, uuid::Uuid, serde_json::Value)> = sqlx::query_as(
        "select n.document_id, v.key, n.original
         from migration.document_notes n
         join migration.document_versions v using (container, document_id)
         join accounts a on a.id = v.key
         where n.container = 'Accounts' and n.code = $1
           and not exists (select 1 from migration.quarantine q
                           where q.container = n.container and q.document_id = n.document_id
                             and q.resolved_at is null)",
    )
    .bind(NOTE)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let profiles: Vec<(uuid::Uuid, Option<uuid::Uuid>)> =
        sqlx::query_as("select id, account_id from user_profiles")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let mut pointing: BTreeMap<uuid::Uuid, BTreeSet<uuid::Uuid>> = BTreeMap::new();
    for (profile, account) in profiles {
        if let Some(account) = account {
            pointing.entry(account).or_default().insert(profile);
        }
    }
    let (mut listed_only, mut pointing_only) = (0, 0);
    let mut disagreeing = BTreeSet::new();
    for (document_id, account, original) in &notes {
        let items: Vec<String> = match original {
            serde_json::Value::String(s) => s.split(',').map(str::to_owned).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let listed: BTreeSet<uuid::Uuid> = items
            .iter()
            .map(|i| i.trim())
            .filter(|i| !i.is_empty())
            .map(|i| {
                let i = i.strip_prefix("UserProfile|").unwrap_or(i);
                mystira_domain::ids::MappedId::from_source(i).uuid
            })
            .collect();
        let points = pointing.get(account).cloned().unwrap_or_default();
        let a = listed.difference(&points).count() as i64;
        let b = points.difference(&listed).count() as i64;
        if a + b > 0 {
            disagreeing.insert(document_id.clone());
        }
        listed_only += a;
        pointing_only += b;
    }
    (notes.len() as i64, disagreeing, listed_only, pointing_only)
}

#[tokio::test]
async fn the_report_of_the_bundled_sample_matches_sql_and_prints_no_personal_data() {
    let db = fresh_database("report").await;
    // the main job: no source given, so the bundled sample
    let migrated = mystira(&db, &["--quiet", "migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let out = mystira(&db, &["report", "--json", "--examples", "3"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let markdown = mystira(&db, &["report"]);
    assert_eq!(markdown.status.code(), Some(0));
    let markdown = String::from_utf8(markdown.stdout).unwrap();

    let mut conn = PgConnection::connect(&db).await.unwrap();
    let (run_id, status, job_counts): (uuid::Uuid, String, serde_json::Value) = sqlx::query_as(
        "select id, status, counts->'job' from migration.runs where job = 'backfill'
         order by started_at desc limit 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(report["run"]["id"], run_id.to_string());
    assert_eq!(report["run"]["status"], status);
    assert_eq!(report["run"]["counts_from"], "run");

    let tables = [
        (
            "Accounts",
            &["accounts", "subscriptions", "completed_scenarios"][..],
        ),
        ("UserProfiles", &["user_profiles", "user_badges"][..]),
        ("PendingSignups", &["pending_signups"][..]),
    ];
    let mut read_total = 0;
    for (container, container_tables) in tables {
        let c = &report["containers"][container];
        let recorded = &job_counts[container];
        for field in ["read", "written", "unchanged", "quarantined"] {
            assert_eq!(c["counts"][field], recorded[field], "{container}.{field}");
        }
        assert_eq!(
            c["counts"]["superseded"],
            recorded.get("superseded").cloned().unwrap_or(0.into()),
            "{container}.superseded"
        );
        read_total += c["counts"]["read"].as_i64().unwrap();
        assert!(
            c["counts"]["read"].as_i64().unwrap() > 0,
            "{container} read nothing"
        );
        assert_eq!(c["reconciles"], true, "{container}");
        let open = count(
            &mut conn,
            &format!(
                "select count(*) from migration.quarantine
                 where container = '{container}' and resolved_at is null"
            ),
        )
        .await;
        assert_eq!(c["open_quarantine"], open, "{container}");
        let docs = count(
            &mut conn,
            &format!(
                "select count(*) from migration.document_versions where container = '{container}'"
            ),
        )
        .await;
        assert_eq!(c["documents_in_postgres"], docs, "{container}");
        for table in container_tables {
            let n = count(&mut conn, &format!("select count(*) from {table}")).await;
            assert!(n > 0, "{table} is empty: the sample did not land");
            assert_eq!(c["rows"][*table], n, "{table}");
        }
    }
    assert_eq!(report["totals"]["read"], read_total);

    // quarantine by reason, and notes by code, group by group
    let reasons: Vec<(String, String, i64)> = sqlx::query_as(
        "select container, reason_code, count(*) from migration.quarantine
         where resolved_at is null group by 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(!reasons.is_empty(), "the sample has problem documents");
    let reported: usize = report["quarantine"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r.as_object().unwrap().len())
        .sum();
    assert_eq!(reported, reasons.len());
    for (container, reason, n) in &reasons {
        let g = &report["quarantine"][container][reason];
        assert_eq!(g["count"], *n, "{container}/{reason}");
        let examples = g["examples"].as_array().unwrap();
        assert_eq!(examples.len() as i64, (*n).min(3), "{container}/{reason}");
        for id in examples {
            let found = count(
                &mut conn,
                &format!(
                    "select count(*) from migration.quarantine where container = '{container}'
                     and reason_code = '{reason}' and document_id = '{}'",
                    id.as_str().unwrap().replace('\'', "''")
                ),
            )
            .await;
            assert_eq!(found, 1, "example {id} is not a {reason} entry");
        }
    }
    let codes: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "select container, code, count(*), count(distinct document_id)
         from migration.document_notes group by 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(!codes.is_empty(), "the sample has notes");
    for (container, code, notes, documents) in &codes {
        let g = &report["notes"][container][code];
        assert_eq!(g["notes"], *notes, "{container}/{code}");
        assert_eq!(g["documents"], *documents, "{container}/{code}");
    }

    // the derived check, recomputed from the rows
    let (checked, disagreeing, listed_only, pointing_only) = disagreeing_accounts(&mut conn).await;
    let check = &report["checks"]["user_profile_ids"];
    assert_eq!(check["note_code"], NOTE);
    assert_eq!(check["accounts_checked"], checked);
    assert!(
        checked > 0,
        "no account has a {NOTE} note: the codec changed the code?"
    );
    assert_eq!(check["accounts_disagreeing"], disagreeing.len() as i64);
    assert_eq!(check["listed_not_pointing"], listed_only);
    assert_eq!(check["pointing_not_listed"], pointing_only);
    for id in check["examples"].as_array().unwrap() {
        assert!(disagreeing.contains(id.as_str().unwrap()), "{id}");
    }

    // codes, counts and ids only
    let json_text = String::from_utf8(out.stdout).unwrap();
    let personal = sample_personal_values();
    assert!(
        personal.len() > 300,
        "the sample's emails and names were not found"
    );
    for value in &personal {
        assert!(
            !json_text.contains(value.as_str()),
            "the JSON report prints a sample value"
        );
        assert!(
            !markdown.contains(value.as_str()),
            "the Markdown report prints a sample value"
        );
    }
    assert!(
        !json_text.contains('@') && !markdown.contains('@'),
        "an email-like text is printed"
    );
    assert!(markdown.contains("| Accounts |"), "{markdown}");
}

#[tokio::test]
async fn an_unreachable_or_unmigrated_database_is_an_error_with_exit_code_1() {
    let unreachable = mystira("postgres://nobody@127.0.0.1:1/none", &["report", "--json"]);
    assert_eq!(unreachable.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&unreachable.stdout).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("cannot connect"),
        "{error}"
    );

    let empty = fresh_database("report_empty").await;
    let out = mystira(&empty, &["report"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not migrated"), "{stderr}");
    // and it did not migrate it behind the operator's back
    let mut conn = PgConnection::connect(&empty).await.unwrap();
    let tables = count(
        &mut conn,
        "select count(*) from information_schema.tables where table_schema = 'migration'",
    )
    .await;
    assert_eq!(tables, 0);
}

/// `status` (issue 34, item 8): after the main job, one read-only view that agrees with SQL and
/// needs no attention; then an outbox row and a journal entry that have waited two minutes and
/// a record in this machine's journal files make it exit 3, naming each by a stable code.
#[tokio::test]
async fn status_shows_the_migration_at_a_glance_and_exits_3_when_something_waits() {
    let db = fresh_database("status").await;
    let out = mystira(&db, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal_dir = tempfile::tempdir().unwrap();
    let dir = journal_dir.path().to_str().unwrap().to_owned();

    let status = |conn_db: &str| {
        let out = mystira(conn_db, &["status", "--json", "--journal-dir", &dir]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = status(&db);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["phase"]["domain"]["phase"], "cosmos-only");
    assert_eq!(report["attention"], serde_json::json!([]));
    assert_eq!(report["latest_backfill"]["status"], "succeeded");
    let mut conn = PgConnection::connect(&db).await.unwrap();
    let open = count(
        &mut conn,
        "select count(*) from migration.quarantine where resolved_at is null",
    )
    .await;
    let reported: i64 = report["quarantine"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|reasons| reasons.as_object().unwrap().values())
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert!(open > 0, "the sample has problem documents");
    assert_eq!(reported, open);

    // work that has waited longer than a router or relay would let it
    sqlx::raw_sql(
        "insert into migration.outbox (container, key, enqueued_at)
             values ('Accounts', gen_random_uuid(), now() - interval '2 minutes');
         insert into migration.retry_journal (container, document_id, op, source_ts, enqueued_at)
             values ('Accounts', 'gone', 'delete', 1, now() - interval '2 minutes')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    std::fs::write(
        journal_dir.path().join("journal-1-1.jsonl"),
        "{\"container\":\"Accounts\",\"document_id\":\"x\",\"op\":\"delete\",\"key\":\"00000000-0000-0000-0000-000000000001\",\"source_ts\":1}\n",
    )
    .unwrap();
    let (code, report) = status(&db);
    assert_eq!(code, Some(3), "{report:#}");
    let codes: Vec<&str> = report["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["journal_backlog", "journal_files", "outbox_backlog"],
        "{report:#}"
    );
    assert_eq!(report["journal"]["files"]["records"], 1);
    assert_eq!(report["outbox"]["rows"], 1);

    // phase 1 needs a replicator: none beats, and one died without saying so
    let forced = mystira(
        &db,
        &[
            "phase",
            "set",
            "dual-write-cosmos-read",
            "--force",
            "--reason",
            "status test",
            "--actor",
            "test",
        ],
    );
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    sqlx::raw_sql(
        "insert into migration.worker_heartbeats (worker, kind, host, pid, mode, beat_at)
             values ('replicate@gone:7', 'replicate', 'gone', 7, 'auto',
                     now() - interval '10 minutes')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, report) = status(&db);
    assert_eq!(code, Some(3), "{report:#}");
    let codes: Vec<&str> = report["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"no_replicator"), "{report:#}");
    assert!(codes.contains(&"worker_silent"), "{report:#}");
    assert_eq!(report["workers"][0]["worker"], "replicate@gone:7");
}
