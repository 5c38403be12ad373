//! Values PostgreSQL cannot store never stop a migration: a document holding a NUL character
//! (U+0000, valid JSON that Cosmos stores, refused by PostgreSQL's `text` and `jsonb`) in any
//! value, name or id is quarantined as `nul_character` and every other document lands, on the
//! initial load (COPY into empty tables) and on the upsert path (a re-run); the quarantine keeps
//! the document and gives it back as it was; a byte-order mark at the start of an export file
//! is skipped. Against real PostgreSQL, from export files.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_migrate::{BackfillConfig, ExportDirSource, LoadPath, run_backfill};
use mystira_postgres::bookkeeping;
use serde_json::{Value, json};
use sqlx::PgPool;

fn config() -> BackfillConfig {
    BackfillConfig {
        // small pages: the bad documents share pages with good ones
        batch_rows: 16,
        ..BackfillConfig::default()
    }
}

fn no_progress(_: &str, _: &mystira_migrate::ContainerCounts) {}

/// A clean generated export (no problem documents), without its manifest (tests edit files).
fn export() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 40,
            seed: 29,
            dirty: 0.0,
        },
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    dir
}

fn lines(dir: &Path, container: &str) -> u64 {
    std::fs::read_to_string(dir.join(format!("{container}.jsonl")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// Inserts `docs` after the file's third line (compact JSON: a NUL is written `\u0000`).
fn plant(dir: &Path, container: &str, docs: &[Value]) {
    let path = dir.join(format!("{container}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = out.len().min(3);
    for (i, d) in docs.iter().enumerate() {
        out.insert(at + i, serde_json::to_string(d).unwrap());
    }
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// Verifies the database against the export files in `dir`, with the default options.
async fn verify_export(pool: &PgPool, dir: &Path) -> mystira_migrate::VerifyReport {
    mystira_migrate::verify(
        pool,
        &ExportDirSource::new(dir),
        &mystira_migrate::VerifyOptions::default(),
    )
    .await
    .unwrap()
}

fn id(n: u128) -> String {
    uuid::Uuid::from_u128(0x29_0000 + n).to_string()
}

fn account(n: u128, display_name: &str) -> Value {
    json!({
        "$type": "Account", "id": id(n), "Email": format!("nul{n}@example.com"),
        "DisplayName": display_name, "Role": "User",
        "CreatedAt": "2024-01-01T00:00:00Z", "LastLoginAt": "2024-01-02T00:00:00Z",
        "_ts": 1_700_000_000,
    })
}

fn profile(n: u128, badge_name: &str) -> Value {
    json!({
        "$type": "UserProfile", "id": id(n), "AccountId": id(1), "Name": "Kid",
        "AgeGroupName": "6-9", "CreatedAt": "2024-01-01T00:00:00Z",
        "UpdatedAt": "2024-01-02T00:00:00Z",
        "EarnedBadges": [{"BadgeConfigurationId": "cfg-1", "EarnedAt": "2024-01-03T00:00:00Z",
                          "BadgeName": badge_name}],
        "_ts": 1_700_000_000,
    })
}

fn signup(n: u128, display_name: &str) -> Value {
    json!({
        "$type": "PendingSignup", "id": id(n), "email": format!("s{n}@example.com"),
        "Code": "ABC123", "DisplayName": display_name,
        "CreatedAt": "2024-01-01T00:00:00Z", "ExpiresAt": "2024-01-01T00:15:00Z",
        "_ts": 1_700_000_000,
    })
}

/// What [`plant_bad_documents`] planted that must be quarantined: (container, document id as
/// the quarantine names it, the path its message names).
struct Planted {
    bad: Vec<(&'static str, String, &'static str)>,
    /// The raw documents, by quarantine document id.
    raw: BTreeMap<String, Value>,
    /// Good twins of the bad documents, by container: they must land.
    twins: BTreeMap<&'static str, u64>,
}

/// A NUL in each place it can hide: a value at the root, an id, a property name, an unknown
/// property's value deep down (kept in a note's jsonb), a badge's value, a sign-up's value,
/// `_etag`; and beside each bad document a twin without the NUL, which lands.
fn plant_bad_documents(dir: &Path) -> Planted {
    let mut bad_id_doc = account(10, "plain");
    bad_id_doc["id"] = json!("Account|nul\u{0}id");
    let mut key_doc = account(11, "plain");
    key_doc["Settings"] = json!({"Theme": "dark", "Fav\u{0}orite": "x"});
    let mut deep_doc = account(12, "plain");
    deep_doc["Extras"] = json!({"Notes": ["ok", "one\u{0}two"]});
    let mut etag_doc = account(13, "plain");
    etag_doc["_etag"] = json!("\"e\u{0}\"");
    let accounts = vec![
        account(1, "twin"),
        account(2, "Test\u{0}Parent"),
        bad_id_doc.clone(),
        key_doc,
        deep_doc,
        etag_doc,
        account(3, "twin"),
    ];
    let profiles = vec![profile(20, "Brave"), profile(21, "Bra\u{0}ve")];
    let signups = vec![signup(30, "New"), signup(31, "Ne\u{0}w")];
    plant(dir, "Accounts", &accounts);
    plant(dir, "UserProfiles", &profiles);
    plant(dir, "PendingSignups", &signups);
    let no_id = mystira_copy::mapping::content_locator("Accounts", &bad_id_doc);
    let bad = vec![
        ("Accounts", id(2), "DisplayName"),
        ("Accounts", no_id.clone(), "id"),
        ("Accounts", id(11), "Settings"),
        ("Accounts", id(12), "Extras.Notes[1]"),
        ("Accounts", id(13), "_etag"),
        ("UserProfiles", id(21), "EarnedBadges[0].BadgeName"),
        ("PendingSignups", id(31), "DisplayName"),
    ];
    let mut raw = BTreeMap::new();
    for d in accounts.iter().chain(&profiles).chain(&signups) {
        let key = d["id"].as_str().unwrap().to_owned();
        raw.insert(
            if key.contains('\0') {
                no_id.clone()
            } else {
                key
            },
            d.clone(),
        );
    }
    Planted {
        bad,
        raw,
        twins: BTreeMap::from([("Accounts", 2), ("UserProfiles", 1), ("PendingSignups", 1)]),
    }
}

/// The open quarantine: (container, document id) → (reason, message).
async fn quarantine(pool: &PgPool) -> BTreeMap<(String, String), (String, String)> {
    sqlx::query_as::<_, (String, String, String, String)>(
        "select container, document_id, reason_code, message from migration.quarantine
         where resolved_at is null",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(c, d, r, m)| ((c, d), (r, m)))
    .collect()
}

/// Exactly the planted documents are quarantined, each as `nul_character` with a message
/// naming its path and holding no value; each comes back from the quarantine as it was.
async fn assert_exactly_the_bad_ones_quarantined(pool: &PgPool, planted: &Planted) {
    let q = quarantine(pool).await;
    let expected: Vec<(String, String)> = planted
        .bad
        .iter()
        .map(|(c, d, _)| ((*c).to_owned(), d.clone()))
        .collect();
    assert_eq!(q.keys().cloned().collect::<Vec<_>>(), {
        let mut e = expected.clone();
        e.sort();
        e
    });
    for (container, document_id, path) in &planted.bad {
        let (reason, message) = &q[&((*container).to_owned(), document_id.clone())];
        assert_eq!(reason, "nul_character", "{container}/{document_id}");
        assert!(message.contains(&format!("`{path}`")), "{message}");
        assert!(!message.contains('\0'), "{message}");
        for value in ["Test", "Bra", "two", "orite", "\"e"] {
            assert!(!message.contains(value), "{message}");
        }
        let (_, document) = bookkeeping::quarantined_document(pool, container, document_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            document, planted.raw[document_id],
            "{container}/{document_id}"
        );
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_nul_character_quarantines_its_document_and_the_initial_load_goes_on(pool: PgPool) {
    let dir = export();
    let generated: BTreeMap<&str, u64> = ["Accounts", "UserProfiles", "PendingSignups"]
        .into_iter()
        .map(|c| (c, lines(dir.path(), c)))
        .collect();
    let planted = plant_bad_documents(dir.path());
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(),
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(report.load_path, LoadPath::Initial);
    assert!(report.reconciles(), "{report:?}");
    assert_exactly_the_bad_ones_quarantined(&pool, &planted).await;
    for (container, n) in &generated {
        let c = &report.job_totals[*container];
        let bad = planted.bad.iter().filter(|b| b.0 == *container).count() as u64;
        // every other document landed: the generated ones and the good twins
        assert_eq!(c.quarantined, bad, "{container}: {c:?}");
        assert_eq!(
            c.written,
            n + planted.twins[container],
            "{container}: {c:?}"
        );
    }
    let twin: String = sqlx::query_scalar("select display_name from accounts where id = $1::uuid")
        .bind(id(1))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(twin, "twin");

    // verify maps the source the same way: the documents are accounted for, not drift
    let verified = verify_export(&pool, dir.path()).await;
    assert_eq!(
        verified.outcome,
        mystira_migrate::Outcome::Clean,
        "{}",
        verified.summary(20)
    );
    let seen: Vec<String> = verified
        .items
        .iter()
        .filter(|i| i.kind == mystira_migrate::DriftKind::Quarantined)
        .filter_map(|i| i.cosmos_id.clone())
        .collect();
    assert_eq!(seen.len(), planted.bad.len(), "{seen:?}");

    // a re-run reads them again and quarantines them again; nothing else changes
    let again = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(),
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(again.load_path, LoadPath::Upsert);
    for (container, c) in &again.containers {
        let bad = planted.bad.iter().filter(|b| b.0 == container).count() as u64;
        assert_eq!((c.written, c.quarantined), (0, bad), "{container}: {c:?}");
    }
    assert_exactly_the_bad_ones_quarantined(&pool, &planted).await;
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_nul_character_quarantines_its_document_on_a_rerun_by_upserts(pool: PgPool) {
    let dir = export();
    let first = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(),
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(first.quarantined(), 0, "a clean export: {first:?}");
    // the source gains documents, some holding a NUL: the next run upserts
    let planted = plant_bad_documents(dir.path());
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(),
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(report.load_path, LoadPath::Upsert);
    assert!(report.reconciles(), "{report:?}");
    for (container, c) in &report.containers {
        let bad = planted.bad.iter().filter(|b| b.0 == container).count() as u64;
        assert_eq!(
            (c.written, c.quarantined, c.unchanged),
            (
                planted.twins[container.as_str()],
                bad,
                first.containers[container].written
            ),
            "{container}: {c:?}"
        );
    }
    assert_exactly_the_bad_ones_quarantined(&pool, &planted).await;

    // a retry reads each stored document back and finds the same reason; still writable
    let retry = mystira_copy::quarantine::retry_quarantined(&pool, None, None)
        .await
        .unwrap();
    let n = planted.bad.len() as u64;
    assert_eq!(
        (retry.retried, retry.still_quarantined, retry.not_retryable),
        (n, n, 0),
        "{retry:?}"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("select attempts from migration.quarantine")
        .fetch_all(&pool)
        .await
        .unwrap();
    // quarantined by the run, then by the retry
    assert!(attempts.iter().all(|a| *a == 2), "{attempts:?}");
    assert_exactly_the_bad_ones_quarantined(&pool, &planted).await;
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_byte_order_mark_at_the_start_of_an_export_file_is_skipped(pool: PgPool) {
    let dir = export();
    let mut total = 0;
    for container in ["Accounts", "UserProfiles", "PendingSignups"] {
        let path = dir.path().join(format!("{container}.jsonl"));
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, bytes).unwrap();
        total += lines(dir.path(), container);
    }
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(),
        &no_progress,
    )
    .await
    .unwrap();
    assert!(report.reconciles(), "{report:?}");
    assert_eq!(quarantine(&pool).await, BTreeMap::new());
    let written: u64 = report.job_totals.values().map(|c| c.written).sum();
    assert_eq!(written, total);
}

/// Verify reads export lines for a NUL from their text (the escape `\u0000`) before it walks
/// the parsed document: a document holding one that was never migrated (no quarantine entry)
/// is still reported unmigrated with `nul_character`, wherever the NUL hides, and its good
/// twins are not.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn verify_names_every_unmigrated_document_holding_a_nul(pool: PgPool) {
    let dir = export();
    let planted = plant_bad_documents(dir.path());
    let verified = verify_export(&pool, dir.path()).await;
    let mut seen: Vec<(String, String)> = verified
        .items
        .iter()
        .filter(|i| i.reason.as_deref() == Some("nul_character"))
        .map(|i| {
            assert_eq!(i.kind, mystira_migrate::DriftKind::Unmigrated, "{i:?}");
            (
                i.entity.container().to_owned(),
                i.cosmos_id.clone().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = planted
        .bad
        .iter()
        .map(|(c, d, _)| ((*c).to_owned(), d.clone()))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}
